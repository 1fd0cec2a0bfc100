//! Locks on the backup file that interoperate with SQLite's unix VFS.
//!
//! We use Linux open-file-description (OFD) locks, not classic POSIX `F_SETLK` locks: POSIX locks
//! belong to the process and vanish when *any* descriptor of the process on that file is closed
//! (another part of the extension, or the host, may open the backup too). OFD locks belong to the
//! open file description, and the kernel makes them conflict with POSIX locks held by other
//! processes, so SQLite readers of the backup see them as ordinary SQLite locks.
//!
//! Lock bytes (the same as os_unix.c): PENDING at `0x4000_0000`, RESERVED the byte after it, and
//! the SHARED range the 510 bytes after that. The protocol we follow:
//! - SHARED: read-lock PENDING, read-lock the SHARED range, release PENDING;
//! - RESERVED: write-lock RESERVED (only one writer at a time; readers are not blocked);
//! - EXCLUSIVE: write-lock PENDING (new readers can no longer start), then write-lock the whole
//!   SHARED range (succeeds once the existing readers are gone).
//!
//! Invariant: `BackupLock::level` always describes what this description holds, and `pending`
//! says whether a PENDING write lock is held without EXCLUSIVE (a failed upgrade). Dropping a
//! `BackupLock` (or `Guard`) releases every lock this description holds on the file.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::thread;
use std::time::{Duration, Instant};

/// First byte of the lock range; the page holding it is never read or written as data.
pub const PENDING_BYTE: u64 = 0x4000_0000;
pub const RESERVED_BYTE: u64 = PENDING_BYTE + 1;
pub const SHARED_FIRST: u64 = PENDING_BYTE + 2;
pub const SHARED_SIZE: u64 = 510;

/// The lock levels of SQLite's locking protocol that we use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    None,
    Shared,
    Reserved,
    Exclusive,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
    Unlock,
}

fn would_block() -> io::Error {
    io::Error::new(io::ErrorKind::WouldBlock, "backup database is locked")
}

/// One non-blocking OFD lock operation on `[start, start+len)`; a conflict is `WouldBlock`.
fn set_lock(file: &File, kind: Kind, start: u64, len: u64) -> io::Result<()> {
    let mut fl = new_flock(kind, start, len)?;
    // SAFETY: `file` is an open File, so its fd is valid for the duration of the call, and `fl`
    // is a fully initialised `flock` that lives across the call; F_OFD_SETLK only reads it.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        // Both mean "someone else holds a conflicting lock" (fcntl(2)).
        Some(libc::EAGAIN) | Some(libc::EACCES) => Err(would_block()),
        _ => Err(err),
    }
}

fn new_flock(kind: Kind, start: u64, len: u64) -> io::Result<libc::flock> {
    let bad = || io::Error::new(io::ErrorKind::InvalidInput, "lock range out of range");
    // SAFETY: `flock` is a plain C struct of integers; all-zero is a valid value of it, and
    // OFD locks require `l_pid == 0`, which zeroing gives us.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = match kind {
        Kind::Read => libc::F_RDLCK,
        Kind::Write => libc::F_WRLCK,
        Kind::Unlock => libc::F_UNLCK,
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = libc::off_t::try_from(start).map_err(|_| bad())?;
    fl.l_len = libc::off_t::try_from(len).map_err(|_| bad())?;
    Ok(fl)
}

/// Whether some *other* lock owner holds a lock that would conflict with a `kind` lock on
/// `[start, start+len)` (F_OFD_GETLK; sees POSIX locks of other processes too).
fn conflicting_lock_exists(file: &File, write: bool, start: u64, len: u64) -> io::Result<bool> {
    let mut fl = new_flock(if write { Kind::Write } else { Kind::Read }, start, len)?;
    // SAFETY: valid fd (open File) and a valid, initialised `flock` that F_OFD_GETLK may
    // overwrite; it outlives the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Like SQLite's xCheckReservedLock: does anyone else hold RESERVED or more?
pub fn reserved_held_by_other(file: &File) -> io::Result<bool> {
    conflicting_lock_exists(file, true, RESERVED_BYTE, 1)
}

/// Does anyone else hold a SHARED (or stronger) lock, i.e. any lock in the SHARED range?
pub fn shared_held_by_other(file: &File) -> io::Result<bool> {
    conflicting_lock_exists(file, true, SHARED_FIRST, SHARED_SIZE)
}

/// The SQLite lock state of one open file description on the backup.
#[derive(Debug)]
pub struct BackupLock<'a> {
    file: &'a File,
    level: Level,
    /// PENDING write lock held below EXCLUSIVE (left by a failed `try_exclusive`).
    pending: bool,
}

