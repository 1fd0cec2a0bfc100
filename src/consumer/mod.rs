//! The consumer thread of one database: reads sealed records from the spool, applies them to the
//! backup in batches (`backup::apply`), repairs losses with a resync, trims applied segments.
//!
//! Invariants:
//! - It never takes a lock on the source database: source pages are read without locks and any
//!   page read while it was changing is overwritten by a record sealed afterwards (see `resync`).
//! - Records are applied in sequence order, each whole, several per batch; a batch is atomic on the
//!   backup. A gap in the sequence or a torn sealed record means lost data: resync, never guess.
//! - A segment is deleted only after every record in it is in the backup (and the backup synced).
//! - A panic in the loop body is caught, reported, and answered with a resync.

mod resync;

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backup::apply::{self, ApplyOptions, ApplyRequest};
use crate::backup::writeset::{Source, WriteSet};
use crate::dbstate::{DbState, Phase, lock};
use crate::spool::format::RecordKind;
use crate::spool::reader::{Record, SegmentReader};
use crate::spool::writer::SealedPos;
use crate::spool::{list_segments, segment_path};

pub use resync::SourceReader;

/// Upper bound of pages per batch (a single larger transaction is still applied whole).
const MAX_BATCH_PAGES: usize = 16_384;
/// How long an apply waits for readers of the backup to let go.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle tick: lag/heartbeat bookkeeping and retry pacing.
const TICK: Duration = Duration::from_millis(250);

/// Where the consumer reads next.
struct Cursor {
    reader: Option<SegmentReader>,
    /// Segment and position to open when `reader` is `None`.
    at: SealedPos,
}

struct Consumer {
    state: Arc<DbState>,
    source: Box<dyn SourceReader>,
    cursor: Cursor,
    /// Consecutive failures, for backoff.
    failures: u32,
    /// First segment number and sequence number of this process's writer.
    first_segment: u64,
    first_seq: u64,
}

/// Starts the consumer thread of `state`.
pub fn spawn(
    state: &Arc<DbState>,
    source: Box<dyn SourceReader>,
    first_segment: u64,
    first_seq: u64,
) -> io::Result<()> {
    let mut consumer = Consumer {
        state: state.clone(),
        source,
        cursor: Cursor {
            reader: None,
            at: SealedPos { segment: first_segment, end: 0 },
        },
        failures: 0,
        first_segment,
        first_seq,
    };
    let handle = std::thread::Builder::new()
        .name("spoolvfs-consumer".to_string())
        .spawn(move || consumer.run())?;
    *lock(&state.consumer) = Some(handle);
    Ok(())
}

/// Called by the last close: lets the consumer drain for up to `drain_ms`, then joins it.
pub fn shutdown(state: &Arc<DbState>) {
    {
        let mut p = lock(&state.progress);
        p.stop_by = Some(Instant::now() + Duration::from_millis(state.cfg.drain_ms));
    }
    state.ring();
    if let Some(h) = lock(&state.consumer).take() {
        let _ = h.join();
    }
}

enum Step {
    /// Work was done; look again at once.
    Progress,
    /// Nothing to do.
    Idle,
}

impl Consumer {
    fn run(&mut self) {
        loop {
            let outcome = catch_unwind(AssertUnwindSafe(|| self.step()));
            let step = match outcome {
                Ok(Ok(step)) => {
                    self.failures = 0;
                    step
                }
                Ok(Err(e)) => {
                    self.failures += 1;
                    self.state.report_error(e);
                    Step::Idle
                }
                Err(_) => {
                    self.failures += 1;
                    self.cursor.reader = None;
                    self.state.report_error("internal error (panic) in the consumer; resyncing".into());
                    lock(&self.state.progress).lost_gen += 1;
                    Step::Idle
                }
            };
            if self.should_stop() {
                break;
            }
            if let Step::Idle = step {
                let wait = if self.failures > 0 {
                    // Back off on repeated failures (full disk, unwritable backup): 0.25 s .. 5 s.
                    TICK * self.failures.min(20)
                } else {
                    TICK
                };
                let _ = self.state.doorbell_rx.recv_timeout(wait);
            }
        }
        let mut p = lock(&self.state.progress);
        p.phase = Phase::Stopped;
        drop(p);
        self.state.changed.notify_all();
    }

