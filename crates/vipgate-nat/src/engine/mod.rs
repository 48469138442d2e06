//! The engine's entry point: a frame, its ingress side, the worker and the time in; a
//! [`Verdict`] out, with the frame rewritten in place.
//!
//! Per packet: parse, look the flow up in the shared [`ConnTable`]; on a hit rewrite and
//! refresh; on a miss ask the [`Policy`] (DNAT rule, pool, PAT mapping, hairpin) and create
//! the connection. ICMP errors are translated through the flow they quote; later fragments
//! follow their first fragment through the worker's [`FragCache`].

mod sync;

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::ArrayQueue;
use vipgate_wire::frame::{Inner, InnerPorts, Layout, Parsed, Transport};
use vipgate_wire::rewrite::{echo_request_to_reply, rewrite, rewrite_inner, Tuple};

use crate::counters::{Counters, DropReason};
use crate::frag::{FragCache, FragHold, FragKey, FragTarget};
use crate::policy::{Filtering, NatConfig, Persistence, Policy, PolicyError, Target};
use crate::ports::{HostCounts, PortAllocator, PortCursors, PortsError};
use crate::state::{tcp_flags, tcp_flags_valid, ConnState, Dir};
use crate::table::{
    ConnId, ConnRecord, ConnTable, Hit, InsertError, NewConn, ReclaimCursor, TableError,
};
use crate::{FlowKey, Proto, Side};

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Send the rewritten frame out on this side (the data plane sets the Ethernet header).
    Forward(Side),
    /// Send the frame back out where it came from: it is now our reply (Ethernet swapped).
    Reply,
    /// Drop it; counted under the reason.
    Drop(DropReason),
    /// A fragment that came before its first fragment: the engine copied it and will hand it
    /// out, translated, from [`Engine::take_released`] once the first fragment has passed.
    /// The frame buffer itself is free again.
    Held,
}

/// Bits of a connection's opaque `flags` byte, as the engine uses them.
pub mod conn_flags {
    /// The original direction arrived on the private side.
    pub const ORIG_IN_PRIVATE: u8 = 0x01;
    /// The original direction leaves on the private side.
    pub const ORIG_OUT_PRIVATE: u8 = 0x02;
    /// The destination is translated (DNAT rule, pool, or inbound through a mapping).
    pub const DNAT: u8 = 0x04;
    /// The source is translated (PAT).
    pub const SNAT: u8 = 0x08;
    /// Private to private through a public address.
    pub const HAIRPIN: u8 = 0x10;
    /// The connection also holds a reference on a second PAT mapping, whose entry index is
    /// in `backend`: the destination's, for a hairpin through another host's mapping.
    pub const PEER_MAPPING: u8 = 0x20;
}

/// What the state-sync layer needs to hear about, in order, per worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnEvent {
    /// A connection or PAT mapping was created; read it with [`Engine::export`].
    Created(ConnId),
    /// A connection's protocol state changed.
    Updated(ConnId, ConnState),
    /// A connection or mapping was removed (expired or flushed), as it was.
    Deleted(ConnRecord),
}

/// A connection or mapping as [`Engine::export`] gives it to state sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exported {
    /// The record, ids in it being the active box's.
    pub record: ConnRecord,
    /// The internal key of the PAT mapping the connection holds, if any.
    pub mapping: Option<FlowKey>,
    /// The internal key of the second mapping it holds ([`conn_flags::PEER_MAPPING`]).
    pub peer_mapping: Option<FlowKey>,
}

/// Which way a connection crosses the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Opened from outside, to a VIP (or through a PAT mapping).
    Inbound,
    /// Opened by an internal host, through PAT.
    Outbound,
    /// An internal host to one of our public addresses and back inside.
    Hairpin,
    /// A PAT mapping, not a connection.
    Mapping,
}

impl Direction {
    /// The name operators see.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
            Direction::Hairpin => "hairpin",
            Direction::Mapping => "mapping",
        }
    }
}

/// A connection's three endpoints as operators name them, whichever side opened it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoints {
    /// Which way it crosses.
    pub direction: Direction,
    /// The internal host (address, port or ICMP identifier).
    pub inside: (Ipv4Addr, u16),
    /// The gateway's public address and port (a VIP or PAT address).
    pub public: (Ipv4Addr, u16),
    /// The remote host; `None` for a mapping.
    pub outside: Option<(Ipv4Addr, u16)>,
}

impl Endpoints {
    /// The endpoints of `r`, from its keys and flags.
    pub fn of(r: &ConnRecord) -> Endpoints {
        let (o, rp) = (&r.orig, &r.reply);
        if r.state == ConnState::Mapping {
            return Endpoints {
                direction: Direction::Mapping,
                inside: (o.src, o.sport),
                public: (rp.dst, rp.dport),
                outside: None,
            };
        }
        let (direction, inside, public, outside) = if r.flags & conn_flags::HAIRPIN != 0 {
            (
                Direction::Hairpin,
                (o.src, o.sport),
                (o.dst, o.dport),
                (rp.src, rp.sport),
            )
        } else if r.flags & conn_flags::ORIG_IN_PRIVATE == 0 {
            (
                Direction::Inbound,
                (rp.src, rp.sport),
                (o.dst, o.dport),
                (o.src, o.sport),
            )
        } else {
            (
                Direction::Outbound,
                (o.src, o.sport),
                (rp.dst, rp.dport),
                (o.dst, o.dport),
            )
        };
        Endpoints {
            direction,
            inside,
            public,
            outside: Some(outside),
        }
    }
}

/// `backend` value of a connection that has none.
pub const NO_BACKEND: u32 = u32::MAX;

/// The engine could not be built from its configuration.
#[derive(Debug)]
pub enum EngineError {
    /// The rules.
    Policy(PolicyError),
    /// The table capacity.
    Table(TableError),
    /// PAT addresses, port range or workers.
    Ports(PortsError),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Policy(e) => e.fmt(f),
            EngineError::Table(e) => write!(f, "capacity: {e}"),
            EngineError::Ports(e) => write!(f, "pat ports: {e}"),
        }
    }
}

impl std::error::Error for EngineError {}

/// State a worker owns: written only by its thread.
#[derive(Debug)]
pub struct Worker {
    id: u16,
    /// This worker's counters.
    pub counters: Counters,
    cursors: PortCursors,
    frags: FragCache,
    hold: FragHold,
    reclaim: ReclaimCursor,
    /// The policy this worker translates with. `None` only while the engine lends it out
    /// alongside the worker (see [`Engine::create`]).
    snap: Option<Arc<Snapshot>>,
    /// Set while the connection being created is a mid-stream pickup: it starts
    /// established, not in SYN_SENT.
    picking_up: bool,
}

