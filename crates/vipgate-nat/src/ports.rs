//! PAT port allocation with the behaviour RFC 4787 (UDP) and RFC 5382 (TCP) ask of a NAT:
//! port preservation when the internal port is free, paired address pooling, and no port
//! handed out twice.
//!
//! One [`PortAllocator`] is shared by all workers. For every public address and protocol it
//! holds a bitmap of all 65536 ports in atomic words, allocated once in [`PortAllocator::new`],
//! so memory is fixed and allocation never happens on the packet path. The configured range is
//! split into one contiguous share per worker: a worker searches only its own share, from its
//! own [`PortCursors`], so searching needs no cross-core coordination and the cache lines a
//! worker writes are (apart from the words at share boundaries) its own. Bits are set and
//! cleared with atomic read-modify-writes, so a preferred port that any worker may take, or a
//! port claimed by state sync, is never given to two flows.

use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::key::Proto;

/// Protocols with a bitmap of their own (ICMP identifiers, TCP ports, UDP ports).
const PROTOS: usize = 3;
/// 64-bit words in the bitmap of one (address, protocol): 65536 ports.
const WORDS: usize = 65536 / 64;

/// The default first port of the PAT range: ports below are left to well-known services.
pub const DEFAULT_LO: u16 = 1024;
/// The default last port of the PAT range.
pub const DEFAULT_HI: u16 = 65535;

/// Why a [`PortAllocator`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortsError {
    /// No public address to allocate ports on.
    NoAddresses,
    /// The port range is empty (`lo > hi`) or includes port 0, which TCP and UDP cannot use.
    BadRange {
        /// The configured first port.
        lo: u16,
        /// The configured last port.
        hi: u16,
    },
    /// Zero workers: nobody could allocate.
    NoWorkers,
    /// More workers than ports in the range: some worker would get an empty share.
    TooManyWorkers {
        /// The configured number of workers.
        workers: u16,
        /// Ports in the range.
        ports: u32,
    },
    /// A reserved port names an address that is not one of the allocator's addresses.
    UnknownReserved(Ipv4Addr),
    /// Every spare address slot is taken: more public addresses need a restart.
    NoSpareSlot(Ipv4Addr),
}

impl fmt::Display for PortsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortsError::NoAddresses => write!(f, "no public address for PAT ports"),
            PortsError::BadRange { lo, hi } => write!(
                f,
                "bad PAT port range {lo}..={hi}: need 1 <= lo <= hi <= 65535"
            ),
            PortsError::NoWorkers => write!(f, "PAT port allocator needs at least one worker"),
            PortsError::TooManyWorkers { workers, ports } => write!(
                f,
                "{workers} workers but only {ports} ports in the PAT range: need workers <= ports"
            ),
            PortsError::UnknownReserved(addr) => write!(
                f,
                "reserved port on {addr}, which is not one of the PAT addresses"
            ),
            PortsError::NoSpareSlot(addr) => write!(
                f,
                "{addr} would be public address number {}, past the {SPARE_ADDRS} that a \
                 reload may add to those at start; restart vipgate to add it",
                SPARE_ADDRS + 1
            ),
        }
    }
}

impl std::error::Error for PortsError {}

/// PAT ports of all public addresses, shared by all workers.
///
/// `Send + Sync`; every method takes `&self`. See the module documentation.
///
/// The set of addresses can grow while the workers run (a reload adding a VIP or a PAT
/// address) into [`SPARE_ADDRS`] slots allocated up front, and the reserved ports change
/// with every reload ([`PortAllocator::set_reserved`]); both are read with relaxed atomic
/// loads, as cheap as plain ones.
pub struct PortAllocator {
    /// The addresses of the first `len` slots, as `u32`; a slot, once given, keeps its
    /// address for the allocator's life, so an index stays valid for every connection.
    addrs: Box<[AtomicU32]>,
    len: AtomicUsize,
    /// Serialises [`PortAllocator::add_addr`] and [`PortAllocator::set_reserved`] (the control
    /// thread's); workers never take it.
    grow: Mutex<()>,
    lo: u16,
    hi: u16,
    workers: u16,
    /// One bitmap per (address, protocol), at `addr * PROTOS + proto.index()`: bit set = in use.
    used: Box<[[AtomicU64; WORDS]]>,
    /// Same layout: ports DNAT rules and pools hold, which PAT never hands out.
    reserved: Box<[[AtomicU64; WORDS]]>,
}

/// Address slots beyond those given to [`PortAllocator::new`], for addresses a reload adds
/// (48 KiB each).
pub const SPARE_ADDRS: usize = 16;

