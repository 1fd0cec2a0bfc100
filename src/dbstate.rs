//! State shared by every connection of this process to one database: its configuration, the
//! capture state (under `capture`), the progress both sides report (under `progress`), and the
//! handle of its consumer thread.
//!
//! Lock order: `capture` before `progress`; nothing else is held while waiting on `changed`.
//! Invariant: `progress.applied_seq` never passes the last sealed sequence number, and
//! `resynced_gen >= lost_gen` means every capture loss so far was repaired by a resync.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::capture::{Capture, Outcome, Sealed};
use crate::config::Config;

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

/// Progress of capture and consumer, read by `spool_status` and `spool_sync`.
#[derive(Debug)]
pub struct Progress {
    pub sealed: Option<Sealed>,
    /// Seal times of records not applied yet: `(seq, µs since epoch)`.
    pub unapplied: VecDeque<(u64, u64)>,
    pub applied_seq: u64,
    /// Incremented by every capture loss and every explicit resync request.
    pub lost_gen: u64,
    /// The `lost_gen` covered by the last completed resync.
    pub resynced_gen: u64,
    pub resyncs: u64,
    pub last_error: Option<String>,
    pub errors: u64,
    pub phase: Phase,
    /// Set by the last close: the consumer drains until this instant, then stops.
    pub stop_by: Option<Instant>,
    pub bytes_captured: u64,
    pub bytes_applied: u64,
    pub pages_applied: u64,
    pub batches: u64,
    /// Pages compared and total pages of the running resync.
    pub resync_done: u64,
    pub resync_total: u64,
}

/// One tracked database.
pub struct DbState {
    pub cfg: Config,
    pub capture: Mutex<Capture>,
    pub progress: Mutex<Progress>,
    /// Signalled whenever `progress` changes.
    pub changed: Condvar,
    doorbell: Sender<()>,
    pub(crate) doorbell_rx: Receiver<()>,
    pub(crate) consumer: Mutex<Option<JoinHandle<()>>>,
}

/// Locks a mutex, ignoring poisoning: our state stays consistent across a panic because every
/// critical section either completes or is repaired by a resync.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl DbState {
    pub fn new(cfg: Config, capture: Capture) -> Arc<DbState> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        Arc::new(DbState {
            cfg,
            capture: Mutex::new(capture),
            progress: Mutex::new(Progress {
                sealed: None,
                unapplied: VecDeque::new(),
                applied_seq: 0,
                // The consumer verifies the backup against the source when it starts.
                lost_gen: 1,
                resynced_gen: 0,
                resyncs: 0,
                last_error: None,
                errors: 0,
                phase: Phase::Starting,
                stop_by: None,
                bytes_captured: 0,
                bytes_applied: 0,
                pages_applied: 0,
                batches: 0,
                resync_done: 0,
                resync_total: 0,
            }),
            changed: Condvar::new(),
            doorbell: tx,
            doorbell_rx: rx,
            consumer: Mutex::new(None),
        })
    }

    /// Wakes the consumer. The channel carries no payload and holds one bell: a full channel
    /// already means "look at the spool".
    pub fn ring(&self) {
        let _ = self.doorbell.try_send(());
    }

    /// Publishes what a capture event produced. Called with the capture lock held, so records are
    /// published in sequence order.
    pub fn publish(&self, out: Outcome) {
        if out.sealed.is_none() && out.lost.is_none() {
            return;
        }
        {
            let mut p = lock(&self.progress);
            if let Some(s) = out.sealed {
                p.sealed = Some(s);
                p.unapplied.push_back((s.seq, s.info.sealed_us));
                p.bytes_captured += s.info.n_pages as u64 * s.info.page_size as u64;
            }
            if let Some(msg) = &out.lost {
                p.lost_gen += 1;
                p.errors += 1;
                p.last_error = Some(msg.clone());
            }
        }
        if let Some(msg) = out.lost {
            crate::ffi::log(
                libsqlite3_sys::SQLITE_WARNING,
                &format!("spoolvfs: {}: {msg}; a resync is scheduled", self.cfg.db.display()),
            );
        }
        self.changed.notify_all();
        self.ring();
    }

    /// Records an error of the consumer side.
    pub fn report_error(&self, msg: String) {
        crate::ffi::log(
            libsqlite3_sys::SQLITE_WARNING,
            &format!("spoolvfs: {}: {msg}", self.cfg.db.display()),
        );
        let mut p = lock(&self.progress);
        p.errors += 1;
        p.last_error = Some(msg);
        drop(p);
        self.changed.notify_all();
    }

    /// Waits until every transaction sealed before the call is in the backup and every loss
    /// known at the call is repaired. Returns false on timeout.
    pub fn wait_synced(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut p = lock(&self.progress);
        let target = p.sealed.map_or(0, |s| s.seq);
        let gen_ = p.lost_gen;
        drop(p);
        self.ring();
        p = lock(&self.progress);
        loop {
            if p.applied_seq >= target && p.resynced_gen >= gen_ {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || p.phase == Phase::Stopped {
                return false;
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            p = self.changed.wait_timeout(p, wait).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Asks for a full resync and waits for it (and for everything sealed before) to complete.
    pub fn resync(&self, timeout: Duration) -> bool {
        {
            let mut p = lock(&self.progress);
            p.lost_gen += 1;
        }
        self.wait_synced(timeout)
    }
}

pub mod registry {
    //! Process-wide map from canonical database path to its `DbState`, with a count of open
    //! main-database files. The last release drains the spool and stops the consumer.

    use super::*;
    use std::collections::HashMap;
    use std::path::PathBuf;

    static REGISTRY: Mutex<Option<HashMap<PathBuf, (Arc<DbState>, usize)>>> = Mutex::new(None);

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
