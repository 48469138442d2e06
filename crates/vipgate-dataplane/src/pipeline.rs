//! The per-packet pipeline of one worker: classify a received frame, answer ARP and pings for
//! the gateway, hand IPv4 to the NAT engine, then route it, count down its TTL and give it
//! the next hop's Ethernet address.
//!
//! Pure: frames and time in, frames out. The caller owns the buffers and the ports; frames
//! the pipeline originates (ARP requests, frames released after resolution) go through an
//! [`Emit`] the caller provides.

use std::fmt;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use vipgate_nat::counters::DropReason;
use vipgate_nat::engine::EngineError;
use vipgate_nat::policy::{EmptyPool, Ipv4Net, NatConfig, Policy};
use vipgate_nat::{Engine, Side, Verdict, Worker};
use vipgate_wire::arp::{ArpOp, ArpRepr, BROADCAST};
use vipgate_wire::rewrite::{decrement_ttl, echo_request_to_reply, set_macs};
use vipgate_wire::{Layout, Parsed, Transport};

use crate::counters::DataplaneCounters;
use crate::host::{HostPath, Listener};
use crate::icmp::{may_answer, port_unreachable_in_place, time_exceeded_in_place};
use crate::neighbor::{NeighborConfig, NeighborTable, Resolution};
use crate::reject::tcp_reset_in_place;
use crate::route::{NextHop, Route, Routes};

/// A data port as the pipeline sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Kernel name, for logs.
    pub name: String,
    /// Which network it faces.
    pub side: Side,
    /// Its Ethernet address.
    pub mac: [u8; 6],
    /// The gateway's own address on the segment.
    pub addr: Ipv4Addr,
    /// The segment's subnet.
    pub net: Ipv4Net,
    /// Addresses that move with the active role (a pair's shared default gateway):
    /// answered, announced and pinged only while the gate is open.
    pub virtual_addrs: Vec<Ipv4Addr>,
}

/// Everything the data plane needs besides the NAT policy.
#[derive(Clone, Debug)]
pub struct DataplaneConfig {
    /// Data ports, indexed as the caller's ports are.
    pub interfaces: Vec<Interface>,
    /// Static routes (default routes included); each interface's subnet is added as a
    /// connected route.
    pub routes: Vec<Route>,
    /// Neighbor resolution.
    pub neighbors: NeighborConfig,
    /// ICMP errors per second per worker.
    pub icmp_rate: u32,
    /// Largest frame the ports carry (bounds the frames held for resolution).
    pub frame_size: usize,
    /// The VRRP virtual MAC (00:00:5e:00:01:VRID) the active box uses for the addresses
    /// that move (VIPs, PAT and virtual addresses) and as the source of what it forwards,
    /// so neighbors' ARP caches never change on a takeover; `None` uses each interface's
    /// own MAC.
    pub virtual_mac: Option<[u8; 6]>,
}

/// The data plane could not be built.
#[derive(Debug)]
pub enum DataplaneError {
    /// The NAT configuration.
    Engine(EngineError),
    /// A route names an interface index that does not exist.
    RouteInterface {
        /// The index.
        iface: usize,
    },
}

impl fmt::Display for DataplaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DataplaneError::Engine(e) => e.fmt(f),
            DataplaneError::RouteInterface { iface } => {
                write!(f, "a route names interface {iface}, which does not exist")
            }
        }
    }
}

impl std::error::Error for DataplaneError {}

/// What to do with the frame just processed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send the buffer's first `len` bytes on interface `iface`.
    Send {
        /// Egress interface.
        iface: usize,
        /// Frame length.
        len: usize,
    },
    /// Give the buffer back: the frame was dropped (and counted) or consumed.
    Release,
}

/// Where the pipeline sends frames it originates.
pub trait Emit {
    /// Takes a free buffer, lets `build` write a frame into it (returning its length, or
    /// `None` to give up) and queues it on interface `iface`. False if no buffer was free.
    fn emit(&mut self, iface: usize, build: &mut dyn FnMut(&mut [u8]) -> Option<usize>) -> bool;
}

