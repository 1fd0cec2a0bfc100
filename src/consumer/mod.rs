//! The consumer thread of one database in this process: reads sealed records from the spool,
//! applies them to the backup in batches (`backup::apply`), repairs losses with a resync, trims
//! applied segments.
//!
//! Several processes may use one database; each runs a consumer thread, but only the one holding
//! the OFD lock on `<spool>/consumer.lock` is *active*. The others poll for the lock, so when the
//! active process exits or is killed (the kernel drops its lock) another takes over within one
//! poll interval, continuing from the cursor published in the control file.
//!
//! Invariants:
//! - It never takes a lock on the source database: source pages are read without locks and any
//!   page read while it was changing is overwritten by a record sealed afterwards (see `resync`).
//! - Records are applied in sequence order, each whole, several per batch; a batch is atomic on
//!   the backup. A gap in the sequence numbers, a torn sealed record, or a record that does not
//!   continue the previous one's source state (change counter, WAL frame position) means a change
//!   the spool does not have: resync, never guess.
//! - A segment is deleted only after every record in it is committed on the backup. Batches are
//!   applied in spans (`backup::apply`): visible to the backup's readers at once, committed
//!   durably when the span closes (idle, age, journal size, a `spool_sync` waiting, a close, a
//!   resync). A span that rolls back because its process died (`span_owner` in the control file
//!   tells the next active consumer) is replayed from the spool, from the applied state it began
//!   at (`span_start`), once the backup is proven to be back in exactly that state (its
//!   fingerprint then); anything short of that proof, and a span our own failure rolled back,
//!   is repaired by a resync.
//! - A panic in the loop body is caught, reported, and answered with a resync.
//! - Changes nobody captured are looked for: before each incremental apply the backup must still
//!   be the file we last wrote (device, inode, size, header counters), and while idle the source
//!   must still be in the state of the last applied record (change counter, committed WAL
//!   frames). Any difference means a write made without spoolvfs: resync.

pub mod cleanclose;
mod crashopen;
mod resync;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::backup::apply::{self, ApplyOptions, ApplyRequest};
use crate::backup::writeset::{Source, WriteSet};
use crate::config::Config;
use crate::dbstate::{DbState, Phase, lock};
use crate::spool::control::{AppliedState, Control, SPAN_BACKUP_WORDS};
use crate::spool::format::{RecordKind, SourceMode};
use crate::spool::reader::{Record, SegmentReader};
use crate::spool::writer::SealedPos;
use crate::spool::{list_segments, segment_path};
use crate::util::now_us;

pub use resync::SourceReader;

/// Upper bound of pages per batch (a single larger transaction is still applied whole).
const MAX_BATCH_PAGES: usize = 16_384;
/// How long an apply waits for readers of the backup to let go.
const LOCK_TIMEOUT: Duration = Duration::from_secs(10);
/// Consecutive failed steps after which the drain of a last close gives up before `drain_ms`
/// (retries are paced 50, 100, 150, 200 ms: about half a second).
const DRAIN_MAX_FAILURES: u32 = 5;
/// Idle tick: heartbeat, takeover polling, retry pacing; the longest a parked consumer sleeps.
const TICK: Duration = Duration::from_millis(50);
/// Poll interval of the shared tail while records are flowing (no wake-ups from writers then).
const POLL: Duration = Duration::from_millis(2);
/// How long after the last record the consumer keeps polling before it parks.
const STAY_AWAKE: Duration = Duration::from_secs(1);
/// Group commit on the backup: a batch is applied once its oldest record is this old (or the
/// backlog is large). Each batch takes the backup's EXCLUSIVE lock (waiting for its readers) and,
/// when it changes pages its span has not journaled yet, costs two journal syncs.
const GROUP_AGE_US: u64 = 8_000;
/// A span of batches on the backup (`backup::apply`) is committed once its last batch is this
/// old: a quiet source gets a durable backup soon after its last commit.
const SPAN_IDLE: Duration = Duration::from_millis(50);
/// ... or once the span is this old: about the most a kill -9 or power loss can take the backup
/// back (a resync then brings it forward again), and under a steady stream of commits what sets
/// the rate of the backup's own syncs (the application's fsyncs on the same device queue behind
/// each of them): ~3 per span.
const SPAN_MAX_AGE: Duration = Duration::from_millis(250);
/// ... or once its journal holds this much.
const SPAN_MAX_JOURNAL: u64 = 32 << 20;
/// Backlog (transactions) that triggers an apply without waiting for `GROUP_AGE_US`.
const GROUP_MAX_RECORDS: u64 = 512;
/// Bytes after which a segment is closed and the next transaction starts a new one.
const ROTATE_AT: u64 = 64 << 20;
/// A batch of at least this many pages (64 MiB of 4 KiB pages) returns the heap it freed (its
/// page lists, its write set) to the system once applied (`util::release_free_heap`).
const TRIM_AFTER_PAGES: usize = 16_384;
/// How often an idle consumer checks the source for changes made without spoolvfs.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What identifies the backup file as the one we last wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint {
    dev: u64,
    ino: u64,
    len: u64,
    counters: [u8; 16],
}

impl Fingerprint {
    /// As the control file keeps it with a span's start.
    fn to_words(self) -> [u64; SPAN_BACKUP_WORDS] {
        let (lo, hi) = self.counters.split_at(8);
        let word = |b: &[u8]| u64::from_le_bytes(b.try_into().expect("8 bytes"));
        [self.dev, self.ino, self.len, word(lo), word(hi)]
    }
}

fn fingerprint(path: &std::path::Path) -> io::Result<Option<Fingerprint>> {
    use std::os::unix::fs::{FileExt, MetadataExt};
    // Through the shared descriptor: opening and closing one would drop the POSIX locks of the
    // application's own readers of the backup (`backup::handle`).
    let Some(f) = crate::backup::handle::open(path, false)? else {
        return Ok(None);
    };
    let m = f.metadata()?;
    let mut counters = [0u8; 16];
    if m.len() >= 40 {
        f.read_exact_at(&mut counters, 24)?;
    }
    Ok(Some(Fingerprint {
        dev: m.dev(),
        ino: m.ino(),
        len: m.len(),
        counters,
    }))
}

