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
//!     still holds the EXCLUSIVE lock, right after it deleted the WAL (`note_wal_ended`), or
//!     right after a persistent WAL was emptied (under a `journal_size_limit`, or by a TRUNCATE
//!     checkpoint; under the checkpoint and write locks). The generation check before that
//!     (`walend`) proved that the spool has every commit of the WAL; no one can write under the
//!     lock; nothing may be sealed after the stamp; and at stop the stamp must still match;
//!   - a persistent WAL kept with its frames (no size limit): it must hold exactly the applied
//!     record's commits, and its own stamp, taken before that check and unchanged after it, is
//!     recorded and must match at the next open, as the source's.
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
use crate::spool::control::{CleanClose, Control, PublishedRecord};
use crate::spool::format::SourceMode;

use super::SourceReader;

/// Longest wait for the clock to pass a file's ctime (one tick is 1-10 ms).
pub(super) const SETTLE_MAX: Duration = Duration::from_millis(50);

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

/// A WAL of ours was deleted (the last close, or leaving WAL mode: this process holds the
/// database's EXCLUSIVE lock) or emptied (the last close of a persistent WAL under a
/// `journal_size_limit`, or a TRUNCATE checkpoint: this process holds the WAL's checkpoint and
/// write locks) right after its generation check: stamps the source now, while nobody can write
/// it. In both cases the checkpoint before it was complete, so the file holds every commit. The
/// stamp is kept with the last sealed sequence number: a TRUNCATE checkpoint happens mid-life,
/// and a stamp followed by more commits vouches for nothing (their WAL might vanish unseen).
/// `may_wait`: the stamp may wait for the clock to pass the file's ctime (at a close); if not,
/// a file changed in the current clock tick gets no stamp (a TRUNCATE checkpoint, whose locks
/// hold writers: usually superseded by the close's own stamp anyway).
pub fn note_wal_ended(state: &DbState, may_wait: bool) {
    let wait = if may_wait { SETTLE_MAX } else { Duration::ZERO };
    let stamp = filestamp::settled(&state.cfg.db, wait)
        .ok()
        .and_then(Settled::stamp)
        .map(|s| (s, state.control.sealed().seq));
    *crate::dbstate::lock(&state.wal_ended_stamp) = stamp;
}

/// Why no record can be written, or the stamps of the source to record: the database file's and,
/// when a persistent WAL holds the applied record's commits, the WAL's.
fn source_stamps(
    state: &DbState,
    source: &mut dyn SourceReader,
    applied: &PublishedRecord,
) -> Result<(FileStamp, Option<FileStamp>), String> {
    let wal_empty = wal_holds_no_commit(&state.cfg).map_err(|e| e.to_string())?;
    if applied.mode_kind >> 8 == SourceMode::Rollback as u64 {
        if !wal_empty {
            return Err("the WAL holds commits".into());
        }
        let stamp = settled_stamp(&state.cfg.db, "source")?;
        let mut hdr = [0u8; crate::dbheader::HEADER_LEN];
        source.read_at(&mut hdr, 0).map_err(|e| e.to_string())?;
        let counter = crate::dbheader::change_counter(&hdr);
        if crate::dbheader::is_wal_format(&hdr) || counter != Some(applied.token as u32) {
            return Err("the source's header is not the last applied one".into());
        }
        Ok((stamp, None))
    } else if wal_empty {
        let Some((stamp, sealed_then)) = *crate::dbstate::lock(&state.wal_ended_stamp) else {
            return Err("no stamp from the WAL's deletion or emptying".into());
        };
        if sealed_then != applied.seq {
            return Err("commits were sealed after the WAL was deleted or emptied".into());
        }
        if filestamp::stamp(&state.cfg.db).map_err(|e| e.to_string())? != Some(stamp) {
            return Err("the source changed after the WAL was deleted or emptied".into());
        }
        Ok((stamp, None))
    } else {
        persistent_wal_stamps(&state.cfg, applied)
    }
}

/// A WAL that the last close kept (`SQLITE_FCNTL_PERSIST_WAL` without a `journal_size_limit`)
/// and that holds commits: recordable when it holds exactly the applied record's (its
/// generation, its committed frames), the crash-open check's argument: commits are appended and
/// a restart changes the salts, so such a WAL proves that no commit was made without spoolvfs
/// since. Both files are stamped (settled) *before* the WAL is checked, and the WAL's stamp is
/// taken again after: so the recorded stamp is that of the WAL that was checked.
fn persistent_wal_stamps(
    cfg: &Config,
    applied: &PublishedRecord,
) -> Result<(FileStamp, Option<FileStamp>), String> {
    let wal_path = cfg.db_file("-wal");
    let wal = settled_stamp(&wal_path, "WAL")?;
    let db = settled_stamp(&cfg.db, "source")?;
    super::crashopen::wal_holds_exactly(cfg, applied)
        .map_err(|why| format!("the WAL holds commits that are not the applied ones: {why}"))?;
    if filestamp::stamp(&wal_path).map_err(|e| e.to_string())? != Some(wal) {
        return Err("the WAL changed while it was checked".into());
    }
    Ok((db, Some(wal)))
}

/// The settled stamp of `path` (the file named `what` in the reason when there is none).
fn settled_stamp(path: &std::path::Path, what: &str) -> Result<FileStamp, String> {
    match filestamp::settled(path, SETTLE_MAX) {
        Ok(Settled::Stamp(s)) => Ok(s),
        Ok(_) => Err(format!("the {what} has no settled stamp")),
        Err(e) => Err(format!("the {what}: {e}")),
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
    let backup = settled_stamp(&state.cfg.backup, "backup")?;
    let (db, wal) = source_stamps(state, source, &applied)?;
    // Last: a process of ours that wrote before the stamps is registered and alive now.
    if c.others_alive(std::process::id() as u64) {
        return Err("another process uses the database".into());
    }
    if spool_at_rest(c) != at_rest {
        return Err("the spool moved on".into());
    }
    c.set_clean_close(&CleanClose {
        seq,
        lost_gen: lost,
        db,
        backup,
        wal,
    });
    Ok(())
}

/// At the first open: whether the clean-close record still describes the files, so that the
/// backup is known to equal the source without a resync.
pub fn vouches(control: &Control, cfg: &Config) -> bool {
    let Some(r) = control.clean_close() else {
        return false;
    };
    let wal_as_recorded = match r.wal {
        None => matches!(wal_holds_no_commit(cfg), Ok(true)),
        Some(wal) => filestamp::is_unchanged(&cfg.db_file("-wal"), wal),
    };
    spool_at_rest(control) == Some((r.seq, r.lost_gen))
        && filestamp::is_unchanged(&cfg.db, r.db)
        && wal_as_recorded
        && filestamp::is_unchanged(&cfg.backup, r.backup)
}