/// State shared by every worker: the engine, the neighbor table, interfaces and routes, and
/// the active/standby gate.
#[derive(Debug)]
pub struct Dataplane {
    engine: Engine,
    neighbors: NeighborTable,
    interfaces: Vec<Interface>,
    routes: Routes,
    icmp_rate: AtomicU32,
    frame_size: usize,
    reclaim_budget: u32,
    /// The gate: a standby box answers no ARP for its VIPs and PAT addresses and translates
    /// nothing, but keeps its connection table. Read per frame, written on a role change.
    active: AtomicBool,
    /// Bumped to ask worker 0 for a gratuitous ARP announcement at its next tick.
    announce: AtomicU64,
    host: HostPath,
    virtual_mac: Option<[u8; 6]>,
}

/// Milliseconds between two reclaim steps of a worker.
const RECLAIM_EVERY_MS: u64 = 10;
/// Frames held per worker for unresolved next hops, at most.
const HOLD_SLOTS_MAX: usize = 256;
/// Buffers of the host path (each way's queue as long).
const HOST_FRAMES: usize = 1024;
/// Frames of the control thread a worker sends per tick at most.
const HOST_TX_PER_TICK: usize = 32;
/// TTL of the datagrams the gateway originates.
const OWN_TTL: u8 = 64;

impl Dataplane {
    /// Builds the engine and the shared tables.
    ///
    /// # Errors
    /// The engine's own configuration errors, or a route to a missing interface.
    pub fn new(config: DataplaneConfig, nat: NatConfig) -> Result<Dataplane, DataplaneError> {
        let engine = Engine::new(nat).map_err(DataplaneError::Engine)?;
        Dataplane::with_engine(config, engine)
    }

    /// The shared tables around an engine the caller built.
    ///
    /// # Errors
    /// A route to a missing interface.
    pub fn with_engine(
        config: DataplaneConfig,
        engine: Engine,
    ) -> Result<Dataplane, DataplaneError> {
        let nat = engine.config();
        let workers = u32::from(nat.workers.max(1));
        // Cover each worker's share of the table in about ten seconds of 10 ms steps: the
        // shortest timeout (TCP close, 10 s) is then late by at most that much.
        let reclaim_budget = (nat.capacity / workers / 1_000).max(64);
        if let Some(r) = config
            .routes
            .iter()
            .find(|r| r.iface >= config.interfaces.len())
        {
            return Err(DataplaneError::RouteInterface { iface: r.iface });
        }
        let mut routes: Vec<Route> = config
            .interfaces
            .iter()
            .enumerate()
            .map(|(iface, i)| Route {
                net: i.net,
                iface,
                via: None,
            })
            .collect();
        routes.extend(config.routes.iter().copied());
        let sides: Vec<Side> = config.interfaces.iter().map(|i| i.side).collect();
        let routes = Routes::new(&routes, |i| sides.get(i).copied());
        Ok(Dataplane {
            engine,
            neighbors: NeighborTable::new(config.neighbors),
            interfaces: config.interfaces,
            routes,
            icmp_rate: AtomicU32::new(config.icmp_rate),
            frame_size: config.frame_size,
            reclaim_budget,
            active: AtomicBool::new(true),
            announce: AtomicU64::new(0),
            host: HostPath::new(HOST_FRAMES, config.frame_size),
            virtual_mac: config.virtual_mac,
        })
    }

    /// Opens (`true`) or closes the gate. Opening asks for a gratuitous ARP announcement of
    /// every VIP and PAT address, sent by worker 0 at its next tick, so that neighbors turn
    /// to this box at once.
    pub fn set_active(&self, active: bool) {
        let was = self.active.swap(active, Ordering::AcqRel);
        if active && !was {
            self.request_announce();
        }
    }

    /// Whether the gate is open.
    #[inline]
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// The host path to and from the control thread.
    pub fn host(&self) -> &HostPath {
        &self.host
    }

    /// Asks worker 0 to announce every address with gratuitous ARP at its next tick.
    pub fn request_announce(&self) {
        self.announce.fetch_add(1, Ordering::AcqRel);
    }

    /// The NAT engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The neighbor table.
    pub fn neighbors(&self) -> &NeighborTable {
        &self.neighbors
    }

    /// Where a datagram to `dst` leaves among the interfaces of `side`: the interface and the
    /// neighbor to send it to (for the control thread's own traffic).
    pub fn next_hop(&self, dst: Ipv4Addr, side: Side) -> Option<NextHop> {
        self.routes.lookup(dst, side)
    }

