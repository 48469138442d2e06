//! Health checks of pool backends (`nat.pools[].check`), from the appliance itself.
//!
//! The data ports belong to AF_XDP, so the kernel cannot open a connection on them. This
//! thread runs smoltcp (medium IP) over the host path instead: what smoltcp sends is routed
//! and resolved with the data plane's own tables and leaves through the workers; TCP and
//! ICMP addressed to the gateway's private addresses come back up to it. Each backend is
//! probed every interval, the probes of a pool spread over the interval; a backend leaves
//! the pool after `fall` failures in a row and rejoins after `rise` successes, and every
//! change is logged with its reason and published as a new policy (the backend at weight 0
//! while down: Maglev moves only its share, and its connections go on).

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use smoltcp::iface::{Config as IfaceConfig, Interface as Stack, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{icmp, tcp};
use smoltcp::wire::{HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr};
use vipgate_config::{CheckKind, HealthCheck};
use vipgate_dataplane::{Dataplane, Listener, Resolution};
use vipgate_nat::policy::backend_id;
use vipgate_nat::Side;
use vipgate_wire::arp::ArpRepr;
use vipgate_wire::frame::ETH_LEN;

use crate::gateway::Gateway;

/// The longest the thread sleeps between two rounds.
const TICK: Duration = Duration::from_millis(2);
/// How often the view of `vipgate backends` is rebuilt at most (and at every change).
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// How often a next hop that does not answer ARP is asked again.
const ARP_EVERY: Duration = Duration::from_secs(1);
/// Bytes of an HTTP answer read at most (the status line and a body to search).
const HTTP_MAX: usize = 16 * 1024;
/// First local port of the probes; each probe takes the next, wrapping in the ephemeral range.
const PORT_LO: u16 = 49152;

/// A backend's health as the checks see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    /// No verdict yet: in service (a pool starts full).
    Unknown,
    /// In service.
    Up,
    /// Out of service: `fall` failures in a row.
    Down,
}

impl Health {
    fn name(self) -> &'static str {
        match self {
            Health::Unknown => "unknown",
            Health::Up => "up",
            Health::Down => "down",
        }
    }
}

/// One probe in flight.
enum InFlight {
    Tcp {
        socket: SocketHandle,
        /// HTTP: the request was sent; what came back so far.
        http: Option<Vec<u8>>,
    },
    Icmp {
        socket: SocketHandle,
        seq: u16,
    },
}

/// One backend under check.
struct Target {
    pool: String,
    addr: Ipv4Addr,
    port: u16,
    id: u32,
    check: HealthCheck,
    health: Health,
    successes: u32,
    failures: u32,
    next_at: Instant,
    started: Instant,
    in_flight: Option<InFlight>,
    last: String,
    last_ms: Option<u64>,
}

/// What the thread shares with the control thread: each backend's state, for `vipgate
/// backends` and the metrics.
#[derive(Default)]
pub(crate) struct HealthShared {
    view: std::sync::Mutex<BTreeMap<u32, Value>>,
    stop: AtomicBool,
}

impl HealthShared {
    /// The check state of backend `id`, if it is checked.
    pub(crate) fn of(&self, id: u32) -> Option<Value> {
        self.view
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    /// Asks the thread to return.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The host path as a smoltcp device: IP packets in and out.
struct HostDevice<'a> {
    dp: &'a Dataplane,
    clock: &'a (dyn Fn() -> u64 + Sync),
    arp_asked: BTreeMap<Ipv4Addr, Instant>,
}

struct Rx(Vec<u8>);

impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

struct Tx<'d, 'a> {
    dev: &'d mut HostDevice<'a>,
}

impl phy::TxToken for Tx<'_, '_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut packet = vec![0u8; len];
        let r = f(&mut packet);
        self.dev.send(&packet);
        r
    }
}

