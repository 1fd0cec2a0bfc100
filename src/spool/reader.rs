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
    pub pages: Vec<PageRef>,
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
        let mut pages: Vec<PageRef> = Vec::new();
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
        assert_eq!(out.records[1].pages[0].offset, 1024);
        let mut img = [0u8; 512];
        r.file
            .read_exact_at(&mut img, out.records[1].pages[0].payload_pos)
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
                    .read_exact_at(&mut img, rec.pages[0].payload_pos)
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
            .read_exact_at(&mut img, out.records[0].pages[0].payload_pos)
            .unwrap();
        assert_eq!(img, [3u8; 512]);
    }
}