    fn should_stop(&self) -> bool {
        let p = lock(&self.state.progress);
        let Some(stop_by) = p.stop_by else { return false };
        let caught_up = p.applied_seq >= p.sealed.map_or(0, |s| s.seq) && p.resynced_gen >= p.lost_gen;
        caught_up || Instant::now() >= stop_by
    }

    fn step(&mut self) -> Result<Step, String> {
        let (needs_resync, sealed, applied) = {
            let p = lock(&self.state.progress);
            (p.resynced_gen < p.lost_gen, p.sealed, p.applied_seq)
        };
        if needs_resync {
            self.set_phase(Phase::Resyncing);
            let r = resync::run(self);
            self.set_phase(if r.is_ok() { Phase::Live } else { Phase::Failing });
            return r.map(|()| Step::Progress);
        }
        let Some(sealed) = sealed else { return Ok(Step::Idle) };
        if applied >= sealed.seq {
            self.set_phase(Phase::Live);
            return Ok(Step::Idle);
        }
        let records = self.read_batch(sealed.pos).map_err(|e| format!("reading the spool: {e}"))?;
        let Some(records) = records else {
            // Lost or damaged spool data: only a resync can repair the backup.
            lock(&self.state.progress).lost_gen += 1;
            self.cursor.reader = None;
            return Ok(Step::Progress);
        };
        if records.is_empty() {
            return Ok(Step::Idle);
        }
        if records[0].seq != applied + 1 || records.windows(2).any(|w| w[1].seq != w[0].seq + 1) {
            self.state.report_error(format!(
                "spool sequence gap after transaction {applied}: resyncing"
            ));
            lock(&self.state.progress).lost_gen += 1;
            self.cursor.reader = None;
            return Ok(Step::Progress);
        }
        let mut writes = WriteSet::new();
        add_records(&mut writes, &records, self.reader_file());
        self.apply(&writes, &records, false)?;
        self.set_phase(Phase::Live);
        Ok(Step::Progress)
    }

    fn reader_file(&self) -> Option<Arc<std::fs::File>> {
        self.cursor.reader.as_ref().map(|r| r.file.clone())
    }

    fn set_phase(&self, phase: Phase) {
        let mut p = lock(&self.state.progress);
        if p.phase != phase {
            p.phase = phase;
            drop(p);
            self.state.changed.notify_all();
        }
    }

