//! The neighbor table: IPv4 address to Ethernet address, learned from ARP and shared by every
//! worker.
//!
//! Workers read it for every forwarded frame, so a lookup takes no lock and writes nothing.
//! Writes (an ARP answer learned, a request sent) are rare; each slot is a seqlock, so a
//! reader never sees an address paired with another address's MAC.
//!
//! An entry moves through the states Linux uses, in our own terms: *incomplete* (requested,
//! no answer yet), *reachable* (answered within `reachable_ms`), *stale* (older, still used
//! while a request re-confirms it) and *failed* (stale for longer than the retries take: the
//! lookup no longer gives its MAC).

use std::net::Ipv4Addr;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Slots searched from an address's home slot.
const PROBE: usize = 8;
/// Set in `mac` when the MAC is known.
const RESOLVED: u64 = 1 << 63;
/// Bounded attempts to take a slot another writer holds.
const WRITE_TRIES: usize = 64;

/// How long entries are trusted and how hard the table tries to resolve.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighborConfig {
    /// Entries (rounded up to a power of two).
    pub capacity: usize,
    /// How long an answer is trusted before it is re-confirmed, in milliseconds.
    pub reachable_ms: u64,
    /// Time between ARP requests for one address, in milliseconds.
    pub retry_ms: u64,
    /// Requests sent before an address counts as unreachable.
    pub retries: u32,
    /// Frames held per unresolved address.
    pub hold: usize,
}

impl Default for NeighborConfig {
    fn default() -> Self {
        NeighborConfig {
            capacity: 1024,
            reachable_ms: 30_000,
            retry_ms: 1_000,
            retries: 3,
            hold: 4,
        }
    }
}

impl NeighborConfig {
    /// How long after its last confirmation a stale entry is still used.
    fn usable_ms(&self) -> u64 {
        self.reachable_ms + self.retry_ms * u64::from(self.retries)
    }
}

/// What a lookup finds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// Use this MAC.
    Reachable([u8; 6]),
    /// Use this MAC, and re-confirm it: the answer is older than `reachable_ms`.
    Stale([u8; 6]),
    /// No usable MAC: hold the frame and request one.
    Unresolved,
}

#[derive(Debug, Default)]
#[repr(align(64))]
struct Slot {
    seq: AtomicU32,
    /// The address, 0 for an empty slot (0.0.0.0 is never a neighbor).
    ip: AtomicU32,
    /// The MAC in the low 48 bits, [`RESOLVED`] when known.
    mac: AtomicU64,
    /// When the MAC was last learned, or when the incomplete entry was made.
    confirmed_ms: AtomicU64,
    /// When an ARP request was last sent for the address: outside the seqlock, it only rate
    /// limits requests between workers.
    requested_ms: AtomicU64,
}

#[derive(Clone, Copy)]
struct Snapshot {
    ip: u32,
    mac: u64,
    confirmed_ms: u64,
}

/// The shared neighbor table.
#[derive(Debug)]
pub struct NeighborTable {
    slots: Box<[Slot]>,
    mask: usize,
    config: NeighborConfig,
}

fn mac_to_u64(mac: [u8; 6]) -> u64 {
    let [a, b, c, d, e, f] = mac;
    u64::from_be_bytes([0, 0, a, b, c, d, e, f])
}

fn u64_to_mac(v: u64) -> [u8; 6] {
    let [_, _, a, b, c, d, e, f] = v.to_be_bytes();
    [a, b, c, d, e, f]
}

