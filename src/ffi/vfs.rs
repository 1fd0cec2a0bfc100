//! The `spool` VFS object: a thin wrapper over the default `unix` VFS. Only `xOpen` does real work
//! (deciding which files are tracked); every other method forwards to the underlying VFS with the
//! underlying VFS's own pointer.
//!
//! Invariants: the registered `sqlite3_vfs` is leaked (SQLite keeps pointers to it forever and owns
//! its `pNext`); the underlying VFS is resolved once, by name, so a second load never wraps `spool`.

use std::ffi::{c_char, c_int, c_void};
use std::path::Path;
use std::sync::atomic::{AtomicPtr, Ordering};

use libsqlite3_sys::{
    SQLITE_CANTOPEN, SQLITE_ERROR, SQLITE_OK, SQLITE_OPEN_MAIN_DB, SQLITE_OPEN_MAIN_JOURNAL,
    SQLITE_OPEN_WAL, sqlite3_file, sqlite3_int64, sqlite3_syscall_ptr, sqlite3_vfs,
};

use super::{api, guard, io, log};

/// Name under which the VFS is registered.
pub const VFS_NAME: &std::ffi::CStr = c"spool";

static ROOT: AtomicPtr<sqlite3_vfs> = AtomicPtr::new(std::ptr::null_mut());
static SPOOL: AtomicPtr<sqlite3_vfs> = AtomicPtr::new(std::ptr::null_mut());

/// The wrapped VFS (`unix`), once registered.
pub fn root() -> Option<&'static sqlite3_vfs> {
    // SAFETY: null or a VFS object returned by `sqlite3_vfs_find`, which SQLite keeps alive while
    // registered; the default unix VFS is never unregistered.
    unsafe { ROOT.load(Ordering::Acquire).as_ref() }
}

fn root_ptr() -> *mut sqlite3_vfs {
    ROOT.load(Ordering::Acquire)
}

/// Registers the `spool` VFS (idempotent). Returns an error message on failure.
pub fn register() -> Result<(), String> {
    if !SPOOL.load(Ordering::Acquire).is_null() {
        return Ok(());
    }
    let a = api().ok_or("SQLite API table not initialised")?;
    let find = a.vfs_find.ok_or("host lacks sqlite3_vfs_find")?;
    let reg = a.vfs_register.ok_or("host lacks sqlite3_vfs_register")?;
    // SAFETY: looking up by a static NUL-terminated name.
    let existing = unsafe { find(VFS_NAME.as_ptr()) };
    if !existing.is_null() {
        // Another copy of this library (or another product) already registered "spool".
        return Err("a VFS named 'spool' is already registered".to_string());
    }
    // SAFETY: as above. By name, never `find(NULL)`, which may return a shim registered as default.
    let unix = unsafe { find(c"unix".as_ptr()) };
    if unix.is_null() {
        return Err("the 'unix' VFS is not available".to_string());
    }
    // SAFETY: `unix` is a live VFS object (checked non-null above).
    let u = unsafe { &*unix };
    ROOT.store(unix, Ordering::Release);
    let vfs = Box::new(sqlite3_vfs {
        iVersion: u.iVersion.min(3),
        szOsFile: io::wrapper_size() + u.szOsFile,
        mxPathname: u.mxPathname,
        pNext: std::ptr::null_mut(),
        zName: VFS_NAME.as_ptr(),
        pAppData: unix as *mut c_void,
        xOpen: Some(x_open),
        xDelete: Some(x_delete),
        xAccess: Some(x_access),
        xFullPathname: Some(x_full_pathname),
        xDlOpen: Some(x_dl_open),
        xDlError: Some(x_dl_error),
        xDlSym: Some(x_dl_sym),
        xDlClose: Some(x_dl_close),
        xRandomness: Some(x_randomness),
        xSleep: Some(x_sleep),
        xCurrentTime: Some(x_current_time),
        xGetLastError: Some(x_get_last_error),
        xCurrentTimeInt64: Some(x_current_time_int64),
        xSetSystemCall: Some(x_set_system_call),
        xGetSystemCall: Some(x_get_system_call),
        xNextSystemCall: Some(x_next_system_call),
    });
    let vfs = Box::into_raw(vfs);
    // SAFETY: `vfs` is a fully initialised, leaked VFS object; makeDflt=0: not the default.
    let rc = unsafe { reg(vfs, 0) };
    if rc != SQLITE_OK {
        return Err(format!("sqlite3_vfs_register failed with code {rc}"));
    }
    SPOOL.store(vfs, Ordering::Release);
    Ok(())
}