impl<'a> Device for HostDevice<'a> {
    type RxToken<'b>
        = Rx
    where
        Self: 'b;
    type TxToken<'b>
        = Tx<'b, 'a>
    where
        Self: 'b;

    fn receive(
        &mut self,
        _: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        loop {
            let f = self.dp.host().receive(Listener::Stack)?;
            // Only IPv4 comes up this queue; the Ethernet header is the data plane's.
            let packet = f.data().get(ETH_LEN..).map(<[u8]>::to_vec);
            self.dp.host().recycle(f);
            if let Some(p) = packet {
                return Some((Rx(p), Tx { dev: self }));
            }
        }
    }

    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        Some(Tx { dev: self })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = 1500;
        caps
    }
}

impl HostDevice<'_> {
    /// Sends IP packet `packet` to its next hop on the private side, if resolved; asks for
    /// the hop's MAC otherwise (the probe's own retransmission or the next one gets through).
    fn send(&mut self, packet: &[u8]) {
        let Some(dst) = packet
            .get(16..20)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(Ipv4Addr::from)
        else {
            return;
        };
        let Some(hop) = self.dp.next_hop(dst, Side::Private) else {
            return;
        };
        let Some(ifc) = self.dp.interfaces().get(hop.iface) else {
            return;
        };
        let mac = match self.dp.neighbors().resolve(hop.addr, (self.clock)()) {
            Resolution::Reachable(m) | Resolution::Stale(m) => m,
            Resolution::Unresolved => {
                let now = Instant::now();
                let due = self
                    .arp_asked
                    .get(&hop.addr)
                    .is_none_or(|t| now.duration_since(*t) >= ARP_EVERY);
                if due {
                    self.arp_asked.insert(hop.addr, now);
                    let req = ArpRepr::request(ifc.mac, ifc.addr, hop.addr);
                    self.dp
                        .host()
                        .send(hop.iface, |b| req.emit_frame(b, None).ok());
                }
                return;
            }
        };
        let src_mac = ifc.mac;
        self.dp.host().send(hop.iface, |b| {
            let frame = b.get_mut(..ETH_LEN + packet.len())?;
            let (eth, ip) = frame.split_at_mut(ETH_LEN);
            eth.get_mut(..6)?.copy_from_slice(&mac);
            eth.get_mut(6..12)?.copy_from_slice(&src_mac);
            eth.get_mut(12..14)?.copy_from_slice(&[0x08, 0x00]);
            ip.copy_from_slice(packet);
            Some(ETH_LEN + packet.len())
        });
    }
}

/// The targets of `checks` (pool name -> check) among `nat`'s pools, their probes spread
/// over each interval.
fn targets(gw: &Gateway<'_>) -> Vec<Target> {
    let cfg = gw.config.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    let mut out = Vec::new();
    for (pool_name, check) in &cfg.checks {
        let Some(pool) = cfg.nat.pools.iter().find(|p| p.name == *pool_name) else {
            continue;
        };
        let n = u32::try_from(pool.backends.len().max(1)).unwrap_or(u32::MAX);
        for (i, b) in pool.backends.iter().enumerate() {
            // Spread the pool's probes over the interval, so hundreds don't leave at once.
            let offset = u64::from(check.interval_ms) * i as u64 / u64::from(n);
            out.push(Target {
                pool: pool.name.clone(),
                addr: b.addr,
                port: b.port,
                id: backend_id(&pool.name, b.addr, b.port),
                check: check.clone(),
                health: Health::Unknown,
                successes: 0,
                failures: 0,
                next_at: now + Duration::from_millis(offset),
                started: now,
                in_flight: None,
                last: "not checked yet".into(),
                last_ms: None,
            });
        }
    }
    out
}