impl<'a> BackupLock<'a> {
    /// No locks yet. `file` must be a description no other `BackupLock` uses: locks of one
    /// description never conflict with each other.
    pub fn new(file: &'a File) -> Self {
        BackupLock {
            file,
            level: Level::None,
            pending: false,
        }
    }

    pub fn level(&self) -> Level {
        self.level
    }

    pub fn file(&self) -> &'a File {
        self.file
    }

    /// NONE -> SHARED, as a SQLite reader does. No-op at SHARED or above.
    pub fn try_shared(&mut self) -> io::Result<()> {
        if self.level >= Level::Shared {
            return Ok(());
        }
        // PENDING first: a writer waiting for EXCLUSIVE holds it, and we must not start then.
        set_lock(self.file, Kind::Read, PENDING_BYTE, 1)?;
        let r = set_lock(self.file, Kind::Read, SHARED_FIRST, SHARED_SIZE);
        let u = set_lock(self.file, Kind::Unlock, PENDING_BYTE, 1);
        r?;
        self.level = Level::Shared;
        u
    }

    /// -> RESERVED: excludes other writers; readers continue. No-op at RESERVED or above.
    pub fn try_reserved(&mut self) -> io::Result<()> {
        if self.level >= Level::Reserved {
            return Ok(());
        }
        set_lock(self.file, Kind::Write, RESERVED_BYTE, 1)?;
        self.level = Level::Reserved;
        Ok(())
    }

    /// -> EXCLUSIVE (taking RESERVED first if needed). On `WouldBlock` the PENDING lock stays
    /// held so no new reader starts while the current ones finish; retry, or `drop_pending`.
    pub fn try_exclusive(&mut self) -> io::Result<()> {
        if self.level == Level::Exclusive {
            return Ok(());
        }
        self.try_reserved()?;
        if !self.pending {
            set_lock(self.file, Kind::Write, PENDING_BYTE, 1)?;
            self.pending = true;
        }
        set_lock(self.file, Kind::Write, SHARED_FIRST, SHARED_SIZE)?;
        self.level = Level::Exclusive;
        self.pending = false;
        Ok(())
    }

    /// EXCLUSIVE (or a held PENDING) -> RESERVED: readers may start again.
    pub fn downgrade_to_reserved(&mut self) -> io::Result<()> {
        if self.level == Level::Exclusive {
            // Callers downgrade only once the file is consistent again, so the order of the two
            // unlocks does not matter to readers.
            set_lock(self.file, Kind::Unlock, SHARED_FIRST, SHARED_SIZE)?;
            set_lock(self.file, Kind::Unlock, PENDING_BYTE, 1)?;
            self.level = Level::Reserved;
        } else if self.pending {
            set_lock(self.file, Kind::Unlock, PENDING_BYTE, 1)?;
        }
        self.pending = false;
        Ok(())
    }

    /// Releases every lock of this description on the file.
    pub fn unlock_all(&mut self) -> io::Result<()> {
        // len 0 = to end of file and beyond: covers all lock bytes whatever we held.
        set_lock(self.file, Kind::Unlock, 0, 0)?;
        self.level = Level::None;
        self.pending = false;
        Ok(())
    }
}

impl Drop for BackupLock<'_> {
    fn drop(&mut self) {
        if self.level != Level::None || self.pending {
            // Nothing useful to do on failure: the locks go away with the description anyway.
            let _ = self.unlock_all();
        }
    }
}