impl Worker {
    /// The worker id.
    pub fn id(&self) -> u16 {
        self.id
    }

    /// The policy snapshot this worker runs, until [`Engine::refresh`] picks up a newer one.
    pub fn snapshot(&self) -> Option<&Snapshot> {
        self.snap.as_deref()
    }
}

/// One compiled policy as the workers use it, immutable once published.
#[derive(Debug)]
pub struct Snapshot {
    config: NatConfig,
    policy: Arc<Policy>,
    /// Allocator indices of each PAT rule's addresses.
    pat_addrs: Vec<Vec<usize>>,
    generation: u64,
}

impl Snapshot {
    /// The compiled policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The configuration it was compiled from (its sizing fields are the engine's, fixed at
    /// start).
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// 1 for the policy the engine started with, one more for each publication.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// Where the control thread publishes snapshots and workers pick them up.
///
/// A worker reads `generation` (a line written only by a publication) between batches and
/// takes the lock only when it changed: the packet path never locks and never touches the
/// snapshot's reference count.
#[derive(Debug)]
struct PolicyCell {
    generation: AtomicU64,
    current: Mutex<Arc<Snapshot>>,
    /// Snapshots replaced but maybe still held by a worker; the control thread frees them
    /// once it holds the last reference, so a worker never frees one.
    retired: Mutex<Vec<Arc<Snapshot>>>,
}

/// A PAT mapping a new connection holds a reference on.
#[derive(Clone, Copy, Debug)]
struct MappingRef {
    id: ConnId,
    addr: Ipv4Addr,
    port: u16,
}

enum Created {
    Conn(Hit),
    Done(Verdict),
}

/// A frame of a batch after the first pass: its layout and, for flows, key, TCP flags and
/// hash; or why it is dropped.
type Classified = Result<(Layout, Option<(FlowKey, u8, u64)>), DropReason>;

/// Frames processed together by [`Engine::process_batch`].
pub const BATCH: usize = 32;

/// The translation engine, shared by all workers.
#[derive(Debug)]
pub struct Engine {
    /// The configuration at start: its sizing fields (capacity, workers, ports, fragments,
    /// events) hold for the engine's life.
    config: NatConfig,
    cell: PolicyCell,
    table: ConnTable,
    ports: PortAllocator,
    events: Vec<ArrayQueue<ConnEvent>>,
    /// Written by the control thread only (flushes).
    flush_events_lost: AtomicU64,
    /// See [`Engine::pick_up_until`].
    pickup_until: AtomicU32,
    /// Each internal host's PAT mappings, against `pat_quota`.
    hosts: HostCounts,
    /// Per worker, the last host refused for its quota and the refusals since the last
    /// [`Engine::take_quota_report`] (address << 32 | count), in a line only it writes.
    quota_reports: Box<[QuotaReport]>,
}

#[repr(align(64))]
#[derive(Debug, Default)]
struct QuotaReport(AtomicU64);

/// The 5-tuple of a translatable datagram, and its TCP flags.
#[inline]
fn flow_key(l: &Layout) -> Option<(FlowKey, u8)> {
    let (sport, dport, proto, flags) = match l.transport {
        Transport::Tcp {
            sport,
            dport,
            flags,
        } => (sport, dport, Proto::Tcp, flags),
        Transport::Udp { sport, dport } => (sport, dport, Proto::Udp, 0),
        Transport::IcmpEcho { request: true, id } => (id, 0, Proto::Icmp, 0),
        Transport::IcmpEcho { request: false, id } => (0, id, Proto::Icmp, 0),
        _ => return None,
    };
    Some((
        FlowKey {
            src: l.src,
            dst: l.dst,
            sport,
            dport,
            proto,
        },
        flags,
    ))
}

/// Addresses a gateway never forwards from or to (RFC 1812 5.3.7, 5.2.2).
#[inline]
pub fn is_martian(a: Ipv4Addr) -> bool {
    let o = a.octets()[0];
    o == 0 || o == 127 || o >= 224
}

/// The key under which a PAT mapping is found from its internal endpoint.
fn mapping_internal_key(addr: Ipv4Addr, port: u16, proto: Proto) -> FlowKey {
    // Destination 0.0.0.0 never occurs in a forwarded packet (martian), so these keys
    // cannot collide with a connection's.
    FlowKey {
        src: addr,
        dst: Ipv4Addr::UNSPECIFIED,
        sport: port,
        dport: 0,
        proto,
    }
}

/// The key under which a PAT mapping is found from its public endpoint.
fn mapping_public_key(addr: Ipv4Addr, port: u16, proto: Proto) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::UNSPECIFIED,
        dst: addr,
        sport: 0,
        dport: port,
        proto,
    }
}

/// The side a packet of `dir` must arrive on, and the side it leaves on.
#[inline]
fn sides(flags: u8, dir: Dir) -> (Side, Side) {
    let side = |private: bool| if private { Side::Private } else { Side::Public };
    let orig_in = side(flags & conn_flags::ORIG_IN_PRIVATE != 0);
    let orig_out = side(flags & conn_flags::ORIG_OUT_PRIVATE != 0);
    match dir {
        Dir::Orig => (orig_in, orig_out),
        Dir::Reply => (orig_out, orig_in),
    }
}

/// What a packet matching `hit` becomes: the other direction's key, reversed.
#[inline]
fn translated(hit: &Hit) -> Tuple {
    let other = match hit.dir {
        Dir::Orig => hit.reply,
        Dir::Reply => hit.orig,
    };
    Tuple {
        src: other.dst,
        dst: other.src,
        sport: other.dport,
        dport: other.sport,
    }
}

fn initial_state(proto: Proto) -> ConnState {
    match proto {
        Proto::Tcp => ConnState::TcpSynSent,
        Proto::Udp => ConnState::Udp,
        Proto::Icmp => ConnState::Icmp,
    }
}

/// Whether a packet may open a connection, and if not, the reason to drop it: TCP only with
/// a plain SYN, ICMP only with an echo request (a stray reply must not allocate state).
#[inline]
fn may_open(l: &Layout) -> Result<(), DropReason> {
    match l.transport {
        Transport::Tcp { flags, .. }
            if flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) != tcp_flags::SYN =>
        {
            Err(DropReason::TcpNoConn)
        }
        Transport::IcmpEcho { request: false, .. } => Err(DropReason::NoRule),
        _ => Ok(()),
    }
}