/// Forwards a VFS method to the root, or returns `$none` if the root lacks it.
macro_rules! forward {
    ($method:ident, $none:expr, $($arg:expr),*) => {{
        let root = root_ptr();
        // SAFETY: `root` is the registered unix VFS (non-null once any file can be opened).
        match unsafe { root.as_ref() }.and_then(|r| r.$method) {
            // SAFETY: forwarding the caller's arguments unchanged, with the root's own pointer.
            Some(f) => unsafe { f(root, $($arg),*) },
            None => $none,
        }
    }};
}

unsafe extern "C" fn x_open(
    _vfs: *mut sqlite3_vfs,
    name: *const c_char,
    file: *mut sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    guard(SQLITE_CANTOPEN, || {
        if !out_flags.is_null() {
            // SAFETY: SQLite passes a valid out pointer when non-null; some unix paths (O_TMPFILE)
            // return without setting it, so it must hold something defined.
            unsafe { *out_flags = 0 };
        }
        let kind = flags & 0x000F_FF00;
        let role = match kind {
            SQLITE_OPEN_MAIN_DB => io::Role::MainDb,
            SQLITE_OPEN_WAL => io::Role::Wal,
            SQLITE_OPEN_MAIN_JOURNAL => io::Role::Journal,
            _ => io::Role::Untracked,
        };
        if name.is_null() || role == io::Role::Untracked {
            // Temp files, statement journals, super-journals: opened straight into the caller's
            // buffer, untouched (the buffer is at least the root's szOsFile).
            return forward!(xOpen, SQLITE_CANTOPEN, name, file, flags, out_flags);
        }
        // SAFETY: `file` points to szOsFile bytes of SQLite-owned memory; `name` is SQLite's
        // filename, valid until xClose.
        unsafe { io::open_tracked(root_ptr(), name, file, flags, out_flags, role) }
    })
}

unsafe extern "C" fn x_delete(
    _vfs: *mut sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    guard(SQLITE_ERROR, || {
        let wal_of = if name.is_null() {
            None
        } else {
            // SAFETY: SQLite passes a NUL-terminated filename, valid for the call.
            before_delete(unsafe { std::ffi::CStr::from_ptr(name) })
        };
        let rc = forward!(xDelete, SQLITE_ERROR, name, sync_dir);
        if let Some(state) = wal_of.filter(|_| rc == SQLITE_OK) {
            crate::consumer::cleanclose::note_wal_ended(&state, true);
        }
        rc
    })
}

/// A WAL of a database open through spool is about to be deleted (the last connection closes,
/// or the journal mode leaves WAL): its generation ends, so it is checked first. Returns the
/// database's state for the stamp taken after the deletion. Every other deletion (rollback
/// journals, once per commit in DELETE mode) costs a suffix comparison.
fn before_delete(name: &std::ffi::CStr) -> Option<std::sync::Arc<crate::dbstate::DbState>> {
    use std::os::unix::ffi::OsStrExt;
    let wal = Path::new(std::ffi::OsStr::from_bytes(name.to_bytes()));
    let db = crate::config::db_key(crate::config::db_of_wal(wal)?);
    let state = crate::dbstate::registry::find(&db)?;
    let on_disk = crate::wal::header_at(wal);
    io::check_wal_ending(&state, on_disk, crate::walend::Ending::Delete);
    Some(state)
}