    /// The interfaces.
    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// The addresses interface `iface` answers ARP for under `policy`: its own, and while
    /// the gate is open its virtual addresses and, on the public side, the VIPs and PAT
    /// addresses in its subnet.
    pub fn arp_addrs(&self, iface: usize, policy: &Policy) -> Vec<Ipv4Addr> {
        let Some(ifc) = self.interfaces.get(iface) else {
            return Vec::new();
        };
        let mut addrs = vec![ifc.addr];
        if self.is_active() {
            addrs.extend(&ifc.virtual_addrs);
        }
        if ifc.side == Side::Public && self.is_active() {
            addrs.extend(
                policy
                    .owned_addrs()
                    .iter()
                    .filter(|a| ifc.net.contains(**a) && **a != ifc.addr),
            );
        }
        addrs
    }

    /// The MAC the active box answers and forwards with on `ifc`: the virtual MAC when
    /// configured, else the interface's own. A standby never sources the virtual MAC.
    #[inline]
    fn active_mac(&self, ifc: &Interface) -> [u8; 6] {
        match self.virtual_mac {
            Some(v) if self.is_active() => v,
            _ => ifc.mac,
        }
    }

    /// The MAC to answer ARP for `addr` on `ifc` with: the interface's own address keeps
    /// the interface's MAC, the addresses that move take [`Dataplane::active_mac`].
    #[inline]
    fn arp_mac(&self, ifc: &Interface, addr: Ipv4Addr) -> [u8; 6] {
        if addr == ifc.addr {
            ifc.mac
        } else {
            self.active_mac(ifc)
        }
    }

    /// Whether interface `ifc` answers ARP for `addr` under `policy` (see
    /// [`Dataplane::arp_addrs`]).
    #[inline]
    fn answers_arp(&self, ifc: &Interface, addr: Ipv4Addr, policy: Option<&Policy>) -> bool {
        addr == ifc.addr
            || (self.is_active() && ifc.virtual_addrs.contains(&addr))
            || (ifc.side == Side::Public
                && ifc.net.contains(addr)
                && self.is_active()
                && policy.is_some_and(|p| p.is_owned(addr)))
    }

    fn is_interface_addr(&self, a: Ipv4Addr) -> bool {
        self.interfaces
            .iter()
            .any(|i| i.addr == a || i.virtual_addrs.contains(&a))
    }

    /// A worker's pipeline.
    pub fn pipeline(&self, worker: u16) -> Pipeline<'_> {
        let slots = (self.neighbors.config().hold * 16).clamp(1, HOLD_SLOTS_MAX);
        Pipeline {
            dp: self,
            worker: self.engine.worker(worker),
            counters: DataplaneCounters::default(),
            hold: HoldQueue {
                slots: (0..slots)
                    .map(|_| Held {
                        hop: None,
                        since_ms: 0,
                        len: 0,
                        buf: vec![0; self.frame_size].into_boxed_slice(),
                    })
                    .collect(),
                count: 0,
            },
            icmp_tokens: self.icmp_burst(),
            icmp_refilled_ms: 0,
            ident: worker.wrapping_mul(0x1000),
            next_reclaim_ms: 0,
            announced: self.announce.load(Ordering::Acquire),
        }
    }

    fn icmp_burst(&self) -> u32 {
        self.icmp_rate().min(50)
    }

    /// ICMP errors each worker may send per second.
    pub fn icmp_rate(&self) -> u32 {
        self.icmp_rate.load(Ordering::Relaxed)
    }

    /// Changes the ICMP error rate (a reload).
    pub fn set_icmp_rate(&self, rate: u32) {
        self.icmp_rate.store(rate, Ordering::Relaxed);
    }
}

/// A frame waiting for its next hop's Ethernet address.
#[derive(Debug)]
struct Held {
    /// `None` when the slot is free.
    hop: Option<NextHop>,
    since_ms: u64,
    len: usize,
    buf: Box<[u8]>,
}

/// Where a datagram's Ethernet header should point.
enum L2 {
    Ready(usize, [u8; 6]),
    Pending(NextHop),
    NoRoute,
}

/// Frames waiting for their next hops, in preallocated slots.
#[derive(Debug)]
struct HoldQueue {
    slots: Vec<Held>,
    count: usize,
}

/// The routing half of the pipeline, apart from the engine's worker state so that frames
/// the engine hands back (released fragments) can be routed while it is borrowed.
struct Egress<'a, 'd> {
    dp: &'d Dataplane,
    counters: &'a mut DataplaneCounters,
    hold: &'a mut HoldQueue,
}

