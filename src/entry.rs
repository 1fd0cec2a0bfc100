//! The extension's entry point, `sqlite3_spoolvfs_init` (SQLite derives the name from
//! `libspoolvfs.so`). It stores the API table, registers the `spool` VFS (not as default), adds the
//! SQL functions to the loading connection and, through `sqlite3_auto_extension`, to every
//! connection opened later, and asks to stay loaded (`SQLITE_OK_LOAD_PERMANENTLY`): the registered
//! VFS points into this library, which must therefore never be unloaded.
//!
//! Invariant: idempotent; a second load (another connection, another `.load`) changes nothing.

use std::ffi::{c_char, c_int};
use std::sync::Once;

use libsqlite3_sys::{
    SQLITE_ERROR, SQLITE_OK, SQLITE_OK_LOAD_PERMANENTLY, sqlite3, sqlite3_api_routines,
};

use crate::ffi::{self, guard, sql, vfs};

static AUTO: Once = Once::new();

fn set_error(pz_err: *mut *mut c_char, msg: &str) {
    if !pz_err.is_null() {
        // SAFETY: SQLite passes a valid out pointer; the message is sqlite3_malloc'd as required.
        unsafe { *pz_err = ffi::sqlite_string(msg) };
    }
}

/// Entry point called by `sqlite3_load_extension` (or directly by an embedding application).
///
/// # Safety
/// Called by SQLite with a valid connection (or null), error out-pointer (or null) and API table.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn sqlite3_spoolvfs_init(
    db: *mut sqlite3,
    pz_err: *mut *mut c_char,
    p_api: *const sqlite3_api_routines,
) -> c_int {
    guard(SQLITE_ERROR, || {
        if p_api.is_null() {
            set_error(
                pz_err,
                "spoolvfs: no SQLite API table (load it as an extension)",
            );
            return SQLITE_ERROR;
        }
        ffi::set_api(p_api);
        ffi::install_panic_hook();
        if let Err(e) = vfs::register() {
            set_error(pz_err, &format!("spoolvfs: {e}"));
            return SQLITE_ERROR;
        }
        let mut rc = SQLITE_OK;
        AUTO.call_once(|| {
            if let Some(auto) = ffi::api().and_then(|a| a.auto_extension) {
                let entry: unsafe extern "C" fn(
                    *mut sqlite3,
                    *mut *mut c_char,
                    *const sqlite3_api_routines,
                ) -> c_int = sql::auto_register;
                // SAFETY: sqlite3_auto_extension takes a `void(*)(void)` that it calls with the
                // extension-entry signature; casting between function pointer types is how the C
                // API is meant to be used.
                rc = unsafe {
                    auto(Some(std::mem::transmute::<
                        unsafe extern "C" fn(
                            *mut sqlite3,
                            *mut *mut c_char,
                            *const sqlite3_api_routines,
                        ) -> c_int,
                        unsafe extern "C" fn(),
                    >(entry)))
                };
            }
        });
        if rc != SQLITE_OK {
            set_error(pz_err, "spoolvfs: sqlite3_auto_extension failed");
            return rc;
        }
        if !db.is_null() {
            // SAFETY: `db` is the live connection that is loading us.
            let rc = unsafe { sql::register_functions(db) };
            if rc != SQLITE_OK {
                set_error(pz_err, "spoolvfs: registering SQL functions failed");
                return rc;
            }
        }
        SQLITE_OK_LOAD_PERMANENTLY
    })
}
