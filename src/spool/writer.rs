//! Appending captured transactions to the current segment. Runs inside SQLite's VFS calls, under
//! the capture lock, so it is the writer's hot path: a page costs one memcpy into `buf`; the
//! buffer reaches the file (one `pwrite`) when it fills or when the transaction is sealed. No fsync
//! unless `durable` is set: data in the OS page cache survives kill -9 of the process.
//!
//! Invariants:
//! - Entries of one transaction are contiguous and end with its `Commit` entry; nothing of a
//!   transaction becomes visible to the consumer before `seal` returns (the consumer reads only up
//!   to a sealed position).
//! - Memory is bounded by `FLUSH_AT` whatever the transaction size.
//! - After any I/O error the current segment is abandoned (never appended to again), so a torn
//!   entry can only be at a segment's tail; the caller records the loss and schedules a resync.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::format::{self, CommitInfo, EntryKind};
use super::segment_path;

/// Buffered bytes that trigger a write to the segment file.
const FLUSH_AT: usize = 1 << 20;

/// Where the last sealed transaction ends: readers may read `segment` up to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SealedPos {
    pub segment: u64,
    pub end: u64,
}

struct OpenSegment {
    no: u64,
    file: File,
    /// Bytes already written to the file.
    flushed: u64,
}

/// Appends transactions to segment files in one spool directory.
pub struct SpoolWriter {
    dir: PathBuf,
    durable: bool,
    rotate_at: u64,
    next_segment: u64,
    seg: Option<OpenSegment>,
    buf: Vec<u8>,
    /// Logical position (in the current segment) where the open transaction began.
    txn_start: Option<u64>,
    txn_pages: u32,
    /// Bytes of transactions sealed by this writer (for the status report).
    pub bytes_sealed: u64,
}

impl SpoolWriter {
    /// A writer whose first segment will be number `first_segment`.
    pub fn new(dir: PathBuf, first_segment: u64, durable: bool, rotate_at: u64) -> SpoolWriter {
        SpoolWriter {
            dir,
            durable,
            rotate_at,
            next_segment: first_segment,
            seg: None,
            buf: Vec::new(),
            txn_start: None,
            txn_pages: 0,
            bytes_sealed: 0,
        }
    }

    /// Number of page entries in the open transaction.
    pub fn open_pages(&self) -> u32 {
        self.txn_pages
    }

    fn logical_end(&self) -> u64 {
        self.seg.as_ref().map_or(0, |s| s.flushed) + self.buf.len() as u64
    }

    fn ensure_segment(&mut self) -> io::Result<()> {
        if self.seg.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let no = self.next_segment;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(segment_path(&self.dir, no))?;
        self.next_segment += 1;
        self.buf.clear();
        self.buf.extend_from_slice(&format::encode_segment_header(no, crate::util::now_us()));
        self.seg = Some(OpenSegment { no, file, flushed: 0 });
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let Some(seg) = self.seg.as_mut() else {
            return Ok(());
        };
        if !self.buf.is_empty() {
            seg.file.write_all_at(&self.buf, seg.flushed)?;
            seg.flushed += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Abandons the current segment after an error: it is never appended to again.
    pub fn abandon_segment(&mut self) {
        self.seg = None;
        self.buf.clear();
        self.txn_start = None;
        self.txn_pages = 0;
    }

    /// Appends one page write of the open transaction.
    pub fn append_page(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        let r = self.append_page_inner(offset, data);
        if r.is_err() {
            self.abandon_segment();
        }
        r
    }

    fn append_page_inner(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.ensure_segment()?;
        if self.txn_start.is_none() {
            self.txn_start = Some(self.logical_end());
        }
        self.buf.extend_from_slice(&format::encode_entry_header(EntryKind::Page, offset, data));
        self.buf.extend_from_slice(data);
        self.txn_pages += 1;
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
        }
        Ok(())
    }

    /// Seals the open transaction with sequence number `seq`, writing it to the file.
    pub fn seal(&mut self, seq: u64, info: &CommitInfo) -> io::Result<SealedPos> {
        let r = self.seal_inner(seq, info);
        if r.is_err() {
            self.abandon_segment();
        }
        r
    }

    fn seal_inner(&mut self, seq: u64, info: &CommitInfo) -> io::Result<SealedPos> {
        self.ensure_segment()?;
        let start = self.txn_start.unwrap_or_else(|| self.logical_end());
        let payload = format::encode_commit(info);
        self.buf.extend_from_slice(&format::encode_entry_header(EntryKind::Commit, seq, &payload));
        self.buf.extend_from_slice(&payload);
        self.flush()?;
        let (no, end) = match self.seg.as_ref() {
            Some(s) => {
                if self.durable {
                    s.file.sync_data()?;
                }
                (s.no, s.flushed)
            }
            None => return Err(io::Error::other("spool segment vanished while sealing")),
        };
        self.bytes_sealed += end - start;
        self.txn_start = None;
        self.txn_pages = 0;
        if end >= self.rotate_at {
            // Rotation happens only between transactions, so no transaction spans two segments.
            self.seg = None;
        }
        Ok(SealedPos { segment: no, end })
    }

    /// Drops the open transaction (a WAL rollback): its entries never become readable.
    pub fn abort(&mut self) -> io::Result<()> {
        let Some(start) = self.txn_start.take() else {
            return Ok(());
        };
        self.txn_pages = 0;
        let Some(seg) = self.seg.as_mut() else {
            return Ok(());
        };
        if start >= seg.flushed {
            self.buf.truncate((start - seg.flushed) as usize);
            Ok(())
        } else {
            self.buf.clear();
            // Part of the transaction reached the file: cut it off so the next transaction follows
            // the last sealed one directly.
            let r = seg.file.set_len(start);
            match r {
                Ok(()) => {
                    seg.flushed = start;
                    Ok(())
                }
                Err(e) => {
                    self.abandon_segment();
                    Err(e)
                }
            }
        }
    }

    /// Closes the current segment so that the next transaction starts a new one.
    pub fn rotate(&mut self) -> io::Result<()> {
        if self.txn_start.is_some() {
            return Ok(());
        }
        let r = self.flush();
        self.seg = None;
        r
    }

    /// Number the next new segment will get.
    pub fn current_segment(&self) -> Option<u64> {
        self.seg.as_ref().map(|s| s.no)
    }
}
