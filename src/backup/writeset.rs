//! An interval map of pending writes to the backup file, last write wins.
//!
//! Invariants (hold after every public call):
//! - entries are keyed by their start offset and never overlap: for consecutive entries
//!   `a`, `b`, `a.start + a.len <= b.start`;
//! - no entry has length zero, and none is longer than `MAX_ENTRY` (longer inserts are stored
//!   as several entries back to back);
//! - an entry `(start, len, src)` means "byte `start + i` becomes byte `source_pos(i)` of its
//!   origin" for `i < len`, where `source_pos(i)` is `pos + i` for a *contiguous* entry
//!   (`unit == 0`) and `pos + (i / unit) * stride + i % unit` for a *strided* one: a run of
//!   `unit`-byte pieces lying `stride` bytes apart in the origin, as consecutive pages lie in a
//!   spool segment, each behind its entry header. A strided entry is longer than one unit, its
//!   `stride` is at least its `unit`, and its start is a unit boundary (its last unit may be
//!   partial). Splitting an entry only moves source positions (a strided entry cut inside a unit
//!   becomes a contiguous head and a strided rest); it never copies;
//! - every entry's origin index names an element of `origins` (or is `ZEROS`); `origins` only
//!   grows.
//!
//! Memory: one huge transaction writes every page, mostly in runs of consecutive pages that lie
//! one after another in the spool. An insert that continues the entry ending where it starts,
//! from the next position of the same origin, extends that entry instead of adding one
//! (`try_extend`): a run of pages costs one entry. Pages that follow no such run (small
//! transactions, scattered updates) still cost one entry each, 24 bytes beside its 8-byte key,
//! with the file or buffer it reads from stored once in `origins` and named by index. One entry
//! per page, in a B-tree that sequential inserts leave half full, put ~48 bytes per page of a
//! 1 GB transaction here (12.5 MB): most of the consumer's memory while it applied one.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Where the bytes of one write-set entry come from, as callers hand them in.
#[derive(Clone, Debug)]
pub enum Source {
    /// Bytes of `file` starting at byte `pos` (e.g. a spool segment).
    File { file: Arc<File>, pos: u64 },
    /// Bytes of `data` starting at index `start`.
    Bytes { data: Arc<Vec<u8>>, start: usize },
    /// Zero bytes, as many as the entry is long: what a file truncated and then extended past
    /// the cut reads there.
    Zeros,
}

/// A file or buffer that entries read from, stored once per write set.
#[derive(Clone, Debug)]
enum Origin {
    File(Arc<File>),
    Bytes(Arc<Vec<u8>>),
}

/// The origin index of entries that read as zeros.
const ZEROS: u32 = u32::MAX;
/// The longest entry: a longer insert becomes several entries.
const MAX_ENTRY: u64 = 1 << 31;

/// One entry's length and source: `origins[origin]` (or zeros) from position `pos`, contiguous
/// (`unit == 0`) or strided (see the module invariants).
#[derive(Clone, Copy, Debug)]
struct Entry {
    len: u32,
    origin: u32,
    pos: u64,
    unit: u32,
    stride: u32,
}

impl Entry {
    fn contiguous(len: u64, origin: u32, pos: u64) -> Entry {
        Entry {
            len: len as u32,
            origin,
            pos,
            unit: 0,
            stride: 0,
        }
    }

    /// Where byte `i` of the entry lies in its origin. Saturating keeps a bogus position out of
    /// range, so a later read fails cleanly.
    fn source_pos(&self, i: u64) -> u64 {
        if self.unit == 0 {
            return self.pos.saturating_add(i);
        }
        let unit = u64::from(self.unit);
        (i / unit)
            .saturating_mul(u64::from(self.stride))
            .saturating_add(i % unit)
            .saturating_add(self.pos)
    }

