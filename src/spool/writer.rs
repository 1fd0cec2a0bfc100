//! Appending captured transactions to the shared segment stream. Runs inside SQLite's VFS calls,
//! on the writer's hot path, so the common case is a memcpy: a segment is mapped `MAP_SHARED`
//! (memmap2), its blocks are reserved (`fallocate`) a few MiB ahead of the write position, and
//! entries are copied straight into the mapping; sealing publishes the new tail in the control
//! file, with no syscall at all. The syscalls and page faults that keep this possible are taken
//! off the commit path: the consumer thread of the same process grows the reservation and
//! populates the window ahead of the write position (`maintenance`, `MADV_POPULATE_WRITE`) before
//! the writer gets there; the window is 2-16 MiB, following the stream's rate (`window`).
//! Reserving as the stream grows, not the whole segment at once, keeps the spool's disk footprint
//! near what it holds (a few MiB for a quiet database, not 68). Data in a shared file mapping
//! lives in the OS page cache, so it survives kill -9 of the process; only `durable` mode
//! (`spool_sync=full`) syncs it at each seal, for power loss.
//!
//! All processes append to one stream. That is safe without a lock of our own because every
//! capture happens while the process holds the database's write lock (EXCLUSIVE for database
//! writes, the WAL write lock for frames): a transaction starts at the published tail (or opens
//! the next segment when the tail's segment is full) and publishes the new tail when sealed.
//!
//! Invariants:
//! - A transaction's entries are contiguous and end with its `Commit` entry; nothing becomes
//!   visible to consumers before `seal` publishes it in the control file.
//! - Bytes past the published tail are garbage (an aborted or crashed transaction) that the next
//!   transaction overwrites; readers never read past the published tail of the tail segment.
//! - Only bytes whose blocks `fallocate` reserved are ever written through the mapping: a store
//!   into a mapped hole on a full filesystem (or past the end of the file) raises SIGBUS and
//!   would kill the application. `Reservation::reserved` only grows, and only after the
//!   `fallocate` that covers it returned. Where no reservation could be made (full disk, a
//!   filesystem without fallocate) and past the mapping (which reaches 1 GiB past the rotation
//!   point, so only a transaction larger than that gets there) the writer uses `pwrite`, whose
//!   errors are ordinary `ENOSPC`/`EIO` results.
//! - Segment files are never shortened: another process may have the same file mapped.
//! - Memory: the writer holds no buffer; pages it wrote through the mapping are dropped from the
//!   process's page tables every few MiB (`MADV_DONTNEED`; the data stays in the page cache), so
//!   neither a huge transaction nor a long run grows the resident set. The consumer thread does
//!   this at its poll cadence (`maintenance`), because dropping page-table entries of a mapping
//!   that two threads use costs a TLB-shootdown IPI whose wait belongs off the commit path
//!   (measured: 10-18 % of the writer's time in a small-transaction WAL run when the writer did
//!   it). The writer releases by itself only when the consumer fell `RELEASE_HARD_LIMIT` behind
//!   (it is busy applying a big batch), which bounds the resident set either way. Once the
//!   writer is idle the upkeep also releases the window it populated ahead
//!   (`SpoolWriter::writer_idle`), so an idle database's spool holds no resident memory.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use memmap2::MmapRaw;

use super::control::{Control, SealedState};
use super::format::{self, CommitInfo, EntryKind, SEGMENT_HEADER_LEN};
use super::segment_path;
use super::window::Window;
use crate::fdtable::HomeFile;

/// Address space mapped past `rotate_at`, so that a transaction that starts near the end of a
/// segment still fits in the mapping: a bulk load's transaction of tens or hundreds of MiB would
/// otherwise go through `pwrite` for its part past the mapping, a system call and a page-cache
/// allocation per page on the writer's thread (measured: a fifth of a 200,000-row transaction's
/// pages in DELETE mode). Only the reserved part of it is ever touched; the rest costs address
/// space, not memory (a shared file mapping is not charged against overcommit).
const SEGMENT_SLACK: u64 = 1 << 30;
/// The slack used when the address space for `SEGMENT_SLACK` is refused (`ulimit -v`).
const SEGMENT_SLACK_MIN: u64 = 4 << 20;
/// Written bytes after which the consumer releases the mapping's pages from our page tables.
const RELEASE_EVERY: u64 = 2 << 20;
/// Written, unreleased bytes after which the writer releases them itself.
const RELEASE_HARD_LIMIT: u64 = 16 << 20;
/// The writer counts as idle once the upkeep has seen it append nothing for this long.
const IDLE_AFTER: std::time::Duration = std::time::Duration::from_millis(20);
/// Reservations grow in steps of this much, so that a stream of small transactions costs one
/// `fallocate` every few MiB.
const RESERVE_STEP: u64 = 1 << 20;

