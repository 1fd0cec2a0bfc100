//! Applies batches of captured writes to the backup atomically, using SQLite's own
//! rollback-journal protocol so that any SQLite process reading the backup stays safe.
//!
//! Batches are applied in *spans*: one journal and one RESERVED lock for a run of batches, so that
//! a busy source costs the backup's disk a few syncs per span instead of three per batch (the
//! application's own fsyncs on the same device queue behind every one of ours).
//!
//! Protocol (each step relies on the one before):
//! 1. Opening a span: RESERVED on the backup, kept until the span closes. No other writer;
//!    readers go on, and a reader that finds our hot journal sees RESERVED held and leaves it be.
//!    A hot journal left by a crash is rolled back first (under EXCLUSIVE). The journal's header
//!    records the backup's size then (the span's original size).
//! 2. Each batch: the span-start image of every page it changes or cuts off, unless already in
//!    the journal or past the original size, is appended to `<backup>-journal`; if any was (or
//!    the journal is not hot yet), the records are synced, the header's nRec raised (magic
//!    written), synced again (and a new journal's directory synced).
//! 3. EXCLUSIVE: PENDING stops new readers, then we wait for current ones to finish.
//! 4. The new bytes are written and the file cut to its final size, not synced; back to RESERVED.
//!    Readers now see this batch's state, complete.
//! 5. Closing the span: the file is synced, the journal's header zeroed (the commit point; not
//!    synced, see `close_span`), and the locks released.
//!
//! Invariants: the database bytes are only modified while a durable hot journal holds the
//! span-start image of every page the span has modified below the original size, and the
//! original size, and only under EXCLUSIVE. So a crash anywhere leaves either the state the
//! last closed span committed, the state of the last batch (with the hot journal behind it, while
//! our process holds RESERVED), or a hot journal that rolls back to the span's start (SQLite does
//! that itself on its next read; `recover` does it for us). A span may roll back past batches
//! that were visible to readers: the caller must know (`ApplyFailure::reverted`, and a dead
//! process's open span) and resync. The lock-byte page is never journaled or written. The backup
//! is always a rollback-journal database: a WAL-mode header in the batch is rewritten to legacy
//! mode.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::{
    JournalWriter, finalize, is_hot, journal_path, lock_byte_pgno, rollback_hot_journal,
    sync_parent_dir, valid_page_size,
};
use super::lock::{
    BackupLock, Guard, PENDING_BYTE, lock_exclusive_with_retry, lock_reserved_with_retry,
};
use super::pagebits::PageBits;
use super::writeset::{Source, WriteSet};

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";
/// Bytes of the database header we may patch.
const HEADER_LEN: usize = 100;
/// Largest chunk copied from a source at once.
const CHUNK: u64 = 1 << 20;

/// One batch: the final image of the backup is its current content overlaid by `writes`, cut
/// (or zero-extended) to `final_size`. The batch owns its write set: applying cuts it to the final
/// size and adds the page-1 patch in place (a copy would double the index of a huge transaction).
#[derive(Clone, Debug)]
pub struct ApplyRequest {
    /// New bytes (any page size; the final page size is `page_size`).
    pub writes: WriteSet,
    /// Database size in bytes after the batch.
    pub final_size: u64,
    /// Final page size.
    pub page_size: u32,
    /// Bump the change counter if the batch leaves header bytes 24..40 as they were, so readers
    /// drop their page caches.
    pub bump_counter_if_unchanged: bool,
}

/// Test hook: where `apply` stops with an injected error, leaving the files as a crash would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailPoint {
    AfterJournalRecords,
    AfterJournalHot,
    AfterSomeDbWrites,
    AfterDbSync,
}

#[derive(Clone, Copy, Debug)]
pub struct ApplyOptions {
    pub lock_timeout: Duration,
    /// fsync journal, database and directory (always true in the product).
    pub sync: bool,
    pub fail_at: Option<FailPoint>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            lock_timeout: Duration::from_secs(5),
            sync: true,
            fail_at: None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Distinct final-size pages that received bytes.
    pub pages_written: u64,
    pub pages_journaled: u64,
    pub bytes_written: u64,
}

