//! State shared by every connection of this process to one database: its configuration, the
//! capture state (under `capture`), the progress both sides report (under `progress`), and the
//! handle of its consumer thread.
//!
//! Lock order: `capture` before `progress`; neither is held while a `spool_sync` caller sleeps
//! (on the control file's answer bell).
//! Invariant (kept in the shared control file): the applied sequence number never passes the
//! sealed one, and `resynced_gen >= lost_gen` means every loss so far was repaired by a resync.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::capture::{Capture, Outcome, Sealed, TxnClaim};
use crate::config::Config;
use crate::spool::control::Control;

/// How long a `spool_sync` caller sleeps on the answer bell before it looks again unrung.
const ANSWER_RECHECK: Duration = Duration::from_millis(50);

/// `ANSWER_RECHECK`; test builds can stretch it to prove that answers ring the caller awake.
fn answer_recheck() -> Duration {
    if crate::faults::active("answer_waits_long") {
        return Duration::from_secs(120);
    }
    ANSWER_RECHECK
}

/// What the consumer is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Resyncing,
    Live,
    Failing,
    Stopped,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Starting => "starting",
            Phase::Resyncing => "resyncing",
            Phase::Live => "live",
            Phase::Failing => "failing",
            Phase::Stopped => "stopped",
        }
    }
}

/// What this process knows locally; the shared progress (sealed, applied, losses, resyncs) lives
/// in the control file.
#[derive(Debug)]
pub struct Progress {
    pub last_error: Option<String>,
    pub errors: u64,
    pub phase: Phase,
    /// This process's consumer holds the consumer lock of the spool.
    pub active: bool,
    /// Set by the last close: the consumer drains until this instant, then stops.
    pub stop_by: Option<Instant>,
    pub bytes_applied: u64,
    pub pages_applied: u64,
    pub batches: u64,
    /// Time this process's consumer spent on the applied batches, from reading them out of the
    /// spool (for a resync: from the start of its compare) to the backup's last fsync
    /// (microseconds): what `bytes_applied` cost it.
    pub apply_us: u64,
    /// Pages compared and total pages of the running resync.
    pub resync_done: u64,
    pub resync_total: u64,
    /// This process opened the database as its first user and the clean-close record vouched
    /// for the backup, so no resync verified it (`consumer::cleanclose`).
    pub clean_open: bool,
    /// This process opened the database first: what vouched for the backup (the clean-close
    /// record, or the state crashed processes left, `consumer::crashopen`), or why a resync
    /// checks it.
    pub open_check: Option<String>,
}

/// One tracked database.
pub struct DbState {
    pub cfg: Config,
    pub control: Arc<Control>,
    pub capture: Mutex<Capture>,
    /// `Capture::claim`: lets transaction-ending events skip the capture lock when no
    /// transaction is open.
    pub txn_claim: Arc<TxnClaim>,
    pub progress: Mutex<Progress>,
    pub(crate) consumer: Mutex<Option<JoinHandle<()>>>,
    /// This process's consumer (active or passive) is in a long sleep: a seal must ring the
    /// doorbell (it then keeps this process's spool mapping populated for the writer). While
    /// records flow it polls the shared tail instead, so writers make no wake-up syscall on the
    /// commit path. The active consumer of another process says the same in the control file
    /// (`consumer_parked`).
    pub(crate) parked: AtomicBool,
    /// The source's stamp taken when a WAL of ours was deleted (under the EXCLUSIVE lock of the
    /// last close) or emptied (under the checkpointer's locks), with the last sealed sequence
    /// number then (`consumer::cleanclose`).
    pub wal_ended_stamp: Mutex<Option<(crate::filestamp::FileStamp, u64)>>,
    /// A connection asked whether its WAL persists (`SQLITE_FCNTL_PERSIST_WAL`, which SQLite asks
    /// only in the last close, after its checkpoint): the WAL truncation that may follow is that
    /// close's, where waiting for a settled stamp costs no writer anything.
    pub wal_persist_asked: AtomicBool,
    /// Bytes of page images captured by this process.
    pub bytes_captured: AtomicU64,
}