/// Where a sealed transaction ends: readers may read `segment` up to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SealedPos {
    pub segment: u64,
    pub end: u64,
}

/// The blocks reserved for the start of a segment file. Shared with the consumer thread's upkeep
/// job, which grows it off the commit path; the writer grows it itself only when it got there
/// first.
struct Reservation {
    /// The segment file, in the descriptor table of the thread that opened it (`fdtable`).
    file: HomeFile,
    /// Where another table's thread (the consumer's upkeep) opens its own descriptor, and the
    /// (device, inode) that descriptor must name: the path may have been replaced since.
    path: PathBuf,
    identity: (u64, u64),
    /// `[0, reserved)` has blocks: only this part of the mapping may be written or populated.
    reserved: AtomicU64,
    /// The mapping's length, which the reservation never exceeds (0: no mapping, nothing to
    /// reserve).
    limit: u64,
}

impl Reservation {
    fn reserved(&self) -> u64 {
        self.reserved.load(Ordering::Acquire)
    }

    /// Reserves blocks up to `end` (rounded up to `RESERVE_STEP`, at most `limit`). False if the
    /// filesystem refused (full, or no fallocate): the part past the reservation then goes
    /// through `pwrite`.
    fn grow_to(&self, end: u64) -> bool {
        let end = end
            .div_ceil(RESERVE_STEP)
            .saturating_mul(RESERVE_STEP)
            .min(self.limit);
        let have = self.reserved();
        if end <= have {
            return true;
        }
        if crate::faults::active("spool_reserve") {
            return false;
        }
        let ok = self.with_descriptor(|fd| {
            // SAFETY: `fd` is a valid descriptor of the segment file in the calling thread's
            // table (`with_descriptor`); mode 0 allocates blocks for [have, end) and extends the
            // file size to `end` if it was shorter. Two threads growing at once reserve
            // overlapping ranges, which is harmless.
            unsafe { libc::fallocate(fd, 0, have as libc::off_t, (end - have) as libc::off_t) == 0 }
        });
        if ok {
            self.reserved.fetch_max(end, Ordering::Release);
        }
        ok
    }

    /// Runs `f` with a descriptor of the segment file valid in the calling thread's table: the
    /// writer's own on its home table; on another (the consumer's), a descriptor of its own,
    /// opened by path for the call (a grow every few MiB) and checked to name the same file. It
    /// is not kept: a kept one would hold an applied, deleted segment and its page cache. False
    /// if there is none (the file was deleted or replaced).
    fn with_descriptor(&self, f: impl FnOnce(libc::c_int) -> bool) -> bool {
        if let Ok(file) = self.file.get() {
            return f(file.as_raw_fd());
        }
        let Ok(own) = OpenOptions::new().write(true).open(&self.path) else {
            return false;
        };
        let same = own.metadata().is_ok_and(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino()) == self.identity
        });
        same && f(own.as_raw_fd())
    }
}

/// The segment this process appends to.
struct OpenSegment {
    no: u64,
    /// The file and its reserved blocks.
    space: Arc<Reservation>,
    /// Mapping of the file up to `SEGMENT_SLACK` past the rotation point, of which only the
    /// reserved part may be touched (`space`); `None` if no reservation could be made at all.
    /// Shared with the consumer thread only for its upkeep (`maintenance`).
    map: Option<Arc<MmapRaw>>,
    /// Bytes of the mapping below this offset were released from our page tables.
    released: u64,
    /// Where the next byte will be written (the published tail when no transaction is open).
    write_pos: u64,
    /// The mapping is (being) populated up to here.
    populated_to: u64,
}