/// A held lock that is released on drop.
#[derive(Debug)]
pub struct Guard<'a> {
    lock: BackupLock<'a>,
}

impl<'a> Guard<'a> {
    pub fn level(&self) -> Level {
        self.lock.level()
    }

    pub fn file(&self) -> &'a File {
        self.lock.file()
    }

    /// RESERVED -> EXCLUSIVE, retrying until `timeout`. On timeout the PENDING lock is released
    /// again (readers must not be starved by a writer that gave up) and `WouldBlock` returned;
    /// the guard is still RESERVED.
    pub fn upgrade_to_exclusive(&mut self, timeout: Duration) -> io::Result<()> {
        let r = retry(timeout, || self.lock.try_exclusive());
        if r.is_err() && self.lock.level() != Level::Exclusive {
            self.lock.downgrade_to_reserved()?;
        }
        r
    }

    /// EXCLUSIVE -> RESERVED.
    pub fn downgrade_to_reserved(&mut self) -> io::Result<()> {
        self.lock.downgrade_to_reserved()
    }

    /// Releases everything now (drop does the same, ignoring errors).
    pub fn unlock(mut self) -> io::Result<()> {
        self.lock.unlock_all()
    }

    /// Downgrades to RESERVED and leaves that lock with the open file description when the guard
    /// goes: nothing releases it until a later guard on the same description unlocks (taking
    /// RESERVED again through a new guard is a no-op for the description, which already owns
    /// the byte). Used by a backup span that holds RESERVED between its batches.
    pub fn keep_reserved(mut self) -> io::Result<()> {
        self.lock.downgrade_to_reserved()?;
        self.lock.level = Level::None;
        self.lock.pending = false;
        Ok(())
    }
}

/// Calls `f` until it stops returning `WouldBlock` or `timeout` passes, sleeping 1 ms doubling
/// up to 20 ms between tries. At least one try is made even with a zero timeout.
fn retry(timeout: Duration, mut f: impl FnMut() -> io::Result<()>) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                let now = Instant::now();
                if now >= deadline {
                    return Err(e);
                }
                thread::sleep(nap.min(deadline - now));
                nap = (nap * 2).min(Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

/// Takes RESERVED, retrying until `timeout`.
pub fn lock_reserved_with_retry(file: &File, timeout: Duration) -> io::Result<Guard<'_>> {
    let mut lock = BackupLock::new(file);
    retry(timeout, || lock.try_reserved())?;
    Ok(Guard { lock })
}