fn injected(opts: &ApplyOptions, here: FailPoint) -> io::Result<()> {
    if opts.fail_at == Some(here) {
        Err(io::Error::other("injected"))
    } else {
        Ok(())
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Reads `buf.len()` bytes at `off`, zero-filling whatever lies past the end of the file;
/// returns how many came from the file.
pub(crate) fn read_padded(file: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(done)
}

fn be32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        a.copy_from_slice(s);
    }
    u32::from_be_bytes(a)
}

/// Page size recorded in a database header, if the header is a valid SQLite one.
fn header_page_size(h: &[u8; HEADER_LEN]) -> Option<u32> {
    if &h[..16] != SQLITE_MAGIC {
        return None;
    }
    let raw = u32::from(u16::from_be_bytes([h[16], h[17]]));
    let ps = if raw == 1 { 65536 } else { raw };
    valid_page_size(ps).then_some(ps)
}

/// The header changes of step 3 of the spec: legacy journal mode always, and a changed file
/// version when asked. Returns the patched first 100 bytes, or None when nothing changes.
fn patched_header(
    file: &File,
    old_size: u64,
    old_hdr: Option<&[u8; HEADER_LEN]>,
    writes: &WriteSet,
    req: &ApplyRequest,
) -> io::Result<Option<[u8; HEADER_LEN]>> {
    if req.final_size < HEADER_LEN as u64 {
        return Ok(None);
    }
    let mut h = [0u8; HEADER_LEN];
    read_padded(file, &mut h[..old_size.min(HEADER_LEN as u64) as usize], 0)?;
    writes.read_covered(0, &mut h)?;
    if &h[..16] != SQLITE_MAGIC {
        return Ok(None); // not a database image: not ours to interpret
    }
    let mut patched = false;
    if h[18] == 2 || h[19] == 2 {
        // A WAL header would send readers looking for a -wal/-shm of the backup.
        h[18] = 1;
        h[19] = 1;
        patched = true;
    }
    if let Some(old) = old_hdr
        && req.bump_counter_if_unchanged
        && !req.writes.is_empty()
        && h[24..40] == old[24..40]
    {
        // Readers keep their cache while bytes 24..40 are unchanged.
        let c = be32(old, 24).wrapping_add(1);
        h[24..28].copy_from_slice(&c.to_be_bytes());
        h[92..96].copy_from_slice(&c.to_be_bytes());
        // 92 == 24 makes readers trust the in-header page count, so it must be right.
        let pages = req.final_size.div_ceil(u64::from(req.page_size));
        let pages = u32::try_from(pages).map_err(|_| invalid("database too large"))?;
        h[28..32].copy_from_slice(&pages.to_be_bytes());
        patched = true;
    }
    Ok(patched.then_some(h))
}

/// Makes a journal that never protected a database change harmless again: zero its header (it
/// stays for reuse), or remove it if that fails.
fn neutralize_journal(path: &Path, sync: bool) -> io::Result<()> {
    finalize(path, sync).or_else(|_| remove_journal(path, sync))
}