impl Egress<'_, '_> {
    /// Routes a translated frame in place.
    fn forward(
        &mut self,
        frame: &mut [u8],
        l: &Layout,
        side: Side,
        now_ms: u64,
        out: &mut impl Emit,
    ) -> Action {
        if decrement_ttl(frame, l).is_err() {
            return Action::Release;
        }
        let Some(dst) = read_addr(frame, l.l3 + 16) else {
            return Action::Release;
        };
        match self.l2(dst, side, now_ms, out) {
            L2::Ready(iface, mac) => {
                let Some(egress) = self.dp.interfaces.get(iface) else {
                    return Action::Release;
                };
                if set_macs(frame, mac, self.dp.active_mac(egress)).is_err() {
                    return Action::Release;
                }
                Action::Send {
                    iface,
                    len: frame.len(),
                }
            }
            L2::Pending(hop) => {
                self.hold(hop, frame, now_ms);
                Action::Release
            }
            L2::NoRoute => {
                self.counters.drop_no_route += 1;
                Action::Release
            }
        }
    }

    /// The egress and Ethernet destination for `dst`, asking ARP when the next hop is
    /// unknown or its answer has gone stale.
    fn l2(&mut self, dst: Ipv4Addr, side: Side, now_ms: u64, out: &mut impl Emit) -> L2 {
        let Some(hop) = self.dp.routes.lookup(dst, side) else {
            return L2::NoRoute;
        };
        match self.dp.neighbors.resolve(hop.addr, now_ms) {
            Resolution::Reachable(mac) => L2::Ready(hop.iface, mac),
            Resolution::Stale(mac) => {
                self.request(hop, now_ms, out);
                L2::Ready(hop.iface, mac)
            }
            Resolution::Unresolved => {
                self.request(hop, now_ms, out);
                L2::Pending(hop)
            }
        }
    }

    /// Sends an ARP request for `hop` unless another request for it went out recently.
    fn request(&mut self, hop: NextHop, now_ms: u64, out: &mut impl Emit) {
        let Some(egress) = self.dp.interfaces.get(hop.iface) else {
            return;
        };
        match self.dp.neighbors.should_request(hop.addr, now_ms) {
            Some(true) => {
                let req = ArpRepr::request(egress.mac, egress.addr, hop.addr);
                let sent = out.emit(hop.iface, &mut |b| req.emit_frame(b, None).ok());
                if sent {
                    self.counters.arp_requests += 1;
                }
                self.counters.count_emit(sent);
            }
            Some(false) => {}
            None => self.counters.drop_neighbor_table_full += 1,
        }
    }

    /// Copies a routed frame aside until its next hop answers.
    fn hold(&mut self, hop: NextHop, frame: &[u8], now_ms: u64) {
        let per_addr = self.dp.neighbors.config().hold;
        let waiting = self
            .hold
            .slots
            .iter()
            .filter(|h| h.hop.is_some_and(|x| x.addr == hop.addr))
            .count();
        let slot = self.hold.slots.iter_mut().find(|h| h.hop.is_none());
        if let Some(h) = slot.filter(|_| waiting < per_addr) {
            if let Some(dst) = h.buf.get_mut(..frame.len()) {
                dst.copy_from_slice(frame);
                h.hop = Some(hop);
                h.since_ms = now_ms;
                h.len = frame.len();
                self.hold.count += 1;
                return;
            }
        }
        self.counters.drop_hold_full += 1;
    }
}

/// One worker's pipeline. Written only by its thread.
#[derive(Debug)]
pub struct Pipeline<'d> {
    dp: &'d Dataplane,
    worker: Worker,
    /// The data plane's counters for this worker.
    pub counters: DataplaneCounters,
    hold: HoldQueue,
    icmp_tokens: u32,
    icmp_refilled_ms: u64,
    ident: u16,
    next_reclaim_ms: u64,
    /// The announcement requests worker 0 has served.
    announced: u64,
}

fn read_addr(frame: &[u8], at: usize) -> Option<Ipv4Addr> {
    let b: [u8; 4] = frame.get(at..at + 4)?.try_into().ok()?;
    Some(Ipv4Addr::from(b))
}

impl<'d> Pipeline<'d> {
    /// The engine's worker state (its counters among it).
    pub fn worker(&self) -> &Worker {
        &self.worker
    }

