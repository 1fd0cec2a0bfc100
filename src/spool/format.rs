//! Byte layout of spool segments. Pure functions, no I/O.
//!
//! ```text
//! segment  = header(32) entry*
//! header   = "SPOOLSG1" | version u32 | reserved u32 | segment number u64 | created µs u64
//! entry    = kind u32 | payload length u32 | arg u64 | crc32c u32 | reserved u32 | payload
//!            Page:     arg = byte offset in the database file, payload = the bytes written there
//!            WalFrame: arg = byte offset in the database file,
//!                      payload = frame prefix (40 bytes) | the page image of a WAL frame
//!            Commit:   arg = sequence number,          payload = CommitInfo (64 bytes)
//! frame prefix = the frame's 24-byte WAL header as SQLite wrote it | seed s1 u32 BE | s2 u32 BE
//!                | flags u32 (bit 0: checksum words are big-endian) | reserved u32 (0)
//! ```
//! Integers little-endian unless marked BE. The CRC covers the first 16 header bytes and the
//! payload (`WalFrame`: only the prefix), so a torn or garbage entry is recognised and ends the
//! readable part of a segment.
//!
//! A `WalFrame` page image is not covered by our CRC but by SQLite's own WAL checksum: the frame
//! header holds the cumulative checksum SQLite computed over the frame header's first 8 bytes and
//! the page, starting from the seed (the previous frame's checksum, or the WAL header's for frame
//! 0). The reader recomputes it from the prefix. The writer thus spends no cycles on a checksum of
//! its own for WAL frames whose seed it knows (see `capture.rs`); others are `Page` entries.

/// Magic at the start of every segment.
pub const SEGMENT_MAGIC: &[u8; 8] = b"SPOOLSG1";
/// Current segment format version.
pub const SEGMENT_VERSION: u32 = 2;
/// Length of the segment header.
pub const SEGMENT_HEADER_LEN: usize = 32;
/// Length of an entry header.
pub const ENTRY_HEADER_LEN: usize = 24;
/// Length of a commit entry's payload.
pub const COMMIT_PAYLOAD_LEN: usize = 64;
/// Largest payload accepted by the reader (a 64 KiB page is the largest write SQLite makes).
pub const MAX_PAYLOAD_LEN: u32 = 1 << 17;
/// Length of the prefix of a `WalFrame` payload, before the page image.
pub const WAL_FRAME_PREFIX_LEN: usize = 40;

/// What an entry carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Page = 1,
    Commit = 2,
    WalFrame = 3,
}

/// How a sealed transaction ended in the source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A committed transaction.
    Commit = 1,
    /// A rolled-back transaction that had written to the database file (spill, then playback of
    /// pre-images). Applying it is harmless and keeps the backup byte-identical: freelist pages can
    /// keep spilled bytes after a rollback.
    Rollback = 2,
}

/// Which journal family produced the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceMode {
    Rollback = 1,
    Wal = 2,
}

/// Metadata sealed with a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    pub kind: RecordKind,
    pub mode: SourceMode,
    pub page_size: u32,
    /// Database size in bytes after the transaction.
    pub db_size: u64,
    /// Number of `Page` entries in the transaction.
    pub n_pages: u32,
    /// Wall-clock seal time, microseconds since the epoch (for lag reporting).
    pub sealed_us: u64,
    /// Source state after the transaction: the change counter (rollback) or salt-1/salt-2 (WAL).
    pub token: u64,
    /// WAL only: number of frames in the WAL up to and including the commit frame.
    pub wal_frames: u64,
    /// WAL only: index of the transaction's first frame (the previous commit's `wal_frames` when
    /// nothing was lost in between).
    pub wal_first_frame: u64,
}

impl CommitInfo {
    /// `mode << 8 | kind`, the form the control file publishes (never 0 for a real record).
    pub fn mode_kind(&self) -> u64 {
        ((self.mode as u64) << 8) | self.kind as u64
    }
}