fn remove_journal(path: &Path, sync: bool) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) if sync => sync_parent_dir(path),
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A run of batches applied under one journal and one RESERVED lock (see "Spans" in the module
/// docs). Between batches the database file holds the last batch's state, complete, and the hot
/// journal holds the span-start image of every page the span changed.
pub struct Span {
    file: Arc<File>,
    jpath: PathBuf,
    journal: JournalWriter,
    /// Pages of the backup when the span began: the journal's original size. Pages at or past it
    /// are never journaled (a rollback cuts the file back to it).
    orig_pages: u64,
    /// Page size of the backup when the span began: the journal's page size.
    page_size: u32,
    /// 0-based pages whose span-start image is in the journal.
    journaled: PageBits,
    /// `finish` has made the journal hot.
    hot: bool,
    /// A batch of this span has written to the database file.
    db_written: bool,
    /// The span's batch changed the page size: it takes no further batch.
    closed_to_batches: bool,
    opened: Instant,
    last_batch: Instant,
}

impl Span {
    /// When the span began.
    pub fn opened(&self) -> Instant {
        self.opened
    }

    /// When its last batch was applied.
    pub fn last_batch(&self) -> Instant {
        self.last_batch
    }

    /// Bytes of journal it holds.
    pub fn journal_len(&self) -> u64 {
        self.journal.bytes()
    }
}

/// A batch that could not be applied.
#[derive(Debug)]
pub struct ApplyFailure {
    pub error: io::Error,
    /// The backup went back (or goes back at its next open, when the hot journal left behind is
    /// rolled back) to a state before batches that `apply_batch` had reported as applied.
    pub reverted: bool,
}

impl From<io::Error> for ApplyFailure {
    fn from(error: io::Error) -> Self {
        ApplyFailure {
            error,
            reverted: false,
        }
    }
}

/// Applies one batch to the backup at `backup_path` (created if missing) as a span of its own:
/// journal, write, sync, commit. See the module docs.
pub fn apply(
    backup_path: &Path,
    req: ApplyRequest,
    opts: &ApplyOptions,
) -> io::Result<ApplyReport> {
    let mut span = None;
    let report = apply_batch(&mut span, backup_path, req, opts).map_err(|f| f.error)?;
    close_span(&mut span, opts)?;
    Ok(report)
}

/// Applies one batch in `span`, opening one when it is `None` (or when the batch changes the page
/// size, after closing the open one). On success the span stays open: its RESERVED lock held, its
/// journal hot, the batch in the database file but not synced; `close_span` commits it. On failure
/// `span` is `None` again and the locks are released.
pub fn apply_batch(
    span: &mut Option<Span>,
    backup_path: &Path,
    req: ApplyRequest,
    opts: &ApplyOptions,
) -> Result<ApplyReport, ApplyFailure> {
    apply_batch_with(span, backup_path, req, opts, &mut || {})
}

/// `apply_batch`, calling `upkeep` after every `CHUNK` written to the database file: the consumer
/// keeps its process's spool mapping ready for the writer while it applies a big batch.
pub fn apply_batch_with(
    span: &mut Option<Span>,
    backup_path: &Path,
    mut req: ApplyRequest,
    opts: &ApplyOptions,
    upkeep: &mut dyn FnMut(),
) -> Result<ApplyReport, ApplyFailure> {
    if !valid_page_size(req.page_size) {
        return Err(invalid("invalid page size").into());
    }
    let final_pages = req.final_size.div_ceil(u64::from(req.page_size));
    if final_pages > u64::from(u32::MAX) {
        return Err(invalid("database too large").into());
    }
    if span
        .as_ref()
        .is_some_and(|s| s.closed_to_batches || s.page_size != req.page_size)
    {
        close_span(span, opts).map_err(|error| ApplyFailure {
            error,
            reverted: true,
        })?;
    }
    let s = match span.take() {
        Some(s) => span.insert(s),
        None => span.insert(open_span(backup_path, req.page_size, opts)?),
    };
    let written_before = s.db_written;
    let file = s.file.clone();
    // RESERVED is the span's already: this guard only gives the batch its upgrade and downgrade.
    let mut guard = lock_reserved_with_retry(&file, opts.lock_timeout)?;
    let deadline = Instant::now() + opts.lock_timeout;

    let result = (|| -> Result<ApplyReport, (io::Error, Stage)> {
        let at = |stage| move |e| (e, stage);
        // Old state: the previous batch's (or the span start's) image.
        let old_size = file.metadata().map_err(at(Stage::Journal))?.len();
        let mut old_hdr = None;
        if old_size >= HEADER_LEN as u64 {
            let mut h = [0u8; HEADER_LEN];
            file.read_exact_at(&mut h, 0).map_err(at(Stage::Journal))?;
            old_hdr = Some(h);
        }
        let old_valid_hdr = old_hdr.filter(|h| header_page_size(h).is_some());

        // Final image = writes below final_size, plus our header patch.
        req.writes.truncate(req.final_size);
        let patch = patched_header(&file, old_size, old_valid_hdr.as_ref(), &req.writes, &req)
            .map_err(at(Stage::Journal))?;
        if let Some(h) = patch {
            let data = Arc::new(h.to_vec());
            req.writes
                .insert(0, HEADER_LEN as u64, Source::Bytes { data, start: 0 });
        }

        // Journal the span-start image of every page this batch changes first.
        let mut report = ApplyReport {
            pages_journaled: write_journal(&file, &req, old_size, s).map_err(at(Stage::Journal))?,
            ..ApplyReport::default()
        };
        if opts.fail_at == Some(FailPoint::AfterJournalRecords) {
            s.journal.flush().map_err(at(Stage::Crash))?; // a crash leaves the records in the file
            return Err((io::Error::other("injected"), Stage::Crash));
        }
        if !s.hot || report.pages_journaled > 0 {
            // Also makes a new journal's directory entry durable before the database changes.
            s.journal.finish().map_err(at(Stage::Journal))?;
            s.hot = true;
        }
        injected(opts, FailPoint::AfterJournalHot).map_err(at(Stage::Crash))?;

        guard
            .upgrade_to_exclusive(remaining(deadline))
            .map_err(at(Stage::Exclusive))?;
        s.db_written = true;
        write_db(&file, &req.writes, &req, opts, &mut report, upkeep)
            .map_err(at(Stage::Database))?;
        file.set_len(req.final_size).map_err(at(Stage::Database))?;
        s.last_batch = Instant::now();
        Ok(report)
    })();
    match result {
        Ok(report) => {
            if let Err(error) = guard.keep_reserved() {
                // Readers may be locked out; whoever opens the backup next rolls back.
                *span = None;
                return Err(ApplyFailure {
                    error,
                    reverted: true,
                });
            }
            Ok(report)
        }
        Err((error, stage)) => {
            drop(guard);
            Err(fail_span(span, error, stage, written_before, opts))
        }
    }
}

/// Where in a batch an error happened, which decides what is left to do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Reading the old state or journaling: the database file has this batch's nothing.
    Journal,
    /// Waiting for readers to let go: nothing of this batch written, its journal records whole.
    Exclusive,
    /// Writing the database file: the hot journal must roll it back.
    Database,
    /// An injected crash: leave every file as it is.
    Crash,
}

