//! Per-worker cache that lets the later fragments of a datagram follow its first fragment.
//!
//! Only the first fragment carries ports, so only it can be looked up in the connection
//! table. Its translation (new addresses and egress side) is remembered here under the
//! datagram's identity (source, destination, protocol, IP id); later fragments take the same
//! addresses. NICs hash fragments on addresses only, so all fragments of a datagram reach the
//! same queue and worker: the cache is per worker and needs no synchronisation.
//!
//! Fixed size, set-associative, allocated once: a full set evicts its oldest entry.

use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;

use crate::Side;

const WAYS: usize = 4;

/// The identity of a fragmented datagram as it arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// IP identification.
    pub ident: u16,
}

/// What the later fragments get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragTarget {
    /// New source address.
    pub src: Ipv4Addr,
    /// New destination address.
    pub dst: Ipv4Addr,
    /// The side the first fragment arrived on (later ones must too).
    pub ingress: Side,
    /// The side they leave on.
    pub egress: Side,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    key: FragKey,
    target: FragTarget,
    expires: u32,
    used: bool,
}

const EMPTY: Entry = Entry {
    key: FragKey {
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::UNSPECIFIED,
        proto: 0,
        ident: 0,
    },
    target: FragTarget {
        src: Ipv4Addr::UNSPECIFIED,
        dst: Ipv4Addr::UNSPECIFIED,
        ingress: Side::Public,
        egress: Side::Public,
    },
    expires: 0,
    used: false,
};

/// A worker's fragment cache.
#[derive(Debug)]
pub struct FragCache {
    entries: Box<[Entry]>,
    sets: usize,
    timeout: u32,
    hasher: ahash::RandomState,
}

impl FragCache {
    /// A cache of about `entries` entries (rounded up to a whole number of sets, at least
    /// one) whose entries live `timeout` seconds.
    pub fn new(entries: usize, timeout: u32) -> FragCache {
        let sets = entries.div_ceil(WAYS).max(1);
        // Seeds drawn per cache so that a sender cannot aim all its datagrams at one set.
        let s = std::collections::hash_map::RandomState::new();
        let seed = |i: u64| {
            let mut h = s.build_hasher();
            h.write_u64(i);
            h.finish()
        };
        FragCache {
            entries: vec![EMPTY; sets * WAYS].into_boxed_slice(),
            sets,
            timeout,
            hasher: ahash::RandomState::with_seeds(seed(1), seed(2), seed(3), seed(4)),
        }
    }

    fn set_of(&self, k: &FragKey) -> usize {
        let mut h = self.hasher.build_hasher();
        h.write_u32(u32::from(k.src));
        h.write_u32(u32::from(k.dst));
        h.write_u16(k.ident);
        h.write_u8(k.proto);
        (h.finish() % self.sets as u64) as usize * WAYS
    }

    /// Remembers `target` for `key` until `now + timeout`; returns true if a live entry of
    /// another datagram had to be evicted.
    pub fn insert(&mut self, key: FragKey, target: FragTarget, now: u32) -> bool {
        let base = self.set_of(&key);
        let expires = now.saturating_add(self.timeout);
        let Some(set) = self.entries.get_mut(base..base + WAYS) else {
            return false;
        };
        let mut victim = 0;
        let mut oldest = u32::MAX;
        for (i, e) in set.iter().enumerate() {
            if !e.used || e.key == key || e.expires <= now {
                victim = i;
                oldest = 0;
                break;
            }
            if e.expires < oldest {
                oldest = e.expires;
                victim = i;
            }
        }
        let evicted = oldest != 0;
        if let Some(slot) = set.get_mut(victim) {
            *slot = Entry {
                key,
                target,
                expires,
                used: true,
            };
        }
        evicted
    }

    /// The target of a later fragment, if its first fragment was seen and has not expired.
    pub fn get(&self, key: &FragKey, now: u32) -> Option<FragTarget> {
        let base = self.set_of(key);
        self.entries
            .get(base..base + WAYS)?
            .iter()
            .find(|e| e.used && e.key == *key && e.expires > now)
            .map(|e| e.target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ident: u16) -> FragKey {
        FragKey {
            src: Ipv4Addr::new(198, 18, 0, 1),
            dst: Ipv4Addr::new(203, 0, 113, 1),
            proto: 17,
            ident,
        }
    }

    fn target() -> FragTarget {
        FragTarget {
            src: Ipv4Addr::new(198, 51, 100, 1),
            dst: Ipv4Addr::new(203, 0, 113, 1),
            ingress: Side::Private,
            egress: Side::Public,
        }
    }

    #[test]
    fn finds_until_timeout() {
        let mut c = FragCache::new(16, 30);
        assert!(!c.insert(key(1), target(), 100));
        assert_eq!(c.get(&key(1), 100), Some(target()));
        assert_eq!(c.get(&key(1), 129), Some(target()));
        assert_eq!(c.get(&key(1), 130), None);
        assert_eq!(c.get(&key(2), 100), None);
    }

    #[test]
    fn bounded_and_evicts_oldest() {
        let mut c = FragCache::new(4, 30); // one set of 4
        for i in 0..4 {
            assert!(!c.insert(key(i), target(), 100 + u32::from(i)));
        }
        assert!(c.insert(key(9), target(), 105), "a live entry made room");
        assert_eq!(c.get(&key(0), 105), None, "the oldest went");
        for i in [1, 2, 3, 9] {
            assert!(c.get(&key(i), 105).is_some());
        }
        assert_eq!(c.entries.len(), 4);
    }
}