    /// The contiguous pieces of bytes `[rel, rel + len)` of a strided entry, in order, each as
    /// (offset in that range, position in the origin, length): whole units, and parts of one at
    /// either end.
    fn pieces(self, rel: u64, len: usize) -> impl Iterator<Item = (usize, u64, usize)> {
        let unit = u64::from(self.unit);
        let mut done = 0usize;
        std::iter::from_fn(move || {
            (done < len).then(|| {
                let i = rel.saturating_add(done as u64);
                let n = ((unit - i % unit) as usize).min(len - done);
                let piece = (done, self.source_pos(i), n);
                done += n;
                piece
            })
        })
    }

    /// The part of this entry that starts `skip` bytes in and is `len` long (`skip + len` at
    /// most its length, `len > 0`): what is left of it when the rest is overwritten. One entry,
    /// or two when a strided entry is cut inside a unit: the rest of that unit (contiguous), then
    /// the units after it. Each comes with its offset from `skip`.
    fn parts(self, skip: u64, len: u64) -> impl Iterator<Item = (u64, Entry)> {
        let head_len = if self.unit == 0 {
            len
        } else {
            let within = skip % u64::from(self.unit);
            if within == 0 {
                0
            } else {
                (u64::from(self.unit) - within).min(len)
            }
        };
        let head = (head_len > 0).then(|| {
            (
                0,
                Entry::contiguous(head_len, self.origin, self.source_pos(skip)),
            )
        });
        let rest = (head_len < len).then(|| {
            // Strided, starting on a unit boundary.
            let from = skip + head_len;
            let mut e = Entry {
                len: (len - head_len) as u32,
                origin: self.origin,
                pos: self.source_pos(from),
                unit: self.unit,
                stride: self.stride,
            };
            if u64::from(e.len) <= u64::from(e.unit) {
                (e.unit, e.stride) = (0, 0);
            }
            (head_len, e)
        });
        head.into_iter().chain(rest)
    }

    /// Extends this entry, which ends where `next` starts, by `next` when `next` continues it in
    /// the same origin: the next bytes (contiguous), or the next unit `stride` bytes on. A
    /// single-unit contiguous entry followed by an equal piece further on becomes strided.
    fn try_extend(&mut self, next: &Entry) -> bool {
        if self.origin != next.origin || self.origin == ZEROS || next.unit != 0 {
            return false;
        }
        let len = u64::from(self.len) + u64::from(next.len);
        if len > MAX_ENTRY {
            return false;
        }
        if self.unit == 0 {
            if self.pos.checked_add(u64::from(self.len)) == Some(next.pos) {
                self.len = len as u32;
                return true;
            }
            let Some(stride) = next
                .pos
                .checked_sub(self.pos)
                .and_then(|d| u32::try_from(d).ok())
            else {
                return false;
            };
            if next.len != self.len || stride < self.len {
                return false;
            }
            (self.unit, self.stride) = (self.len, stride);
            self.len = len as u32;
            return true;
        }
        // Strided: only whole units continue it.
        let units = u64::from(self.len) / u64::from(self.unit);
        let whole = u64::from(self.len) % u64::from(self.unit) == 0;
        let expected = units
            .checked_mul(u64::from(self.stride))
            .and_then(|d| self.pos.checked_add(d));
        if whole && next.len == self.unit && expected == Some(next.pos) {
            self.len = len as u32;
            return true;
        }
        false
    }
}

/// Where the bytes of one entry come from, as `WriteSet::iter` shows it.
#[derive(Clone, Copy, Debug)]
pub struct SourceRef<'a> {
    origin: Option<&'a Origin>,
    entry: Entry,
}