    /// Processes the frame in `buf[..len]` received on interface `iface` at `now_ms`
    /// (milliseconds of a monotonic clock shared by all workers). `buf` is the frame's whole
    /// buffer: replies built in place may be longer than the frame.
    pub fn frame(
        &mut self,
        iface: usize,
        buf: &mut [u8],
        len: usize,
        now_ms: u64,
        out: &mut impl Emit,
    ) -> Action {
        self.counters.rx_frames += 1;
        let action = self.classify(iface, buf, len, now_ms, out);
        if let Action::Send { .. } = action {
            self.counters.tx_frames += 1;
        }
        action
    }

    fn classify(
        &mut self,
        iface: usize,
        buf: &mut [u8],
        len: usize,
        now_ms: u64,
        out: &mut impl Emit,
    ) -> Action {
        let dp = self.dp;
        let (Some(ifc), Some(frame)) = (dp.interfaces.get(iface), buf.get(..len)) else {
            self.worker.counters.drop(DropReason::Truncated);
            return Action::Release;
        };
        let Some(dst_mac) = frame.get(..6) else {
            self.worker.counters.drop(DropReason::Truncated);
            return Action::Release;
        };
        if dst_mac != ifc.mac
            && dst_mac != BROADCAST
            && Some(dst_mac) != dp.virtual_mac.as_ref().map(|m| &m[..])
        {
            // Multicast to a group the control thread subscribed (VRRP adverts) goes up.
            let multicast = dst_mac.first().is_some_and(|b| b & 1 != 0);
            // The group is read in place rather than by a second full parse (which would
            // cost every frame: the parser stops being inlined); the control thread checks
            // what it receives.
            if multicast && dp.host.any_group() {
                let group = match (frame.get(12..14), frame.get(30..34)) {
                    (Some([0x08, 0x00]), Some(&[a, b, c, d])) => Some(Ipv4Addr::new(a, b, c, d)),
                    _ => None,
                };
                if let Some(to) = group.and_then(|g| dp.host.wants_group(g)) {
                    return self.up(to, iface, frame);
                }
            }
            self.counters.drop_other_mac += 1;
            return Action::Release;
        }
        match vipgate_wire::parse(frame) {
            Ok(Parsed::Arp { vlan: None, offset }) => self.arp(iface, buf, len, offset, now_ms),
            Ok(Parsed::Ipv4(l)) if l.vlan.is_none() => self.ipv4(iface, buf, len, &l, now_ms, out),
            Ok(Parsed::Arp { .. } | Parsed::Ipv4(_)) => {
                self.counters.drop_vlan += 1;
                Action::Release
            }
            Ok(Parsed::Ipv6) => {
                self.worker.counters.drop(DropReason::Ipv6);
                Action::Release
            }
            Ok(Parsed::Other(_)) => {
                self.worker.counters.drop(DropReason::NotIp);
                Action::Release
            }
            Err(e) => {
                self.worker.counters.drop(DropReason::from(e));
                Action::Release
            }
        }
    }

    /// ARP: answer for our addresses (proxy ARP for VIPs on the public side), learn the
    /// sender when the message concerns us (RFC 826's merge rule).
    fn arp(
        &mut self,
        iface: usize,
        buf: &mut [u8],
        len: usize,
        offset: usize,
        now_ms: u64,
    ) -> Action {
        let dp = self.dp;
        let Some(ifc) = dp.interfaces.get(iface) else {
            return Action::Release;
        };
        let Ok(arp) = buf
            .get(..len)
            .map_or(Err(()), |f| ArpRepr::parse(f, offset).map_err(|_| ()))
        else {
            self.counters.drop_arp_malformed += 1;
            return Action::Release;
        };
        let for_us = dp.answers_arp(
            ifc,
            arp.target_ip,
            self.worker.snapshot().map(|s| s.policy()),
        );
        let sender_ok = !arp.sender_ip.is_unspecified()
            && arp.sender_ip != ifc.addr
            && ifc.net.contains(arp.sender_ip)
            && arp.sender_mac[0] & 1 == 0;
        if sender_ok {
            if dp
                .neighbors
                .learn(arp.sender_ip, arp.sender_mac, now_ms, for_us)
            {
                if for_us {
                    self.counters.arp_learned += 1;
                }
            } else {
                self.counters.drop_neighbor_table_full += 1;
            }
        }
        match arp.op {
            ArpOp::Request if for_us => match arp
                .reply_to(dp.arp_mac(ifc, arp.target_ip))
                .emit_frame(buf, None)
            {
                Ok(n) => {
                    self.counters.arp_replies += 1;
                    Action::Send { iface, len: n }
                }
                Err(_) => {
                    self.counters.drop_arp_malformed += 1;
                    Action::Release
                }
            },
            ArpOp::Reply if for_us => Action::Release,
            _ => {
                self.counters.drop_arp_not_ours += 1;
                Action::Release
            }
        }
    }

