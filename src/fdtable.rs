//! The consumer thread's own descriptor table, and the rules that keep a descriptor from being
//! used, or closed, by a thread of another table.
//!
//! Why the consumer leaves the process's table: while a table is shared by two threads, Linux
//! looks up the descriptor of every system call through an atomic reference count (`fdget` and
//! `fput` take their shared path once the table's user count is above one). SQLite makes about
//! eight such calls per small WAL commit (`fcntl` locks, `pwrite`), so a background thread that
//! merely exists costs the application's writer several percent of its CPU time: measured with a
//! forwarding shim and one idle thread (CPU per transaction 1.04-1.05x plain), which the same
//! thread after `unshare(CLONE_FILES)` brings back to 0.99-1.00x. The consumer therefore
//! leaves the process's table first thing (`leave_shared`), and the application's threads get
//! the single-owner fast path back.
//!
//! What a private table changes:
//! - A descriptor number means a file only in the table that opened it: in another table it names
//!   nothing, or some other file. A descriptor must therefore never cross: the consumer opens its
//!   own (the source reader, backups, segments it reads, its own descriptor of the segment it
//!   reserves blocks in), and a descriptor kept in state both sides reach is a [`HomeFile`],
//!   which refuses to be used outside its table and is closed only inside it.
//! - POSIX record locks belong to the table that took them (the kernel's lock owner is the
//!   `files_struct`). Closing a descriptor in the consumer's table drops only the consumer
//!   table's own POSIX locks (it takes none: its locks are OFD locks), never the SQLite locks of
//!   the application's connections. A private table is also what lets the consumer read the
//!   source through a plain descriptor it may close (`consumer::open_source`).
//! - The table starts as a copy of the process's. Every copy is closed at once: a copy would keep
//!   the host's files, pipes and sockets open for as long as the consumer lives (a deleted file's
//!   blocks held, a peer never seeing end of file). Standard input, output and error are kept
//!   when they are terminals, `/dev/null` or pipes, and otherwise replaced by `/dev/null` (a
//!   daemon that closed them may have reused their numbers for anything).
//!
//! Invariants:
//! - `current()` is `SHARED` on every thread that uses the process's table, and a unique,
//!   never reused id on a thread that left it.
//! - A [`HomeFile`] is used only on a thread of its home table; elsewhere `get` is an error,
//!   never a use of whatever that number names there.
//! - A [`HomeFile`] dropped outside its home is not closed there: its descriptor is queued, and
//!   the next thread of its home that calls `close_deferred` closes it. Queued descriptors of a
//!   table that ended (its thread exited, and the kernel closed its table) are forgotten.
//! - If leaving fails (an old kernel, a seccomp filter), the consumer stays on the shared table,
//!   where every descriptor means the same everywhere: all of the above still holds.

use std::cell::Cell;
use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

/// Which descriptor table a thread uses.
pub type TableId = u64;

/// The process's table, shared by the application's threads.
pub const SHARED: TableId = 0;