/// Where the consumer reads next.
struct Cursor {
    reader: Option<SegmentReader>,
    /// Segment and position to open when `reader` is `None`.
    at: SealedPos,
}

struct Consumer {
    state: Arc<DbState>,
    source: Box<dyn SourceReader>,
    cursor: Cursor,
    /// Consecutive failures, for backoff.
    failures: u32,
    /// The consumer lock file, held (OFD write lock) while active.
    lock_file: Option<File>,
    pid: u64,
    /// The backup as we left it after our last apply (`None`: not known yet).
    backup_fp: Option<Fingerprint>,
    /// The span of batches open on the backup, if any (`backup::apply`).
    span: Option<apply::Span>,
    last_check: Instant,
    /// When a record was last applied (the consumer polls for a while after).
    last_work: Instant,
    /// `bytes_captured` at the last look, and when it last changed (this process writing).
    seen_captured: u64,
    /// The doorbell's value read before the current step looked for work: the step's sleep
    /// ends at once if anyone rang since (`Control::sleep_on_bell`).
    bell_seen: u32,
    last_local_write: Instant,
    /// The drain of the last close cannot finish: a resync must wait for a hot journal that only
    /// a later opener of the database rolls back. The close then ends without waiting out
    /// `drain_ms`; the resync stays pending in the control file for whoever opens next.
    drain_blocked: bool,
    /// The `spool_sync` requests being answered, once one is seen (`SyncRound`).
    sync_round: Option<SyncRound>,
}

/// `spool_sync` requests being answered (control file `sync_requested`): every request up to
/// `upto` took its ticket after its caller read the sealed state it waits for, and `sealed_seq`
/// was read after `upto`. So a record sealed after `sealed_seq`, once applied, answers them all:
/// its chain check shows the source had no change made without spoolvfs before they were made.
#[derive(Clone, Copy)]
struct SyncRound {
    upto: u64,
    sealed_seq: u64,
}

/// Creates the state of a newly opened database and starts its consumer. `page1` and `size`
/// describe the source file as found at open; `open_source` opens the consumer's reader of it,
/// on the consumer's thread (its descriptor table: `fdtable`), when it first needs it.
pub fn start(
    cfg: Config,
    page1: &[u8],
    size: u64,
    open_source: Box<dyn Fn() -> io::Result<Box<dyn SourceReader>> + Send>,
) -> Result<Arc<DbState>, String> {
    let control = Control::open(&cfg.spool)
        .map_err(|e| format!("cannot use spool directory {}: {e}", cfg.spool.display()))?;
    let control = Arc::new(control);
    let pid = std::process::id() as u64;
    control.register_pid(pid);
    let writer = crate::spool::writer::SpoolWriter::new(cfg.spool.clone(), cfg.durable, ROTATE_AT);
    let wal_path = cfg.db_file("-wal");
    let boot_then = control.swap_boot_id(crashopen::boot_id());
    // Nothing vouches for the backup when no other live process keeps it (changes may have been
    // made while nobody watched), unless the last close recorded the files as they still are, or
    // every process was killed but the files are provably as they left them, or when no resync
    // ever completed in this spool: verify it. Done here, at open, so that a `spool_sync` right
    // after the open waits for that verification.
    let first = !control.others_alive(pid);
    let clean_open = first && control.resyncs() > 0 && cleanclose::vouches(&control, &cfg);
    let (vouched, open_check) = match (first, clean_open) {
        (false, _) => (false, None),
        (true, true) => (true, Some("clean close recorded".to_string())),
        (true, false) => match crashopen::vouches(&control, &cfg, boot_then, page1) {
            Ok(()) => (
                true,
                Some("files as the crashed processes left them".to_string()),
            ),
            Err(why) => (false, Some(format!("resync: {why}"))),
        },
    };
    if !vouched && (first || control.resyncs() == 0) {
        control.bump_lost();
    }
    // A span left open by a crashed consumer: its successor checks the backup as it takes over.
    let backup_fp = if vouched && control.span_owner() == 0 {
        fingerprint(&cfg.backup).ok().flatten()
    } else {
        None
    };
    let capture = crate::capture::Capture::new(writer, control.clone(), wal_path, page1, size);
    let state = DbState::new(cfg, control, capture);
    {
        let mut p = lock(&state.progress);
        p.clean_open = clean_open;
        p.open_check = open_check;
    }
    let source = Box::new(resync::LazySource::new(open_source));
    let mut consumer = Consumer {
        state: state.clone(),
        source,
        cursor: Cursor {
            reader: None,
            at: SealedPos::default(),
        },
        failures: 0,
        lock_file: None,
        pid,
        backup_fp,
        span: None,
        last_check: Instant::now(),
        last_work: Instant::now(),
        seen_captured: 0,
        bell_seen: 0,
        last_local_write: Instant::now(),
        drain_blocked: false,
        sync_round: None,
    };
    let handle = std::thread::Builder::new()
        .name("spoolvfs-consumer".to_string())
        .spawn(move || consumer.run())
        .map_err(|e| format!("starting the consumer thread: {e}"))?;
    *lock(&state.consumer) = Some(handle);
    Ok(state)
}

/// Called by the last close in this process: lets the consumer drain for up to `drain_ms`, then
/// joins it and unregisters the process from the control file.
pub fn shutdown(state: &Arc<DbState>) {
    {
        let mut p = lock(&state.progress);
        p.stop_by = Some(Instant::now() + Duration::from_millis(state.cfg.drain_ms));
    }
    state.ring();
    if let Some(h) = lock(&state.consumer).take() {
        let _ = h.join();
    }
    crate::ffi::logq::deliver_queued();
    // Descriptors of the process's table the consumer dropped last (`fdtable`): closed here,
    // not at some later transaction that may never come.
    crate::fdtable::close_deferred();
    state.control.unregister_pid(std::process::id() as u64);
}