    fn ipv4(
        &mut self,
        iface: usize,
        buf: &mut [u8],
        len: usize,
        l: &Layout,
        now_ms: u64,
        out: &mut impl Emit,
    ) -> Action {
        let dp = self.dp;
        let Some(side) = dp.interfaces.get(iface).map(|i| i.side) else {
            return Action::Release;
        };
        let echo_request = matches!(l.transport, Transport::IcmpEcho { request: true, .. });
        if dp.is_interface_addr(l.dst) {
            // The control thread's host stack takes what it subscribed to; the data plane
            // answers pings in place, as any router does, and drops the rest.
            let answered_here = echo_request && !l.is_fragment();
            if let Some(to) = dp.host.wants_protocol(l.proto).filter(|_| !answered_here) {
                return match buf.get(..len) {
                    Some(frame) => self.up(to, iface, frame),
                    None => Action::Release,
                };
            }
            if answered_here {
                if let Some(frame) = buf.get_mut(..len) {
                    if echo_request_to_reply(frame, l, OWN_TTL).is_ok() {
                        self.counters.gateway_echo_replies += 1;
                        return Action::Send { iface, len };
                    }
                }
            }
            self.counters.drop_to_gateway += 1;
            return Action::Release;
        }
        if !dp.is_active() {
            self.counters.drop_standby += 1;
            return Action::Release;
        }
        // A router decrements TTL on forwarding; pings the engine answers for its own
        // addresses are not forwarded.
        let owned = |a| {
            self.worker
                .snapshot()
                .is_some_and(|s| s.policy().is_owned(a))
        };
        if l.ttl <= 1 && !(echo_request && owned(l.dst)) {
            self.counters.drop_ttl_exceeded += 1;
            return self.time_exceeded(iface, buf, l, now_ms);
        }
        let Some(frame) = buf.get_mut(..len) else {
            return Action::Release;
        };
        let now_s = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        match dp
            .engine
            .process_parsed(&mut self.worker, frame, l, side, now_s)
        {
            Verdict::Forward(to) => self.egress().forward(frame, l, to, now_ms, out),
            Verdict::Reply => Action::Send { iface, len },
            Verdict::Drop(DropReason::NoBackend) => self.refuse_empty(iface, buf, l, now_ms),
            Verdict::Drop(DropReason::TcpNoConn) if side == Side::Public => {
                self.reset_unknown(iface, buf, l, now_ms)
            }
            Verdict::Drop(_) | Verdict::Held => Action::Release,
        }
    }

    /// Hands a frame up the host path.
    fn up(&mut self, to: Listener, iface: usize, frame: &[u8]) -> Action {
        if self.dp.host.offer(to, iface, frame) {
            self.counters.host_rx += 1;
        } else {
            self.counters.drop_host_full += 1;
        }
        Action::Release
    }

    fn time_exceeded(&mut self, iface: usize, buf: &mut [u8], l: &Layout, now_ms: u64) -> Action {
        let Some(ifc) = self.dp.interfaces.get(iface) else {
            return Action::Release;
        };
        if !may_answer(l) {
            return Action::Release;
        }
        if !self.icmp_token(now_ms) {
            self.counters.icmp_rate_limited += 1;
            return Action::Release;
        }
        self.ident = self.ident.wrapping_add(1);
        match time_exceeded_in_place(buf, l, ifc.mac, ifc.addr, self.ident) {
            Some(len) => {
                self.counters.icmp_time_exceeded += 1;
                Action::Send { iface, len }
            }
            None => Action::Release,
        }
    }