/// Ends `span` after a failed batch. A span whose database file is untouched is undone (its
/// journal made cold); one with earlier batches is closed when the failure left them whole
/// (nothing written by this batch), else its hot journal is left for the next open to roll back.
fn fail_span(
    span: &mut Option<Span>,
    error: io::Error,
    stage: Stage,
    written_before: bool,
    opts: &ApplyOptions,
) -> ApplyFailure {
    let Some(s) = span.take() else {
        return ApplyFailure {
            error,
            reverted: false,
        };
    };
    let reverted = match stage {
        Stage::Crash | Stage::Database => {
            // A crash releases the locks and nothing else; after a failed database write the
            // hot journal is rolled back by whoever opens the backup next (`apply`, `recover`,
            // any SQLite).
            unlock_description(&s.file);
            written_before
        }
        Stage::Journal | Stage::Exclusive if !written_before => {
            drop(s.journal);
            let _ = neutralize_journal(&s.jpath, opts.sync);
            unlock_description(&s.file);
            false
        }
        Stage::Journal | Stage::Exclusive => {
            // Earlier batches are whole in the file; their journal was whole when this batch
            // began, and records appended since only hold images of pages still unchanged.
            let mut s = Some(s);
            close_span(&mut s, opts).is_err()
        }
    };
    ApplyFailure { error, reverted }
}

/// Releases every lock the backup's shared description holds (a span's kept RESERVED too).
fn unlock_description(file: &File) {
    // Unlocking through a fresh lock state releases whatever the description holds.
    let _ = BackupLock::new(file).unlock_all();
}