/// Runs the checks until [`HealthShared::stop`]. Follows reloads: the targets are read
/// again when the policy generation changes (a target keeps its state if it stays).
pub(crate) fn run(gw: &Gateway<'_>, shared: &HealthShared, clock: &(dyn Fn() -> u64 + Sync)) {
    // The clock is the workers' (the neighbor table's), for next-hop resolution.
    let dp = gw.dp;
    let private: Vec<(Ipv4Addr, u8)> = dp
        .interfaces()
        .iter()
        .filter(|i| i.side == Side::Private)
        .map(|i| (i.addr, i.net.len))
        .collect();
    let Some(&(first, _)) = private.first() else {
        tracing::error!("health checks: no private interface to probe from");
        return;
    };
    dp.host().subscribe_protocol(6, Listener::Stack);
    dp.host().subscribe_protocol(1, Listener::Stack);
    let mut device = HostDevice {
        dp,
        clock,
        arp_asked: BTreeMap::new(),
    };
    let started = Instant::now();
    let now_smol = || smoltcp::time::Instant::from_millis(started.elapsed().as_millis() as i64);
    let mut stack = Stack::new(
        IfaceConfig::new(HardwareAddress::Ip),
        &mut device,
        now_smol(),
    );
    stack.update_ip_addrs(|addrs| {
        // smoltcp holds two addresses by default: the first private interfaces'.
        for (a, len) in private.iter().take(2) {
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(*a), *len));
        }
    });
    // Routing is the data plane's: smoltcp only needs to believe every address reachable.
    let _ = stack.routes_mut().add_default_ipv4_route(first);
    let mut sockets = SocketSet::new(Vec::new());
    let mut generation = 0;
    let mut targets: Vec<Target> = Vec::new();
    let mut next_port = PORT_LO;
    let mut icmp_seq: u16 = 0;
    let mut closing: Vec<SocketHandle> = Vec::new();
    let mut next_publish = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        let g = dp.engine().snapshot().generation();
        if g != generation {
            generation = g;
            let mut fresh = targets_keeping(gw, &mut targets);
            std::mem::swap(&mut targets, &mut fresh);
            for t in fresh.iter_mut() {
                close(&mut sockets, &mut closing, t.in_flight.take());
            }
            publish(shared, &targets);
        }
        let _ = stack.poll(now_smol(), &mut device, &mut sockets);
        let now = Instant::now();
        let mut changed = false;
        for t in targets.iter_mut() {
            if t.in_flight.is_none() && now >= t.next_at {
                t.started = now;
                t.next_at = now + Duration::from_millis(u64::from(t.check.interval_ms));
                t.in_flight = start(
                    &mut stack,
                    &mut sockets,
                    t,
                    first,
                    &mut next_port,
                    &mut icmp_seq,
                );
                if t.in_flight.is_none() {
                    changed |= record(t, Err("could not start the probe".into()));
                }
                continue;
            }
            if let Some(result) = progress(&mut sockets, t, now) {
                let f = t.in_flight.take();
                close(&mut sockets, &mut closing, f);
                changed |= record(t, result);
            }
        }
        if changed || now >= next_publish {
            // The view for `vipgate backends` and the metrics, a few times a second: rebuilding
            // it every round would cost more than the probes.
            next_publish = now + PUBLISH_EVERY;
            publish(shared, &targets);
        }
        if changed {
            gw.set_down(
                targets
                    .iter()
                    .filter(|t| t.health == Health::Down)
                    .map(|t| t.id)
                    .collect(),
            );
        }
        let _ = stack.poll(now_smol(), &mut device, &mut sockets);
        // Aborted probes sent their RST in the poll above: now they can go.
        for h in closing.drain(..) {
            sockets.remove(h);
        }
        std::thread::sleep(TICK);
    }
}

/// The targets of the configuration now, keeping the state of those that stay.
fn targets_keeping(gw: &Gateway<'_>, old: &mut [Target]) -> Vec<Target> {
    let mut fresh = targets(gw);
    for t in fresh.iter_mut() {
        if let Some(o) = old.iter_mut().find(|o| o.id == t.id && o.check == t.check) {
            t.health = o.health;
            t.successes = o.successes;
            t.failures = o.failures;
            t.last = std::mem::take(&mut o.last);
            t.last_ms = o.last_ms;
        }
    }
    fresh
}