    /// A new connection to a pool with no backend in service: refused at once (a RST for
    /// TCP, an ICMP port unreachable for UDP, from the VIP), unless the pool says drop. The
    /// refusals share the ICMP token bucket, so forged SYNs can't make the gateway a
    /// reflector.
    fn refuse_empty(&mut self, iface: usize, buf: &mut [u8], l: &Layout, now_ms: u64) -> Action {
        let dp = self.dp;
        let Some(ifc) = dp.interfaces.get(iface) else {
            return Action::Release;
        };
        let (proto, port) = match l.transport {
            Transport::Tcp { dport, .. } => (vipgate_nat::Proto::Tcp, dport),
            Transport::Udp { dport, .. } => (vipgate_nat::Proto::Udp, dport),
            _ => return Action::Release,
        };
        let rejects = self
            .worker
            .snapshot()
            .is_some_and(|s| s.policy().when_empty(l.dst, proto, port) == Some(EmptyPool::Reject));
        if !rejects || !may_answer(l) {
            return Action::Release;
        }
        if !self.icmp_token(now_ms) {
            self.counters.icmp_rate_limited += 1;
            return Action::Release;
        }
        self.ident = self.ident.wrapping_add(1);
        let mac = dp.active_mac(ifc);
        let built = match proto {
            vipgate_nat::Proto::Tcp => tcp_reset_in_place(buf, l, mac, self.ident),
            _ => port_unreachable_in_place(buf, l, mac, l.dst, self.ident),
        };
        match (built, proto) {
            (Some(len), vipgate_nat::Proto::Tcp) => {
                self.counters.empty_pool_resets += 1;
                Action::Send { iface, len }
            }
            (Some(len), _) => {
                self.counters.empty_pool_unreachables += 1;
                Action::Send { iface, len }
            }
            (None, _) => Action::Release,
        }
    }

    /// A TCP segment to a VIP service for a connection the table does not know (its backend
    /// was found down and its connections reset, or the table lost it): a RST tells the
    /// client at once, as the host itself would, instead of leaving it to retransmit into
    /// nothing. Within the ICMP budget, like every answer to a packet from outside.
    fn reset_unknown(&mut self, iface: usize, buf: &mut [u8], l: &Layout, now_ms: u64) -> Action {
        let dp = self.dp;
        let Transport::Tcp { dport, .. } = l.transport else {
            return Action::Release;
        };
        let Some(ifc) = dp.interfaces.get(iface) else {
            return Action::Release;
        };
        let service = self.worker.snapshot().is_some_and(|s| {
            s.policy()
                .dnat(l.dst, vipgate_nat::Proto::Tcp, dport)
                .is_some()
        });
        if !service || !may_answer(l) {
            return Action::Release;
        }
        if !self.icmp_token(now_ms) {
            self.counters.icmp_rate_limited += 1;
            return Action::Release;
        }
        self.ident = self.ident.wrapping_add(1);
        match tcp_reset_in_place(buf, l, dp.active_mac(ifc), self.ident) {
            Some(len) => {
                self.counters.tcp_no_conn_resets += 1;
                Action::Send { iface, len }
            }
            None => Action::Release,
        }
    }

    /// A token bucket: `icmp_rate` per second, bursts of up to 50.
    fn icmp_token(&mut self, now_ms: u64) -> bool {
        let rate = u64::from(self.dp.icmp_rate());
        if rate == 0 {
            return false;
        }
        let earned = now_ms.saturating_sub(self.icmp_refilled_ms) * rate / 1000;
        if earned > 0 {
            let burst = u64::from(self.dp.icmp_burst());
            self.icmp_tokens =
                u32::try_from((u64::from(self.icmp_tokens) + earned).min(burst)).unwrap_or(0);
            // Keep the fraction of a token not yet earned.
            self.icmp_refilled_ms += earned * 1000 / rate;
        }
        if self.icmp_tokens == 0 {
            return false;
        }
        self.icmp_tokens -= 1;
        true
    }

    fn egress(&mut self) -> Egress<'_, 'd> {
        Egress {
            dp: self.dp,
            counters: &mut self.counters,
            hold: &mut self.hold,
        }
    }

    /// Work between batches: frames whose next hop has answered go out, those whose next
    /// hop never did are dropped, ARP requests are retried, fragments the engine held are
    /// released, and expired connections are reclaimed a slice at a time.
    pub fn tick(&mut self, now_ms: u64, out: &mut impl Emit) {
        self.dp.engine.refresh(&mut self.worker);
        if self.worker.id() == 0 {
            let asked = self.dp.announce.load(Ordering::Acquire);
            if asked != self.announced {
                self.announced = asked;
                self.announce(out);
            }
        }
        for _ in 0..HOST_TX_PER_TICK {
            let Some(f) = self.dp.host.next_down() else {
                break;
            };
            let data = f.data();
            let sent = out.emit(f.iface, &mut |b| {
                b.get_mut(..data.len())?.copy_from_slice(data);
                Some(data.len())
            });
            if sent {
                self.counters.host_tx += 1;
            }
            self.counters.count_emit(sent);
            self.dp.host.recycle(f);
        }
        if self.hold.count > 0 {
            self.release_held(now_ms, out);
        }
        self.release_fragments(now_ms, out);
        if now_ms >= self.next_reclaim_ms {
            self.next_reclaim_ms = now_ms + RECLAIM_EVERY_MS;
            let now_s = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
            self.dp
                .engine
                .reclaim(&mut self.worker, now_s, self.dp.reclaim_budget);
        }
    }