/// Whether a TCP segment that is not a plain SYN may open a connection during a pickup
/// window: an ACK without SYN or RST (a RST or a stray SYN-ACK opens nothing).
#[inline]
fn may_pick_up(l: &Layout) -> bool {
    matches!(l.transport, Transport::Tcp { flags, .. }
        if flags & (tcp_flags::SYN | tcp_flags::ACK | tcp_flags::RST) == tcp_flags::ACK)
}

impl Engine {
    /// Builds the engine: checks the policy, allocates the table, the port bitmaps and the
    /// event queues. Nothing is allocated after this on the packet path.
    ///
    /// # Errors
    /// [`EngineError`] naming what is wrong in `config`.
    pub fn new(config: NatConfig) -> Result<Engine, EngineError> {
        let policy = Policy::new(&config).map_err(EngineError::Policy)?;
        Engine::with_policy(config, Arc::new(policy))
    }

    /// [`Engine::new`] with `config`'s policy already compiled (by the validation that
    /// checked it), so it is compiled once.
    ///
    /// # Errors
    /// [`EngineError`] for the table capacity or the port allocator.
    pub fn with_policy(config: NatConfig, policy: Arc<Policy>) -> Result<Engine, EngineError> {
        let table = ConnTable::new(config.capacity, config.timeouts).map_err(EngineError::Table)?;
        // A gateway without any public address translates nothing, but stays valid.
        let addrs = match policy.owned_addrs() {
            [] => &[Ipv4Addr::UNSPECIFIED][..],
            a => a,
        };
        let ports = PortAllocator::new(
            addrs,
            config.workers,
            config.port_lo,
            config.port_hi,
            &policy.reserved_ports(),
        )
        .map_err(EngineError::Ports)?;
        let events = if config.event_queue == 0 {
            Vec::new()
        } else {
            (0..config.workers)
                .map(|_| ArrayQueue::new(config.event_queue))
                .collect()
        };
        let snap = Snapshot {
            pat_addrs: pat_addrs(&config, &ports),
            config: config.clone(),
            policy,
            generation: 1,
        };
        Ok(Engine {
            cell: PolicyCell {
                generation: AtomicU64::new(1),
                current: Mutex::new(Arc::new(snap)),
                retired: Mutex::new(Vec::new()),
            },
            table,
            ports,
            events,
            flush_events_lost: AtomicU64::new(0),
            pickup_until: AtomicU32::new(0),
            hosts: HostCounts::default(),
            quota_reports: (0..config.workers)
                .map(|_| QuotaReport::default())
                .collect(),
            config,
        })
    }

    /// Compiles the policy of `config` and publishes it to the workers, who pick it up
    /// between batches. Only its policy fields count (VIPs, rules, pools, PAT, filtering,
    /// timeouts); the sizing ones are the engine's from start. Connections that exist keep
    /// their translation whatever the new policy says. Returns the new generation.
    ///
    /// # Errors
    /// [`EngineError`] naming what is wrong; the running policy is then unchanged. (A new
    /// public address that found no spare port-allocator slot stays known to the allocator,
    /// unused.)
    pub fn publish(&self, config: &NatConfig) -> Result<u64, EngineError> {
        let policy = Policy::new(config).map_err(EngineError::Policy)?;
        self.publish_compiled(config, Arc::new(policy))
    }

    /// [`Engine::publish`] with `config`'s policy already compiled.
    ///
    /// # Errors
    /// As [`Engine::publish`].
    pub fn publish_compiled(
        &self,
        config: &NatConfig,
        policy: Arc<Policy>,
    ) -> Result<u64, EngineError> {
        let mut current = self.cell.current.lock().unwrap_or_else(|e| e.into_inner());
        for a in policy.owned_addrs() {
            self.ports.add_addr(*a).map_err(EngineError::Ports)?;
        }
        self.ports
            .set_reserved(&policy.reserved_ports())
            .map_err(EngineError::Ports)?;
        self.table.set_timeouts(policy.timeouts());
        let mut sized = config.clone();
        sized.capacity = self.config.capacity;
        sized.workers = self.config.workers;
        sized.port_lo = self.config.port_lo;
        sized.port_hi = self.config.port_hi;
        sized.frag_entries = self.config.frag_entries;
        sized.frag_timeout = self.config.frag_timeout;
        sized.frag_hold = self.config.frag_hold;
        sized.event_queue = self.config.event_queue;
        let generation = current.generation + 1;
        let old = std::mem::replace(
            &mut *current,
            Arc::new(Snapshot {
                pat_addrs: pat_addrs(&sized, &self.ports),
                config: sized,
                policy,
                generation,
            }),
        );
        self.cell.generation.store(generation, Ordering::Release);
        drop(current);
        let mut retired = self.cell.retired.lock().unwrap_or_else(|e| e.into_inner());
        retired.push(old);
        retired.retain(|s| Arc::strong_count(s) > 1);
        Ok(generation)
    }

    /// The snapshot published last (the control thread's view; workers may still run the
    /// one before until their next batch).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.cell.current.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Lets worker `w` pick up the latest snapshot if one was published since it last
    /// looked; call between batches. True if it changed.
    #[inline]
    pub fn refresh(&self, w: &mut Worker) -> bool {
        let g = self.cell.generation.load(Ordering::Acquire);
        if w.snap.as_ref().is_some_and(|s| s.generation == g) {
            return false;
        }
        w.snap = Some(self.snapshot());
        true
    }

    /// The state of worker `id` (0-based, below the configured number of workers).
    pub fn worker(&self, id: u16) -> Worker {
        Worker {
            id,
            counters: Counters::default(),
            cursors: self.ports.cursors(id),
            frags: FragCache::new(self.config.frag_entries, self.config.frag_timeout),
            hold: FragHold::new(self.config.frag_hold, self.config.frag_timeout),
            reclaim: ReclaimCursor::new(u32::from(id), u32::from(self.config.workers.max(1))),
            snap: Some(self.snapshot()),
            picking_up: false,
        }
    }

    /// Lets TCP segments other than a SYN open connections until `until` (seconds of the
    /// engine's clock), as established ones: after a takeover, a connection the standby
    /// never heard of (opened in the last moments before the failure, or lost to a full
    /// sync queue) is picked up at its next segment instead of being dropped. Inbound it
    /// goes where a SYN would have gone: the DNAT target, or the pool backend Maglev picks,
    /// the same on both boxes. Outbound it gets a PAT mapping, its own source port when
    /// free. Outside that window only a SYN opens a TCP connection.
    pub fn pick_up_until(&self, until: u32) {
        self.pickup_until.store(until, Ordering::Relaxed);
    }