impl OpenSegment {
    /// Opens segment `no` (creating it with its header when `create`), maps it up to
    /// `SEGMENT_SLACK` past `rotate_at` (`SEGMENT_SLACK_MIN` if that address space is refused)
    /// and reserves it up to `reserve_ahead` past `start`, where writing will begin; no mapping
    /// if even that reservation fails. An existing segment whose header is not segment
    /// `no` in this version's format (a spool left by another version) is an `InvalidData`
    /// error, found before anything is reserved or mapped.
    fn open(
        dir: &std::path::Path,
        no: u64,
        create: bool,
        rotate_at: u64,
        start: u64,
        reserve_ahead: u64,
    ) -> io::Result<OpenSegment> {
        std::fs::create_dir_all(dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(segment_path(dir, no))?;
        if !create {
            let mut header = [0u8; SEGMENT_HEADER_LEN];
            let ours = file.read_exact_at(&mut header, 0).is_ok()
                && format::decode_segment_header(&header) == Some(no);
            if !ours {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("spool segment {no} is not in this version's format"),
                ));
            }
        }
        // The mapping may reach past the end of the file: only its reserved part is ever touched.
        let map_len = |len: u64| {
            let len = usize::try_from(len).ok()?;
            memmap2::MmapOptions::new().len(len).map_raw(&file).ok()
        };
        let map = map_len(rotate_at.saturating_add(SEGMENT_SLACK))
            .or_else(|| map_len(rotate_at.saturating_add(SEGMENT_SLACK_MIN)));
        let identity = {
            use std::os::unix::fs::MetadataExt;
            let m = file.metadata()?;
            (m.dev(), m.ino())
        };
        let space = Arc::new(Reservation {
            file: HomeFile::new(file),
            path: segment_path(dir, no),
            identity,
            reserved: AtomicU64::new(0),
            limit: map.as_ref().map_or(0, |m| m.len() as u64),
        });
        // Bytes before `start` were written (or reserved) by whoever wrote them; reserving from 0
        // also covers them for this process's view, at the cost of walking allocated extents.
        let map = map.filter(|_| space.grow_to(start.saturating_add(reserve_ahead)));
        let mut seg = OpenSegment {
            no,
            space,
            map: map.map(Arc::new),
            released: 0,
            write_pos: 0,
            populated_to: 0,
        };
        if create {
            let header = format::encode_segment_header(no, crate::util::now_us());
            seg.write_at(0, &header, reserve_ahead)?;
        }
        Ok(seg)
    }

    /// How much of the mapping may be written for a write ending at `end`: the reserved part,
    /// grown here first (to `reserve_ahead` past `end`) if the consumer's upkeep has not reached
    /// `end` yet.
    fn writable_to(&self, end: u64, reserve_ahead: u64) -> u64 {
        if self.map.is_none() {
            return 0;
        }
        let reserved = self.space.reserved();
        if end <= reserved || reserved >= self.space.limit {
            return reserved;
        }
        self.space.grow_to(end.saturating_add(reserve_ahead));
        self.space.reserved()
    }

    /// Writes `bytes` at `pos`: through the mapping where it is reserved, with `pwrite` beyond.
    fn write_at(&mut self, pos: u64, bytes: &[u8], reserve_ahead: u64) -> io::Result<()> {
        if let Some(e) = crate::faults::io_error("spool_enospc", libc::ENOSPC) {
            return Err(e);
        }
        let writable = self.writable_to(pos + bytes.len() as u64, reserve_ahead);
        let in_map = writable.saturating_sub(pos).min(bytes.len() as u64) as usize;
        if let Some(m) = self.map.as_ref().filter(|_| in_map > 0) {
            // SAFETY: [pos, pos + in_map) is inside the reserved part of the mapping (in_map is
            // clamped to it, and the reservation never exceeds the mapping's length), whose
            // blocks fallocate allocated, so the store cannot raise SIGBUS. Nobody else writes
            // this range now: writers append only under the database's write lock, and the
            // consumer reads segments with pread, never through this mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    bytes.as_ptr(),
                    m.as_mut_ptr().add(pos as usize),
                    in_map,
                )
            };
        }
        if in_map < bytes.len() {
            self.space
                .file
                .get()?
                .write_all_at(&bytes[in_map..], pos + in_map as u64)?;
        }
        Ok(())
    }

    /// Writes `parts` back to back from `pos` (`len` bytes in all). The usual case, all of it
    /// inside the reserved mapping, is one atomic load, one bounds check and one copy per part.
    fn write_parts_at(
        &mut self,
        pos: u64,
        parts: &[&[u8]],
        len: u64,
        reserve_ahead: u64,
    ) -> io::Result<()> {
        match self.map.as_ref() {
            Some(m)
                if pos + len <= self.space.reserved() && !crate::faults::active("spool_enospc") =>
            {
                let mut at = pos as usize;
                for p in parts {
                    // SAFETY: [at, at + p.len()) lies inside [pos, pos + len), inside the
                    // reserved part of the mapping (checked just above); the rest as in
                    // `write_at`.
                    unsafe {
                        std::ptr::copy_nonoverlapping(p.as_ptr(), m.as_mut_ptr().add(at), p.len())
                    };
                    at += p.len();
                }
                Ok(())
            }
            _ => {
                let mut at = pos;
                for p in parts {
                    self.write_at(at, p, reserve_ahead)?;
                    at += p.len() as u64;
                }
                Ok(())
            }
        }
    }

    /// Records the write position; releases the pages below it here only when the consumer
    /// fell `RELEASE_HARD_LIMIT` behind in releasing them.
    fn advance_to(&mut self, pos: u64) {
        self.write_pos = pos;
        if let Some(range) = self.claim_release(pos, RELEASE_HARD_LIMIT) {
            range.release();
        }
    }

    /// Claims the written pages below `pos` for release once at least `min` bytes accumulated.
    fn claim_release(&mut self, pos: u64, min: u64) -> Option<MappedRange> {
        let map = self.map.as_ref()?;
        let end = pos.min(self.space.reserved()) & !(page_size() - 1);
        if end < self.released + min {
            return None;
        }
        let start = self.released;
        self.released = end;
        Some(MappedRange {
            map: map.clone(),
            offset: start as usize,
            len: (end - start) as usize,
        })
    }

    /// Makes `[start, end)` durable (durable mode only).
    fn sync(&self, start: u64, end: u64) -> io::Result<()> {
        if let Some(m) = self.map.as_deref() {
            let reserved = self.space.reserved();
            let lo = start.min(reserved) as usize;
            let hi = end.min(reserved) as usize;
            if hi > lo {
                m.flush_range(lo, hi - lo)?;
            }
        }
        // Also covers bytes written with pwrite, the conversion of reserved blocks and the
        // file size grown by the reservation.
        self.space.file.get()?.sync_data()
    }
}

