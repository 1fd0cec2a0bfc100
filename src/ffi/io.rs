//! Tracked files (the main database and its WAL): the wrapper layout, the tracked open, and the
//! io methods. Every method forwards to the real file first and returns its result unchanged;
//! capture runs after a successful forward, under its own panic guard, and a capture failure
//! only ever marks the backup for resync (the source never sees an error from us).
//!
//! ```text
//!   SQLite's buffer (szOsFile = size_of::<SpoolFile>() + unix szOsFile)
//!   ┌──────────────────────────────┬───────────────────────────────┐
//!   │ SpoolFile                    │ real file (unixFile)          │
//!   │  base.pMethods → IO_V{1,2,3} │  pMethods → unix io methods   │
//!   │  state: *const DbState (Arc) │                               │
//!   │  role: MainDb | Wal          │                               │
//!   │  checkpointing (main db)     │                               │
//!   │  conn: owning main-db object │                               │
//!   └──────────────────────────────┴───────────────────────────────┘
//! ```
//! Invariants: `base.pMethods` is non-null only after the real open succeeded (SQLite calls
//! xClose exactly when it is non-null); `state` owns one strong count of its `Arc`, released in
//! xClose; the io-method table has the same `iVersion` as the real file's.

use std::ffi::{c_char, c_int, c_void};
use std::mem::size_of;
use std::sync::Arc;

use libsqlite3_sys::{
    SQLITE_CANTOPEN, SQLITE_FCNTL_CKPT_DONE, SQLITE_FCNTL_CKPT_START, SQLITE_FCNTL_COMMIT_PHASETWO,
    SQLITE_FCNTL_PERSIST_WAL, SQLITE_FCNTL_VFSNAME, SQLITE_IOERR, SQLITE_IOERR_CLOSE,
    SQLITE_IOERR_FSTAT, SQLITE_IOERR_FSYNC, SQLITE_IOERR_LOCK, SQLITE_IOERR_READ,
    SQLITE_IOERR_SHMLOCK, SQLITE_IOERR_SHMMAP, SQLITE_IOERR_TRUNCATE, SQLITE_IOERR_UNLOCK,
    SQLITE_IOERR_WRITE, SQLITE_NOTFOUND, SQLITE_OK, SQLITE_SHM_EXCLUSIVE, SQLITE_SHM_UNLOCK,
    sqlite3_file, sqlite3_int64, sqlite3_io_methods, sqlite3_vfs,
};

use super::{api, c_str, guard, guard_or_else, sqlite_string};
use crate::capture::{Capture, ConnId, Outcome};
use crate::config::Config;
use crate::dbstate::{DbState, lock, registry};
use crate::wal::WalHeader;
use crate::walend::Ending;

/// What a file is to us.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    MainDb = 1,
    Wal = 2,
    /// The main database's rollback journal: watched only for its finalization (zeroed header or
    /// truncation), the end of a transaction that exclusive locking mode signals no other way.
    Journal = 3,
    /// Everything else: never wrapped.
    Untracked = 4,
}

/// Our part of the file object; the real file follows it in the same buffer.
#[repr(C)]
pub struct SpoolFile {
    base: sqlite3_file,
    state: *const DbState,
    role: Role,
    /// Main db only: this connection is between `CKPT_START` and `CKPT_DONE`. Its db writes are
    /// copies of frames already captured (and possibly older than what the backup holds), so they
    /// must not be captured. Per connection: other connections keep writing meanwhile.
    checkpointing: u32,
    /// The connection: address of its main-db wrapper (the WAL's owner for a WAL file).
    conn: ConnId,
}

// The real file must start 8-byte aligned right after the wrapper.
const _: () = assert!(size_of::<SpoolFile>().is_multiple_of(8));

/// Bytes our wrapper adds to the underlying VFS's `szOsFile`.
pub fn wrapper_size() -> c_int {
    size_of::<SpoolFile>() as c_int
}

/// The real file inside a wrapper.
///
/// # Safety
/// `f` must point to a buffer of at least `wrapper_size() + root.szOsFile` bytes.
unsafe fn real(f: *mut sqlite3_file) -> *mut sqlite3_file {
    // SAFETY: in bounds of the buffer by the caller's contract; the layout is documented above.
    unsafe { (f as *mut u8).add(size_of::<SpoolFile>()) as *mut sqlite3_file }
}

/// The real file's method table.
///
/// # Safety
/// `f` must be an opened wrapper (its real file opened successfully).
unsafe fn real_methods(f: *mut sqlite3_file) -> &'static sqlite3_io_methods {
    // SAFETY: the real file was opened, so its pMethods points to the unix VFS's static table.
    unsafe { &*(*real(f)).pMethods }
}