/// Takes a non-blocking OFD write lock on the whole of `f`.
fn try_ofd_lock(f: &File) -> io::Result<bool> {
    // SAFETY: flock is plain data; all-zero is a valid value which we then fill in.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: valid fd owned by `f`; F_OFD_SETLK with a properly initialised flock (l_pid = 0).
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EAGAIN) | Some(libc::EACCES) => Ok(false),
        _ => Err(e),
    }
}

enum Step {
    /// Work was done; look again at once.
    Progress,
    /// Nothing to do.
    Idle,
}

impl Consumer {
    fn run(&mut self) {
        // The last close joins this thread: it must never wait in the application's log callback.
        crate::ffi::logq::mark_background();
        // Before this thread opens anything: its own descriptor table (`fdtable`), which gives
        // the application's threads back the kernel's single-owner descriptor lookups. Without
        // it everything still works, only slower.
        if let Err(e) = crate::fdtable::leave_shared() {
            crate::ffi::log(
                libsqlite3_sys::SQLITE_WARNING,
                &format!(
                    "spoolvfs: {}: the consumer thread shares the process's descriptor table \
                     (unshare: {e}); the application's system calls cost more",
                    self.state.cfg.db.display()
                ),
            );
        }
        lower_priority();
        loop {
            crate::fdtable::close_deferred();
            self.bell_seen = self.state.control.bell();
            let outcome = catch_unwind(AssertUnwindSafe(|| self.step()));
            let step = match outcome {
                Ok(Ok(step)) => {
                    // `last_error` keeps the problem for the record (see spool_status); `state`
                    // says whether we are failing now.
                    self.failures = 0;
                    step
                }
                Ok(Err(e)) => {
                    self.failures += 1;
                    self.state.report_error(e);
                    Step::Idle
                }
                Err(_) => {
                    self.failures += 1;
                    self.cursor.reader = None;
                    // Dropped without a close: its RESERVED stays with the backup's description
                    // until the resync's recovery rolls its journal back and unlocks.
                    self.span = None;
                    self.state
                        .report_error("internal error (panic) in the consumer; resyncing".into());
                    self.state.control.bump_lost();
                    Step::Idle
                }
            };
            // Served tickets, committed records, a resync: wake `spool_sync` callers, if any.
            self.state.control.ring_answers();
            if self.should_stop() {
                break;
            }
            maintain_mapping(&self.state);
            if let Step::Idle = step {
                self.idle_wait();
            }
        }
        if self.lock_file.is_some() {
            self.close_span_or_report();
            self.record_clean_close();
            self.state.control.set_consumer(0, now_us());
        }
        lock(&self.state.progress).phase = Phase::Stopped;
        self.state.control.ring_answers();
        crate::fdtable::end_private_table();
    }

    /// Stopping as the active consumer: if this is a clean close (caught up, nobody else uses
    /// the database), records it so the next first open needs no resync (`cleanclose`).
    fn record_clean_close(&mut self) {
        let c = &self.state.control;
        if lock(&self.state.progress).stop_by.is_none()
            || !self.caught_up()
            || c.others_alive(self.pid)
        {
            return;
        }
        let backup_fp_ok = self.backup_fp.is_some()
            && fingerprint(&self.state.cfg.backup).ok().flatten() == self.backup_fp;
        if let Err(why) = cleanclose::record(&self.state, self.source.as_mut(), backup_fp_ok) {
            crate::ffi::log(
                libsqlite3_sys::SQLITE_NOTICE,
                &format!(
                    "spoolvfs: {}: no clean-close record ({why}); the next first open resyncs",
                    self.state.cfg.db.display()
                ),
            );
        }
    }

    /// Sleeps until there may be work: a short poll while records flow, a longer parked sleep
    /// when quiet, and backoff after failures (full disk, unwritable backup: 50 ms .. 1 s). Every
    /// sleep is on the control file's doorbell, so a ring from any process ends it: a seal made
    /// while this consumer is parked, a `spool_sync` request, a loss, a close.
    fn idle_wait(&mut self) {
        let c = &self.state.control;
        if self.failures > 0 {
            c.sleep_on_bell(self.bell_seen, TICK * self.failures.min(20));
            return;
        }
        let captured = self.state.bytes_captured.load(Ordering::Relaxed);
        if captured != self.seen_captured {
            // This process is writing: keep its mapping populated ahead, at the poll cadence.
            self.seen_captured = captured;
            self.last_local_write = Instant::now();
        }
        let active = self.lock_file.is_some();
        let busy = (active && self.last_work.elapsed() < STAY_AWAKE)
            || self.last_local_write.elapsed() < STAY_AWAKE;
        if busy {
            c.sleep_on_bell(self.bell_seen, POLL);
            return;
        }
        // Say we park before the last look at the sealed state; a writer says it sealed before it
        // reads the flags (`DbState::publish_sealed`): one of the two sees the other.
        self.state.parked.store(true, Ordering::SeqCst);
        if active {
            c.set_consumer_parked(true);
        }
        std::sync::atomic::fence(Ordering::SeqCst);
        if !active || c.sealed().seq <= c.applied().seq {
            c.sleep_on_bell(self.bell_seen, self.parked_sleep());
        } else {
            // A record is pending, too young to apply yet (group commit): look again at the
            // poll cadence rather than spinning until it is old enough.
            c.sleep_on_bell(self.bell_seen, POLL);
        }
        if active {
            c.set_consumer_parked(false);
        }
        self.state.parked.store(false, Ordering::SeqCst);
    }

    /// How long a parked consumer sleeps unless rung: one tick (heartbeat, takeover polling,
    /// changes made without spoolvfs). Test builds can stretch it to prove that rings wake it.
    fn parked_sleep(&self) -> Duration {
        if crate::faults::active("parked_sleeps_long") {
            return Duration::from_secs(120);
        }
        TICK
    }

    fn caught_up(&self) -> bool {
        let c = &self.state.control;
        c.applied().seq >= c.sealed().seq && c.resynced_gen() >= c.lost_gen()
    }

