//! Maglev consistent hashing with weights (Eisenbud et al., "Maglev: A Fast and Reliable
//! Software Network Load Balancer", NSDI 2016), for picking a pool member for a new
//! connection.
//!
//! The table is built on the control thread whenever a pool's membership or health changes,
//! and read by the workers: a lookup is one modulo and one load. Taking a backend out of
//! service moves its own slots and only a small fraction of the others', so most existing
//! flows of a pool would pick the same backend again after a change (flows already in the
//! connection table keep theirs regardless).
//!
//! Each backend's permutation is derived from its identity with a hash defined in this file
//! (FNV-1a followed by the murmur3 64-bit finalizer), not a randomly seeded or
//! platform-dependent one, so the two boxes of an HA pair with the same configuration build
//! identical tables, also across builds and CPU models. Changing that hash changes every table:
//! the `golden_table` test pins it.

use std::fmt;

/// The slot value for "no backend".
const NONE: u16 = u16::MAX;

/// Why a [`Maglev`] table could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaglevError {
    /// The table size is not a prime number (needed so every permutation visits every slot).
    SizeNotPrime(u32),
    /// The table has fewer slots than backends in service.
    TooSmall {
        /// The table size.
        size: u32,
        /// Backends in service (weight > 0).
        backends: usize,
    },
    /// The table size exceeds [`Maglev::MAX_SIZE`].
    TooLarge(u32),
    /// The pool has no backends at all.
    NoBackends,
    /// More backends than [`Maglev::MAX_BACKENDS`].
    TooManyBackends(usize),
}

impl fmt::Display for MaglevError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaglevError::SizeNotPrime(size) => {
                write!(f, "Maglev table size {size} is not a prime number")
            }
            MaglevError::TooSmall { size, backends } => write!(
                f,
                "Maglev table size {size} is smaller than the {backends} backends in service \
                 (use a prime of at least 100 x backends, e.g. {})",
                Maglev::DEFAULT_SIZE
            ),
            MaglevError::TooLarge(size) => write!(
                f,
                "Maglev table size {size} exceeds the maximum {}",
                Maglev::MAX_SIZE
            ),
            MaglevError::NoBackends => write!(f, "Maglev table needs at least one backend"),
            MaglevError::TooManyBackends(n) => write!(
                f,
                "{n} backends exceed the Maglev maximum of {}",
                Maglev::MAX_BACKENDS
            ),
        }
    }
}

impl std::error::Error for MaglevError {}

/// A Maglev lookup table: for every slot, the index of the backend that owns it.
#[derive(Clone, PartialEq, Eq)]
pub struct Maglev {
    /// Backend index per slot, [`NONE`] when no backend is in service.
    table: Box<[u16]>,
    /// Slots owned by each backend.
    counts: Box<[u32]>,
}

impl fmt::Debug for Maglev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maglev")
            .field("size", &self.table.len())
            .field("slots_per_backend", &self.counts)
            .finish()
    }
}

/// 64-bit FNV-1a of `bytes` from a seeded basis, then the murmur3 finalizer, since FNV alone
/// leaves the high bits of short keys poorly mixed.
fn fixed_hash(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325 ^ seed;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= bytes.len() as u64;
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

const SEED_OFFSET: u64 = 0x6d61_676c_6576_3031; // "maglev01"
const SEED_SKIP: u64 = 0x6d61_676c_6576_3032; // "maglev02"

fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n % 2 == 0 {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n % d == 0 {
            return false;
        }
        d += 2;
    }
    true
}

/// Population state of one backend in service.
struct Filler {
    index: u16,
    weight: u64,
    /// The backend takes a turn in round `r` only while `r * weight >= target`; each turn
    /// adds the largest weight, so over `r` rounds it takes about `r * weight / w_max` turns.
    target: u64,
    /// Current position in its permutation `(offset + j * skip) mod size`.
    pos: u64,
    skip: u64,
}

