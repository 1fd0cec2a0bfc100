//! The WAL file format (wal.c's header comment and the file-format documentation): parsing of the
//! 32-byte WAL header and the 24-byte frame headers, the WAL checksum, and a scanner that finds the
//! committed frames of an existing WAL file.
//!
//! Invariant of [`scan_committed`]: it returns only frames of complete transactions (up to the last
//! valid commit frame), each validated by salts and the cumulative checksum, exactly the frames
//! SQLite's own recovery would accept. A torn or stale tail is ignored.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// Size of the WAL header.
pub const WAL_HEADER_LEN: u64 = 32;
/// Size of a frame header.
pub const WAL_FRAME_HEADER_LEN: u64 = 24;
const MAGIC_LE: u32 = 0x377f_0682;
const MAGIC_BE: u32 = 0x377f_0683;
const FORMAT_VERSION: u32 = 3_007_000;

/// The big-endian u32 at `at` (every integer of the WAL format is big-endian).
pub(crate) fn be(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A decoded WAL header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    /// Checksums read words big-endian (magic 0x377f0683) or little-endian (0x377f0682).
    pub big_endian_cksum: bool,
    pub page_size: u32,
    pub checkpoint_seq: u32,
    pub salt1: u32,
    pub salt2: u32,
    /// Checksum over header bytes 0..24: the seed of the frames' cumulative checksum.
    pub cksum: (u32, u32),
}

/// Salt-1 and salt-2 of a frame header (`data` holds at least its first 16 bytes), in the form
/// of `WalHeader::salts`.
pub fn frame_salts(data: &[u8]) -> u64 {
    u64::from_be_bytes([
        data[8], data[9], data[10], data[11], data[12], data[13], data[14], data[15],
    ])
}

impl WalHeader {
    /// Salt-1 and salt-2 as one number: the generation of the WAL, the `token` of a WAL record.
    pub fn salts(&self) -> u64 {
        (self.salt1 as u64) << 32 | self.salt2 as u64
    }

    /// Decodes and validates a 32-byte header (magic, version, page size, checksum).
    pub fn parse(b: &[u8]) -> Option<WalHeader> {
        if b.len() < WAL_HEADER_LEN as usize {
            return None;
        }
        let magic = be(b, 0);
        let big_endian_cksum = match magic {
            MAGIC_BE => true,
            MAGIC_LE => false,
            _ => return None,
        };
        if be(b, 4) != FORMAT_VERSION {
            return None;
        }
        let raw_size = be(b, 8);
        let page_size = if raw_size == 1 { 65536 } else { raw_size };
        if !page_size.is_power_of_two() || !(512..=65536).contains(&page_size) {
            return None;
        }
        let cksum = checksum(big_endian_cksum, &b[..24], (0, 0));
        if cksum != (be(b, 24), be(b, 28)) {
            return None;
        }
        Some(WalHeader {
            big_endian_cksum,
            page_size,
            checkpoint_seq: be(b, 12),
            salt1: be(b, 16),
            salt2: be(b, 20),
            cksum,
        })
    }

    /// Size of one frame (header plus page).
    pub fn frame_size(&self) -> u64 {
        WAL_FRAME_HEADER_LEN + self.page_size as u64
    }
}

/// Byte offset of frame `index` (0-based) in a WAL of the given page size.
pub fn frame_offset(page_size: u32, index: u64) -> u64 {
    WAL_HEADER_LEN + index * (WAL_FRAME_HEADER_LEN + page_size as u64)
}

/// Where a byte offset of the WAL falls, for a given page size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WalRegion {
    Header,
    /// Start of the 24-byte header of frame `index` (0-based).
    FrameHeader(u64),
    /// Start of the page data of frame `index`.
    FrameData(u64),
    /// Anywhere else (a write that does not start at a frame boundary).
    Other,
}