/// The database state of an opened wrapper.
///
/// # Safety
/// `f` must be an opened wrapper.
unsafe fn state_of<'a>(f: *mut sqlite3_file) -> &'a DbState {
    // SAFETY: opened wrappers hold a strong count of this Arc until xClose.
    unsafe { &*(*(f as *mut SpoolFile)).state }
}

/// # Safety
/// `f` must be an opened wrapper.
unsafe fn conn_of(f: *mut sqlite3_file) -> ConnId {
    // SAFETY: by the caller's contract `f` is our wrapper.
    unsafe { (*(f as *mut SpoolFile)).conn }
}

/// # Safety
/// `f` must be an opened wrapper.
unsafe fn role_of(f: *mut sqlite3_file) -> Role {
    // SAFETY: by the caller's contract `f` is our wrapper.
    unsafe { (*(f as *mut SpoolFile)).role }
}

/// True if `f` is a file opened by this VFS (its method table is one of ours).
///
/// # Safety
/// `f` must be null or point to a live `sqlite3_file`.
pub unsafe fn is_ours(f: *const sqlite3_file) -> bool {
    if f.is_null() {
        return false;
    }
    // SAFETY: non-null and live by the caller's contract.
    let m = unsafe { (*f).pMethods };
    std::ptr::eq(m, &IO_V1) || std::ptr::eq(m, &IO_V2) || std::ptr::eq(m, &IO_V3)
}

/// The database state behind a file object (one that answered `SPOOL_FCNTL_FILE`), if it is ours.
///
/// # Safety
/// `f` must be null or point to a live `sqlite3_file`.
pub unsafe fn state_of_file(f: *mut sqlite3_file) -> Option<Arc<DbState>> {
    // SAFETY: forwarded contract.
    if !unsafe { is_ours(f) } {
        return None;
    }
    // SAFETY: ours and opened (a method table is set only after a successful open).
    let p = unsafe { (*(f as *mut SpoolFile)).state };
    if p.is_null() {
        return None;
    }
    // SAFETY: `p` came from Arc::into_raw and the file still holds that count.
    unsafe { Arc::increment_strong_count(p) };
    // SAFETY: we just added the count this Arc now owns.
    Some(unsafe { Arc::from_raw(p) })
}

/// Message of the loss reported when capture panicked.
const CAPTURE_PANIC: &str = "internal error (panic) in capture";

/// Runs a capture step of connection `conn` under the capture lock and publishes its outcome; a
/// panic inside discards the connection's transaction and becomes a reported loss (resync), never
/// an error for SQLite.
fn capture(state: &DbState, conn: ConnId, ends_txn: bool, f: impl FnOnce(&mut Capture) -> Outcome) {
    // Returns only the loss (a small value through catch_unwind): this runs several times per
    // commit, and a sealed record is published inside, under the capture lock, so that records
    // are published in sequence order.
    let lost = guard_or_else(
        || Some(CAPTURE_PANIC.to_owned()),
        || {
            let mut cap = lock(&state.capture);
            if crate::faults::active("capture_panic") {
                panic!("injected capture panic");
            }
            let out = f(&mut cap);
            if let Some(s) = &out.sealed {
                state.publish_sealed(s);
            }
            out.lost
        },
    );
    let Some(msg) = lost else { return };
    if msg == CAPTURE_PANIC {
        // Whatever the step did half-way, the transaction cannot be trusted: drop all of it.
        guard((), || lock(&state.capture).poisoned(conn, ends_txn));
    }
    state.report_lost(msg);
}

fn uri_names(name: *const c_char) -> Vec<String> {
    let mut out = Vec::new();
    let Some(key) = api().and_then(|a| a.uri_key) else {
        return out;
    };
    if super::libversion_number() < 3_031_000 {
        return out;
    }
    for i in 0..64 {
        // SAFETY: `name` is a main-db filename from SQLite (URI parameters follow it).
        let k = unsafe { key(name, i) };
        // SAFETY: null or a NUL-terminated string inside SQLite's filename buffer.
        match unsafe { c_str(k) } {
            Some(k) => out.push(k),
            None => break,
        }
    }
    out
}

/// Says, in the database's `spool_status` and SQLite's log, that a WAL is passed through
/// uncaptured (see `open_tracked`) and what that costs.
fn report_untracked_wal(wal_name: Option<String>) {
    let wal = wal_name.unwrap_or_default();
    let msg = format!(
        "{wal}: opened by a connection whose database file is not spool's own (a VFS layered \
         above spool that does not forward unknown file controls, or SQLite older than 3.32): \
         its WAL commits are not captured; the backup gets them by a resync once the consumer \
         sees them in the source"
    );
    let state = wal
        .strip_suffix("-wal")
        .and_then(|db| crate::dbstate::registry::find(std::path::Path::new(db)));
    match state {
        Some(state) => state.report_error(msg),
        None => super::vfs::warn(&msg),
    }
}