impl SourceRef<'_> {
    /// Reads `buf.len()` bytes starting `rel` bytes into this source (a unit at a time from a
    /// strided one).
    ///
    /// A source shorter than requested is an `UnexpectedEof` error, never a panic.
    pub fn read_exact_at(&self, buf: &mut [u8], rel: u64) -> io::Result<()> {
        if self.entry.unit == 0 || self.origin.is_none() {
            return self.read_contiguous(buf, self.entry.source_pos(rel));
        }
        if let Some(Origin::File(file)) = self.origin
            && self.read_strided_vectored(file, buf, rel)
        {
            return Ok(());
        }
        for (at, pos, n) in self.entry.pieces(rel, buf.len()) {
            self.read_contiguous(&mut buf[at..at + n], pos)?;
        }
        Ok(())
    }

    /// Reads part of a strided entry from a file with one `preadv` per `MAX_IOV / 2` pieces, the
    /// entry headers between them going to a scratch buffer: a megabyte of a run of pages is one
    /// system call instead of 256. False when it cannot (a gap wider than the scratch, an error,
    /// a short read): the caller then reads piece by piece, which reports errors precisely.
    fn read_strided_vectored(&self, file: &File, buf: &mut [u8], rel: u64) -> bool {
        /// Linux's limit on the vectors of one call (UIO_MAXIOV).
        const MAX_IOV: usize = 1024;
        let mut gap = [0u8; 256];
        let gap_ptr = gap.as_mut_ptr();
        let base = buf.as_mut_ptr();
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(MAX_IOV);
        let mut pieces = self.entry.pieces(rel, buf.len()).peekable();
        while let Some(&(_, first_pos, _)) = pieces.peek() {
            let Ok(start) = libc::off_t::try_from(first_pos) else {
                return false;
            };
            iov.clear();
            let mut expect = 0usize;
            let mut next_pos = first_pos;
            while iov.len() + 2 <= MAX_IOV
                && let Some((at, pos, n)) = pieces.next()
            {
                // The bytes between two pieces (an entry header) go to the scratch buffer.
                let gap_len = match pos.checked_sub(next_pos) {
                    Some(g) if g as usize <= gap.len() => g as usize,
                    _ => return false,
                };
                if gap_len > 0 {
                    iov.push(libc::iovec {
                        iov_base: gap_ptr.cast(),
                        iov_len: gap_len,
                    });
                }
                iov.push(libc::iovec {
                    // SAFETY: `at + n <= buf.len()` (`pieces`), so the pointer stays inside `buf`.
                    iov_base: unsafe { base.add(at) }.cast(),
                    iov_len: n,
                });
                expect += gap_len + n;
                next_pos = pos.saturating_add(n as u64);
            }
            // SAFETY: every vector points into `buf` (disjoint pieces, in bounds) or into `gap`
            // (the kernel may write it several times; nobody reads it), both alive and not
            // otherwise accessed during the call; `iov.len() <= MAX_IOV`; `start` is a valid
            // offset and the descriptor is open for as long as `file` lives.
            let got = unsafe {
                libc::preadv(
                    std::os::fd::AsRawFd::as_raw_fd(file),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                    start,
                )
            };
            if usize::try_from(got).ok() != Some(expect) {
                return false;
            }
        }
        true
    }

    fn read_contiguous(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
        if at == u64::MAX {
            return Err(out_of_range());
        }
        match self.origin {
            Some(Origin::File(file)) => file.read_exact_at(buf, at),
            Some(Origin::Bytes(data)) => {
                let from = usize::try_from(at).map_err(|_| out_of_range())?;
                let to = from.checked_add(buf.len()).ok_or_else(out_of_range)?;
                let src = data.get(from..to).ok_or_else(out_of_range)?;
                buf.copy_from_slice(src);
                Ok(())
            }
            None => {
                buf.fill(0);
                Ok(())
            }
        }
    }
}

fn out_of_range() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "write-set source is shorter than its entry",
    )
}

/// Pending writes: byte ranges of the database and where their new content comes from.
#[derive(Clone, Debug, Default)]
pub struct WriteSet {
    /// start offset -> entry. See the module invariants.
    map: BTreeMap<u64, Entry>,
    /// The files and buffers entries read from.
    origins: Vec<Origin>,
}

impl WriteSet {
    pub fn new() -> Self {
        WriteSet::default()
    }

    /// Records that bytes `[offset, offset+len)` of the database become the `len` bytes read
    /// from `src`. Later inserts win over earlier ones byte for byte.
    ///
    /// A range that would run past `u64::MAX` is cut there (such offsets cannot be real files).
    pub fn insert(&mut self, offset: u64, len: u64, src: Source) {
        let len = len.min(u64::MAX - offset);
        if len == 0 {
            return;
        }
        let (origin, pos) = self.intern(src);
        let mut done = 0;
        while done < len {
            let part = (len - done).min(MAX_ENTRY);
            let entry = Entry::contiguous(part, origin, pos.saturating_add(done));
            self.insert_entry(offset + done, entry);
            done += part;
        }
    }