/// Starts a span: RESERVED on the backup (created if missing), a crashed apply's hot journal
/// rolled back, and our journal started (cold) with the backup's present size and page size.
fn open_span(backup_path: &Path, req_page_size: u32, opts: &ApplyOptions) -> io::Result<Span> {
    // Shared and never closed here: closing a descriptor would drop the POSIX locks of the
    // application's own readers of the backup (`handle`).
    let file = super::handle::open(backup_path, true)?.ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "the backup could not be created")
    })?;
    let deadline = Instant::now() + opts.lock_timeout;
    let mut guard = lock_reserved_with_retry(&file, opts.lock_timeout)?;
    let jpath = journal_path(backup_path);
    // A hot journal here is a crashed apply: roll it back before reading anything. A cold one
    // (zeroed header) is our persistent journal, reused below. We hold RESERVED, so no live
    // writer owns it.
    if is_hot(&jpath)? {
        guard.upgrade_to_exclusive(remaining(deadline))?;
        rollback_hot_journal(&file, &jpath)?;
        guard.downgrade_to_reserved()?;
    }
    let size = file.metadata()?.len();
    let mut hdr = [0u8; HEADER_LEN];
    let page_size = if size >= HEADER_LEN as u64 {
        file.read_exact_at(&mut hdr, 0)?;
        header_page_size(&hdr).unwrap_or(req_page_size)
    } else {
        req_page_size
    };
    let orig_pages = size.div_ceil(u64::from(page_size));
    let orig_pages_u32 =
        u32::try_from(orig_pages).map_err(|_| invalid("existing backup is too large"))?;
    let journal = JournalWriter::create(&jpath, orig_pages_u32, page_size, opts.sync)?;
    guard.keep_reserved()?;
    let now = Instant::now();
    Ok(Span {
        file,
        jpath,
        journal,
        orig_pages,
        page_size,
        journaled: PageBits::new(),
        hot: false,
        db_written: false,
        closed_to_batches: page_size != req_page_size,
        opened: now,
        last_batch: now,
    })
}

/// Commits the open span, if any: the database file synced, then the journal's header zeroed
/// (the commit point), then the locks released. On failure the span is gone, its locks released
/// and its hot journal left, so the backup goes back to the span's start at its next open.
pub fn close_span(span: &mut Option<Span>, opts: &ApplyOptions) -> io::Result<()> {
    let Some(s) = span.take() else {
        return Ok(());
    };
    let committed = (|| {
        if opts.sync && s.db_written {
            // fdatasync covers the new pages and a changed size; the mtime can wait (see
            // `JournalWriter::finish`).
            s.file.sync_data()?;
        }
        injected(opts, FailPoint::AfterDbSync)?;
        // Not synced: until it is durable, power loss can only bring back the hot journal, which
        // rolls back to the span's start, also a consistent state (and a power loss makes the
        // next open resync anyway); the next span's first journal sync persists it. One fsync
        // fewer per span: fsyncs on the backup's device slow down the application's own.
        if s.db_written || s.hot {
            finalize(&s.jpath, false)
        } else {
            // Never hot: only its header's cold bytes were written.
            Ok(())
        }
    })();
    unlock_description(&s.file);
    committed
}

/// Appends to the span's journal the span-start image of every page this batch changes or cuts
/// off that is not there yet; returns how many. Pages past the span's original size are never
/// journaled, and neither are pages rewritten with their present bytes.
fn write_journal(
    file: &File,
    req: &ApplyRequest,
    old_size: u64,
    span: &mut Span,
) -> io::Result<u64> {
    let writes = &req.writes;
    let ps = u64::from(span.page_size);
    let lock_pgno = lock_byte_pgno(span.page_size);
    let old_pages = old_size.div_ceil(ps);
    // 0-based index of the first present page that reaches past final_size (cut off).
    let cut_from = (req.final_size / ps).min(old_pages);
    // Pages at or past this one were not in the backup when the span began.
    let orig = span.orig_pages;
    let every_page = span.page_size != req.page_size;

    // Pages the writes touch, ascending and distinct (entries are sorted). Besides present pages
    // this includes pages a shrink earlier in the span cut off and this batch brings back: a
    // rollback cuts the file to the span's start size, which would keep their new bytes. Listed
    // lazily: a huge transaction touches every page.
    let below = if every_page {
        0
    } else {
        req.final_size.div_ceil(ps).min(orig)
    };
    let mut next = 0u64;
    let touched = writes
        .iter()
        .map_while(move |(off, len, _)| {
            let first = (off / ps).max(next);
            if first >= below {
                return None;
            }
            let last = ((off + len - 1) / ps).min(below - 1);
            next = next.max(last + 1);
            Some(first..last + 1)
        })
        .flatten();
    // Then every present page past the cut, without listing them: a shrink can cut millions.
    let cut = if every_page {
        // The span's only batch (it changes the page size), so nothing is journaled yet.
        0..old_pages
    } else {
        cut_from..old_pages.min(orig)
    };

    let mut old = vec![0u8; span.page_size as usize];
    let mut new = vec![0u8; span.page_size as usize];
    let mut n = 0u64;
    let candidates = touched
        .map(|idx| (idx, false))
        .chain(cut.map(|idx| (idx, true)));
    for (idx, is_cut) in candidates {
        let pgno = idx + 1;
        if pgno == lock_pgno || span.journaled.contains(idx) {
            continue;
        }
        // Not journaled yet, so not changed since the span began: the file holds its image then
        // (zeros past the end: a page cut earlier in the span was journaled unless all zeros).
        read_padded(file, &mut old, idx * ps)?;
        if !is_cut {
            new.copy_from_slice(&old);
            writes.read_covered(idx * ps, &mut new)?;
            if new == old {
                continue; // rewritten with identical bytes: nothing to restore
            }
        } else if idx >= cut_from && old.iter().all(|&b| b == 0) {
            // A zero page past the cut: a rollback first sets the file back to its original
            // size (ours and SQLite's alike), which brings it back as zeros. Should a later batch
            // of the span write it again, it is journaled then (as touched, with zeros).
            continue;
        }
        // pgno <= orig, which fits in u32 (checked when the span opened).
        let pgno = u32::try_from(pgno).map_err(|_| invalid("page number out of range"))?;
        span.journal.append(pgno, &old)?;
        span.journaled.insert(idx);
        n += 1;
    }
    Ok(n)
}

