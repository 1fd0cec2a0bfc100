//! The doorbell: a counter in the shared control file that wakes the active consumer, whichever
//! process it lives in, through a Linux futex on the mapped word.
//!
//! A ring increments the counter and wakes every thread sleeping on it; a sleeper passes the
//! value it read *before* it last looked for work, so a ring that came after that look is never
//! slept through: the kernel compares the word with that value atomically with going to sleep and
//! returns at once if it moved. The counter never carries meaning beyond "something may have
//! changed": spurious wake-ups are allowed, and every sleep is bounded by a timeout, so a missed
//! ring (or an older kernel refusing the call) costs latency, never correctness.
//!
//! Invariants:
//! - The word is only ever accessed as an `AtomicU32` (the control file reserves a 64-bit slot
//!   for it; the upper half stays zero).
//! - The futex is *shared* (no `FUTEX_PRIVATE_FLAG`): the kernel keys it by the file's inode and
//!   offset, so threads of different processes mapping the same control file meet on it.
//! - The mapping behind the word is never unmapped while its `Control` lives (see `Control`), so
//!   a sleeper on an abandoned mapping just sleeps out its timeout.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The value to pass to `sleep` later: read it before looking for work.
pub fn current(word: &AtomicU32) -> u32 {
    word.load(Ordering::SeqCst)
}

/// Bumps the counter and wakes every sleeper on it, in any process.
pub fn ring(word: &AtomicU32) {
    word.fetch_add(1, Ordering::SeqCst);
    // SAFETY: `word` is a valid, aligned 32-bit word in memory that stays mapped (module
    // invariants); FUTEX_WAKE only reads its address to find the sleepers and never dereferences
    // the unused timeout and second-word arguments.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Sleeps until the counter differs from `seen` (a ring since `seen` was read), `timeout`
/// passes, or a signal or spurious wake-up ends the sleep early; the caller looks again anyway.
pub fn sleep(word: &AtomicU32, seen: u32, timeout: Duration) {
    if word.load(Ordering::SeqCst) != seen {
        return;
    }
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `word` is a valid, aligned 32-bit word that stays mapped (module invariants); `ts`
    // is a valid relative timeout that outlives the call; FUTEX_WAIT ignores the last two
    // arguments. Any error (EAGAIN: the word moved, EINTR, ETIMEDOUT, ENOSYS) just returns.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn a_ring_after_the_read_is_not_slept_through() {
        let word = AtomicU32::new(0);
        let seen = current(&word);
        ring(&word);
        let t = Instant::now();
        sleep(&word, seen, Duration::from_secs(60));
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "slept through a ring"
        );
        assert_eq!(current(&word), seen + 1);
    }

    #[test]
    fn a_ring_wakes_a_sleeper() {
        let word = Arc::new(AtomicU32::new(7));
        let seen = current(&word);
        let sleeper = {
            let word = word.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                sleep(&word, seen, Duration::from_secs(60));
                (current(&word), t.elapsed())
            })
        };
        // The sleeper may or may not be asleep yet: either way the ring must end its sleep, long
        // before its timeout (the bound only tells a wake-up from a timeout, it times nothing).
        std::thread::sleep(Duration::from_millis(20));
        ring(&word);
        let (value, slept) = sleeper.join().unwrap();
        assert_eq!(value, 8);
        assert!(
            slept < Duration::from_secs(30),
            "slept {slept:?}: the ring did not wake it"
        );
    }

    #[test]
    fn without_a_ring_the_sleep_ends_at_its_timeout() {
        let word = AtomicU32::new(0);
        sleep(&word, 0, Duration::from_millis(1));
        assert_eq!(current(&word), 0);
    }
}