/// Classifies the start offset of a WAL write.
pub fn classify(page_size: u32, offset: u64) -> WalRegion {
    if offset == 0 {
        return WalRegion::Header;
    }
    if offset < WAL_HEADER_LEN || page_size == 0 {
        return WalRegion::Other;
    }
    let frame = WAL_FRAME_HEADER_LEN + page_size as u64;
    let rel = offset - WAL_HEADER_LEN;
    match rel % frame {
        0 => WalRegion::FrameHeader(rel / frame),
        r if r == WAL_FRAME_HEADER_LEN => WalRegion::FrameData(rel / frame),
        _ => WalRegion::Other,
    }
}

/// A decoded frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub pgno: u32,
    /// Database size in pages after the commit, or 0 for a non-commit frame.
    pub commit_size: u32,
    pub salt1: u32,
    pub salt2: u32,
    pub cksum: (u32, u32),
}

impl FrameHeader {
    pub fn parse(b: &[u8]) -> Option<FrameHeader> {
        if b.len() < WAL_FRAME_HEADER_LEN as usize {
            return None;
        }
        Some(FrameHeader {
            pgno: be(b, 0),
            commit_size: be(b, 4),
            salt1: be(b, 8),
            salt2: be(b, 12),
            cksum: (be(b, 16), be(b, 20)),
        })
    }
}

/// SQLite's WAL checksum: over pairs of 32-bit words, `s1 += x0 + s2; s2 += x1 + s1`.
/// `data.len()` must be a multiple of 8 (true for every use in the format).
pub fn checksum(big_endian: bool, data: &[u8], seed: (u32, u32)) -> (u32, u32) {
    let (mut s1, mut s2) = seed;
    for chunk in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be(chunk, 0), be(chunk, 4))
        } else {
            (
                u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
                u32::from_le_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]),
            )
        };
        s1 = s1.wrapping_add(x0).wrapping_add(s2);
        s2 = s2.wrapping_add(x1).wrapping_add(s1);
    }
    (s1, s2)
}

/// The committed content of a WAL file.
#[derive(Debug, Clone, Default)]
pub struct CommittedWal {
    pub header: Option<WalHeader>,
    /// For each page, the byte offset in the WAL of the page data of its newest committed frame.
    pub newest_frame: HashMap<u32, u64>,
    /// Number of frames up to and including the last commit frame.
    pub committed_frames: u64,
    /// Database size in pages after the last commit, if any frame committed.
    pub db_pages: Option<u32>,
}

/// Counts the committed frames of the WAL at `file` that follow its first `after` frames, when
/// those are intact: `Some((header, frames committed in all))`, `None` when the WAL has no valid
/// header or frame `after - 1` does not belong to it. Reads only the tail: the cumulative checksum
/// stored in frame `after - 1`'s header seeds the validation of the frames after it.
pub fn committed_after(file: &File, after: u64) -> io::Result<Option<(WalHeader, u64)>> {
    let Some(header) = header_of(file)? else {
        return Ok(None);
    };
    Ok(committed_in_generation(file, &header, after)?.map(|n| (header, n)))
}