/// The OS page size (asked once: it sits on the append path).
fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        if p > 0 { p as u64 } else { 4096 }
    })
}

/// Mapping upkeep handed to the consumer thread (`SpoolWriter::maintenance`). The `Arc`s keep
/// the mappings and files alive while it works on them without the capture lock.
#[derive(Default)]
pub struct Maintenance {
    /// The reservation to grow to the given end before the window is populated.
    reserve: Option<(Arc<Reservation>, u64)>,
    populate: Option<MappedRange>,
    release: Option<MappedRange>,
    /// Populated, unwritten pages ahead of an idle writer, released.
    shrink: Option<MappedRange>,
}

impl Maintenance {
    /// Does the upkeep: drops the written pages, reserves and faults in the window ahead (as far
    /// as the reservation got: only reserved bytes may be touched).
    pub fn run(self) {
        if let Some(r) = self.release {
            r.release();
        }
        if let Some(r) = self.shrink {
            r.release();
        }
        let reserved = match &self.reserve {
            Some((space, end)) => {
                space.grow_to(*end);
                space.reserved()
            }
            None => u64::MAX,
        };
        if let Some(mut p) = self.populate {
            let end = ((p.offset + p.len) as u64).min(reserved) & !(page_size() - 1);
            if end > p.offset as u64 {
                p.len = (end - p.offset as u64) as usize;
                p.populate();
            }
        }
    }
}

/// A page-aligned part of a spool mapping, with the `Arc` that keeps the mapping alive.
pub struct MappedRange {
    map: Arc<MmapRaw>,
    offset: usize,
    len: usize,
}

impl MappedRange {
    /// Faults the range in. Failure (old kernel) just leaves the faults to the writer.
    fn populate(&self) {
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        self.advise(MADV_POPULATE_WRITE);
    }

    /// Drops the range from the page tables. For a shared file mapping MADV_DONTNEED only drops
    /// page-table entries: dirty pages stay dirty in the page cache and reach the file, and a
    /// later access (even a concurrent store by the writer, after an aborted transaction) faults
    /// the same page-cache page back in, so no written byte is lost.
    fn release(&self) {
        self.advise(libc::MADV_DONTNEED);
    }

    fn advise(&self, advice: libc::c_int) {
        // SAFETY: [offset, offset + len) lies inside the reserved part of the mapping
        // (`Maintenance::run` and `claim_release` clamp it to the reservation, which never
        // exceeds the mapping's length), which the Arc keeps alive. Neither advice used here
        // changes the mapped file's contents (see `populate` and `release`).
        unsafe {
            libc::madvise(
                self.map.as_mut_ptr().add(self.offset) as *mut libc::c_void,
                self.len,
                advice,
            )
        };
    }
}

/// The open transaction: where it started and how much of it was written.
struct Txn {
    segment: u64,
    start: u64,
    len: u64,
    pages: u32,
}

/// Appends transactions to the segment stream of one spool directory.
pub struct SpoolWriter {
    dir: PathBuf,
    durable: bool,
    rotate_at: u64,
    seg: Option<OpenSegment>,
    txn: Option<Txn>,
    /// Bytes appended by this writer, for the upkeep's measure of the stream's rate.
    appended: u64,
    /// How far ahead the mapping is kept populated, following that rate.
    window: Window,
    /// `appended` when the upkeep last looked (`writer_idle`).
    last_upkeep: Option<u64>,
    /// The last look that found the writer had appended since the one before.
    last_append_seen: Instant,
}

impl SpoolWriter {
    pub fn new(dir: PathBuf, durable: bool, rotate_at: u64) -> SpoolWriter {
        SpoolWriter {
            dir,
            durable,
            rotate_at,
            seg: None,
            txn: None,
            appended: 0,
            window: Window::default(),
            last_upkeep: None,
            last_append_seen: Instant::now(),
        }
    }

    /// Number of page entries in the open transaction.
    pub fn open_pages(&self) -> u32 {
        self.txn.as_ref().map_or(0, |t| t.pages)
    }