    fn should_stop(&self) -> bool {
        let Some(stop_by) = lock(&self.state.progress).stop_by else {
            return false;
        };
        // A passive consumer has nothing to drain; the active one drains until caught up, or
        // until nothing more can happen before the next open: the drain is blocked, or its steps
        // keep failing (a source or backup that cannot be read or written now will not be in the
        // next few seconds either; what is left stays in the spool for whoever opens next).
        self.lock_file.is_none()
            || self.caught_up()
            || self.drain_blocked
            || self.failures >= DRAIN_MAX_FAILURES
            || Instant::now() >= stop_by
    }

    /// Seals this process's transaction that ended with a rollback but got no end event after its
    /// journal was finalized (exclusive locking mode: no unlock), so that the bytes its spill and
    /// playback left in free pages reach the backup without waiting for the next transaction.
    ///
    /// Only when this thread can seal without the writer's descriptors (`can_seal_here`: this
    /// thread has a descriptor table of its own); otherwise the application's next write,
    /// `spool_sync` or close seals it.
    fn seal_finished_rollback(&mut self) {
        let mut file = HeaderOnly(&mut self.source);
        let out = {
            let mut capture = lock(&self.state.capture);
            if !capture.spool.can_seal_here() {
                return;
            }
            capture.seal_finished_rollback(Duration::from_millis(50), &mut file)
        };
        self.state.publish(out);
    }

    /// Handles a spool directory that was deleted or replaced while in use: the active consumer
    /// recreates the control file (marking the old one moved), everyone else follows; either way
    /// this consumer starts over on the new spool (its lock, its cursor) and the loss of the old
    /// stream's records is repaired by a resync.
    fn follow_spool(&mut self) -> Result<(), String> {
        let c = self.state.control.clone();
        let err = |e: io::Error| format!("spool directory {}: {e}", self.state.cfg.spool.display());
        let moved = c.follow().map_err(err)?
            || (self.lock_file.is_some() && c.relocate_if_gone().map_err(err)?);
        if moved {
            self.close_span_or_report();
            self.state.report_error(format!(
                "spool directory {} was deleted or replaced: recreated, resyncing",
                self.state.cfg.spool.display()
            ));
            self.lock_file = None;
            self.cursor = Cursor {
                reader: None,
                at: SealedPos::default(),
            };
            self.forget_backup_fp();
            lock(&self.state.progress).active = false;
        }
        Ok(())
    }

    /// Becomes the active consumer if the lock is free. On becoming active without any other
    /// live user of the database, nothing vouches for the backup: verify it with a resync.
    fn try_activate(&mut self) -> Result<bool, String> {
        if self.lock_file.is_some() {
            return Ok(true);
        }
        let path = self.state.cfg.spool.join("consumer.lock");
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        if !try_ofd_lock(&f).map_err(|e| format!("locking {}: {e}", path.display()))? {
            return Ok(false);
        }
        self.lock_file = Some(f);
        let c = self.state.control.clone();
        c.set_consumer(self.pid, now_us());
        // A predecessor killed while parked left its flag: writers would ring on every seal.
        c.set_consumer_parked(false);
        let owner = c.span_owner();
        if owner != 0 {
            // The consumer before us stopped without committing its span: the backup rolls back
            // (or already did) to the span's start, behind the applied state.
            match self.roll_back_dead_span(owner) {
                Ok(start) => {
                    self.publish_committed(start);
                    self.state.report_error(format!(
                        "process {owner} stopped with batches uncommitted on the backup: rolled \
                         back to transaction {}, replaying the spool from there",
                        start.seq
                    ));
                }
                Err(why) => {
                    self.state.report_error(format!(
                        "process {owner} stopped with batches uncommitted on the backup ({why}): \
                         resyncing"
                    ));
                    c.bump_lost();
                }
            }
            c.set_span_owner(0);
        } else {
            // Nothing is open on the backup: what it shows is committed.
            c.set_committed_seq(c.applied().seq);
        }
        let a = c.applied();
        self.cursor = Cursor {
            reader: None,
            at: a.pos,
        };
        lock(&self.state.progress).active = true;
        Ok(true)
    }

    /// Tells the control file that the backup, as our fingerprint of it says, shows the applied
    /// state `seq` (for the first open after a crash, `crashopen`).
    fn publish_backup_fp(&self, seq: u64) {
        let fp = self.backup_fp.map(|fp| (seq, fp.to_words()));
        self.state.control.set_backup_fp(fp);
    }

    /// The backup is not known to be as we left it: no fingerprint vouches for it, here or in the
    /// control file.
    fn forget_backup_fp(&mut self) {
        self.backup_fp = None;
        self.state.control.set_backup_fp(None);
    }

    /// Publishes `applied` as the backup's state with no span open on it: applied, committed, and
    /// our fingerprint of the backup as the one that goes with it.
    fn publish_committed(&self, applied: AppliedState) {
        let c = &self.state.control;
        c.publish_applied(applied);
        c.set_committed_seq(applied.seq);
        self.publish_backup_fp(applied.seq);
    }

    /// Takes the backup back to where the dead consumer `owner`'s span began, so that the spool
    /// is replayed from there: rolls back the span's hot journal (unless a reader of the backup
    /// already did), then requires the backup to be exactly as the span found it (same file,
    /// size and header counters, which every batch of committed transactions moves). Anything
    /// else (no start noted, a span that committed before its owner died, a replaced backup)
    /// is for a resync to repair.
    fn roll_back_dead_span(&mut self, owner: u64) -> Result<AppliedState, String> {
        let c = &self.state.control;
        let (start, backup_then) = c
            .span_start(owner)
            .ok_or("no record of where its span began")?;
        let backup = &self.state.cfg.backup;
        apply::recover(backup, LOCK_TIMEOUT)
            .map_err(|e| format!("rolling back {}: {e}", backup.display()))?;
        let now = fingerprint(backup).map_err(|e| format!("reading {}: {e}", backup.display()))?;
        if now.map(Fingerprint::to_words) != Some(backup_then) {
            return Err("the backup is not as the span found it".into());
        }
        self.backup_fp = now;
        Ok(start)
    }