unsafe extern "C" fn x_access(
    _vfs: *mut sqlite3_vfs,
    name: *const c_char,
    flags: c_int,
    res: *mut c_int,
) -> c_int {
    guard(SQLITE_ERROR, || {
        forward!(xAccess, SQLITE_ERROR, name, flags, res)
    })
}

unsafe extern "C" fn x_full_pathname(
    _vfs: *mut sqlite3_vfs,
    name: *const c_char,
    n: c_int,
    out: *mut c_char,
) -> c_int {
    guard(SQLITE_ERROR, || {
        forward!(xFullPathname, SQLITE_ERROR, name, n, out)
    })
}

unsafe extern "C" fn x_dl_open(_vfs: *mut sqlite3_vfs, name: *const c_char) -> *mut c_void {
    guard(std::ptr::null_mut(), || {
        forward!(xDlOpen, std::ptr::null_mut(), name)
    })
}

unsafe extern "C" fn x_dl_error(_vfs: *mut sqlite3_vfs, n: c_int, out: *mut c_char) {
    guard((), || forward!(xDlError, (), n, out))
}

unsafe extern "C" fn x_dl_sym(
    _vfs: *mut sqlite3_vfs,
    handle: *mut c_void,
    sym: *const c_char,
) -> Option<unsafe extern "C" fn(*mut sqlite3_vfs, *mut c_void, *const c_char)> {
    guard(None, || forward!(xDlSym, None, handle, sym))
}

unsafe extern "C" fn x_dl_close(_vfs: *mut sqlite3_vfs, handle: *mut c_void) {
    guard((), || forward!(xDlClose, (), handle))
}

unsafe extern "C" fn x_randomness(_vfs: *mut sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    guard(0, || forward!(xRandomness, 0, n, out))
}

unsafe extern "C" fn x_sleep(_vfs: *mut sqlite3_vfs, us: c_int) -> c_int {
    guard(0, || forward!(xSleep, 0, us))
}

unsafe extern "C" fn x_current_time(_vfs: *mut sqlite3_vfs, out: *mut f64) -> c_int {
    guard(SQLITE_ERROR, || forward!(xCurrentTime, SQLITE_ERROR, out))
}

unsafe extern "C" fn x_get_last_error(_vfs: *mut sqlite3_vfs, n: c_int, out: *mut c_char) -> c_int {
    guard(0, || forward!(xGetLastError, 0, n, out))
}

unsafe extern "C" fn x_current_time_int64(
    _vfs: *mut sqlite3_vfs,
    out: *mut sqlite3_int64,
) -> c_int {
    guard(SQLITE_ERROR, || {
        forward!(xCurrentTimeInt64, SQLITE_ERROR, out)
    })
}

unsafe extern "C" fn x_set_system_call(
    _vfs: *mut sqlite3_vfs,
    name: *const c_char,
    f: sqlite3_syscall_ptr,
) -> c_int {
    guard(SQLITE_ERROR, || {
        forward!(xSetSystemCall, SQLITE_ERROR, name, f)
    })
}

unsafe extern "C" fn x_get_system_call(
    _vfs: *mut sqlite3_vfs,
    name: *const c_char,
) -> sqlite3_syscall_ptr {
    guard(None, || forward!(xGetSystemCall, None, name))
}

unsafe extern "C" fn x_next_system_call(
    _vfs: *mut sqlite3_vfs,
    name: *const c_char,
) -> *const c_char {
    guard(std::ptr::null(), || {
        forward!(xNextSystemCall, std::ptr::null(), name)
    })
}

/// Logs a message prefixed with the VFS name (used by the io layer too).
pub fn warn(msg: &str) {
    log(libsqlite3_sys::SQLITE_WARNING, &format!("spoolvfs: {msg}"));
}