    /// The mapping upkeep that the consumer thread does for the writer, outside the capture
    /// lock: the reservation to grow ahead of the write position (once less than half of the
    /// reservation ahead is left), the next part of the mapping to populate (if a good part of
    /// the window is missing, and the stream moves), the written pages to release behind it,
    /// and, while the writer is idle, the populated window ahead.
    /// The window follows the stream's rate, measured here (`window`).
    pub fn maintenance(&mut self) -> Maintenance {
        let now = Instant::now();
        self.window.measure(now, self.appended);
        let idle = self.writer_idle(now);
        let (window, reserve_ahead) = (self.window.size(), self.window.reserve_ahead());
        let Some(seg) = self.seg.as_mut() else {
            return Maintenance::default();
        };
        // An idle writer's written pages are all released, not kept until RELEASE_EVERY more.
        let release_min = if idle { 1 } else { RELEASE_EVERY };
        let release = seg.claim_release(seg.write_pos, release_min);
        let Some(map) = seg.map.as_ref() else {
            return Maintenance::default();
        };
        let reserve_end = (seg.write_pos + reserve_ahead).min(seg.space.limit);
        let reserve = (seg.space.reserved() < seg.write_pos + reserve_ahead / 2
            && seg.space.reserved() < reserve_end)
            .then(|| (seg.space.clone(), reserve_end));
        let len = map.len() as u64;
        let page = page_size();
        let from = seg.populated_to.max(seg.write_pos) & !(page - 1);
        let to = (seg.write_pos + window).min(len);
        // Only reserved bytes were populated (`Maintenance::run`), and may be advised. Nothing
        // ahead of an idle writer is kept: its next transaction's first pages fault, once.
        let populated = seg.populated_to.min(seg.space.reserved());
        let keep_to = seg.write_pos.min(len).next_multiple_of(page);
        let shrink = (idle && populated > keep_to).then(|| {
            seg.populated_to = keep_to;
            MappedRange {
                map: map.clone(),
                offset: keep_to as usize,
                len: (populated - keep_to) as usize,
            }
        });
        let populate = if idle || (to < from + window / 4 && to < len) || to <= from {
            None
        } else {
            seg.populated_to = to;
            Some(MappedRange {
                map: map.clone(),
                offset: from as usize,
                len: (to - from) as usize,
            })
        };
        Maintenance {
            reserve,
            populate,
            release,
            shrink,
        }
    }

    /// Whether the upkeep has seen the writer append nothing for `IDLE_AFTER`. Then the writer's
    /// written pages are released and so is the window populated ahead (measured: a 1 GB
    /// transaction's peak held a full 16 MiB window, 14 MiB of it populated and never written,
    /// through the whole apply; even the smallest window kept left the peak 2-4 MiB over). An idle database's spool so holds no resident memory; the
    /// pages stay in the page cache, and the next transaction's first pages map them back with
    /// minor faults until the upkeep, which sees the stream move again, populates ahead once
    /// more. Idleness is judged by time, not by two looks in a row: the upkeep also looks
    /// several times a millisecond inside long steps, and a first version that released the
    /// window whenever two looks saw no append re-populated it between a busy writer's commits
    /// (consumer 0.53 of a core against 0.32, small WAL NORMAL).
    fn writer_idle(&mut self, now: Instant) -> bool {
        if self.last_upkeep.replace(self.appended) != Some(self.appended) {
            self.last_append_seen = now;
        }
        now.saturating_duration_since(self.last_append_seen) >= IDLE_AFTER
    }

    /// Starts a transaction at the published tail (caller holds the database's write lock).
    fn begin(&mut self, control: &Control) -> io::Result<()> {
        if self.txn.is_some() {
            return Ok(());
        }
        // Segment descriptors dropped by the consumer thread come back here to be closed.
        crate::fdtable::close_deferred();
        if control.follow()? {
            // The spool directory was recreated: our segment is gone with the old stream.
            self.seg = None;
        }
        let tail = control.sealed().pos;
        // Rotation happens only between transactions: no transaction spans two segments.
        let rotate = tail.segment == 0
            || tail.end >= self.rotate_at
            || !self.open_tail(tail.segment, tail.end)?;
        let (segment, start) = if rotate {
            let next = tail.segment + 1;
            let start = SEGMENT_HEADER_LEN as u64;
            let ahead = self.window.reserve_ahead();
            self.seg = Some(OpenSegment::open(
                &self.dir,
                next,
                true,
                self.rotate_at,
                start,
                ahead,
            )?);
            (next, SEGMENT_HEADER_LEN as u64)
        } else {
            (tail.segment, tail.end)
        };
        if let Some(seg) = self.seg.as_mut() {
            seg.write_pos = start;
        }
        self.txn = Some(Txn {
            segment,
            start,
            len: 0,
            pages: 0,
        });
        Ok(())
    }

