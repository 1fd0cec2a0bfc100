//! Appending captured transactions to the shared segment stream. Runs inside SQLite's VFS calls,
//! on the writer's hot path: a page costs one memcpy into `buf`; the buffer reaches the file (one
//! `pwrite`) when it fills or when the transaction is sealed. No fsync unless `durable` is set:
//! data in the OS page cache survives kill -9 of the process.
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
//! - Memory is bounded by `FLUSH_AT` whatever the transaction size.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use super::control::{Control, SealedState};
use super::format::{self, CommitInfo, EntryKind, SEGMENT_HEADER_LEN};
use super::segment_path;

/// Buffered bytes that trigger a write to the segment file.
const FLUSH_AT: usize = 1 << 20;

/// Where a sealed transaction ends: readers may read `segment` up to `end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SealedPos {
    pub segment: u64,
    pub end: u64,
}

struct OpenSegment {
    no: u64,
    file: File,
}

/// The open transaction: where it started and how much of it reached the file.
struct Txn {
    segment: u64,
    start: u64,
    flushed: u64,
    pages: u32,
}

/// Appends transactions to the segment stream of one spool directory.
pub struct SpoolWriter {
    dir: PathBuf,
    durable: bool,
    rotate_at: u64,
    seg: Option<OpenSegment>,
    buf: Vec<u8>,
    txn: Option<Txn>,
    /// Bytes of transactions sealed by this process (for the status report).
    pub bytes_sealed: u64,
}

impl SpoolWriter {
    pub fn new(dir: PathBuf, durable: bool, rotate_at: u64) -> SpoolWriter {
        SpoolWriter {
            dir,
            durable,
            rotate_at,
            seg: None,
            buf: Vec::new(),
            txn: None,
            bytes_sealed: 0,
        }
    }

    /// Number of page entries in the open transaction.
    pub fn open_pages(&self) -> u32 {
        self.txn.as_ref().map_or(0, |t| t.pages)
    }

    fn open_segment(&mut self, no: u64, create: bool) -> io::Result<()> {
        if !create && self.seg.as_ref().is_some_and(|s| s.no == no) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.dir)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(create)
            .open(segment_path(&self.dir, no))?;
        if create {
            file.write_all_at(&format::encode_segment_header(no, crate::util::now_us()), 0)?;
        }
        self.seg = Some(OpenSegment { no, file });
        Ok(())
    }

    /// Starts a transaction at the published tail (caller holds the database's write lock).
    fn begin(&mut self, control: &Control) -> io::Result<()> {
        if self.txn.is_some() {
            return Ok(());
        }
        let tail = control.sealed().pos;
        let (segment, start) = if tail.segment == 0 || tail.end >= self.rotate_at {
            // Rotation happens only between transactions: no transaction spans two segments.
            let next = tail.segment + 1;
            self.open_segment(next, true)?;
            (next, SEGMENT_HEADER_LEN as u64)
        } else {
            self.open_segment(tail.segment, false)?;
            (tail.segment, tail.end)
        };
        self.buf.clear();
        self.txn = Some(Txn {
            segment,
            start,
            flushed: 0,
            pages: 0,
        });
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        let (Some(seg), Some(txn)) = (self.seg.as_ref(), self.txn.as_mut()) else {
            return Err(io::Error::other("no open spool transaction"));
        };
        if !self.buf.is_empty() {
            if let Some(e) = crate::faults::io_error("spool_enospc", libc::ENOSPC) {
                return Err(e);
            }
            seg.file.write_all_at(&self.buf, txn.start + txn.flushed)?;
            txn.flushed += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    /// Forgets the open transaction and the open segment after an error.
    fn reset(&mut self) {
        self.seg = None;
        self.buf.clear();
        self.txn = None;
    }

    /// Appends one page write of the open transaction.
    pub fn append_page(&mut self, control: &Control, offset: u64, data: &[u8]) -> io::Result<()> {
        let r = self.append_inner(control, offset, data);
        if r.is_err() {
            self.reset();
        }
        r
    }

    fn append_inner(&mut self, control: &Control, offset: u64, data: &[u8]) -> io::Result<()> {
        self.begin(control)?;
        self.buf
            .extend_from_slice(&format::encode_entry_header(EntryKind::Page, offset, data));
        self.buf.extend_from_slice(data);
        if let Some(t) = self.txn.as_mut() {
            t.pages += 1;
        }
        if self.buf.len() >= FLUSH_AT {
            self.flush()?;
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
        self.buf.extend_from_slice(&format::encode_entry_header(
            EntryKind::Commit,
            seq,
            &payload,
        ));
        self.buf.extend_from_slice(&payload);
        self.flush()?;
        let (Some(seg), Some(txn)) = (self.seg.as_ref(), self.txn.take()) else {
            return Err(io::Error::other("no open spool transaction"));
        };
        if self.durable {
            seg.file.sync_data()?;
        }
        let pos = SealedPos {
            segment: txn.segment,
            end: txn.start + txn.flushed,
        };
        if control.applied().seq + 1 == seq {
            control.set_behind_since(info.sealed_us);
        }
        control.publish_sealed(SealedState {
            seq,
            pos,
            sealed_us: info.sealed_us,
        });
        self.bytes_sealed += txn.flushed;
        Ok((seq, pos))
    }

    /// Drops the open transaction (a WAL rollback). Its bytes past the tail are garbage that the
    /// next transaction overwrites.
    pub fn abort(&mut self) {
        self.txn = None;
        self.buf.clear();
    }
}
