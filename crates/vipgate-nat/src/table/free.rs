//! Free entries: a few lock-free stacks (Treiber, linked through the free entries themselves,
//! so they cost no memory per entry), one per group of workers.
//!
//! A single shared free list would be one cache line that every insert and every removal on
//! every core writes; with one stack per worker group (chosen by the connection's owner) the
//! workers mostly write their own line, and an empty stack steals from the others.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use super::entry::Entry;

/// Number of stacks; workers map onto them by `owner % SHARDS`.
pub(super) const SHARDS: usize = 16;

/// End of a stack.
const NIL: u32 = u32::MAX;

/// One stack head, alone on its cache line with the count of entries taken from it.
#[repr(C, align(64))]
#[derive(Default)]
struct Shard {
    /// `version << 32 | top index`; the version makes a stale head's CAS fail (ABA).
    head: AtomicU64,
    /// Entries popped minus entries pushed (wrapping); summed over the shards, the number of
    /// allocated entries.
    taken: AtomicU32,
}

pub(super) struct FreeList {
    shards: [Shard; SHARDS],
}

impl FreeList {
    /// Links every entry (all free) into the stacks, each taking a contiguous range.
    pub(super) fn new(entries: &[Entry]) -> FreeList {
        let list = FreeList {
            shards: Default::default(),
        };
        let n = entries.len() as u64;
        for (s, shard) in list.shards.iter().enumerate() {
            let start = n * s as u64 / SHARDS as u64;
            let end = n * (s as u64 + 1) / SHARDS as u64;
            for i in start..end {
                let next = if i + 1 < end { i as u32 + 1 } else { NIL };
                if let Some(e) = entries.get(i as usize) {
                    e.next_free.store(next, Ordering::Relaxed);
                }
            }
            let top = if start < end { start as u32 } else { NIL };
            shard.head.store(u64::from(top), Ordering::Relaxed);
        }
        list
    }

    /// Takes a free entry, from stack `home` if it has one, else from the others; the entry
    /// and the stack it came from.
    #[inline]
    pub(super) fn pop(&self, entries: &[Entry], home: usize) -> Option<(u32, usize)> {
        (0..SHARDS)
            .map(|k| (home + k) % SHARDS)
            .find_map(|s| Some((self.pop_from(entries, s)?, s)))
    }

    fn pop_from(&self, entries: &[Entry], s: usize) -> Option<u32> {
        let shard = self.shards.get(s)?;
        let mut head = shard.head.load(Ordering::Acquire);
        loop {
            let top = head as u32;
            if top == NIL {
                return None;
            }
            // May read a link being rewritten by a thread that popped `top` first; the version
            // in `head` has then moved on and the CAS below fails.
            let next = entries.get(top as usize)?.next_free.load(Ordering::Relaxed);
            let new = next_version(head) | u64::from(next);
            match shard
                .head
                .compare_exchange_weak(head, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => {
                    shard.taken.fetch_add(1, Ordering::Relaxed);
                    return Some(top);
                }
                Err(now) => head = now,
            }
        }
    }

    /// Returns entry `index` to stack `s`.
    pub(super) fn push(&self, entries: &[Entry], index: u32, s: usize) {
        let (Some(shard), Some(entry)) = (self.shards.get(s % SHARDS), entries.get(index as usize))
        else {
            return;
        };
        let mut head = shard.head.load(Ordering::Relaxed);
        loop {
            entry.next_free.store(head as u32, Ordering::Relaxed);
            let new = next_version(head) | u64::from(index);
            match shard
                .head
                .compare_exchange_weak(head, new, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        shard.taken.fetch_sub(1, Ordering::Relaxed);
    }

    /// Entries taken and not returned; a sum of racy reads, so it may lag.
    pub(super) fn taken(&self) -> i64 {
        self.shards
            .iter()
            .map(|s| s.taken.load(Ordering::Relaxed))
            .fold(0u32, u32::wrapping_add) as i32 as i64
    }
}

#[inline]
fn next_version(head: u64) -> u64 {
    ((head >> 32).wrapping_add(1) & 0xffff_ffff) << 32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: usize) -> Vec<Entry> {
        (0..n).map(|_| Entry::default()).collect()
    }

    #[test]
    fn pops_every_entry_once_then_steals_then_runs_dry() {
        for n in [1usize, 5, 16, 100] {
            let e = entries(n);
            let list = FreeList::new(&e);
            let mut seen = vec![false; n];
            for _ in 0..n {
                let (i, _) = list.pop(&e, 3).unwrap();
                assert!(!seen[i as usize], "entry {i} popped twice");
                seen[i as usize] = true;
            }
            assert!(list.pop(&e, 3).is_none());
            assert_eq!(list.taken(), n as i64);
            list.push(&e, 0, 7);
            assert_eq!(list.pop(&e, 1), Some((0, 7)));
        }
    }

    #[test]
    fn push_then_pop_is_lifo_on_the_home_stack() {
        let e = entries(64);
        let list = FreeList::new(&e);
        let (a, sa) = list.pop(&e, 2).unwrap();
        let (b, sb) = list.pop(&e, 2).unwrap();
        assert_eq!((sa, sb), (2, 2));
        list.push(&e, a, 2);
        list.push(&e, b, 2);
        assert_eq!(list.pop(&e, 2), Some((b, 2)));
        assert_eq!(list.pop(&e, 2), Some((a, 2)));
        list.push(&e, a, 2);
        list.push(&e, b, 2);
        assert_eq!(list.taken(), 0);
    }
}
