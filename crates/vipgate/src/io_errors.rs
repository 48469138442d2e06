//! A worker's persistent I/O errors: logged once per interval with the number left out, and
//! waited on with a growing pause, so a link that keeps failing costs neither the log nor a
//! spinning core.

use std::time::Duration;

/// At most one log line per worker per this many milliseconds.
pub(crate) const LOG_EVERY_MS: u64 = 10_000;
/// The longest pause between two failing passes.
const PAUSE_MAX: Duration = Duration::from_millis(100);

/// One worker's failing passes, in a row and since the last log line.
#[derive(Debug, Default)]
pub(crate) struct IoErrors {
    in_a_row: u32,
    not_logged: u64,
    next_log_ms: u64,
}

impl IoErrors {
    /// A pass that failed at `now_ms`: `Some(n)` when this one is to be logged, `n` being
    /// the failures not logged since the last line.
    pub(crate) fn failed(&mut self, now_ms: u64) -> Option<u64> {
        self.in_a_row = self.in_a_row.saturating_add(1);
        if now_ms >= self.next_log_ms {
            self.next_log_ms = now_ms.saturating_add(LOG_EVERY_MS);
            Some(std::mem::take(&mut self.not_logged))
        } else {
            self.not_logged += 1;
            None
        }
    }

    /// A pass that did not fail.
    pub(crate) fn passed(&mut self) {
        self.in_a_row = 0;
    }

    /// How long to wait (for frames, at most) before the next pass: nothing after a single
    /// failure, then 1 ms doubling up to [`PAUSE_MAX`] while they go on.
    pub(crate) fn pause(&self) -> Duration {
        match self.in_a_row {
            0 | 1 => Duration::ZERO,
            n => Duration::from_millis(1 << (n - 2).min(7)).min(PAUSE_MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_link_is_logged_once_per_interval_and_backed_off() {
        let mut e = IoErrors::default();
        assert_eq!(e.failed(5), Some(0), "the first failure is logged");
        assert_eq!(e.pause(), Duration::ZERO, "one failure: no pause");
        let mut pauses = Vec::new();
        for t in 6..5_000 {
            assert_eq!(e.failed(t), None, "within the interval at {t}");
            pauses.push(e.pause());
        }
        assert_eq!(pauses[0], Duration::from_millis(1));
        assert_eq!(pauses[1], Duration::from_millis(2));
        assert_eq!(*pauses.last().unwrap(), PAUSE_MAX);
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "never shorter");
        // The next line says how many were left out.
        assert_eq!(e.failed(5 + LOG_EVERY_MS), Some(4_994));
        assert_eq!(e.failed(6 + LOG_EVERY_MS), None);
        // Recovery: no pause after the next single failure.
        e.passed();
        assert_eq!(e.pause(), Duration::ZERO);
        assert_eq!(e.failed(7 + LOG_EVERY_MS), None);
        assert_eq!(e.pause(), Duration::ZERO);
    }
}