fn uri_param(name: *const c_char, key: &str) -> Option<String> {
    let f = api()?.uri_parameter?;
    let k = std::ffi::CString::new(key).ok()?;
    // SAFETY: `name` is a main-db filename from SQLite; `k` is NUL-terminated.
    let v = unsafe { f(name, k.as_ptr()) };
    // SAFETY: null or a NUL-terminated string inside SQLite's filename buffer.
    unsafe { c_str(v) }
}

/// A file-control opcode of our own: answered by spool's files with the spool file object itself
/// (`arg` is a `sqlite3_file**` to fill in). A VFS layered above spool forwards opcodes it does not
/// know, so this finds spool's file under any stack, where `SQLITE_FCNTL_FILE_POINTER` returns the
/// top-level file. Any other VFS answers SQLITE_NOTFOUND. The value spells "SPOL".
pub const SPOOL_FCNTL_FILE: c_int = 0x5350_4F4C;

/// Spool's file object behind the pager's main-db file `top`: `top` itself when it is ours; under
/// a VFS layered above spool, the one that answers `SPOOL_FCNTL_FILE` (such a VFS forwards an
/// opcode it does not know to the file beneath it); null when there is none, or the upper VFS
/// does not forward the opcode.
///
/// # Safety
/// `top` must be null or the pager's live, opened main-db file object.
unsafe fn spool_file_beneath(top: *mut sqlite3_file) -> *mut sqlite3_file {
    // SAFETY: null or live by the caller's contract.
    if top.is_null() || unsafe { is_ours(top) } {
        return top;
    }
    // SAFETY: an opened file object has a method table, which lives as long as the file.
    let Some(file_control) = (unsafe { (*top).pMethods.as_ref() }).and_then(|m| m.xFileControl)
    else {
        return std::ptr::null_mut();
    };
    let mut ours: *mut sqlite3_file = std::ptr::null_mut();
    // SAFETY: a live file and its own method; for our opcode `arg` is a `sqlite3_file**`, which
    // spool's file fills in and any other file leaves alone (it answers SQLITE_NOTFOUND).
    let rc = unsafe { file_control(top, SPOOL_FCNTL_FILE, &mut ours as *mut _ as *mut c_void) };
    // SAFETY: `ours` is null or the file object that answered (checked to be ours before use).
    if rc == SQLITE_OK && unsafe { is_ours(ours) } {
        ours
    } else {
        std::ptr::null_mut()
    }
}

