//! Per-worker cache that lets the later fragments of a datagram follow its first fragment.
//!
//! Only the first fragment carries ports, so only it can be looked up in the connection
//! table. Its translation (new addresses and egress side) is remembered here under the
//! datagram's identity (source, destination, protocol, IP id); later fragments take the same
//! addresses. NICs hash fragments on addresses only, so all fragments of a datagram reach the
//! same queue and worker: the cache is per worker and needs no synchronisation.
//!
//! Fixed size, set-associative, allocated once: a full set evicts its oldest entry.
//!
//! Later fragments that arrive before their first (RFC 4787 REQ-14 asks a NAT to take
//! fragments out of order) wait in a [`FragHold`]: a few preallocated frame slots per worker,
//! released translated when the first fragment comes, dropped when they expire.

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

/// The largest frame a [`FragHold`] slot takes (a jumbo frame).
pub const HOLD_FRAME_BYTES: usize = 9216;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HoldState {
    Free,
    /// Waiting for its first fragment, which arrived on `ingress`... or not yet.
    Waiting,
    /// Translated; to be sent out on this side.
    Ready(Side),
}

#[derive(Clone, Copy, Debug)]
struct Held {
    key: FragKey,
    ingress: Side,
    len: usize,
    expires: u32,
    state: HoldState,
}

/// Why a fragment could not be held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HoldError {
    /// Every slot is taken by a fragment still waiting.
    Full,
    /// The frame is larger than [`HOLD_FRAME_BYTES`].
    TooBig,
}

/// A worker's slots for fragments that came before their first fragment.
#[derive(Debug)]
pub struct FragHold {
    slots: Box<[Held]>,
    data: Box<[u8]>,
    timeout: u32,
    waiting: usize,
    ready: usize,
}

impl FragHold {
    /// `slots` frames of up to [`HOLD_FRAME_BYTES`], each held at most `timeout` seconds.
    pub fn new(slots: usize, timeout: u32) -> FragHold {
        let free = Held {
            key: EMPTY.key,
            ingress: Side::Public,
            len: 0,
            expires: 0,
            state: HoldState::Free,
        };
        FragHold {
            slots: vec![free; slots].into_boxed_slice(),
            data: vec![0; slots * HOLD_FRAME_BYTES].into_boxed_slice(),
            timeout,
            waiting: 0,
            ready: 0,
        }
    }

    /// Fragments waiting for their first.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Fragments translated and not yet taken.
    pub fn ready(&self) -> usize {
        self.ready
    }

    fn buf(&mut self, i: usize) -> Option<&mut [u8]> {
        self.data
            .get_mut(i * HOLD_FRAME_BYTES..(i + 1) * HOLD_FRAME_BYTES)
    }

    /// Copies `frame` into a free slot to wait for the first fragment of `key`.
    ///
    /// # Errors
    /// [`HoldError`] when it cannot be held; the caller drops it.
    pub fn hold(
        &mut self,
        key: FragKey,
        ingress: Side,
        frame: &[u8],
        now: u32,
    ) -> Result<(), HoldError> {
        if frame.len() > HOLD_FRAME_BYTES {
            return Err(HoldError::TooBig);
        }
        let i = self
            .slots
            .iter()
            .position(|h| h.state == HoldState::Free)
            .ok_or(HoldError::Full)?;
        let dst = self.buf(i).ok_or(HoldError::Full)?;
        if let Some(d) = dst.get_mut(..frame.len()) {
            d.copy_from_slice(frame);
        }
        if let Some(slot) = self.slots.get_mut(i) {
            *slot = Held {
                key,
                ingress,
                len: frame.len(),
                expires: now.saturating_add(self.timeout),
                state: HoldState::Waiting,
            };
            self.waiting += 1;
        }
        Ok(())
    }

