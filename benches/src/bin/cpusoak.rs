//! A CPU soaker for the end-to-end benchmark (`scripts/bench-e2e.sh`): the cyclesoak method of
//! measuring how much of a core some work takes. Started in the idle scheduling class
//! (`chrt --idle 0`) and pinned to the gateway's core, it spins and counts; anything else that
//! wants the core runs first. The work it gets done over a window, against its rate on an
//! otherwise idle core, says how much of the core everything else took.
//!
//! Why not /proc/stat or the tasks' own CPU times: on this VM the kernel's softirq work (the
//! kernel gateways' forwarding, part of AF_XDP's copy mode) either runs from a tickless idle and
//! is never sampled, or is charged to whichever task it interrupted. Counting the soaker's
//! progress sees all of it, whoever is charged.
//!
//! `cpusoak [--seconds S]`: every 10 ms prints one line `<ns since start> <count>`, flushed,
//! until `--seconds` (default 3600) pass or stdout closes.

use std::hint::black_box;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Spins between two looks at the clock: short enough for a 10 ms report period, long enough
/// that reading the clock is a small share of the loop.
const SPINS: u64 = 4096;
const REPORT: Duration = Duration::from_millis(10);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let seconds = match args.as_slice() {
        [] => 3600.0,
        [flag, value] if flag == "--seconds" => match value.parse::<f64>() {
            Ok(s) if s > 0.0 && s <= 86_400.0 => s,
            _ => {
                eprintln!("cpusoak: --seconds: {value:?} is not a number of seconds in (0, 86400]");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("usage: cpusoak [--seconds S]");
            return ExitCode::from(2);
        }
    };
    let limit = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut out = std::io::stdout().lock();
    let mut count: u64 = 0;
    let mut next = REPORT;
    loop {
        for _ in 0..SPINS {
            count = black_box(count).wrapping_add(1);
        }
        let t = start.elapsed();
        if t >= next {
            if writeln!(out, "{} {count}", t.as_nanos())
                .and_then(|()| out.flush())
                .is_err()
            {
                return ExitCode::SUCCESS;
            }
            next = t + REPORT;
        }
        if t >= limit {
            return ExitCode::SUCCESS;
        }
    }
}
