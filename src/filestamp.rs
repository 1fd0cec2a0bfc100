//! File stamps: what identifies a file's state without reading it (device, inode, size, mtime,
//! ctime), for the clean-close record that lets the next open skip the full compare (see
//! `consumer::cleanclose`).
//!
//! Invariant: a stamp taken with `settled` differs from the stamp of any later state of the file.
//! Any write, truncation or `utimes` sets the inode's ctime to the current time, and userspace
//! cannot set ctime back. Filesystems without fine-grained timestamps take it from the coarse
//! clock (`CLOCK_REALTIME_COARSE`, one tick of 1-10 ms), so a write in the same tick as the
//! stamped state could keep its ctime. `settled` therefore takes the stamp only once the coarse
//! clock, read *before* the stat, has passed the file's ctime: every later change then carries a
//! ctime of at least that clock reading, which is strictly greater (the "racily clean" entries of
//! git's index, handled the same way). With multigrain timestamps (Linux 6.13+ on ext4, xfs,
//! btrfs, tmpfs) a change after a stat gets a fine-grained ctime anyway.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Words a stamp occupies in the control file.
pub const WORDS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Nanoseconds since the epoch.
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl FileStamp {
    pub fn to_words(self) -> [u64; WORDS] {
        [
            self.dev,
            self.ino,
            self.size,
            self.mtime_ns as u64,
            self.ctime_ns as u64,
        ]
    }

    pub fn from_words(w: [u64; WORDS]) -> FileStamp {
        FileStamp {
            dev: w[0],
            ino: w[1],
            size: w[2],
            mtime_ns: w[3] as i64,
            ctime_ns: w[4] as i64,
        }
    }
}

/// The stamp of `path` now; `None` if it does not exist.
pub fn stamp(path: &Path) -> io::Result<Option<FileStamp>> {
    let m = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    Ok(Some(FileStamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
    }))
}

/// Nanoseconds since the epoch by the coarse clock, the one file timestamps come from.
fn coarse_now_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_REALTIME_COARSE exists on Linux.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return 0;
    }
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Whether `path` exists with exactly the stamp `then` (false if it cannot be read).
pub fn is_unchanged(path: &Path, then: FileStamp) -> bool {
    matches!(stamp(path), Ok(Some(now)) if now == then)
}

/// What `settled` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Absent,
    Stamp(FileStamp),
    /// The clock did not pass the file's ctime within the wait (a ctime in the future: clock
    /// steps, a network filesystem's server clock): no stamp can vouch for the file.
    Unsettled,
}

impl Settled {
    /// The stamp, if the file is there and settled.
    pub fn stamp(self) -> Option<FileStamp> {
        match self {
            Settled::Stamp(s) => Some(s),
            Settled::Absent | Settled::Unsettled => None,
        }
    }
}

/// A stamp of `path` that any later change of the file will not match (see the module doc):
/// waits, in 1 ms steps and at most `max_wait`, until the coarse clock has passed its ctime.
pub fn settled(path: &Path, max_wait: Duration) -> io::Result<Settled> {
    let start = Instant::now();
    loop {
        let clock = coarse_now_ns();
        match stamp(path)? {
            None => return Ok(Settled::Absent),
            Some(s) if s.ctime_ns < clock => return Ok(Settled::Stamp(s)),
            Some(_) if start.elapsed() >= max_wait => return Ok(Settled::Unsettled),
            Some(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        crate::util::fresh_test_dir("stamp", name)
    }

    #[test]
    fn a_write_right_after_a_settled_stamp_changes_it() {
        let d = dir("write");
        let f = d.join("f");
        // Many rounds: without the wait, a write in the same clock tick as the stamped one keeps
        // the ctime on filesystems with coarse timestamps, and this fails on some round there.
        // (Linux 6.13+ ext4/xfs/btrfs/tmpfs have multigrain timestamps: it passes either way.)
        for round in 0..50u8 {
            std::fs::write(&f, [round; 16]).unwrap();
            let Settled::Stamp(before) = settled(&f, Duration::from_secs(1)).unwrap() else {
                panic!("no settled stamp in round {round}");
            };
            std::fs::write(&f, [round.wrapping_add(1); 16]).unwrap();
            let after = stamp(&f).unwrap().unwrap();
            assert_ne!(before, after, "round {round}: same-size rewrite not seen");
        }
    }

    #[test]
    fn absent_files_and_round_trip() {
        let d = dir("absent");
        assert_eq!(
            settled(&d.join("none"), Duration::ZERO).unwrap(),
            Settled::Absent
        );
        std::fs::write(d.join("f"), b"x").unwrap();
        let s = stamp(&d.join("f")).unwrap().unwrap();
        assert_eq!(FileStamp::from_words(s.to_words()), s);
        assert_eq!(s.size, 1);
    }
}