    /// The configuration the engine started with: its sizing fields hold for the engine's
    /// life; for the policy in force see [`Engine::snapshot`].
    pub fn config(&self) -> &NatConfig {
        &self.config
    }

    /// The connection table.
    pub fn table(&self) -> &ConnTable {
        &self.table
    }

    /// The PAT port allocator.
    pub fn ports(&self) -> &PortAllocator {
        &self.ports
    }

    /// Translates one frame arriving on `ingress` at `now` (seconds on a monotonic clock).
    pub fn process(&self, w: &mut Worker, frame: &mut [u8], ingress: Side, now: u32) -> Verdict {
        let v = match classify(frame) {
            Ok(l) => self.translate(w, frame, &l, ingress, now),
            Err(reason) => Verdict::Drop(reason),
        };
        count(w, v);
        v
    }

    /// [`Engine::process`] for a frame the caller has already parsed into `l` (the data plane
    /// classifies every frame first; parsing twice would cost a quarter of the engine's time).
    pub fn process_parsed(
        &self,
        w: &mut Worker,
        frame: &mut [u8],
        l: &Layout,
        ingress: Side,
        now: u32,
    ) -> Verdict {
        let v = if is_martian(l.src) || is_martian(l.dst) {
            Verdict::Drop(DropReason::Martian)
        } else {
            self.translate(w, frame, l, ingress, now)
        };
        count(w, v);
        v
    }

    #[inline]
    fn translate(
        &self,
        w: &mut Worker,
        frame: &mut [u8],
        l: &Layout,
        ingress: Side,
        now: u32,
    ) -> Verdict {
        match flow_key(l) {
            Some((key, flags)) => {
                let hash = self.table.hash(&key);
                self.flow(w, frame, l, &key, flags, hash, ingress, now)
            }
            None => self.non_flow(w, frame, l, ingress, now),
        }
    }

