//! Turning VFS events into sealed spool records. Safe code over bytes; the FFI layer calls one
//! `on_*` method per intercepted call, under the database's capture lock.
//!
//! Rollback-journal modes (DELETE, TRUNCATE, PERSIST, MEMORY, OFF): every write to the main
//! database file outside a checkpoint is teed into the open record (the last write of a page wins
//! when applied). `SQLITE_FCNTL_COMMIT_PHASETWO` seals it as a commit; it arrives only for commits,
//! after the journal is finalized and while the lock is still held. Dropping the lock to SHARED or
//! below with db writes pending means a rollback that spilled and played pre-images back: sealed as
//! a `Rollback` record, which is harmless to apply and keeps the backup byte-identical.
//!
//! WAL mode: frame headers map WAL slots to page numbers, frame data writes are teed. A frame with a
//! non-zero commit size marks the transaction committed; the record is sealed when the write lock
//! is released (`xShmLock` UNLOCK of the WRITE slot) or at `COMMIT_PHASETWO` (exclusive locking
//! mode has no shm), i.e. after SQLite has published the commit to readers. Releasing the write
//! lock without a commit frame is a rollback: the record is dropped. Checkpoint copies into the db
//! file (between `CKPT_START` and `CKPT_DONE`) are not captured: their frames already were.
//!
//! When frames of the open transaction are overwritten by new frame headers before its commit
//! (`ROLLBACK TO` a savepoint after a spill; a rollback in exclusive locking mode followed by the
//! next transaction), the streamed entries may contain content that never committed. Such a
//! record is rebuilt at its end from the WAL file itself, which at that point (write lock still
//! held) holds exactly the committed frames: a rare path, so the common one stays a memcpy.
//!
//! WAL page images are stored with the frame header SQLite wrote and the checksum seed SQLite
//! started from (`WalFrame` entries): the consumer verifies them with SQLite's own frame checksum,
//! so the commit path computes no checksum of its own. The seed of a frame is the previous frame's
//! checksum, known here when this process wrote that frame (`ChainPoint`), or the WAL header's
//! checksum for frame 0. When it is not known (another process wrote the previous frame, a
//! rollback, frames rewritten in place) the frame is stored as a CRC-checked `Page` entry. A wrong
//! seed can only make verification fail (a resync), never let a wrong image through.
//!
//! The database size of a record comes from the page-1 header (rollback) or the commit frame
//! (WAL), never from the file size (the unix VFS resizes files invisibly inside file controls).
//!
//! Events carry the identity of the connection (its main-database file object) that caused them:
//! only the connection that wrote a transaction can seal or drop it. Another connection of this
//! process releasing its own lock, or running a checkpoint, must not touch it.
//!
//! Invariant: a record is sealed only with every page write of its transaction in it. When that
//! cannot be guaranteed (a spool write failed, a WAL write we cannot attribute), `lost` is set and
//! the consumer must resync; the open record is dropped.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::dbheader;
use crate::spool::control::{Control, pid_alive};
use crate::spool::format::{self, CommitInfo, RecordKind, SourceMode};
use crate::spool::writer::{SealedPos, SpoolWriter};
use crate::util::now_us;
use crate::wal::{self, FrameHeader, WalHeader, WalRegion};
use crate::walend::Ending;

/// A record that was just sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    pub seq: u64,
    pub pos: SealedPos,
    pub info: CommitInfo,
}

/// What a capture event produced.
#[derive(Debug, Default)]
pub struct Outcome {
    pub sealed: Option<Sealed>,
    /// A problem that makes the backup miss changes (the caller logs it and schedules a resync).
    pub lost: Option<String>,
}

impl Outcome {
    fn lost(msg: String) -> Outcome {
        Outcome {
            sealed: None,
            lost: Some(msg),
        }
    }
}

#[derive(Default)]
struct RollbackTxn {
    /// The open record holds db-file writes.
    active: bool,
    /// Header of the last page-1 image written in this transaction.
    page1: Option<[u8; dbheader::HEADER_LEN]>,
    /// Length of the last db write (the page size when no header says otherwise).
    last_write_len: u32,
    /// Largest end offset written.
    max_end: u64,
    /// The journal was finalized (zeroed header or truncated) while db writes were pending: the
    /// transaction is over. COMMIT_PHASETWO next means a commit; anything else means it rolled
    /// back (exclusive locking mode sends no unlock after a rollback, so this is its only end).
    finalized_at: Option<std::time::Instant>,
}

/// Page numbers of frame slots, stored densely from the first slot of the open transaction.
#[derive(Default)]
struct SlotMap {
    base: u64,
    pgno: Vec<u32>,
}

impl SlotMap {
    /// Forgets every slot. The buffer is kept for the next transaction (no allocation per
    /// commit) unless a huge transaction grew it past `KEEP_SLOTS`.
    fn clear(&mut self) {
        const KEEP_SLOTS: usize = 1 << 16;
        if self.pgno.capacity() > KEEP_SLOTS {
            self.pgno = Vec::new();
        } else {
            self.pgno.clear();
        }
    }

    /// Records `pgno` for `slot`; false if the slot lies before the map's base.
    fn insert(&mut self, slot: u64, pgno: u32) -> bool {
        if self.pgno.is_empty() {
            self.base = slot;
        }
        let Some(idx) = slot.checked_sub(self.base) else {
            return false;
        };
        let idx = idx as usize;
        if idx >= self.pgno.len() {
            self.pgno.resize(idx + 1, 0);
        }
        self.pgno[idx] = pgno;
        true
    }

    fn get(&self, slot: u64) -> Option<u32> {
        let idx = slot.checked_sub(self.base)? as usize;
        self.pgno.get(idx).copied().filter(|&p| p != 0)
    }
}

/// The last WAL frame header this process wrote: the checksum seed of the frame after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ChainPoint {
    slot: u64,
    salts: (u32, u32),
    cksum: (u32, u32),
}

/// The frame header just written, waiting for its page image (SQLite writes the two back to back).
#[derive(Debug, Clone, Copy)]
struct PendingFrame {
    slot: u64,
    header: [u8; wal::WAL_FRAME_HEADER_LEN as usize],
    /// Checksum seed of this frame, when known.
    seed: Option<(u32, u32)>,
}