fn put_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(out: &mut [u8], at: usize, v: u64) {
    out[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

/// Encodes a segment header.
pub fn encode_segment_header(segment_no: u64, created_us: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    put_u32(&mut h, 8, SEGMENT_VERSION);
    put_u64(&mut h, 16, segment_no);
    put_u64(&mut h, 24, created_us);
    h
}

/// The format version in a segment header that starts with our magic.
pub fn segment_version(h: &[u8]) -> Option<u32> {
    (h.len() >= SEGMENT_HEADER_LEN && &h[..8] == SEGMENT_MAGIC).then(|| get_u32(h, 8))
}

/// Decodes a segment header, returning its segment number.
pub fn decode_segment_header(h: &[u8]) -> Option<u64> {
    (segment_version(h) == Some(SEGMENT_VERSION)).then(|| get_u64(h, 16))
}

/// CRC-32C (Castagnoli) of an entry: its first 16 header bytes, then the `covered` part of its
/// payload. CRC-32C because x86-64 (SSE 4.2) and aarch64 compute it in hardware, 8 bytes per
/// instruction; the `crc32c` crate does that (and the software fallback) for page images.
fn entry_crc(header16: &[u8], covered: &[u8]) -> u32 {
    crc32c_append(crc32c_append(0, header16), covered)
}

/// `crc32c::crc32c_append`, with a plain loop for short inputs: the entry headers, frame
/// prefixes and commit records of every commit. The crate's hardware path splits its input into
/// three interleaved streams, which pays off for pages but costs ~300 instructions of setup per
/// call on 16-80 bytes, more than the table-driven CRC-32 it replaced.
fn crc32c_append(crc: u32, data: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    if data.len() <= SHORT_CRC_LEN && std::arch::is_x86_feature_detected!("sse4.2") {
        // SAFETY: the CPU supports SSE 4.2, checked just above.
        return unsafe { crc32c_short_sse42(crc, data) };
    }
    crc32c::crc32c_append(crc, data)
}

/// Inputs up to this length take the plain loop.
const SHORT_CRC_LEN: usize = 256;

/// CRC-32C of `data` appended to `crc` (same convention as `crc32c::crc32c_append`: the running
/// value is kept inverted), one `crc32` instruction per 8 bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.2")]
fn crc32c_short_sse42(crc: u32, data: &[u8]) -> u32 {
    use std::arch::x86_64::{_mm_crc32_u8, _mm_crc32_u64};
    let (words, rest) = data.as_chunks::<8>();
    let mut c = u64::from(!crc);
    for w in words {
        c = _mm_crc32_u64(c, u64::from_le_bytes(*w));
    }
    let mut c = c as u32;
    for &b in rest {
        c = _mm_crc32_u8(c, b);
    }
    !c
}

/// Encodes an entry header for `payload`.
pub fn encode_entry_header(kind: EntryKind, arg: u64, payload: &[u8]) -> [u8; ENTRY_HEADER_LEN] {
    // Payloads are page images (≤ 64 KiB) or commit records: the length always fits.
    encode_header(kind, payload.len() as u32, arg, payload)
}

fn encode_header(kind: EntryKind, len: u32, arg: u64, covered: &[u8]) -> [u8; ENTRY_HEADER_LEN] {
    let mut h = [0u8; ENTRY_HEADER_LEN];
    put_u32(&mut h, 0, kind as u32);
    put_u32(&mut h, 4, len);
    put_u64(&mut h, 8, arg);
    let crc = entry_crc(&h[..16], covered);
    put_u32(&mut h, 16, crc);
    h
}

/// Builds the prefix of a `WalFrame` entry: the frame header SQLite wrote and the checksum seed
/// it started from.
pub fn wal_frame_prefix(
    frame_header: &[u8; 24],
    seed: (u32, u32),
    big_endian_cksum: bool,
) -> [u8; WAL_FRAME_PREFIX_LEN] {
    let mut p = [0u8; WAL_FRAME_PREFIX_LEN];
    p[..24].copy_from_slice(frame_header);
    p[24..28].copy_from_slice(&seed.0.to_be_bytes());
    p[28..32].copy_from_slice(&seed.1.to_be_bytes());
    put_u32(&mut p, 32, big_endian_cksum as u32);
    p
}

/// Encodes the header of a `WalFrame` entry whose payload is `prefix` followed by `page_len`
/// bytes of page image. Only the prefix goes through the CRC.
pub fn encode_wal_frame_header(
    arg: u64,
    prefix: &[u8; WAL_FRAME_PREFIX_LEN],
    page_len: usize,
) -> [u8; ENTRY_HEADER_LEN] {
    encode_header(
        EntryKind::WalFrame,
        (WAL_FRAME_PREFIX_LEN + page_len) as u32,
        arg,
        prefix,
    )
}

/// A decoded entry header; the payload is not yet verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntryHeader {
    pub kind: EntryKind,
    pub payload_len: u32,
    pub arg: u64,
    pub crc: u32,
}

/// Decodes an entry header; `None` for garbage (unknown kind, impossible length).
pub fn decode_entry_header(h: &[u8]) -> Option<EntryHeader> {
    if h.len() < ENTRY_HEADER_LEN {
        return None;
    }
    let kind = match get_u32(h, 0) {
        1 => EntryKind::Page,
        2 => EntryKind::Commit,
        3 => EntryKind::WalFrame,
        _ => return None,
    };
    let payload_len = get_u32(h, 4);
    let ok_len = match kind {
        EntryKind::Page => payload_len > 0 && payload_len <= MAX_PAYLOAD_LEN,
        EntryKind::Commit => payload_len as usize == COMMIT_PAYLOAD_LEN,
        EntryKind::WalFrame => {
            let page = payload_len.saturating_sub(WAL_FRAME_PREFIX_LEN as u32);
            page > 0 && page <= MAX_PAYLOAD_LEN && page.is_multiple_of(8)
        }
    };
    if !ok_len || get_u32(h, 20) != 0 {
        return None;
    }
    Some(EntryHeader {
        kind,
        payload_len,
        arg: get_u64(h, 8),
        crc: get_u32(h, 16),
    })
}

/// True if `payload` belongs to the entry whose header bytes are `h`: its CRC matches and, for a
/// `WalFrame`, SQLite's frame checksum over the page image matches the frame header and the page
/// number matches the entry's offset.
pub fn verify_entry(h: &[u8], payload: &[u8]) -> bool {
    let Some(e) = decode_entry_header(h) else {
        return false;
    };
    if payload.len() != e.payload_len as usize {
        return false;
    }
    let covered = match e.kind {
        EntryKind::WalFrame => &payload[..WAL_FRAME_PREFIX_LEN],
        EntryKind::Page | EntryKind::Commit => payload,
    };
    if entry_crc(&h[..16], covered) != e.crc {
        return false;
    }
    e.kind != EntryKind::WalFrame || verify_wal_frame(e.arg, payload)
}

fn verify_wal_frame(arg: u64, payload: &[u8]) -> bool {
    use crate::wal::{FrameHeader, be, checksum};
    let (prefix, page) = payload.split_at(WAL_FRAME_PREFIX_LEN);
    let big_endian = match get_u32(prefix, 32) {
        0 => false,
        1 => true,
        _ => return false,
    };
    let Some(frame) = FrameHeader::parse(prefix) else {
        return false;
    };
    let pgno = frame.pgno as u64;
    if pgno == 0 || get_u32(prefix, 36) != 0 || arg != (pgno - 1) * page.len() as u64 {
        return false;
    }
    let seed = (be(prefix, 24), be(prefix, 28));
    let sum = checksum(big_endian, &prefix[..8], seed);
    checksum(big_endian, page, sum) == frame.cksum
}

/// Encodes a commit payload.
pub fn encode_commit(info: &CommitInfo) -> [u8; COMMIT_PAYLOAD_LEN] {
    let mut p = [0u8; COMMIT_PAYLOAD_LEN];
    put_u32(&mut p, 0, info.kind as u32);
    put_u32(&mut p, 4, info.mode as u32);
    put_u32(&mut p, 8, info.page_size);
    put_u32(&mut p, 12, info.n_pages);
    put_u64(&mut p, 16, info.db_size);
    put_u64(&mut p, 24, info.sealed_us);
    put_u64(&mut p, 32, info.token);
    put_u64(&mut p, 40, info.wal_frames);
    put_u64(&mut p, 48, info.wal_first_frame);
    p
}

/// Decodes a commit payload.
pub fn decode_commit(p: &[u8]) -> Option<CommitInfo> {
    if p.len() != COMMIT_PAYLOAD_LEN {
        return None;
    }
    let kind = match get_u32(p, 0) {
        1 => RecordKind::Commit,
        2 => RecordKind::Rollback,
        _ => return None,
    };
    let mode = match get_u32(p, 4) {
        1 => SourceMode::Rollback,
        2 => SourceMode::Wal,
        _ => return None,
    };
    Some(CommitInfo {
        kind,
        mode,
        page_size: get_u32(p, 8),
        n_pages: get_u32(p, 12),
        db_size: get_u64(p, 16),
        sealed_us: get_u64(p, 24),
        token: get_u64(p, 32),
        wal_frames: get_u64(p, 40),
        wal_first_frame: get_u64(p, 48),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_crc_path_matches_the_crate_at_every_length_and_split() {
        // Known answer: CRC-32C of "123456789" is 0xE3069283.
        assert_eq!(crc32c_append(0, b"123456789"), 0xE306_9283);
        let data: Vec<u8> = (0..2 * SHORT_CRC_LEN as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        for len in 0..data.len() {
            let (a, b) = data[..len].split_at(len / 3);
            let ours = crc32c_append(crc32c_append(0, a), b);
            assert_eq!(ours, crc32c::crc32c(&data[..len]), "length {len}");
        }
    }

    fn info() -> CommitInfo {
        CommitInfo {
            kind: RecordKind::Commit,
            mode: SourceMode::Wal,
            page_size: 4096,
            db_size: 4096 * 9,
            n_pages: 3,
            sealed_us: 123,
            token: 0xdead_beef,
            wal_frames: 42,
            wal_first_frame: 40,
        }
    }

    #[test]
    fn commit_roundtrip() {
        let p = encode_commit(&info());
        assert_eq!(decode_commit(&p), Some(info()));
        let h = encode_entry_header(EntryKind::Commit, 77, &p);
        assert!(verify_entry(&h, &p));
        assert_eq!(decode_entry_header(&h).map(|e| e.arg), Some(77));
    }

    #[test]
    fn corruption_is_detected() {
        let payload = vec![5u8; 4096];
        let h = encode_entry_header(EntryKind::Page, 8192, &payload);
        assert!(verify_entry(&h, &payload));
        let mut bad = payload.clone();
        bad[4000] ^= 1;
        assert!(!verify_entry(&h, &bad));
        let mut bad_h = h;
        bad_h[9] ^= 1; // offset changed
        assert!(!verify_entry(&bad_h, &payload));
        assert!(!verify_entry(&h, &payload[..100]));
        assert!(decode_entry_header(&[0u8; 24]).is_none());
        assert!(decode_entry_header(&[0xffu8; 24]).is_none());
        assert!(decode_commit(&[0u8; 64]).is_none());
    }

    /// A WAL frame as SQLite would write it after a frame whose checksum is `seed`.
    fn frame(pgno: u32, page: &[u8], seed: (u32, u32), big_endian: bool) -> [u8; 24] {
        let mut h = [0u8; 24];
        h[..4].copy_from_slice(&pgno.to_be_bytes());
        h[8..16].copy_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let s = crate::wal::checksum(big_endian, &h[..8], seed);
        let s = crate::wal::checksum(big_endian, page, s);
        h[16..20].copy_from_slice(&s.0.to_be_bytes());
        h[20..24].copy_from_slice(&s.1.to_be_bytes());
        h
    }

    #[test]
    fn wal_frames_are_verified_by_sqlite_checksum() {
        for big_endian in [false, true] {
            let page = (0..1024u32).map(|i| (i * 7) as u8).collect::<Vec<u8>>();
            let seed = (0x1234_5678, 0x9abc_def0);
            let prefix = wal_frame_prefix(&frame(3, &page, seed, big_endian), seed, big_endian);
            let h = encode_wal_frame_header(2048, &prefix, page.len());
            let payload = [&prefix[..], &page].concat();
            assert!(verify_entry(&h, &payload));
            let e = decode_entry_header(&h).unwrap();
            assert_eq!((e.kind, e.payload_len), (EntryKind::WalFrame, 1064));
            // A flipped page byte (not covered by the CRC) fails SQLite's checksum.
            let mut bad = payload.clone();
            bad[WAL_FRAME_PREFIX_LEN + 700] ^= 0x10;
            assert!(!verify_entry(&h, &bad));
            // A zeroed page (an unwritten block after power loss) fails too.
            let mut zero = payload.clone();
            zero[WAL_FRAME_PREFIX_LEN..].fill(0);
            assert!(!verify_entry(&h, &zero));
            // A wrong seed, a prefix byte, or an offset that is not the frame's page.
            let wrong = wal_frame_prefix(&frame(3, &page, seed, big_endian), (1, 2), big_endian);
            let wh = encode_wal_frame_header(2048, &wrong, page.len());
            assert!(!verify_entry(&wh, &[&wrong[..], &page].concat()));
            let mut badp = payload.clone();
            badp[2] ^= 1;
            assert!(!verify_entry(&h, &badp));
            let off = encode_wal_frame_header(4096, &prefix, page.len());
            assert!(!verify_entry(&off, &payload));
        }
    }

    #[test]
    fn segment_header_roundtrip() {
        let h = encode_segment_header(12, 99);
        assert_eq!(decode_segment_header(&h), Some(12));
        let mut bad = h;
        bad[0] = b'X';
        assert_eq!(decode_segment_header(&bad), None);
    }
}
