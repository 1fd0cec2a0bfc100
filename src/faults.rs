//! Test-only fault injection (cargo feature `fault-inject`; the production library has none of
//! it). The file named by `SPOOLVFS_FAULTS_FILE` lists active faults, one word per line, re-read
//! on every check so a test can switch faults on and off while the database is in use:
//!
//! | word                   | effect                                                     |
//! |------------------------|------------------------------------------------------------|
//! | `spool_enospc`         | every spool write fails with ENOSPC (disk full)            |
//! | `spool_reserve`        | reserving a spool segment's blocks (fallocate) fails       |
//! | `backup_eio`           | every apply to the backup fails with EIO before writing    |
//! | `capture_panic`        | capture panics inside the VFS call (must not reach SQLite) |
//! | `consumer_panic`       | the consumer's loop body panics                            |
//! | `kill_before_wal_seal` | SIGKILL between a WAL commit of this process and its seal  |
//! | `parked_sleeps_long`   | a parked consumer sleeps 120 s unless the doorbell rings   |
//! | `answer_waits_long`    | a `spool_sync` caller sleeps 120 s unless its answer rings |
//!
//! Without the feature every check is a constant `false`, so call sites stay unconditional.

/// Whether fault `name` is active.
#[cfg(feature = "fault-inject")]
pub fn active(name: &str) -> bool {
    let Some(path) = std::env::var_os("SPOOLVFS_FAULTS_FILE") else {
        return false;
    };
    std::fs::read_to_string(path).is_ok_and(|s| s.lines().any(|l| l.trim() == name))
}

/// Whether fault `name` is active (never, in this build).
#[cfg(not(feature = "fault-inject"))]
#[inline(always)]
pub fn active(_name: &str) -> bool {
    false
}

/// An injected I/O error for fault `name`, if active.
pub fn io_error(name: &str, errno: i32) -> Option<std::io::Error> {
    active(name).then(|| std::io::Error::from_raw_os_error(errno))
}

/// Kills this process with SIGKILL if fault `name` is active: a kill -9 at an exact point.
#[cfg(feature = "fault-inject")]
pub fn kill_if(name: &str) {
    if active(name) {
        // SAFETY: kill has no memory-safety preconditions; SIGKILL ends the process here.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Kills this process if fault `name` is active (never, in this build).
#[cfg(not(feature = "fault-inject"))]
#[inline(always)]
pub fn kill_if(_name: &str) {}
