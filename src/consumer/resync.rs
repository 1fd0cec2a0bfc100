//! Seeding and resync without blocking writers: bring the backup to a committed state of the
//! source while the source keeps changing, rewriting only pages that differ.
//!
//! Algorithm (one attempt):
//! 1. `P` = the last sealed record. Every record sealed after `P` will be replayed.
//! 2. Read every page of the source file without any lock, compare it with the backup, and copy the
//!    differing ones to a scratch file in the spool. If a WAL exists, overlay its committed frames
//!    (validated as SQLite recovery would) and check that the WAL header (salts, checkpoint
//!    sequence) did not change from before the copy to after the scan: without a restart no frame
//!    was overwritten, so every page a checkpoint wrote during the copy is also in the overlay.
//! 3. Wait until no process has a transaction open (the control file's `txn_owner`), and take
//!    `S` = the last sealed record.
//! 4. Apply `copy + records (P, S]` to the backup as one atomic batch.
//!
//! Why it is correct: each page of the result is the last write to it after `P` (all captured and
//! replayed in order), or else the page as read, which nothing changed after `P`. A torn read is
//! a page being written, so a later write to it exists and wins. Spilled pages of a transaction
//! still open during the copy are followed by its record (commit or rollback playback) before `S`.
//! In rollback mode a hot journal nobody of ours owns (a crashed writer) is waited out: whoever
//! opens the database next rolls it back through SQLite. Not by a closing process, though: its
//! last connection is gone, so nobody in it will roll the journal back; its close ends at once and
//! the resync stays pending for the next open (`Consumer::drain_blocked`).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Consumer, LOCK_TIMEOUT, add_records, applied_after};
use crate::backup::apply;
use crate::backup::writeset::{Source, WriteSet};
use crate::dbheader;
use crate::dbstate::lock;
use crate::filestamp::{self, Settled};
use crate::spool::control::AppliedState;
use crate::spool::format::{CommitInfo, RecordKind, SourceMode};
use crate::spool::reader::{Record, SegmentReader};
use crate::spool::writer::SealedPos;
use crate::spool::{list_segments, segment_path};
use crate::wal::{self, WalHeader};

/// Lock-free read access to the source database file, provided by the VFS layer (it reads
/// through a private file of the underlying VFS so that no process-wide POSIX lock is disturbed).
pub trait SourceReader: Send {
    /// Reads into `buf` at `offset`; returns the bytes read (fewer at end of file).
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Current size of the file in bytes.
    fn size(&mut self) -> io::Result<u64>;
}

/// The consumer's reader of the source, opened at its first use, on the consumer's own thread
/// (so in its descriptor table: `fdtable`), and opened again after a failed open.
pub struct LazySource {
    open: Box<dyn Fn() -> io::Result<Box<dyn SourceReader>> + Send>,
    reader: Option<Box<dyn SourceReader>>,
}

impl LazySource {
    pub fn new(open: Box<dyn Fn() -> io::Result<Box<dyn SourceReader>> + Send>) -> LazySource {
        LazySource { open, reader: None }
    }

    fn reader(&mut self) -> io::Result<&mut dyn SourceReader> {
        if self.reader.is_none() {
            self.reader = Some((self.open)()?);
        }
        Ok(self.reader.as_deref_mut().expect("opened just above"))
    }
}

impl SourceReader for LazySource {
    fn read_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        self.reader()?.read_at(buf, offset)
    }

    fn size(&mut self) -> io::Result<u64> {
        self.reader()?.size()
    }
}

const MAX_ATTEMPTS: u32 = 20;

