//! The control file `<spool>/control`: the state every process using one spool shares, in a
//! 4 KiB file mapped `MAP_SHARED` (memmap2) and accessed only through atomics.
//!
//! ```text
//! off  field                 written by                      meaning
//!   0  magic "SPOOLCT1"      first opener
//!   8  seal_lock (seqlock)   writer holding the db lock      even = stable
//!  16  sealed_seq            "                               last sealed sequence number
//!  24  sealed_segment        "                               segment holding the stream tail
//!  32  sealed_end            "                               end of the last sealed record in it
//!  40  sealed_us             "                               seal time of the last record
//!  48  next_seq              "                               last sequence number handed out
//!  56  txn_owner             "                               pid with an unsealed transaction, 0
//!  64  apply_lock (seqlock)  active consumer
//!  72  applied_seq           "                               last record in the backup
//!  80  applied_segment       "                               consumer cursor (for takeover)
//!  88  applied_end           "
//!  96  applied_us            "                               seal time of the last applied record
//! 104  applied_token         "                               source token of the last applied
//! 112  applied_mode_kind     "                               mode << 8 | kind of the last applied
//! 120  applied_wal_frames    "
//! 128  lost_gen              anyone                          bumped by every detected loss
//! 136  resynced_gen          active consumer                 lost_gen covered by the last resync
//! 144  resyncs               active consumer                 resyncs completed
//! 152  consumer_pid          active consumer
//! 160  consumer_beat_us      active consumer                 heartbeat
//! 168  behind_since_us       writer / consumer               seal time of the oldest unapplied
//! 176  moved                 active consumer                 1: the spool was recreated, follow
//! 184  sealed_token          writer holding the db lock      source token of the last sealed
//! 192  sealed_mode_kind      "                               mode << 8 | kind (0: unknown)
//! 200  sealed_wal_frames     "                               (in the seal_lock seqlock)
//! 208  wal_verified          writer ending a WAL generation  token of the last generation
//!                                                            checked complete when it ended
//! 216  span_owner            active consumer                 pid with a backup span open (its
//!                                                            batches roll back if it dies), 0
//! 224  sync_requested        any `spool_sync` caller         requests taken (a ticket counter)
//! 232  sync_served           active consumer                 requests answered: a clean check
//!                                                            of the source made after reading
//!                                                            them, with everything sealed
//!                                                            before them committed
//! 240  committed_seq         active consumer                 last record durably in the backup
//!                                                            (its span committed)
//! 248  boot_id               each opener                     boot of the last process to open
//! 256  pids[64]              each process                    processes that have the db open
//! 768  clean_lock (seqlock)  last process to close           the clean-close record:
//! 776  clean_seq             "                               last sealed = applied seq, + 1
//!                                                            (0: no record)
//! 784  clean_lost_gen        "                               lost_gen = resynced_gen then
//! 792  clean_db[5]           "                               stamp of the source (filestamp)
//! 832  clean_backup[5]       "                               stamp of the backup
//! 872  backup_fp_seq         active consumer                 applied seq + 1 when backup_fp was
//!                                                            taken (0: none)
//! 880  span_start_owner      active consumer, before it sets span_owner: whose span this is
//! 888  span_start[7]         "                               the applied state when it began
//! 944  span_start_backup[5]  "                               the backup's fingerprint then
//! 984  backup_fp[5]          active consumer                 the backup's fingerprint after its
//!                                                            last apply (`consumer::crashopen`)
//! 1024 error_len + text      active consumer                 its last error (≤ 1000 bytes)
//! 2048 bell (u32)            anyone                          doorbell counter, a shared futex
//!                                                            (`bell`): rung to wake consumers
//! 2056 consumer_parked       active consumer                 1 while it sleeps parked: every
//!                                                            seal then rings the bell
//! 2064 answer_bell (u32)     active consumer                 a second shared futex: rung when
//!                                                            it made progress that a
//!                                                            `spool_sync` caller waits for
//! 2072 sync_waiters          any `spool_sync` caller         callers asleep on answer_bell that
//!                                                            found no free slot below
//! 2080 sync_wait_slots[16]   any `spool_sync` caller         one per caller asleep on
//!                                                            answer_bell: its deadline (ms,
//!                                                            monotonic clock) << 16 | a tag, 0
//!                                                            when free. The consumer rings only
//!                                                            while a slot's deadline is ahead
//!                                                            or the count above is > 0; a slot
//!                                                            past its deadline is free (its
//!                                                            caller was killed while waiting)
//! 2208 clean_wal[5]          last process to close           stamp of a persistent WAL that
//!                                                            holds the record's commits (all
//!                                                            zero: none; in the clean_lock
//!                                                            seqlock with the record above)
//! 2248 copy_stamp[5]         active consumer                 the source's stamp before a resync
//!                                                            copied it with no WAL commit
//! 2288 copy_seq              "                               that resync's applied seq + 1 (0:
//!                                                            none; written before the applied
//!                                                            state is published)
//! 2296 sync_waiters_until    any `spool_sync` caller         latest deadline of a caller counted
//!                                                            in sync_waiters (ms, monotonic):
//!                                                            the count rings only until then
//! ```
//! Invariants: the sealed fields change only under the database's write lock (so one writer at a
//! time) and are read through the seqlock; the applied fields change only in the process holding
//! the consumer lock. A zero-filled file is a valid initial state.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use memmap2::MmapMut;

use super::bell;
use super::format::CommitInfo;
use super::writer::SealedPos;
use crate::filestamp::{self, FileStamp};

const SIZE: u64 = 4096;
const MAGIC: u64 = u64::from_le_bytes(*b"SPOOLCT1");

