//! Applies one batch of captured writes to the backup atomically, using SQLite's own
//! rollback-journal protocol so that any SQLite process reading the backup stays safe.
//!
//! Protocol of `apply` (each step relies on the one before):
//! 1. RESERVED on the backup: no other writer; readers continue on the old state. A hot journal
//!    left by a crash is rolled back first (under EXCLUSIVE).
//! 2. Every old page the batch will change or cut off is copied to `<backup>-journal`, then the
//!    journal is synced, made hot (magic + nRec), synced, and its directory synced.
//! 3. EXCLUSIVE: PENDING stops new readers, then we wait for current ones to finish.
//! 4. The new bytes are written, the file is cut to its final size and synced.
//! 5. The journal is deleted (the commit point) and the directory synced; locks released.
//!
//! Invariants: the database bytes are only modified while a durable hot journal holds the
//! pre-image of every modified page and the original size, and only under EXCLUSIVE. So a crash
//! anywhere leaves either the old state, the new state, or a hot journal that rolls back to the
//! old state (SQLite does that itself on its next read; `recover` does it for us). The lock-byte
//! page is never journaled or written. The backup is always a rollback-journal database: a
//! WAL-mode header in the batch is rewritten to legacy mode.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::{
    JournalWriter, finalize, is_hot, journal_path, lock_byte_pgno, rollback_hot_journal,
    sync_parent_dir, valid_page_size,
};
use super::lock::{Guard, PENDING_BYTE, lock_exclusive_with_retry, lock_reserved_with_retry};
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

/// Reads `buf.len()` bytes at `off`, zero-filling whatever lies past the end of the file.
fn read_padded(file: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
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
    Ok(())
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

/// Applies one batch to the backup at `backup_path` (created if missing). See the module docs.
pub fn apply(
    backup_path: &Path,
    mut req: ApplyRequest,
    opts: &ApplyOptions,
) -> io::Result<ApplyReport> {
    if !valid_page_size(req.page_size) {
        return Err(invalid("invalid page size"));
    }
    let final_pages = req.final_size.div_ceil(u64::from(req.page_size));
    if final_pages > u64::from(u32::MAX) {
        return Err(invalid("database too large"));
    }
    let deadline = Instant::now() + opts.lock_timeout;
    // Shared and never closed here: closing a descriptor would drop the POSIX locks of the
    // application's own readers of the backup (`handle`).
    let file = super::handle::open(backup_path, true)?.ok_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, "the backup could not be created")
    })?;
    let mut guard = lock_reserved_with_retry(&file, opts.lock_timeout)?;
    let jpath = journal_path(backup_path);

    // 1. A hot journal here is a crashed apply: roll it back before reading anything. A cold one
    //    (zeroed header) is our persistent journal, reused below. We hold RESERVED, so no live
    //    writer owns it.
    if is_hot(&jpath)? {
        guard.upgrade_to_exclusive(remaining(deadline))?;
        rollback_hot_journal(&file, &jpath)?;
        guard.downgrade_to_reserved()?;
    }

    // 2. Old state.
    let old_size = file.metadata()?.len();
    let mut old_hdr = None;
    if old_size >= HEADER_LEN as u64 {
        let mut h = [0u8; HEADER_LEN];
        file.read_exact_at(&mut h, 0)?;
        old_hdr = Some(h);
    }
    let old_ps = old_hdr
        .as_ref()
        .and_then(header_page_size)
        .unwrap_or(req.page_size);
    let old_pages = old_size.div_ceil(u64::from(old_ps));
    let old_pages_u32 =
        u32::try_from(old_pages).map_err(|_| invalid("existing backup is too large"))?;
    let old_valid_hdr = old_hdr.filter(|h| header_page_size(h).is_some());

    // 3. Final image = writes below final_size, plus our header patch.
    req.writes.truncate(req.final_size);
    if let Some(h) = patched_header(&file, old_size, old_valid_hdr.as_ref(), &req.writes, &req)? {
        let data = Arc::new(h.to_vec());
        req.writes
            .insert(0, HEADER_LEN as u64, Source::Bytes { data, start: 0 });
    }
    let req = &req;
    let writes = &req.writes;

    // 4. Journal.
    let mut report = ApplyReport::default();
    let mut jw = JournalWriter::create(&jpath, old_pages_u32, old_ps, opts.sync)?;
    report.pages_journaled = match write_journal(&file, writes, req, old_ps, old_pages, &mut jw) {
        Ok(n) => n,
        Err(e) => {
            // The database is untouched and the journal not hot: just garbage now.
            drop(jw);
            let _ = neutralize_journal(&jpath, opts.sync);
            return Err(e);
        }
    };
    if opts.fail_at == Some(FailPoint::AfterJournalRecords) {
        jw.flush()?; // a crash would leave the records in the file
        return Err(io::Error::other("injected"));
    }
    // `finish` also makes a new journal's directory entry durable before the database changes.
    let hot = jw.finish();
    drop(jw);
    if let Err(e) = hot {
        // Still only RESERVED and the database untouched: the journal, hot or not, is harmless
        // once its header is zero.
        let _ = neutralize_journal(&jpath, opts.sync);
        return Err(e);
    }
    injected(opts, FailPoint::AfterJournalHot)?;

    // 5. Exclusive.
    if let Err(e) = guard.upgrade_to_exclusive(remaining(deadline)) {
        // Still RESERVED and the database is untouched: neutralize the journal so nobody
        // replays it (replaying would be harmless, but it would also be pointless work).
        neutralize_journal(&jpath, opts.sync)?;
        return Err(e);
    }

    // 6. New content.
    write_db(&file, writes, req, opts, &mut report)?;
    file.set_len(req.final_size)?;
    if opts.sync {
        // fdatasync covers the new pages and a changed size; the mtime can wait (see
        // `JournalWriter::finish`).
        file.sync_data()?;
    }
    injected(opts, FailPoint::AfterDbSync)?;

    // 7. Commit: zeroing the journal's header is the point where the new state becomes the state.
    //    Not synced: until it is durable, power loss can only bring back the hot journal, which
    //    rolls back to the previous state, also a consistent one (and a power loss makes the next
    //    open resync anyway); the next batch's first journal sync persists it. One fsync fewer
    //    per batch: fsyncs on the backup's device slow down the application's own.
    finalize(&jpath, false)?;
    guard.unlock()?;
    Ok(report)
}