    /// Translates a batch of frames from one side; `verdicts[i]` is the verdict of
    /// `frames[i]`. Looking up a batch lets the table's memory loads overlap: every frame's
    /// bucket, then every frame's entry, is prefetched before the first lookup.
    pub fn process_batch(
        &self,
        w: &mut Worker,
        frames: &mut [&mut [u8]],
        ingress: Side,
        now: u32,
        verdicts: &mut [Verdict],
    ) {
        for (frames, verdicts) in frames.chunks_mut(BATCH).zip(verdicts.chunks_mut(BATCH)) {
            let mut pre: [Option<Classified>; BATCH] = [None; BATCH];
            for (slot, frame) in pre.iter_mut().zip(frames.iter()) {
                *slot = Some(classify(frame).map(|l| {
                    let flow = flow_key(&l).map(|(key, flags)| {
                        let hash = self.table.hash(&key);
                        self.table.prefetch(hash);
                        (key, flags, hash)
                    });
                    (l, flow)
                }));
            }
            // Second pass: the buckets are on their way or in; start loading the entries
            // they point to, so a lookup at a million flows waits for neither.
            for (_, flow) in pre.iter().flatten().flatten() {
                if let Some((_, _, hash)) = flow {
                    self.table.prefetch_entry(*hash);
                }
            }
            for ((slot, frame), verdict) in pre.iter().zip(frames.iter_mut()).zip(verdicts) {
                let v = match slot {
                    Some(Ok((l, Some((key, flags, hash))))) => {
                        self.flow(w, frame, l, key, *flags, *hash, ingress, now)
                    }
                    Some(Ok((l, None))) => self.non_flow(w, frame, l, ingress, now),
                    Some(Err(reason)) => Verdict::Drop(*reason),
                    None => Verdict::Drop(DropReason::Truncated),
                };
                count(w, v);
                *verdict = v;
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn flow(
        &self,
        w: &mut Worker,
        frame: &mut [u8],
        l: &Layout,
        key: &FlowKey,
        flags: u8,
        hash: u64,
        ingress: Side,
        now: u32,
    ) -> Verdict {
        if key.proto == Proto::Tcp && !tcp_flags_valid(flags) {
            return Verdict::Drop(DropReason::TcpBadFlags);
        }
        let hit = match self.table.lookup_hashed(key, hash) {
            Some(h) if h.state != ConnState::Mapping => {
                let (expect_in, _) = sides(h.flags, h.dir);
                if expect_in != ingress {
                    return Verdict::Drop(DropReason::WrongSide);
                }
                if let Some(state) = self.table.refresh(&h, now, flags) {
                    self.emit(w, ConnEvent::Updated(h.id, state));
                }
                h
            }
            _ => match self.create(w, frame, l, key, ingress, now) {
                Created::Conn(h) => h,
                Created::Done(v) => return v,
            },
        };
        let to = translated(&hit);
        if rewrite(frame, l, &to).is_err() {
            return Verdict::Drop(DropReason::Truncated);
        }
        let (_, egress) = sides(hit.flags, hit.dir);
        if l.more_fragments {
            let fk = FragKey {
                src: l.src,
                dst: l.dst,
                proto: l.proto,
                ident: l.ident,
            };
            let target = FragTarget {
                src: to.src,
                dst: to.dst,
                ingress,
                egress,
            };
            if w.frags.insert(fk, target, now) {
                w.counters.frag_evictions += 1;
            }
            if w.hold.waiting() > 0 {
                let to = Tuple {
                    src: to.src,
                    dst: to.dst,
                    sport: 0,
                    dport: 0,
                };
                let (released, refused) = w.hold.release(&fk, &target, |held| {
                    matches!(vipgate_wire::parse(held), Ok(Parsed::Ipv4(hl))
                        if hl.transport == Transport::Fragment && rewrite(held, &hl, &to).is_ok())
                });
                w.counters.frags_released += released as u64;
                for _ in 0..refused {
                    w.counters.drop(DropReason::FragmentUnmatched);
                }
            }
        }
        Verdict::Forward(egress)
    }

    fn non_flow(
        &self,
        w: &mut Worker,
        frame: &mut [u8],
        l: &Layout,
        ingress: Side,
        now: u32,
    ) -> Verdict {
        match l.transport {
            Transport::Fragment => self.later_fragment(w, frame, l, ingress, now),
            Transport::IcmpError { .. } => {
                let spoofed = w
                    .snap
                    .as_ref()
                    .map(|s| s.policy.check_source(l.src, ingress));
                if let Some(Err(r)) = spoofed {
                    return Verdict::Drop(r);
                }
                match l.icmp_inner(frame) {
                    Ok(inner) => self.icmp_error(frame, l, &inner, ingress),
                    Err(e) => Verdict::Drop(e.into()),
                }
            }
            Transport::IcmpOther { .. } => Verdict::Drop(DropReason::IcmpUnsupported),
            _ => Verdict::Drop(DropReason::UnsupportedProto),
        }
    }

    fn later_fragment(
        &self,
        w: &mut Worker,
        frame: &mut [u8],
        l: &Layout,
        ingress: Side,
        now: u32,
    ) -> Verdict {
        let key = FragKey {
            src: l.src,
            dst: l.dst,
            proto: l.proto,
            ident: l.ident,
        };
        match w.frags.get(&key, now) {
            Some(t) if t.ingress == ingress => {
                let to = Tuple {
                    src: t.src,
                    dst: t.dst,
                    sport: 0,
                    dport: 0,
                };
                match rewrite(frame, l, &to) {
                    Ok(()) => Verdict::Forward(t.egress),
                    Err(_) => Verdict::Drop(DropReason::Truncated),
                }
            }
            // Out of order (RFC 4787 REQ-14): wait for the first fragment, if there is room.
            _ => match w.hold.hold(key, ingress, frame, now) {
                Ok(()) => Verdict::Held,
                Err(_) => Verdict::Drop(DropReason::FragmentUnmatched),
            },
        }
    }

    /// Hands out, translated, the fragments held for their first fragment that has since
    /// passed (see [`Verdict::Held`]), each with the side to send it on. The data plane calls
    /// it after each batch; it costs nothing when none are ready.
    pub fn take_released(&self, w: &mut Worker, send: impl FnMut(&mut [u8], Side)) -> usize {
        let n = w.hold.take_ready(send);
        w.counters.forwarded += n as u64;
        n
    }

    /// RFC 5508: an ICMP error is translated through the connection of the datagram it
    /// quotes, outer header and quote alike, and only if it is addressed to that datagram's
    /// sender.
    fn icmp_error(&self, frame: &mut [u8], l: &Layout, inner: &Inner, ingress: Side) -> Verdict {
        let (sport, dport) = match inner.ports {
            InnerPorts::Ports { sport, dport } => (sport, dport),
            InnerPorts::Echo { request: true, id } => (id, 0),
            InnerPorts::Echo { request: false, id } => (0, id),
            InnerPorts::None => return Verdict::Drop(DropReason::IcmpErrorNoConn),
        };
        let Some(proto) = Proto::from_number(inner.proto) else {
            return Verdict::Drop(DropReason::IcmpErrorNoConn);
        };
        let quoted = FlowKey {
            src: inner.src,
            dst: inner.dst,
            sport,
            dport,
            proto,
        };
        // The error travels back like a reply to the quoted datagram.
        let key = quoted.reversed();
        let hit = match self.table.lookup(&key) {
            Some(h) if h.state != ConnState::Mapping && l.dst == key.dst => h,
            _ => return Verdict::Drop(DropReason::IcmpErrorNoConn),
        };
        let (expect_in, egress) = sides(hit.flags, hit.dir);
        if expect_in != ingress {
            return Verdict::Drop(DropReason::WrongSide);
        }
        let to = translated(&hit);
        // The peer itself reporting gets its translated address, and so does anything on the
        // private side (RFC 5508 REQ-4: the NAT's public address; no private address leaves).
        // A router on the public path keeps its own: traceroute from inside sees the hops.
        let outer_src = if l.src == key.src || egress == Side::Public {
            to.src
        } else {
            l.src
        };
        let outer = Tuple {
            src: outer_src,
            dst: to.dst,
            sport: 0,
            dport: 0,
        };
        let quote = Tuple {
            src: to.dst,
            dst: to.src,
            sport: to.dport,
            dport: to.sport,
        };
        if rewrite(frame, l, &outer).is_err() || rewrite_inner(frame, l, inner, &quote).is_err() {
            return Verdict::Drop(DropReason::BadIcmpError);
        }
        Verdict::Forward(egress)
    }

    fn create(
        &self,
        w: &mut Worker,
        frame: &mut [u8],
        l: &Layout,
        key: &FlowKey,
        ingress: Side,
        now: u32,
    ) -> Created {
        // The snapshot is moved out for the call and back, so that it can be read alongside
        // the mutable worker without touching its shared reference count.
        let Some(snap) = w.snap.take() else {
            return Created::Done(Verdict::Drop(DropReason::NoRule));
        };
        let created = self.create_with(&snap, w, frame, l, key, ingress, now);
        w.snap = Some(snap);
        created
    }

    #[allow(clippy::too_many_arguments)]
    fn create_with(
        &self,
        snap: &Snapshot,
        w: &mut Worker,
        frame: &mut [u8],
        l: &Layout,
        key: &FlowKey,
        ingress: Side,
        now: u32,
    ) -> Created {
        if let Err(r) = snap.policy.check_source(l.src, ingress) {
            return Created::Done(Verdict::Drop(r));
        }
        let to_us = snap.policy.is_owned(l.dst);
        if to_us && matches!(l.transport, Transport::IcmpEcho { request: true, .. }) {
            return Created::Done(match echo_request_to_reply(frame, l, 64) {
                Ok(()) => Verdict::Reply,
                Err(_) => Verdict::Drop(DropReason::Truncated),
            });
        }
        if !to_us && ingress == Side::Public {
            return Created::Done(Verdict::Drop(DropReason::NoRule));
        }
        let window = now < self.pickup_until.load(Ordering::Relaxed);
        if let Err(r) = may_open(l) {
            if !(r == DropReason::TcpNoConn && may_pick_up(l) && window) {
                return Created::Done(Verdict::Drop(r));
            }
            w.picking_up = true;
        }
        if window && ingress == Side::Private && !to_us && key.proto != Proto::Icmp {
            if let Some(created) = self.pick_up_reply(snap, w, key, now) {
                if w.picking_up {
                    w.picking_up = false;
                    if matches!(created, Created::Conn(..)) {
                        w.counters.tcp_picked_up += 1;
                    }
                }
                return created;
            }
        }
        let created = match (ingress, to_us) {
            (Side::Public, _) => self.inbound(snap, w, key, now),
            (Side::Private, true) => self.hairpin(snap, w, key, now),
            (Side::Private, false) => self.outbound(snap, w, key, now),
        };
        if w.picking_up {
            w.picking_up = false;
            if matches!(created, Created::Conn(..)) {
                w.counters.tcp_picked_up += 1;
            }
        }
        created
    }

    /// A segment from a DNAT target or pool backend to a client, with no connection, during
    /// a pickup window: the reply of an inbound connection the failed box opened (its last
    /// data, with the client's all acknowledged, may be the only segment that ever comes).
    /// It opens that connection, as the client's next segment would, if the client's
    /// segment would have gone to this backend (Maglev picks the same on both boxes).
    /// Picked up as an outbound flow instead it would take a PAT port and clash with the
    /// inbound one. `None` when the sender serves no inbound service, or for UDP when no
    /// service picks it.
    fn pick_up_reply(
        &self,
        snap: &Snapshot,
        w: &mut Worker,
        key: &FlowKey,
        now: u32,
    ) -> Option<Created> {
        let mut served = false;
        for (vip, vport) in snap.policy.services_of(key.src, key.proto, key.sport) {
            served = true;
            let orig = FlowKey {
                src: key.dst,
                dst: vip,
                sport: key.dport,
                dport: vport,
                proto: key.proto,
            };
            // A DNAT rule or pool answers first: no mapping reference is taken.
            let Ok((addr, port, backend, _)) = self.destination(&snap.policy, &orig) else {
                continue;
            };
            if (addr, port) != (key.src, key.sport) {
                continue;
            }
            let flags = conn_flags::ORIG_OUT_PRIVATE | conn_flags::DNAT;
            let conn = new_conn(w, &orig, *key, flags, None, backend);
            return Some(match self.insert_conn(w, conn, now) {
                Created::Conn(mut h) => {
                    h.dir = if h.orig == *key {
                        Dir::Orig
                    } else {
                        Dir::Reply
                    };
                    Created::Conn(h)
                }
                done => done,
            });
        }
        (served && w.picking_up).then_some(Created::Done(Verdict::Drop(DropReason::TcpNoConn)))
    }

    /// Where a new flow to one of our addresses goes: a DNAT rule, a pool, or (filtering
    /// permitting) the internal endpoint of a PAT mapping. Returns the internal address,
    /// port, backend, and the mapping (with a reference taken) if it went through one.
    fn destination(
        &self,
        policy: &Policy,
        key: &FlowKey,
    ) -> Result<(Ipv4Addr, u16, u32, Option<ConnId>), DropReason> {
        // Echo requests to our addresses are answered by us; no ICMP query opens inbound.
        if key.proto == Proto::Icmp {
            return Err(DropReason::NoRule);
        }
        if let Some(target) = policy.dnat(key.dst, key.proto, key.dport) {
            return match target {
                Target::Host(addr, port) => Ok((addr, port, NO_BACKEND, None)),
                Target::Pool(pool) => {
                    let h = match policy.persistence(pool) {
                        Persistence::SourceAddressPort => backend_hash(key),
                        Persistence::SourceAddress => source_hash(key.src),
                    };
                    let (id, b) = policy.pick_backend(pool, h).ok_or(DropReason::NoBackend)?;
                    Ok((b.addr, b.port, id, None))
                }
            };
        }
        let mkey = mapping_public_key(key.dst, key.dport, key.proto);
        match self.table.lookup(&mkey) {
            Some(m) if m.state == ConnState::Mapping => {
                if policy.filtering() == Filtering::AddressAndPortDependent {
                    return Err(DropReason::Filtered);
                }
                if !self.table.acquire_ref(m.id) {
                    return Err(DropReason::NoRule);
                }
                Ok((m.orig.src, m.orig.sport, NO_BACKEND, Some(m.id)))
            }
            _ => Err(DropReason::NoRule),
        }
    }

    fn inbound(&self, snap: &Snapshot, w: &mut Worker, key: &FlowKey, now: u32) -> Created {
        let (addr, port, backend, mapping) = match self.destination(&snap.policy, key) {
            Ok(d) => d,
            Err(r) => return Created::Done(Verdict::Drop(r)),
        };
        let reply = reply_key(key.proto, (addr, port), (key.src, key.sport));
        let flags = conn_flags::ORIG_OUT_PRIVATE | conn_flags::DNAT;
        self.insert_conn(w, new_conn(w, key, reply, flags, mapping, backend), now)
    }

    fn outbound(&self, snap: &Snapshot, w: &mut Worker, key: &FlowKey, now: u32) -> Created {
        let Some(rule) = snap.policy.pat_rule_for(key.src) else {
            return Created::Done(Verdict::Drop(DropReason::NoRule));
        };
        let candidates = snap.pat_addrs.get(rule).map(Vec::as_slice).unwrap_or(&[]);
        let quota = snap.config.pat_quota;
        let m = match self.mapping_for(w, key.src, key.sport, key.proto, candidates, quota, now) {
            Ok(m) => m,
            Err(r) => return Created::Done(Verdict::Drop(r)),
        };
        let reply = reply_key(key.proto, (key.dst, key.dport), (m.addr, m.port));
        let flags = conn_flags::ORIG_IN_PRIVATE | conn_flags::SNAT;
        self.insert_conn(
            w,
            new_conn(w, key, reply, flags, Some(m.id), NO_BACKEND),
            now,
        )
    }

    /// An internal host reaching one of our public addresses (RFC 4787 REQ-9, RFC 5382
    /// REQ-8): the destination is translated as for an inbound flow, the source to the
    /// host's own mapping (or one on the address it reached, if no PAT rule covers it), so
    /// that replies come back through the gateway.
    fn hairpin(&self, snap: &Snapshot, w: &mut Worker, key: &FlowKey, now: u32) -> Created {
        let (addr, port, backend, dest_mapping) = match self.destination(&snap.policy, key) {
            Ok(d) => d,
            Err(r) => return Created::Done(Verdict::Drop(r)),
        };
        let own;
        let candidates: &[usize] = match snap.policy.pat_rule_for(key.src) {
            Some(rule) => snap.pat_addrs.get(rule).map(Vec::as_slice).unwrap_or(&[]),
            None => {
                own = self.ports.addr_index(key.dst);
                own.as_slice()
            }
        };
        let quota = snap.config.pat_quota;
        let m = match self.mapping_for(w, key.src, key.sport, key.proto, candidates, quota, now) {
            Ok(m) => m,
            Err(r) => {
                if let Some(d) = dest_mapping {
                    self.table.release_ref(d);
                }
                return Created::Done(Verdict::Drop(r));
            }
        };
        let reply = reply_key(key.proto, (addr, port), (m.addr, m.port));
        let mut flags = conn_flags::ORIG_IN_PRIVATE
            | conn_flags::ORIG_OUT_PRIVATE
            | conn_flags::DNAT
            | conn_flags::SNAT
            | conn_flags::HAIRPIN;
        // Through another host's mapping, the connection keeps both mappings alive: its own
        // (the source's) and the destination's, whose index rides in `backend` (a hairpin
        // through a mapping has no pool backend).
        let backend = match dest_mapping {
            Some(d) => {
                flags |= conn_flags::PEER_MAPPING;
                d.index
            }
            None => backend,
        };
        self.insert_conn(w, new_conn(w, key, reply, flags, Some(m.id), backend), now)
    }

    /// The endpoint-independent mapping (RFC 4787 REQ-1) of an internal endpoint: the one it
    /// has, or a new one with its port preserved when free. Returns it with a reference taken.
    #[allow(clippy::too_many_arguments)]
    fn mapping_for(
        &self,
        w: &mut Worker,
        addr: Ipv4Addr,
        port: u16,
        proto: Proto,
        candidates: &[usize],
        quota: u32,
        now: u32,
    ) -> Result<MappingRef, DropReason> {
        let ikey = mapping_internal_key(addr, port, proto);
        // A mapping can vanish between lookup and reference (reclaimed with no users), or
        // another worker can create it first: a few bounded retries settle either race.
        for _ in 0..3 {
            if let Some(m) = self.table.lookup(&ikey) {
                if m.state == ConnState::Mapping && self.table.acquire_ref(m.id) {
                    return Ok(MappingRef {
                        id: m.id,
                        addr: m.reply.dst,
                        port: m.reply.dport,
                    });
                }
                continue;
            }
            let ai = self
                .ports
                .pick_addr(candidates, addr)
                .ok_or(DropReason::NoRule)?;
            let public = self.ports.addr(ai).ok_or(DropReason::NoRule)?;
            if !self.hosts.take(addr, quota) {
                self.report_quota(w, addr);
                return Err(DropReason::PatQuota);
            }
            let Some(pport) = self.ports.allocate(&mut w.cursors, ai, proto, port) else {
                self.hosts.give_back(addr);
                return Err(DropReason::PatPortsExhausted);
            };
            let mapping = NewConn {
                orig: ikey,
                reply: mapping_public_key(public, pport, proto),
                state: ConnState::Mapping,
                flags: 0,
                owner: owner_byte(w.id),
                mapping: None,
                backend: NO_BACKEND,
            };
            match self.table.insert(&mapping, now) {
                Ok(id) => {
                    w.counters.mappings_created += 1;
                    self.emit(w, ConnEvent::Created(id));
                    if self.table.acquire_ref(id) {
                        return Ok(MappingRef {
                            id,
                            addr: public,
                            port: pport,
                        });
                    }
                }
                Err(e) => {
                    self.ports.release(ai, proto, pport);
                    self.hosts.give_back(addr);
                    match e {
                        InsertError::Exists(_) => {}
                        InsertError::Full => return Err(DropReason::TableFull),
                        InsertError::Clash => return Err(DropReason::TupleClash),
                    }
                }
            }
        }
        Err(DropReason::TupleClash)
    }

    fn insert_conn(&self, w: &mut Worker, conn: NewConn, now: u32) -> Created {
        match self.table.insert(&conn, now) {
            Ok(id) => {
                w.counters.conns_created += 1;
                self.emit(w, ConnEvent::Created(id));
                Created::Conn(Hit {
                    id,
                    dir: Dir::Orig,
                    orig: conn.orig,
                    reply: conn.reply,
                    state: conn.state,
                    flags: conn.flags,
                    owner: conn.owner,
                    mapping: conn.mapping,
                    backend: conn.backend,
                })
            }
            Err(e) => {
                self.release_refs(conn.mapping, conn.flags, conn.backend);
                match e {
                    // Another worker created the same connection a moment ago: use it.
                    InsertError::Exists(h) => Created::Conn(h),
                    InsertError::Full => Created::Done(Verdict::Drop(DropReason::TableFull)),
                    InsertError::Clash => Created::Done(Verdict::Drop(DropReason::TupleClash)),
                }
            }
        }
    }

    #[inline]
    fn emit(&self, w: &mut Worker, event: ConnEvent) {
        if let Some(q) = self.events.get(usize::from(w.id)) {
            if q.push(event).is_err() {
                w.counters.events_lost += 1;
            }
        }
    }

    /// Removes up to `budget` entries' worth of expired connections and mappings from this
    /// worker's share of the table, releasing their ports and references. Workers call it
    /// between batches, so expiry never stops the packet path.
    pub fn reclaim(&self, w: &mut Worker, now: u32, budget: u32) -> u32 {
        let Worker {
            id,
            counters,
            reclaim,
            ..
        } = w;
        let queue = self.events.get(usize::from(*id));
        let removed = self.table.reclaim(now, reclaim, budget, |_, rec| {
            self.release_resources(rec, now);
            if let Some(q) = queue {
                if q.push(ConnEvent::Deleted(*rec)).is_err() {
                    counters.events_lost += 1;
                }
            }
        });
        counters.reclaimed += u64::from(removed);
        for _ in 0..w.hold.expire(now) {
            w.counters.drop(DropReason::FragmentUnmatched);
        }
        removed
    }

    /// Removes the connections the policy in force no longer covers: those of a removed
    /// DNAT rule, pool, backend or VIP, and PAT connections whose rule or public address is
    /// gone (`reload --flush-removed`). Returns how many. Walks the whole table: for the
    /// control thread, never a worker.
    pub fn flush_removed(&self, now: u32) -> u32 {
        let snap = self.snapshot();
        let p = snap.policy();
        let mut stale = Vec::new();
        self.table.walk(0, now, |id, r| {
            if r.state != ConnState::Mapping && !covered(p, r) {
                stale.push(id);
            }
            true
        });
        stale
            .into_iter()
            .filter(|id| self.flush(*id, now).is_some())
            .count() as u32
    }

    /// Removes connection `id` now (an operator's flush), releasing its ports and mapping
    /// references as expiry would; the connection as it was, or `None` if already gone. A
    /// mapping is not flushed this way: it goes once its last connection has.
    pub fn flush(&self, id: ConnId, now: u32) -> Option<ConnRecord> {
        match self.table.export(id, now) {
            Some(r) if r.state != ConnState::Mapping => {}
            _ => return None,
        }
        let rec = self.table.remove(id, now)?;
        self.release_resources(&rec, now);
        // Told through the creating worker's queue (any thread may push to it).
        if let Some(q) = self.events.get(usize::from(rec.owner)) {
            if q.push(ConnEvent::Deleted(rec)).is_err() {
                self.flush_events_lost.fetch_add(1, Ordering::Relaxed);
            }
        }
        Some(rec)
    }

    /// Deletions by [`Engine::flush`] that found their event queue full.
    pub fn flush_events_lost(&self) -> u64 {
        self.flush_events_lost.load(Ordering::Relaxed)
    }

    fn release_resources(&self, rec: &ConnRecord, now: u32) {
        if let (Some(m), false) = (rec.mapping, rec.state == ConnState::Mapping) {
            self.table.note_use(m, now.saturating_sub(rec.idle_secs));
        }
        if rec.state == ConnState::Mapping {
            self.hosts.give_back(rec.orig.src);
            if let Some(ai) = self.ports.addr_index(rec.reply.dst) {
                self.ports.release(ai, rec.reply.proto, rec.reply.dport);
            }
        } else {
            self.release_refs(rec.mapping, rec.flags, rec.backend);
        }
    }

    /// Releases the mapping references a connection with these fields holds.
    fn release_refs(&self, mapping: Option<ConnId>, flags: u8, backend: u32) {
        if let Some(m) = mapping {
            self.table.release_ref(m);
        }
        if flags & conn_flags::PEER_MAPPING != 0 {
            // The reference held keeps that entry live, so its live id is the one referenced.
            if let Some(peer) = self.table.live_id(backend) {
                self.table.release_ref(peer);
            }
        }
    }

    fn report_quota(&self, w: &Worker, host: Ipv4Addr) {
        if let Some(r) = self.quota_reports.get(usize::from(w.id)) {
            let count = (r.0.load(Ordering::Relaxed) & u64::from(u32::MAX)).saturating_add(1);
            r.0.store(
                (u64::from(u32::from(host)) << 32) | count.min(u64::from(u32::MAX)),
                Ordering::Relaxed,
            );
        }
    }

    /// The last internal host worker `worker` refused for its PAT quota, and how many
    /// refusals it counted since the last call: for a log line per interval, not per packet.
    pub fn take_quota_report(&self, worker: u16) -> Option<(Ipv4Addr, u32)> {
        let v = self
            .quota_reports
            .get(usize::from(worker))?
            .0
            .swap(0, Ordering::Relaxed);
        (v != 0).then(|| (Ipv4Addr::from((v >> 32) as u32), v as u32))
    }

    /// The PAT mappings counted for internal host `host` (see `pat_quota`).
    pub fn mappings_of(&self, host: Ipv4Addr) -> u32 {
        self.hosts.held(host)
    }

    /// Takes the events worker `worker` queued, oldest first (the state-sync sender).
    pub fn drain_events(&self, worker: u16, mut f: impl FnMut(ConnEvent)) {
        if let Some(q) = self.events.get(usize::from(worker)) {
            while let Some(e) = q.pop() {
                f(e);
            }
        }
    }
}

/// Whether `policy` would still create connection `r` as it is.
fn covered(policy: &Policy, r: &ConnRecord) -> bool {
    let f = r.flags;
    let inbound = f & conn_flags::ORIG_IN_PRIVATE == 0;
    let hairpin = f & conn_flags::HAIRPIN != 0;
    if inbound || hairpin {
        if !policy.is_owned(r.orig.dst) {
            return false;
        }
        if r.mapping.is_some() && !hairpin {
            // Inbound through a PAT mapping: the address is still ours.
            return true;
        }
        if hairpin && f & conn_flags::PEER_MAPPING != 0 {
            return true;
        }
        return match policy.dnat(r.orig.dst, r.orig.proto, r.orig.dport) {
            None => false,
            Some(Target::Host(a, p)) => (a, p) == (r.reply.src, r.reply.sport),
            Some(Target::Pool(_)) => policy.has_backend(r.backend),
        };
    }
    policy.pat_rule_for(r.orig.src).is_some() && policy.is_owned(r.reply.dst)
}

/// Allocator indices of each PAT rule's addresses.
fn pat_addrs(config: &NatConfig, ports: &PortAllocator) -> Vec<Vec<usize>> {
    config
        .pat
        .iter()
        .map(|r| r.to.iter().filter_map(|a| ports.addr_index(*a)).collect())
        .collect()
}

fn owner_byte(id: u16) -> u8 {
    u8::try_from(id).unwrap_or(u8::MAX)
}

/// The key replies arrive with: from the far end's `from` to our `to` (address, port).
fn reply_key(proto: Proto, from: (Ipv4Addr, u16), to: (Ipv4Addr, u16)) -> FlowKey {
    FlowKey {
        src: from.0,
        dst: to.0,
        sport: from.1,
        dport: to.1,
        proto,
    }
}

/// A new connection of worker `w` for the packet `key`, in its protocol's first state.
fn new_conn(
    w: &Worker,
    key: &FlowKey,
    reply: FlowKey,
    flags: u8,
    mapping: Option<ConnId>,
    backend: u32,
) -> NewConn {
    NewConn {
        orig: *key,
        reply,
        state: if w.picking_up {
            ConnState::TcpEstablished
        } else {
            initial_state(key.proto)
        },
        flags,
        owner: owner_byte(w.id),
        mapping,
        backend,
    }
}

#[inline]
fn classify(frame: &[u8]) -> Result<Layout, DropReason> {
    match vipgate_wire::parse(frame) {
        Ok(Parsed::Ipv4(l)) => {
            if is_martian(l.src) || is_martian(l.dst) {
                Err(DropReason::Martian)
            } else {
                Ok(l)
            }
        }
        Ok(Parsed::Ipv6) => Err(DropReason::Ipv6),
        Ok(Parsed::Arp { .. } | Parsed::Other(_)) => Err(DropReason::NotIp),
        Err(e) => Err(e.into()),
    }
}

#[inline]
fn count(w: &mut Worker, v: Verdict) {
    match v {
        Verdict::Forward(_) => w.counters.forwarded += 1,
        Verdict::Reply => w.counters.echo_replies += 1,
        Verdict::Drop(r) => w.counters.drop(r),
        Verdict::Held => w.counters.frags_held += 1,
    }
}

/// Murmur3's 64-bit finalizer: a portable mix, identical on every box and build.
#[inline]
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The hash that picks a pool backend for a client by its address alone (persistence by
/// source address): portable, as [`backend_hash`].
#[inline]
fn source_hash(src: Ipv4Addr) -> u64 {
    fmix64(u64::from(u32::from(src)) ^ 0x7669_7067_6174_6532)
}

/// The hash that picks a pool backend. It must be the same on every box (ECMP may spread
/// one flow's packets over several pairs), so unlike the table's it has no random seed and
/// no CPU-dependent code path.
#[inline]
fn backend_hash(key: &FlowKey) -> u64 {
    let [a, b] = key.pack();
    fmix64(a ^ fmix64(b ^ 0x7669_7067_6174_6531))
}