    /// Reads the next records up to the sealed position `limit`. `Ok(None)` means the spool lost
    /// data that was published as sealed.
    fn read_batch(&mut self, limit: SealedPos) -> io::Result<Option<Vec<Record>>> {
        loop {
            if self.cursor.reader.is_none() {
                let at = self.cursor.at;
                match SegmentReader::open(&self.state.cfg.spool, at.segment) {
                    Ok(mut r) => {
                        if at.end > r.pos {
                            r.pos = at.end;
                        }
                        self.cursor.reader = Some(r);
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound && at.segment < limit.segment => {
                        // That segment never came to exist (the writer failed before its first
                        // byte): continue with the next one present.
                        let next = list_segments(&self.state.cfg.spool)?
                            .into_iter()
                            .find(|&n| n > at.segment && n <= limit.segment);
                        match next {
                            Some(n) => self.cursor.at = SealedPos { segment: n, end: 0 },
                            None => return Ok(None),
                        }
                        continue;
                    }
                    Err(_) => return Ok(None),
                }
            }
            let Some(reader) = self.cursor.reader.as_mut() else { return Ok(None) };
            let current = reader.no;
            let seg_limit = (current == limit.segment).then_some(limit.end);
            let out = reader.read_records(seg_limit, MAX_BATCH_PAGES)?;
            if !out.records.is_empty() {
                return Ok(Some(out.records));
            }
            if current >= limit.segment {
                if out.torn {
                    return Ok(None);
                }
                return Ok(Some(Vec::new()));
            }
            // The writer moved on: this segment is exhausted (a torn tail here is an abandoned,
            // unsealed transaction; its loss was reported by the writer). Go to the next one.
            self.cursor.reader = None;
            self.cursor.at = SealedPos { segment: current + 1, end: 0 };
        }
    }

    /// Applies `writes` (built from `records`, possibly preceded by resync pages) to the backup
    /// and advances `applied_seq`.
    fn apply(&mut self, writes: &WriteSet, records: &[Record], from_resync_wal: bool) -> Result<(), String> {
        let Some(last) = records.last() else { return Ok(()) };
        self.apply_sized(writes, last.info.db_size, last.info.page_size, bump_needed(records, from_resync_wal))?;
        let mut p = lock(&self.state.progress);
        p.applied_seq = last.seq;
        while p.unapplied.front().is_some_and(|&(s, _)| s <= last.seq) {
            p.unapplied.pop_front();
        }
        drop(p);
        self.state.changed.notify_all();
        self.trim_before(last.segment);
        Ok(())
    }

    fn apply_sized(&mut self, writes: &WriteSet, size: u64, page_size: u32, bump: bool) -> Result<(), String> {
        let req = ApplyRequest { writes, final_size: size, page_size, bump_counter_if_unchanged: bump };
        let opts = ApplyOptions { lock_timeout: LOCK_TIMEOUT, sync: true, fail_at: None };
        let report = apply::apply(&self.state.cfg.backup, &req, &opts)
            .map_err(|e| format!("applying to backup {}: {e}", self.state.cfg.backup.display()))?;
        let mut p = lock(&self.state.progress);
        p.bytes_applied += report.bytes_written;
        p.pages_applied += report.pages_written;
        p.batches += 1;
        Ok(())
    }

    /// Deletes segments older than `segment`: all their records are in the (synced) backup.
    fn trim_before(&self, segment: u64) {
        if let Ok(list) = list_segments(&self.state.cfg.spool) {
            for n in list.into_iter().filter(|&n| n < segment) {
                let _ = std::fs::remove_file(segment_path(&self.state.cfg.spool, n));
            }
        }
    }
}

/// Adds every page of `records`, in order, to `writes` (later writes win).
fn add_records(writes: &mut WriteSet, records: &[Record], file: Option<Arc<std::fs::File>>) {
    let Some(file) = file else { return };
    for r in records {
        for p in &r.pages {
            writes.insert(p.offset, p.len as u64, Source::File { file: file.clone(), pos: p.payload_pos });
        }
    }
}

/// Whether the backup's change counter must move even if the batch leaves it unchanged: WAL
/// commits and exclusive-mode commits do not bump the source's counter, but readers of the backup
/// keep their page cache while bytes 24..40 of page 1 stay the same. Rollback records alone never
/// need it (they restore the old content), so byte equality holds for rollback-mode sources.
fn bump_needed(records: &[Record], from_resync_wal: bool) -> bool {
    from_resync_wal || records.iter().any(|r| r.info.kind == RecordKind::Commit)
}

/// Bytes after which a segment is closed and the next transaction starts a new one.
const ROTATE_AT: u64 = 64 << 20;

/// Creates the state of a newly opened database and starts its consumer. `page1` and `size`
/// describe the source file as found at open; `open_source` gives the consumer its reader.
pub fn start(
    cfg: crate::config::Config,
    page1: &[u8],
    size: u64,
    open_source: impl FnOnce() -> io::Result<Box<dyn SourceReader>>,
) -> Result<Arc<DbState>, String> {
    let spool_ready = std::fs::create_dir_all(&cfg.spool);
    let first_segment = list_segments(&cfg.spool)
        .ok()
        .and_then(|v| v.last().copied())
        .map_or(1, |m| m + 1);
    let writer = crate::spool::writer::SpoolWriter::new(cfg.spool.clone(), first_segment, cfg.durable, ROTATE_AT);
    let capture = crate::capture::Capture::new(writer, 1, page1, size);
    let state = DbState::new(cfg, capture);
    if let Err(e) = spool_ready {
        state.report_error(format!("cannot create spool directory {}: {e}", state.cfg.spool.display()));
    }
    let source = open_source().map_err(|e| format!("opening the source for the consumer: {e}"))?;
    spawn(&state, source, first_segment, 1).map_err(|e| format!("starting the consumer thread: {e}"))?;
    Ok(state)
}