/// Opens a main database, its WAL or its rollback journal with tracking.
///
/// # Safety
/// Arguments as SQLite passes them to xOpen; `root` is the unix VFS.
pub unsafe fn open_tracked(
    root: *mut sqlite3_vfs,
    name: *const c_char,
    file: *mut sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
    role: Role,
) -> c_int {
    // SAFETY: `file` is SQLite's buffer; clearing pMethods first means a failed open is never
    // closed.
    unsafe { (*file).pMethods = std::ptr::null() };
    // Find the owner before opening: the WAL or journal belongs to the main db whose pager opens
    // it.
    let mut owner: *mut sqlite3_file = std::ptr::null_mut();
    let state: Option<Arc<DbState>> = if role != Role::MainDb {
        owner = match api().and_then(|a| a.database_file_object) {
            // SAFETY: `name` is a WAL filename created by the pager, as this function requires.
            Some(f) if super::libversion_number() >= 3_032_000 => unsafe { f(name) },
            _ => std::ptr::null_mut(),
        };
        // SAFETY: null, or the pager's live main-db file object.
        owner = unsafe { spool_file_beneath(owner) };
        // SAFETY: null, or spool's live main-db file object of that connection.
        unsafe { state_of_file(owner) }
    } else {
        None
    };
    // SAFETY: root is the live unix VFS.
    let Some(open) = (unsafe { root.as_ref() }).and_then(|r| r.xOpen) else {
        return SQLITE_CANTOPEN;
    };
    if role == Role::Journal && state.is_none() {
        // A journal we have no database for (a hot journal opened before its database is ours,
        // or a host older than 3.32): not needed for correctness, so just pass it through.
        // SAFETY: opening straight into SQLite's buffer, as for untracked files.
        return unsafe { open(root, name, file, flags, out_flags) };
    }
    if role == Role::Wal && state.is_none() {
        // No spool file behind the pager's database file: a VFS between SQLite and spool that
        // does not forward our file-control opcode, or a host older than 3.32. We cannot tell
        // which of our connections this WAL belongs to, so its frames are not captured.
        // Refusing the open would make the database unusable in WAL mode; instead the WAL is
        // passed through, and its commits reach the backup the way writes made without spoolvfs
        // do: the consumer finds them (committed frames the spool lacks) and resyncs.
        // SAFETY: `name` is the WAL's NUL-terminated filename, as this function requires.
        report_untracked_wal(unsafe { c_str(name) });
        // SAFETY: opening straight into SQLite's buffer, as for untracked files.
        return unsafe { open(root, name, file, flags, out_flags) };
    }
    // SAFETY: the real file sits inside SQLite's buffer (szOsFile includes it); args unchanged.
    let rc = unsafe { open(root, name, real(file), flags, out_flags) };
    if rc != SQLITE_OK {
        return rc;
    }
    // SAFETY: the real open succeeded.
    let real_m = unsafe { (*real(file)).pMethods };
    if real_m.is_null() {
        return rc;
    }
    let (state, role) = if role != Role::MainDb {
        match state {
            Some(s) => (s, role),
            None => {
                // Both roles without a state returned above; kept total rather than trusted.
                // SAFETY: the real file is open; close it since we will not hand it out.
                unsafe { ((*real_m).xClose.unwrap_or(noop_close))(real(file)) };
                return SQLITE_CANTOPEN;
            }
        }
    } else {
        // SAFETY: the real file is open.
        match unsafe { main_db_state(root, name, real(file)) } {
            Ok(s) => (s, Role::MainDb),
            Err(msg) => {
                super::vfs::warn(&msg);
                // SAFETY: the real file is open; close it since the open is refused.
                unsafe { ((*real_m).xClose.unwrap_or(noop_close))(real(file)) };
                return SQLITE_CANTOPEN;
            }
        }
    };
    if role == Role::Wal {
        let mut hdr = [0u8; crate::wal::WAL_HEADER_LEN as usize];
        // SAFETY: reading 32 bytes into a local buffer from the opened real file.
        let rc = unsafe { read_real(real(file), &mut hdr, 0) };
        if rc == SQLITE_OK {
            capture(&state, owner as ConnId, false, |c| {
                c.on_wal_open(&hdr);
                Outcome::default()
            });
        }
    }
    // SAFETY: `file` is our wrapper; the real method table is live.
    unsafe {
        let w = file as *mut SpoolFile;
        (*w).state = Arc::into_raw(state);
        (*w).role = role;
        (*w).checkpointing = 0;
        (*w).conn = if role == Role::MainDb {
            file as ConnId
        } else {
            owner as ConnId
        };
        (*w).base.pMethods = match (*real_m).iVersion {
            1 => &IO_V1,
            2 => &IO_V2,
            _ => &IO_V3,
        };
    }
    SQLITE_OK
}

unsafe extern "C" fn noop_close(_f: *mut sqlite3_file) -> c_int {
    SQLITE_OK
}

/// Reads from a real file, treating a short read as success (the buffer is zero-filled by unix).
///
/// # Safety
/// `f` must be an opened real file.
unsafe fn read_real(f: *mut sqlite3_file, buf: &mut [u8], off: i64) -> c_int {
    // SAFETY: `f` is open; its method table is valid.
    let Some(read) = (unsafe { (*(*f).pMethods).xRead }) else {
        return SQLITE_IOERR_READ;
    };
    // SAFETY: `buf` is a valid writable buffer of the given length.
    let rc = unsafe { read(f, buf.as_mut_ptr() as *mut c_void, buf.len() as c_int, off) };
    if rc == libsqlite3_sys::SQLITE_IOERR_SHORT_READ {
        SQLITE_OK
    } else {
        rc
    }
}

/// The valid WAL header at offset 0 of the WAL wrapper `f`'s real file, if it has one.
///
/// # Safety
/// `f` is an opened WAL wrapper.
unsafe fn wal_header_on_disk(f: *mut sqlite3_file) -> Option<WalHeader> {
    let mut h = [0u8; crate::wal::WAL_HEADER_LEN as usize];
    // SAFETY: `f` is an opened WAL wrapper, so its real file is open.
    let rc = unsafe { read_real(real(f), &mut h, 0) };
    if rc == SQLITE_OK {
        WalHeader::parse(&h)
    } else {
        None
    }
}

/// SQLite is about to write `new` as the WAL header. A header with other salts than the one on
/// disk starts a generation and so ends the previous one, which is checked first.
///
/// # Safety
/// `f` is an opened WAL wrapper.
unsafe fn before_wal_header_write(f: *mut sqlite3_file, new: &[u8]) {
    // SAFETY: as required.
    let on_disk = unsafe { wal_header_on_disk(f) };
    let new = WalHeader::parse(new).map(|h| h.salts());
    if on_disk.is_some_and(|h| Some(h.salts()) == new) {
        // The same generation's header written again (after a rolled-back restart).
        return;
    }
    // SAFETY: as required.
    check_wal_ending(unsafe { state_of(f) }, on_disk, Ending::Restart);
}

