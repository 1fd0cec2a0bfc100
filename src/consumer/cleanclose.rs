//! The clean-close record: what lets the first open after a clean shutdown skip the full compare
//! of source and backup, so that restarting an application costs nothing per database page.
//!
//! When no process uses a database, nothing watches it: a process without spoolvfs may write the
//! source, or someone the backup. The first open used to answer that with a resync, reading both
//! files whole. Instead, the last process to close records, in the control file, stamps of both
//! files (`filestamp`: device, inode, size, mtime, ctime) taken when the backup held everything
//! sealed; the next first open compares them with the files and resyncs only on a difference.
//!
//! Invariants (why a matching record proves the backup equals the source):
//! - Recorded only by the active consumer as it stops after draining: every sealed record is
//!   applied, every loss repaired, no transaction is open, and no other live process is
//!   registered, checked *after* the stamps are taken. A process of ours registers while it
//!   opens the source, before it can write, so any that wrote before the stamps is seen as
//!   alive, and nothing is recorded.
//! - The applied state names a source state: the last applied record's, or the copy a resync
//!   published when it had no record to replay (a database never written through spoolvfs since
//!   its spool was created). Its mode and source token are what the source is checked against.
//! - The source's stamp shows no write made without spoolvfs before it was taken:
//!   - rollback modes: every commit, ours or not, increments the header's change counter, so
//!     after the stamp the header must still hold the last applied record's counter (and not
//!     be WAL format);
//!   - WAL mode: commits need not touch the counter, so the stamp is taken while the last close
//!     still holds the EXCLUSIVE lock, right after it deleted the WAL (`note_wal_deleted`). The
//!     generation check before that deletion (`walend`) proved that the spool has every commit
//!     of the WAL; no one can write under the lock; and at stop the stamp must still match.
//! - The backup's state is the one our last apply left (the consumer's fingerprint).
//! - Stamps are settled (`filestamp::settled`): any later change, even in the same clock tick,
//!   gives a different stamp. So at the next open, equal stamps mean unchanged files, and the
//!   record's sequence numbers must still be the shared ones (nothing sealed since).
//!
//! A kill -9 leaves no new record, and an older one no longer matches once anything was sealed or
//! written after it: the next first open resyncs, as before.

use std::time::Duration;

use crate::config::Config;
use crate::dbstate::DbState;
use crate::filestamp::{self, FileStamp, Settled};
use crate::spool::control::Control;
use crate::spool::format::SourceMode;

use super::SourceReader;

/// Longest wait for the clock to pass a file's ctime (one tick is 1-10 ms).
const SETTLE_MAX: Duration = Duration::from_millis(50);

/// The spool at rest: every sealed record applied, every loss repaired, no transaction open.
/// Then `(seq, lost_gen)`, what a record is taken at and must still be at when it is used.
pub(super) fn spool_at_rest(c: &Control) -> Option<(u64, u64)> {
    let (seq, lost) = (c.applied().seq, c.lost_gen());
    (c.sealed().seq == seq && c.resynced_gen() == lost && c.txn_owner() == 0).then_some((seq, lost))
}

/// Whether the database's WAL holds no commit: absent, empty, or without a valid committed frame
/// (readers that cannot delete it, such as read-only connections, leave an empty one behind).
pub(super) fn wal_holds_no_commit(cfg: &Config) -> std::io::Result<bool> {
    let file = match std::fs::File::open(cfg.db_file("-wal")) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    Ok(!matches!(crate::wal::committed_after(&file, 0)?, Some((_, n)) if n > 0))
}

/// A WAL of ours was deleted (the last close, or leaving WAL mode) while this process holds the
/// database's EXCLUSIVE lock: stamps the source now, before anyone else can write it.
pub fn note_wal_deleted(state: &DbState) {
    let stamp = match filestamp::settled(&state.cfg.db, SETTLE_MAX) {
        Ok(Settled::Stamp(s)) => Some(s),
        _ => None,
    };
    *crate::dbstate::lock(&state.wal_deleted_stamp) = stamp;
}

/// Why no record can be written, or the source's stamp to record.
fn source_stamp(
    state: &DbState,
    source: &mut dyn SourceReader,
    applied_mode_kind: u64,
    applied_token: u64,
) -> Result<FileStamp, String> {
    if !wal_holds_no_commit(&state.cfg).map_err(|e| e.to_string())? {
        return Err("the WAL holds commits".into());
    }
    if applied_mode_kind >> 8 == SourceMode::Rollback as u64 {
        let Settled::Stamp(stamp) =
            filestamp::settled(&state.cfg.db, SETTLE_MAX).map_err(|e| e.to_string())?
        else {
            return Err("the source has no settled stamp".into());
        };
        let mut hdr = [0u8; crate::dbheader::HEADER_LEN];
        source.read_at(&mut hdr, 0).map_err(|e| e.to_string())?;
        let counter = crate::dbheader::change_counter(&hdr);
        if crate::dbheader::is_wal_format(&hdr) || counter != Some(applied_token as u32) {
            return Err("the source's header is not the last applied one".into());
        }
        Ok(stamp)
    } else {
        let Some(stamp) = *crate::dbstate::lock(&state.wal_deleted_stamp) else {
            return Err("no stamp from the WAL's deletion".into());
        };
        if filestamp::stamp(&state.cfg.db).map_err(|e| e.to_string())? != Some(stamp) {
            return Err("the source changed after the WAL was deleted".into());
        }
        Ok(stamp)
    }
}

/// Called by the active consumer as it stops, caught up: records the clean close if it can vouch
/// for it (see the module doc). `backup_fp_ok`: the backup is still the file our last apply left.
/// Returns why not, for the log.
pub fn record(
    state: &DbState,
    source: &mut dyn SourceReader,
    backup_fp_ok: bool,
) -> Result<(), String> {
    let c = &state.control;
    let applied = c.applied();
    let at_rest = spool_at_rest(c).filter(|&(seq, _)| seq == applied.seq && applied.mode_kind != 0);
    let Some((seq, lost)) = at_rest else {
        return Err("the backup is not caught up".into());
    };
    if !backup_fp_ok {
        return Err("the backup is not known to be as last applied".into());
    }
    let Settled::Stamp(backup) =
        filestamp::settled(&state.cfg.backup, SETTLE_MAX).map_err(|e| e.to_string())?
    else {
        return Err("the backup has no settled stamp".into());
    };
    let db = source_stamp(state, source, applied.mode_kind, applied.token)?;
    // Last: a process of ours that wrote before the stamps is registered and alive now.
    if c.others_alive(std::process::id() as u64) {
        return Err("another process uses the database".into());
    }
    if spool_at_rest(c) != at_rest {
        return Err("the spool moved on".into());
    }
    c.set_clean_close(seq, lost, db, backup);
    Ok(())
}

/// At the first open: whether the clean-close record still describes the files, so that the
/// backup is known to equal the source without a resync.
pub fn vouches(control: &Control, cfg: &Config) -> bool {
    let Some((seq, lost, db, backup)) = control.clean_close() else {
        return false;
    };
    spool_at_rest(control) == Some((seq, lost))
        && matches!(filestamp::stamp(&cfg.db), Ok(Some(s)) if s == db)
        && matches!(wal_holds_no_commit(cfg), Ok(true))
        && matches!(filestamp::stamp(&cfg.backup), Ok(Some(s)) if s == backup)
}
