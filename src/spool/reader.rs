//! Reading sealed transactions back from a segment (consumer side).
//!
//! Invariant: `read_records` returns only whole transactions whose every entry passed its CRC (and,
//! for WAL frames, SQLite's frame checksum) and whose `Commit` entry counts exactly the page
//! entries before it. It never returns a record past
//! `limit`. An invalid entry ends the readable part: `torn` says whether that happened before the
//! limit (which, for a limit the writer published as sealed, means lost data).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use super::format::{self, CommitInfo, ENTRY_HEADER_LEN, EntryKind, SEGMENT_HEADER_LEN};
use super::segment_path;

/// How many bytes `read_records_with` reads between two calls of its upkeep.
pub const UPKEEP_EVERY: u64 = 1 << 20;

/// Where one captured page image lives in a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRef {
    /// Byte offset in the database file.
    pub offset: u64,
    pub len: u32,
    /// Position of the image in the segment file.
    pub payload_pos: u64,
}

/// One sealed transaction.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub info: CommitInfo,
    pub segment: u64,
    /// Segment position just after this record's `Commit` entry.
    pub end: u64,
    pub pages: PageList,
}

/// A run of pages that follow each other in the database and in the segment: `count` pages of
/// `first.len` bytes from `first.offset` on, the `i`th image at `first.payload_pos + i * stride`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageRun {
    first: PageRef,
    count: u32,
    stride: u32,
}

impl PageRun {
    fn page(&self, i: u32) -> PageRef {
        PageRef {
            offset: self.first.offset + u64::from(i) * u64::from(self.first.len),
            len: self.first.len,
            payload_pos: self.first.payload_pos + u64::from(i) * u64::from(self.stride),
        }
    }

    /// Takes in `p` if it is the page after the run's last, in the database and the segment.
    fn extend(&mut self, p: &PageRef) -> bool {
        if p.len != self.first.len || self.count == u32::MAX {
            return false;
        }
        let next = self.page(self.count);
        if p.offset != next.offset {
            return false;
        }
        if self.count == 1 {
            let Some(stride) = p
                .payload_pos
                .checked_sub(self.first.payload_pos)
                .and_then(|d| u32::try_from(d).ok())
            else {
                return false;
            };
            self.stride = stride;
        } else if p.payload_pos != next.payload_pos {
            return false;
        }
        self.count += 1;
        true
    }
}

/// A record's page references in order, run-length encoded: pages that follow each other in the
/// database and in the segment (a transaction writes its dirty pages in page order, and a bulk
/// load's new pages are consecutive) are one run. A 1 GB transaction's list held one 24-byte
/// reference per page, 6 MiB, all of it alive while the consumer built its write set; as runs it
/// is a few entries. Scattered pages cost one run each (32 bytes).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageList {
    runs: Vec<PageRun>,
    len: usize,
}

impl PageList {
    pub fn push(&mut self, page: PageRef) {
        if !self.runs.last_mut().is_some_and(|r| r.extend(&page)) {
            self.runs.push(PageRun {
                first: page,
                count: 1,
                stride: 0,
            });
        }
        self.len += 1;
    }

    /// Number of pages.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pages in order.
    pub fn iter(&self) -> impl Iterator<Item = PageRef> + '_ {
        self.runs
            .iter()
            .flat_map(|r| (0..r.count).map(|i| r.page(i)))
    }

    /// The `i`th page (a walk over the runs).
    #[cfg(test)]
    pub fn get(&self, mut i: usize) -> Option<PageRef> {
        for r in &self.runs {
            if i < r.count as usize {
                return Some(r.page(i as u32));
            }
            i -= r.count as usize;
        }
        None
    }
}

#[cfg(test)]
impl From<Vec<PageRef>> for PageList {
    fn from(pages: Vec<PageRef>) -> Self {
        let mut list = PageList::default();
        for p in pages {
            list.push(p);
        }
        list
    }
}

/// Result of one read.
#[derive(Debug, Default)]
pub struct ReadOutcome {
    pub records: Vec<Record>,
    /// An invalid entry was met before the limit (or before the end of the file without a limit).
    pub torn: bool,
}

const CHUNK: usize = 1 << 20;