thread_local! {
    static TABLE: Cell<TableId> = const { Cell::new(SHARED) };
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Descriptors dropped outside their table, waiting for a thread of it; and the private tables
/// whose threads still run.
struct Deferred {
    queue: Vec<(TableId, RawFd)>,
    live: HashSet<TableId>,
}

static DEFERRED: Mutex<Option<Deferred>> = Mutex::new(None);
/// Set while `DEFERRED` holds queued descriptors: `close_deferred` sits on the commit path and
/// must cost one load when there is nothing to do.
static PENDING: AtomicBool = AtomicBool::new(false);

fn with_deferred<R>(f: impl FnOnce(&mut Deferred) -> R) -> R {
    let mut guard = DEFERRED.lock().unwrap_or_else(PoisonError::into_inner);
    let d = guard.get_or_insert_with(|| Deferred {
        queue: Vec::new(),
        live: HashSet::new(),
    });
    let r = f(d);
    PENDING.store(!d.queue.is_empty(), Ordering::Release);
    r
}

/// The table the calling thread uses.
pub fn current() -> TableId {
    TABLE.with(Cell::get)
}

/// Gives the calling thread a private descriptor table (see the module doc), closing the copies
/// of the process's descriptors it starts with. Returns its id; on error the thread still uses
/// the shared table.
pub fn leave_shared() -> io::Result<TableId> {
    if current() != SHARED {
        return Ok(current());
    }
    // SAFETY: unshare has no memory-safety preconditions; CLONE_FILES gives the calling thread
    // a copy of its descriptor table and changes nothing for the process's other threads.
    if unsafe { libc::unshare(libc::CLONE_FILES) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    TABLE.with(|t| t.set(id));
    with_deferred(|d| d.live.insert(id));
    close_inherited();
    Ok(id)
}

/// Ends the calling thread's private table (call as the thread finishes): closes what was
/// queued for it, and makes later drops of its descriptors elsewhere forget them (the kernel
/// closes the whole table when the thread exits).
pub fn end_private_table() {
    let id = current();
    if id == SHARED {
        return;
    }
    close_deferred();
    with_deferred(|d| d.live.remove(&id));
}

/// Closes the copies of the process's descriptors in a fresh private table: everything from 3,
/// and 0-2 unless they are terminals, `/dev/null` or pipes.
fn close_inherited() {
    // SAFETY: close_range closes descriptors of the calling thread's table only, which is the
    // private copy just made: no `File` of this thread refers to any of them yet.
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) } == 0;
    if !closed {
        // Kernels before 5.9: the table's directory lists what to close.
        let fds: Vec<RawFd> = match std::fs::read_dir("/proc/thread-self/fd") {
            Ok(dir) => dir
                .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect(),
            Err(_) => Vec::new(),
        };
        for fd in fds {
            // SAFETY: as above; the directory's own descriptor, closed when the listing
            // ended, is just an EBADF here.
            unsafe { libc::close(fd) };
        }
    }
    for fd in 0..=2 {
        if !harmless_std_descriptor(fd) {
            replace_with_dev_null(fd);
        }
    }
}

/// A standard descriptor whose copy holds nothing anyone waits on: a terminal or `/dev/null`
/// (character devices) or a pipe; closed already counts too.
fn harmless_std_descriptor(fd: RawFd) -> bool {
    // SAFETY: fstat writes into the zeroed stat buffer; an invalid descriptor is just EBADF.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return true;
    }
    matches!(st.st_mode & libc::S_IFMT, libc::S_IFCHR | libc::S_IFIFO)
}

fn replace_with_dev_null(fd: RawFd) {
    let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    else {
        // SAFETY: closing a copy in the private table (see close_inherited).
        unsafe { libc::close(fd) };
        return;
    };
    // SAFETY: dup2 onto a standard descriptor of the private table, which no `File` owns.
    unsafe { libc::dup2(null.as_raw_fd(), fd) };
}

/// Closes the descriptors queued for the calling thread's table (see `HomeFile`'s drop). Cheap
/// when nothing is queued.
pub fn close_deferred() {
    if !PENDING.load(Ordering::Acquire) {
        return;
    }
    let me = current();
    let mine: Vec<RawFd> = with_deferred(|d| {
        let (mine, rest) = d.queue.drain(..).partition(|&(t, _)| t == me);
        d.queue = rest;
        mine.into_iter().map(|(_, fd)| fd).collect()
    });
    for fd in mine {
        // SAFETY: the descriptor was owned by a HomeFile of this table that was dropped
        // elsewhere without closing it; nothing else owns it, so it is closed exactly once.
        drop(unsafe { File::from_raw_fd(fd) });
    }
}

/// A file whose descriptor belongs to the table of the thread that opened it (its home).
pub struct HomeFile {
    file: ManuallyDrop<File>,
    home: TableId,
}

impl HomeFile {
    /// Takes `file`, opened by the calling thread.
    pub fn new(file: File) -> HomeFile {
        HomeFile {
            file: ManuallyDrop::new(file),
            home: current(),
        }
    }

    /// The file, on a thread of its home table; an error anywhere else.
    pub fn get(&self) -> io::Result<&File> {
        if current() == self.home {
            Ok(&self.file)
        } else {
            Err(io::Error::other(
                "a descriptor of another thread's descriptor table (spoolvfs bug)",
            ))
        }
    }
}