    /// The origin index and start position of `src`, storing its file or buffer unless the
    /// last one stored is the same (consecutive pages of one spool segment share it).
    fn intern(&mut self, src: Source) -> (u32, u64) {
        let (origin, pos) = match src {
            Source::Zeros => return (ZEROS, 0),
            Source::File { file, pos } => (Origin::File(file), pos),
            Source::Bytes { data, start } => (Origin::Bytes(data), start as u64),
        };
        let same = match (self.origins.last(), &origin) {
            (Some(Origin::File(a)), Origin::File(b)) => Arc::ptr_eq(a, b),
            (Some(Origin::Bytes(a)), Origin::Bytes(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        if !same {
            self.origins.push(origin);
        }
        // One origin per insert at most: a write set cannot hold 2^32 inserts (entries alone
        // would take over 100 GB), so the index always fits below ZEROS.
        let index = u32::try_from(self.origins.len() - 1)
            .ok()
            .filter(|&i| i < ZEROS)
            .expect("write set origin table overflow");
        (index, pos)
    }

    /// Inserts one contiguous entry of at most `MAX_ENTRY` bytes, cutting what it overlaps, or
    /// extends the entry that ends where it starts if it continues that one.
    fn insert_entry(&mut self, offset: u64, new: Entry) {
        let end = offset + new.len as u64;

        // The one entry that may start before `offset` and reach into the new range.
        let before = self
            .map
            .range(..offset)
            .next_back()
            .map(|(&s, &old)| (s, old));
        if let Some((s, old)) = before {
            let e = s + old.len as u64;
            if e > offset {
                // Keep its head (`s < offset`, so it is non-empty), then its tail if the new
                // range sits strictly inside it.
                self.map.remove(&s);
                self.put_parts(s, old, 0, offset - s);
                if e > end {
                    self.put_parts(end, old, end - s, e - end);
                }
            }
        }

        // Entries starting inside the new range are covered at least at their head.
        let inside: Vec<u64> = self.map.range(offset..end).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some(old) = self.map.remove(&s) {
                let e = s + old.len as u64;
                if e > end {
                    self.put_parts(end, old, end - s, e - end);
                }
            }
        }

        // Nothing overlaps the new range now; an entry ending at `offset` may take it in.
        if let Some((&s, prev)) = self.map.range_mut(..offset).next_back()
            && s + u64::from(prev.len) == offset
            && prev.try_extend(&new)
        {
            return;
        }
        self.map.insert(offset, new);
    }

    /// Stores `old.parts(skip, len)` from database offset `at` on.
    fn put_parts(&mut self, at: u64, old: Entry, skip: u64, len: u64) {
        for (rel, part) in old.parts(skip, len) {
            self.map.insert(at + rel, part);
        }
    }

    fn source(&self, entry: &Entry) -> SourceRef<'_> {
        SourceRef {
            origin: self.origins.get(entry.origin as usize),
            entry: *entry,
        }
    }

    /// Entries as `(offset, len, source)`, ascending and non-overlapping.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, SourceRef<'_>)> + '_ {
        self.map
            .iter()
            .map(|(&s, e)| (s, e.len as u64, self.source(e)))
    }

    /// Number of entries (not bytes).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Number of database bytes covered.
    pub fn total_bytes(&self) -> u64 {
        self.map.values().map(|e| e.len as u64).sum()
    }

    /// Drops every byte at or beyond `size`; an entry crossing `size` is cut there.
    pub fn truncate(&mut self, size: u64) {
        drop(self.map.split_off(&size));
        if let Some((&s, e)) = self.map.iter_mut().next_back()
            && s + e.len as u64 > size
        {
            e.len = (size - s) as u32;
            if e.len <= e.unit {
                // One unit or less left: the same bytes, read as a contiguous entry.
                (e.unit, e.stride) = (0, 0);
            }
        }
    }

