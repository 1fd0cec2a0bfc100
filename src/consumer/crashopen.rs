//! The first open after a crash: what lets it skip the full compare of source and backup when
//! every process of ours was killed (no clean close recorded) but nothing happened to the files
//! while no process watched, so that an application that crashes and restarts pays for what
//! changed, not for the size of its database.
//!
//! Without a clean-close record, the first open used to resync: reading both files whole. After a
//! kill -9 (not a power loss) the page cache still holds everything we wrote, the control file
//! included, so the spool and the shared state are as the dead processes left them. What is left
//! to prove is that no one changed the source or the backup since, and that the source holds no
//! commit the spool lacks. The proof uses the checks the live consumer relies on while idle, made
//! strict where a live process could rely on having watched:
//!
//! - *A crash, not a clean close*: a clean-close record that still names the shared state (nothing
//!   sealed or lost since) but no longer matches the files means they were changed after that
//!   close, by any means (an edit in place included): resync.
//! - *The same boot*: the control file names the boot of the last process that opened it
//!   (`/proc/sys/kernel/random/boot_id`). A different boot means a power loss or a reboot, after
//!   which neither the spool nor the control file is trusted: resync.
//! - *The shared state at rest*: a resync completed once in this spool and no loss is pending. A
//!   transaction left open by a killed process is no obstacle when the source checks below pass:
//!   it committed nothing (the source is at the last sealed state) and left nothing to roll back
//!   (no journal with a header; in WAL mode its frames follow the last commit frame, which
//!   recovery ignores). Its claim on the spool (`txn_owner`) is then cleared; otherwise the
//!   consumer would count its death as a loss.
//! - *The source at the last record's state*, which is the last sealed record's (or the WAL state
//!   a resync copied after it):
//!   - rollback modes: not WAL format, the header's change counter is the record's (every commit,
//!     ours or not, increments it, so a commit we did not seal or a foreign one shows), no hot
//!     journal, and the WAL holds no commit;
//!   - WAL mode: the WAL is there, in the record's generation (salts), with exactly the record's
//!     committed frames and at least one. Commits are appended, a restart changes the salts, and a
//!     process that deletes or truncates the WAL leaves it absent or empty, so a WAL in this state
//!     proves no commit was made since. Without a committed frame to compare (the WAL was
//!     empty), a foreign session could have come and gone, checkpointing and deleting its own
//!     WAL, without a trace in the header: resync.
//! - *The backup as our last apply left it*: the fingerprint the consumer publishes with each
//!   applied state (device, inode, size, header counters), for the applied state it shows. A span
//!   left open by the dead consumer is not checked here: taking over, the next consumer rolls it
//!   back and checks the backup against the span's start (`Consumer::roll_back_dead_span`).
//!
//! What it does not catch is what the live checks do not catch either: a byte edited in place
//! without SQLite that leaves the header as it was.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use crate::config::Config;
use crate::spool::control::{Control, PublishedRecord};
use crate::spool::format::SourceMode;

use super::fingerprint;

/// This boot's id as a number (0 if unknown, which never vouches).
pub fn boot_id() -> u64 {
    let mut text = String::new();
    let read = File::open("/proc/sys/kernel/random/boot_id")
        .and_then(|mut f| f.read_to_string(&mut text))
        .is_ok();
    let hex: String = text
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    if !read || hex.len() < 16 {
        return 0;
    }
    u64::from_str_radix(&hex, 16).unwrap_or(0)
}

/// The source state the spool accounts for: the last sealed record's, or, with the same sequence
/// number, the applied state's (a resync that copied the source after the last record).
fn accounted(c: &Control) -> PublishedRecord {
    let (sealed, applied) = (c.sealed(), c.applied());
    if applied.seq == sealed.seq {
        applied
    } else {
        sealed
    }
}

/// At the first open with no clean-close record: `Ok(())` when the files are provably as the
/// crashed processes left them (see the module doc), else why not. `boot_then` is the boot id the
/// control file held before this process stored its own; `page1` the source's first bytes as
/// found at open.
pub fn vouches(c: &Control, cfg: &Config, boot_then: u64, page1: &[u8]) -> Result<(), String> {
    if c.resyncs() == 0 {
        return Err("no resync has completed in this spool yet".into());
    }
    let boot = boot_id();
    if boot == 0 || boot_then != boot {
        return Err("the machine restarted since the last open (or its boot is unknown)".into());
    }
    if c.resynced_gen() != c.lost_gen() {
        return Err("a resync is pending".into());
    }
    // The last thing that happened was a clean close, whose stamps no longer match: the files
    // were changed after it, by whatever means, not left by a crash.
    if let Some(r) = c.clean_close()
        && super::cleanclose::spool_at_rest(c) == Some((r.seq, r.lost_gen))
    {
        return Err("the files changed after the last clean close".into());
    }
    let dead_txn = c.txn_owner();
    if dead_txn != 0 && crate::spool::control::pid_alive(dead_txn) {
        return Err("a process with a transaction open is still alive".into());
    }
    let state = accounted(c);
    match state.mode_kind >> 8 {
        m if state.mode_kind == 0 || m == 0 => {
            return Err("the last source state is unknown".into());
        }
        m if m == SourceMode::Rollback as u64 => rollback_source_unchanged(cfg, &state, page1)?,
        _ => wal_holds_exactly(cfg, &state)?,
    }
    if c.span_owner() == 0 {
        let applied = c.applied().seq;
        let now = fingerprint(&cfg.backup).map_err(|e| format!("reading the backup: {e}"))?;
        match (c.backup_fp(), now) {
            (Some((seq, then)), Some(now)) if seq == applied && then == now.to_words() => {}
            _ => return Err("the backup is not known to be as last applied".into()),
        }
    }
    if dead_txn != 0 && !c.clear_txn_owner_if(dead_txn) {
        return Err("a transaction started meanwhile".into());
    }
    Ok(())
}

fn rollback_source_unchanged(
    cfg: &Config,
    state: &PublishedRecord,
    page1: &[u8],
) -> Result<(), String> {
    if crate::dbheader::is_wal_format(page1)
        || crate::dbheader::change_counter(page1) != Some(state.token as u32)
    {
        return Err("the source's header is not the last sealed one".into());
    }
    if journal_may_be_hot(cfg).map_err(|e| format!("reading the journal: {e}"))? {
        return Err("the source has a journal to roll back".into());
    }
    if !super::cleanclose::wal_holds_no_commit(cfg).map_err(|e| format!("reading the WAL: {e}"))? {
        return Err("the WAL holds commits".into());
    }
    Ok(())
}

/// A rollback journal with a header: possibly hot (SQLite would play it back). An absent, empty
/// or zeroed one (`journal_mode=PERSIST` after a commit) is not.
fn journal_may_be_hot(cfg: &Config) -> std::io::Result<bool> {
    let file = match File::open(cfg.db_file("-journal")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let mut head = [0u8; 8];
    let n = file.read_at(&mut head, 0)?;
    Ok(head[..n].iter().any(|&b| b != 0))
}

/// The WAL is there, in `state`'s generation, with exactly its committed frames (at least one).
pub(super) fn wal_holds_exactly(cfg: &Config, state: &PublishedRecord) -> Result<(), String> {
    let file = File::open(cfg.db_file("-wal")).map_err(|e| format!("the WAL: {e}"))?;
    match crate::wal::committed_after(&file, 0).map_err(|e| format!("reading the WAL: {e}"))? {
        Some((h, n)) if h.salts() == state.token && n == state.wal_frames && n > 0 => Ok(()),
        _ => Err("the WAL is not as the last sealed record left it".into()),
    }
}