/// Before a writer of ours ends a WAL generation: reports a loss if the spool lacks any of its
/// commits (`crate::walend`). Runs once per generation, never on the commit path.
pub(super) fn check_wal_ending(state: &DbState, on_disk: Option<WalHeader>, how: Ending) {
    let lost = guard_or_else(
        || Some(CAPTURE_PANIC.to_owned()),
        || lock(&state.capture).check_wal_ending(on_disk, how),
    );
    if let Some(msg) = lost {
        state.report_lost(msg);
    }
}

/// Finds or creates the state of the main database being opened.
///
/// # Safety
/// `real_file` is the freshly opened real main-db file; `name` its SQLite filename.
unsafe fn main_db_state(
    root: *mut sqlite3_vfs,
    name: *const c_char,
    real_file: *mut sqlite3_file,
) -> Result<Arc<DbState>, String> {
    // SAFETY: SQLite's filename, NUL-terminated.
    let path = unsafe { c_str(name) }.ok_or("database without a name")?;
    let names = uri_names(name);
    let cfg = Config::from_uri(std::path::Path::new(&path), |k| uri_param(name, k), &names)
        .map_err(|e| format!("cannot open {path} with vfs=spool: {e}"))?;
    registry::acquire(&cfg, || {
        let mut page1 = [0u8; crate::dbheader::HEADER_LEN];
        // SAFETY: the real file is open.
        let _ = unsafe { read_real(real_file, &mut page1, 0) };
        let mut size: sqlite3_int64 = 0;
        // SAFETY: the real file is open; `size` is a valid out pointer.
        if let Some(fs) = unsafe { (*(*real_file).pMethods).xFileSize } {
            // SAFETY: as above.
            unsafe { fs(real_file, &mut size) };
        }
        // SAFETY: `root` is the registered unix VFS.
        let opener = unsafe { super::source::SourceOpener::new(root, &cfg.db) };
        crate::consumer::start(
            cfg.clone(),
            &page1,
            size.max(0) as u64,
            Box::new(move || opener.open()),
        )
    })
}

// ---- io methods ---------------------------------------------------------------------------------

/// Calls a method of the real file: `call!(file, xMethod, default_rc, args...)`.
macro_rules! call {
    ($f:expr, $m:ident, $none:expr $(, $arg:expr)*) => {{
        // SAFETY: `$f` is an opened wrapper, so its real file and method table are valid.
        match unsafe { real_methods($f) }.$m {
            // SAFETY: forwarding SQLite's arguments unchanged to the real file.
            Some(method) => unsafe { method(real($f) $(, $arg)*) },
            None => $none,
        }
    }};
}

unsafe extern "C" fn x_close(f: *mut sqlite3_file) -> c_int {
    guard(SQLITE_IOERR_CLOSE, || {
        let rc = call!(f, xClose, SQLITE_OK);
        // SAFETY: `f` is our opened wrapper; take back its Arc count exactly once.
        let (state, role) = unsafe {
            let w = f as *mut SpoolFile;
            let s = (*w).state;
            (*w).state = std::ptr::null();
            (s, (*w).role)
        };
        if !state.is_null() {
            // SAFETY: from Arc::into_raw in open_tracked; the count is owned by this file.
            let state = unsafe { Arc::from_raw(state) };
            if role == Role::MainDb {
                capture(&state, f as ConnId, true, |c| {
                    c.on_connection_close(f as ConnId)
                });
                registry::release(&state);
            }
        }
        rc
    })
}

unsafe extern "C" fn x_read(
    f: *mut sqlite3_file,
    buf: *mut c_void,
    amt: c_int,
    off: sqlite3_int64,
) -> c_int {
    guard(SQLITE_IOERR_READ, || {
        call!(f, xRead, SQLITE_IOERR_READ, buf, amt, off)
    })
}

