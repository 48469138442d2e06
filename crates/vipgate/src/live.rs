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
}

impl Block {
    fn new(n: usize) -> Block {
        Block {
            lines: (0..n.div_ceil(8)).map(|_| Line::default()).collect(),
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
}