/// A cursor over one segment file.
pub struct SegmentReader {
    pub no: u64,
    pub file: Arc<File>,
    /// Position of the next unread entry.
    pub pos: u64,
    chunk: Vec<u8>,
    chunk_start: u64,
}

impl SegmentReader {
    /// Opens segment `no` in `dir` and checks its header.
    pub fn open(dir: &Path, no: u64) -> io::Result<SegmentReader> {
        let file = File::open(segment_path(dir, no))?;
        let mut h = [0u8; SEGMENT_HEADER_LEN];
        file.read_exact_at(&mut h, 0)?;
        if format::decode_segment_header(&h) != Some(no) {
            let why = match format::segment_version(&h) {
                Some(v) if v != format::SEGMENT_VERSION => format!(
                    "spool segment {no} is in format {v}, written by another spoolvfs version \
                     (this one reads format {})",
                    format::SEGMENT_VERSION
                ),
                _ => format!("spool segment {no} has no valid header"),
            };
            return Err(io::Error::new(io::ErrorKind::InvalidData, why));
        }
        Ok(SegmentReader {
            no,
            file: Arc::new(file),
            pos: SEGMENT_HEADER_LEN as u64,
            chunk: Vec::new(),
            chunk_start: 0,
        })
    }

    /// Returns `len` bytes at `pos` if the file has them (`None` at end of file). Read-ahead never
    /// goes past `limit`: bytes past the sealed tail may still be rewritten by the writer (an
    /// aborted or rebuilt transaction), so caching them could serve stale data later. Bytes below
    /// a sealed limit never change, so the cache stays valid across calls.
    fn bytes_at(&mut self, pos: u64, len: usize, limit: Option<u64>) -> io::Result<Option<&[u8]>> {
        let have = pos >= self.chunk_start
            && pos + len as u64 <= self.chunk_start + self.chunk.len() as u64;
        if !have {
            let room = limit.map_or(usize::MAX, |l| l.saturating_sub(pos) as usize);
            let want = len.max(CHUNK.min(room));
            self.chunk.resize(want, 0);
            let mut got = 0;
            while got < want {
                match self.file.read_at(&mut self.chunk[got..], pos + got as u64) {
                    Ok(0) => break,
                    Ok(n) => got += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            self.chunk.truncate(got);
            self.chunk_start = pos;
            if got < len {
                return Ok(None);
            }
        }
        let at = (pos - self.chunk_start) as usize;
        Ok(Some(&self.chunk[at..at + len]))
    }

    /// Reads whole sealed records from the cursor, up to `limit` (exclusive end position; `None`
    /// reads to the end of the file), stopping once at least `max_pages` pages were collected
    /// (always at least one record when one is available).
    pub fn read_records(
        &mut self,
        limit: Option<u64>,
        max_pages: usize,
    ) -> io::Result<ReadOutcome> {
        self.read_records_with(limit, max_pages, &mut || {})
    }

    /// `read_records`, calling `upkeep` after every `UPKEEP_EVERY` bytes read: a record can be
    /// tens of MiB, and the consumer keeps its process's spool mapping ready meanwhile.
    pub fn read_records_with(
        &mut self,
        limit: Option<u64>,
        max_pages: usize,
        upkeep: &mut dyn FnMut(),
    ) -> io::Result<ReadOutcome> {
        let mut next_upkeep = self.pos + UPKEEP_EVERY;
        let mut out = ReadOutcome::default();
        let mut pages = PageList::default();
        let mut pos = self.pos;
        let mut total_pages = 0usize;
        loop {
            if limit.is_some_and(|l| pos >= l) {
                break;
            }
            let Some(h) = self.bytes_at(pos, ENTRY_HEADER_LEN, limit)? else {
                // End of file: fine without a limit (the tail is unsealed); with one it means the
                // sealed data is missing.
                out.torn = limit.is_some() || !pages.is_empty();
                break;
            };
            let mut header = [0u8; ENTRY_HEADER_LEN];
            header.copy_from_slice(h);
            let Some(entry) = format::decode_entry_header(&header) else {
                out.torn = true;
                break;
            };
            let payload_pos = pos + ENTRY_HEADER_LEN as u64;
            let len = entry.payload_len as usize;
            let Some(payload) = self.bytes_at(payload_pos, len, limit)? else {
                out.torn = true;
                break;
            };
            if !format::verify_entry(&header, payload) {
                out.torn = true;
                break;
            }
            let next = payload_pos + len as u64;
            if limit.is_some_and(|l| next > l) {
                out.torn = true;
                break;
            }
            match entry.kind {
                EntryKind::Page => pages.push(PageRef {
                    offset: entry.arg,
                    len: entry.payload_len,
                    payload_pos,
                }),
                EntryKind::WalFrame => pages.push(PageRef {
                    offset: entry.arg,
                    len: entry.payload_len - format::WAL_FRAME_PREFIX_LEN as u32,
                    payload_pos: payload_pos + format::WAL_FRAME_PREFIX_LEN as u64,
                }),
                EntryKind::Commit => {
                    let Some(info) = format::decode_commit(payload) else {
                        out.torn = true;
                        break;
                    };
                    if info.n_pages as usize != pages.len() {
                        out.torn = true;
                        break;
                    }
                    total_pages += pages.len();
                    out.records.push(Record {
                        seq: entry.arg,
                        info,
                        segment: self.no,
                        end: next,
                        pages: std::mem::take(&mut pages),
                    });
                    self.pos = next;
                    if total_pages >= max_pages {
                        break;
                    }
                }
            }
            pos = next;
            if pos >= next_upkeep {
                upkeep();
                next_upkeep = pos + UPKEEP_EVERY;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::control::Control;
    use super::super::format::{RecordKind, SourceMode};
    use super::super::writer::{SealedPos, SpoolWriter};
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        crate::util::fresh_test_dir("rd", name)
    }

    fn info(n_pages: u32) -> CommitInfo {
        CommitInfo {
            kind: RecordKind::Commit,
            mode: SourceMode::Rollback,
            page_size: 512,
            db_size: 512 * 4,
            n_pages,
            sealed_us: 1,
            token: 2,
            wal_frames: 0,
            wal_first_frame: 0,
        }
    }

    /// A record of several MiB (a bulk load) is read with the upkeep called along the way, not
    /// only once it is done: the consumer keeps the writer's mapping ready meanwhile.
    #[test]
    fn a_big_record_is_read_with_upkeep_along_the_way() {
        let d = dir("upkeep");
        let c = Control::open(&d).unwrap();
        let mut w = SpoolWriter::new(d.clone(), false, u64::MAX);
        let pages = 4 * (UPKEEP_EVERY / 512) as u32;
        for i in 0..pages {
            w.append_page(&c, u64::from(i) * 512, &[i as u8; 512])
                .unwrap();
        }
        let (_, end) = w.seal(&c, &info(pages)).unwrap();
        let mut calls = 0;
        let mut r = SegmentReader::open(&d, 1).unwrap();
        let out = r
            .read_records_with(Some(end.end), usize::MAX, &mut || calls += 1)
            .unwrap();
        assert_eq!(out.records.len(), 1);
        assert_eq!(out.records[0].pages.len(), pages as usize);
        // Over 4 MiB of entries: at least one call per MiB read.
        assert!(calls >= 4, "upkeep called {calls} times");
    }

    #[test]
    fn writes_then_reads_records_and_ignores_unsealed_tail() {
        let d = dir("roundtrip");
        let c = Control::open(&d).unwrap();
        let mut w = SpoolWriter::new(d.clone(), false, u64::MAX);
        w.append_page(&c, 0, &[1u8; 512]).unwrap();
        w.append_page(&c, 512, &[2u8; 512]).unwrap();
        let (s1, p1) = w.seal(&c, &info(2)).unwrap();
        w.append_page(&c, 1024, &[3u8; 512]).unwrap();
        let (s2, p2) = w.seal(&c, &info(1)).unwrap();
        assert_eq!((s1, s2), (1, 2));
        assert_eq!(c.sealed().pos, p2);
        // An aborted transaction leaves nothing readable behind, and the next one overwrites it.
        w.append_page(&c, 0, &[9u8; 512]).unwrap();
        w.abort();
        assert_eq!(p1.segment, p2.segment);

        let mut r = SegmentReader::open(&d, 1).unwrap();
        let out = r.read_records(Some(p2.end), usize::MAX).unwrap();
        assert!(!out.torn);
        assert_eq!(out.records.len(), 2);
        assert_eq!(out.records[0].seq, 1);
        assert_eq!(out.records[0].pages.len(), 2);
        assert_eq!(out.records[1].pages.get(0).unwrap().offset, 1024);
        let mut img = [0u8; 512];
        r.file
            .read_exact_at(&mut img, out.records[1].pages.get(0).unwrap().payload_pos)
            .unwrap();
        assert_eq!(img, [3u8; 512]);
        assert_eq!(r.pos, p2.end);
        let again = r.read_records(Some(p2.end), usize::MAX).unwrap();
        assert!(again.records.is_empty());
    }

    #[test]
    fn two_writers_share_one_stream_in_order() {
        let d = dir("shared");
        let c1 = Control::open(&d).unwrap();
        let c2 = Control::open(&d).unwrap();
        let mut a = SpoolWriter::new(d.clone(), false, 2000);
        let mut b = SpoolWriter::new(d.clone(), false, 2000);
        let mut last = SealedPos::default();
        for i in 0..6u8 {
            let (w, c) = if i % 2 == 0 {
                (&mut a, &c1)
            } else {
                (&mut b, &c2)
            };
            w.append_page(c, 0, &[i; 512]).unwrap();
            last = w.seal(c, &info(1)).unwrap().1;
        }
        // Rotation at 2000 bytes: the stream spans several segments, read in order.
        assert!(last.segment > 1);
        let mut seqs = Vec::new();
        for n in 1..=last.segment {
            let mut r = SegmentReader::open(&d, n).unwrap();
            let limit = (n == last.segment).then_some(last.end);
            let out = r.read_records(limit, usize::MAX).unwrap();
            for rec in out.records {
                let mut img = [0u8; 512];
                r.file
                    .read_exact_at(&mut img, rec.pages.get(0).unwrap().payload_pos)
                    .unwrap();
                assert_eq!(img[0] as u64, rec.seq - 1);
                seqs.push(rec.seq);
            }
        }
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn tail_segment_of_another_format_is_not_appended_to() {
        let d = dir("oldformat");
        let c = Control::open(&d).unwrap();
        let mut w = SpoolWriter::new(d.clone(), false, u64::MAX);
        w.append_page(&c, 0, &[1u8; 512]).unwrap();
        let (_, p1) = w.seal(&c, &info(1)).unwrap();
        assert_eq!(p1.segment, 1);
        // The tail segment now carries a header this version does not read (as a spool left by
        // an older version does); a new writer (a new process) must not append there.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(segment_path(&d, 1))
            .unwrap();
        let mut header = format::encode_segment_header(1, 0);
        header[8] ^= 0xff;
        f.write_all_at(&header, 0).unwrap();
        assert!(SegmentReader::open(&d, 1).is_err());
        let mut w = SpoolWriter::new(d.clone(), false, u64::MAX);
        w.append_page(&c, 0, &[2u8; 512]).unwrap();
        let (_, p2) = w.seal(&c, &info(1)).unwrap();
        assert_eq!(p2.segment, 2, "the stream moved on to a new segment");
        let mut r = SegmentReader::open(&d, 2).unwrap();
        let out = r.read_records(Some(p2.end), usize::MAX).unwrap();
        assert_eq!(out.records.len(), 1);
        assert!(!out.torn);
        // The same writer keeps appending to its (current-format) segment.
        w.append_page(&c, 0, &[3u8; 512]).unwrap();
        assert_eq!(w.seal(&c, &info(1)).unwrap().1.segment, 2);
    }

    #[test]
    fn corrupted_sealed_data_is_reported_torn() {
        let d = dir("corrupt");
        let c = Control::open(&d).unwrap();
        let mut w = SpoolWriter::new(d.clone(), false, u64::MAX);
        w.append_page(&c, 0, &[1u8; 512]).unwrap();
        let (_, p1) = w.seal(&c, &info(1)).unwrap();
        w.append_page(&c, 0, &[2u8; 512]).unwrap();
        let (_, p2) = w.seal(&c, &info(1)).unwrap();
        // Flip a byte of the second record's page image.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(segment_path(&d, 1))
            .unwrap();
        f.write_all_at(&[0xEE], p1.end + 30).unwrap();
        let mut r = SegmentReader::open(&d, 1).unwrap();
        let out = r.read_records(Some(p2.end), usize::MAX).unwrap();
        assert_eq!(out.records.len(), 1);
        assert!(out.torn);
        // Truncated segment (simulated power loss) with a limit beyond the end: torn.
        f.set_len(p1.end + 10).unwrap();
        let mut r = SegmentReader::open(&d, 1).unwrap();
        let out = r.read_records(Some(p2.end), usize::MAX).unwrap();
        assert_eq!(out.records.len(), 1);
        assert!(out.torn);
    }

    /// Pages that follow each other in the database and in the segment are one run; anything
    /// else starts a new one; the list gives back exactly the pages pushed, in order.
    #[test]
    fn a_page_list_keeps_runs_as_one_entry() {
        let page = |pgno: u64, pos: u64| PageRef {
            offset: (pgno - 1) * 4096,
            len: 4096,
            payload_pos: pos,
        };
        let stride = 4096 + ENTRY_HEADER_LEN as u64;
        let mut pages: Vec<PageRef> = (0..1000).map(|i| page(10 + i, 100 + i * stride)).collect();
        let at = 100 + 1000 * stride;
        pages.push(page(1, at)); // back to page 1: a new run
        pages.push(page(2, at + 2 * stride)); // its second page sets the run's stride (2 images)
        pages.push(page(3, at + 3 * stride)); // not the image that stride expects: a new run
        pages.push(page(5, at + 4 * stride)); // a page skipped: a new run
        pages.push(PageRef {
            len: 512,
            ..page(6, at + 5 * stride)
        }); // another size
        let list = PageList::from(pages.clone());
        assert_eq!(list.runs.len(), 5);
        assert_eq!(list.len(), pages.len());
        assert_eq!(list.iter().collect::<Vec<_>>(), pages);
        for i in [0, 1, 999, 1000, 1001, 1002, 1004] {
            assert_eq!(list.get(i), Some(pages[i]));
        }
        assert_eq!(list.get(pages.len()), None);
        assert!(PageList::default().is_empty());
    }

    #[test]
    fn max_pages_splits_between_records() {
        let d = dir("split");
        let c = Control::open(&d).unwrap();
        let mut w = SpoolWriter::new(d.clone(), false, u64::MAX);
        let mut last = SealedPos::default();
        for i in 0..5u8 {
            w.append_page(&c, 0, &[i; 512]).unwrap();
            w.append_page(&c, 512, &[i; 512]).unwrap();
            last = w.seal(&c, &info(2)).unwrap().1;
        }
        let mut r = SegmentReader::open(&d, 1).unwrap();
        let a = r.read_records(Some(last.end), 3).unwrap();
        assert_eq!(a.records.len(), 2);
        let b = r.read_records(Some(last.end), 100).unwrap();
        assert_eq!(b.records.len(), 3);
        assert_eq!(b.records[2].seq, 5);
    }

    #[test]
    fn bytes_past_the_sealed_tail_are_never_cached() {
        let d = dir("stale");
        let c = Control::open(&d).unwrap();
        let mut w = SpoolWriter::new(d.clone(), false, u64::MAX);
        w.append_page(&c, 0, &[1u8; 512]).unwrap();
        let (_, p1) = w.seal(&c, &info(1)).unwrap();
        // A large transaction reaches the file before it is sealed...
        for i in 0..2100u32 {
            w.append_page(&c, (i as u64) * 512, &[2u8; 512]).unwrap();
        }
        let mut r = SegmentReader::open(&d, 1).unwrap();
        assert_eq!(
            r.read_records(Some(p1.end), usize::MAX)
                .unwrap()
                .records
                .len(),
            1
        );
        // ...then is dropped, and a different transaction takes its place.
        w.abort();
        w.append_page(&c, 0, &[3u8; 512]).unwrap();
        let (_, p2) = w.seal(&c, &info(1)).unwrap();
        let out = r.read_records(Some(p2.end), usize::MAX).unwrap();
        assert!(!out.torn);
        assert_eq!(out.records.len(), 1);
        let mut img = [0u8; 512];
        r.file
            .read_exact_at(&mut img, out.records[0].pages.get(0).unwrap().payload_pos)
            .unwrap();
        assert_eq!(img, [3u8; 512]);
    }
}
