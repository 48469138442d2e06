//! What a cache miss costs on this machine: the time of one dependent load at a random
//! place in working sets from 256 KiB to 512 MiB (a pointer chase over a random cycle of
//! cache lines, 4 KiB pages as the allocator gives them), and the core clock seen through
//! a chain of dependent multiplies. The engine benchmarks' per-packet times read against
//! these: at a million flows a lookup touches two lines no cache holds.
//!
//! `cargo run -p vipgate-benches --release --bin latency`
#![allow(clippy::indexing_slicing)]

use std::hint::black_box;
use std::time::Instant;

use vipgate_benches::Rng;

/// Words per 64-byte line.
const LINE_WORDS: usize = 8;

/// Nanoseconds per load of a chase through a random cycle over `bytes` of memory.
fn chase_ns(bytes: usize, rng: &mut Rng) -> f64 {
    let lines = (bytes / 64).max(2);
    // A random cyclic order of the lines (Sattolo's shuffle gives a single cycle).
    let mut order: Vec<usize> = (0..lines).collect();
    for i in (1..lines).rev() {
        let j = rng.below(i as u64) as usize;
        order.swap(i, j);
    }
    let mut next = vec![0usize; lines * LINE_WORDS];
    for (k, &line) in order.iter().enumerate() {
        next[line * LINE_WORDS] = order[(k + 1) % lines] * LINE_WORDS;
    }
    let steps = (lines * 4).clamp(2_000_000, 20_000_000);
    let mut p = 0usize;
    // One pass first, so page faults are not timed.
    for _ in 0..lines {
        p = next[p];
    }
    let t = Instant::now();
    for _ in 0..steps {
        p = next[p];
    }
    let ns = t.elapsed().as_secs_f64() * 1e9 / steps as f64;
    black_box(p);
    ns
}

/// The core clock in GHz, from a chain of dependent 64-bit multiplies (3 cycles each on
/// every x86-64 core of the last decade; written in assembly so no compiler shortens it).
#[cfg(target_arch = "x86_64")]
fn clock_ghz() -> Option<f64> {
    let n: u64 = 100_000_000;
    let mut x: u64 = black_box(3);
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: four multiplies of a register by itself; no memory, no flags relied on.
        unsafe {
            std::arch::asm!(
                "imul {0}, {0}",
                "imul {0}, {0}",
                "imul {0}, {0}",
                "imul {0}, {0}",
                inout(reg) x,
                options(pure, nomem, nostack)
            );
        }
    }
    let s = t.elapsed().as_secs_f64();
    black_box(x);
    Some(3.0 * 4.0 * n as f64 / s / 1e9)
}

#[cfg(not(target_arch = "x86_64"))]
fn clock_ghz() -> Option<f64> {
    None
}

fn main() {
    if let Some(ghz) = clock_ghz() {
        println!("core clock (chain of dependent multiplies): {ghz:.2} GHz");
    }
    let mut rng = Rng::new(0x6c61_7465_6e63_7921);
    for kib in [256usize, 2 << 10, 16 << 10, 64 << 10, 256 << 10, 512 << 10] {
        let ns = chase_ns(kib * 1024, &mut rng);
        let size = if kib < 1024 {
            format!("{kib} KiB")
        } else {
            format!("{} MiB", kib / 1024)
        };
        println!("random dependent load over {size:>8}: {ns:7.1} ns");
    }
}