/// One worker's next search position for every (address, protocol).
///
/// Made by [`PortAllocator::cursors`] and owned by that worker alone, so moving a cursor
/// writes nothing another core reads.
#[derive(Clone, Debug)]
pub struct PortCursors {
    worker: u16,
    next: Box<[u16]>,
    /// xorshift64* state, seeded from the process's random keys: where a search starts and
    /// how far the cursor jumps cannot be guessed from outside (RFC 6056).
    rng: u64,
}

/// The cursor jumps ahead by 1 to this many ports after each allocation (RFC 6056's
/// algorithm 5, "random-increments", with its suggested N = 500), within the share.
const RANDOM_STEP: u32 = 500;

fn next_random(state: &mut u64) -> u32 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
}

/// Each internal host's PAT mappings, counted against a quota (RFC 6888 REQ-4), so one host
/// cannot take every port of its public address. Hosts are counted in 65,536 slots by a hash
/// of their address: two hosts that share a slot share its quota (rare below thousands of
/// hosts, and never more generous). Lock-free; a new mapping costs one atomic update.
pub struct HostCounts {
    slots: Box<[AtomicU32]>,
}

const HOST_SLOTS: usize = 1 << 16;

impl Default for HostCounts {
    fn default() -> Self {
        HostCounts {
            slots: (0..HOST_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl fmt::Debug for HostCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HostCounts").finish_non_exhaustive()
    }
}

impl HostCounts {
    fn slot(&self, host: Ipv4Addr) -> Option<&AtomicU32> {
        self.slots
            .get(mix32(u32::from(host)) as usize & (HOST_SLOTS - 1))
    }

    /// Counts one more mapping for `host` unless it holds `quota` already (0: no limit).
    pub fn take(&self, host: Ipv4Addr, quota: u32) -> bool {
        let Some(c) = self.slot(host) else {
            return true;
        };
        c.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
            (quota == 0 || n < quota).then_some(n.saturating_add(1))
        })
        .is_ok()
    }

    /// One mapping of `host` fewer.
    pub fn give_back(&self, host: Ipv4Addr) {
        if let Some(c) = self.slot(host) {
            let _ = c.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| n.checked_sub(1));
        }
    }

    /// The mappings counted for `host` (and any host sharing its slot).
    pub fn held(&self, host: Ipv4Addr) -> u32 {
        self.slot(host).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// Bytes of memory the counts take.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<AtomicU32>()
    }
}

impl PortCursors {
    /// The worker whose share these cursors search (already reduced modulo the worker count).
    pub fn worker(&self) -> u16 {
        self.worker
    }
}

impl fmt::Debug for PortAllocator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortAllocator")
            .field("addrs", &self.addrs())
            .field("lo", &self.lo)
            .field("hi", &self.hi)
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

#[inline]
fn bit(port: u16) -> u64 {
    1u64 << (port & 63)
}

#[inline]
fn word_index(port: u16) -> usize {
    usize::from(port >> 6)
}

/// A fixed 32-bit mixer (the lowbias32 finalizer): the same internal address must map to the
/// same public address on every box and every run, so nothing here may be randomly seeded.
#[inline]
fn mix32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

impl PortAllocator {
    /// Builds the allocator: ports `lo..=hi` of each of `addrs`, for ICMP, TCP and UDP, split
    /// among `workers` workers; `reserved` ports are never allocated nor released.
    ///
    /// Memory: 48 KiB per address (a used and a reserved bitmap of 8 KiB per protocol), for
    /// `addrs` and [`SPARE_ADDRS`] more.
    ///
    /// # Errors
    /// [`PortsError::NoAddresses`] for an empty `addrs`; [`PortsError::BadRange`] when
    /// `lo == 0` or `lo > hi`; [`PortsError::NoWorkers`] for zero workers;
    /// [`PortsError::TooManyWorkers`] when `workers` exceeds the number of ports in the range;
    /// [`PortsError::UnknownReserved`] for a reserved port on an address not in `addrs`.
    pub fn new(
        addrs: &[Ipv4Addr],
        workers: u16,
        lo: u16,
        hi: u16,
        reserved: &[(Ipv4Addr, Proto, u16)],
    ) -> Result<Self, PortsError> {
        if addrs.is_empty() {
            return Err(PortsError::NoAddresses);
        }
        if lo == 0 || lo > hi {
            return Err(PortsError::BadRange { lo, hi });
        }
        if workers == 0 {
            return Err(PortsError::NoWorkers);
        }
        let ports = u32::from(hi) - u32::from(lo) + 1;
        if u32::from(workers) > ports {
            return Err(PortsError::TooManyWorkers { workers, ports });
        }
        let slots = addrs.len() + SPARE_ADDRS;
        let maps = slots * PROTOS;
        let bitmaps = || -> Box<[[AtomicU64; WORDS]]> {
            (0..maps)
                .map(|_| std::array::from_fn(|_| AtomicU64::new(0)))
                .collect()
        };
        let a = PortAllocator {
            addrs: (0..slots)
                .map(|i| AtomicU32::new(addrs.get(i).map_or(0, |a| u32::from(*a))))
                .collect(),
            len: AtomicUsize::new(addrs.len()),
            grow: Mutex::new(()),
            lo,
            hi,
            workers,
            used: bitmaps(),
            reserved: bitmaps(),
        };
        a.set_reserved(reserved)?;
        Ok(a)
    }