unsafe extern "C" fn x_write(
    f: *mut sqlite3_file,
    buf: *const c_void,
    amt: c_int,
    off: sqlite3_int64,
) -> c_int {
    guard(SQLITE_IOERR_WRITE, || {
        // A WAL header write may start a new generation: check the one it ends, before it goes.
        let header_write = off == 0 && amt as u64 == crate::wal::WAL_HEADER_LEN;
        // SAFETY: opened wrapper.
        if header_write && unsafe { role_of(f) } == Role::Wal {
            // SAFETY: SQLite's buffer holds `amt` readable bytes for the duration of the call.
            let new = unsafe { std::slice::from_raw_parts(buf as *const u8, amt as usize) };
            // SAFETY: `f` is an opened WAL wrapper.
            unsafe { before_wal_header_write(f, new) };
        }
        let rc = call!(f, xWrite, SQLITE_IOERR_WRITE, buf, amt, off);
        if rc == SQLITE_OK && amt > 0 && off >= 0 {
            // SAFETY: SQLite's buffer holds `amt` readable bytes for the duration of the call.
            let data = unsafe { std::slice::from_raw_parts(buf as *const u8, amt as usize) };
            // SAFETY: opened wrapper.
            let (state, role, conn) = unsafe { (state_of(f), role_of(f), conn_of(f)) };
            match role {
                // SAFETY: opened wrapper; reading our own field.
                Role::MainDb if unsafe { (*(f as *mut SpoolFile)).checkpointing } == 0 => {
                    capture(state, conn, false, |c| {
                        c.on_db_write(conn, off as u64, data)
                    })
                }
                Role::MainDb => {}
                Role::Wal => {
                    let mut current_header = || {
                        let mut h = [0u8; crate::wal::WAL_HEADER_LEN as usize];
                        // SAFETY: `f` is an opened WAL wrapper, so its real file is open.
                        (unsafe { read_real(real(f), &mut h, 0) } == SQLITE_OK).then_some(h)
                    };
                    capture(state, conn, false, |c| {
                        c.on_wal_write(conn, off as u64, data, &mut current_header)
                    })
                }
                // Finalization writes exactly 28 zero bytes at the start (the header of a new
                // journal is never all zero: it carries a random nonce).
                Role::Journal if off == 0 && data.len() == 28 && data.iter().all(|&b| b == 0) => {
                    capture(state, conn, false, |c| {
                        c.on_journal_finalized(conn);
                        Outcome::default()
                    })
                }
                Role::Journal | Role::Untracked => {}
            }
        }
        rc
    })
}

unsafe extern "C" fn x_truncate(f: *mut sqlite3_file, size: sqlite3_int64) -> c_int {
    guard(SQLITE_IOERR_TRUNCATE, || {
        // SAFETY: opened wrapper.
        if size < crate::wal::WAL_HEADER_LEN as i64 && unsafe { role_of(f) } == Role::Wal {
            // Checkpoint TRUNCATE (or a size limit at close) is about to empty the WAL.
            // SAFETY: opened WAL wrapper.
            let on_disk = unsafe { wal_header_on_disk(f) };
            // SAFETY: opened wrapper.
            check_wal_ending(unsafe { state_of(f) }, on_disk, Ending::Truncate);
        }
        let rc = call!(f, xTruncate, SQLITE_IOERR_TRUNCATE, size);
        // SAFETY: opened wrapper.
        let (state, role, conn) = unsafe { (state_of(f), role_of(f), conn_of(f)) };
        if rc == SQLITE_OK && role == Role::Wal {
            capture(state, conn, false, |c| {
                c.on_wal_truncate(size.max(0) as u64);
                Outcome::default()
            });
            if size < crate::wal::WAL_HEADER_LEN as i64 {
                // Emptied like a deletion (a persistent WAL's last close under a size limit, or
                // a TRUNCATE checkpoint): the source holds every commit and, under the
                // checkpointer's locks, nobody can write it now. Only the last close (which
                // asked whether the WAL persists) may wait for a settled stamp: a TRUNCATE
                // checkpoint holds the WAL write lock, and other writers would wait with it.
                let at_close = state
                    .wal_persist_asked
                    .swap(false, std::sync::atomic::Ordering::Relaxed);
                crate::consumer::cleanclose::note_wal_ended(state, at_close);
            }
        } else if rc == SQLITE_OK && role == Role::Journal && size == 0 {
            // TRUNCATE mode (and PERSIST with journal_size_limit=0) finalize by truncation.
            capture(state, conn, false, |c| {
                c.on_journal_finalized(conn);
                Outcome::default()
            });
        }
        rc
    })
}

unsafe extern "C" fn x_sync(f: *mut sqlite3_file, flags: c_int) -> c_int {
    guard(SQLITE_IOERR_FSYNC, || {
        call!(f, xSync, SQLITE_IOERR_FSYNC, flags)
    })
}

unsafe extern "C" fn x_file_size(f: *mut sqlite3_file, size: *mut sqlite3_int64) -> c_int {
    guard(SQLITE_IOERR_FSTAT, || {
        call!(f, xFileSize, SQLITE_IOERR_FSTAT, size)
    })
}

unsafe extern "C" fn x_lock(f: *mut sqlite3_file, level: c_int) -> c_int {
    guard(SQLITE_IOERR_LOCK, || {
        call!(f, xLock, SQLITE_IOERR_LOCK, level)
    })
}

/// The real main-db file as it is when a transaction of its connection ends (`DbFileNow`): read
/// only if capture asks. Built only from an opened main-db wrapper, inside the VFS call that
/// uses it.
struct RealFileNow(*mut sqlite3_file);