const SEAL_LOCK: usize = 8;
const SEALED_SEQ: usize = 16;
const SEALED_SEGMENT: usize = 24;
const SEALED_END: usize = 32;
const SEALED_US: usize = 40;
const NEXT_SEQ: usize = 48;
const TXN_OWNER: usize = 56;
const APPLY_LOCK: usize = 64;
const APPLIED_SEQ: usize = 72;
// 80..128: the rest of the applied record (`store_record`).
const LOST_GEN: usize = 128;
const RESYNCED_GEN: usize = 136;
const RESYNCS: usize = 144;
const CONSUMER_PID: usize = 152;
const CONSUMER_BEAT: usize = 160;
const BEHIND_SINCE: usize = 168;
const MOVED: usize = 176;
const SEALED_TOKEN: usize = 184;
const SEALED_MODE_KIND: usize = 192;
const SEALED_WAL_FRAMES: usize = 200;
const WAL_VERIFIED: usize = 208;
const SPAN_OWNER: usize = 216;
const SYNC_REQUESTED: usize = 224;
const SYNC_SERVED: usize = 232;
const COMMITTED_SEQ: usize = 240;
const BOOT_ID: usize = 248;
const CLEAN_LOCK: usize = 768;
const CLEAN_SEQ: usize = 776;
const CLEAN_LOST: usize = 784;
const CLEAN_DB: usize = 792;
const CLEAN_BACKUP: usize = CLEAN_DB + 8 * filestamp::WORDS;
const BACKUP_FP_SEQ: usize = 872;
const SPAN_START_OWNER: usize = 880;
const SPAN_START: usize = 888;
const SPAN_START_BACKUP: usize = SPAN_START + 8 * RECORD_WORDS;
const BACKUP_FP: usize = 984;
const BELL: usize = 2048;
const CONSUMER_PARKED: usize = 2056;
const ANSWER_BELL: usize = 2064;
const SYNC_WAITERS: usize = 2072;
const SYNC_WAIT_SLOTS: usize = 2080;
const SYNC_WAIT_SLOT_COUNT: usize = 16;
const CLEAN_WAL: usize = SYNC_WAIT_SLOTS + 8 * SYNC_WAIT_SLOT_COUNT;
const COPY_STAMP: usize = CLEAN_WAL + 8 * filestamp::WORDS;
const COPY_SEQ: usize = COPY_STAMP + 8 * filestamp::WORDS;
const SYNC_WAITERS_UNTIL: usize = COPY_SEQ + 8;
const _: () = assert!(ERROR_TEXT + ERROR_MAX <= BELL && SYNC_WAITERS_UNTIL + 8 <= SIZE as usize);
/// Bits of a wait slot below the deadline: a tag that tells callers with the same deadline apart.
const SLOT_TAG_BITS: u32 = 16;
/// Words of a `PublishedRecord` as stored (`store_record`).
const RECORD_WORDS: usize = 7;
/// Words of the backup fingerprint kept with a span's start (opaque here).
pub const SPAN_BACKUP_WORDS: usize = 5;
const PIDS: usize = 256;
const MAX_PIDS: usize = 64;
const ERROR_LEN: usize = 1024;
const ERROR_TEXT: usize = 1032;
const ERROR_MAX: usize = 1000;

/// A record as the control file publishes it, for the last sealed and for the last applied one:
/// its sequence number, where it ends in the stream, its seal time, and the chain data of the
/// source after it (token, `mode << 8 | kind`, WAL frames; zero when not known: a resync that
/// replayed no record, or a control file written by an older version).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PublishedRecord {
    pub seq: u64,
    pub pos: SealedPos,
    pub sealed_us: u64,
    pub token: u64,
    pub mode_kind: u64,
    pub wal_frames: u64,
}

impl PublishedRecord {
    /// Record `seq`, ending at `pos`, sealed with `info`.
    pub fn of(seq: u64, pos: SealedPos, info: &CommitInfo) -> PublishedRecord {
        PublishedRecord {
            seq,
            pos,
            sealed_us: info.sealed_us,
            token: info.token,
            mode_kind: info.mode_kind(),
            wal_frames: info.wal_frames,
        }
    }
}

/// The last sealed record (the stream's tail).
pub type SealedState = PublishedRecord;
/// The consumer's progress: the last record in the backup.
pub type AppliedState = PublishedRecord;

/// One mapping of a control file, kept for the life of the `Control` (see `Control`). No
/// descriptor is kept: the mapping holds the file, and a `Control` is shared by threads with
/// different descriptor tables (`fdtable`), where a kept descriptor could be closed in the wrong
/// one.
struct Mapping {
    map: MmapMut,
}

/// The mapped control file of one spool directory.
///
/// If the spool directory is deleted (or the control file replaced) while processes use it, the
/// active consumer creates a new control file at the path and marks the old one `moved`; every
/// process then follows (`follow`). A `Control` therefore owns every mapping it ever used and
/// reads through the newest (`base`): references handed out by `word` stay valid because no
/// mapping is unmapped before the `Control` is dropped (a deleted spool costs 4 KiB of address
/// space per process).
pub struct Control {
    path: PathBuf,
    base: AtomicPtr<u8>,
    ino: AtomicU64,
    maps: Mutex<Vec<Mapping>>,
}

/// Opens (creating if needed) and maps the control file at `path`; returns it and its inode.
fn map_control(path: &Path) -> io::Result<(Mapping, u64)> {
    use std::os::unix::fs::MetadataExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let meta = file.metadata()?;
    if meta.len() < SIZE {
        // Growing with zeros is safe against a concurrent opener doing the same.
        file.set_len(SIZE)?;
    }
    // SAFETY: the file is SIZE bytes and stays that size (nobody truncates it); other processes
    // change it concurrently, which is why every access goes through atomics.
    let mut map = unsafe { MmapMut::map_mut(&file) }?;
    let magic_at = map.as_mut_ptr() as *const AtomicU64;
    // SAFETY: the mapping is page aligned and at least 8 bytes; accessed atomically, as above.
    let magic = unsafe { &*magic_at };
    match magic.load(Ordering::Acquire) {
        MAGIC => {}
        0 => magic.store(MAGIC, Ordering::Release),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "spool control file has a foreign format",
            ));
        }
    }
    Ok((Mapping { map }, meta.ino()))
}

impl Control {
    /// Opens (creating if needed) the control file of spool directory `dir`.
    pub fn open(dir: &Path) -> io::Result<Control> {
        let path = dir.join("control");
        let (mut m, ino) = map_control(&path)?;
        Ok(Control {
            path,
            base: AtomicPtr::new(m.map.as_mut_ptr()),
            ino: AtomicU64::new(ino),
            maps: Mutex::new(vec![m]),
        })
    }