/// Writes every range of `writes` (already cut to final_size), skipping the lock-byte page.
fn write_db(
    file: &File,
    writes: &WriteSet,
    req: &ApplyRequest,
    opts: &ApplyOptions,
    report: &mut ApplyReport,
    upkeep: &mut dyn FnMut(),
) -> io::Result<()> {
    let ps = u64::from(req.page_size);
    let mut next_upkeep = CHUNK;
    let lock_lo = PENDING_BYTE;
    let lock_hi = PENDING_BYTE + ps;
    let fail_after = if opts.fail_at == Some(FailPoint::AfterSomeDbWrites) {
        Some(writes.len().div_ceil(2))
    } else {
        None
    };
    let mut buf = Vec::new();
    let mut last_page: Option<u64> = None;
    for (i, (off, len, src)) in writes.iter().enumerate() {
        if fail_after == Some(i) {
            return Err(io::Error::other("injected"));
        }
        let end = off + len;
        // The parts of this range outside the lock-byte page.
        let parts = [(off, end.min(lock_lo)), (off.max(lock_hi), end)];
        for (a, b) in parts {
            let mut pos = a;
            while pos < b {
                let n = (b - pos).min(CHUNK);
                buf.resize(n as usize, 0);
                src.read_exact_at(&mut buf, pos - off)?;
                file.write_all_at(&buf, pos)?;
                report.bytes_written += n;
                if report.bytes_written >= next_upkeep {
                    upkeep();
                    next_upkeep = report.bytes_written + CHUNK;
                }
                let first = pos / ps;
                let last = (pos + n - 1) / ps;
                let from = match last_page {
                    Some(p) if p >= first => p + 1,
                    _ => first,
                };
                if last >= from {
                    report.pages_written += last - from + 1;
                }
                last_page = Some(last_page.map_or(last, |p| p.max(last)));
                pos += n;
            }
        }
    }
    if fail_after.is_some() {
        // Fewer than two entries: still model a crash among the database writes.
        return Err(io::Error::other("injected"));
    }
    Ok(())
}

/// Rolls back a hot journal left by a crashed `apply` (taking EXCLUSIVE first). Returns whether
/// anything was rolled back; a missing or non-hot journal is a no-op (a non-hot one is deleted).
pub fn recover(backup_path: &Path, lock_timeout: Duration) -> io::Result<bool> {
    let jpath = journal_path(backup_path);
    if !is_hot(&jpath)? {
        return Ok(false);
    }
    let Some(file) = super::handle::open(backup_path, false)? else {
        // No database: nothing to restore (SQLite would ignore this journal too).
        remove_journal(&jpath, true)?;
        return Ok(false);
    };
    let guard: Guard<'_> = lock_exclusive_with_retry(&file, lock_timeout)?;
    let rolled = rollback_hot_journal(&file, &jpath)?;
    guard.unlock()?;
    Ok(rolled)
}

#[cfg(test)]
mod tests;