/// Locks a mutex, ignoring poisoning: our state stays consistent across a panic because every
/// critical section either completes or is repaired by a resync.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DbState {
    pub fn new(cfg: Config, control: Arc<Control>, capture: Capture) -> Arc<DbState> {
        Arc::new(DbState {
            cfg,
            control,
            txn_claim: capture.claim(),
            capture: Mutex::new(capture),
            progress: Mutex::new(Progress {
                last_error: None,
                errors: 0,
                phase: Phase::Starting,
                active: false,
                stop_by: None,
                bytes_applied: 0,
                pages_applied: 0,
                batches: 0,
                apply_us: 0,
                resync_done: 0,
                resync_total: 0,
                clean_open: false,
                open_check: None,
            }),
            consumer: Mutex::new(None),
            parked: AtomicBool::new(false),
            wal_ended_stamp: Mutex::new(None),
            wal_persist_asked: AtomicBool::new(false),
            bytes_captured: AtomicU64::new(0),
        })
    }

    /// Wakes the consumers of this database, in every process (the control file's doorbell: a
    /// shared futex). A ring means only "look again"; a consumer that was awake sees it at its
    /// next sleep, which then returns at once.
    pub fn ring(&self) {
        self.control.ring_bell();
    }

    /// Publishes what a capture event produced (the sealed record is already in the control file).
    pub fn publish(&self, out: Outcome) {
        if let Some(s) = &out.sealed {
            self.publish_sealed(s);
        }
        if let Some(msg) = out.lost {
            self.report_lost(msg);
        }
    }

    /// Counts a sealed record and wakes a parked consumer: this process's, or the active one in
    /// another process. Lock-free: it runs on every commit.
    ///
    /// The seal is already published; the fence orders it before the reads of the parked flags,
    /// as the consumer orders its flag before its last look at the sealed state (`idle_wait`):
    /// so either the consumer sees this seal before it sleeps, or this sees it parked and rings.
    pub fn publish_sealed(&self, s: &Sealed) {
        let bytes = s.info.n_pages as u64 * s.info.page_size as u64;
        self.bytes_captured.fetch_add(bytes, Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) || self.control.consumer_parked() {
            self.ring();
        }
    }

    /// Reports changes the backup missed: counted in the control file (a resync follows), shown
    /// as `last_error`, logged, and the consumer woken.
    pub fn report_lost(&self, msg: String) {
        self.control.bump_lost();
        let mut p = lock(&self.progress);
        p.errors += 1;
        p.last_error = Some(msg.clone());
        drop(p);
        crate::ffi::log(
            libsqlite3_sys::SQLITE_WARNING,
            &format!(
                "spoolvfs: {}: {msg}; a resync is scheduled",
                self.cfg.db.display()
            ),
        );
        self.ring();
    }

    /// Records an error of the consumer side.
    pub fn report_error(&self, msg: String) {
        crate::ffi::log(
            libsqlite3_sys::SQLITE_WARNING,
            &format!("spoolvfs: {}: {msg}", self.cfg.db.display()),
        );
        self.control.set_error(&msg);
        let mut p = lock(&self.progress);
        p.errors += 1;
        p.last_error = Some(msg);
        drop(p);
    }

    /// Frees the shared "transaction open" slot if it names this process while no connection of
    /// this process has a transaction open: a stale claim (the control file restored from a copy
    /// taken mid-transaction, or a transaction whose end was missed), which a resync would
    /// otherwise wait on forever. Checked under the capture lock, which every transaction start
    /// takes, so a transaction that is starting is never mistaken for a stale one.
    ///
    /// Not while another state of the same database lives in this process (the database was
    /// reopened while this one drained): its transaction would look stale from here.
    pub fn clear_stale_own_txn_owner(&self) -> bool {
        let successor = registry::find(&self.cfg.db).is_some_and(|s| !std::ptr::eq(&*s, self));
        if successor {
            return false;
        }
        let cap = lock(&self.capture);
        let pid = std::process::id() as u64;
        cap.idle() && self.control.txn_owner() == pid && self.control.clear_txn_owner_if(pid)
    }

    /// Waits until every transaction sealed (by any process) before the call is committed on the
    /// backup (durable there, not only visible), every loss known at the call is repaired, and
    /// the active consumer, in whichever process, has looked for changes made without spoolvfs
    /// since: those count as committed before the call too. Returns false on timeout.
    ///
    /// The request goes through the control file (`sync_requested`/`sync_served`), so a caller
    /// in a process whose consumer is passive is answered like one beside the active consumer.
    pub fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        // A transaction of this process that already ended in a rollback (exclusive locking mode
        // has no end event after it) counts as "before the call": seal it now. The size comes
        // from its own page-1 image or is unchanged, so no header read is needed.
        let finished =
            lock(&self.capture).seal_finished_rollback(Duration::ZERO, &mut crate::capture::Unread);
        self.publish(finished);
        let c = &self.control;
        'request: loop {
            let file = c.file_id();
            // Read before the ticket is taken: the consumer reads the request count before the
            // sealed state, so the round that answers the ticket covers this target.
            let target = c.sealed().seq;
            let gen_ = c.lost_gen();
            let ticket = c.request_sync();
            // Registered before the first check: the consumer that answers, in whichever
            // process, then rings the answer bell (a shared futex), so the answer wakes this
            // thread at once.
            let _waiting = c.wait_for_answers(deadline.saturating_duration_since(Instant::now()));
            self.ring();
            loop {
                let seen = c.answer_bell();
                if c.file_id() != file {
                    // The spool was recreated (deleted or replaced) since the request: the new
                    // control file's counters start over, and the ticket means nothing there.
                    // Ask again in it; the loss its adoption recorded makes the answer wait for
                    // the resync, which covers everything committed before the call.
                    if Instant::now() >= deadline {
                        return false;
                    }
                    continue 'request;
                }
                if c.sync_served() >= ticket
                    && c.committed_seq() >= target
                    && c.resynced_gen() >= gen_
                {
                    return true;
                }
                let now = Instant::now();
                if now >= deadline {
                    return false;
                }
                // Bounded anyway: a consumer that dies between its progress and its ring must
                // not leave the caller asleep until the deadline (its successor answers; we look
                // again).
                c.sleep_on_answers(seen, (deadline - now).min(answer_recheck()));
            }
        }
    }

    /// Asks for a full resync and waits for it (and everything sealed before) to complete.
    pub fn resync(&self, timeout: Duration) -> bool {
        self.control.bump_lost();
        self.wait_synced(timeout)
    }
}

