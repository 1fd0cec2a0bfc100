//! `sqlite3_log` for messages of our background threads, delivered on the application's threads.
//!
//! The application's log callback may need a lock the application holds while it calls into
//! SQLite: Python's GIL is one (apsw keeps it through `sqlite3_close`). A background thread of
//! ours calling `sqlite3_log` can therefore block for as long as the application likes, and two
//! things then go wrong, both seen in the e2e suite: the last close joins the consumer thread
//! while holding that lock (a drain that logged hung the close for good), and an interpreter
//! that exits while a thread of ours waits in its callback ends that thread with a forced unwind
//! (`pthread_exit`), which Rust's thread entry cannot let through: the process aborts.
//!
//! So background threads (`mark_background`) only queue their messages, and application threads
//! deliver the queue at points where they are inside SQLite anyway and the callback's locks are
//! theirs: the end of a transaction (`xUnlock` of the database), our SQL functions, and the last
//! close after joining the consumer. The check costs one relaxed load when nothing is queued.
//! Whatever waits is also readable at once in `spool_status` (`last_error`).
//!
//! Invariants: no background thread of ours calls `sqlite3_log`; messages come out in the order
//! they were queued; at most `CAPACITY` wait (older ones are dropped and counted in a message).

use std::cell::Cell;
use std::collections::VecDeque;
use std::os::raw::c_int;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    static BACKGROUND: Cell<bool> = const { Cell::new(false) };
}

/// Messages kept for an application that never calls into SQLite again.
const CAPACITY: usize = 256;

struct Queue {
    messages: VecDeque<(c_int, String)>,
    dropped: u64,
}

static QUEUE: Mutex<Queue> = Mutex::new(Queue {
    messages: VecDeque::new(),
    dropped: 0,
});
static PENDING: AtomicBool = AtomicBool::new(false);

/// Marks the current thread as a background thread of ours (see the module doc).
pub fn mark_background() {
    BACKGROUND.with(|b| b.set(true));
}

/// Whether `log` must queue on this thread.
pub fn on_background() -> bool {
    BACKGROUND.with(Cell::get)
}

/// Queues a message of a background thread.
pub fn enqueue(code: c_int, msg: &str) {
    let mut q = crate::dbstate::lock(&QUEUE);
    if q.messages.len() >= CAPACITY {
        q.messages.pop_front();
        q.dropped += 1;
    }
    q.messages.push_back((code, msg.to_string()));
    PENDING.store(true, Ordering::Release);
}

/// Logs, on the calling (application) thread, every queued message.
pub fn deliver_queued() {
    // The global flag first: it is one load, the thread-local of a shared library is a call.
    if !PENDING.load(Ordering::Relaxed) || on_background() {
        return;
    }
    let (messages, dropped) = {
        let mut q = crate::dbstate::lock(&QUEUE);
        PENDING.store(false, Ordering::Relaxed);
        (
            std::mem::take(&mut q.messages),
            std::mem::take(&mut q.dropped),
        )
    };
    if dropped > 0 {
        super::log_now(
            libsqlite3_sys::SQLITE_WARNING,
            &format!("spoolvfs: {dropped} older messages of the consumer were dropped"),
        );
    }
    for (code, msg) in messages {
        super::log_now(code, &msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn background_messages_wait_for_an_application_thread() {
        std::thread::spawn(|| {
            mark_background();
            for i in 0..CAPACITY + 3 {
                enqueue(1, &format!("m{i}"));
            }
            // A background thread never delivers.
            deliver_queued();
            assert!(PENDING.load(Ordering::Acquire));
        })
        .join()
        .unwrap();
        {
            let q = crate::dbstate::lock(&QUEUE);
            assert_eq!((q.messages.len(), q.dropped), (CAPACITY, 3));
            assert_eq!(q.messages.front().map(|m| m.1.as_str()), Some("m3"));
        }
        deliver_queued();
        let q = crate::dbstate::lock(&QUEUE);
        assert!(q.messages.is_empty() && q.dropped == 0);
        assert!(!PENDING.load(Ordering::Acquire));
    }
}
