//! SQL functions: `spool_status()`, `spool_sync([timeout_ms])`, `spool_resync()`,
//! `spool_version()`. Each acts on the calling connection's `main` database, which must have been
//! opened with `vfs=spool`; each body runs under `guard`, so a bug becomes an SQL error.

use std::ffi::{CString, c_char, c_int, c_void};
use std::sync::Arc;
use std::time::Duration;

use libsqlite3_sys::{
    SQLITE_DETERMINISTIC, SQLITE_OK, SQLITE_ROW, SQLITE_UTF8, sqlite3, sqlite3_api_routines,
    sqlite3_context, sqlite3_file, sqlite3_stmt, sqlite3_value,
};

use super::{api, c_str, guard, io};
use crate::dbstate::DbState;

/// Default wait of `spool_sync()` without an argument.
const DEFAULT_SYNC_MS: i64 = 60_000;
/// Upper bound of the wait of `spool_resync()`.
const RESYNC_WAIT: Duration = Duration::from_secs(24 * 3600);

fn result_error(ctx: *mut sqlite3_context, msg: &str) {
    let Some(f) = api().and_then(|a| a.result_error) else {
        return;
    };
    let text = CString::new(msg.replace('\0', " ")).unwrap_or_default();
    // SAFETY: `ctx` is the live context of this call; -1 = NUL-terminated; SQLite copies the text.
    unsafe { f(ctx, text.as_ptr(), -1) };
}

fn result_int(ctx: *mut sqlite3_context, v: i32) {
    if let Some(f) = api().and_then(|a| a.result_int) {
        // SAFETY: live context.
        unsafe { f(ctx, v) };
    }
}

fn result_text(ctx: *mut sqlite3_context, s: &str) {
    let Some(f) = api().and_then(|a| a.result_text) else {
        return;
    };
    let p = super::sqlite_string(s);
    // SAFETY: `p` is sqlite3_malloc'd (or null); handing ownership with sqlite3_free as destructor.
    unsafe { f(ctx, p, -1, api().and_then(|a| a.free)) };
}

/// The tracked state of the calling connection's main database.
fn state_of_ctx(ctx: *mut sqlite3_context) -> Result<Arc<DbState>, String> {
    let a = api().ok_or("SQLite API not initialised")?;
    let db_handle = a
        .context_db_handle
        .ok_or("host lacks sqlite3_context_db_handle")?;
    let fc = a.file_control.ok_or("host lacks sqlite3_file_control")?;
    // SAFETY: live context.
    let db = unsafe { db_handle(ctx) };
    // Our own opcode, not SQLITE_FCNTL_FILE_POINTER: that gives the top-level file, which is not
    // spool's when a VFS is layered above it; spool's file answers ours under any stack.
    let mut ours: *mut sqlite3_file = std::ptr::null_mut();
    // SAFETY: our opcode writes a `sqlite3_file*` into `ours`; other VFSes leave it untouched.
    let rc = unsafe {
        fc(
            db,
            c"main".as_ptr(),
            io::SPOOL_FCNTL_FILE,
            &mut ours as *mut _ as *mut c_void,
        )
    };
    // SAFETY: null, or the live spool file object of "main" that answered our opcode.
    (rc == SQLITE_OK)
        .then(|| unsafe { io::state_of_file(ours) })
        .flatten()
        .ok_or_else(|| "the main database was not opened with vfs=spool (spoolvfs)".to_string())
}

/// Current journal mode of `main`, by asking SQLite.
fn journal_mode(db: *mut sqlite3) -> String {
    let Some(a) = api() else {
        return "unknown".into();
    };
    let (Some(prepare), Some(step), Some(col), Some(fin)) =
        (a.prepare_v2, a.step, a.column_text, a.finalize)
    else {
        return "unknown".into();
    };
    let mut stmt: *mut sqlite3_stmt = std::ptr::null_mut();
    // SAFETY: valid db handle and NUL-terminated SQL; `stmt` receives the statement.
    let rc = unsafe {
        prepare(
            db,
            c"PRAGMA main.journal_mode".as_ptr(),
            -1,
            &mut stmt,
            std::ptr::null_mut(),
        )
    };
    if rc != SQLITE_OK || stmt.is_null() {
        return "unknown".into();
    }
    // SAFETY: a prepared statement we own.
    let mode = if unsafe { step(stmt) } == SQLITE_ROW {
        // SAFETY: column 0 of the current row; the text stays valid until the next step/finalize.
        unsafe { c_str(col(stmt, 0) as *const c_char) }
    } else {
        None
    };
    // SAFETY: finalizing our own statement once.
    unsafe { fin(stmt) };
    mode.unwrap_or_else(|| "unknown".into())
}