    /// The first fragment of `key` went through as `target`: every fragment of it waiting
    /// here (from the same side) gets `translate` applied and becomes ready. Returns how many;
    /// a fragment `translate` refuses is dropped and counted in the second number.
    pub fn release(
        &mut self,
        key: &FragKey,
        target: &FragTarget,
        mut translate: impl FnMut(&mut [u8]) -> bool,
    ) -> (usize, usize) {
        let (mut released, mut refused) = (0, 0);
        for i in 0..self.slots.len() {
            let Some(h) = self.slots.get(i).copied() else {
                continue;
            };
            if h.state != HoldState::Waiting || h.key != *key || h.ingress != target.ingress {
                continue;
            }
            let ok = self
                .buf(i)
                .and_then(|b| b.get_mut(..h.len))
                .is_some_and(&mut translate);
            if let Some(slot) = self.slots.get_mut(i) {
                self.waiting -= 1;
                if ok {
                    slot.state = HoldState::Ready(target.egress);
                    self.ready += 1;
                    released += 1;
                } else {
                    slot.state = HoldState::Free;
                    refused += 1;
                }
            }
        }
        (released, refused)
    }

    /// Hands every ready fragment, in slot order, to `send` with its egress side, and frees
    /// its slot. Returns how many.
    pub fn take_ready(&mut self, mut send: impl FnMut(&mut [u8], Side)) -> usize {
        if self.ready == 0 {
            return 0;
        }
        let mut n = 0;
        for i in 0..self.slots.len() {
            let Some(h) = self.slots.get(i).copied() else {
                continue;
            };
            if let HoldState::Ready(side) = h.state {
                if let Some(b) = self.buf(i).and_then(|b| b.get_mut(..h.len)) {
                    send(b, side);
                }
                if let Some(slot) = self.slots.get_mut(i) {
                    slot.state = HoldState::Free;
                }
                self.ready -= 1;
                n += 1;
            }
        }
        n
    }

    /// Drops fragments that waited past their timeout; returns how many.
    pub fn expire(&mut self, now: u32) -> usize {
        if self.waiting == 0 {
            return 0;
        }
        let mut n = 0;
        for h in self.slots.iter_mut() {
            if h.state == HoldState::Waiting && h.expires <= now {
                h.state = HoldState::Free;
                n += 1;
            }
        }
        self.waiting -= n;
        n
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

    #[test]
    fn hold_release_take_in_order() {
        let mut h = FragHold::new(3, 10);
        h.hold(key(1), Side::Private, b"second", 5).unwrap();
        h.hold(key(2), Side::Private, b"other", 5).unwrap();
        h.hold(key(1), Side::Private, b"third", 5).unwrap();
        assert_eq!(h.hold(key(3), Side::Private, b"x", 5), Err(HoldError::Full));
        assert_eq!(h.waiting(), 3);
        let (released, refused) = h.release(&key(1), &target(), |b| {
            b.make_ascii_uppercase();
            true
        });
        assert_eq!((released, refused), (2, 0));
        let mut out = Vec::new();
        assert_eq!(h.take_ready(|b, side| out.push((b.to_vec(), side))), 2);
        assert_eq!(
            out,
            vec![
                (b"SECOND".to_vec(), Side::Public),
                (b"THIRD".to_vec(), Side::Public)
            ]
        );
        assert_eq!((h.waiting(), h.ready()), (1, 0));
        // The other datagram's fragment expires and frees its slot.
        assert_eq!(h.expire(14), 0);
        assert_eq!(h.expire(15), 1);
        assert_eq!(h.waiting(), 0);
        h.hold(key(4), Side::Public, b"a", 20).unwrap();
    }

    #[test]
    fn hold_refuses_giants_and_other_sides() {
        let mut h = FragHold::new(2, 10);
        assert_eq!(
            h.hold(key(1), Side::Private, &vec![0; HOLD_FRAME_BYTES + 1], 1),
            Err(HoldError::TooBig)
        );
        h.hold(key(1), Side::Public, b"from outside", 1).unwrap();
        // The first fragment came from inside: the held one from outside is not its.
        assert_eq!(h.release(&key(1), &target(), |_| true), (0, 0));
        assert_eq!(h.waiting(), 1);
        let mut t = target();
        t.ingress = Side::Public;
        assert_eq!(h.release(&key(1), &t, |_| false), (0, 1));
        assert_eq!((h.waiting(), h.ready()), (0, 0));
    }
}