pub mod registry {
    //! Process-wide map from canonical database path to its `DbState`, with a count of open
    //! main-database files. The last release drains the spool and stops the consumer.

    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    /// Open main-database files per database.
    type Entries = HashMap<PathBuf, (Arc<DbState>, usize)>;

    static REGISTRY: Mutex<Option<Entries>> = Mutex::new(None);

    /// Returns the state of `cfg.db`, creating it (and its consumer) with `create` on first use.
    pub fn acquire(
        cfg: &Config,
        create: impl FnOnce() -> Result<Arc<DbState>, String>,
    ) -> Result<Arc<DbState>, String> {
        let mut reg = lock(&REGISTRY);
        let map = reg.get_or_insert_with(HashMap::new);
        if let Some((state, count)) = map.get_mut(&cfg.db) {
            *count += 1;
            if state.cfg.backup != cfg.backup || state.cfg.spool != cfg.spool {
                let msg = format!(
                    "database already open in this process with backup={} spool={}; \
                     keeping those settings",
                    state.cfg.backup.display(),
                    state.cfg.spool.display()
                );
                state.report_error(msg);
            }
            return Ok(state.clone());
        }
        let state = create()?;
        map.insert(cfg.db.clone(), (state.clone(), 1));
        Ok(state)
    }

    /// The state of database `db` (as `Config::db` holds it), if this process has it open.
    pub fn find(db: &std::path::Path) -> Option<Arc<DbState>> {
        let reg = lock(&REGISTRY);
        reg.as_ref()?.get(db).map(|(state, _)| state.clone())
    }

    /// Drops one reference; the last one drains and stops the consumer (bounded wait).
    pub fn release(state: &Arc<DbState>) {
        let last = {
            let mut reg = lock(&REGISTRY);
            let Some(map) = reg.as_mut() else { return };
            match map.get_mut(&state.cfg.db) {
                Some((_, count)) if *count > 1 => {
                    *count -= 1;
                    false
                }
                Some(_) => {
                    map.remove(&state.cfg.db);
                    true
                }
                None => false,
            }
        };
        if last {
            crate::consumer::shutdown(state);
        }
    }
}