    /// Adds a public address (a reload), or finds it; returns its index.
    ///
    /// # Errors
    /// [`PortsError::NoSpareSlot`] when the spare slots are all taken.
    pub fn add_addr(&self, addr: Ipv4Addr) -> Result<usize, PortsError> {
        let _g = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = self.addr_index(addr) {
            return Ok(i);
        }
        let i = self.len.load(Ordering::Acquire);
        let slot = self.addrs.get(i).ok_or(PortsError::NoSpareSlot(addr))?;
        slot.store(u32::from(addr), Ordering::Relaxed);
        // Publishes the slot's address before any worker can see the index.
        self.len.store(i + 1, Ordering::Release);
        Ok(i)
    }

    /// Replaces the reserved ports (a reload). A port that is in use by PAT when it becomes
    /// reserved stays with its mapping until that ends; it is never handed out again.
    ///
    /// # Errors
    /// [`PortsError::UnknownReserved`] for a port on an address the allocator does not have.
    pub fn set_reserved(&self, reserved: &[(Ipv4Addr, Proto, u16)]) -> Result<(), PortsError> {
        let _g = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        let mut maps = vec![[0u64; WORDS]; self.reserved.len()];
        for &(addr, proto, port) in reserved {
            let a = self
                .addr_index(addr)
                .ok_or(PortsError::UnknownReserved(addr))?;
            if let Some(word) = maps
                .get_mut(a * PROTOS + proto.index())
                .and_then(|map| map.get_mut(word_index(port)))
            {
                *word |= bit(port);
            }
        }
        for (map, new) in self.reserved.iter().zip(&maps) {
            for (w, n) in map.iter().zip(new) {
                w.store(*n, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// A worker's cursors, starting at the beginning of its share. Allocates: call once per
    /// worker at start. A `worker >= workers` is taken modulo the worker count.
    pub fn cursors(&self, worker: u16) -> PortCursors {
        use std::hash::BuildHasher;
        let worker = worker % self.workers;
        let share = self.share(worker);
        let (start, len) = (*share.start(), u32::from(share.end() - share.start()) + 1);
        // Process-wide random keys (the OS's randomness), different for each call.
        let mut rng = std::hash::RandomState::new().hash_one(worker) | 1;
        let next = (0..self.addrs.len() * PROTOS)
            .map(|_| start + (next_random(&mut rng) % len) as u16)
            .collect();
        PortCursors { worker, next, rng }
    }

    /// The share of the port range that `worker` (modulo the worker count) searches.
    ///
    /// Shares are contiguous, disjoint, cover the range, and differ in size by at most one.
    pub fn share(&self, worker: u16) -> RangeInclusive<u16> {
        let workers = u32::from(self.workers);
        let w = u32::from(worker % self.workers);
        let ports = u32::from(self.hi) - u32::from(self.lo) + 1;
        let base = ports / workers;
        let rem = ports % workers;
        let start = u32::from(self.lo) + w * base + w.min(rem);
        let len = base + u32::from(w < rem);
        // `new` guarantees workers <= ports, so len >= 1 and start + len - 1 <= hi.
        start as u16..=(start + len - 1) as u16
    }

    /// The index of `addr` among the allocator's addresses.
    pub fn addr_index(&self, addr: Ipv4Addr) -> Option<usize> {
        let a = u32::from(addr);
        let len = self.len.load(Ordering::Acquire);
        self.addrs
            .get(..len)?
            .iter()
            .position(|x| x.load(Ordering::Relaxed) == a)
    }

    /// The public address at index `i`.
    #[inline]
    pub fn addr(&self, i: usize) -> Option<Ipv4Addr> {
        if i >= self.len.load(Ordering::Acquire) {
            return None;
        }
        self.addrs
            .get(i)
            .map(|a| Ipv4Addr::from(a.load(Ordering::Relaxed)))
    }

    /// The public addresses, in the order their indices refer to.
    pub fn addrs(&self) -> Vec<Ipv4Addr> {
        let len = self.len.load(Ordering::Acquire);
        self.addrs
            .iter()
            .take(len)
            .map(|a| Ipv4Addr::from(a.load(Ordering::Relaxed)))
            .collect()
    }

    /// The configured port range.
    pub fn range(&self) -> RangeInclusive<u16> {
        self.lo..=self.hi
    }

    /// The number of workers the range is split among.
    pub fn workers(&self) -> u16 {
        self.workers
    }

    /// Paired pooling (RFC 4787 REQ-2): the same internal address always gets the same public
    /// address, picked among `candidates` (indices into [`PortAllocator::addrs`]) by a fixed
    /// hash of `internal`. `None` if `candidates` is empty or the picked index is not an
    /// address of this allocator.
    ///
    /// When the picked address has no free port the caller should fail the flow rather than
    /// try another address: that is what keeps the pairing.
    pub fn pick_addr(&self, candidates: &[usize], internal: Ipv4Addr) -> Option<usize> {
        let h = u128::from(mix32(u32::from(internal)));
        // Multiply-shift maps the 32-bit hash onto 0..len without a division.
        let i = (h * candidates.len() as u128) >> 32;
        let picked = *candidates.get(usize::try_from(i).ok()?)?;
        (picked < self.len.load(Ordering::Acquire)).then_some(picked)
    }

    #[inline]
    fn maps(
        &self,
        addr: usize,
        proto: Proto,
    ) -> Option<(&[AtomicU64; WORDS], &[AtomicU64; WORDS])> {
        if addr >= self.len.load(Ordering::Acquire) {
            return None;
        }
        let i = addr.checked_mul(PROTOS)?.checked_add(proto.index())?;
        Some((self.used.get(i)?, self.reserved.get(i)?))
    }

    #[inline]
    fn allocatable(&self, reserved: &[AtomicU64; WORDS], port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
            && reserved
                .get(word_index(port))
                .is_some_and(|w| w.load(Ordering::Relaxed) & bit(port) == 0)
    }

    /// Test-and-set of one port's bit: true if this call took it.
    #[inline]
    fn take(used: &[AtomicU64; WORDS], port: u16) -> bool {
        used.get(word_index(port))
            .is_some_and(|w| w.fetch_or(bit(port), Ordering::AcqRel) & bit(port) == 0)
    }

    /// Takes the first free, unreserved port in `from..=to`.
    fn search(
        used: &[AtomicU64; WORDS],
        reserved: &[AtomicU64; WORDS],
        from: u16,
        to: u16,
    ) -> Option<u16> {
        let first = word_index(from);
        let last = word_index(to);
        for w in first..=last {
            let (Some(word), Some(resv)) = (used.get(w), reserved.get(w)) else {
                return None;
            };
            let mut mask = !resv.load(Ordering::Relaxed);
            if w == first {
                mask &= u64::MAX << (from & 63);
            }
            if w == last {
                mask &= u64::MAX >> (63 - (to & 63));
            }
            let mut seen = word.load(Ordering::Relaxed);
            // Another core may set a bit between the load and the fetch_or (a preferred port,
            // a claim); each failed attempt removes one bit from `mask`, so at most 64 tries.
            loop {
                let free = !seen & mask;
                if free == 0 {
                    break;
                }
                let b = free.trailing_zeros();
                let m = 1u64 << b;
                let prev = word.fetch_or(m, Ordering::AcqRel);
                if prev & m == 0 {
                    // w < WORDS = 1024, so the port fits in 16 bits.
                    return Some(((w as u16) << 6) | b as u16);
                }
                mask &= !m;
                seen = prev;
            }
        }
        None
    }

    /// Allocates a port of `addr` (an index into [`PortAllocator::addrs`]) for `proto`.
    ///
    /// Port preservation (RFC 4787 REQ-1 is "no port preservation required", but keeping the
    /// port when it is free is what hosts and applications expect): `preferred` is taken if it
    /// lies in the range, is not reserved and is free, whichever worker's share it is in.
    /// Otherwise the worker's own share is searched from its cursor, which then jumps past the
    /// port handed out by a random step (RFC 6056's random increments): the next port can't
    /// be guessed, and a just-released port is not reused at once.
    ///
    /// `None` when the share is exhausted (the caller counts `pat_ports_exhausted`) or `addr`
    /// is not an address index. Allocation-free and lock-free.
    pub fn allocate(
        &self,
        cursors: &mut PortCursors,
        addr: usize,
        proto: Proto,
        preferred: u16,
    ) -> Option<u16> {
        let (used, reserved) = self.maps(addr, proto)?;
        if self.allocatable(reserved, preferred) && Self::take(used, preferred) {
            return Some(preferred);
        }
        let share = self.share(cursors.worker);
        let (start, end) = (*share.start(), *share.end());
        let PortCursors { next, rng, .. } = cursors;
        let cursor = next.get_mut(addr * PROTOS + proto.index())?;
        let from = (*cursor).clamp(start, end);
        let port = Self::search(used, reserved, from, end).or_else(|| {
            if from > start {
                Self::search(used, reserved, start, from - 1)
            } else {
                None
            }
        })?;
        // Onwards by a random step, less than the share: the port just handed out (and so
        // one just released) is not the next one searched.
        let len = u32::from(end - start) + 1;
        let step = 1 + next_random(rng) % RANDOM_STEP.min(len - 1).max(1);
        *cursor = start + ((u32::from(port - start) + step) % len) as u16;
        Some(port)
    }

    /// Takes a specific port, as state sync does when it installs the active box's connection
    /// on the standby. False if the port is taken, reserved or outside the range.
    pub fn claim(&self, addr: usize, proto: Proto, port: u16) -> bool {
        self.maps(addr, proto).is_some_and(|(used, reserved)| {
            self.allocatable(reserved, port) && Self::take(used, port)
        })
    }

    /// Gives a port back. Ports outside the range are left alone: they were never handed
    /// out. A port reserved since it was handed out (a reload) is given back all the same.
    pub fn release(&self, addr: usize, proto: Proto, port: u16) {
        if !(self.lo..=self.hi).contains(&port) {
            return;
        }
        if let Some((used, _)) = self.maps(addr, proto) {
            if let Some(w) = used.get(word_index(port)) {
                w.fetch_and(!bit(port), Ordering::AcqRel);
            }
        }
    }

    /// Whether the port is handed out (reserved ports are not: they are never handed out).
    pub fn is_allocated(&self, addr: usize, proto: Proto, port: u16) -> bool {
        self.maps(addr, proto)
            .and_then(|(used, _)| used.get(word_index(port)))
            .is_some_and(|w| w.load(Ordering::Acquire) & bit(port) != 0)
    }

    /// Whether the port is reserved (never allocated, claimed nor released).
    pub fn is_reserved(&self, addr: usize, proto: Proto, port: u16) -> bool {
        self.maps(addr, proto)
            .and_then(|(_, reserved)| reserved.get(word_index(port)))
            .is_some_and(|w| w.load(Ordering::Relaxed) & bit(port) != 0)
    }

    /// Ports of `addr` handed out for `proto` (a snapshot; for metrics and tests).
    pub fn in_use(&self, addr: usize, proto: Proto) -> u32 {
        self.maps(addr, proto).map_or(0, |(used, _)| {
            used.iter()
                .map(|w| w.load(Ordering::Relaxed).count_ones())
                .sum()
        })
    }

    /// Bytes the allocator holds (cursors, owned by the workers, not included).
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Self>()
            + std::mem::size_of_val(&*self.addrs)
            + std::mem::size_of_val(&*self.used)
            + std::mem::size_of_val(&*self.reserved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const A: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    const B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
    const C: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 3);

    fn alloc(workers: u16, lo: u16, hi: u16) -> PortAllocator {
        PortAllocator::new(&[A, B], workers, lo, hi, &[]).unwrap()
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<PortAllocator>();
        check::<PortCursors>();
    }

    #[test]
    fn rejects_bad_configuration() {
        assert_eq!(
            PortAllocator::new(&[], 1, 1024, 65535, &[]).err(),
            Some(PortsError::NoAddresses)
        );
        assert_eq!(
            PortAllocator::new(&[A], 1, 2000, 1999, &[]).err(),
            Some(PortsError::BadRange { lo: 2000, hi: 1999 })
        );
        assert_eq!(
            PortAllocator::new(&[A], 1, 0, 100, &[]).err(),
            Some(PortsError::BadRange { lo: 0, hi: 100 })
        );
        assert_eq!(
            PortAllocator::new(&[A], 0, 1024, 65535, &[]).err(),
            Some(PortsError::NoWorkers)
        );
        assert_eq!(
            PortAllocator::new(&[A], 11, 1000, 1009, &[]).err(),
            Some(PortsError::TooManyWorkers {
                workers: 11,
                ports: 10
            })
        );
        assert!(PortAllocator::new(&[A], 10, 1000, 1009, &[]).is_ok());
        assert_eq!(
            PortAllocator::new(&[A], 1, 1024, 65535, &[(C, Proto::Tcp, 80)]).err(),
            Some(PortsError::UnknownReserved(C))
        );
        // Errors carry their numbers into the message.
        let msg = PortsError::TooManyWorkers {
            workers: 11,
            ports: 10,
        }
        .to_string();
        assert!(msg.contains("11") && msg.contains("10"), "{msg}");
    }

    #[test]
    fn preserves_the_port_when_free() {
        let p = alloc(4, DEFAULT_LO, DEFAULT_HI);
        let mut c = p.cursors(0);
        // 60000 is in worker 3's share, yet worker 0 may keep it.
        assert!(!p.share(0).contains(&60000));
        assert_eq!(p.allocate(&mut c, 0, Proto::Udp, 60000), Some(60000));
        assert!(p.is_allocated(0, Proto::Udp, 60000));
        // Protocols and addresses are independent port spaces.
        assert_eq!(p.allocate(&mut c, 0, Proto::Tcp, 60000), Some(60000));
        assert_eq!(p.allocate(&mut c, 1, Proto::Udp, 60000), Some(60000));
        assert_eq!(p.allocate(&mut c, 0, Proto::Icmp, 60000), Some(60000));
    }

    #[test]
    fn second_request_for_the_same_port_gets_another_from_the_share() {
        let p = alloc(4, DEFAULT_LO, DEFAULT_HI);
        let mut c0 = p.cursors(0);
        let mut c2 = p.cursors(2);
        assert_eq!(p.allocate(&mut c0, 0, Proto::Tcp, 40000), Some(40000));
        let other = p.allocate(&mut c2, 0, Proto::Tcp, 40000).unwrap();
        assert_ne!(other, 40000);
        assert!(p.share(2).contains(&other));
        let third = p.allocate(&mut c2, 0, Proto::Tcp, 40000).unwrap();
        assert!(third != other && third != 40000);
        assert_eq!(p.in_use(0, Proto::Tcp), 3);
        assert_eq!(p.in_use(1, Proto::Tcp), 0);
    }

    #[test]
    fn ports_outside_the_range_are_never_allocated() {
        let p = alloc(2, 5000, 5999);
        let mut c = p.cursors(1);
        for preferred in [0, 80, 4999, 6000, 65535] {
            let port = p.allocate(&mut c, 0, Proto::Udp, preferred).unwrap();
            assert!((5000..=5999).contains(&port), "{port}");
            assert!(p.share(1).contains(&port));
        }
        assert!(!p.claim(0, Proto::Udp, 4999));
        assert!(!p.claim(0, Proto::Udp, 6000));
    }

    #[test]
    fn shares_are_disjoint_and_cover_the_range() {
        for (workers, lo, hi) in [(1, 1024, 65535), (3, 1024, 65535), (7, 10, 100), (5, 1, 5)] {
            let p = alloc(workers, lo, hi);
            let mut seen = HashSet::new();
            let mut sizes = Vec::new();
            for w in 0..workers {
                let s = p.share(w);
                sizes.push(s.len());
                for port in s {
                    assert!(seen.insert(port), "port {port} in two shares");
                }
            }
            assert_eq!(seen.len(), usize::from(hi - lo) + 1);
            assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            // A worker id beyond the count wraps around instead of panicking.
            assert_eq!(p.share(workers + 1), p.share(1 % workers));
            assert_eq!(p.cursors(workers).worker(), 0);
        }
    }

    #[test]
    fn workers_allocate_only_from_their_shares() {
        let p = alloc(3, 1000, 1299);
        let mut sets: Vec<HashSet<u16>> = Vec::new();
        for w in 0..3 {
            let mut c = p.cursors(w);
            let mut set = HashSet::new();
            // Preferred port 0 is outside the range: always searched in the share.
            while let Some(port) = p.allocate(&mut c, 1, Proto::Tcp, 0) {
                assert!(p.share(w).contains(&port));
                assert!(set.insert(port));
                assert!(set.len() <= 100);
            }
            assert_eq!(set.len(), 100);
            sets.push(set);
        }
        assert!(sets[0].is_disjoint(&sets[1]) && sets[1].is_disjoint(&sets[2]));
        assert_eq!(p.in_use(1, Proto::Tcp), 300);
    }

    #[test]
    fn exhaustion_then_release_makes_a_port_available() {
        let p = alloc(2, 2000, 2015);
        let mut c = p.cursors(1); // share 2008..=2015
        let mut got: Vec<u16> = (0..8)
            .map(|_| p.allocate(&mut c, 0, Proto::Udp, 0).unwrap())
            .collect();
        got.sort_unstable();
        assert_eq!(got, (2008..=2015).collect::<Vec<_>>());
        assert_eq!(p.allocate(&mut c, 0, Proto::Udp, 0), None);
        // A preferred port in the other share is still free and may be taken.
        assert_eq!(p.allocate(&mut c, 0, Proto::Udp, 2003), Some(2003));
        assert_eq!(p.allocate(&mut c, 0, Proto::Udp, 2003), None);
        p.release(0, Proto::Udp, 2011);
        assert!(!p.is_allocated(0, Proto::Udp, 2011));
        assert_eq!(p.allocate(&mut c, 0, Proto::Udp, 0), Some(2011));
        assert_eq!(p.allocate(&mut c, 0, Proto::Udp, 0), None);
        // The other protocol is untouched.
        assert_eq!(p.in_use(0, Proto::Tcp), 0);
    }

    #[test]
    fn cursor_moves_on_so_a_released_port_is_not_reused_at_once() {
        let p = alloc(1, 3000, 3009);
        let mut c = p.cursors(0);
        let first = p.allocate(&mut c, 0, Proto::Tcp, 0).unwrap();
        p.release(0, Proto::Tcp, first);
        let second = p.allocate(&mut c, 0, Proto::Tcp, 0).unwrap();
        assert_ne!(first, second);
    }

    #[test]
    fn reserved_ports_are_never_handed_out_nor_released() {
        let reserved = [
            (A, Proto::Tcp, 2000),
            (A, Proto::Tcp, 2002),
            (A, Proto::Tcp, 80), // outside the range: accepted, has no effect
            (B, Proto::Udp, 2001),
        ];
        let p = PortAllocator::new(&[A, B], 1, 2000, 2004, &reserved).unwrap();
        let mut c = p.cursors(0);
        assert!(p.is_reserved(0, Proto::Tcp, 2000));
        assert!(!p.is_reserved(0, Proto::Udp, 2000));
        let mut got = Vec::new();
        for _ in 0..10 {
            if let Some(port) = p.allocate(&mut c, 0, Proto::Tcp, 2000) {
                got.push(port);
            }
        }
        got.sort_unstable();
        assert_eq!(got, vec![2001, 2003, 2004]);
        assert!(!p.claim(0, Proto::Tcp, 2002));
        assert!(!p.is_allocated(0, Proto::Tcp, 2002));
        // The same port on another protocol or address is not reserved.
        assert!(p.claim(0, Proto::Udp, 2002));
        assert!(!p.claim(1, Proto::Udp, 2001));
        assert!(p.claim(1, Proto::Tcp, 2001));
        // Releasing a reserved port does not make it allocatable.
        p.release(0, Proto::Tcp, 2000);
        assert_eq!(p.allocate(&mut c, 0, Proto::Tcp, 2000), None);
    }

    #[test]
    fn ports_after_a_taken_one_are_not_in_sequence_nor_alike_across_runs() {
        let run = || {
            let p = alloc(1, 1024, 65535);
            let mut c = p.cursors(0);
            // Every request wants port 1024, taken by the first: the rest are searched.
            (0..32)
                .map(|_| p.allocate(&mut c, 0, Proto::Udp, 1024).unwrap())
                .collect::<Vec<u16>>()
        };
        let (a, b) = (run(), run());
        let steps: Vec<i32> = a
            .windows(2)
            .map(|w| i32::from(w[1]) - i32::from(w[0]))
            .collect();
        assert!(
            steps.iter().filter(|s| **s == 1).count() < 4,
            "not sequential: {a:?}"
        );
        assert_ne!(a[1..], b[1..], "another start, another sequence");
        let mut unique = a.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), a.len(), "never the same port twice");
    }

    #[test]
    fn host_counts_hold_each_host_to_its_quota() {
        let h = HostCounts::default();
        let (x, y) = (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2));
        assert!(h.take(x, 2) && h.take(x, 2));
        assert!(!h.take(x, 2), "x is at its quota");
        assert!(h.take(y, 2), "y is not");
        h.give_back(x);
        assert!(h.take(x, 2));
        assert!(h.take(x, 0), "0 is no limit");
        assert_eq!(h.held(x), 3);
        for _ in 0..5 {
            h.give_back(x);
        }
        assert_eq!(h.held(x), 0, "never below zero");
    }

    #[test]
    fn a_reload_adds_addresses_and_moves_reserved_ports() {
        let p = PortAllocator::new(&[A], 1, 2000, 2003, &[(A, Proto::Tcp, 2000)]).unwrap();
        let mut c = p.cursors(0);
        assert_eq!(p.allocate(&mut c, 0, Proto::Tcp, 2001), Some(2001));
        // 2001 becomes reserved while in use: it stays taken, is given back on release, and
        // is never handed out again; 2000 is free to use now.
        p.set_reserved(&[(A, Proto::Tcp, 2001)]).unwrap();
        assert!(p.is_allocated(0, Proto::Tcp, 2001));
        p.release(0, Proto::Tcp, 2001);
        assert!(!p.is_allocated(0, Proto::Tcp, 2001));
        let mut got: Vec<u16> = (0..3)
            .filter_map(|_| p.allocate(&mut c, 0, Proto::Tcp, 2001))
            .collect();
        got.sort_unstable();
        assert_eq!(got, vec![2000, 2002, 2003]);
        assert_eq!(
            p.set_reserved(&[(B, Proto::Tcp, 2001)]),
            Err(PortsError::UnknownReserved(B))
        );

        assert_eq!(p.add_addr(A), Ok(0));
        assert_eq!(p.add_addr(B), Ok(1));
        assert_eq!(p.addrs(), vec![A, B]);
        assert_eq!(p.addr(1), Some(B));
        assert_eq!(p.addr(2), None);
        assert_eq!(p.allocate(&mut c, 1, Proto::Udp, 2003), Some(2003));
        for i in 0..SPARE_ADDRS - 1 {
            p.add_addr(Ipv4Addr::from(0x0a00_0000 + i as u32)).unwrap();
        }
        let one_more = Ipv4Addr::new(10, 9, 9, 9);
        assert_eq!(p.add_addr(one_more), Err(PortsError::NoSpareSlot(one_more)));
    }

    #[test]
    fn claim_takes_a_specific_port_once() {
        let p = alloc(2, DEFAULT_LO, DEFAULT_HI);
        assert!(p.claim(1, Proto::Tcp, 33333));
        assert!(!p.claim(1, Proto::Tcp, 33333));
        assert!(p.is_allocated(1, Proto::Tcp, 33333));
        let mut c = p.cursors(0);
        assert_ne!(p.allocate(&mut c, 1, Proto::Tcp, 33333), Some(33333));
        p.release(1, Proto::Tcp, 33333);
        assert!(p.claim(1, Proto::Tcp, 33333));
        // Unknown address index: refused, never a panic.
        assert!(!p.claim(2, Proto::Tcp, 33333));
        assert!(!p.is_allocated(2, Proto::Tcp, 33333));
        assert_eq!(p.allocate(&mut c, 2, Proto::Tcp, 33333), None);
        p.release(usize::MAX, Proto::Tcp, 1);
        assert_eq!(p.in_use(usize::MAX, Proto::Tcp), 0);
    }

    #[test]
    fn pick_addr_is_paired_and_spreads() {
        let addrs: Vec<Ipv4Addr> = (1..=4).map(|i| Ipv4Addr::new(203, 0, 113, i)).collect();
        let p = PortAllocator::new(&addrs, 1, DEFAULT_LO, DEFAULT_HI, &[]).unwrap();
        let all = [0, 1, 2, 3];
        let mut counts = [0u32; 4];
        for i in 0..4000u32 {
            let internal = Ipv4Addr::from(0xc612_0000 + i);
            let a = p.pick_addr(&all, internal).unwrap();
            assert_eq!(p.pick_addr(&all, internal), Some(a));
            counts[a] += 1;
        }
        // Every address is used for a good share of internal hosts.
        assert!(counts.iter().all(|&n| n > 800), "{counts:?}");
        assert_eq!(p.pick_addr(&[], A), None);
        assert_eq!(p.pick_addr(&[2], A), Some(2));
        assert_eq!(p.pick_addr(&[9], A), None);
        assert_eq!(p.addr_index(addrs[2]), Some(2));
        assert_eq!(p.addr_index(C), None);
        assert_eq!(p.addrs(), &addrs[..]);
    }

    #[test]
    fn memory_is_fixed_per_address() {
        let one = PortAllocator::new(&[A], 1, DEFAULT_LO, DEFAULT_HI, &[]).unwrap();
        let two = alloc(8, DEFAULT_LO, DEFAULT_HI);
        assert!(one.memory_bytes() >= 48 * 1024);
        assert!(two.memory_bytes() - one.memory_bytes() >= 48 * 1024);
        assert!(two.memory_bytes() < (2 + SPARE_ADDRS) * 49 * 1024 + 1024);
    }

    #[test]
    fn threads_never_get_the_same_port() {
        const WORKERS: u16 = 4;
        const LO: u16 = 10_000;
        const HI: u16 = 18_191; // 8192 ports
        let p = PortAllocator::new(&[A], WORKERS, LO, HI, &[(A, Proto::Udp, 12_345)]).unwrap();
        let total = usize::from(HI - LO) + 1 - 1;
        // Released together so that they really race for the same preferred ports.
        let start = std::sync::Barrier::new(usize::from(WORKERS));
        let results: Vec<Vec<u16>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..WORKERS)
                .map(|w| {
                    let (p, start) = (&p, &start);
                    s.spawn(move || {
                        let mut c = p.cursors(w);
                        start.wait();
                        let mut got = Vec::new();
                        // The same pseudo-random preferred ports in every thread, so the
                        // threads race for them; bounded by the number of ports.
                        let mut x: u32 = 0x9e37_79b9;
                        for _ in 0..=total {
                            x ^= x << 13;
                            x ^= x >> 17;
                            x ^= x << 5;
                            match p.allocate(&mut c, 0, Proto::Udp, (x % 10_000 + 9_000) as u16) {
                                Some(port) => got.push(port),
                                None => break,
                            }
                        }
                        got
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut seen = HashSet::new();
        for port in results.iter().flatten() {
            assert!(seen.insert(*port), "port {port} handed out twice");
            assert!((LO..=HI).contains(port) && *port != 12_345);
        }
        // Each thread stopped only when its share was full, so every port went out once.
        assert_eq!(seen.len(), total);
        assert_eq!(p.in_use(0, Proto::Udp) as usize, total);
    }
}