    fn step(&mut self) -> Result<Step, String> {
        if crate::faults::active("consumer_panic") {
            panic!("injected consumer panic");
        }
        self.follow_spool()?;
        self.seal_finished_rollback();
        if !self.try_activate()? {
            self.set_phase(Phase::Live);
            return Ok(Step::Idle);
        }
        let c = self.state.control.clone();
        c.set_consumer(self.pid, now_us());
        if let Some(msg) = self.dead_txn_owner() {
            self.state.report_error(msg);
            c.bump_lost();
        }
        // Read before the sealed state (see `SyncRound`); `spool_sync` callers in any process.
        let requested = c.sync_requested();
        let wanted = requested > c.sync_served();
        self.close_span_if_due()?;
        if c.resynced_gen() < c.lost_gen() {
            self.close_span_or_report();
            self.set_phase(Phase::Resyncing);
            let r = resync::run(self);
            self.set_phase(if r.is_ok() {
                Phase::Live
            } else {
                Phase::Failing
            });
            return r.map(|()| Step::Progress);
        }
        let sealed = c.sealed();
        let applied = c.applied();
        if wanted && self.sync_round.is_none() {
            self.sync_round = Some(SyncRound {
                upto: requested,
                sealed_seq: sealed.seq,
            });
        }
        if applied.seq >= sealed.seq {
            c.set_behind_since(0);
            self.set_phase(Phase::Live);
            if wanted {
                // What a `spool_sync` caller is promised must be durable.
                self.close_span()?;
            }
            if wanted || self.last_check.elapsed() >= CHECK_EVERY {
                self.last_check = Instant::now();
                let changed = self
                    .source_changed()
                    .map_err(|e| format!("checking the source: {e}"))?;
                if let Some(why) = changed {
                    // Not answered: the resync comes first, then a clean look.
                    return self.lost(&why);
                }
            }
            if wanted {
                // Caught up, committed, and the source checked after the requests were read.
                c.serve_sync(requested);
                self.sync_round = None;
            }
            return Ok(Step::Idle);
        }
        // Busy: records follow, and the chain check on them catches foreign changes made before
        // them. Requests are answered once a record sealed after them is applied and committed
        // (`SyncRound`); until then, catching up leads to the idle branch, which looks.
        let oldest = c.behind_since();
        let young = oldest != 0 && now_us().saturating_sub(oldest) < GROUP_AGE_US;
        let stopping = lock(&self.state.progress).stop_by.is_some();
        if young && sealed.seq - applied.seq < GROUP_MAX_RECORDS && !stopping && !wanted {
            return Ok(Step::Idle);
        }
        let started = Instant::now();
        let records = self
            .read_batch(sealed.pos)
            .map_err(|e| format!("reading the spool: {e}"))?;
        let records = match records {
            Ok(records) => records,
            Err(why) => {
                return self.lost(&format!("the spool lost data published as sealed: {why}"));
            }
        };
        let Some(first) = records.first() else {
            return Ok(Step::Idle);
        };
        c.set_behind_since(first.info.sealed_us);
        let mut prev = applied;
        for r in &records {
            if let Err(why) = chain_check(&prev, r) {
                return self.lost(&why);
            }
            prev = applied_after(r);
        }
        if let Some(fp) = self.backup_fp {
            let now = fingerprint(&self.state.cfg.backup)
                .map_err(|e| format!("checking the backup: {e}"))?;
            if now != Some(fp) {
                return self.lost("the backup was changed, replaced or deleted outside spoolvfs");
            }
        }
        let last = records.last().map(|r| r.info).ok_or("empty batch")?;
        let bump = bump_needed(&records);
        let huge = records.iter().map(|r| r.pages.len()).sum::<usize>() >= TRIM_AFTER_PAGES;
        let mut writes = WriteSet::new();
        add_records(
            &mut writes,
            &records,
            self.cursor.reader.as_ref().map(|r| r.file.clone()),
        );
        // Scattered pages cost a list entry each: not kept through the apply.
        drop(records);
        // Someone waits in `spool_sync`, or the last close drains: commit the span before the new
        // state is published, so what they were promised is durable.
        let keep_open = !stopping && !wanted;
        let applied_now = self.apply_sized(
            writes,
            last.db_size,
            last.page_size,
            bump,
            started,
            keep_open,
        );
        if let Err(e) = applied_now {
            // Reading advanced the cursor past records that are not in the backup: go back to
            // the last applied position so the retry reads them again.
            self.cursor = Cursor {
                reader: None,
                at: applied.pos,
            };
            return Err(e);
        }
        c.publish_applied(prev);
        self.publish_backup_fp(prev.seq);
        if huge {
            crate::util::release_free_heap();
        }
        if self.span.is_none() {
            c.set_committed_seq(prev.seq);
            if let Some(round) = self.sync_round.filter(|r| prev.seq > r.sealed_seq) {
                c.serve_sync(round.upto);
                self.sync_round = None;
            }
        }
        self.last_work = Instant::now();
        if c.sealed().seq == prev.seq {
            c.set_behind_since(0);
        }
        // An open span may be rolled back to its start and replayed from the spool (a takeover
        // after our death): keep the segments from there.
        let keep_from = match &self.span {
            Some(_) => c
                .span_start(self.pid)
                .map_or(0, |(start, _)| start.pos.segment),
            None => prev.pos.segment,
        };
        self.trim_before(keep_from.min(prev.pos.segment));
        self.set_phase(Phase::Live);
        Ok(Step::Progress)
    }