impl Maglev {
    /// The table size the paper uses; good for pools up to a few hundred backends (keep
    /// size >= 100 x backends for shares within about 1% of their weights).
    pub const DEFAULT_SIZE: u32 = 65537;
    /// The largest table size accepted (a prime just below 2^24; 32 MiB of table).
    pub const MAX_SIZE: u32 = 16_777_213;
    /// The most backends a table can index (`u16::MAX` marks an empty slot).
    pub const MAX_BACKENDS: usize = u16::MAX as usize;

    /// Builds the table. `backends[i]` is (identity of backend i, e.g. its "addr:port"
    /// bytes, weight); weight 0 takes the backend out of service: it gets no slot, and its
    /// index is kept so the others' indices do not change. Slots are shared in proportion to
    /// the weights (Envoy's weighted Maglev population).
    ///
    /// Limits: `size` must be a prime with `size <= MAX_SIZE` and at least the number of
    /// backends in service; at most `MAX_BACKENDS` backends. All weights 0 builds a table
    /// whose lookups return `None`.
    ///
    /// # Errors
    /// [`MaglevError::NoBackends`] for an empty slice, [`MaglevError::TooManyBackends`],
    /// [`MaglevError::TooLarge`], [`MaglevError::SizeNotPrime`], and
    /// [`MaglevError::TooSmall`] when fewer slots than backends in service.
    pub fn new(backends: &[(&[u8], u32)], size: u32) -> Result<Maglev, MaglevError> {
        if backends.is_empty() {
            return Err(MaglevError::NoBackends);
        }
        if backends.len() > Self::MAX_BACKENDS {
            return Err(MaglevError::TooManyBackends(backends.len()));
        }
        if size > Self::MAX_SIZE {
            return Err(MaglevError::TooLarge(size));
        }
        if !is_prime(size) {
            return Err(MaglevError::SizeNotPrime(size));
        }
        let m = u64::from(size);
        let mut fillers: Vec<Filler> = backends
            .iter()
            .zip(0u16..)
            .filter(|((_, weight), _)| *weight > 0)
            .map(|(&(id, weight), index)| Filler {
                index,
                weight: u64::from(weight),
                target: 0,
                pos: fixed_hash(id, SEED_OFFSET) % m,
                // size is prime, so any skip in 1..size walks through every slot.
                skip: fixed_hash(id, SEED_SKIP) % (m - 1).max(1) + 1,
            })
            .collect();
        if fillers.len() > size as usize {
            return Err(MaglevError::TooSmall {
                size,
                backends: fillers.len(),
            });
        }
        let mut table = vec![NONE; size as usize].into_boxed_slice();
        let mut counts = vec![0u32; backends.len()].into_boxed_slice();
        let w_max = fillers.iter().map(|f| f.weight).max().unwrap_or(0);
        let mut filled = 0u64;
        // The backend of weight w_max takes a turn every round, so `size` rounds fill the
        // table; the bound only keeps the loop visibly finite.
        'rounds: for round in 0..=m {
            for f in fillers.iter_mut() {
                if round * f.weight < f.target {
                    continue;
                }
                f.target += w_max;
                // The permutation visits every slot within `size` steps and a slot is free
                // (filled < size), so this finds one.
                for _ in 0..m {
                    let slot = table.get_mut(f.pos as usize);
                    f.pos += f.skip;
                    if f.pos >= m {
                        f.pos -= m;
                    }
                    if let Some(slot) = slot {
                        if *slot == NONE {
                            *slot = f.index;
                            if let Some(c) = counts.get_mut(usize::from(f.index)) {
                                *c += 1;
                            }
                            break;
                        }
                    }
                }
                filled += 1;
                if filled == m {
                    break 'rounds;
                }
            }
        }
        Ok(Maglev { table, counts })
    }

    /// The backend for a flow hash; `None` when no backend is in service. No allocation, no
    /// panic.
    #[inline]
    pub fn lookup(&self, hash: u64) -> Option<u16> {
        // A modulo by the prime size uses every bit of the hash, whatever its quality.
        let slot = hash % (self.table.len() as u64).max(1);
        let backend = *self.table.get(slot as usize)?;
        (backend != NONE).then_some(backend)
    }

    /// The number of slots.
    pub fn size(&self) -> u32 {
        self.table.len() as u32
    }

    /// Slots owned by `backend` (0 for an unknown index or a backend out of service).
    pub fn slots_of(&self, backend: u16) -> u32 {
        self.counts.get(usize::from(backend)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ids(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| format!("198.18.1.{}:8080", i + 1).into_bytes())
            .collect()
    }

    fn build(ids: &[Vec<u8>], weights: &[u32], size: u32) -> Result<Maglev, MaglevError> {
        let backends: Vec<(&[u8], u32)> = ids
            .iter()
            .zip(weights)
            .map(|(id, &w)| (id.as_slice(), w))
            .collect();
        Maglev::new(&backends, size)
    }

    #[test]
    fn rejects_bad_sizes_and_pools() {
        let ids = ids(3);
        for size in [0, 1, 4, 65536, 65535, 100_000] {
            assert_eq!(
                build(&ids, &[1, 1, 1], size),
                Err(MaglevError::SizeNotPrime(size))
            );
        }
        assert_eq!(
            build(&ids, &[1, 1, 1], 2),
            Err(MaglevError::TooSmall {
                size: 2,
                backends: 3
            })
        );
        // Only backends in service count against the size.
        assert!(build(&ids, &[1, 0, 1], 2).is_ok());
        assert!(build(&ids, &[1, 1, 1], 3).is_ok());
        assert_eq!(Maglev::new(&[], 65537), Err(MaglevError::NoBackends));
        assert_eq!(
            build(&ids, &[1, 1, 1], Maglev::MAX_SIZE + 2),
            Err(MaglevError::TooLarge(Maglev::MAX_SIZE + 2))
        );
        assert!(is_prime(Maglev::MAX_SIZE) && is_prime(Maglev::DEFAULT_SIZE));
        let many = vec![(&b""[..], 1u32); Maglev::MAX_BACKENDS + 1];
        assert_eq!(
            Maglev::new(&many, 65537),
            Err(MaglevError::TooManyBackends(Maglev::MAX_BACKENDS + 1))
        );
        assert!(MaglevError::SizeNotPrime(4).to_string().contains('4'));
    }

    #[test]
    fn every_slot_is_assigned() {
        let ids = ids(5);
        let t = build(&ids, &[1, 3, 0, 2, 7], Maglev::DEFAULT_SIZE).unwrap();
        assert_eq!(t.size(), Maglev::DEFAULT_SIZE);
        assert!(t.table.iter().all(|&b| b != NONE && b != 2 && b < 5));
        let total: u32 = (0..5).map(|b| t.slots_of(b)).sum();
        assert_eq!(total, Maglev::DEFAULT_SIZE);
        assert_eq!(t.slots_of(2), 0);
        assert_eq!(t.slots_of(9), 0);
        for h in 0..10_000u64 {
            assert!(matches!(t.lookup(h.wrapping_mul(0x9e37_79b9_7f4a_7c15)), Some(b) if b != 2));
        }
    }

    #[test]
    fn shares_follow_weights() {
        let weights = [1u32, 2, 3, 4, 10, 25];
        let ids = ids(weights.len());
        let t = build(&ids, &weights, Maglev::DEFAULT_SIZE).unwrap();
        let sum: u32 = weights.iter().sum();
        for (i, &w) in weights.iter().enumerate() {
            let share = f64::from(t.slots_of(i as u16)) / f64::from(t.size());
            let want = f64::from(w) / f64::from(sum);
            assert!(
                (share - want).abs() / want < 0.01,
                "backend {i}: share {share}, want {want}"
            );
        }
    }

    #[test]
    fn equal_weights_get_equal_shares() {
        for weight in [1u32, 100, u32::MAX] {
            let ids = ids(7);
            let t = build(&ids, &[weight; 7], Maglev::DEFAULT_SIZE).unwrap();
            let want = f64::from(t.size()) / 7.0;
            for b in 0..7 {
                let got = f64::from(t.slots_of(b));
                assert!(
                    (got - want).abs() / want < 0.01,
                    "backend {b}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn one_backend_takes_every_slot() {
        let ids = ids(1);
        let t = build(&ids, &[5], 7).unwrap();
        assert_eq!(t.slots_of(0), 7);
        assert!((0..100).all(|h| t.lookup(h) == Some(0)));
    }

    #[test]
    fn removing_a_backend_moves_little_else() {
        const N: usize = 10;
        let ids = ids(N);
        let before = build(&ids, &[1; N], Maglev::DEFAULT_SIZE).unwrap();
        for removed in [0usize, 3, 9] {
            let mut weights = [1u32; N];
            weights[removed] = 0;
            let after = build(&ids, &weights, Maglev::DEFAULT_SIZE).unwrap();
            assert_eq!(after.slots_of(removed as u16), 0);
            let moved = before
                .table
                .iter()
                .zip(after.table.iter())
                .filter(|(a, b)| a != b)
                .count();
            let own = before.slots_of(removed as u16) as usize;
            assert!(moved >= own);
            let ideal = Maglev::DEFAULT_SIZE as usize / N;
            assert!(
                moved < 2 * ideal,
                "removing {removed}: {moved} moved, ideal {ideal}"
            );
        }
    }

    #[test]
    fn builds_are_deterministic() {
        let ids = ids(6);
        let weights = [3, 1, 4, 1, 5, 9];
        let a = build(&ids, &weights, Maglev::DEFAULT_SIZE).unwrap();
        let b = build(&ids, &weights, Maglev::DEFAULT_SIZE).unwrap();
        assert_eq!(a, b);
    }

    /// Pins the hash and the population order: an HA pair running two different builds (a
    /// rolling upgrade) must still agree on every table.
    #[test]
    fn golden_table() {
        assert_eq!(fixed_hash(b"", 0), GOLDEN_HASH_EMPTY);
        assert_eq!(fixed_hash(b"198.18.1.1:8080", SEED_OFFSET), GOLDEN_HASH_ID);
        let ids = ids(3);
        let t = build(&ids, &[1, 2, 1], 13).unwrap();
        assert_eq!(&*t.table, &GOLDEN_TABLE);
    }

    // Computed by an independent Python implementation of the hash and the population.
    const GOLDEN_HASH_EMPTY: u64 = 17_280_346_270_528_514_342;
    const GOLDEN_HASH_ID: u64 = 17_138_314_306_711_927_223;
    const GOLDEN_TABLE: [u16; 13] = [2, 0, 0, 1, 0, 1, 2, 1, 2, 1, 1, 0, 1];

    #[test]
    fn all_out_of_service_returns_none() {
        let ids = ids(4);
        let t = build(&ids, &[0; 4], Maglev::DEFAULT_SIZE).unwrap();
        assert_eq!(t.size(), Maglev::DEFAULT_SIZE);
        assert!((0..1000).all(|h| t.lookup(h).is_none()));
        assert!((0..4).all(|b| t.slots_of(b) == 0));
    }

    proptest! {
        #[test]
        fn lookup_never_panics_and_picks_a_backend_in_service(
            weights in proptest::collection::vec(prop_oneof![Just(0u32), 1u32..5, any::<u32>()], 1..24),
            size in prop::sample::select(vec![2u32, 3, 5, 13, 101, 1009, 65537]),
            hashes in proptest::collection::vec(any::<u64>(), 1..64),
        ) {
            let ids = ids(weights.len());
            let active = weights.iter().filter(|&&w| w > 0).count();
            match build(&ids, &weights, size) {
                Err(e) => prop_assert_eq!(e, MaglevError::TooSmall { size, backends: active }),
                Ok(t) => {
                    prop_assert!(active <= size as usize);
                    let total: u32 = (0..weights.len() as u16).map(|b| t.slots_of(b)).sum();
                    prop_assert_eq!(total, if active > 0 { size } else { 0 });
                    for (b, &w) in weights.iter().enumerate() {
                        // Every backend in service gets at least one slot.
                        prop_assert_eq!(w > 0, t.slots_of(b as u16) > 0);
                    }
                    for h in hashes.into_iter().chain([0, u64::MAX]) {
                        match t.lookup(h) {
                            None => prop_assert_eq!(active, 0),
                            Some(b) => prop_assert!(weights[usize::from(b)] > 0),
                        }
                    }
                }
            }
        }
    }
}