impl NeighborTable {
    /// An empty table.
    pub fn new(config: NeighborConfig) -> NeighborTable {
        let n = config.capacity.max(PROBE).next_power_of_two();
        let slots: Vec<Slot> = (0..n).map(|_| Slot::default()).collect();
        NeighborTable {
            slots: slots.into_boxed_slice(),
            mask: n - 1,
            config,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &NeighborConfig {
        &self.config
    }

    fn home(&self, ip: u32) -> usize {
        // Fibonacci hashing: neighbors are usually consecutive addresses of one subnet.
        (ip.wrapping_mul(0x9e37_79b9) >> 7) as usize & self.mask
    }

    fn slot(&self, i: usize) -> Option<&Slot> {
        self.slots.get(i & self.mask)
    }

    fn read(slot: &Slot) -> Option<Snapshot> {
        for _ in 0..WRITE_TRIES {
            let s1 = slot.seq.load(Ordering::Acquire);
            if s1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let snap = Snapshot {
                ip: slot.ip.load(Ordering::Relaxed),
                mac: slot.mac.load(Ordering::Relaxed),
                confirmed_ms: slot.confirmed_ms.load(Ordering::Relaxed),
            };
            fence(Ordering::Acquire);
            if slot.seq.load(Ordering::Relaxed) == s1 {
                return Some(snap);
            }
        }
        None
    }

    fn find(&self, ip: u32) -> Option<(&Slot, Snapshot)> {
        let home = self.home(ip);
        (0..PROBE).find_map(|k| {
            let slot = self.slot(home + k)?;
            let snap = Self::read(slot)?;
            (snap.ip == ip).then_some((slot, snap))
        })
    }

    /// The MAC to use for `ip` at `now_ms`.
    #[inline]
    pub fn resolve(&self, ip: Ipv4Addr, now_ms: u64) -> Resolution {
        let Some((_, snap)) = self.find(u32::from(ip)) else {
            return Resolution::Unresolved;
        };
        if snap.mac & RESOLVED == 0 {
            return Resolution::Unresolved;
        }
        let age = now_ms.saturating_sub(snap.confirmed_ms);
        if age <= self.config.reachable_ms {
            Resolution::Reachable(u64_to_mac(snap.mac))
        } else if age <= self.config.usable_ms() {
            Resolution::Stale(u64_to_mac(snap.mac))
        } else {
            Resolution::Unresolved
        }
    }

    /// Writes one slot under its seqlock; false if another writer kept it busy.
    fn write(slot: &Slot, ip: u32, mac: u64, confirmed_ms: u64) -> bool {
        for _ in 0..WRITE_TRIES {
            let s = slot.seq.load(Ordering::Relaxed);
            if s & 1 == 0
                && slot
                    .seq
                    .compare_exchange(s, s.wrapping_add(1), Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                fence(Ordering::Release);
                if slot.ip.load(Ordering::Relaxed) != ip {
                    // A new owner starts with no request history.
                    slot.requested_ms.store(0, Ordering::Relaxed);
                }
                slot.ip.store(ip, Ordering::Relaxed);
                slot.mac.store(mac, Ordering::Relaxed);
                slot.confirmed_ms.store(confirmed_ms, Ordering::Relaxed);
                slot.seq.store(s.wrapping_add(2), Ordering::Release);
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// A slot for a new address: an empty one, else the one least recently confirmed among
    /// those nobody can still be using.
    fn free_slot(&self, ip: u32, now_ms: u64) -> Option<&Slot> {
        let home = self.home(ip);
        let mut victim: Option<(&Slot, u64)> = None;
        for k in 0..PROBE {
            let slot = self.slot(home + k)?;
            let snap = Self::read(slot)?;
            if snap.ip == 0 {
                return Some(slot);
            }
            let idle = now_ms.saturating_sub(snap.confirmed_ms);
            if idle > self.config.usable_ms() && victim.is_none_or(|(_, best)| idle > best) {
                victim = Some((slot, idle));
            }
        }
        victim.map(|(slot, _)| slot)
    }

    /// Records `ip` at `mac`. `create` says whether a new entry may be made (RFC 826: an
    /// answer to our request, or a request addressed to us); otherwise only an existing entry
    /// is updated. Returns false if the table had no room.
    pub fn learn(&self, ip: Ipv4Addr, mac: [u8; 6], now_ms: u64, create: bool) -> bool {
        let key = u32::from(ip);
        if key == 0 {
            return false;
        }
        let value = mac_to_u64(mac) | RESOLVED;
        if let Some((slot, _)) = self.find(key) {
            return Self::write(slot, key, value, now_ms);
        }
        if !create {
            return true;
        }
        match self.free_slot(key, now_ms) {
            Some(slot) => Self::write(slot, key, value, now_ms),
            None => false,
        }
    }

    /// Whether the caller should send an ARP request for `ip` now. At most one worker gets
    /// true per `retry_ms` for an address; an incomplete entry is made for an unknown one.
    /// Returns `None` if the table had no room for it.
    pub fn should_request(&self, ip: Ipv4Addr, now_ms: u64) -> Option<bool> {
        let key = u32::from(ip);
        let slot = match self.find(key) {
            Some((slot, _)) => slot,
            None => {
                let slot = self.free_slot(key, now_ms)?;
                if !Self::write(slot, key, 0, now_ms) {
                    return None;
                }
                slot
            }
        };
        let last = slot.requested_ms.load(Ordering::Relaxed);
        if last != 0 && now_ms.saturating_sub(last) < self.config.retry_ms {
            return Some(false);
        }
        // The first worker to move the time forward sends the request.
        let now_stamp = now_ms.max(1);
        Some(
            slot.requested_ms
                .compare_exchange(last, now_stamp, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok(),
        )
    }

    /// Every resolved entry as (address, MAC, milliseconds since it was confirmed), for the
    /// CLI and logs.
    pub fn entries(&self, now_ms: u64) -> Vec<(Ipv4Addr, [u8; 6], u64)> {
        self.slots
            .iter()
            .filter_map(Self::read)
            .filter(|s| s.ip != 0 && s.mac & RESOLVED != 0)
            .map(|s| {
                (
                    Ipv4Addr::from(s.ip),
                    u64_to_mac(s.mac),
                    now_ms.saturating_sub(s.confirmed_ms),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const M: [u8; 6] = [2, 0, 0, 0, 0, 0x10];

    fn table() -> NeighborTable {
        NeighborTable::new(NeighborConfig {
            capacity: 16,
            reachable_ms: 1_000,
            retry_ms: 100,
            retries: 3,
            hold: 4,
        })
    }

    #[test]
    fn learned_entry_ages_from_reachable_to_stale_to_unresolved() {
        let t = table();
        assert_eq!(t.resolve(A, 0), Resolution::Unresolved);
        assert!(t.learn(A, M, 10, true));
        assert_eq!(t.resolve(A, 500), Resolution::Reachable(M));
        assert_eq!(t.resolve(A, 1_200), Resolution::Stale(M));
        assert_eq!(t.resolve(A, 1_400), Resolution::Unresolved);
        assert!(t.learn(A, M, 1_500, false));
        assert_eq!(t.resolve(A, 1_600), Resolution::Reachable(M));
    }

    #[test]
    fn unsolicited_answers_do_not_create_entries() {
        let t = table();
        assert!(t.learn(A, M, 0, false));
        assert_eq!(t.resolve(A, 0), Resolution::Unresolved);
        assert!(t.entries(0).is_empty());
    }

    #[test]
    fn requests_are_rate_limited_per_address() {
        let t = table();
        assert_eq!(t.should_request(A, 1_000), Some(true));
        assert_eq!(t.should_request(A, 1_050), Some(false));
        assert_eq!(t.should_request(A, 1_100), Some(true));
        // The incomplete entry gives no MAC, and an answer then completes it.
        assert_eq!(t.resolve(A, 1_100), Resolution::Unresolved);
        assert!(t.learn(A, M, 1_120, false));
        assert_eq!(t.resolve(A, 1_130), Resolution::Reachable(M));
    }

    #[test]
    fn a_full_neighbourhood_refuses_then_recycles_dead_entries() {
        let t = NeighborTable::new(NeighborConfig {
            capacity: 8,
            ..table().config
        });
        for i in 0..8u8 {
            assert!(t.learn(Ipv4Addr::new(198, 18, 1, i + 1), M, 0, true));
        }
        let late = Ipv4Addr::new(198, 18, 2, 1);
        assert!(!t.learn(late, M, 10, true), "every slot is in use");
        assert_eq!(t.should_request(late, 10), None);
        // Once the others are past any use, the newcomer takes one of their slots.
        assert!(t.learn(late, M, 5_000, true));
        assert_eq!(t.resolve(late, 5_000), Resolution::Reachable(M));
        assert_eq!(t.entries(5_000).len(), 8);
    }

    #[test]
    fn concurrent_learning_never_pairs_an_address_with_another_mac() {
        let t = std::sync::Arc::new(table());
        let addrs: Vec<Ipv4Addr> = (1..=12u8).map(|i| Ipv4Addr::new(198, 18, 0, i)).collect();
        let mac_of = |a: Ipv4Addr| {
            let o = a.octets();
            [2, o[3], o[3], o[3], o[3], o[3]]
        };
        std::thread::scope(|s| {
            for w in 0..2u64 {
                let t = &t;
                let addrs = &addrs;
                s.spawn(move || {
                    for round in 0..2_000u64 {
                        for &a in addrs {
                            t.learn(a, mac_of(a), round * 2 + w, true);
                            if let Resolution::Reachable(m) | Resolution::Stale(m) =
                                t.resolve(a, round * 2 + w)
                            {
                                assert_eq!(m, mac_of(a));
                            }
                        }
                    }
                });
            }
        });
        for (a, m, _) in t.entries(4_000) {
            assert_eq!(m, mac_of(a));
        }
    }
}
