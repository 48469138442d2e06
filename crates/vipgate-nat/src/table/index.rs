//! The index: buckets of eight 64-bit slots, each slot pointing at one key of one entry.
//!
//! A key has two candidate buckets; it goes into the first one unless that one is nearly
//! full (see [`claim`]), so nearly every established-flow lookup reads one bucket line and
//! then the entry line. Slot layout:
//!
//! | bits   | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | 0..32  | entry index                                                  |
//! | 32     | direction of the key in the entry (0 orig, 1 reply)          |
//! | 33     | PENDING: being inserted, invisible to lookups                |
//! | 34     | KILLED: a competing insert of the same key cancelled it      |
//! | 35..64 | tag from the hash (bit 35 always set, so a used slot is not 0) |

use std::sync::atomic::{AtomicU64, Ordering};

use crate::state::Dir;

/// Slots per bucket: one cache line.
pub(super) const SLOTS: usize = 8;

/// Index slots per connection of capacity (two keys each): a load of 0.29, at which a full
/// table with churn practically never finds both buckets of a key full (see [`claim`]) and
/// 99.8 % of keys sit in their first bucket. 64 + 7 × 8 = 120 bytes per connection.
pub(super) const SLOTS_PER_CONN: u64 = 7;

const IDX_MASK: u64 = 0xffff_ffff;
const DIR_BIT: u64 = 1 << 32;
pub(super) const PENDING: u64 = 1 << 33;
pub(super) const KILLED: u64 = 1 << 34;
const TAG_SHIFT: u32 = 35;
const TAG_MASK: u64 = !0 << TAG_SHIFT;
/// The bits a committed slot of a given tag has fixed: the tag, PENDING and KILLED clear.
const MATCH_MASK: u64 = TAG_MASK | PENDING | KILLED;

/// One cache line of slots.
#[repr(C, align(64))]
#[derive(Default)]
pub(super) struct Bucket {
    pub(super) slots: [AtomicU64; SLOTS],
}

const _: () = assert!(std::mem::size_of::<Bucket>() == 64);

/// Where a key lives in an index of `n` buckets.
#[derive(Clone, Copy, Debug)]
pub(super) struct Place {
    pub(super) first: usize,
    pub(super) second: usize,
    pub(super) tag: u64,
}

/// Maps a hash onto `0..n` without division (Lemire's multiply-shift), so the bucket count
/// needs not be a power of two and memory follows the capacity exactly.
#[inline]
fn reduce(x: u64, n: u64) -> usize {
    ((u128::from(x) * u128::from(n)) >> 64) as usize
}

/// The first candidate bucket, from the high bits of the hash.
#[inline]
pub(super) fn first_bucket(hash: u64, n: u64) -> usize {
    reduce(hash, n)
}

/// The tag: the bits of the hash just below those that chose the first bucket (the fraction
/// left by the multiply-shift), so two keys of one bucket rarely share it.
#[inline]
pub(super) fn tag(hash: u64, n: u64) -> u64 {
    (hash.wrapping_mul(n) & TAG_MASK) | (1 << TAG_SHIFT)
}