impl crate::capture::DbFileNow for RealFileNow {
    fn header(&mut self) -> Option<[u8; crate::dbheader::HEADER_LEN]> {
        let mut h = [0u8; crate::dbheader::HEADER_LEN];
        // SAFETY: built only from an opened main-db wrapper (see the type), whose real file is
        // open for as long as the VFS call that uses this lasts.
        (unsafe { read_real(real(self.0), &mut h, 0) } == SQLITE_OK).then_some(h)
    }

    fn size(&mut self) -> Option<u64> {
        let mut size: sqlite3_int64 = 0;
        // SAFETY: as in `header`; `size` is a valid out pointer.
        let rc = unsafe {
            let r = real(self.0);
            (*(*r).pMethods).xFileSize.map(|fs| fs(r, &mut size))
        };
        (rc == Some(SQLITE_OK)).then_some(size.max(0) as u64)
    }
}

unsafe extern "C" fn x_unlock(f: *mut sqlite3_file, level: c_int) -> c_int {
    guard(SQLITE_IOERR_UNLOCK, || {
        // Seal before the lock is released so the record is ordered before the next writer's.
        // Only a release to SHARED or less can end a transaction, and only an open one.
        // SAFETY: opened wrapper.
        if unsafe { role_of(f) } == Role::MainDb
            && level <= libsqlite3_sys::SQLITE_LOCK_SHARED
            // SAFETY: opened wrapper.
            && unsafe { state_of(f) }.txn_claim.held()
        {
            // `f` is an opened main-db wrapper.
            let mut file = RealFileNow(f);
            // SAFETY: opened wrapper.
            let (state, conn) = unsafe { (state_of(f), conn_of(f)) };
            capture(
                state,
                conn,
                level <= libsqlite3_sys::SQLITE_LOCK_SHARED,
                |c| c.on_db_unlock(conn, level, &mut file),
            );
        }
        let rc = call!(f, xUnlock, SQLITE_IOERR_UNLOCK, level);
        if level == libsqlite3_sys::SQLITE_LOCK_NONE {
            // The end of a transaction, on an application thread: the consumer's queued log
            // messages can come out here (see `logq`).
            crate::ffi::logq::deliver_queued();
        }
        rc
    })
}

unsafe extern "C" fn x_check_reserved_lock(f: *mut sqlite3_file, out: *mut c_int) -> c_int {
    guard(SQLITE_IOERR, || {
        call!(f, xCheckReservedLock, SQLITE_IOERR, out)
    })
}