fn start(
    stack: &mut Stack,
    sockets: &mut SocketSet<'static>,
    t: &Target,
    from: Ipv4Addr,
    next_port: &mut u16,
    icmp_seq: &mut u16,
) -> Option<InFlight> {
    match &t.check.kind {
        CheckKind::Tcp | CheckKind::Http { .. } => {
            let mut s = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; HTTP_MAX]),
                tcp::SocketBuffer::new(vec![0; 1024]),
            );
            let port = *next_port;
            *next_port = if port == u16::MAX { PORT_LO } else { port + 1 };
            s.connect(
                stack.context(),
                (IpAddress::Ipv4(t.addr), t.port),
                (IpAddress::Ipv4(from), port),
            )
            .ok()?;
            Some(InFlight::Tcp {
                socket: sockets.add(s),
                http: None,
            })
        }
        CheckKind::Icmp => {
            let mut s = icmp::Socket::new(
                icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
                icmp::PacketBuffer::new(vec![icmp::PacketMetadata::EMPTY; 4], vec![0; 1024]),
            );
            *icmp_seq = icmp_seq.wrapping_add(1);
            let ident = 0x7667;
            s.bind(icmp::Endpoint::Ident(ident)).ok()?;
            let repr = Icmpv4Repr::EchoRequest {
                ident,
                seq_no: *icmp_seq,
                data: b"vipgate health",
            };
            let mut bytes = vec![0u8; repr.buffer_len()];
            repr.emit(
                &mut Icmpv4Packet::new_unchecked(&mut bytes),
                &smoltcp::phy::ChecksumCapabilities::default(),
            );
            s.send_slice(&bytes, IpAddress::Ipv4(t.addr)).ok()?;
            Some(InFlight::Icmp {
                socket: sockets.add(s),
                seq: *icmp_seq,
            })
        }
    }
}

/// The probe's result once it has one: `Ok(())` passed, `Err(why)` failed.
fn progress(
    sockets: &mut SocketSet<'static>,
    t: &mut Target,
    now: Instant,
) -> Option<Result<(), String>> {
    let timed_out =
        now.duration_since(t.started) >= Duration::from_millis(u64::from(t.check.timeout_ms));
    match t.in_flight.as_mut()? {
        InFlight::Tcp { socket, http } => {
            let s = sockets.get_mut::<tcp::Socket>(*socket);
            match (&t.check.kind, s.state()) {
                (_, tcp::State::Closed) if http.is_none() => {
                    return Some(Err("connection refused or reset".into()))
                }
                (CheckKind::Tcp, tcp::State::Established) => return Some(Ok(())),
                (CheckKind::Http { path, status, body }, _) => {
                    if http.is_none() && s.state() == tcp::State::Established {
                        let req = format!(
                            "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
                            t.addr
                        );
                        if s.send_slice(req.as_bytes()).is_ok() {
                            *http = Some(Vec::new());
                        }
                    }
                    if let Some(got) = http.as_mut() {
                        let mut buf = [0u8; 2048];
                        while let Ok(n) = s.recv_slice(&mut buf) {
                            if n == 0 || got.len() >= HTTP_MAX {
                                break;
                            }
                            got.extend_from_slice(buf.get(..n).unwrap_or_default());
                        }
                        // Judged once the server closed, or the answer is long enough.
                        let done = !s.may_recv() || got.len() >= HTTP_MAX;
                        if done {
                            return Some(judge_http(got, *status, body.as_deref()));
                        }
                    }
                }
                _ => {}
            }
            timed_out.then(|| Err(format!("no answer within {} ms", t.check.timeout_ms)))
        }
        InFlight::Icmp { socket, seq } => {
            let s = sockets.get_mut::<icmp::Socket>(*socket);
            let mut buf = [0u8; 1024];
            while let Ok((n, from)) = s.recv_slice(&mut buf) {
                let Ok(p) = Icmpv4Packet::new_checked(buf.get(..n).unwrap_or_default()) else {
                    continue;
                };
                if let Ok(Icmpv4Repr::EchoReply { seq_no, .. }) =
                    Icmpv4Repr::parse(&p, &smoltcp::phy::ChecksumCapabilities::default())
                {
                    if seq_no == *seq && from == IpAddress::Ipv4(t.addr) {
                        return Some(Ok(()));
                    }
                }
            }
            timed_out.then(|| Err(format!("no echo reply within {} ms", t.check.timeout_ms)))
        }
    }
}