unsafe extern "C" fn fn_status(
    ctx: *mut sqlite3_context,
    _n: c_int,
    _args: *mut *mut sqlite3_value,
) {
    guard((), || match state_of_ctx(ctx) {
        Ok(state) => {
            crate::ffi::logq::deliver_queued();
            let db = api()
                .and_then(|a| a.context_db_handle)
                // SAFETY: live context.
                .map_or(std::ptr::null_mut(), |f| unsafe { f(ctx) });
            let mode = journal_mode(db);
            result_text(ctx, &crate::status::to_json(&state, &mode));
        }
        Err(e) => result_error(ctx, &e),
    })
}

unsafe extern "C" fn fn_sync(ctx: *mut sqlite3_context, n: c_int, args: *mut *mut sqlite3_value) {
    guard((), || {
        let mut ms = DEFAULT_SYNC_MS;
        if n >= 1 {
            let Some(v) = api().and_then(|a| a.value_int64) else {
                return;
            };
            // SAFETY: SQLite passes `n` valid value pointers.
            ms = unsafe { v(*args) };
        }
        match state_of_ctx(ctx) {
            Ok(state) => {
                let ok = state.wait_synced(Duration::from_millis(ms.max(0) as u64));
                crate::ffi::logq::deliver_queued();
                result_int(ctx, ok as i32);
            }
            Err(e) => result_error(ctx, &e),
        }
    })
}

unsafe extern "C" fn fn_resync(
    ctx: *mut sqlite3_context,
    _n: c_int,
    _args: *mut *mut sqlite3_value,
) {
    guard((), || match state_of_ctx(ctx) {
        Ok(state) => {
            let done = state.resync(RESYNC_WAIT);
            crate::ffi::logq::deliver_queued();
            if done {
                result_int(ctx, 1);
            } else {
                let err = crate::dbstate::lock(&state.progress).last_error.clone();
                result_error(
                    ctx,
                    &format!("spool_resync failed: {}", err.unwrap_or_default()),
                );
            }
        }
        Err(e) => result_error(ctx, &e),
    })
}

unsafe extern "C" fn fn_version(
    ctx: *mut sqlite3_context,
    _n: c_int,
    _args: *mut *mut sqlite3_value,
) {
    guard((), || {
        result_text(ctx, concat!("spoolvfs ", env!("CARGO_PKG_VERSION")))
    })
}

type SqlFn = unsafe extern "C" fn(*mut sqlite3_context, c_int, *mut *mut sqlite3_value);

/// Registers the SQL functions on `db`.
///
/// # Safety
/// `db` must be a live connection handle.
pub unsafe fn register_functions(db: *mut sqlite3) -> c_int {
    let Some(create) = api().and_then(|a| a.create_function_v2) else {
        return libsqlite3_sys::SQLITE_ERROR;
    };
    let fns: [(&std::ffi::CStr, c_int, SqlFn, c_int); 5] = [
        (c"spool_status", 0, fn_status, 0),
        (c"spool_sync", 0, fn_sync, 0),
        (c"spool_sync", 1, fn_sync, 0),
        (c"spool_resync", 0, fn_resync, 0),
        (c"spool_version", 0, fn_version, SQLITE_DETERMINISTIC),
    ];
    for (name, n_arg, f, flags) in fns {
        // SAFETY: valid db handle, static name, scalar function pointer, no user data to free.
        let rc = unsafe {
            create(
                db,
                name.as_ptr(),
                n_arg,
                SQLITE_UTF8 | flags,
                std::ptr::null_mut(),
                Some(f),
                None,
                None,
                None,
            )
        };
        if rc != SQLITE_OK {
            return rc;
        }
    }
    SQLITE_OK
}

/// Auto-extension entry: SQLite calls it for every connection opened after the load.
///
/// # Safety
/// Called by SQLite with a live connection handle.
pub unsafe extern "C" fn auto_register(
    db: *mut sqlite3,
    _err: *mut *mut c_char,
    _api: *const sqlite3_api_routines,
) -> c_int {
    // SAFETY: SQLite passes the live connection being opened.
    guard(libsqlite3_sys::SQLITE_ERROR, || unsafe {
        register_functions(db)
    })
}