unsafe extern "C" fn x_file_control(f: *mut sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    guard(SQLITE_NOTFOUND, || {
        if op == SPOOL_FCNTL_FILE {
            if arg.is_null() {
                return SQLITE_NOTFOUND;
            }
            // SAFETY: for our opcode `arg` is a `sqlite3_file**` (see the constant's contract).
            unsafe { *(arg as *mut *mut sqlite3_file) = f };
            return SQLITE_OK;
        }
        // SAFETY: opened wrapper.
        let (state, role, conn) = unsafe { (state_of(f), role_of(f), conn_of(f)) };
        if role == Role::MainDb && (op == SQLITE_FCNTL_CKPT_START || op == SQLITE_FCNTL_CKPT_DONE) {
            let started = (op == SQLITE_FCNTL_CKPT_START) as u32;
            // SAFETY: opened wrapper; our own field, used only under this connection's mutex.
            unsafe { (*(f as *mut SpoolFile)).checkpointing = started };
        }
        if role == Role::MainDb
            && op == SQLITE_FCNTL_PERSIST_WAL
            && !arg.is_null()
            // SAFETY: for PERSIST_WAL `arg` is an `int*`; a negative value asks.
            && unsafe { *(arg as *const c_int) } < 0
        {
            state
                .wal_persist_asked
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let rc = call!(f, xFileControl, SQLITE_NOTFOUND, op, arg);
        match op {
            // Sent only for commits, after the commit is durable and still under the lock.
            // Never fail it: the transaction is already committed.
            // In WAL mode the record was sealed at the write lock's release, before this.
            SQLITE_FCNTL_COMMIT_PHASETWO if role == Role::MainDb && state.txn_claim.held() => {
                // `f` is an opened main-db wrapper.
                let mut file = RealFileNow(f);
                capture(state, conn, true, |c| {
                    c.on_commit_phase_two(conn, &mut file)
                });
            }
            SQLITE_FCNTL_VFSNAME if rc == SQLITE_OK && !arg.is_null() => {
                let slot = arg as *mut *mut c_char;
                // SAFETY: for VFSNAME, `arg` is a `char**` holding the inner VFS's
                // sqlite3_malloc'd name (or null).
                let inner = unsafe { c_str(*slot) };
                let name = format!("spool/{}", inner.as_deref().unwrap_or("unix"));
                if let Some(free) = api().and_then(|a| a.free) {
                    // SAFETY: freeing the inner string we are replacing, with SQLite's allocator.
                    unsafe { free(*slot as *mut c_void) };
                }
                // SAFETY: handing SQLite a new sqlite3_malloc'd string in the same slot.
                unsafe { *slot = sqlite_string(&name) };
            }
            SQLITE_FCNTL_VFSNAME if !arg.is_null() => {
                // SAFETY: as above.
                unsafe { *(arg as *mut *mut c_char) = sqlite_string("spool/unix") };
                return SQLITE_OK;
            }
            _ => {}
        }
        rc
    })
}

unsafe extern "C" fn x_sector_size(f: *mut sqlite3_file) -> c_int {
    guard(4096, || call!(f, xSectorSize, 4096))
}

unsafe extern "C" fn x_device_characteristics(f: *mut sqlite3_file) -> c_int {
    guard(0, || call!(f, xDeviceCharacteristics, 0))
}

unsafe extern "C" fn x_shm_map(
    f: *mut sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    guard(SQLITE_IOERR_SHMMAP, || {
        call!(f, xShmMap, SQLITE_IOERR_SHMMAP, region, size, extend, pp)
    })
}

unsafe extern "C" fn x_shm_lock(
    f: *mut sqlite3_file,
    offset: c_int,
    n: c_int,
    flags: c_int,
) -> c_int {
    guard(SQLITE_IOERR_SHMLOCK, || {
        // Slot 0 is the WAL write lock; its release ends a write transaction, after SQLite has
        // published the commit in the wal-index. Seal *before* forwarding the release, so the
        // record takes its sequence number while no other writer (any process) can commit.
        let write_unlock = flags == (SQLITE_SHM_UNLOCK | SQLITE_SHM_EXCLUSIVE) && offset == 0;
        if write_unlock
            // SAFETY: opened wrapper.
            && unsafe { role_of(f) } == Role::MainDb
            // SAFETY: opened wrapper.
            && unsafe { state_of(f) }.txn_claim.held()
        {
            // SAFETY: opened wrapper.
            let (state, conn) = unsafe { (state_of(f), conn_of(f)) };
            capture(state, conn, true, |c| c.on_wal_write_unlock(conn));
        }
        call!(f, xShmLock, SQLITE_IOERR_SHMLOCK, offset, n, flags)
    })
}

unsafe extern "C" fn x_shm_barrier(f: *mut sqlite3_file) {
    guard((), || call!(f, xShmBarrier, ()))
}

unsafe extern "C" fn x_shm_unmap(f: *mut sqlite3_file, delete: c_int) -> c_int {
    guard(SQLITE_IOERR, || call!(f, xShmUnmap, SQLITE_OK, delete))
}

unsafe extern "C" fn x_fetch(
    f: *mut sqlite3_file,
    off: sqlite3_int64,
    amt: c_int,
    pp: *mut *mut c_void,
) -> c_int {
    guard(SQLITE_IOERR_READ, || {
        call!(f, xFetch, SQLITE_OK, off, amt, pp)
    })
}

unsafe extern "C" fn x_unfetch(f: *mut sqlite3_file, off: sqlite3_int64, p: *mut c_void) -> c_int {
    guard(SQLITE_IOERR, || call!(f, xUnfetch, SQLITE_OK, off, p))
}

const fn methods(version: c_int) -> sqlite3_io_methods {
    sqlite3_io_methods {
        iVersion: version,
        xClose: Some(x_close),
        xRead: Some(x_read),
        xWrite: Some(x_write),
        xTruncate: Some(x_truncate),
        xSync: Some(x_sync),
        xFileSize: Some(x_file_size),
        xLock: Some(x_lock),
        xUnlock: Some(x_unlock),
        xCheckReservedLock: Some(x_check_reserved_lock),
        xFileControl: Some(x_file_control),
        xSectorSize: Some(x_sector_size),
        xDeviceCharacteristics: Some(x_device_characteristics),
        xShmMap: if version >= 2 { Some(x_shm_map) } else { None },
        xShmLock: if version >= 2 { Some(x_shm_lock) } else { None },
        xShmBarrier: if version >= 2 {
            Some(x_shm_barrier)
        } else {
            None
        },
        xShmUnmap: if version >= 2 {
            Some(x_shm_unmap)
        } else {
            None
        },
        xFetch: if version >= 3 { Some(x_fetch) } else { None },
        xUnfetch: if version >= 3 { Some(x_unfetch) } else { None },
    }
}

static IO_V1: sqlite3_io_methods = methods(1);
static IO_V2: sqlite3_io_methods = methods(2);
static IO_V3: sqlite3_io_methods = methods(3);
