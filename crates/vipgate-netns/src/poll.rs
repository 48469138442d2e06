//! Waiting for a condition instead of sleeping a fixed time: bounded in time and in attempts,
//! with a small backoff, and a timeout message that says what was awaited.

use std::time::{Duration, Instant};

/// First pause between two attempts.
const FIRST_PAUSE: Duration = Duration::from_millis(5);
/// Longest pause between two attempts.
const MAX_PAUSE: Duration = Duration::from_millis(200);
/// Attempts at most, whatever the timeout: a bound on the loop's count as well as its time.
const MAX_ATTEMPTS: u32 = 100_000;

/// Calls `ready` until it returns true or `timeout` has passed.
///
/// # Errors
/// A message naming `what`, the timeout and the number of attempts.
pub fn poll_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> bool,
) -> Result<(), String> {
    try_poll_until(timeout, what, || Ok(ready()))
}

/// Like [`poll_until`], but `ready` can also give up at once with an error (a process that
/// died while we waited for it to be ready, for example).
///
/// # Errors
/// The error `ready` returned, or a timeout message naming `what`.
pub fn try_poll_until(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<bool, String>,
) -> Result<(), String> {
    let start = Instant::now();
    let mut pause = FIRST_PAUSE;
    let mut attempts = 0u32;
    while attempts < MAX_ATTEMPTS {
        attempts += 1;
        if ready().map_err(|e| format!("while waiting for {what}: {e}"))? {
            return Ok(());
        }
        let elapsed = start.elapsed();
        if elapsed >= timeout {
            break;
        }
        std::thread::sleep(pause.min(timeout.saturating_sub(elapsed)));
        pause = (pause * 2).min(MAX_PAUSE);
    }
    Err(format!(
        "timed out after {:.1} s waiting for {what} ({attempts} attempts)",
        start.elapsed().as_secs_f64()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn returns_once_ready() {
        let n = Cell::new(0);
        let r = poll_until(Duration::from_secs(10), "third call", || {
            n.set(n.get() + 1);
            n.get() == 3
        });
        assert_eq!(r, Ok(()));
        assert_eq!(n.get(), 3);
    }

    #[test]
    fn times_out_with_the_name_of_the_wait() {
        let n = Cell::new(0u32);
        let r = poll_until(Duration::from_millis(50), "the impossible", || {
            n.set(n.get() + 1);
            false
        });
        let e = r.unwrap_err();
        assert!(e.contains("waiting for the impossible"), "{e}");
        assert!(n.get() >= 2, "polled more than once before giving up");
    }

    #[test]
    fn an_error_ends_the_wait_at_once() {
        let n = Cell::new(0u32);
        let r = try_poll_until(Duration::from_secs(10), "a dead process", || {
            n.set(n.get() + 1);
            Err("it exited with status 1".to_string())
        });
        assert_eq!(
            r,
            Err("while waiting for a dead process: it exited with status 1".to_string())
        );
        assert_eq!(n.get(), 1);
    }
}