/// The second candidate bucket, from a remix of the hash; never the first unless `n == 1`.
#[inline]
pub(super) fn second_bucket(hash: u64, n: u64, first: usize) -> usize {
    let mixed = (hash ^ (hash >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let b = reduce(mixed, n);
    if b != first || n <= 1 {
        b
    } else if (first as u64) + 1 == n {
        0
    } else {
        first + 1
    }
}

impl Place {
    #[inline]
    pub(super) fn new(hash: u64, n: u64) -> Place {
        let first = first_bucket(hash, n);
        Place {
            first,
            second: second_bucket(hash, n, first),
            tag: tag(hash, n),
        }
    }

    /// The candidate buckets, the second omitted when it is the first.
    #[inline]
    pub(super) fn buckets(&self) -> impl Iterator<Item = usize> {
        let second = (self.second != self.first).then_some(self.second);
        std::iter::once(self.first).chain(second)
    }

    /// The committed slot value for key `dir` of entry `index`.
    #[inline]
    pub(super) fn slot_value(&self, index: u32, dir: Dir) -> u64 {
        self.tag | u64::from(index) | if dir == Dir::Reply { DIR_BIT } else { 0 }
    }
}

/// A decoded slot value.
#[inline]
pub(super) fn slot_index(v: u64) -> u32 {
    (v & IDX_MASK) as u32
}

#[inline]
pub(super) fn slot_dir(v: u64) -> Dir {
    if v & DIR_BIT != 0 {
        Dir::Reply
    } else {
        Dir::Orig
    }
}

/// Whether `v` is a committed slot carrying `tag`.
#[inline]
pub(super) fn is_committed_with(v: u64, tag: u64) -> bool {
    v & MATCH_MASK == tag
}

/// Whether `v` is a committed or pending (not killed) slot carrying `tag`.
#[inline]
pub(super) fn is_claimed_with(v: u64, tag: u64) -> bool {
    v & (TAG_MASK | KILLED) == tag
}

/// The slot at global position `pos` (bucket × 8 + slot).
#[inline]
pub(super) fn slot_at(buckets: &[Bucket], pos: usize) -> Option<&AtomicU64> {
    buckets.get(pos / SLOTS)?.slots.get(pos % SLOTS)
}

/// Claims an empty slot of the key's buckets for `value`: in the first bucket while it has
/// two or more empty slots, else in the emptier of the two (the first on a tie). Its
/// position, or `None` if both buckets are full.
///
/// Spilling by load rather than to the second bucket only when the first is full balances
/// the crowded buckets: in a simulation of a full table with churn, 3 million inserts found
/// both buckets of a key full 22 times with first-with-room and never with this rule, while
/// keys outside their first bucket stay near 0.2 %.
pub(super) fn claim(buckets: &[Bucket], place: &Place, value: u64) -> Option<usize> {
    let first = buckets.get(place.first)?;
    let mut order = [place.first, place.second];
    if place.second != place.first && occupancy(first) >= SLOTS - 1 {
        let second = buckets.get(place.second)?;
        if occupancy(second) < occupancy(first) {
            order = [place.second, place.first];
        }
    }
    let n = if place.second == place.first { 1 } else { 2 };
    for &b in order.iter().take(n) {
        let bucket = buckets.get(b)?;
        for (i, slot) in bucket.slots.iter().enumerate() {
            if slot.load(Ordering::Relaxed) == 0
                && slot
                    .compare_exchange(0, value, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(b * SLOTS + i);
            }
        }
    }
    None
}

/// Used slots of a bucket (a racy count: only a placement hint).
fn occupancy(bucket: &Bucket) -> usize {
    bucket
        .slots
        .iter()
        .filter(|s| s.load(Ordering::Relaxed) != 0)
        .count()
}

/// Clears the slot holding exactly `value` in the key's buckets; its position, if found.
pub(super) fn unlink(buckets: &[Bucket], place: &Place, value: u64) -> Option<usize> {
    for b in place.buckets() {
        let Some(bucket) = buckets.get(b) else {
            continue;
        };
        for (i, slot) in bucket.slots.iter().enumerate() {
            if slot.load(Ordering::Relaxed) == value
                && slot
                    .compare_exchange(value, 0, Ordering::SeqCst, Ordering::Relaxed)
                    .is_ok()
            {
                return Some(b * SLOTS + i);
            }
        }
    }
    None
}

/// Whether slot position `pos` lies in the key's second bucket (so the key spilled out of
/// its first).
#[inline]
pub(super) fn is_spilled(place: &Place, pos: usize) -> bool {
    place.second != place.first && pos / SLOTS == place.second
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_in_range_and_distinct() {
        for n in [1u64, 2, 3, 7, 8, 1000, 875_000] {
            for i in 0..2000u64 {
                let h = i.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ (i << 7);
                let p = Place::new(h, n);
                assert!((p.first as u64) < n && (p.second as u64) < n);
                assert_eq!(p.first != p.second, n > 1, "n={n} h={h:#x}");
                assert_ne!(p.tag, 0);
                assert_eq!(p.buckets().count(), if n > 1 { 2 } else { 1 });
            }
        }
    }

    #[test]
    fn slot_encoding() {
        let p = Place::new(0x1234_5678_9abc_def0, 100);
        let v = p.slot_value(u32::MAX - 1, Dir::Reply);
        assert_eq!(slot_index(v), u32::MAX - 1);
        assert_eq!(slot_dir(v), Dir::Reply);
        assert_eq!(slot_dir(p.slot_value(0, Dir::Orig)), Dir::Orig);
        assert_ne!(p.slot_value(0, Dir::Orig), 0);
        assert!(is_committed_with(v, p.tag));
        assert!(!is_committed_with(v | PENDING, p.tag));
        assert!(is_claimed_with(v | PENDING, p.tag));
        assert!(!is_claimed_with(v | PENDING | KILLED, p.tag));
        let other = Place::new(0x0fed_cba9_8765_4321, 100);
        assert!(other.tag == p.tag || !is_committed_with(v, other.tag));
    }

    #[test]
    fn claim_fills_first_then_second_and_unlink_clears() {
        let buckets: Vec<Bucket> = (0..4).map(|_| Bucket::default()).collect();
        let p = Place::new(42, 4);
        let mut positions = Vec::new();
        for i in 0..2 * SLOTS as u32 {
            let pos = claim(&buckets, &p, p.slot_value(i, Dir::Orig));
            positions.push(pos.map(|pos| pos / SLOTS));
        }
        let in_bucket = |b: usize| positions.iter().filter(|x| **x == Some(b)).count();
        assert_eq!((in_bucket(p.first), in_bucket(p.second)), (SLOTS, SLOTS));
        // Seven in the first, then the emptier: the second until it has seven too.
        assert!(positions[..7].iter().all(|b| *b == Some(p.first)));
        assert!(positions[7..14].iter().all(|b| *b == Some(p.second)));
        assert_eq!(claim(&buckets, &p, p.slot_value(99, Dir::Orig)), None);
        assert!(unlink(&buckets, &p, p.slot_value(3, Dir::Orig)).is_some());
        assert!(unlink(&buckets, &p, p.slot_value(3, Dir::Orig)).is_none());
        assert_eq!(
            claim(&buckets, &p, p.slot_value(99, Dir::Orig)).map(|pos| pos / SLOTS),
            Some(p.first)
        );
    }
}