/// Takes RESERVED then EXCLUSIVE within one overall `timeout`.
pub fn lock_exclusive_with_retry(file: &File, timeout: Duration) -> io::Result<Guard<'_>> {
    let start = Instant::now();
    let mut guard = lock_reserved_with_retry(file, timeout)?;
    guard.upgrade_to_exclusive(timeout.saturating_sub(start.elapsed()))?;
    Ok(guard)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    fn tmp(name: &str) -> PathBuf {
        crate::util::fresh_test_dir("lock", name)
    }

    fn open(p: &Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(p)
            .unwrap()
    }

    fn is_wb(r: io::Result<()>) -> bool {
        matches!(r, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    #[test]
    fn ofd_conflicts_between_descriptions() {
        let d = tmp("ofd");
        let p = d.join("db");
        let (fa, fb, fc) = (open(&p), open(&p), open(&p));
        let mut a = BackupLock::new(&fa);
        let mut b = BackupLock::new(&fb);
        let mut c = BackupLock::new(&fc);

        a.try_shared().unwrap();
        assert!(shared_held_by_other(&fb).unwrap());
        b.try_reserved().unwrap(); // reserved coexists with readers
        assert!(reserved_held_by_other(&fa).unwrap());
        assert!(is_wb(c.try_reserved()), "one writer at a time");
        assert!(is_wb(b.try_exclusive()), "reader still active");
        // b now holds PENDING: new readers are refused, the existing one keeps reading.
        assert!(is_wb(c.try_shared()));
        assert_eq!(a.level(), Level::Shared);
        a.unlock_all().unwrap();
        b.try_exclusive().unwrap();
        assert_eq!(b.level(), Level::Exclusive);
        assert!(is_wb(a.try_shared()));
        b.downgrade_to_reserved().unwrap();
        a.try_shared().unwrap();
        a.unlock_all().unwrap();
        drop(b); // releases RESERVED
        assert!(!reserved_held_by_other(&fc).unwrap());
        c.try_reserved().unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn retry_times_out_and_releases_pending() {
        let d = tmp("retry");
        let p = d.join("db");
        let (fa, fb, fc) = (open(&p), open(&p), open(&p));
        let mut reader = BackupLock::new(&fa);
        reader.try_shared().unwrap();
        let t = Instant::now();
        let r = lock_exclusive_with_retry(&fb, Duration::from_millis(60));
        assert!(matches!(&r, Err(e) if e.kind() == io::ErrorKind::WouldBlock));
        assert!(t.elapsed() >= Duration::from_millis(60));
        drop(r);
        // The failed writer must not leave PENDING behind.
        BackupLock::new(&fc).try_shared().unwrap();

        let mut g = lock_reserved_with_retry(&fb, Duration::ZERO).unwrap();
        assert!(is_wb(g.upgrade_to_exclusive(Duration::from_millis(5))));
        assert_eq!(g.level(), Level::Reserved);
        // Reader leaves while we wait: the upgrade then succeeds.
        thread::scope(|sc| {
            sc.spawn(move || {
                thread::sleep(Duration::from_millis(30));
                reader.unlock_all().unwrap();
            });
            g.upgrade_to_exclusive(Duration::from_secs(5)).unwrap();
        });
        assert_eq!(g.level(), Level::Exclusive);
        drop(g);
        let mut other = BackupLock::new(&fc);
        other.try_exclusive().unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn sqlite3(db: &Path, sql: &str) -> std::process::Output {
        let mut child = Command::new("sqlite3")
            .arg(db)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sqlite3 CLI must be installed");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }

    #[test]
    fn interoperates_with_sqlite_cli() {
        let d = tmp("cli");
        let p = d.join("db");
        let out = sqlite3(&p, "CREATE TABLE t(x); INSERT INTO t VALUES(1),(2),(3);");
        assert!(out.status.success(), "{out:?}");

        // A CLI reader inside a read transaction; its stdin stays open so it keeps waiting.
        let mut reader = Command::new("sqlite3")
            .arg(&p)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the sqlite3 CLI must be installed");
        let mut rin = reader.stdin.take().unwrap();
        rin.write_all(b".timeout 0\nBEGIN;\nSELECT count(*) FROM t;\n")
            .unwrap();
        rin.flush().unwrap();
        let f = open(&p);
        // The CLI's output is block-buffered on a pipe, so watch its lock instead.
        let t = Instant::now();
        while !shared_held_by_other(&f).unwrap() {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "CLI never took SHARED"
            );
            thread::sleep(Duration::from_millis(5));
        }
        let mut ours = BackupLock::new(&f);
        assert!(
            is_wb(ours.try_exclusive()),
            "exclusive granted over a CLI reader"
        );
        assert!(is_wb(ours.try_exclusive()));
        ours.downgrade_to_reserved().unwrap();
        // End the CLI's transaction; it exits at EOF.
        rin.write_all(b"COMMIT;\n").unwrap();
        drop(rin);
        let out = reader.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
        ours.try_exclusive().unwrap();

        // While we hold EXCLUSIVE the CLI cannot read.
        let out = sqlite3(&p, ".timeout 0\nSELECT count(*) FROM t;\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("database is locked"), "stderr: {err}");
        assert!(out.stdout.is_empty());
        // Nor write (RESERVED is ours).
        ours.unlock_all().unwrap();
        let _g = lock_reserved_with_retry(&f, Duration::ZERO).unwrap();
        let out = sqlite3(&p, ".timeout 0\nINSERT INTO t VALUES(4);\n");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("database is locked"), "stderr: {err}");
        drop(_g);
        let out = sqlite3(&p, ".timeout 0\nSELECT count(*) FROM t;\n");
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3", "{out:?}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