    /// Makes segment `no`, the stream's tail, the open segment. False if its header is not this
    /// version's format (a spool written before an upgrade): appending there would leave every
    /// later record in a segment the reader rejects, one resync after another until rotation. The
    /// stream moves on to a new segment instead, and the consumer resyncs once for the tail it
    /// cannot read.
    fn open_tail(&mut self, no: u64, end: u64) -> io::Result<bool> {
        if self.seg.as_ref().is_some_and(|s| s.no == no) {
            return Ok(true);
        }
        match OpenSegment::open(
            &self.dir,
            no,
            false,
            self.rotate_at,
            end,
            self.window.reserve_ahead(),
        ) {
            Ok(seg) => {
                self.seg = Some(seg);
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Appends `parts` (written back to back) to the open transaction.
    fn push(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let (Some(seg), Some(txn)) = (self.seg.as_mut(), self.txn.as_mut()) else {
            return Err(io::Error::other("no open spool transaction"));
        };
        let len = parts.iter().map(|p| p.len() as u64).sum();
        let ahead = self.window.reserve_ahead();
        seg.write_parts_at(txn.start + txn.len, parts, len, ahead)?;
        txn.len += len;
        seg.advance_to(txn.start + txn.len);
        self.appended = self.appended.wrapping_add(len);
        Ok(())
    }

    /// Forgets the open transaction and the open segment after an error.
    fn reset(&mut self) {
        self.seg = None;
        self.txn = None;
    }

    /// Appends one page write of the open transaction.
    pub fn append_page(&mut self, control: &Control, offset: u64, data: &[u8]) -> io::Result<()> {
        let header = format::encode_entry_header(EntryKind::Page, offset, data);
        self.append_image(control, &[&header, data])
    }

    /// Appends one WAL frame's page image of the open transaction, verified later by SQLite's
    /// checksum in `prefix` instead of a CRC (see `format`).
    pub fn append_wal_frame(
        &mut self,
        control: &Control,
        offset: u64,
        prefix: &[u8; format::WAL_FRAME_PREFIX_LEN],
        data: &[u8],
    ) -> io::Result<()> {
        let header = format::encode_wal_frame_header(offset, prefix, data.len());
        self.append_image(control, &[&header, prefix, data])
    }

    /// Appends the parts of one page entry to the open transaction, opening it if needed. After
    /// an error the transaction and the segment are forgotten (the caller reports the loss).
    fn append_image(&mut self, control: &Control, parts: &[&[u8]]) -> io::Result<()> {
        if let Err(e) = self.begin(control).and_then(|()| self.push(parts)) {
            self.reset();
            return Err(e);
        }
        if let Some(t) = self.txn.as_mut() {
            t.pages += 1;
        }
        Ok(())
    }

    /// Seals the open transaction: takes the next sequence number, writes the commit entry and
    /// publishes the new tail. Returns the sequence number and position.
    pub fn seal(&mut self, control: &Control, info: &CommitInfo) -> io::Result<(u64, SealedPos)> {
        let r = self.seal_inner(control, info);
        if r.is_err() {
            self.reset();
        }
        r
    }

    fn seal_inner(&mut self, control: &Control, info: &CommitInfo) -> io::Result<(u64, SealedPos)> {
        self.begin(control)?;
        let seq = control.next_seq();
        let payload = format::encode_commit(info);
        let header = format::encode_entry_header(EntryKind::Commit, seq, &payload);
        self.push(&[&header, &payload])?;
        let (Some(seg), Some(txn)) = (self.seg.as_ref(), self.txn.take()) else {
            return Err(io::Error::other("no open spool transaction"));
        };
        let end = txn.start + txn.len;
        if self.durable {
            seg.sync(txn.start, end)?;
        }
        let pos = SealedPos {
            segment: txn.segment,
            end,
        };
        if control.applied().seq + 1 == seq {
            control.set_behind_since(info.sealed_us);
        }
        control.publish_sealed(SealedState::of(seq, pos, info));
        Ok((seq, pos))
    }

    /// Whether the calling thread can seal the open transaction: the segment's descriptor is in
    /// its table, or sealing needs no descriptor at all (the commit entry goes into the reserved
    /// mapping and nothing is synced). The consumer thread, which has a table of its own
    /// (`fdtable`), asks before it seals a finished rollback for an idle connection; when it
    /// cannot, the application's next write, `spool_sync` or close seals it.
    pub fn can_seal_here(&self) -> bool {
        let (Some(seg), Some(txn)) = (self.seg.as_ref(), self.txn.as_ref()) else {
            return false;
        };
        if seg.space.file.get().is_ok() {
            return true;
        }
        let commit_len = (format::ENTRY_HEADER_LEN + format::COMMIT_PAYLOAD_LEN) as u64;
        !self.durable
            && seg.map.is_some()
            && txn.start + txn.len + commit_len <= seg.space.reserved()
            && !crate::faults::active("spool_enospc")
    }

    /// Drops the open transaction (a WAL rollback). Its bytes past the tail are garbage that the
    /// next transaction overwrites.
    pub fn abort(&mut self) {
        self.txn = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::{RecordKind, SourceMode};
    use super::super::reader::SegmentReader;
    use super::*;

    const ROTATE_AT: u64 = 64 << 20;
    /// The reservation ahead of a stream whose window is the smallest (a quiet one's).
    const MIN_RESERVE: u64 = 2 * crate::spool::window::MIN;

    fn commit(n_pages: u32) -> CommitInfo {
        CommitInfo {
            kind: RecordKind::Commit,
            mode: SourceMode::Rollback,
            page_size: 4096,
            db_size: 4096,
            n_pages,
            sealed_us: 1,
            token: 2,
            wal_frames: 0,
            wal_first_frame: 0,
        }
    }

    fn file_len(dir: &std::path::Path, no: u64) -> u64 {
        std::fs::metadata(segment_path(dir, no)).unwrap().len()
    }

    /// A page image that says where it belongs, so a misplaced byte is caught.
    fn page(n: u64) -> Vec<u8> {
        (0..4096u64).map(|i| (i * 31 + n * 7) as u8).collect()
    }

    /// Seals `n` transactions of `pages` pages each, numbered from `first`.
    fn write_txns(w: &mut SpoolWriter, c: &Control, first: u64, n: u64, pages: u64) -> u64 {
        let mut no = first;
        for _ in 0..n {
            for _ in 0..pages {
                w.append_page(c, no * 4096, &page(no)).unwrap();
                no += 1;
            }
            w.seal(c, &commit(pages as u32)).unwrap();
        }
        no
    }

    /// Every page of segment 1 up to the sealed tail, in order, holds the image `page` wrote.
    fn assert_pages_read_back(dir: &std::path::Path, c: &Control, count: u64) {
        let mut r = SegmentReader::open(dir, 1).unwrap();
        let out = r
            .read_records(Some(c.sealed().pos.end), usize::MAX)
            .unwrap();
        assert!(!out.torn);
        let pages: Vec<_> = out
            .records
            .iter()
            .flat_map(|rec| rec.pages.iter())
            .collect();
        assert_eq!(pages.len() as u64, count);
        let mut img = vec![0u8; 4096];
        for (no, p) in pages.iter().enumerate() {
            assert_eq!(p.offset, no as u64 * 4096);
            r.file.read_exact_at(&mut img, p.payload_pos).unwrap();
            assert!(img == page(no as u64), "page {no} read back wrong");
        }
    }

    #[test]
    fn blocks_are_reserved_as_the_stream_grows_not_for_the_whole_segment() {
        let d = crate::util::fresh_test_dir("wr", "reserve");
        let c = Control::open(&d).unwrap();
        let mut w = SpoolWriter::new(d.clone(), false, ROTATE_AT);
        let mut next = write_txns(&mut w, &c, 0, 20, 1);
        // A quiet database's spool: the reservation ahead of the tail, not the whole segment.
        let quiet = file_len(&d, 1);
        assert!(
            quiet <= MIN_RESERVE + RESERVE_STEP,
            "{quiet} bytes for 20 small commits"
        );
        assert!(
            w.seg.as_ref().unwrap().map.is_some(),
            "the segment is mapped"
        );

        // The consumer's upkeep grows the reservation once the writer used half of it...
        let seg = w.seg.as_ref().unwrap();
        let to_half = seg.space.reserved() - MIN_RESERVE / 2 - seg.write_pos;
        next = write_txns(&mut w, &c, next, 1, to_half / 4096 + 1);
        let seg = w.seg.as_ref().unwrap();
        let before = seg.space.reserved();
        assert!(
            seg.write_pos < before,
            "the writer had no need to grow it yet"
        );
        w.maintenance().run();
        let seg = w.seg.as_ref().unwrap();
        assert!(seg.space.reserved() > before);
        assert!(seg.space.reserved() >= seg.write_pos + MIN_RESERVE);
        assert_eq!(file_len(&d, 1), seg.space.reserved());

        // ...and a transaction that outruns it grows it on its own (20 MiB in one go).
        next = write_txns(&mut w, &c, next, 1, 5120);
        let seg = w.seg.as_ref().unwrap();
        assert!(seg.space.reserved() >= seg.write_pos);
        assert!(
            file_len(&d, 1) < ROTATE_AT,
            "reserved only what was written and ahead"
        );
        assert_pages_read_back(&d, &c, next);
    }

    #[test]
    fn a_second_writer_reserves_from_the_tail_it_finds() {
        let d = crate::util::fresh_test_dir("wr", "second");
        let c = Control::open(&d).unwrap();
        let mut a = SpoolWriter::new(d.clone(), false, ROTATE_AT);
        let next = write_txns(&mut a, &c, 0, 1, 2000);
        // Another process opens the tail segment after ~8 MB were written to it.
        let mut b = SpoolWriter::new(d.clone(), false, ROTATE_AT);
        let next = write_txns(&mut b, &c, next, 3, 5);
        let seg = b.seg.as_ref().unwrap();
        assert!(seg.map.is_some());
        assert!(seg.space.reserved() >= seg.write_pos + MIN_RESERVE / 2);
        let next = write_txns(&mut a, &c, next, 2, 3);
        assert_pages_read_back(&d, &c, next);
    }

    /// A transaction that runs far past `rotate_at` (a bulk load starting near a segment's end)
    /// is still written through the mapping, whose blocks the writer reserves as it goes: no
    /// part of it falls back to `pwrite`.
    #[test]
    fn a_transaction_past_rotate_at_stays_in_the_mapping() {
        let d = crate::util::fresh_test_dir("wr", "past-rotate");
        let c = Control::open(&d).unwrap();
        let rotate_at = 1 << 20;
        let mut w = SpoolWriter::new(d.clone(), false, rotate_at);
        // 8 MiB in one transaction, eight times the rotation size.
        let next = write_txns(&mut w, &c, 0, 1, 2048);
        let seg = w.seg.as_ref().unwrap();
        let map_len = seg.map.as_ref().expect("the segment is mapped").len() as u64;
        assert!(
            map_len >= rotate_at + SEGMENT_SLACK,
            "mapped {map_len} bytes"
        );
        assert!(
            seg.space.reserved() >= seg.write_pos,
            "every byte written lies in the reserved mapping"
        );
        assert_pages_read_back(&d, &c, next);
    }

    /// The upkeep keeps the window ahead populated while the writer appends; once the writer
    /// has been idle for `IDLE_AFTER` it releases the written pages and the window ahead.
    #[test]
    fn an_idle_writer_keeps_nothing_populated() {
        let d = crate::util::fresh_test_dir("wr", "idle-window");
        let c = Control::open(&d).unwrap();
        let mut w = SpoolWriter::new(d.clone(), false, ROTATE_AT);
        // A fast stream's window, measured at instants the upkeep's own clock does not reach
        // during the test, so that it stays the largest.
        let later = Instant::now() + std::time::Duration::from_secs(3600);
        w.window.measure(later, 0);
        w.window
            .measure(later + std::time::Duration::from_millis(10), 1 << 30);
        assert_eq!(w.window.size(), crate::spool::window::MAX);
        // What the upkeep saw at its previous look: `before` appended bytes.
        let look = |w: &mut SpoolWriter, before: u64| {
            w.last_upkeep = Some(before);
            w.maintenance()
        };
        let mut next = write_txns(&mut w, &c, 0, 1, 1);
        // The stream moves under the upkeep's eyes: the window ahead is populated.
        let before = w.appended;
        next = write_txns(&mut w, &c, next, 1, 2048);
        let moving = look(&mut w, before);
        assert!(
            moving.populate.is_some(),
            "no populate while the stream moves"
        );
        assert!(moving.shrink.is_none());
        moving.run();
        // Less than RELEASE_EVERY more: kept mapped while the stream moves.
        let before = w.appended;
        next = write_txns(&mut w, &c, next, 1, 100);
        let moving = look(&mut w, before);
        assert!(moving.release.is_none());
        moving.run();
        let seg = w.seg.as_ref().unwrap();
        let (write_pos, populated) = (seg.write_pos, seg.populated_to);
        assert!(populated > write_pos + crate::spool::window::MIN);
        // Two looks in a row without an append are not yet idleness...
        let now_appended = w.appended;
        let soon = look(&mut w, now_appended);
        assert!(soon.shrink.is_none() && soon.release.is_none());
        soon.run();
        // ...IDLE_AFTER without one is: the last written pages are released, and the window.
        w.last_append_seen = Instant::now() - IDLE_AFTER;
        let idle = look(&mut w, now_appended);
        assert!(idle.populate.is_none());
        let release = idle
            .release
            .as_ref()
            .expect("the last written pages released");
        assert_eq!(
            (release.offset + release.len) as u64,
            write_pos & !(page_size() - 1)
        );
        let shrink = idle.shrink.as_ref().expect("the window ahead released");
        let keep_to = write_pos.next_multiple_of(page_size());
        assert_eq!(shrink.offset as u64, keep_to);
        assert_eq!((shrink.offset + shrink.len) as u64, populated);
        idle.run();
        assert_eq!(w.seg.as_ref().unwrap().populated_to, keep_to);
        // Still idle: nothing more to do.
        let again = look(&mut w, now_appended);
        assert!(again.populate.is_none() && again.shrink.is_none() && again.release.is_none());
        // The writer goes on where it was: every page reads back whole.
        next = write_txns(&mut w, &c, next, 3, 600);
        assert_pages_read_back(&d, &c, next);
    }
}