    fn release_held(&mut self, now_ms: u64, out: &mut impl Emit) {
        let dp = self.dp;
        let give_up_ms = dp.neighbors.config().retry_ms * u64::from(dp.neighbors.config().retries);
        let mut eg = self.egress();
        for i in 0..eg.hold.slots.len() {
            let Some(h) = eg.hold.slots.get(i) else { break };
            let Some(hop) = h.hop else { continue };
            let mac = match dp.neighbors.resolve(hop.addr, now_ms) {
                Resolution::Reachable(mac) | Resolution::Stale(mac) => Some(mac),
                Resolution::Unresolved => None,
            };
            let expired = now_ms.saturating_sub(h.since_ms) >= give_up_ms;
            match (mac, dp.interfaces.get(hop.iface)) {
                (Some(mac), Some(egress)) => {
                    let (frame, egress_mac) =
                        (h.buf.get(..h.len).unwrap_or(&[]), dp.active_mac(egress));
                    let sent = out.emit(hop.iface, &mut |b| {
                        let dst = b.get_mut(..frame.len())?;
                        dst.copy_from_slice(frame);
                        set_macs(dst, mac, egress_mac).ok()?;
                        Some(frame.len())
                    });
                    eg.counters.count_emit(sent);
                }
                _ if expired => eg.counters.drop_neighbor_unresolved += 1,
                _ => {
                    eg.request(hop, now_ms, out);
                    continue;
                }
            }
            if let Some(h) = eg.hold.slots.get_mut(i) {
                h.hop = None;
                eg.hold.count -= 1;
            }
        }
    }

    fn release_fragments(&mut self, now_ms: u64, out: &mut impl Emit) {
        let Pipeline {
            dp,
            worker,
            counters,
            hold,
            ..
        } = self;
        let mut eg = Egress { dp, counters, hold };
        dp.engine.take_released(worker, |frame, side| {
            let Ok(Parsed::Ipv4(l)) = vipgate_wire::parse(frame) else {
                return;
            };
            if let Action::Send { iface, len } = eg.forward(frame, &l, side, now_ms, out) {
                let sent = out.emit(iface, &mut |b| {
                    let dst = b.get_mut(..len)?;
                    dst.copy_from_slice(frame.get(..len)?);
                    Some(len)
                });
                eg.counters.count_emit(sent);
            }
        });
    }

    /// Announces the gateway's addresses with gratuitous ARP on every interface (at start,
    /// and later on taking over), so neighbors point them at us at once.
    pub fn announce(&mut self, out: &mut impl Emit) {
        let dp = self.dp;
        let Some(snap) = self.worker.snapshot() else {
            return;
        };
        for (iface, ifc) in dp.interfaces.iter().enumerate() {
            for addr in dp.arp_addrs(iface, snap.policy()) {
                let garp = ArpRepr::gratuitous(dp.arp_mac(ifc, addr), addr);
                let sent = out.emit(iface, &mut |b| garp.emit_frame(b, None).ok());
                if sent {
                    self.counters.arp_announcements += 1;
                }
                self.counters.count_emit(sent);
            }
        }
    }

    /// Every counter of this worker, the engine's and the data plane's, by name.
    pub fn named_counters(&self) -> Vec<(&'static str, u64)> {
        let mut v = Vec::new();
        self.for_each_counter(|n, c| v.push((n, c)));
        v
    }

    /// The names [`Pipeline::for_each_counter`] gives, in its order.
    pub fn counter_names() -> Vec<&'static str> {
        let mut v = Vec::new();
        vipgate_nat::counters::Counters::default().for_each(|n, _| v.push(n));
        v.extend(DataplaneCounters::default().named().iter().map(|(n, _)| *n));
        v
    }

    /// Calls `f` with every counter of this worker, always in the same order, allocating
    /// nothing.
    pub fn for_each_counter(&self, mut f: impl FnMut(&'static str, u64)) {
        self.worker.counters.for_each(&mut f);
        for (n, c) in self.counters.named() {
            f(n, c);
        }
    }
}