impl Drop for HomeFile {
    fn drop(&mut self) {
        if current() == self.home {
            // SAFETY: dropped exactly once, here, on a thread of its table.
            unsafe { ManuallyDrop::drop(&mut self.file) };
            return;
        }
        let (home, fd) = (self.home, self.file.as_raw_fd());
        with_deferred(|d| {
            // A private table that ended took its descriptors with it.
            if home == SHARED || d.live.contains(&home) {
                d.queue.push((home, fd));
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn temp_file(name: &str) -> (std::path::PathBuf, File) {
        let d = crate::util::fresh_test_dir("fdtable", name);
        let p = d.join("f");
        let f = File::create(&p).unwrap();
        (p, f)
    }

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only reads the descriptor's flags; an invalid descriptor is EBADF.
        unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
    }

    #[test]
    fn a_private_table_starts_without_the_process_descriptors() {
        let (_, f) = temp_file("inherited");
        let fd = f.as_raw_fd();
        let seen = std::thread::spawn(move || {
            let id = leave_shared().unwrap();
            let seen = (id != SHARED, is_open(fd), current() == id);
            end_private_table();
            seen
        })
        .join()
        .unwrap();
        assert_eq!(
            seen,
            (true, false, true),
            "(left, copy still open, id kept)"
        );
        assert!(is_open(fd), "the process's own descriptor is untouched");
        assert_eq!(current(), SHARED);
    }

    #[test]
    fn a_home_file_is_refused_outside_its_table_and_closed_back_home() {
        let (p, f) = temp_file("home");
        let ino = f.metadata().unwrap().ino();
        let home = std::sync::Arc::new(HomeFile::new(f));
        let fd = home.get().unwrap().as_raw_fd();
        let h = home.clone();
        std::thread::spawn(move || {
            leave_shared().unwrap();
            assert!(h.get().is_err(), "used outside its table");
            // The last reference dropped here must not close this table's `fd`.
            let mine = File::open(&p).unwrap();
            drop(h);
            assert!(is_open(mine.as_raw_fd()));
            end_private_table();
        })
        .join()
        .unwrap();
        assert_eq!(home.get().unwrap().metadata().unwrap().ino(), ino);
        // Dropped by a thread of its home: closed at once.
        let home = std::sync::Arc::into_inner(home).unwrap();
        drop(home);
        assert!(!is_open(fd));
    }

    #[test]
    fn a_home_file_dropped_in_another_table_waits_for_its_home() {
        let (_, f) = temp_file("deferred");
        let fd = f.as_raw_fd();
        let file = HomeFile::new(f);
        std::thread::spawn(move || {
            leave_shared().unwrap();
            drop(file);
            end_private_table();
        })
        .join()
        .unwrap();
        assert!(is_open(fd), "not closed by the other table");
        close_deferred();
        assert!(!is_open(fd), "closed by its home");
    }

    /// The type of a lock that conflicts with reading byte 0 of `p` (`F_UNLCK`: none).
    fn conflicting_lock(p: &std::path::Path) -> libc::c_short {
        let probe = File::open(p).unwrap();
        // SAFETY: a zeroed flock is valid (l_pid must be 0 for OFD locks); filled in below.
        let mut q: libc::flock = unsafe { std::mem::zeroed() };
        q.l_type = libc::F_RDLCK as libc::c_short;
        q.l_whence = libc::SEEK_SET as libc::c_short;
        q.l_len = 1;
        // SAFETY: valid descriptor and flock; F_OFD_GETLK only fills `q`.
        let rc = unsafe { libc::fcntl(probe.as_raw_fd(), libc::F_OFD_GETLK, &mut q) };
        assert_eq!(rc, 0);
        q.l_type
    }

    #[test]
    fn closing_in_a_private_table_keeps_the_process_posix_locks() {
        // The kernel's POSIX lock owner is the table: a close in the consumer's table must not
        // drop a lock an application thread holds (what makes the plain source reader safe).
        let (p, f) = temp_file("locks");
        // SAFETY: zeroed flock is valid; filled in below.
        let mut fl: libc::flock = unsafe { std::mem::zeroed() };
        fl.l_type = libc::F_WRLCK as libc::c_short;
        fl.l_whence = libc::SEEK_SET as libc::c_short;
        fl.l_len = 1;
        // SAFETY: valid descriptor and flock.
        assert_eq!(unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLK, &fl) }, 0);
        let q = p.clone();
        std::thread::spawn(move || {
            leave_shared().unwrap();
            drop(File::open(&q).unwrap());
            end_private_table();
        })
        .join()
        .unwrap();
        // An OFD lock has its own owner, like another process: it must conflict.
        assert_eq!(
            conflicting_lock(&p),
            libc::F_WRLCK as libc::c_short,
            "the process's lock survived the private close"
        );
        // And a close in the process's own table does drop it (the classic POSIX rule), so the
        // probe can tell the two apart.
        drop(File::open(&p).unwrap());
        assert_eq!(conflicting_lock(&p), libc::F_UNLCK as libc::c_short);
        drop(f);
    }
}
