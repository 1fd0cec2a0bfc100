//! An interval map of pending writes to the backup file, last write wins.
//!
//! Invariants (hold after every public call):
//! - entries are keyed by their start offset and never overlap: for consecutive entries
//!   `a`, `b`, `a.start + a.len <= b.start`;
//! - no entry has length zero;
//! - an entry `(start, len, src)` means "byte `start + i` becomes byte `i` of `src`" for
//!   `i < len`. Splitting an entry therefore only advances the source position; it never copies.
//!
//! Entries are not merged when adjacent: each one usually is one captured page, and keeping them
//! apart costs nothing while sparing us from having to prove two sources are contiguous.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

/// Where the bytes of one write-set entry come from.
#[derive(Clone, Debug)]
pub enum Source {
    /// Bytes of `file` starting at byte `pos` (e.g. a spool segment).
    File { file: Arc<File>, pos: u64 },
    /// Bytes of `data` starting at index `start`.
    /// (`Arc<Vec<u8>>`, a thin pointer, keeps every entry of a huge batch 8 bytes smaller.)
    Bytes { data: Arc<Vec<u8>>, start: usize },
    /// Zero bytes, as many as the entry is long: what a file truncated and then extended past
    /// the cut reads there.
    Zeros,
}

impl Source {
    /// Reads `buf.len()` bytes starting `rel` bytes into this source.
    ///
    /// A source shorter than requested is an `UnexpectedEof` error, never a panic.
    pub fn read_exact_at(&self, buf: &mut [u8], rel: u64) -> io::Result<()> {
        match self {
            Source::File { file, pos } => {
                let at = pos.checked_add(rel).ok_or_else(out_of_range)?;
                file.read_exact_at(buf, at)
            }
            Source::Bytes { data, start } => {
                let rel = usize::try_from(rel).map_err(|_| out_of_range())?;
                let from = start.checked_add(rel).ok_or_else(out_of_range)?;
                let to = from.checked_add(buf.len()).ok_or_else(out_of_range)?;
                let src = data.get(from..to).ok_or_else(out_of_range)?;
                buf.copy_from_slice(src);
                Ok(())
            }
            Source::Zeros => {
                buf.fill(0);
                Ok(())
            }
        }
    }

    /// The same source, `n` bytes further in (used when the front of an entry is overwritten).
    fn advanced(&self, n: u64) -> Source {
        match self {
            Source::File { file, pos } => Source::File {
                file: Arc::clone(file),
                pos: pos.saturating_add(n),
            },
            Source::Bytes { data, start } => Source::Bytes {
                data: Arc::clone(data),
                // Saturating keeps a bogus position out of range, so a later read fails cleanly.
                start: start.saturating_add(usize::try_from(n).unwrap_or(usize::MAX)),
            },
            Source::Zeros => Source::Zeros,
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
    /// start offset -> (length, source). See the module invariants.
    map: BTreeMap<u64, (u64, Source)>,
}

impl WriteSet {
    pub fn new() -> Self {
        WriteSet {
            map: BTreeMap::new(),
        }
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
        let end = offset + len;

        // The one entry that may start before `offset` and reach into the new range.
        let before = self
            .map
            .range(..offset)
            .next_back()
            .map(|(&s, (l, src))| (s, *l, src.clone()));
        if let Some((s, l, old)) = before {
            let e = s + l;
            if e > offset {
                // Keep its head; `s < offset` so the head is non-empty.
                self.map.insert(s, (offset - s, old.clone()));
                if e > end {
                    // The new range sits strictly inside it: keep its tail as well.
                    self.map.insert(end, (e - end, old.advanced(end - s)));
                }
            }
        }

        // Entries starting inside the new range are covered at least at their head.
        let inside: Vec<u64> = self.map.range(offset..end).map(|(&s, _)| s).collect();
        for s in inside {
            if let Some((l, old)) = self.map.remove(&s) {
                let e = s + l;
                if e > end {
                    self.map.insert(end, (e - end, old.advanced(end - s)));
                }
            }
        }

        self.map.insert(offset, (len, src));
    }

    /// Entries as `(offset, len, source)`, ascending and non-overlapping.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64, &Source)> {
        self.map.iter().map(|(&s, (l, src))| (s, *l, src))
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
        self.map.values().map(|(l, _)| *l).sum()
    }

    /// Drops every byte at or beyond `size`; an entry crossing `size` is cut there.
    pub fn truncate(&mut self, size: u64) {
        drop(self.map.split_off(&size));
        if let Some((&s, (l, _))) = self.map.iter_mut().next_back()
            && s + *l > size
        {
            *l = size - s;
        }
    }

    /// Entries overlapping `[offset, end)`, each clipped to it, as `(start, len, source, rel)`
    /// where `rel` is how far into the source the clipped part begins.
    fn overlapping(
        &self,
        offset: u64,
        end: u64,
    ) -> impl Iterator<Item = (u64, u64, &Source, u64)> + '_ {
        let first = self
            .map
            .range(..offset)
            .next_back()
            .filter(|(s, (l, _))| **s + *l > offset)
            .map(|(&s, _)| s)
            .unwrap_or(offset);
        self.map.range(first..end).map(move |(&s, (l, src))| {
            let from = s.max(offset);
            let to = (s + *l).min(end);
            (from, to - from, src, from - s)
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
                assert_eq!(render(&ws, SIZE), model, "seed {seed} step {step}");
                let covered = model.iter().filter(|b| b.is_some()).count() as u64;
                assert_eq!(ws.total_bytes(), covered);
                // read_covered on a random window agrees with the model.
                let off = rng.below(SIZE as u64);
                let len = rng.below(SIZE as u64 - off + 1) as usize;
                let mut buf = vec![0xA5u8; len];
                let all = ws.read_covered(off, &mut buf).unwrap();
                let win = &model[off as usize..off as usize + len];
                assert_eq!(all, win.iter().all(|b| b.is_some()));
                for (i, m) in win.iter().enumerate() {
                    assert_eq!(buf[i], m.unwrap_or(0xA5));
                }
            }
        }
    }
}