/// Appends the pre-image of every old page the batch changes or cuts off; returns how many.
fn write_journal(
    file: &File,
    writes: &WriteSet,
    req: &ApplyRequest,
    old_ps: u32,
    old_pages: u64,
    jw: &mut JournalWriter,
) -> io::Result<u64> {
    let ps = u64::from(old_ps);
    let lock_pgno = lock_byte_pgno(old_ps);
    // 0-based index of the first old page that reaches past final_size (cut off, so journaled).
    let cut_from = (req.final_size / ps).min(old_pages);
    let every_page = old_ps != req.page_size;

    // Old pages touched by the writes below the cut, ascending and distinct (entries are sorted).
    let mut touched: Vec<u64> = Vec::new();
    if !every_page {
        let mut next = 0u64;
        for (off, len, _) in writes.iter() {
            let first = (off / ps).max(next);
            let last = ((off + len - 1) / ps).min(cut_from.saturating_sub(1));
            if first >= cut_from {
                break;
            }
            if first <= last {
                touched.extend(first..=last);
                next = last + 1;
            }
        }
    }
    // Then every page past the cut, without listing them: a shrink can cut millions.
    let candidates: Box<dyn Iterator<Item = u64>> = if every_page {
        Box::new(0..old_pages)
    } else {
        Box::new(touched.into_iter().chain(cut_from..old_pages))
    };

    let mut old = vec![0u8; old_ps as usize];
    let mut new = vec![0u8; old_ps as usize];
    let mut n = 0u64;
    for idx in candidates {
        let pgno = idx + 1;
        if pgno == lock_pgno {
            continue;
        }
        read_padded(file, &mut old, idx * ps)?;
        if !every_page && idx < cut_from {
            new.copy_from_slice(&old);
            writes.read_covered(idx * ps, &mut new)?;
            if new == old {
                continue; // rewritten with identical bytes: nothing to restore
            }
        }
        if idx >= cut_from && old.iter().all(|&b| b == 0) {
            // A zero page past the cut: a rollback first sets the file back to its original
            // size (ours and SQLite's alike), which brings it back as zeros.
            continue;
        }
        // pgno <= old_pages, which the caller checked fits in u32.
        let pgno = u32::try_from(pgno).map_err(|_| invalid("page number out of range"))?;
        jw.append(pgno, &old)?;
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
) -> io::Result<()> {
    let ps = u64::from(req.page_size);
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