fn judge_http(answer: &[u8], status: u16, body: Option<&str>) -> Result<(), String> {
    let text = String::from_utf8_lossy(answer);
    let line = text.lines().next().unwrap_or_default();
    let got = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match got {
        Some(s) if s == status => {}
        Some(s) => return Err(format!("HTTP status {s}, expected {status}")),
        None => return Err(format!("not an HTTP answer: {line:?}")),
    }
    match body {
        Some(b)
            if !text
                .split_once("\r\n\r\n")
                .is_some_and(|(_, rest)| rest.contains(b)) =>
        {
            Err(format!("the body does not contain {b:?}"))
        }
        _ => Ok(()),
    }
}

fn close(sockets: &mut SocketSet<'static>, closing: &mut Vec<SocketHandle>, f: Option<InFlight>) {
    match f {
        Some(InFlight::Tcp { socket, .. }) => {
            // A RST, not a FIN: the probe leaves no connection behind on the backend. The
            // socket leaves the set after the next poll, which sends the RST.
            sockets.get_mut::<tcp::Socket>(socket).abort();
            closing.push(socket);
        }
        Some(InFlight::Icmp { socket, .. }) => {
            sockets.remove(socket);
        }
        None => {}
    }
}

/// Counts a probe's result; whether the backend's health changed.
fn record(t: &mut Target, result: Result<(), String>) -> bool {
    t.last_ms = Some(t.started.elapsed().as_millis() as u64);
    let before = t.health;
    match result {
        Ok(()) => {
            t.successes += 1;
            t.failures = 0;
            t.last = "passed".into();
            if t.health != Health::Up && t.successes >= t.check.rise {
                t.health = Health::Up;
            }
        }
        Err(why) => {
            t.failures += 1;
            t.successes = 0;
            t.last = why;
            if t.health != Health::Down && t.failures >= t.check.fall {
                t.health = Health::Down;
            }
        }
    }
    // Unknown to up changes nothing in service: only log and publish a real change.
    let changed = before != t.health && !(before == Health::Unknown && t.health == Health::Up);
    if changed || (before == Health::Unknown && t.health == Health::Up) {
        let line = format!("{}:{}", t.addr, t.port);
        if t.health == Health::Down {
            tracing::warn!(pool = %t.pool, backend = %line, reason = %t.last, failures = t.failures, "health: backend down, out of the pool");
        } else {
            tracing::info!(pool = %t.pool, backend = %line, successes = t.successes, "health: backend up");
        }
    }
    changed
}

fn publish(shared: &HealthShared, targets: &[Target]) {
    let view: BTreeMap<u32, Value> = targets
        .iter()
        .map(|t| {
            (
                t.id,
                json!({
                    "health": t.health.name(),
                    "check": match &t.check.kind {
                        CheckKind::Tcp => "tcp",
                        CheckKind::Http { .. } => "http",
                        CheckKind::Icmp => "icmp",
                    },
                    "last": t.last,
                    "last_ms": t.last_ms,
                    "successes": t.successes,
                    "failures": t.failures,
                }),
            )
        })
        .collect();
    *shared.view.lock().unwrap_or_else(|e| e.into_inner()) = view;
}