#[derive(Default)]
struct WalTxn {
    /// Page number of each frame slot of the open transaction whose header it wrote, indexed from
    /// `slots_base` (0: unknown). 4 bytes a frame, freed when the transaction ends.
    slot_pgno: SlotMap,
    /// Slots written by the open transaction.
    first_slot: Option<u64>,
    max_slot: u64,
    /// Commit frame of the open transaction: (slot, db size in pages).
    commit: Option<(u64, u32)>,
    /// Frames of this transaction were overwritten by new frames (after `ROLLBACK TO` a savepoint,
    /// or in exclusive locking mode after a rollback): the streamed entries may hold content that
    /// never committed, so the record is rebuilt from the WAL's committed frames when it ends.
    reread: bool,
    /// Header of the frame whose page image comes next.
    pending: Option<PendingFrame>,
}

/// The main database file as it is when a rollback-mode transaction is sealed, read on demand by
/// the VFS layer: the first 100 bytes of page 1 (for a transaction that did not write it) and
/// the file's size, which caps the size a header claims. Either may be unknown.
pub trait DbFileNow {
    fn header(&mut self) -> Option<[u8; dbheader::HEADER_LEN]>;
    fn size(&mut self) -> Option<u64>;
}

/// Nothing read: the file may already hold the next transaction's bytes (its writes are
/// forwarded before they are captured), so neither its header nor its size is this one's.
pub struct Unread;

impl DbFileNow for Unread {
    fn header(&mut self) -> Option<[u8; dbheader::HEADER_LEN]> {
        None
    }
    fn size(&mut self) -> Option<u64> {
        None
    }
}

pub type DbFileReader<'a> = &'a mut dyn DbFileNow;

/// The first 32 bytes of the WAL file as currently on disk (read on demand by the VFS layer).
pub type WalHeaderReader<'a> = &'a mut dyn FnMut() -> Option<[u8; wal::WAL_HEADER_LEN as usize]>;

/// Identifies a connection: the address of its main-database file object.
pub type ConnId = usize;

/// Whether some connection's transaction is open in the capture state, readable without the
/// capture lock. Events that can only end a transaction (commit phase two, the WAL write lock's
/// release, unlocking the database file) check it first and skip the lock when it is false:
/// whatever such an event does starts with `txn_conn`, and with none set it does nothing. A
/// connection reads its own claim in program order (SQLite serializes a connection's calls), and
/// only a locked section that also clears `txn_conn` stores false.
#[derive(Default)]
pub struct TxnClaim(AtomicBool);