    /// Compares the source with the state after the last applied record, when nothing is pending.
    /// `Some(reason)` when it changed without spoolvfs.
    fn source_changed(&mut self) -> io::Result<Option<String>> {
        let c = self.state.control.clone();
        let a = c.applied();
        if a.mode_kind == 0 || c.txn_owner() != 0 {
            return Ok(None);
        }
        let mut hdr = [0u8; crate::dbheader::HEADER_LEN];
        self.source.read_at(&mut hdr, 0)?;
        let verdict = if a.mode_kind >> 8 == SourceMode::Rollback as u64 {
            match crate::dbheader::change_counter(&hdr) {
                _ if crate::dbheader::is_wal_format(&hdr) => {
                    Some("the source switched to WAL mode without spoolvfs".to_string())
                }
                Some(n) if n != a.token as u32 && crate::dbheader::page_size(&hdr).is_some() => {
                    Some(format!(
                        "the source's change counter is {n}, expected {}: written without spoolvfs",
                        a.token as u32
                    ))
                }
                _ => None,
            }
        } else {
            match File::open(self.state.cfg.db_file("-wal")) {
                Err(_) => None,
                Ok(f) => {
                    match crate::wal::committed_after(&f, a.wal_frames)? {
                        // Same generation: frames committed past our last record are foreign.
                        Some((h, committed)) if h.salts() == a.token => (committed > a.wal_frames)
                            .then(|| {
                                format!(
                                    "WAL frames {}..{committed} were committed without spoolvfs",
                                    a.wal_frames
                                )
                            }),
                        // Another generation (a restart; ours would show in `sealed`), or frame
                        // `wal_frames - 1` is not ours any more: only a commit in the new
                        // generation is foreign. A restart by a transaction that then rolled back
                        // leaves new-generation frames but no commit, and frames up to
                        // `wal_frames` may then carry the new salts without being committed:
                        // count from frame 0.
                        _ => match crate::wal::committed_after(&f, 0)? {
                            Some((h, n)) if n > 0 && h.salts() != a.token => Some(
                                "the WAL was restarted and written without spoolvfs".to_string(),
                            ),
                            _ => None,
                        },
                    }
                }
            }
        };
        // A writer of ours may have committed while we looked: then its record will tell.
        if verdict.is_some() && (c.sealed().seq != a.seq || c.txn_owner() != 0) {
            return Ok(None);
        }
        Ok(verdict)
    }

    /// Records a loss the consumer found; the next step resyncs.
    fn lost(&mut self, why: &str) -> Result<Step, String> {
        self.state.report_error(format!("{why}: resyncing"));
        self.state.control.bump_lost();
        self.cursor.reader = None;
        Ok(Step::Progress)
    }

    /// A transaction left open by a process that no longer exists.
    fn dead_txn_owner(&self) -> Option<String> {
        let owner = self.state.control.txn_owner();
        if owner == 0 || owner == self.pid || crate::spool::control::pid_alive(owner) {
            return None;
        }
        self.state
            .control
            .clear_txn_owner_if(owner)
            .then(|| format!("process {owner} died with an unsealed transaction"))
    }

    fn set_phase(&self, phase: Phase) {
        let mut p = lock(&self.state.progress);
        if p.phase != phase {
            p.phase = phase;
        }
    }

    /// Reads the next records up to the sealed position `limit`. `Ok(Err(why))` means the spool
    /// lost data that was published as sealed.
    fn read_batch(&mut self, limit: SealedPos) -> io::Result<Result<Vec<Record>, String>> {
        let state = &self.state;
        let mut upkeep = || maintain_mapping(state);
        loop {
            if self.cursor.reader.is_none() {
                let at = self.cursor.at;
                let segment = if at.segment == 0 { 1 } else { at.segment };
                match SegmentReader::open(&self.state.cfg.spool, segment) {
                    Ok(mut r) => {
                        if at.segment == segment && at.end > r.pos {
                            r.pos = at.end;
                        }
                        self.cursor.reader = Some(r);
                    }
                    Err(e) => return Ok(Err(e.to_string())),
                }
            }
            let Some(reader) = self.cursor.reader.as_mut() else {
                return Ok(Err("no spool segment to read".into()));
            };
            let current = reader.no;
            let seg_limit = (current == limit.segment).then_some(limit.end);
            let out = reader.read_records_with(seg_limit, MAX_BATCH_PAGES, &mut upkeep)?;
            if !out.records.is_empty() {
                return Ok(Ok(out.records));
            }
            if current >= limit.segment {
                if out.torn {
                    return Ok(Err(format!(
                        "spool segment {current} ends before its last sealed record"
                    )));
                }
                if current > limit.segment {
                    return Ok(Err(format!(
                        "the stream went on to segment {current}, past the sealed tail"
                    )));
                }
                return Ok(Ok(Vec::new()));
            }
            // The stream moved on to the next segment: this one is exhausted (bytes after its
            // last sealed record are an abandoned transaction).
            self.cursor.reader = None;
            self.cursor.at = SealedPos {
                segment: current + 1,
                end: 0,
            };
        }
    }

    /// Applies `writes` to the backup in the open span (or a new one) and counts them; commits
    /// the span unless `keep_open`. `busy_since` is when the consumer started on them (reading
    /// the batch, or the resync's compare), for `apply_ms`.
    fn apply_sized(
        &mut self,
        writes: WriteSet,
        size: u64,
        page_size: u32,
        bump: bool,
        busy_since: Instant,
        keep_open: bool,
    ) -> Result<(), String> {
        let req = ApplyRequest {
            writes,
            final_size: size,
            page_size,
            bump_counter_if_unchanged: bump,
        };
        let c = self.state.control.clone();
        if self.span.is_none() {
            // Before the span can exist: should we die with it open, the next consumer knows,
            // and where it began (the backup as it is now: the applied state, checked by the
            // caller against the fingerprint of our last apply) so that it can replay from there.
            // Without a fingerprint (none yet, or a resync) it can only resync.
            let fp = self
                .backup_fp
                .map_or([0; SPAN_BACKUP_WORDS], Fingerprint::to_words);
            c.set_span_start(self.pid, &c.applied(), fp);
            c.set_span_owner(self.pid);
        }
        // The backup is about to change: until the new state is published, no fingerprint of it
        // stands for an applied state.
        c.set_backup_fp(None);
        let result = match crate::faults::io_error("backup_eio", libc::EIO) {
            Some(e) => Err(apply::ApplyFailure::from(e)),
            None => apply::apply_batch_with(
                &mut self.span,
                &self.state.cfg.backup,
                req,
                &apply_options(),
                &mut || maintain_mapping(&self.state),
            ),
        };
        // Only a fingerprint taken after a successful apply vouches for the backup.
        self.backup_fp = None;
        let report = match result {
            Ok(report) => report,
            Err(f) => {
                if f.reverted {
                    c.bump_lost();
                } else if self.span.is_none() {
                    c.set_span_owner(0);
                }
                return Err(format!(
                    "applying to backup {}: {}{}",
                    self.state.cfg.backup.display(),
                    f.error,
                    if f.reverted { "; resyncing" } else { "" }
                ));
            }
        };
        if !keep_open {
            self.close_span()?;
        }
        self.backup_fp = fingerprint(&self.state.cfg.backup).ok().flatten();
        let mut p = lock(&self.state.progress);
        p.bytes_applied += report.bytes_written;
        p.pages_applied += report.pages_written;
        p.batches += 1;
        p.apply_us += busy_since.elapsed().as_micros() as u64;
        Ok(())
    }

