//! How far ahead of the writer the spool mapping is kept populated: far enough that the writer
//! does not outrun it while the upkeep is away.
//!
//! The upkeep runs on the consumer thread, between and inside its steps. It is away for as long
//! as the consumer blocks: a span close on the backup is two or three `fdatasync` calls of 1-10 ms
//! each, and the thread runs at a lowered priority. A writer that reaches the end of the
//! populated part takes the page faults itself (allocating and zeroing page-cache pages of the
//! reserved extent, ~4 us a page); measured with a fixed 4 MiB window, an unpaced small-
//! transaction writer (~170 MB/s of stream) faulted in ~2 % of the spool's pages on a quiet
//! machine. A window of 8-16 MiB removed most of those faults and cut the writer's CPU per
//! transaction by 2 to 6 points (docs/DESIGN.md, "Writer cost"). A fixed large window would cost
//! every spool that much populated (resident) memory and twice that in reserved disk blocks, a
//! quiet one included, so the window follows the stream's rate instead: enough for `COVERS` of
//! writing, between `MIN` and `MAX`, shrinking back over `DECAY` once the stream slows down.
//!
//! Invariants: the window in force is always within `[MIN, MAX]` and a multiple of `STEP`; it
//! changes only when the upkeep measures (never on the commit path, which only counts appended
//! bytes).

use std::time::{Duration, Instant};

/// The smallest window (a quiet stream's).
pub const MIN: u64 = 2 << 20;
/// The largest window.
pub const MAX: u64 = 16 << 20;
/// Window sizes are multiples of this.
const STEP: u64 = 1 << 20;
/// How long the upkeep may be away without the writer running out of populated mapping.
const COVERS: Duration = Duration::from_millis(100);
/// How long a window takes to shrink from `MAX` to `MIN` once the stream slows down.
const DECAY: Duration = Duration::from_millis(750);
/// Measurements closer together than this are merged (the rate of a 2 ms poll is too noisy).
const MIN_INTERVAL: Duration = Duration::from_millis(5);

/// The window in force and the stream's pace as last measured.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The window before rounding to `STEP` (kept exact so that a slow decay adds up).
    exact: u64,
    /// When the last measurement was taken and how many bytes had been appended then.
    measured: Option<(Instant, u64)>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            exact: MIN,
            measured: None,
        }
    }
}

impl Window {
    /// The window in force.
    pub fn size(&self) -> u64 {
        self.exact.next_multiple_of(STEP).min(MAX)
    }

    /// How far ahead blocks are kept reserved: twice the window, since the upkeep grows the
    /// reservation once half of it is used and only reserved bytes may be populated.
    pub fn reserve_ahead(&self) -> u64 {
        2 * self.size()
    }

    /// Updates the window from `appended`, the bytes appended to the stream so far, at `now`.
    pub fn measure(&mut self, now: Instant, appended: u64) {
        let Some((then, before)) = self.measured else {
            self.measured = Some((now, appended));
            return;
        };
        let elapsed = now.saturating_duration_since(then);
        if elapsed < MIN_INTERVAL {
            return;
        }
        let rate = appended.saturating_sub(before) as f64 / elapsed.as_secs_f64();
        let wanted = (rate * COVERS.as_secs_f64()) as u64;
        let shrink = (MAX as f64 * elapsed.as_secs_f64() / DECAY.as_secs_f64()) as u64;
        let decayed = self.exact.saturating_sub(shrink);
        self.exact = wanted.max(decayed).clamp(MIN, MAX);
        self.measured = Some((now, appended));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1 << 20;

    #[test]
    fn a_quiet_stream_keeps_the_smallest_window() {
        let mut w = Window::default();
        let t = Instant::now();
        w.measure(t, 0);
        assert_eq!(w.size(), MIN);
        // 1 MB/s: 100 KB per 100 ms.
        for i in 1..=20 {
            w.measure(t + Duration::from_millis(10 * i), i * 10_000);
        }
        assert_eq!(w.size(), MIN);
        assert_eq!(w.reserve_ahead(), 2 * MIN);
    }

    #[test]
    fn a_fast_stream_widens_it_and_a_pause_shrinks_it_back() {
        let mut w = Window::default();
        let t = Instant::now();
        w.measure(t, 0);
        // 85 MB/s: 8.5 MB per 100 ms.
        w.measure(t + Duration::from_millis(10), 850_000);
        assert_eq!(w.size(), 9 * MB);
        // 1 GB/s: capped.
        w.measure(t + Duration::from_millis(20), 10_850_000);
        assert_eq!(w.size(), MAX);
        // Measurements too close together wait for more data.
        w.measure(t + Duration::from_millis(21), 10_850_000);
        assert_eq!(w.size(), MAX);
        // The stream stops: the window shrinks over DECAY, not at once.
        w.measure(t + Duration::from_millis(120), 10_850_000);
        assert!(w.size() > MIN && w.size() < MAX, "{}", w.size());
        w.measure(t + Duration::from_millis(1_000), 10_850_000);
        assert_eq!(w.size(), MIN);
        // Always a whole number of steps.
        assert_eq!(w.size() % STEP, 0);
    }

    #[test]
    fn frequent_small_decays_add_up() {
        let mut w = Window::default();
        let t = Instant::now();
        w.measure(t, 0);
        w.measure(t + Duration::from_millis(10), 100 * MB);
        assert_eq!(w.size(), MAX);
        // The upkeep looks every 5 ms; the stream has stopped.
        let mut at = 10;
        while at < 10 + 800 {
            at += 5;
            w.measure(t + Duration::from_millis(at), 100 * MB);
        }
        assert_eq!(w.size(), MIN);
    }

    #[test]
    fn a_clock_that_does_not_move_changes_nothing() {
        let mut w = Window::default();
        let t = Instant::now();
        w.measure(t, 0);
        w.measure(t, u64::MAX);
        assert_eq!(w.size(), MIN);
    }
}