/// The valid header at offset 0 of WAL `file`; `None` if it is shorter or the header is invalid.
pub fn header_of(file: &File) -> io::Result<Option<WalHeader>> {
    let mut hdr = [0u8; WAL_HEADER_LEN as usize];
    match file.read_exact_at(&mut hdr, 0) {
        Ok(()) => Ok(WalHeader::parse(&hdr)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// `header_of` the WAL at `path`; `None` also when it cannot be read (or does not exist).
pub fn header_at(path: &std::path::Path) -> Option<WalHeader> {
    header_of(&File::open(path).ok()?).ok().flatten()
}

/// `committed_after` for the generation that `header` describes, whether or not it is still the
/// header at offset 0: a restart overwrites only the header, and until new frames are written
/// the old generation's frames are intact behind it.
pub fn committed_in_generation(
    file: &File,
    header: &WalHeader,
    after: u64,
) -> io::Result<Option<u64>> {
    let len = file.metadata()?.len();
    let mut cksum = header.cksum;
    if after > 0 {
        let at = frame_offset(header.page_size, after - 1);
        let mut fh = [0u8; WAL_FRAME_HEADER_LEN as usize];
        if at + header.frame_size() > len {
            return Ok(None);
        }
        file.read_exact_at(&mut fh, at)?;
        match FrameHeader::parse(&fh) {
            Some(f) if (f.salt1, f.salt2) == (header.salt1, header.salt2) => cksum = f.cksum,
            _ => return Ok(None),
        }
    }
    let committed = scan_frames(file, header, len, after, cksum, &mut |_, _| {})?;
    Ok(Some(committed.0.max(after)))
}

/// Validates frames from `first` on (seeded with `cksum`), calling `on_commit(pgno, data_at)` for
/// every frame of each committed transaction; returns (frames up to the last commit frame, db size
/// after it) — `(0, None)` when no commit frame follows.
fn scan_frames(
    file: &File,
    header: &WalHeader,
    len: u64,
    first: u64,
    mut cksum: (u32, u32),
    on_commit: &mut dyn FnMut(u32, u64),
) -> io::Result<(u64, Option<u32>)> {
    let frame_size = header.frame_size();
    let mut buf = vec![0u8; frame_size as usize];
    let mut pending: Vec<(u32, u64)> = Vec::new();
    let mut out = (0, None);
    let mut index = first;
    loop {
        let at = frame_offset(header.page_size, index);
        if at + frame_size > len {
            break;
        }
        file.read_exact_at(&mut buf, at)?;
        let Some(fh) = FrameHeader::parse(&buf) else {
            break;
        };
        if fh.pgno == 0 || fh.salt1 != header.salt1 || fh.salt2 != header.salt2 {
            break;
        }
        // The cumulative checksum covers the first 8 header bytes and the page data.
        let c = checksum(header.big_endian_cksum, &buf[..8], cksum);
        let c = checksum(
            header.big_endian_cksum,
            &buf[WAL_FRAME_HEADER_LEN as usize..],
            c,
        );
        if c != fh.cksum {
            break;
        }
        cksum = c;
        pending.push((fh.pgno, at + WAL_FRAME_HEADER_LEN));
        index += 1;
        if fh.commit_size != 0 {
            for (pgno, data_at) in pending.drain(..) {
                on_commit(pgno, data_at);
            }
            out = (index, Some(fh.commit_size));
        }
    }
    Ok(out)
}

/// Reads the committed frames of the WAL at `file`: the frames SQLite recovery would accept.
pub fn scan_committed(file: &File) -> io::Result<CommittedWal> {
    let mut out = CommittedWal::default();
    let len = file.metadata()?.len();
    if len < WAL_HEADER_LEN {
        return Ok(out);
    }
    let mut hdr = [0u8; WAL_HEADER_LEN as usize];
    file.read_exact_at(&mut hdr, 0)?;
    let Some(header) = WalHeader::parse(&hdr) else {
        return Ok(out);
    };
    out.header = Some(header);
    let mut newest = HashMap::new();
    let (frames, db_pages) = scan_frames(file, &header, len, 0, header.cksum, &mut |p, at| {
        newest.insert(p, at);
    })?;
    out.newest_frame = newest;
    out.committed_frames = frames;
    out.db_pages = db_pages;
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// Builds a WAL image: header + frames `(pgno, commit_size, fill byte)`.
    pub(crate) fn build_wal(
        page_size: u32,
        frames: &[(u32, u32, u8)],
        salts: (u32, u32),
    ) -> Vec<u8> {
        let mut out = Vec::new();
        let mut h = [0u8; 32];
        h[0..4].copy_from_slice(&MAGIC_LE.to_be_bytes());
        h[4..8].copy_from_slice(&FORMAT_VERSION.to_be_bytes());
        h[8..12].copy_from_slice(&page_size.to_be_bytes());
        h[16..20].copy_from_slice(&salts.0.to_be_bytes());
        h[20..24].copy_from_slice(&salts.1.to_be_bytes());
        let c = checksum(false, &h[..24], (0, 0));
        h[24..28].copy_from_slice(&c.0.to_be_bytes());
        h[28..32].copy_from_slice(&c.1.to_be_bytes());
        out.extend_from_slice(&h);
        let mut cksum = c;
        for &(pgno, commit, fill) in frames {
            let mut fh = [0u8; 24];
            fh[0..4].copy_from_slice(&pgno.to_be_bytes());
            fh[4..8].copy_from_slice(&commit.to_be_bytes());
            fh[8..12].copy_from_slice(&salts.0.to_be_bytes());
            fh[12..16].copy_from_slice(&salts.1.to_be_bytes());
            let data = vec![fill; page_size as usize];
            cksum = checksum(false, &fh[..8], cksum);
            cksum = checksum(false, &data, cksum);
            fh[16..20].copy_from_slice(&cksum.0.to_be_bytes());
            fh[20..24].copy_from_slice(&cksum.1.to_be_bytes());
            out.extend_from_slice(&fh);
            out.extend_from_slice(&data);
        }
        out
    }

    fn temp_file(name: &str, bytes: &[u8]) -> File {
        let dir = crate::util::fresh_test_dir("wal", name);
        let p = dir.join("w");
        let mut f = File::create(&p).unwrap();
        f.write_all(bytes).unwrap();
        File::open(&p).unwrap()
    }

    #[test]
    fn classify_offsets() {
        assert_eq!(classify(1024, 0), WalRegion::Header);
        assert_eq!(classify(1024, 32), WalRegion::FrameHeader(0));
        assert_eq!(classify(1024, 56), WalRegion::FrameData(0));
        assert_eq!(classify(1024, 32 + 1048), WalRegion::FrameHeader(1));
        assert_eq!(classify(1024, 100), WalRegion::Other);
    }

    #[test]
    fn scan_keeps_only_committed_frames() {
        let wal = build_wal(512, &[(1, 0, 1), (2, 3, 2), (3, 0, 3), (1, 0, 4)], (7, 9));
        let got = scan_committed(&temp_file("committed", &wal)).unwrap();
        assert_eq!(got.committed_frames, 2);
        assert_eq!(got.db_pages, Some(3));
        assert_eq!(got.newest_frame.len(), 2);
        assert_eq!(got.newest_frame[&1], frame_offset(512, 0) + 24);
    }

    #[test]
    fn scan_stops_at_torn_or_foreign_frames() {
        let mut wal = build_wal(512, &[(1, 1, 1), (2, 2, 2), (3, 3, 3)], (7, 9));
        // Corrupt one data byte of the second frame: its checksum fails, so it and every later
        // frame are rejected.
        let at = frame_offset(512, 1) as usize + 24 + 100;
        wal[at] ^= 0xff;
        let got = scan_committed(&temp_file("torn", &wal)).unwrap();
        assert_eq!(got.committed_frames, 1);
        assert_eq!(got.db_pages, Some(1));
        // Truncated in the middle of a frame.
        let wal = build_wal(512, &[(1, 1, 1), (2, 2, 2)], (7, 9));
        let got = scan_committed(&temp_file("short", &wal[..wal.len() - 10])).unwrap();
        assert_eq!(got.committed_frames, 1);
        // Garbage header.
        let got = scan_committed(&temp_file("garbage", &[0xAB; 2000])).unwrap();
        assert!(got.header.is_none());
        assert_eq!(got.committed_frames, 0);
    }

    #[test]
    fn committed_after_reads_only_the_tail() {
        let wal = build_wal(
            512,
            &[(1, 1, 1), (2, 2, 2), (3, 0, 3), (1, 3, 4), (5, 0, 5)],
            (7, 9),
        );
        let f = temp_file("after", &wal);
        assert_eq!(committed_after(&f, 0).unwrap().map(|x| x.1), Some(4));
        assert_eq!(committed_after(&f, 2).unwrap().map(|x| x.1), Some(4));
        assert_eq!(
            committed_after(&f, 4).unwrap().map(|x| x.1),
            Some(4),
            "nothing new committed"
        );
        // Frame after-1 must be intact and of this generation.
        assert_eq!(committed_after(&f, 9).unwrap(), None);
        let other = build_wal(512, &[(1, 1, 1), (2, 2, 2)], (8, 9));
        let mut mixed = wal[..32].to_vec();
        mixed.extend_from_slice(&other[32..]);
        assert_eq!(
            committed_after(&temp_file("mixed", &mixed), 1).unwrap(),
            None
        );
    }
}