    fn switch_to(&self, mut m: Mapping, ino: u64) {
        let mut maps = self
            .maps
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.base.store(m.map.as_mut_ptr(), Ordering::Release);
        self.ino.store(ino, Ordering::Release);
        maps.push(m);
    }

    /// Which control file is in use (its inode): it changes when this process follows a
    /// recreated spool (`follow`, `relocate_if_gone`), whose counters start over.
    pub fn file_id(&self) -> u64 {
        self.ino.load(Ordering::Acquire)
    }

    /// If the control file we use was marked moved (the spool was recreated), switches to the one
    /// at the path, registers this process there and records the loss (records sealed into the
    /// old stream are gone). Returns whether it switched.
    pub fn follow(&self) -> io::Result<bool> {
        if self.load(MOVED) == 0 {
            return Ok(false);
        }
        let (m, ino) = map_control(&self.path)?;
        if ino == self.ino.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.adopt(m, ino);
        Ok(true)
    }

    /// Switches to mapping `m` of a recreated spool: registers this process there and records the
    /// loss (records sealed into the old stream are gone).
    fn adopt(&self, m: Mapping, ino: u64) {
        self.switch_to(m, ino);
        self.register_pid(std::process::id() as u64);
        self.bump_lost();
    }

    /// Active consumer: if the control file at the path is gone or is not ours any more (the
    /// spool directory was deleted or replaced), opens or creates the one at the path, marks ours
    /// moved so every process follows, switches to it and records the loss. Returns whether it
    /// relocated.
    pub fn relocate_if_gone(&self) -> io::Result<bool> {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(&self.path) {
            Ok(m) if m.ino() == self.ino.load(Ordering::Acquire) => return Ok(false),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let (m, ino) = map_control(&self.path)?;
        self.store(MOVED, 1);
        self.adopt(m, ino);
        Ok(true)
    }

    fn word(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= SIZE as usize);
        let p = self.base.load(Ordering::Acquire).wrapping_add(off) as *const AtomicU64;
        // SAFETY: `base` points at the start of one of our mappings (SIZE bytes, page aligned),
        // all of which live as long as `self` (never removed from `maps`), so the reference
        // cannot outlive its memory; `off` is in bounds and 8-aligned; AtomicU64 has the layout
        // of u64, and every access to the shared mapping is atomic.
        unsafe { &*p }
    }

