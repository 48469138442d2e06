//! Live counters: each worker copies its counters into a block of its own every
//! [`PUBLISH_EVERY_MS`], and the control thread sums the blocks whenever it likes.
//!
//! The workers count in plain integers on the packet path; the copy into atomics happens
//! between batches, a few dozen relaxed stores per interval. Each block is made of whole
//! cache lines, so no line is written by two cores; readers only load.

use std::sync::atomic::{AtomicU64, Ordering};

/// How often a worker publishes its counters (and the kernel's socket statistics).
pub(crate) const PUBLISH_EVERY_MS: u64 = 100;

/// Eight counters, one cache line.
#[repr(align(64))]
#[derive(Default)]
struct Line([AtomicU64; 8]);

/// One worker's published counters, in [`Live::names`] order.
pub(crate) struct Block {
    lines: Box<[Line]>,
    /// When the worker last looked at its receive rings (milliseconds of the daemon's
    /// clock), in a line of its own: written once a millisecond at most.
    stepped: Line,
}

impl Block {
    fn new(n: usize) -> Block {
        Block {
            lines: (0..n.div_ceil(8)).map(|_| Line::default()).collect(),
            stepped: Line::default(),
        }
    }

    /// Notes that the worker looked at its receive rings at `now_ms` (only the owning
    /// worker calls this, once per pass: a store only when the millisecond changed).
    #[inline]
    pub(crate) fn stepped(&self, now_ms: u64) {
        let [c, ..] = &self.stepped.0;
        if c.load(Ordering::Relaxed) != now_ms {
            c.store(now_ms, Ordering::Relaxed);
        }
    }

    fn cell(&self, i: usize) -> Option<&AtomicU64> {
        self.lines.get(i / 8)?.0.get(i % 8)
    }

    /// Stores counter `i` (only the owning worker calls this).
    #[inline]
    pub(crate) fn store(&self, i: usize, v: u64) {
        if let Some(c) = self.cell(i) {
            c.store(v, Ordering::Relaxed);
        }
    }

    fn load(&self, i: usize) -> u64 {
        self.cell(i).map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// Every worker's block, and the counter names they share.
pub(crate) struct Live {
    names: Vec<&'static str>,
    blocks: Vec<Block>,
}

impl Live {
    /// Blocks for `workers` workers publishing the counters `names`, in that order.
    pub(crate) fn new(names: Vec<&'static str>, workers: usize) -> Live {
        let blocks = (0..workers).map(|_| Block::new(names.len())).collect();
        Live { names, blocks }
    }

    /// The counter names, in publication order.
    pub(crate) fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// Worker `w`'s block.
    pub(crate) fn block(&self, w: usize) -> Option<&Block> {
        self.blocks.get(w)
    }

    /// Worker `w`'s counters as last published.
    pub(crate) fn worker(&self, w: usize) -> Vec<(&'static str, u64)> {
        let Some(b) = self.blocks.get(w) else {
            return Vec::new();
        };
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, b.load(i)))
            .collect()
    }

    /// Every counter summed over the workers, in name order of publication.
    pub(crate) fn totals(&self) -> Vec<(&'static str, u64)> {
        self.names
            .iter()
            .enumerate()
            .map(|(i, n)| (*n, self.blocks.iter().map(|b| b.load(i)).sum()))
            .collect()
    }

    /// One counter summed over the workers.
    pub(crate) fn total(&self, name: &str) -> u64 {
        self.names
            .iter()
            .position(|n| *n == name)
            .map_or(0, |i| self.blocks.iter().map(|b| b.load(i)).sum())
    }

    /// Until when every worker has looked at its receive rings (milliseconds of the daemon's
    /// clock): frames that arrived before it have been taken in. A worker that is starved of
    /// CPU holds it back; an idle one waits at most a millisecond between looks.
    pub(crate) fn looked_ms(&self) -> u64 {
        self.blocks
            .iter()
            .map(|b| {
                let [c, ..] = &b.stepped.0;
                c.load(Ordering::Relaxed)
            })
            .min()
            .unwrap_or(0)
    }

    /// The number of workers.
    pub(crate) fn workers(&self) -> usize {
        self.blocks.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn sums_by_name_across_workers() {
        let live = Live::new(vec!["a", "b", "c", "d", "e", "f", "g", "h", "i"], 2);
        live.block(0).unwrap().store(0, 3);
        live.block(1).unwrap().store(0, 4);
        live.block(1).unwrap().store(8, 9);
        live.block(1).unwrap().store(9, 1); // past the names: ignored
        assert_eq!(live.total("a"), 7);
        assert_eq!(live.total("i"), 9);
        assert_eq!(live.total("nope"), 0);
        assert_eq!(live.totals()[0], ("a", 7));
        assert_eq!(live.worker(1)[8], ("i", 9));
        assert!(live.worker(2).is_empty());
        assert_eq!(std::mem::align_of::<Line>(), 64);
    }

    #[test]
    fn the_slowest_worker_says_until_when_all_looked() {
        let live = Live::new(vec!["a"], 2);
        assert_eq!(live.looked_ms(), 0);
        live.block(0).unwrap().stepped(50);
        live.block(1).unwrap().stepped(40);
        assert_eq!(live.looked_ms(), 40);
        live.block(1).unwrap().stepped(60);
        assert_eq!(live.looked_ms(), 50);
    }
}