    /// Entries overlapping `[offset, end)`, each clipped to it, as `(start, len, source, rel)`
    /// where `rel` is how far into the source the clipped part begins.
    fn overlapping(
        &self,
        offset: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, u64, SourceRef<'_>, u64)> + '_ {
        let first = self
            .map
            .range(..offset)
            .next_back()
            .filter(|(s, e)| **s + e.len as u64 > offset)
            .map(|(&s, _)| s)
            .unwrap_or(offset);
        self.map.range(first..end).map(move |(&s, e)| {
            let from = s.max(offset);
            let to = (s + e.len as u64).min(end);
            (from, to - from, self.source(e), from - s)
        })
    }

    /// Copies the bytes of `[offset, offset+buf.len())` that the write set covers into `buf`,
    /// leaving uncovered bytes of `buf` untouched. Returns whether every byte was covered.
    pub fn read_covered(&self, offset: u64, buf: &mut [u8]) -> io::Result<bool> {
        let end = offset.saturating_add(buf.len() as u64);
        let mut covered = 0u64;
        for (from, len, src, rel) in self.overlapping(offset, end) {
            // Both fit in usize: they lie within `buf`.
            let a = (from - offset) as usize;
            let b = a + len as usize;
            src.read_exact_at(&mut buf[a..b], rel)?;
            covered += len;
        }
        Ok(covered == end - offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(v: Vec<u8>) -> Source {
        Source::Bytes {
            data: Arc::new(v),
            start: 0,
        }
    }

    fn fill(n: usize, b: u8) -> Source {
        bytes(vec![b; n])
    }

    /// Reads the whole write set into a model-like vector (None = uncovered).
    fn render(ws: &WriteSet, size: usize) -> Vec<Option<u8>> {
        let mut out = vec![None; size];
        let mut last_end = 0u64;
        for (off, len, src) in ws.iter() {
            assert!(len > 0, "empty entry");
            assert!(off >= last_end, "overlap or disorder at {off}");
            last_end = off + len;
            let mut buf = vec![0u8; len as usize];
            src.read_exact_at(&mut buf, 0).unwrap();
            for (i, b) in buf.into_iter().enumerate() {
                out[off as usize + i] = Some(b);
            }
        }
        out
    }

    #[test]
    fn page_size_changes_overlap() {
        let mut ws = WriteSet::new();
        // Four 1024-byte pages, then one 4096-byte page over all of them, then 1024 again.
        for p in 0..4u64 {
            ws.insert(p * 1024, 1024, fill(1024, p as u8 + 1));
        }
        assert_eq!(ws.len(), 4);
        ws.insert(0, 4096, fill(4096, 9));
        assert_eq!(ws.len(), 1);
        assert_eq!(ws.total_bytes(), 4096);
        ws.insert(1024, 1024, fill(1024, 7));
        assert_eq!(ws.len(), 3);
        let r = render(&ws, 4096);
        assert!(r[..1024].iter().all(|b| *b == Some(9)));
        assert!(r[1024..2048].iter().all(|b| *b == Some(7)));
        assert!(r[2048..].iter().all(|b| *b == Some(9)));
        // Straddling: covers the tail of one entry and the head of another.
        ws.insert(1500, 1000, fill(1000, 3));
        let r = render(&ws, 4096);
        assert!(r[1024..1500].iter().all(|b| *b == Some(7)));
        assert!(r[1500..2500].iter().all(|b| *b == Some(3)));
        assert!(r[2500..].iter().all(|b| *b == Some(9)));
        assert_eq!(ws.total_bytes(), 4096);
    }

    #[test]
    fn split_adjusts_source_positions() {
        let mut ws = WriteSet::new();
        let data: Vec<u8> = (0..100u8).collect();
        ws.insert(1000, 100, bytes(data));
        ws.insert(1040, 10, fill(10, 0xff));
        let r = render(&ws, 1200);
        for i in 0..100usize {
            let want = if (40..50).contains(&i) { 0xff } else { i as u8 };
            assert_eq!(r[1000 + i], Some(want), "byte {i}");
        }
        assert_eq!(ws.len(), 3);
        let mut buf = [0u8; 20];
        assert!(ws.read_covered(1035, &mut buf).unwrap());
        assert_eq!(&buf[..5], &[35, 36, 37, 38, 39]);
        assert_eq!(&buf[5..15], &[0xff; 10]);
        assert_eq!(&buf[15..], &[50, 51, 52, 53, 54]);
        let mut buf = [1u8; 20];
        assert!(!ws.read_covered(990, &mut buf).unwrap());
        assert_eq!(&buf[..10], &[1; 10], "uncovered bytes untouched");
        assert_eq!(&buf[10..], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn truncate_cuts_and_drops() {
        let mut ws = WriteSet::new();
        ws.insert(0, 100, fill(100, 1));
        ws.insert(200, 100, fill(100, 2));
        ws.insert(300, 100, fill(100, 3));
        ws.truncate(250);
        assert_eq!(ws.len(), 2);
        assert_eq!(ws.total_bytes(), 150);
        ws.truncate(200);
        assert_eq!(ws.len(), 1);
        ws.truncate(0);
        assert!(ws.is_empty());
        ws.insert(10, 0, fill(0, 0));
        assert!(ws.is_empty(), "empty insert ignored");
    }

    #[test]
    fn short_source_is_an_error() {
        let mut ws = WriteSet::new();
        ws.insert(0, 10, fill(5, 1));
        let mut buf = [0u8; 10];
        assert!(ws.read_covered(0, &mut buf).is_err());
    }

    #[test]
    fn file_source() {
        let dir = crate::util::fresh_test_dir("ws", "file_source");
        let p = dir.join("src.bin");
        std::fs::write(&p, (0..=255u8).collect::<Vec<_>>()).unwrap();
        let f = Arc::new(File::open(&p).unwrap());
        let mut ws = WriteSet::new();
        ws.insert(
            0,
            100,
            Source::File {
                file: Arc::clone(&f),
                pos: 10,
            },
        );
        ws.insert(0, 50, fill(50, 0));
        let mut buf = [0u8; 10];
        assert!(ws.read_covered(50, &mut buf).unwrap());
        assert_eq!(buf, [60, 61, 62, 63, 64, 65, 66, 67, 68, 69]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// The write set reads back as `model` says (None = uncovered), in whole and through
    /// `read_covered` on a random window.
    fn agrees_with_model(ws: &WriteSet, model: &[Option<u8>], rng: &mut XorShift, what: &str) {
        let size = model.len();
        assert_eq!(render(ws, size), model, "{what}");
        let covered = model.iter().filter(|b| b.is_some()).count() as u64;
        assert_eq!(ws.total_bytes(), covered, "{what}");
        let off = rng.below(size as u64);
        let len = rng.below(size as u64 - off + 1) as usize;
        let mut buf = vec![0xA5u8; len];
        let all = ws.read_covered(off, &mut buf).unwrap();
        let win = &model[off as usize..off as usize + len];
        assert_eq!(all, win.iter().all(|b| b.is_some()), "{what}");
        for (i, m) in win.iter().enumerate() {
            assert_eq!(buf[i], m.unwrap_or(0xA5), "{what} byte {i}");
        }
    }

    #[test]
    fn random_against_byte_model() {
        const SIZE: usize = 3000;
        for seed in 1..40u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let mut ws = WriteSet::new();
            let mut model: Vec<Option<u8>> = vec![None; SIZE];
            for step in 0..200 {
                if rng.below(20) == 0 {
                    let size = rng.below(SIZE as u64 + 1);
                    ws.truncate(size);
                    for b in &mut model[size as usize..] {
                        *b = None;
                    }
                } else {
                    let off = rng.below(SIZE as u64 - 1);
                    let len = 1 + rng.below((SIZE as u64 - off).min(700));
                    let skip = rng.below(5) as usize;
                    let data: Vec<u8> =
                        (0..len as usize + skip).map(|_| rng.next() as u8).collect();
                    for i in 0..len as usize {
                        model[off as usize + i] = Some(data[skip + i]);
                    }
                    ws.insert(
                        off,
                        len,
                        Source::Bytes {
                            data: Arc::new(data),
                            start: skip,
                        },
                    );
                }
                agrees_with_model(&ws, &model, &mut rng, &format!("seed {seed} step {step}"));
            }
        }
    }

    /// Pages inserted in runs, as a spool segment holds them (each behind a header), with
    /// random overwrites that cut runs inside a unit, truncations and scattered pages: the write
    /// set must read back exactly what a byte model says, and runs must cost one entry.
    #[test]
    fn random_runs_against_byte_model() {
        const UNIT: u64 = 64;
        const PAGES: u64 = 64;
        const SIZE: usize = (UNIT * PAGES) as usize;
        for seed in 1..40u64 {
            let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let header = [0u64, 24, 64][seed as usize % 3];
            let stride = UNIT + header;
            let seg: Arc<Vec<u8>> = Arc::new((0..400 * stride).map(|_| rng.next() as u8).collect());
            let mut cursor = 0u64;
            let mut next_page = 0u64;
            let mut ws = WriteSet::new();
            let mut model: Vec<Option<u8>> = vec![None; SIZE];
            let mut runs_seen = 0;
            for step in 0..300 {
                let roll = rng.below(100);
                if roll < 75 {
                    // The next page of the segment, usually the page after the last one.
                    let page = if rng.below(10) < 8 {
                        next_page % PAGES
                    } else {
                        rng.below(PAGES)
                    };
                    next_page = page + 1;
                    let start = (cursor + header) as usize;
                    cursor += stride;
                    let at = (page * UNIT) as usize;
                    for i in 0..UNIT as usize {
                        model[at + i] = Some(seg[start + i]);
                    }
                    let src = Source::Bytes {
                        data: Arc::clone(&seg),
                        start,
                    };
                    ws.insert(page * UNIT, UNIT, src);
                } else if roll < 95 {
                    // Any range, from a buffer of its own.
                    let off = rng.below(SIZE as u64 - 1);
                    let len = 1 + rng.below((SIZE as u64 - off).min(300));
                    let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                    for i in 0..len as usize {
                        model[off as usize + i] = Some(data[i]);
                    }
                    ws.insert(off, len, bytes(data));
                } else {
                    let size = rng.below(SIZE as u64 + 1);
                    ws.truncate(size);
                    for b in &mut model[size as usize..] {
                        *b = None;
                    }
                }
                agrees_with_model(&ws, &model, &mut rng, &format!("seed {seed} step {step}"));
                let runs = ws.map.values().filter(|e| e.len > UNIT as u32).count();
                runs_seen = runs_seen.max(runs);
            }
            assert!(
                runs_seen > 0,
                "seed {seed}: no run of pages was ever merged"
            );
        }
    }

    /// A run of pages that follow each other in the database and in their origin, a header
    /// apart, is one entry however long; it reads back page by page from the right places, and
    /// an overwrite inside it keeps the rest.
    #[test]
    fn a_run_of_pages_is_one_entry() {
        let dir = crate::util::fresh_test_dir("ws", "run");
        let p = dir.join("seg.bin");
        let (unit, stride, pages) = (4096u64, 4096u64 + 24, 1000u64);
        let image: Vec<u8> = (0..stride * pages).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &image).unwrap();
        let f = Arc::new(File::open(&p).unwrap());
        let mut ws = WriteSet::new();
        for page in 0..pages {
            let src = Source::File {
                file: Arc::clone(&f),
                pos: page * stride + 24,
            };
            ws.insert(page * unit, unit, src);
        }
        assert_eq!(ws.len(), 1);
        assert_eq!(ws.total_bytes(), unit * pages);
        let expect = |page: u64, i: u64| image[(page * stride + 24 + i) as usize];
        let mut buf = vec![0u8; (unit * pages) as usize];
        assert!(ws.read_covered(0, &mut buf).unwrap());
        for page in [0, 1, 500, 999] {
            for i in [0, 1, 4095] {
                assert_eq!(buf[(page * unit + i) as usize], expect(page, i));
            }
        }
        // Overwrite the middle of page 10 and cut at the middle of page 900: head, the
        // overwrite, the rest of page 10, pages 11.., the cut half page.
        ws.insert(10 * unit + 100, 50, fill(50, 0xEE));
        ws.truncate(900 * unit + 2000);
        assert_eq!(ws.len(), 4);
        let mut buf = vec![0u8; (900 * unit + 2000) as usize];
        assert!(ws.read_covered(0, &mut buf).unwrap());
        assert_eq!(buf[(10 * unit + 99) as usize], expect(10, 99));
        assert!(
            buf[(10 * unit + 100) as usize..(10 * unit + 150) as usize]
                .iter()
                .all(|&b| b == 0xEE)
        );
        assert_eq!(buf[(10 * unit + 150) as usize], expect(10, 150));
        assert_eq!(buf[(11 * unit) as usize], expect(11, 0));
        assert_eq!(buf[(900 * unit + 1999) as usize], expect(900, 1999));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// An entry is 24 bytes beside its key, whatever it reads from, and consecutive pages of
    /// one file share one stored origin.
    #[test]
    fn entries_are_small_and_share_their_file() {
        assert_eq!(std::mem::size_of::<Entry>(), 24);
        let dir = crate::util::fresh_test_dir("ws", "share");
        let p = dir.join("seg.bin");
        std::fs::write(&p, vec![7u8; 64 * 1024]).unwrap();
        let f = Arc::new(File::open(&p).unwrap());
        let mut ws = WriteSet::new();
        for page in 0..16u64 {
            let src = Source::File {
                file: Arc::clone(&f),
                pos: page * 4096,
            };
            ws.insert(page * 4096, 4096, src);
        }
        // Contiguous in the file as in the database: one entry.
        assert_eq!(ws.len(), 1);
        ws.insert(0, 100, fill(100, 1));
        ws.insert(8192, 4096, Source::Zeros);
        assert_eq!(ws.origins.len(), 2, "one file and one buffer stored");
        // The buffer, the file up to the zeros, the zeros, the rest of the file.
        assert_eq!(ws.len(), 4);
        let mut buf = vec![0u8; 3 * 4096];
        assert!(ws.read_covered(0, &mut buf).unwrap());
        assert!(buf[..100].iter().all(|&b| b == 1));
        assert!(buf[100..8192].iter().all(|&b| b == 7));
        assert!(buf[8192..].iter().all(|&b| b == 0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A range longer than one entry holds (a database grown by gigabytes of zeros in one
    /// batch) is stored as several entries back to back, and still behaves as one range.
    #[test]
    fn a_range_longer_than_an_entry_is_split() {
        let mut ws = WriteSet::new();
        let big = 3 * MAX_ENTRY + 123;
        ws.insert(4096, big, Source::Zeros);
        assert_eq!(ws.len(), 4);
        assert_eq!(ws.total_bytes(), big);
        let mut at = 4096;
        for (off, len, _) in ws.iter() {
            assert_eq!(off, at);
            assert!(len <= MAX_ENTRY);
            at += len;
        }
        assert_eq!(at, 4096 + big);
        // An insert inside an entry keeps its head and its tail at their source positions.
        let data: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
        let mut ws = WriteSet::new();
        ws.insert(0, 4096, bytes(data));
        ws.insert(10, 20, fill(20, 0xEE));
        let mut buf = [0u8; 40];
        assert!(ws.read_covered(0, &mut buf).unwrap());
        assert_eq!(&buf[..10], &(0..10u8).collect::<Vec<_>>()[..]);
        assert!(buf[10..30].iter().all(|&b| b == 0xEE));
        assert_eq!(&buf[30..], &(30..40u8).collect::<Vec<_>>()[..]);
        // Cutting across the split keeps what lies before it.
        let mut ws = WriteSet::new();
        ws.insert(0, big, Source::Zeros);
        ws.truncate(MAX_ENTRY + 5);
        assert_eq!(ws.total_bytes(), MAX_ENTRY + 5);
        assert_eq!(ws.len(), 2);
    }
}