impl TxnClaim {
    /// False only when no transaction is open: an ending event may then be skipped.
    pub fn held(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Capture state of one database, shared by all its connections in this process.
pub struct Capture {
    pub spool: SpoolWriter,
    control: Arc<Control>,
    pid: u64,
    /// The source's WAL file, for rebuilding a record from its committed frames.
    wal_path: std::path::PathBuf,
    /// Sequence number of the last record this process sealed.
    my_last_seq: u64,
    rollback: RollbackTxn,
    wal: WalTxn,
    wal_header: Option<WalHeader>,
    /// Last frame header written through this process, if nothing could have changed the WAL's
    /// checksum chain since (reset on rollback, restart, truncation, rewrites).
    chain: Option<ChainPoint>,
    /// Connection whose transaction is open.
    txn_conn: Option<ConnId>,
    /// `txn_conn.is_some()`, readable without the capture lock (see `TxnClaim`).
    claim: Arc<TxnClaim>,
    /// The open transaction is being discarded after an internal error: ignore its events until
    /// it ends, keeping the shared "transaction open" claim so no resync picks a point inside it.
    discarding: bool,
    /// Size of the database in pages and its page size after the last sealed record.
    db_pages: u64,
    page_size: u32,
    change_counter: u32,
}

impl Capture {
    /// `page1` is the start of the database file as found at open (empty for a new database).
    pub fn new(
        spool: SpoolWriter,
        control: Arc<Control>,
        wal_path: std::path::PathBuf,
        page1: &[u8],
        file_size: u64,
    ) -> Capture {
        let page_size = dbheader::page_size(page1).unwrap_or(0);
        let db_pages = match dbheader::trusted_db_pages(page1) {
            // A size of 0 is an unknown one here (the host's xFileSize failed), and without a
            // page size the file's pages cannot be counted.
            Some(p) => {
                let known = Some(file_size).filter(|&s| s > 0 && page_size > 0);
                dbheader::pages_within_file(p as u64, page_size, known)
            }
            None if page_size > 0 => file_size / page_size as u64,
            None => 0,
        };
        Capture {
            spool,
            control,
            pid: std::process::id() as u64,
            wal_path,
            my_last_seq: 0,
            rollback: RollbackTxn::default(),
            wal: WalTxn::default(),
            wal_header: None,
            chain: None,
            txn_conn: None,
            claim: Arc::new(TxnClaim::default()),
            discarding: false,
            db_pages,
            page_size,
            change_counter: dbheader::change_counter(page1).unwrap_or(0),
        }
    }

    /// No connection of this process has a transaction open or claimed.
    pub fn idle(&self) -> bool {
        self.txn_conn.is_none() && !self.txn_open()
    }

    /// True while a transaction of this process has captured writes that are not sealed yet.
    pub fn txn_open(&self) -> bool {
        self.rollback.active || self.wal.first_slot.is_some()
    }

    /// Called at the first captured write of a transaction (under the database's write lock):
    /// claims the shared "transaction open" slot. Finding it held by a dead process means that
    /// process was killed with a transaction open, possibly after it committed and before it
    /// sealed: the backup may miss a committed change.
    fn begin_txn(&mut self, conn: ConnId) -> Option<String> {
        if self.txn_open() {
            if self.txn_conn != Some(conn) {
                // Impossible under SQLite's locking (one writer at a time); if it happens anyway
                // the records cannot be trusted.
                self.drop_open();
                self.set_txn_conn(Some(conn));
                self.control.set_txn_owner(self.pid);
                return Some("two connections wrote at once".to_string());
            }
            return None;
        }
        self.set_txn_conn(Some(conn));
        let owner = self.control.txn_owner();
        let mut lost = None;
        if owner != 0 && owner != self.pid && !pid_alive(owner) {
            self.control.clear_txn_owner_if(owner);
            lost = Some(format!("process {owner} died with an unsealed transaction"));
        }
        self.control.set_txn_owner(self.pid);
        lost
    }

    /// The lock-free mirror of `txn_conn`, for `DbState`.
    pub fn claim(&self) -> Arc<TxnClaim> {
        self.claim.clone()
    }

    fn set_txn_conn(&mut self, conn: Option<ConnId>) {
        self.txn_conn = conn;
        self.claim.0.store(conn.is_some(), Ordering::Release);
    }

    fn end_txn(&mut self) {
        self.set_txn_conn(None);
        self.control.clear_txn_owner_if(self.pid);
    }

    /// True unless another connection's transaction is open.
    fn owns(&self, conn: ConnId) -> bool {
        self.txn_conn.is_none_or(|c| c == conn)
    }

    /// Called after a panic inside capture for connection `conn`: the record may miss a page, so
    /// the whole transaction is discarded (and reported lost again when it ends). If the panic
    /// hit the event that ends the transaction (`ended`), there is nothing left to wait for.
    pub fn poisoned(&mut self, conn: ConnId, ended: bool) {
        self.drop_open();
        self.discarding = false;
        if !ended {
            self.set_txn_conn(Some(conn));
            self.discarding = true;
            self.control.set_txn_owner(self.pid);
        }
    }

    /// Handles an event of a transaction being discarded; `Some` when the event was consumed.
    fn discarded_event(&mut self, conn: ConnId, ends_txn: bool) -> Option<Outcome> {
        if !self.discarding || self.txn_conn != Some(conn) {
            return None;
        }
        if ends_txn {
            self.discarding = false;
            self.end_txn();
            return Some(Outcome::lost(
                "a transaction was discarded after an internal error".into(),
            ));
        }
        Some(Outcome::default())
    }

    /// The main-database file of connection `conn` is being closed. A transaction of it still
    /// open here never reached the event that ends it (the pager stopped half-way after an I/O
    /// error, say): nobody will seal it now. Its records are dropped and the transaction owner
    /// slot freed, since a drain or resync waiting for that slot would wait forever; and a resync
    /// is asked for, because a commit whose end we missed may have reached the source.
    pub fn on_connection_close(&mut self, conn: ConnId) -> Outcome {
        if self.txn_conn != Some(conn) {
            return Outcome::default();
        }
        self.discarding = false;
        self.drop_open();
        Outcome::lost("a connection closed with a transaction whose end was never seen".into())
    }

    fn drop_open(&mut self) {
        self.rollback = RollbackTxn::default();
        self.wal.first_slot = None;
        self.wal.max_slot = 0;
        self.wal.commit = None;
        self.wal.pending = None;
        self.wal.slot_pgno.clear();
        self.chain = None;
        self.spool.abort();
        self.end_txn();
    }

    fn failed(&mut self, what: &str, e: io::Error) -> Outcome {
        self.drop_open();
        Outcome::lost(format!("spool write failed while {what}: {e}"))
    }

    // ---- main database file -------------------------------------------------------------------

    /// A write to the main database file by connection `conn` (never a checkpoint copy: the VFS
    /// layer does not report those).
    pub fn on_db_write(&mut self, conn: ConnId, offset: u64, data: &[u8]) -> Outcome {
        if let Some(out) = self.discarded_event(conn, false) {
            return out;
        }
        if self.rollback.finalized_at.is_some() && self.owns(conn) {
            // The previous transaction ended without a commit: seal it (as a rollback) before
            // this write starts the next one. Its header is the one it wrote, or the size is
            // unchanged; the file's page 1 may already hold this new transaction's bytes.
            let prev = self.seal_rollback(RecordKind::Rollback, &mut Unread);
            if prev.lost.is_some() {
                return prev;
            }
            let mut out = self.on_db_write(conn, offset, data);
            out.sealed = out.sealed.or(prev.sealed);
            return out;
        }
        let lost = self.begin_txn(conn);
        if let Err(e) = self.spool.append_page(&self.control, offset, data) {
            return self.failed("capturing a database write", e);
        }
        let t = &mut self.rollback;
        t.active = true;
        t.last_write_len = data.len() as u32;
        t.max_end = t.max_end.max(offset + data.len() as u64);
        if offset == 0 && data.len() >= dbheader::HEADER_LEN {
            let mut h = [0u8; dbheader::HEADER_LEN];
            h.copy_from_slice(&data[..dbheader::HEADER_LEN]);
            t.page1 = Some(h);
        }
        Outcome { sealed: None, lost }
    }

    /// The connection's rollback journal was finalized (zeroed header, or truncated to nothing).
    pub fn on_journal_finalized(&mut self, conn: ConnId) {
        if self.rollback.active && self.txn_conn == Some(conn) {
            self.rollback.finalized_at = Some(std::time::Instant::now());
        }
    }

    /// Seals a transaction whose journal was finalized at least `min_age` ago without a commit
    /// following (a rollback in exclusive locking mode, with nothing after it). Called by the
    /// consumer; safe because the connection that wrote it still holds the database lock.
    pub fn seal_finished_rollback(
        &mut self,
        min_age: std::time::Duration,
        file: DbFileReader,
    ) -> Outcome {
        match self.rollback.finalized_at {
            Some(t) if t.elapsed() >= min_age => self.seal_rollback(RecordKind::Rollback, file),
            _ => Outcome::default(),
        }
    }

    /// `SQLITE_FCNTL_COMMIT_PHASETWO`: the transaction committed.
    pub fn on_commit_phase_two(&mut self, conn: ConnId, file: DbFileReader) -> Outcome {
        if let Some(out) = self.discarded_event(conn, true) {
            return out;
        }
        if !self.owns(conn) {
            return Outcome::default();
        }
        if self.wal.first_slot.is_some() {
            return self.finish_wal_txn();
        }
        if self.rollback.active {
            return self.seal_rollback(RecordKind::Commit, file);
        }
        Outcome::default()
    }

    /// `xUnlock` of the main database file to `level`.
    pub fn on_db_unlock(&mut self, conn: ConnId, level: i32, file: DbFileReader) -> Outcome {
        if level > libsqlite3_sys::SQLITE_LOCK_SHARED {
            return Outcome::default();
        }
        if let Some(out) = self.discarded_event(conn, true) {
            return out;
        }
        if !self.owns(conn) {
            return Outcome::default();
        }
        if self.rollback.active {
            return self.seal_rollback(RecordKind::Rollback, file);
        }
        if self.wal.first_slot.is_some() {
            // Closing an exclusive-mode WAL database with frames but no commit: a rollback.
            return self.finish_wal_txn();
        }
        Outcome::default()
    }

    fn seal_rollback(&mut self, kind: RecordKind, file: DbFileReader) -> Outcome {
        let mut t = std::mem::take(&mut self.rollback);
        if t.page1.is_none() {
            // Another process may have changed the size or counter since our last record: take
            // them from the file, which holds the committed page 1 (we still hold the lock).
            t.page1 = file.header().filter(|h| dbheader::page_size(h).is_some());
        }
        let header_page_size = t.page1.as_ref().and_then(|h| dbheader::page_size(h));
        let page_size = header_page_size
            .or((self.page_size > 0).then_some(self.page_size))
            .unwrap_or(t.last_write_len);
        let db_pages = match t.page1.as_ref().and_then(|h| dbheader::trusted_db_pages(h)) {
            Some(p) => dbheader::pages_within_file(p as u64, page_size, file.size()),
            // No readable header: the size did not change (every size change rewrites page 1).
            None if t.page1.is_none() && self.page_size == page_size => self.db_pages,
            None => t.max_end.div_ceil(page_size.max(1) as u64),
        };
        if let Some(c) = t.page1.as_ref().and_then(|h| dbheader::change_counter(h)) {
            self.change_counter = c;
        }
        let info = CommitInfo {
            kind,
            mode: SourceMode::Rollback,
            page_size,
            db_size: db_pages * page_size as u64,
            n_pages: self.spool.open_pages(),
            sealed_us: now_us(),
            token: self.change_counter as u64,
            wal_frames: 0,
            wal_first_frame: 0,
        };
        self.seal(info, db_pages, page_size)
    }

    fn seal(&mut self, info: CommitInfo, db_pages: u64, page_size: u32) -> Outcome {
        match self.spool.seal(&self.control, &info) {
            Ok((seq, pos)) => {
                self.my_last_seq = seq;
                self.end_txn();
                self.db_pages = db_pages;
                self.page_size = page_size;
                Outcome {
                    sealed: Some(Sealed { seq, pos, info }),
                    lost: None,
                }
            }
            Err(e) => self.failed("sealing a transaction", e),
        }
    }

    // ---- WAL file -----------------------------------------------------------------------------

    /// The WAL file was opened; `header` holds its first 32 bytes (if it has them).
    pub fn on_wal_open(&mut self, header: &[u8]) {
        if let Some(h) = WalHeader::parse(header) {
            self.wal_header = Some(h);
        }
    }

    /// A write to the WAL file by connection `conn`.
    ///
    /// At the first frame of a transaction the WAL header is re-read (`current_header`): another
    /// process may have restarted the WAL (new salts) or created it since this process last saw
    /// it, and the record's page size and salts must be the WAL's, not a stale copy.
    pub fn on_wal_write(
        &mut self,
        conn: ConnId,
        offset: u64,
        data: &[u8],
        current_header: WalHeaderReader,
    ) -> Outcome {
        if let Some(out) = self.discarded_event(conn, false) {
            return out;
        }
        // The header can only have changed under us if the WAL restarted (the transaction starts
        // at frame 0), another process sealed since our last record, or we never saw it; or a
        // process without spoolvfs restarted it, and then the first frame's salts tell.
        let maybe_stale = |c: &Self| {
            c.wal_header.is_none()
                || offset == wal::WAL_HEADER_LEN
                || c.control.sealed().seq != c.my_last_seq
                || (data.len() as u64 == wal::WAL_FRAME_HEADER_LEN
                    && c.wal_header
                        .is_some_and(|h| wal::frame_salts(data) != h.salts()))
        };
        if offset != 0 && self.wal.first_slot.is_none() && maybe_stale(self) {
            let fresh = current_header().and_then(|h| WalHeader::parse(&h));
            if fresh.is_some() && fresh != self.wal_header {
                self.wal_header = fresh;
                self.wal.slot_pgno.clear();
                self.chain = None;
            }
        }
        let page_size = self.wal_header.map_or(0, |h| h.page_size);
        match wal::classify(page_size, offset) {
            WalRegion::Header => {
                if let Some(h) = WalHeader::parse(data) {
                    // A new WAL or a restart: frames are numbered from the start again.
                    self.wal_header = Some(h);
                    self.wal.slot_pgno.clear();
                    self.chain = None;
                    return Outcome::default();
                }
                Outcome::lost(format!(
                    "unrecognised write of {} bytes at WAL offset 0",
                    data.len()
                ))
            }
            WalRegion::FrameHeader(slot) if data.len() as u64 == wal::WAL_FRAME_HEADER_LEN => {
                self.on_frame_header(conn, slot, data)
            }
            WalRegion::FrameData(slot) if data.len() as u32 == page_size => {
                let Some(pgno) = self.wal.slot_pgno.get(slot) else {
                    self.drop_open();
                    return Outcome::lost(format!("WAL frame {slot} written without its header"));
                };
                let lost = self.begin_txn(conn);
                if self.wal.first_slot.is_none() {
                    self.wal.first_slot = Some(slot);
                }
                let offset = (pgno as u64 - 1) * page_size as u64;
                let pending = self.wal.pending.take().filter(|p| p.slot == slot);
                if pending.is_none() {
                    // A page rewritten in place: SQLite now defers the checksums of this
                    // transaction's frames to its commit, so the chain is broken.
                    self.chain = None;
                }
                let big_endian = self.wal_header.is_some_and(|h| h.big_endian_cksum);
                let written = match pending.and_then(|p| Some((p.header, p.seed?))) {
                    Some((header, seed)) => {
                        let prefix = format::wal_frame_prefix(&header, seed, big_endian);
                        self.spool
                            .append_wal_frame(&self.control, offset, &prefix, data)
                    }
                    None => self.spool.append_page(&self.control, offset, data),
                };
                match written {
                    Ok(()) => Outcome { sealed: None, lost },
                    Err(e) => self.failed("capturing a WAL frame", e),
                }
            }
            _ => {
                self.drop_open();
                Outcome::lost(format!(
                    "WAL write of {} bytes at offset {offset} does not match the frame layout",
                    data.len()
                ))
            }
        }
    }

    fn on_frame_header(&mut self, conn: ConnId, slot: u64, data: &[u8]) -> Outcome {
        let Some(fh) = FrameHeader::parse(data) else {
            return Outcome::default();
        };
        let mut out = Outcome::default();
        if !self.owns(conn) {
            // begin_txn below reports the impossible case of two writers.
        } else if let Some(first) = self.wal.first_slot {
            if self.wal.commit.is_none() && slot <= self.wal.max_slot {
                // Frames of this transaction are being overwritten (savepoint undo, or a rollback
                // in exclusive mode followed by the next transaction): rebuild at the end.
                self.wal.reread = true;
                self.wal.first_slot = Some(first.min(slot));
            } else if self.wal.commit.is_some() && slot <= self.wal.max_slot {
                // walRewriteChecksums rewrites headers of this transaction's frames: same pages,
                // new checksums, so the chain we hold no longer matches the WAL.
                self.chain = None;
                return out;
            } else if self.wal.commit.is_some() {
                // A new transaction began without an unlock between (exclusive mode): seal first.
                out = self.finish_wal_txn();
            }
        }
        if out.lost.is_none() {
            out.lost = self.begin_txn(conn);
        }
        if !self.wal.slot_pgno.insert(slot, fh.pgno) {
            // A frame before the open transaction's first one: only a rebuild from the WAL can
            // tell what commits.
            self.wal.reread = true;
        }
        self.wal.max_slot = self.wal.max_slot.max(slot);
        if self.wal.first_slot.is_none() {
            self.wal.first_slot = Some(slot);
        }
        if fh.commit_size != 0 {
            self.wal.commit = Some((slot, fh.commit_size));
        }
        self.track_chain(slot, &fh, data);
        out
    }

    /// Remembers the frame header just written with its checksum seed, and moves the chain on.
    ///
    /// After a frame of the open transaction was rewritten in place, SQLite writes the following
    /// headers with zero salts and checksums and fixes them at commit (walRewriteChecksums): a
    /// header whose salts are not the WAL's breaks the chain until the next transaction.
    fn track_chain(&mut self, slot: u64, fh: &FrameHeader, data: &[u8]) {
        let salts = (fh.salt1, fh.salt2);
        let wal_salts = self.wal_header.map(|h| (h.salt1, h.salt2));
        if wal_salts != Some(salts) {
            self.wal.pending = None;
            self.chain = None;
            return;
        }
        let seed = if self.wal.reread {
            None
        } else if slot == 0 {
            self.wal_header
                .filter(|h| (h.salt1, h.salt2) == salts)
                .map(|h| h.cksum)
        } else {
            self.chain
                .filter(|c| c.slot + 1 == slot && c.salts == salts)
                .map(|c| c.cksum)
        };
        let mut header = [0u8; wal::WAL_FRAME_HEADER_LEN as usize];
        header.copy_from_slice(&data[..wal::WAL_FRAME_HEADER_LEN as usize]);
        self.wal.pending = Some(PendingFrame { slot, header, seed });
        self.chain = Some(ChainPoint {
            slot,
            salts,
            cksum: fh.cksum,
        });
    }

    /// A writer of ours is about to end the WAL's generation (restart, truncation, deletion):
    /// the loss to report if the spool lacks any of its commits (see `crate::walend`).
    pub fn check_wal_ending(&self, on_disk: Option<WalHeader>, how: Ending) -> Option<String> {
        crate::walend::check(&self.control, &self.wal_path, on_disk, how)
    }

    /// The WAL file was truncated (checkpoint TRUNCATE, journal_size_limit).
    pub fn on_wal_truncate(&mut self, size: u64) {
        if size < wal::WAL_HEADER_LEN {
            self.wal_header = None;
            self.wal.slot_pgno.clear();
        }
        self.chain = None;
    }

    /// The WAL write lock was released (`xShmLock` UNLOCK of slot 0).
    pub fn on_wal_write_unlock(&mut self, conn: ConnId) -> Outcome {
        if let Some(out) = self.discarded_event(conn, true) {
            return out;
        }
        if self.wal.first_slot.is_some() && self.owns(conn) {
            if self.wal.commit.is_some() {
                crate::faults::kill_if("kill_before_wal_seal");
            }
            return self.finish_wal_txn();
        }
        Outcome::default()
    }

    /// Replaces the open record's entries by frames `first..=last` read back from the WAL file.
    fn rebuild_from_wal(&mut self, first: u64, last: u64, page_size: u32) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let header = self
            .wal_header
            .ok_or_else(|| io::Error::other("no WAL header known"))?;
        let file = std::fs::File::open(&self.wal_path)?;
        self.spool.abort();
        let mut frame = vec![0u8; wal::WAL_FRAME_HEADER_LEN as usize + page_size as usize];
        for slot in first..=last {
            file.read_exact_at(&mut frame, wal::frame_offset(page_size, slot))?;
            let fh = FrameHeader::parse(&frame).ok_or_else(|| io::Error::other("short frame"))?;
            if (fh.salt1, fh.salt2) != (header.salt1, header.salt2) || fh.pgno == 0 {
                return Err(io::Error::other(format!(
                    "WAL frame {slot} is not part of the commit"
                )));
            }
            let data = &frame[wal::WAL_FRAME_HEADER_LEN as usize..];
            let offset = (fh.pgno as u64 - 1) * page_size as u64;
            self.spool.append_page(&self.control, offset, data)?;
        }
        Ok(())
    }

    fn finish_wal_txn(&mut self) -> Outcome {
        let Some((commit_slot, commit_pages)) = self.wal.commit else {
            // No commit frame: rolled back. SQLite reuses these slots for the next transaction.
            self.drop_open();
            return Outcome::default();
        };
        let page_size = self.wal_header.map_or(0, |h| h.page_size);
        let salts = self.wal_header.map_or(0, |h| h.salts());
        let first = self.wal.first_slot.unwrap_or(commit_slot);
        let reread = std::mem::take(&mut self.wal.reread);
        if reread {
            // Headers were rewritten in place (walRewriteChecksums): the chain is not ours to know.
            self.chain = None;
        }
        self.wal.pending = None;
        self.wal.slot_pgno.clear();
        self.wal.first_slot = None;
        self.wal.max_slot = 0;
        self.wal.commit = None;
        if reread && let Err(e) = self.rebuild_from_wal(first, commit_slot, page_size) {
            return self.failed("rebuilding a transaction from the WAL", e);
        }
        let info = CommitInfo {
            kind: RecordKind::Commit,
            mode: SourceMode::Wal,
            page_size,
            db_size: commit_pages as u64 * page_size as u64,
            n_pages: self.spool.open_pages(),
            sealed_us: now_us(),
            token: salts,
            wal_frames: commit_slot + 1,
            wal_first_frame: first,
        };
        self.seal(info, commit_pages as u64, page_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::reader::SegmentReader;
    use crate::wal::tests::build_wal;

    fn capture(name: &str) -> (Capture, std::path::PathBuf) {
        let d = crate::util::fresh_test_dir("cap", name);
        let w = SpoolWriter::new(d.clone(), false, u64::MAX);
        let control = Arc::new(Control::open(&d).unwrap());
        (Capture::new(w, control, d.join("wal"), &[], 0), d)
    }

    fn no_wal_header() -> Option<[u8; 32]> {
        None
    }

    fn page1(page_size: u16, counter: u32, pages: u32) -> Vec<u8> {
        let mut p = vec![0u8; page_size as usize];
        p[..16].copy_from_slice(dbheader::MAGIC);
        p[16..18].copy_from_slice(&page_size.to_be_bytes());
        p[24..28].copy_from_slice(&counter.to_be_bytes());
        p[28..32].copy_from_slice(&pages.to_be_bytes());
        p[92..96].copy_from_slice(&counter.to_be_bytes());
        p
    }

    #[test]
    fn rollback_commit_is_sealed_with_header_size() {
        let (mut c, d) = capture("rb");
        c.on_db_write(1, 0, &page1(1024, 5, 3));
        c.on_db_write(1, 2048, &[7u8; 1024]);
        assert!(c.txn_open());
        let out = c.on_commit_phase_two(1, &mut Unread);
        let s = out.sealed.unwrap();
        assert_eq!(s.info.db_size, 3 * 1024);
        assert_eq!(s.info.n_pages, 2);
        assert_eq!(s.info.kind, RecordKind::Commit);
        assert!(!c.txn_open());
        // Unlock after commit seals nothing more.
        assert!(c.on_db_unlock(1, 1, &mut Unread).sealed.is_none());
        let mut r = SegmentReader::open(&d, 1).unwrap();
        assert_eq!(
            r.read_records(Some(s.pos.end), 100).unwrap().records.len(),
            1
        );
    }

    /// A file as `DbFileNow` sees it, for tests.
    struct FileIs(Option<[u8; dbheader::HEADER_LEN]>, Option<u64>);

    impl DbFileNow for FileIs {
        fn header(&mut self) -> Option<[u8; dbheader::HEADER_LEN]> {
            self.0
        }
        fn size(&mut self) -> Option<u64> {
            self.1
        }
    }

    #[test]
    fn a_header_claiming_more_pages_than_the_file_holds_is_capped_by_the_file() {
        let (mut c, _d) = capture("claim");
        // A rollback that restored page 2 only: the header comes from the file, which a write
        // made without spoolvfs left claiming 100,000 pages in a 3-page file.
        c.on_db_write(1, 1024, &[7u8; 1024]);
        let mut hdr = [0u8; dbheader::HEADER_LEN];
        hdr.copy_from_slice(&page1(1024, 5, 100_000)[..dbheader::HEADER_LEN]);
        let out = c.on_db_unlock(1, 1, &mut FileIs(Some(hdr), Some(3 * 1024)));
        assert_eq!(out.sealed.unwrap().info.db_size, 3 * 1024);
        // A commit whose page 1 says 3 pages in a file of 3 keeps 3: the cap never grows it.
        c.on_db_write(1, 0, &page1(1024, 6, 3));
        let out = c.on_commit_phase_two(1, &mut FileIs(None, Some(3 * 1024)));
        assert_eq!(out.sealed.unwrap().info.db_size, 3 * 1024);
        // Unknown size: the header rules, as before.
        c.on_db_write(1, 0, &page1(1024, 7, 4));
        let out = c.on_commit_phase_two(1, &mut Unread);
        assert_eq!(out.sealed.unwrap().info.db_size, 4 * 1024);
    }

    #[test]
    fn spill_then_rollback_is_sealed_as_rollback() {
        let (mut c, _d) = capture("spill");
        c.on_db_write(1, 0, &page1(1024, 5, 3));
        c.on_commit_phase_two(1, &mut Unread);
        c.on_db_write(1, 4096, &[1u8; 1024]); // spill
        let out = c.on_db_unlock(1, 1, &mut Unread);
        let s = out.sealed.unwrap();
        assert_eq!(s.info.kind, RecordKind::Rollback);
        assert_eq!(s.info.db_size, 3 * 1024);
    }

    #[test]
    fn other_connections_cannot_seal_or_drop_a_transaction() {
        let (mut c, d) = capture("conns");
        // Connection 1 spills a page of an open WAL transaction...
        let wal = build_wal(512, &[(1, 0, 1), (2, 3, 2)], (1, 2));
        c.on_wal_write(1, 0, &wal[..32], &mut no_wal_header);
        c.on_wal_write(1, 32, &wal[32..56], &mut no_wal_header);
        c.on_wal_write(1, 56, &wal[56..568], &mut no_wal_header);
        // ...while connection 2 ends its read transaction and releases its locks.
        assert!(c.on_db_unlock(2, 0, &mut Unread).sealed.is_none());
        assert!(c.on_wal_write_unlock(2).sealed.is_none());
        assert!(c.on_commit_phase_two(2, &mut Unread).sealed.is_none());
        assert!(c.txn_open());
        // Connection 1 commits: both frames are in the record.
        c.on_wal_write(1, 568, &wal[568..592], &mut no_wal_header);
        c.on_wal_write(1, 592, &wal[592..1104], &mut no_wal_header);
        let s = c.on_wal_write_unlock(1).sealed.unwrap();
        assert_eq!(s.info.n_pages, 2);
        assert_eq!(s.info.wal_first_frame, 0);
        let mut r = SegmentReader::open(&d, 1).unwrap();
        assert_eq!(r.read_records(None, 100).unwrap().records[0].pages.len(), 2);
    }

    fn wal_writes(c: &mut Capture, wal: &[u8], page_size: usize) {
        c.on_wal_write(1, 0, &wal[..32], &mut no_wal_header);
        let frame = 24 + page_size;
        let mut at = 32;
        while at + frame <= wal.len() {
            c.on_wal_write(1, at as u64, &wal[at..at + 24], &mut no_wal_header);
            c.on_wal_write(
                1,
                (at + 24) as u64,
                &wal[at + 24..at + frame],
                &mut no_wal_header,
            );
            at += frame;
        }
    }

    #[test]
    fn wal_commit_sealed_on_unlock_and_rollback_dropped() {
        let (mut c, d) = capture("wal");
        let wal = build_wal(512, &[(1, 0, 1), (2, 3, 2)], (1, 2));
        wal_writes(&mut c, &wal, 512);
        let s = c.on_wal_write_unlock(1).sealed.unwrap();
        assert_eq!(s.info.db_size, 3 * 512);
        assert_eq!(s.info.n_pages, 2);
        assert_eq!(s.info.wal_frames, 2);
        // Next transaction writes a frame and rolls back.
        let more = build_wal(512, &[(1, 0, 1), (2, 3, 2), (3, 0, 9)], (1, 2));
        let at = 32 + 2 * (24 + 512);
        c.on_wal_write(1, at as u64, &more[at..at + 24], &mut no_wal_header);
        c.on_wal_write(
            1,
            (at + 24) as u64,
            &more[at + 24..at + 24 + 512],
            &mut no_wal_header,
        );
        assert!(c.txn_open());
        assert!(c.on_wal_write_unlock(1).sealed.is_none());
        assert!(!c.txn_open());
        let mut r = SegmentReader::open(&d, 1).unwrap();
        let got = r.read_records(None, 100).unwrap();
        assert_eq!(got.records.len(), 1);
        assert_eq!(got.records[0].pages.get(1).unwrap().offset, 512);
    }

    /// Kind of the entry whose page image starts at `payload_pos`.
    fn entry_kind_at(
        file: &std::fs::File,
        page: &crate::spool::reader::PageRef,
    ) -> format::EntryKind {
        let mut h = [0u8; format::ENTRY_HEADER_LEN];
        for back in [
            format::ENTRY_HEADER_LEN,
            format::ENTRY_HEADER_LEN + format::WAL_FRAME_PREFIX_LEN,
        ] {
            std::os::unix::fs::FileExt::read_exact_at(file, &mut h, page.payload_pos - back as u64)
                .unwrap();
            if let Some(e) = format::decode_entry_header(&h)
                && e.payload_len as usize + format::ENTRY_HEADER_LEN == back + page.len as usize
            {
                return e.kind;
            }
        }
        panic!("no entry header before {page:?}");
    }

    #[test]
    fn wal_frames_keep_sqlite_checksums_while_the_chain_is_known() {
        let (mut c, d) = capture("chain");
        // Transaction 1: frames 0-1 (the seed of frame 0 is the WAL header's checksum).
        // Transaction 2: frame 2, chained to our commit frame 1. Transaction 3 starts at frame 4:
        // frame 3 was written by someone else, so its first seed is unknown.
        let wal = build_wal(
            512,
            &[(1, 0, 1), (2, 3, 2), (3, 3, 3), (4, 4, 4), (5, 5, 5)],
            (1, 2),
        );
        let frame = |slot: usize| (32 + slot * 536, 32 + slot * 536 + 24);
        c.on_wal_write(1, 0, &wal[..32], &mut no_wal_header);
        for txn in [&[0usize, 1][..], &[2], &[4]] {
            for &slot in txn {
                let (h, p) = frame(slot);
                c.on_wal_write(1, h as u64, &wal[h..p], &mut no_wal_header);
                c.on_wal_write(1, p as u64, &wal[p..p + 512], &mut no_wal_header);
            }
            assert!(c.on_wal_write_unlock(1).sealed.is_some());
        }
        let mut r = SegmentReader::open(&d, 1).unwrap();
        let got = r.read_records(None, 100).unwrap();
        assert!(!got.torn);
        let kinds: Vec<_> = got
            .records
            .iter()
            .flat_map(|rec| rec.pages.iter().map(|p| entry_kind_at(&r.file, &p)))
            .collect();
        use format::EntryKind::{Page, WalFrame};
        assert_eq!(kinds, [WalFrame, WalFrame, WalFrame, Page]);
        // A damaged page image is caught by SQLite's checksum (our CRC does not cover it).
        let damaged = got.records[1].pages.get(0).unwrap().payload_pos + 100;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(crate::spool::segment_path(&d, 1));
        std::os::unix::fs::FileExt::write_all_at(&f.unwrap(), &[0xee], damaged).unwrap();
        let mut r = SegmentReader::open(&d, 1).unwrap();
        let got = r.read_records(None, 100).unwrap();
        assert!(got.torn);
        assert_eq!(got.records.len(), 1);
    }

    #[test]
    fn frames_after_an_in_place_rewrite_are_not_chained() {
        let (mut c, d) = capture("recksum");
        // Frames 0 and 1 spilled; page 1 is written again in place (data only), after which SQLite
        // writes new headers with zero salts and checksums (fixed at commit by rewriting them).
        let wal = build_wal(512, &[(1, 0, 1), (2, 0, 2), (3, 3, 3)], (1, 2));
        let at = |slot: usize| 32 + slot * 536;
        c.on_wal_write(1, 0, &wal[..32], &mut no_wal_header);
        for slot in 0..2 {
            c.on_wal_write(
                1,
                at(slot) as u64,
                &wal[at(slot)..at(slot) + 24],
                &mut no_wal_header,
            );
            let p = at(slot) + 24;
            c.on_wal_write(1, p as u64, &wal[p..p + 512], &mut no_wal_header);
        }
        c.on_wal_write(1, at(0) as u64 + 24, &[9u8; 512], &mut no_wal_header);
        let mut zeroed = [0u8; 24];
        zeroed[..8].copy_from_slice(&wal[at(2)..at(2) + 8]);
        c.on_wal_write(1, at(2) as u64, &zeroed, &mut no_wal_header);
        let p = at(2) + 24;
        c.on_wal_write(1, p as u64, &wal[p..p + 512], &mut no_wal_header);
        for slot in 0..3 {
            // walRewriteChecksums: final headers (content irrelevant here).
            c.on_wal_write(
                1,
                at(slot) as u64,
                &wal[at(slot)..at(slot) + 24],
                &mut no_wal_header,
            );
        }
        assert!(c.on_wal_write_unlock(1).sealed.is_some());
        let mut r = SegmentReader::open(&d, 1).unwrap();
        let got = r.read_records(None, 100).unwrap();
        assert!(!got.torn);
        let kinds: Vec<_> = got.records[0]
            .pages
            .iter()
            .map(|p| entry_kind_at(&r.file, &p))
            .collect();
        use format::EntryKind::{Page, WalFrame};
        assert_eq!(kinds, [WalFrame, WalFrame, Page, Page]);
        // The chain is unknown after the rewrite: the next transaction starts with a Page entry.
        assert_eq!(c.chain, None);
    }

    #[test]
    fn wal_data_without_header_is_reported_lost() {
        let (mut c, _d) = capture("walhole");
        let wal = build_wal(512, &[(1, 1, 1)], (1, 2));
        c.on_wal_write(1, 0, &wal[..32], &mut no_wal_header);
        let out = c.on_wal_write(1, 56, &wal[56..56 + 512], &mut no_wal_header);
        assert!(out.lost.is_some());
    }

    #[test]
    fn a_poisoned_transaction_is_discarded_and_reported_at_its_end() {
        let (mut c, _d) = capture("poison");
        c.on_db_write(1, 0, &page1(1024, 5, 3));
        c.poisoned(1, false);
        assert!(c.on_db_write(1, 1024, &[1u8; 1024]).lost.is_none());
        // Another connection's events do not end it.
        assert!(c.on_db_unlock(2, 0, &mut Unread).lost.is_none());
        let out = c.on_commit_phase_two(1, &mut Unread);
        assert!(out.sealed.is_none());
        assert!(out.lost.is_some());
        // The next transaction is captured normally.
        c.on_db_write(1, 0, &page1(1024, 6, 3));
        assert!(c.on_commit_phase_two(1, &mut Unread).sealed.is_some());
    }

    #[test]
    fn overwritten_frames_are_rebuilt_from_the_wal() {
        let (mut c, d) = capture("reread");
        // Spill frames for pages 1, 2 and 3 (content 7, 8, 9), then ROLLBACK TO a savepoint taken
        // at the start: the commit rewrites slot 0 with page 1 (content 5) as its commit frame.
        let spilled = build_wal(512, &[(1, 0, 7), (2, 0, 8), (3, 0, 9)], (1, 2));
        let committed = build_wal(512, &[(1, 3, 5)], (1, 2));
        c.on_wal_write(1, 0, &spilled[..32], &mut no_wal_header);
        for slot in 0..3usize {
            let at = 32 + slot * 536;
            c.on_wal_write(1, at as u64, &spilled[at..at + 24], &mut no_wal_header);
            c.on_wal_write(
                1,
                at as u64 + 24,
                &spilled[at + 24..at + 536],
                &mut no_wal_header,
            );
        }
        c.on_wal_write(1, 32, &committed[32..56], &mut no_wal_header);
        c.on_wal_write(1, 56, &committed[56..568], &mut no_wal_header);
        // The WAL file as SQLite left it: slot 0 holds the commit, slots 1-2 stale spills.
        let mut file = committed.clone();
        file.extend_from_slice(&spilled[568..]);
        std::fs::write(d.join("wal"), &file).unwrap();
        let s = c.on_wal_write_unlock(1).sealed.unwrap();
        assert_eq!(s.info.n_pages, 1);
        let mut r = SegmentReader::open(&d, 1).unwrap();
        let recs = r.read_records(None, 100).unwrap().records;
        assert_eq!(recs.len(), 1);
        assert_eq!(recs[0].pages.len(), 1);
        let mut img = [0u8; 512];
        std::os::unix::fs::FileExt::read_exact_at(
            &*r.file,
            &mut img,
            recs[0].pages.get(0).unwrap().payload_pos,
        )
        .unwrap();
        assert_eq!(img, [5u8; 512]);
    }

    #[test]
    fn a_wal_restarted_by_another_process_is_noticed_at_the_next_transaction() {
        let (mut c, _d) = capture("restart");
        let old = build_wal(512, &[(1, 1, 1)], (1, 2));
        c.on_wal_write(1, 0, &old[..32], &mut no_wal_header);
        c.on_wal_write(1, 32, &old[32..56], &mut no_wal_header);
        c.on_wal_write(1, 56, &old[56..568], &mut no_wal_header);
        assert_eq!(
            c.on_wal_write_unlock(1).sealed.unwrap().info.token,
            (1 << 32) | 2
        );
        // Another process restarts the WAL with page size 1024 and salts (5, 6) and commits (and
        // seals); our next transaction appends after its frame.
        let other = c.control.next_seq();
        c.control
            .publish_sealed(crate::spool::control::SealedState {
                seq: other,
                pos: SealedPos::default(),
                ..Default::default()
            });
        let new = build_wal(1024, &[(1, 1, 1), (2, 2, 2)], (5, 6));
        let mut hdr = [0u8; 32];
        hdr.copy_from_slice(&new[..32]);
        let mut current = move || Some(hdr);
        let at = 32 + 1048;
        assert!(
            c.on_wal_write(1, at as u64, &new[at..at + 24], &mut current)
                .lost
                .is_none()
        );
        assert!(
            c.on_wal_write(1, at as u64 + 24, &new[at + 24..at + 1048], &mut current)
                .lost
                .is_none()
        );
        let s = c.on_wal_write_unlock(1).sealed.unwrap();
        assert_eq!(s.info.token, (5 << 32) | 6);
        assert_eq!(s.info.page_size, 1024);
        assert_eq!(s.info.wal_first_frame, 1);
    }

    #[test]
    fn an_exclusive_mode_rollback_is_sealed_at_the_next_write_or_by_the_consumer() {
        let (mut c, _d) = capture("exclrb");
        c.on_db_write(1, 0, &page1(1024, 5, 3));
        assert!(c.on_commit_phase_two(1, &mut Unread).sealed.is_some());
        // A spilling transaction rolls back: spill, playback, journal zeroed; no unlock follows.
        c.on_db_write(1, 2048, &[9u8; 1024]);
        c.on_db_write(1, 2048, &[7u8; 1024]);
        c.on_journal_finalized(1);
        // Another connection's journal does not end it, and it is not old enough for the consumer.
        c.on_journal_finalized(2);
        let young = c.seal_finished_rollback(std::time::Duration::from_secs(60), &mut Unread);
        assert!(young.sealed.is_none());
        // The next transaction's first write seals it first.
        let out = c.on_db_write(1, 1024, &[1u8; 1024]);
        let s = out.sealed.unwrap();
        assert_eq!(s.info.kind, RecordKind::Rollback);
        assert_eq!(s.info.n_pages, 2);
        assert_eq!(s.info.db_size, 3 * 1024);
        assert!(c.txn_open());
        c.on_journal_finalized(1);
        // A commit after the finalized journal is a commit.
        let commit = c.on_commit_phase_two(1, &mut Unread).sealed.unwrap();
        assert_eq!(commit.info.kind, RecordKind::Commit);
        // A finalized rollback with nothing after it is sealed by the consumer.
        c.on_db_write(1, 2048, &[3u8; 1024]);
        c.on_journal_finalized(1);
        let late = c.seal_finished_rollback(std::time::Duration::ZERO, &mut Unread);
        assert_eq!(late.sealed.unwrap().info.kind, RecordKind::Rollback);
        assert!(!c.txn_open());
    }
}