    /// The 32-bit word at `off`, for a futex: such a slot is never accessed as 64 bits.
    fn word32(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off.is_multiple_of(8) && off + 8 <= SIZE as usize);
        let p = self.base.load(Ordering::Acquire).wrapping_add(off) as *const AtomicU32;
        // SAFETY: as in `word`: in bounds, aligned, in a mapping that lives as long as `self`,
        // and only ever accessed atomically (and only as 32 bits: see the layout).
        unsafe { &*p }
    }

    fn load(&self, off: usize) -> u64 {
        self.word(off).load(Ordering::Acquire)
    }

    fn store(&self, off: usize, v: u64) {
        self.word(off).store(v, Ordering::Release)
    }

    fn load_words<const N: usize>(&self, off: usize) -> [u64; N] {
        std::array::from_fn(|i| self.load(off + 8 * i))
    }

    fn store_words<const N: usize>(&self, off: usize, words: [u64; N]) {
        for (i, w) in words.into_iter().enumerate() {
            self.store(off + 8 * i, w);
        }
    }

    /// Stores `words` published with the sequence number they belong to: `seq_off` holds that
    /// number plus one (0: none) and is cleared while the words change.
    fn store_numbered<const N: usize>(
        &self,
        seq_off: usize,
        off: usize,
        v: Option<(u64, [u64; N])>,
    ) {
        self.store(seq_off, 0);
        if let Some((seq, words)) = v {
            self.store_words(off, words);
            self.store(seq_off, seq + 1);
        }
    }

    /// What `store_numbered` stored last, `None` if nothing is.
    fn load_numbered<const N: usize>(&self, seq_off: usize, off: usize) -> Option<(u64, [u64; N])> {
        let seq = self.load(seq_off).checked_sub(1)?;
        Some((seq, self.load_words(off)))
    }

    /// Hands out the next sequence number (caller holds the database's write lock).
    pub fn next_seq(&self) -> u64 {
        self.word(NEXT_SEQ).fetch_add(1, Ordering::AcqRel) + 1
    }

    fn seq_write(&self, lock: usize, f: impl FnOnce()) {
        let g = self.word(lock);
        g.fetch_add(1, Ordering::AcqRel);
        f();
        g.fetch_add(1, Ordering::AcqRel);
    }

    fn seq_read<T>(&self, lock: usize, f: impl Fn() -> T) -> T {
        loop {
            let a = self.load(lock);
            if a % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let v = f();
            if self.load(lock) == a {
                return v;
            }
        }
    }

    /// Publishes a sealed record (caller holds the database's write lock).
    pub fn publish_sealed(&self, s: SealedState) {
        self.seq_write(SEAL_LOCK, || {
            self.store(SEALED_SEQ, s.seq);
            self.store(SEALED_SEGMENT, s.pos.segment);
            self.store(SEALED_END, s.pos.end);
            self.store(SEALED_US, s.sealed_us);
            self.store(SEALED_TOKEN, s.token);
            self.store(SEALED_MODE_KIND, s.mode_kind);
            self.store(SEALED_WAL_FRAMES, s.wal_frames);
        });
    }

    /// Records a clean close (see `consumer::cleanclose`).
    pub fn set_clean_close(&self, r: &CleanClose) {
        self.seq_write(CLEAN_LOCK, || {
            // Plus one: a record may be taken at seq 0 (a resync's copy, nothing ever sealed),
            // and a zero word means "no record".
            self.store(CLEAN_SEQ, r.seq + 1);
            self.store(CLEAN_LOST, r.lost_gen);
            self.store_words(CLEAN_DB, r.db.to_words());
            self.store_words(CLEAN_BACKUP, r.backup.to_words());
            self.store_words(
                CLEAN_WAL,
                r.wal.map_or([0; filestamp::WORDS], FileStamp::to_words),
            );
        });
    }

    /// The clean-close record, `None` if there is none.
    pub fn clean_close(&self) -> Option<CleanClose> {
        let words = |at: usize| self.load_words::<{ filestamp::WORDS }>(at);
        // Not `seq_read`: a recorder killed inside the write leaves the lock odd for good, and
        // that must read as "no record", not spin.
        let before = self.load(CLEAN_LOCK);
        let (seq_plus_one, lost_gen) = (self.load(CLEAN_SEQ), self.load(CLEAN_LOST));
        let (db, backup, wal) = (words(CLEAN_DB), words(CLEAN_BACKUP), words(CLEAN_WAL));
        // `then`, not `then_some`: the stored word is seq + 1, and 0 (no record) has no seq.
        (before.is_multiple_of(2) && self.load(CLEAN_LOCK) == before && seq_plus_one != 0).then(
            || CleanClose {
                seq: seq_plus_one - 1,
                lost_gen,
                db: FileStamp::from_words(db),
                backup: FileStamp::from_words(backup),
                wal: (wal != [0; filestamp::WORDS]).then(|| FileStamp::from_words(wal)),
            },
        )
    }

    /// A resync is about to publish the applied state `seq`, a copy of a WAL-mode source whose
    /// WAL held no commit, taken while the source's stamp stayed `stamp` (see `walend`); `None`
    /// for any other resync. Stored before that state is published, so whoever sees the state
    /// sees its stamp (a reader racing a later resync reads a mix that matches no file: a loss
    /// reported, never one missed).
    pub fn set_copy_stamp(&self, seq: u64, stamp: Option<FileStamp>) {
        self.store_numbered(COPY_SEQ, COPY_STAMP, stamp.map(|s| (seq, s.to_words())));
    }

    /// The last `set_copy_stamp`: `(seq, stamp)`.
    pub fn copy_stamp(&self) -> Option<(u64, FileStamp)> {
        let (seq, words) = self.load_numbered(COPY_SEQ, COPY_STAMP)?;
        Some((seq, FileStamp::from_words(words)))
    }

    /// The last sealed record (seq 0: none yet).
    pub fn sealed(&self) -> SealedState {
        self.seq_read(SEAL_LOCK, || SealedState {
            seq: self.load(SEALED_SEQ),
            pos: SealedPos {
                segment: self.load(SEALED_SEGMENT),
                end: self.load(SEALED_END),
            },
            sealed_us: self.load(SEALED_US),
            token: self.load(SEALED_TOKEN),
            mode_kind: self.load(SEALED_MODE_KIND),
            wal_frames: self.load(SEALED_WAL_FRAMES),
        })
    }

    /// The token (salts) of the last WAL generation that a writer of ours checked, as it ended,
    /// for commits missing from the spool (see `crate::walend`).
    pub fn wal_verified(&self) -> u64 {
        self.load(WAL_VERIFIED)
    }

    pub fn set_wal_verified(&self, token: u64) {
        self.store(WAL_VERIFIED, token);
    }

    /// Publishes the consumer's progress.
    pub fn publish_applied(&self, a: AppliedState) {
        self.seq_write(APPLY_LOCK, || self.store_record(APPLIED_SEQ, &a));
    }

    pub fn applied(&self) -> AppliedState {
        self.seq_read(APPLY_LOCK, || self.load_record(APPLIED_SEQ))
    }

    /// Stores `r` in the `RECORD_WORDS` words at `base` (the applied state's order).
    fn store_record(&self, base: usize, r: &PublishedRecord) {
        let words = [
            r.seq,
            r.pos.segment,
            r.pos.end,
            r.sealed_us,
            r.token,
            r.mode_kind,
            r.wal_frames,
        ];
        for (i, w) in words.into_iter().enumerate() {
            self.store(base + 8 * i, w);
        }
    }

    fn load_record(&self, base: usize) -> PublishedRecord {
        let w = |i: usize| self.load(base + 8 * i);
        PublishedRecord {
            seq: w(0),
            pos: SealedPos {
                segment: w(1),
                end: w(2),
            },
            sealed_us: w(3),
            token: w(4),
            mode_kind: w(5),
            wal_frames: w(6),
        }
    }

    /// Notes where the span that consumer `owner` is opening begins: the applied state, which
    /// the backup holds now (`backup`: its fingerprint). Written before `set_span_owner(owner)`,
    /// so that a consumer taking over from a dead owner can roll the backup back to it and
    /// replay the spool from there instead of resyncing.
    pub fn set_span_start(
        &self,
        owner: u64,
        start: &AppliedState,
        backup: [u64; SPAN_BACKUP_WORDS],
    ) {
        self.store(SPAN_START_OWNER, 0);
        self.store_record(SPAN_START, start);
        self.store_words(SPAN_START_BACKUP, backup);
        self.store(SPAN_START_OWNER, owner);
    }

    /// The start of `owner`'s span (`set_span_start`), if it noted one. Read only once `owner`
    /// stopped (it no longer holds the consumer lock), so the words do not change under us.
    pub fn span_start(&self, owner: u64) -> Option<(AppliedState, [u64; SPAN_BACKUP_WORDS])> {
        if owner == 0 || self.load(SPAN_START_OWNER) != owner {
            return None;
        }
        Some((
            self.load_record(SPAN_START),
            self.load_words(SPAN_START_BACKUP),
        ))
    }

    /// Seal time of the oldest record not yet applied (0 when caught up); approximate.
    pub fn behind_since(&self) -> u64 {
        self.load(BEHIND_SINCE)
    }

    pub fn set_behind_since(&self, us: u64) {
        self.store(BEHIND_SINCE, us)
    }

    /// Clears the transaction owner if it is still `pid` (a dead process).
    pub fn clear_txn_owner_if(&self, pid: u64) -> bool {
        self.word(TXN_OWNER)
            .compare_exchange(pid, 0, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Pid of the process with an unsealed transaction (0: none).
    pub fn txn_owner(&self) -> u64 {
        self.load(TXN_OWNER)
    }

    /// The process whose consumer has a span open on the backup (`backup::apply`), 0 if none:
    /// should it die, the backup rolls back to the span's start, behind the applied state.
    pub fn span_owner(&self) -> u64 {
        self.load(SPAN_OWNER)
    }

    pub fn set_span_owner(&self, pid: u64) {
        self.store(SPAN_OWNER, pid)
    }

    /// Stores the boot this process runs in; returns the one stored before (0: none yet).
    pub fn swap_boot_id(&self, boot: u64) -> u64 {
        self.word(BOOT_ID).swap(boot, Ordering::AcqRel)
    }

    /// The backup's fingerprint (opaque words) as the active consumer left it, with the applied
    /// sequence number it shows; `None` to say it is not known (an apply under way).
    pub fn set_backup_fp(&self, fp: Option<(u64, [u64; SPAN_BACKUP_WORDS])>) {
        self.store_numbered(BACKUP_FP_SEQ, BACKUP_FP, fp);
    }

    pub fn backup_fp(&self) -> Option<(u64, [u64; SPAN_BACKUP_WORDS])> {
        self.load_numbered(BACKUP_FP_SEQ, BACKUP_FP)
    }

    /// The doorbell's value, to sleep on later (`sleep_on_bell`): read it before looking for work.
    pub fn bell(&self) -> u32 {
        bell::current(self.word32(BELL))
    }

    /// Wakes every consumer sleeping on the doorbell, in any process.
    pub fn ring_bell(&self) {
        bell::ring(self.word32(BELL))
    }

    /// Sleeps until the doorbell rings after `seen` was read, or `timeout`.
    pub fn sleep_on_bell(&self, seen: u32, timeout: Duration) {
        bell::sleep(self.word32(BELL), seen, timeout)
    }

    /// The active consumer says it is going to sleep parked (or is awake again). Before parking
    /// it fences (SeqCst) between this and its last look at the sealed state (`idle_wait`).
    pub fn set_consumer_parked(&self, parked: bool) {
        self.word(CONSUMER_PARKED)
            .store(parked as u64, Ordering::SeqCst);
    }

    /// Whether the active consumer sleeps parked. A writer that just published a seal fences
    /// (SeqCst) before asking, so that either it sees the flag or the consumer sees the seal.
    pub fn consumer_parked(&self) -> bool {
        self.word(CONSUMER_PARKED).load(Ordering::SeqCst) != 0
    }

    /// A `spool_sync` caller, in any process, starts waiting for its answer, for at most
    /// `timeout`: from now on, until then, the consumer rings the answer bell after its steps. The
    /// caller reads `answer_bell` and checks its answer only after this (the registration is
    /// SeqCst and followed by a fence), so either the consumer sees the waiter or the caller sees
    /// the consumer's progress. Undone by dropping the guard, or by the deadline passing (a
    /// caller killed while waiting never drops it).
    pub fn wait_for_answers(&self, timeout: Duration) -> SyncWaiter<'_> {
        // The guard keeps the very word it registered in: if the spool is recreated meanwhile
        // (`follow`), what it undoes is still in the file it registered in.
        let now = crate::util::monotonic_ms();
        let until = now
            .saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX))
            .saturating_add(1) // rounds up: the slot never expires before the caller stops
            .min(u64::MAX >> SLOT_TAG_BITS);
        let value = until << SLOT_TAG_BITS | u64::from(next_slot_tag());
        for i in 0..SYNC_WAIT_SLOT_COUNT {
            let slot = self.word(SYNC_WAIT_SLOTS + 8 * i);
            let v = slot.load(Ordering::SeqCst);
            let free = v == 0 || v >> SLOT_TAG_BITS < now;
            if free
                && slot
                    .compare_exchange(v, value, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            {
                std::sync::atomic::fence(Ordering::SeqCst);
                return SyncWaiter {
                    word: slot,
                    slot_value: value,
                };
            }
        }
        // More callers wait than there are slots: counted, with the latest of their deadlines
        // (first, as in a slot: whoever sees the count sees a deadline at least this one).
        self.word(SYNC_WAITERS_UNTIL)
            .fetch_max(until, Ordering::SeqCst);
        let waiters = self.word(SYNC_WAITERS);
        waiters.fetch_add(1, Ordering::SeqCst);
        std::sync::atomic::fence(Ordering::SeqCst);
        SyncWaiter {
            word: waiters,
            slot_value: 0,
        }
    }

    /// The answer bell's value, to sleep on later (`sleep_on_answers`): read it before checking.
    pub fn answer_bell(&self) -> u32 {
        bell::current(self.word32(ANSWER_BELL))
    }

    /// Sleeps until the answer bell rings after `seen` was read, or `timeout`.
    pub fn sleep_on_answers(&self, seen: u32, timeout: Duration) {
        bell::sleep(self.word32(ANSWER_BELL), seen, timeout)
    }

    /// The active consumer made progress that a `spool_sync` caller may wait for (served
    /// tickets, committed records, a resync): wakes the callers, in every process, if any
    /// waits. Costs a fence and a load when nobody does; the progress must be stored before.
    pub fn ring_answers(&self) {
        self.ring_answers_at(crate::util::monotonic_ms);
    }

    /// `ring_answers` with the clock passed in (tests move it past deadlines). The clock is read
    /// only when a caller is registered. A slot past its deadline was left by a caller killed while
    /// waiting (a live caller frees its slot before its deadline): nobody sleeps on the bell for
    /// it, so it rings nothing.
    fn ring_answers_at(&self, now_ms: impl FnOnce() -> u64) {
        std::sync::atomic::fence(Ordering::SeqCst);
        let load = |off: usize| self.word(off).load(Ordering::SeqCst);
        let counted = load(SYNC_WAITERS) != 0;
        let slots: [u64; SYNC_WAIT_SLOT_COUNT] =
            std::array::from_fn(|i| load(SYNC_WAIT_SLOTS + 8 * i));
        if !counted && slots.iter().all(|&v| v == 0) {
            return;
        }
        let now = now_ms();
        let someone_waits = (counted && load(SYNC_WAITERS_UNTIL) >= now)
            || slots.iter().any(|&v| v != 0 && v >> SLOT_TAG_BITS >= now);
        if someone_waits {
            bell::ring(self.word32(ANSWER_BELL));
        }
    }

    /// Takes a `spool_sync` ticket: the request is answered once `sync_served` reaches it.
    pub fn request_sync(&self) -> u64 {
        self.word(SYNC_REQUESTED).fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn sync_requested(&self) -> u64 {
        self.load(SYNC_REQUESTED)
    }

    pub fn sync_served(&self) -> u64 {
        self.load(SYNC_SERVED)
    }

    /// Answers every request up to `ticket`; never moves the count back (a consumer taking over
    /// may have read an older request count than its predecessor served).
    pub fn serve_sync(&self, ticket: u64) {
        self.word(SYNC_SERVED).fetch_max(ticket, Ordering::AcqRel);
    }

    /// The last record whose batch is committed on the backup (not only visible in it): what
    /// survives the applying process's death or a power loss.
    pub fn committed_seq(&self) -> u64 {
        self.load(COMMITTED_SEQ)
    }

    pub fn set_committed_seq(&self, seq: u64) {
        self.store(COMMITTED_SEQ, seq)
    }

    pub fn set_txn_owner(&self, pid: u64) {
        self.store(TXN_OWNER, pid)
    }

    /// Records a loss; returns the new generation.
    pub fn bump_lost(&self) -> u64 {
        self.word(LOST_GEN).fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn lost_gen(&self) -> u64 {
        self.load(LOST_GEN)
    }

    pub fn resynced_gen(&self) -> u64 {
        self.load(RESYNCED_GEN)
    }

    /// A resync covering losses up to `gen_` completed.
    pub fn finish_resync(&self, gen_: u64) {
        self.store(RESYNCED_GEN, gen_);
        self.word(RESYNCS).fetch_add(1, Ordering::AcqRel);
    }

    pub fn resyncs(&self) -> u64 {
        self.load(RESYNCS)
    }

    pub fn set_consumer(&self, pid: u64, beat_us: u64) {
        self.store(CONSUMER_PID, pid);
        self.store(CONSUMER_BEAT, beat_us);
    }

    pub fn consumer(&self) -> (u64, u64) {
        (self.load(CONSUMER_PID), self.load(CONSUMER_BEAT))
    }

    /// Registers `pid` as a user of the database; false if the table is full (then the process
    /// still works; only the "is anyone else alive" check becomes conservative).
    pub fn register_pid(&self, pid: u64) -> bool {
        for i in 0..MAX_PIDS {
            let w = self.word(PIDS + 8 * i);
            let cur = w.load(Ordering::Acquire);
            if cur == pid {
                return true;
            }
            if (cur == 0 || !pid_alive(cur))
                && w.compare_exchange(cur, pid, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
            {
                return true;
            }
        }
        false
    }

    pub fn unregister_pid(&self, pid: u64) {
        for i in 0..MAX_PIDS {
            let _ = self.word(PIDS + 8 * i).compare_exchange(
                pid,
                0,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// True if a process other than `me` that registered is still alive.
    pub fn others_alive(&self, me: u64) -> bool {
        (0..MAX_PIDS).any(|i| {
            let p = self.load(PIDS + 8 * i);
            p != 0 && p != me && pid_alive(p)
        })
    }

    /// Stores the consumer's last error (truncated), empty to clear.
    pub fn set_error(&self, msg: &str) {
        let bytes = msg.as_bytes();
        let n = bytes.len().min(ERROR_MAX);
        self.store(ERROR_LEN, 0);
        for (i, chunk) in bytes[..n].chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.store(ERROR_TEXT + 8 * i, u64::from_le_bytes(w));
        }
        self.store(ERROR_LEN, n as u64);
    }

    /// The consumer's last error, if any (best effort: may be torn while being rewritten).
    pub fn error(&self) -> Option<String> {
        let n = (self.load(ERROR_LEN) as usize).min(ERROR_MAX);
        if n == 0 {
            return None;
        }
        let mut out = Vec::with_capacity(n + 8);
        for i in 0..n.div_ceil(8) {
            out.extend_from_slice(&self.load(ERROR_TEXT + 8 * i).to_le_bytes());
        }
        out.truncate(n);
        Some(String::from_utf8_lossy(&out).into_owned())
    }
}

/// True if process `pid` exists (signal 0 probe; EPERM still means it exists).
pub fn pid_alive(pid: u64) -> bool {
    if pid == 0 || pid > i32::MAX as u64 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission; it sends nothing.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// A clean-close record: with the record at `seq` sealed and applied and every loss up to
/// `lost_gen` repaired, the source and the backup were in the states `db` and `backup`, and the
/// WAL, if it was kept holding that record's commits (a persistent WAL), in the state `wal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanClose {
    pub seq: u64,
    pub lost_gen: u64,
    pub db: FileStamp,
    pub backup: FileStamp,
    pub wal: Option<FileStamp>,
}

/// A registered `spool_sync` caller (`Control::wait_for_answers`); deregisters on drop. A
/// caller killed while registered leaves its slot taken until its deadline (the end of its
/// `spool_sync` timeout), and the consumer rings after each step until then: one futex wake
/// without sleepers each, which costs time but never correctness. A caller that found every
/// slot taken is counted, and the count rings until the latest deadline of such callers: if one
/// is killed, the rings go on until the longest of their timeouts, not for good.
pub struct SyncWaiter<'a> {
    /// The slot taken, or the count of callers without a slot.
    word: &'a AtomicU64,
    /// What this caller stored in its slot; 0: counted in `sync_waiters` instead.
    slot_value: u64,
}

impl Drop for SyncWaiter<'_> {
    fn drop(&mut self) {
        if self.slot_value == 0 {
            self.word.fetch_sub(1, Ordering::SeqCst);
        } else {
            // Only if it is still ours: a caller that overstayed its deadline may have lost the
            // slot to a new one (the tag tells the two apart even with equal deadlines).
            let _ =
                self.word
                    .compare_exchange(self.slot_value, 0, Ordering::SeqCst, Ordering::SeqCst);
        }
    }
}

/// A tag for a wait slot: differs between the callers of one process, and (by the pid) likely
/// between processes.
fn next_slot_tag() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (std::process::id().wrapping_mul(0x9E37).wrapping_add(n) & 0xFFFF) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> std::path::PathBuf {
        crate::util::fresh_test_dir("ctl", name)
    }

    #[test]
    fn state_is_shared_between_mappings() {
        let d = dir("shared");
        let a = Control::open(&d).unwrap();
        let b = Control::open(&d).unwrap();
        assert_eq!(a.next_seq(), 1);
        assert_eq!(b.next_seq(), 2);
        let s = SealedState {
            seq: 2,
            pos: SealedPos {
                segment: 3,
                end: 99,
            },
            sealed_us: 7,
            token: 11,
            mode_kind: 2 << 8 | 1,
            wal_frames: 5,
        };
        a.publish_sealed(s);
        assert_eq!(b.sealed(), s);
        b.set_error("disk full");
        assert_eq!(a.error().as_deref(), Some("disk full"));
        b.set_error("");
        assert_eq!(a.error(), None);
        assert_eq!(a.bump_lost(), 1);
        b.finish_resync(1);
        assert_eq!((a.resynced_gen(), a.resyncs()), (1, 1));
    }

    #[test]
    fn sync_tickets_are_shared_and_answers_never_go_back() {
        let d = dir("sync");
        let caller = Control::open(&d).unwrap();
        let consumer = Control::open(&d).unwrap();
        assert_eq!((caller.request_sync(), caller.request_sync()), (1, 2));
        assert_eq!(consumer.sync_requested(), 2);
        consumer.serve_sync(2);
        // A consumer that read an older count answers late: the answer stays.
        consumer.serve_sync(1);
        assert_eq!(caller.sync_served(), 2);
        consumer.set_committed_seq(41);
        assert_eq!(caller.committed_seq(), 41);
    }

    /// Two mappings of one file stand in for two processes: the futex must be the shared kind
    /// (keyed by the file), or a ring through one mapping would not wake a sleeper on the other.
    #[test]
    fn a_ring_through_one_mapping_wakes_a_sleeper_on_another() {
        let d = dir("bell");
        let consumer = Control::open(&d).unwrap();
        let writer = Control::open(&d).unwrap();
        assert!(!writer.consumer_parked());
        consumer.set_consumer_parked(true);
        assert!(writer.consumer_parked());
        let seen = consumer.bell();
        let sleeper = std::thread::spawn(move || {
            let t = std::time::Instant::now();
            consumer.sleep_on_bell(seen, Duration::from_secs(60));
            (consumer.bell(), t.elapsed())
        });
        std::thread::sleep(Duration::from_millis(50));
        writer.ring_bell();
        let (bell, slept) = sleeper.join().unwrap();
        assert_eq!(bell, seen + 1);
        // Not a timing requirement: only tells a wake-up (ms) from the 60 s timeout.
        assert!(
            slept < Duration::from_secs(30),
            "slept {slept:?}: the ring did not wake it"
        );
    }

    /// The consumer rings the answer bell only while a caller waits, and the ring reaches a
    /// caller asleep on another mapping of the file (another process).
    #[test]
    fn answers_ring_only_while_a_caller_waits_and_wake_it() {
        let d = dir("answers");
        let consumer = Control::open(&d).unwrap();
        let caller = Control::open(&d).unwrap();
        let before = caller.answer_bell();
        consumer.ring_answers();
        assert_eq!(caller.answer_bell(), before, "rang with nobody waiting");
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            let waiting = caller.wait_for_answers(Duration::from_secs(60));
            let seen = caller.answer_bell();
            tx.send(()).unwrap();
            let t = std::time::Instant::now();
            caller.sleep_on_answers(seen, Duration::from_secs(60));
            let (bell, slept) = (caller.answer_bell(), t.elapsed());
            drop(waiting);
            (seen, bell, slept)
        });
        rx.recv().unwrap();
        consumer.ring_answers();
        let (seen, bell, slept) = sleeper.join().unwrap();
        assert_eq!(bell, seen + 1);
        // Not a timing requirement: only tells a wake-up (ms) from the 60 s timeout.
        assert!(
            slept < Duration::from_secs(30),
            "slept {slept:?}: the ring did not wake it"
        );
        // The caller left: no more rings.
        consumer.ring_answers();
        assert_eq!(consumer.answer_bell(), bell);
    }

    /// A caller killed while registered (its guard never dropped) keeps the rings going only
    /// until its deadline; a caller that returned, however long its timeout, stops them at once;
    /// a caller registered later rings them again and takes the expired slot.
    #[test]
    fn a_killed_callers_registration_expires_with_its_deadline() {
        let d = dir("answers-expire");
        let consumer = Control::open(&d).unwrap();
        let caller = Control::open(&d).unwrap();
        let rings = |now: u64| {
            let before = consumer.answer_bell();
            consumer.ring_answers_at(|| now);
            consumer.answer_bell() != before
        };
        let now = crate::util::monotonic_ms();
        drop(caller.wait_for_answers(Duration::from_secs(3600)));
        assert!(!rings(now), "a caller that returned keeps nothing ringing");

        std::mem::forget(caller.wait_for_answers(Duration::from_secs(5)));
        assert!(rings(now), "a caller waits: rung");
        assert!(rings(now + 4_000), "before its deadline: rung");
        assert!(
            !rings(now + 6_000),
            "past the deadline of the only caller, who is gone: not rung"
        );

        let later = caller.wait_for_answers(Duration::from_secs(60));
        assert!(rings(now + 6_000), "a new caller: rung again");
        drop(later);
        assert!(!rings(now + 6_000), "and no more once it returned");

        // A slot whose deadline has passed on the real clock is free for the next caller.
        let d2 = dir("answers-reuse");
        let consumer2 = Control::open(&d2).unwrap();
        let caller2 = Control::open(&d2).unwrap();
        std::mem::forget(caller2.wait_for_answers(Duration::ZERO));
        assert_eq!(slots_taken(&consumer2), 1);
        std::thread::sleep(Duration::from_millis(20));
        let next = caller2.wait_for_answers(Duration::from_secs(60));
        assert_eq!(
            slots_taken(&consumer2),
            1,
            "the new caller took the expired slot"
        );
        drop(next);
        assert_eq!(slots_taken(&consumer2), 0);
        assert_eq!(
            slots_taken(&consumer),
            1,
            "the first spool still holds the killed caller's slot"
        );
    }

    fn slots_taken(c: &Control) -> usize {
        let slots: [u64; SYNC_WAIT_SLOT_COUNT] = c.load_words(SYNC_WAIT_SLOTS);
        slots.iter().filter(|&&v| v != 0).count()
    }

    /// With every slot taken, further callers are counted, and ring like the others, until the
    /// latest deadline among them.
    #[test]
    fn callers_beyond_the_slots_are_counted() {
        let d = dir("answers-overflow");
        let consumer = Control::open(&d).unwrap();
        let caller = Control::open(&d).unwrap();
        let now = crate::util::monotonic_ms();
        let slotted: Vec<_> = (0..SYNC_WAIT_SLOT_COUNT)
            .map(|_| caller.wait_for_answers(Duration::from_secs(60)))
            .collect();
        let counted = caller.wait_for_answers(Duration::from_secs(60));
        assert_eq!(consumer.load(SYNC_WAITERS), 1);
        drop(slotted);
        let before = consumer.answer_bell();
        consumer.ring_answers_at(|| now);
        assert_eq!(
            consumer.answer_bell(),
            before + 1,
            "the counted caller waits"
        );
        drop(counted);
        assert_eq!(consumer.load(SYNC_WAITERS), 0);
        consumer.ring_answers_at(|| now);
        assert_eq!(consumer.answer_bell(), before + 1, "nobody waits");

        // A counted caller killed while waiting: rung for until its deadline, not after.
        let slotted: Vec<_> = (0..SYNC_WAIT_SLOT_COUNT)
            .map(|_| caller.wait_for_answers(Duration::from_secs(60)))
            .collect();
        std::mem::forget(caller.wait_for_answers(Duration::from_secs(90)));
        drop(slotted);
        consumer.ring_answers_at(|| now + 80_000);
        assert_eq!(consumer.answer_bell(), before + 2, "before its deadline");
        consumer.ring_answers_at(|| now + 100_000);
        assert_eq!(consumer.answer_bell(), before + 2, "past its deadline");
    }

    #[test]
    fn a_span_start_is_read_back_only_for_its_owner() {
        let d = dir("span");
        let owner = Control::open(&d).unwrap();
        let successor = Control::open(&d).unwrap();
        assert_eq!(successor.span_start(7), None, "nothing noted");
        let start = AppliedState {
            seq: 12,
            pos: SealedPos {
                segment: 3,
                end: 4096,
            },
            sealed_us: 5,
            token: 6,
            mode_kind: 1 << 8 | 1,
            wal_frames: 9,
        };
        owner.set_span_start(7, &start, [1, 2, 3, 4, 5]);
        owner.set_span_owner(7);
        assert_eq!(successor.span_start(7), Some((start, [1, 2, 3, 4, 5])));
        assert_eq!(successor.span_start(8), None, "another consumer's span");
        assert_eq!(successor.span_start(0), None, "no owner");
        // The applied state shares the record layout.
        owner.publish_applied(start);
        assert_eq!(successor.applied(), start);
    }

    #[test]
    fn pid_table_and_liveness() {
        let d = dir("pids");
        let c = Control::open(&d).unwrap();
        let me = std::process::id() as u64;
        assert!(c.register_pid(me));
        assert!(!c.others_alive(me));
        // pid 1 always exists.
        assert!(c.register_pid(1));
        assert!(c.others_alive(me));
        c.unregister_pid(1);
        assert!(!c.others_alive(me));
        assert!(!pid_alive(0));
    }

    #[test]
    fn clean_close_record_round_trips_and_a_torn_one_reads_as_none() {
        let d = dir("clean");
        let a = Control::open(&d).unwrap();
        let b = Control::open(&d).unwrap();
        assert_eq!(b.clean_close(), None);
        let stamp = |n: u64| FileStamp {
            dev: n,
            ino: n + 1,
            size: n + 2,
            mtime_ns: -(n as i64),
            ctime_ns: n as i64 * 1000,
        };
        let record = |seq: u64, wal: Option<FileStamp>| CleanClose {
            seq,
            lost_gen: 3,
            db: stamp(10),
            backup: stamp(20),
            wal,
        };
        a.set_clean_close(&record(7, None));
        assert_eq!(b.clean_close(), Some(record(7, None)));
        // A record at seq 0 (a resync's copy, nothing sealed yet) is a record too.
        a.set_clean_close(&record(0, Some(stamp(30))));
        assert_eq!(b.clean_close(), Some(record(0, Some(stamp(30)))));
        // A later record without a WAL stamp clears the earlier one's.
        a.set_clean_close(&record(9, None));
        assert_eq!(b.clean_close(), Some(record(9, None)));
        // A recorder killed inside the write leaves the lock odd: no record, and no spinning.
        a.word(CLEAN_LOCK).fetch_add(1, Ordering::AcqRel);
        assert_eq!(b.clean_close(), None);
    }

    #[test]
    fn foreign_file_is_rejected() {
        let d = dir("foreign");
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("control"), vec![0xAB; 4096]).unwrap();
        assert!(Control::open(&d).is_err());
    }

    #[test]
    fn a_deleted_spool_is_recreated_and_followed() {
        let d = dir("moved");
        let active = Control::open(&d).unwrap();
        let other = Control::open(&d).unwrap();
        active.publish_sealed(SealedState {
            seq: 9,
            pos: SealedPos {
                segment: 2,
                end: 50,
            },
            sealed_us: 1,
            ..Default::default()
        });
        assert!(!active.relocate_if_gone().unwrap(), "nothing happened yet");
        std::fs::remove_dir_all(&d).unwrap();
        // Both still work on the unlinked file...
        assert_eq!(other.sealed().seq, 9);
        // ...until the active consumer notices and recreates the spool.
        let gen_before = active.lost_gen();
        assert!(active.relocate_if_gone().unwrap());
        assert!(d.join("control").exists());
        assert_eq!(active.sealed().seq, 0, "a fresh stream");
        assert!(
            active.lost_gen() > gen_before,
            "the old stream's records are lost: resync"
        );
        // The other process follows at its next look and shares the new state.
        assert!(other.follow().unwrap());
        assert!(!other.follow().unwrap(), "following twice is a no-op");
        active.publish_sealed(SealedState {
            seq: 1,
            pos: SealedPos {
                segment: 1,
                end: 40,
            },
            sealed_us: 2,
            ..Default::default()
        });
        assert_eq!(other.sealed().seq, 1);
        let third = Control::open(&d).unwrap();
        assert_eq!(third.sealed().seq, 1, "newcomers open the new file");
    }
}