    /// Commits the open span on the backup, if any. On failure the backup goes back to the
    /// span's start, behind the published applied state: resync.
    fn close_span(&mut self) -> Result<(), String> {
        if self.span.is_none() {
            return Ok(());
        }
        let c = &self.state.control;
        match apply::close_span(&mut self.span, &apply_options()) {
            Ok(()) => {
                c.set_span_owner(0);
                c.set_committed_seq(c.applied().seq);
                Ok(())
            }
            Err(e) => {
                self.forget_backup_fp();
                self.state.control.bump_lost();
                Err(format!(
                    "committing to backup {}: {e}; resyncing",
                    self.state.cfg.backup.display()
                ))
            }
        }
    }

    /// `close_span` where the caller goes on either way (a failure already asked for a resync).
    fn close_span_or_report(&mut self) {
        if let Err(e) = self.close_span() {
            self.state.report_error(e);
        }
    }

    /// Commits the open span once it is idle, old or large (`SPAN_*`).
    fn close_span_if_due(&mut self) -> Result<(), String> {
        let due = self.span.as_ref().is_some_and(|s| {
            s.last_batch().elapsed() >= SPAN_IDLE
                || s.opened().elapsed() >= SPAN_MAX_AGE
                || s.journal_len() >= SPAN_MAX_JOURNAL
        });
        if due { self.close_span() } else { Ok(()) }
    }

    /// Deletes segments older than `segment`: all their records are committed on the backup (the
    /// caller keeps those of an open span, which a takeover may replay).
    fn trim_before(&self, segment: u64) {
        if let Ok(list) = list_segments(&self.state.cfg.spool) {
            for n in list.into_iter().filter(|&n| n < segment) {
                let _ = std::fs::remove_file(segment_path(&self.state.cfg.spool, n));
            }
        }
    }
}

/// Keeps this process's spool mapping ready for its writer: the window ahead populated, so
/// commits copy into memory that is already mapped (no page fault on the commit path), and the
/// written pages behind released (no TLB shootdown on the commit path either). Run after every
/// consumer step and also from inside long ones: while the consumer reads and applies a bulk
/// transaction of tens of MiB (~100 ms), a bulk writer of the same process ran past the populated
/// window and took the page faults itself (measured by hand: ~3,100 writer faults for a
/// 3 x 43 MB bulk load in DELETE mode, ~3.7 % of the writer's samples). Takes the capture lock
/// only to compute the ranges, like a capture event; never called while it is held.
fn maintain_mapping(state: &DbState) {
    let upkeep = lock(&state.capture).spool.maintenance();
    upkeep.run();
}

fn apply_options() -> ApplyOptions {
    ApplyOptions {
        lock_timeout: LOCK_TIMEOUT,
        sync: true,
        fail_at: None,
    }
}

/// Makes this thread yield the CPU to the application's threads: the backup is background work,
/// and on a small machine every cycle it takes from a writer shows up in commit latency. Only
/// this thread's nice value changes (Linux threads have their own).
fn lower_priority() {
    // SAFETY: gettid and setpriority have no memory-safety preconditions; PRIO_PROCESS with a
    // thread id applies to that thread only. Failure just leaves the priority as it was.
    unsafe {
        let tid = libc::gettid();
        let now = libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t);
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, (now + 10).min(19));
    }
}

/// The applied state after record `r`.
fn applied_after(r: &Record) -> AppliedState {
    let pos = SealedPos {
        segment: r.segment,
        end: r.end,
    };
    AppliedState::of(r.seq, pos, &r.info)
}

/// Checks that record `r` directly follows the applied state `prev`: the next sequence number,
/// and a source state that continues the previous one. Rollback mode: the change counter moves by
/// at most one per transaction (it stays put in exclusive locking mode). WAL mode, same WAL
/// generation (salts): the transaction's first frame follows the previous commit frame; another
/// generation: it is frame 0.
fn chain_check(prev: &AppliedState, r: &Record) -> Result<(), String> {
    if prev.seq != 0 && r.seq != prev.seq + 1 {
        return Err(format!(
            "spool sequence gap: transaction {} follows {}",
            r.seq, prev.seq
        ));
    }
    let prev_mode = prev.mode_kind >> 8;
    if prev.seq == 0 || prev_mode != r.info.mode as u64 {
        return Ok(());
    }
    match r.info.mode {
        SourceMode::Rollback => {
            let (a, b) = (prev.token as u32, r.info.token as u32);
            if b != a && b != a.wrapping_add(1) {
                return Err(format!(
                    "the source's change counter went from {a} to {b}: a change was made without spoolvfs"
                ));
            }
        }
        SourceMode::Wal => {
            if prev.token == r.info.token && r.info.wal_first_frame != prev.wal_frames {
                return Err(format!(
                    "WAL frames {}..{} were written without spoolvfs",
                    prev.wal_frames, r.info.wal_first_frame
                ));
            }
            // A new generation: the restart, and so its first frames, were ours only if our
            // transaction starts at frame 0. (Whether the old generation ended where our last
            // record did is checked by the writer that ends it: `crate::walend`.)
            if prev.token != r.info.token && r.info.wal_first_frame != 0 {
                return Err(format!(
                    "the WAL was restarted and frames 0..{} were written without spoolvfs",
                    r.info.wal_first_frame
                ));
            }
        }
    }
    Ok(())
}

