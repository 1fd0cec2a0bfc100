//! The only place that talks to SQLite's C API. Everything here goes through the host's
//! `sqlite3_api_routines` table (stored by the entry point), never through linked symbols: a
//! loadable extension must use the host's SQLite, whatever its version (3.40 shells included).
//!
//! Invariants: every `extern "C"` function of the crate runs its body under [`guard`], so no panic
//! crosses into C; API slots newer than the running host are never read (see `api_min`).

pub mod io;
pub mod logq;
pub mod source;
pub mod sql;
pub mod vfs;

use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicPtr, Ordering};

use libsqlite3_sys::sqlite3_api_routines;

static API: AtomicPtr<sqlite3_api_routines> = AtomicPtr::new(std::ptr::null_mut());

/// Stores the host's API table (first call wins; SQLite passes the same global every time).
pub fn set_api(p: *const sqlite3_api_routines) {
    let _ = API.compare_exchange(
        std::ptr::null_mut(),
        p as *mut sqlite3_api_routines,
        Ordering::AcqRel,
        Ordering::Acquire,
    );
}

/// The host's API table, once the entry point has run.
pub fn api() -> Option<&'static sqlite3_api_routines> {
    let p = API.load(Ordering::Acquire);
    // SAFETY: `p` is null or the pointer SQLite passed to the entry point: `&sqlite3Apis`, a static
    // of the host library that lives as long as the process (we are loaded permanently).
    unsafe { p.as_ref() }
}

/// The running SQLite's version number (e.g. 3040001), 0 before init.
pub fn libversion_number() -> i32 {
    match api().and_then(|a| a.libversion_number) {
        // SAFETY: a slot of the host's API table; takes no arguments.
        Some(f) => unsafe { f() },
        None => 0,
    }
}

/// Installs our panic hook: panic messages go to `sqlite3_log`, never to the host's stderr. The
/// hook belongs to this library's own copy of std, so the host's Rust code (if any) is unaffected.
pub fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".to_string());
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()));
            log(
                libsqlite3_sys::SQLITE_INTERNAL,
                &format!("spoolvfs: internal error: {what}{}", at.unwrap_or_default()),
            );
        }));
    });
}

/// Runs `f`, turning a panic into `on_panic` so it never unwinds into C (the panic hook has
/// already logged it through `sqlite3_log`).
pub fn guard<T>(on_panic: T, f: impl FnOnce() -> T) -> T {
    guard_or_else(|| on_panic, f)
}

/// `guard` whose panic value is built only after a panic (for values that allocate: building
/// them eagerly would cost an allocation on every call of the commit path).
pub fn guard_or_else<T>(on_panic: impl FnOnce() -> T, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| on_panic())
}

/// Writes to SQLite's error log (`sqlite3_log`), which applications can route anywhere. From our
/// background threads the message goes through `logq` (never blocks a closing thread).
pub fn log(code: c_int, msg: &str) {
    if logq::on_background() {
        logq::enqueue(code, msg);
    } else {
        log_now(code, msg);
    }
}

fn log_now(code: c_int, msg: &str) {
    let Some(f) = api().and_then(|a| a.log) else {
        return;
    };
    let Ok(text) = CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: `sqlite3_log` is variadic with a printf format; "%s" consumes exactly the one
    // NUL-terminated string we pass, which outlives the call.
    unsafe { f(code, c"%s".as_ptr(), text.as_ptr()) };
}

/// Copies a C string into a Rust string (lossy), `None` for null.
///
/// # Safety
/// `p` must be null or point to a NUL-terminated string valid for the call.
pub unsafe fn c_str(p: *const c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: non-null and NUL-terminated by the caller's contract.
    Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Allocates `s` with `sqlite3_malloc` (via mprintf) for handing ownership to SQLite.
pub fn sqlite_string(s: &str) -> *mut c_char {
    let Some(mprintf) = api().and_then(|a| a.mprintf) else {
        return std::ptr::null_mut();
    };
    let Ok(text) = CString::new(s.replace('\0', " ")) else {
        return std::ptr::null_mut();
    };
    // SAFETY: "%s" with one NUL-terminated argument; the result is SQLite-owned memory.
    unsafe { mprintf(c"%s".as_ptr(), text.as_ptr()) }
}