/// Runs a resync to completion (or error).
pub(super) fn run(c: &mut Consumer) -> Result<(), String> {
    apply::recover(&c.state.cfg.backup, LOCK_TIMEOUT)
        .map_err(|e| format!("rolling back the backup's hot journal: {e}"))?;
    for _ in 0..MAX_ATTEMPTS {
        let gen_ = c.state.control.lost_gen();
        if attempt(c, gen_)? {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Err(format!(
        "resync found no stable view of the source after {MAX_ATTEMPTS} attempts"
    ))
}

/// True if the source has a journal that looks hot while no process of ours has a transaction
/// open: a crashed writer's (or a foreign process's) transaction whose pages may sit in the file.
fn foreign_hot_journal(c: &Consumer) -> bool {
    let journal = c.state.cfg.db_file("-journal");
    let mut first = [0u8; 1];
    let looks_hot = File::open(&journal)
        .and_then(|f| f.read_exact_at(&mut first, 0))
        .is_ok()
        && first[0] != 0;
    looks_hot && c.state.control.txn_owner() == 0
}

fn stopping(c: &Consumer) -> bool {
    lock(&c.state.progress)
        .stop_by
        .is_some_and(|t| Instant::now() >= t)
}

/// The last close of this process asked the consumer to drain (whatever the deadline).
fn closing(c: &Consumer) -> bool {
    lock(&c.state.progress).stop_by.is_some()
}

struct Scratch {
    file: Arc<File>,
    len: u64,
}

impl Scratch {
    fn append(&mut self, data: &[u8]) -> io::Result<u64> {
        let at = self.len;
        self.file.write_all_at(data, at)?;
        self.len += data.len() as u64;
        Ok(at)
    }
}

/// One attempt; `Ok(false)` asks for another (the source moved under us in a way we must redo).
fn attempt(c: &mut Consumer, gen_: u64) -> Result<bool, String> {
    let cfg = c.state.cfg.clone();
    while foreign_hot_journal(c) {
        if closing(c) {
            // Waiting would hold the application's close for `drain_ms` and change nothing: the
            // journal is rolled back by the next opener, and then the pending resync runs.
            c.drain_blocked = true;
            return Err(format!(
                "resync left for the next open: {} is a hot journal (a transaction that crashed \
                 or failed to roll back), which SQLite rolls back when the database is next opened",
                c.state.cfg.db_file("-journal").display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let started = Instant::now();
    // 1. P.
    let p = c.state.control.sealed();
    // Before any read of the source: if the copy finds no WAL commit, a later writer of ours
    // that starts a WAL can tell from this stamp that no generation came and went since (`walend`).
    let stamp_before = filestamp::settled(&cfg.db, super::cleanclose::SETTLE_MAX)
        .ok()
        .and_then(Settled::stamp);
    let replay_from = if p.seq == 0 {
        SealedPos::default()
    } else {
        p.pos
    };

    // 2. Copy the differing pages.
    let io_err = |what: &str| {
        let what = what.to_string();
        move |e: io::Error| format!("resync: {what}: {e}")
    };
    std::fs::create_dir_all(&cfg.spool).map_err(io_err("creating the spool directory"))?;
    let scratch_path = cfg.spool.join("resync.tmp");
    let scratch_file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&scratch_path)
        .map_err(io_err("creating the resync scratch file"))?;
    let mut scratch = Scratch {
        file: Arc::new(scratch_file),
        len: 0,
    };
    let wal_path = cfg.db_file("-wal");
    let wal_before = wal::header_at(&wal_path);

    let mut page1 = [0u8; dbheader::HEADER_LEN];
    c.source
        .read_at(&mut page1, 0)
        .map_err(io_err("reading the source header"))?;
    let src_size = c.source.size().map_err(io_err("sizing the source"))?;
    let mut page_size = dbheader::page_size(&page1)
        .or(wal_before.map(|h| h.page_size))
        .unwrap_or(4096);
    // The shared descriptor (`backup::handle`): closing one of our own would drop the POSIX
    // locks of the application's readers of the backup in this process.
    let backup = crate::backup::handle::open(&cfg.backup, false)
        .map_err(|e| format!("resync: opening the backup: {e}"))?;
    let backup_len = match &backup {
        Some(f) => f.metadata().map_err(io_err("sizing the backup"))?.len(),
        None => 0,
    };
    let n_pages = src_size.div_ceil(page_size as u64);
    {
        let mut pr = lock(&c.state.progress);
        pr.resync_total = n_pages;
        pr.resync_done = 0;
    }
    let mut writes = WriteSet::new();
    let ps = page_size as usize;
    let mut src_page = vec![0u8; ps];
    let mut bak_page = vec![0u8; ps];
    for pgno in 1..=n_pages {
        let off = (pgno - 1) * page_size as u64;
        if off <= dbheader::LOCK_BYTE_OFFSET && dbheader::LOCK_BYTE_OFFSET < off + page_size as u64
        {
            continue;
        }
        src_page.fill(0);
        c.source
            .read_at(&mut src_page, off)
            .map_err(io_err("reading a source page"))?;
        let same = match &backup {
            Some(b) if off + page_size as u64 <= backup_len => {
                b.read_exact_at(&mut bak_page, off)
                    .map_err(io_err("reading a backup page"))?;
                bak_page == src_page
            }
            _ => false,
        };
        if !same {
            let at = scratch
                .append(&src_page)
                .map_err(io_err("writing the resync scratch file"))?;
            writes.insert(
                off,
                page_size as u64,
                Source::File {
                    file: scratch.file.clone(),
                    pos: at,
                },
            );
        }
        if pgno % 4096 == 0 {
            lock(&c.state.progress).resync_done = pgno;
            if stopping(c) {
                return Err("stopping during a resync".into());
            }
        }
    }
    // The backup is the file as copied: its size, not the size its header claims. They agree in
    // any database SQLite committed; a header changed without spoolvfs (or corrupt) may claim
    // more pages than the file holds, or fewer, and the backup then mirrors the file's bytes
    // (a claim of 350 million pages once grew a 4 KB backup to a 1.4 TB sparse file).
    let mut final_size = n_pages * page_size as u64;
    // The WAL generation and committed frames overlaid on the copy, if any.
    let mut overlaid: Option<(u64, u64)> = None;
    if let Ok(wal_file) = File::open(&wal_path) {
        let committed = wal::scan_committed(&wal_file).map_err(io_err("scanning the WAL"))?;
        if let (Some(h), Some(db_pages)) = (committed.header, committed.db_pages) {
            overlaid = Some((h.salts(), committed.committed_frames));
            page_size = h.page_size;
            let mut frame = vec![0u8; h.page_size as usize];
            let mut pages: Vec<_> = committed
                .newest_frame
                .iter()
                .map(|(&p, &at)| (p, at))
                .collect();
            pages.sort_unstable();
            for (pgno, data_at) in pages {
                wal_file
                    .read_exact_at(&mut frame, data_at)
                    .map_err(io_err("reading a WAL frame"))?;
                let at = scratch
                    .append(&frame)
                    .map_err(io_err("writing the resync scratch file"))?;
                let off = (pgno as u64 - 1) * h.page_size as u64;
                writes.insert(
                    off,
                    h.page_size as u64,
                    Source::File {
                        file: scratch.file.clone(),
                        pos: at,
                    },
                );
            }
            final_size = db_pages as u64 * h.page_size as u64;
        }
    }
    let source_is_wal = overlaid.is_some() || dbheader::is_wal_format(&page1);
    let wal_after = wal::header_at(&wal_path);
    let same_wal = |a: Option<WalHeader>, b: Option<WalHeader>| match (a, b) {
        (None, None) => true,
        (Some(x), Some(y)) => {
            (x.salt1, x.salt2, x.checkpoint_seq) == (y.salt1, y.salt2, y.checkpoint_seq)
        }
        _ => false,
    };
    if !same_wal(wal_before, wal_after) {
        return Ok(false);
    }

    // 3. Quiescent point S: no transaction open in any process.
    let s = loop {
        let owner = c.state.control.txn_owner();
        if owner == 0 {
            break c.state.control.sealed();
        }
        if owner == c.pid && c.state.clear_stale_own_txn_owner() {
            c.state.report_error(
                "the control file said this process had a transaction open, and none is: cleared \
                 (was the spool directory restored from a copy?)"
                    .into(),
            );
            continue;
        }
        if !crate::spool::control::pid_alive(owner) {
            // Killed with a transaction open: that change may be missing; start over.
            c.state.control.clear_txn_owner_if(owner);
            c.state.control.bump_lost();
            return Ok(false);
        }
        if stopping(c) {
            return Err("stopping during a resync".into());
        }
        std::thread::sleep(Duration::from_millis(1));
    };

    // 4. Replay (P, S] after the copy, then apply as one batch.
    // The last replayed record: the state it leaves and its commit information.
    let mut last_record: Option<(AppliedState, CommitInfo)> = None;
    let mut any_commit = false;
    if s.seq > p.seq {
        {
            let Some(groups) =
                read_range(&cfg.spool, replay_from, s.pos).map_err(io_err("reading the spool"))?
            else {
                return Ok(false);
            };
            let mut expect = p.seq + 1;
            for (file, records) in groups {
                for r in &records {
                    if r.seq != expect {
                        return Ok(false);
                    }
                    expect += 1;
                    any_commit |= r.info.kind == RecordKind::Commit;
                }
                if let Some(r) = records.last() {
                    last_record = Some((applied_after(r), r.info));
                }
                add_records(&mut writes, &records, Some(file));
            }
            if expect != s.seq + 1 {
                return Ok(false);
            }
        }
    }
    if c.state.control.lost_gen() != gen_ {
        // A capture loss (or a new request) during the copy: records after P are incomplete.
        return Ok(false);
    }
    if let Some((_, info)) = &last_record {
        final_size = info.db_size;
        page_size = info.page_size;
    }
    let bump = source_is_wal || any_commit;
    // Committed (span closed) before the new state is published: a resync is what repairs a span
    // that rolled back, so its own result must not depend on one.
    c.apply_sized(writes, final_size, page_size, bump, started, false)?;

    // The source state the copy shows, in the terms of a record's chain data: what the backup
    // equals if no record was replayed. Rollback: the change counter read before the copy (a
    // commit during it, ours or not, changes it). WAL: the generation and committed frames
    // overlaid (a later commit adds frames).
    let (mode, token, wal_frames) = match overlaid {
        Some((salts, frames)) => (SourceMode::Wal, salts, frames),
        None if source_is_wal => (SourceMode::Wal, wal_before.map_or(0, |h| h.salts()), 0),
        None => {
            let counter = dbheader::change_counter(&page1).unwrap_or(0);
            (SourceMode::Rollback, counter as u64, 0)
        }
    };
    let applied = match last_record {
        Some((applied, _)) => applied,
        // Nothing replayed: the backup is the copy, so the next record is checked against the
        // source state the copy showed, and so is the source while idle (`source_changed`): a
        // change made without spoolvfs during or after the copy is found at once, instead of
        // going unseen until our next record.
        None => AppliedState {
            seq: s.seq,
            pos: s.pos,
            sealed_us: s.sealed_us,
            token,
            mode_kind: ((mode as u64) << 8) | RecordKind::Commit as u64,
            wal_frames,
        },
    };
    let copy_stamp = if last_record.is_none() && overlaid.is_none() && source_is_wal {
        // The file as the copy found it, unchanged from before the first read to after the last.
        stamp_before.filter(|&s| filestamp::is_unchanged(&cfg.db, s))
    } else {
        None
    };
    c.state.control.set_copy_stamp(applied.seq, copy_stamp);
    // Committed by `apply_sized` above.
    c.publish_committed(applied);
    c.state.control.finish_resync(gen_);
    c.state.control.set_behind_since(0);
    {
        let mut pr = lock(&c.state.progress);
        pr.resync_done = pr.resync_total;
    }
    c.cursor.reader = None;
    c.cursor.at = if s.seq == 0 {
        SealedPos::default()
    } else {
        s.pos
    };
    c.trim_before(c.cursor.at.segment);
    let _ = std::fs::remove_file(&scratch_path);
    Ok(true)
}

/// Records read from one segment file.
type SegmentRecords = (Arc<File>, Vec<Record>);

/// Sealed records from position `from` up to `to` (inclusive end), grouped by segment file.
/// `None` when something published as sealed is missing or damaged.
fn read_range(
    dir: &std::path::Path,
    from: SealedPos,
    to: SealedPos,
) -> io::Result<Option<Vec<SegmentRecords>>> {
    let mut out = Vec::new();
    let segments: Vec<u64> = list_segments(dir)?
        .into_iter()
        .filter(|&n| n >= from.segment && n <= to.segment)
        .collect();
    for n in segments {
        let mut r = match SegmentReader::open(dir, n) {
            Ok(r) => r,
            Err(_) if n != to.segment && n != from.segment => continue,
            Err(_) => return Ok(None),
        };
        if n == from.segment && from.end > r.pos {
            r.pos = from.end;
        }
        let limit = (n == to.segment).then_some(to.end);
        let got = r.read_records(limit, usize::MAX)?;
        if got.torn && limit.is_some() {
            return Ok(None);
        }
        if !got.records.is_empty() {
            out.push((r.file.clone(), got.records));
        }
    }
    let _ = segment_path;
    Ok(Some(out))
}