/// Adds every page of `records`, in order, to `writes` (later writes win), each record's cut
/// to its database size: the write set applying them one by one would make.
fn add_records(writes: &mut WriteSet, records: &[Record], file: Option<Arc<std::fs::File>>) {
    let Some(file) = file else { return };
    let final_size = records.last().map_or(0, |r| r.info.db_size);
    for r in records {
        for p in r.pages.iter() {
            writes.insert(
                p.offset,
                p.len as u64,
                Source::File {
                    file: file.clone(),
                    pos: p.payload_pos,
                },
            );
        }
        // A batch must leave the backup as applying its records one by one would. After each
        // record the file ends at its size: bytes it wrote past that (pages written, then cut
        // off by a shrink at commit) are gone, and a later record that grows the file again
        // without writing some page (a free page SQLite never writes) leaves zeros there, not
        // what an earlier record or the backup had.
        let size = r.info.db_size;
        writes.truncate(size);
        if size < final_size {
            writes.insert(size, final_size - size, Source::Zeros);
        }
    }
}

/// Whether the backup's change counter must move even if the batch leaves it unchanged: WAL
/// commits and exclusive-mode commits do not bump the source's counter, but readers of the backup
/// keep their page cache while bytes 24..40 of page 1 stay the same. Rollback records alone never
/// need it (they restore the old content), so byte equality holds for rollback-mode sources.
fn bump_needed(records: &[Record]) -> bool {
    records.iter().any(|r| r.info.kind == RecordKind::Commit)
}

/// The source's header, read through the consumer's own descriptor, for sealing a finished
/// exclusive-mode rollback. Its size stays unknown: the connection may already be extending the
/// file in its next transaction (written before it is captured), and a size must never come
/// from a state that was not committed.
struct HeaderOnly<'a>(&'a mut Box<dyn SourceReader>);

impl crate::capture::DbFileNow for HeaderOnly<'_> {
    fn header(&mut self) -> Option<[u8; crate::dbheader::HEADER_LEN]> {
        let mut h = [0u8; crate::dbheader::HEADER_LEN];
        self.0.read_at(&mut h, 0).ok().map(|_| h)
    }

    fn size(&mut self) -> Option<u64> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::format::CommitInfo;
    use crate::spool::reader::PageRef;

    fn rec(seq: u64, mode: SourceMode, token: u64, first: u64, frames: u64) -> Record {
        Record {
            seq,
            info: CommitInfo {
                kind: RecordKind::Commit,
                mode,
                page_size: 4096,
                db_size: 4096,
                n_pages: 0,
                sealed_us: 0,
                token,
                wal_frames: frames,
                wal_first_frame: first,
            },
            segment: 1,
            end: 0,
            pages: Default::default(),
        }
    }

    #[test]
    fn chain_accepts_continuations_and_rejects_gaps() {
        let r1 = rec(1, SourceMode::Rollback, 10, 0, 0);
        let a1 = applied_after(&r1);
        assert!(chain_check(&a1, &rec(2, SourceMode::Rollback, 11, 0, 0)).is_ok());
        assert!(chain_check(&a1, &rec(2, SourceMode::Rollback, 10, 0, 0)).is_ok());
        assert!(chain_check(&a1, &rec(2, SourceMode::Rollback, 12, 0, 0)).is_err());
        assert!(chain_check(&a1, &rec(3, SourceMode::Rollback, 11, 0, 0)).is_err());
        let w = applied_after(&rec(5, SourceMode::Wal, 77, 0, 4));
        assert!(chain_check(&w, &rec(6, SourceMode::Wal, 77, 4, 6)).is_ok());
        assert!(chain_check(&w, &rec(6, SourceMode::Wal, 77, 5, 6)).is_err());
        // A new WAL generation (restart) starts at frame 0; frames before ours are foreign.
        assert!(chain_check(&w, &rec(6, SourceMode::Wal, 78, 0, 2)).is_ok());
        assert!(chain_check(&w, &rec(6, SourceMode::Wal, 78, 3, 5)).is_err());
        // Mode switches are not checked.
        assert!(chain_check(&w, &rec(6, SourceMode::Rollback, 99, 0, 0)).is_ok());
    }

    /// Record 1 writes page 5 and shrinks the database to 3 pages (the page is cut off at
    /// commit); record 2 grows it to 6 pages writing only page 4. Applied one by one, the backup
    /// ends with record 2's page 4 and zeros at pages 5 and 6; the batch must say the same, not
    /// record 1's page 5 (what a batch wrote before: a backup that differed from its source).
    #[test]
    fn a_batch_writes_what_its_records_one_by_one_would() {
        let ps = 4096u64;
        let d = crate::util::fresh_test_dir("consumer", "batch-shrink");
        let seg = d.join("seg");
        let mut image = vec![0u8; 2 * ps as usize];
        image[..ps as usize].fill(0x55); // record 1's page 5
        image[ps as usize..].fill(0x44); // record 2's page 4
        std::fs::write(&seg, &image).unwrap();
        let file = Arc::new(std::fs::File::open(&seg).unwrap());
        let page = |pgno: u64, pos: u64| PageRef {
            offset: (pgno - 1) * ps,
            len: ps as u32,
            payload_pos: pos,
        };
        let mut r1 = rec(1, SourceMode::Rollback, 10, 0, 0);
        r1.info.db_size = 3 * ps;
        r1.pages = vec![page(5, 0)].into();
        let mut r2 = rec(2, SourceMode::Rollback, 11, 0, 0);
        r2.info.db_size = 6 * ps;
        r2.pages = vec![page(4, ps)].into();
        let mut writes = WriteSet::new();
        add_records(&mut writes, &[r1, r2], Some(file));
        let mut got = vec![0xEEu8; 6 * ps as usize];
        assert!(writes.read_covered(0, &mut got).is_ok());
        let expected = [
            (1, 0xEE, "not the batch's"),
            (2, 0xEE, "not the batch's"),
            (3, 0xEE, "not the batch's"),
            (4, 0x44, "record 2's"),
            (5, 0, "cut off by record 1"),
            (6, 0, "never written"),
        ];
        for (pgno, byte, why) in expected {
            let page = &got[((pgno - 1) * ps) as usize..(pgno * ps) as usize];
            assert!(page.iter().all(|&b| b == byte), "page {pgno} is {why}");
        }
    }
}
