//! The election thread: VRRPv3 adverts to and from the data segment through the host path,
//! the active/standby gate that follows the role, takeover announcements, and link
//! tracking. It runs on its own thread so that adverts leave on time whatever the control
//! thread is doing (a reload, a long `conns` listing).

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vipgate_config::{Config, Ha};
use vipgate_dataplane::{Dataplane, Listener};
use vipgate_ha::advert::{virtual_mac, Advert, AdvertError, GROUP, GROUP_MAC, PROTO_VRRP};
use vipgate_ha::election::{Election, ElectionConfig, Ignored, Output, Role, Transition};
use vipgate_wire::arp::{ArpRepr, BROADCAST};

use crate::sync::SyncShared;

/// The longest the thread sleeps between two looks at the host path and its timers.
const TICK: Duration = Duration::from_millis(1);
/// Room for the largest advert frame (255 addresses).
const FRAME_MAX: usize = 1514;
/// How often the data links' carrier is read.
const LINK_EVERY: Duration = Duration::from_millis(100);
/// How often a unicast peer whose MAC is unknown is asked for it.
const ARP_EVERY: Duration = Duration::from_secs(1);
/// Advert spacings kept for the percentiles `vipgate ha` shows.
const SPACINGS: usize = 4096;
/// Seconds after becoming master during which TCP segments other than a SYN may open a
/// connection (see `Engine::pick_up_until`): long enough for every live connection to send
/// again, short enough that ACK floods can't build state for long.
const PICKUP_SECS: u32 = 10;
/// The shortest time between two extra announcement bursts, at least: one advert interval
/// (a second flap within a second must be answered too, or neighbors stay on the box that
/// yielded), never less than this.
const REANNOUNCE_MIN: Duration = Duration::from_millis(10);
/// The longest a leaving master goes on forwarding while its backup takes over.
const HANDOVER_MAX: Duration = Duration::from_secs(2);
/// How long a graceful stop waits for its priority-0 advert to leave.
const STOP_FLUSH: Duration = Duration::from_millis(500);

/// Counters of the election, in the order they are published.
pub(crate) const COUNTERS: [&str; 16] = [
    "ha_adverts_rx",
    "ha_adverts_tx",
    "ha_adverts_tx_failed",
    "ha_became_master",
    "ha_became_backup",
    "ha_garp_bursts",
    "advert_not_vrrp",
    "advert_truncated",
    "advert_bad_version",
    "advert_bad_type",
    "advert_bad_ttl",
    "advert_bad_checksum",
    "advert_other_vrid",
    "advert_unknown_peer",
    "advert_own_address",
    "advert_not_running",
];

/// What an operator asks of the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Leave the virtual router (priority 0 if master) and stay standby.
    Leave,
    /// Join it again.
    Join,
}

/// What the election thread shares with the control thread and the metrics.
pub(crate) struct HaShared {
    counters: [AtomicU64; COUNTERS.len()],
    view: Mutex<Value>,
    command: Mutex<Option<Command>>,
    /// The election's role as a number for the metrics: 0 init, 1 backup, 2 master.
    role: AtomicU64,
    priority: AtomicU64,
    stop: AtomicBool,
}

impl HaShared {
    pub(crate) fn new() -> HaShared {
        HaShared {
            counters: std::array::from_fn(|_| AtomicU64::new(0)),
            view: Mutex::new(json!({ "role": "init" })),
            command: Mutex::new(None),
            role: AtomicU64::new(0),
            priority: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        }
    }

    fn bump(&self, name: &str) {
        if let Some(i) = COUNTERS.iter().position(|n| *n == name) {
            if let Some(c) = self.counters.get(i) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Every counter, by name.
    pub(crate) fn counters(&self) -> Vec<(&'static str, u64)> {
        COUNTERS
            .iter()
            .zip(&self.counters)
            .map(|(n, c)| (*n, c.load(Ordering::Relaxed)))
            .collect()
    }

    /// `vipgate ha`'s answer.
    pub(crate) fn view(&self) -> Value {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// 0 init, 1 backup, 2 master.
    pub(crate) fn role_number(&self) -> u64 {
        self.role.load(Ordering::Relaxed)
    }

    /// The priority adverts carry now.
    pub(crate) fn priority(&self) -> u64 {
        self.priority.load(Ordering::Relaxed)
    }

    /// Hands `c` to the election thread and waits (a little) until it took it.
    pub(crate) fn command(&self, c: Command) -> bool {
        *self.command.lock().unwrap_or_else(|e| e.into_inner()) = Some(c);
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if self
                .command
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none()
            {
                return true;
            }
            std::thread::sleep(TICK);
        }
        false
    }

    /// Asks the thread to leave the election (a graceful stop) and return.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// The election thread's state.
struct Runner<'a> {
    dp: &'a Dataplane,
    shared: &'a HaShared,
    /// Milliseconds of the workers' clock (the neighbor table's).
    clock: &'a (dyn Fn() -> u64 + Sync),
    /// Frames that came up the host path that are not adverts.
    unclaimed: &'a AtomicU64,
    ha: Ha,
    election: Election,
    iface: usize,
    mac: [u8; 6],
    /// Data interfaces by name, for link tracking.
    links: Vec<String>,
    links_down: Vec<String>,
    next_link_check: Instant,
    /// Announcements still to send in the current burst, and when the next is due.
    garp_left: u32,
    next_garp: Instant,
    next_refresh: Option<Instant>,
    next_arp: Instant,
    /// Left by an operator: the election is stopped until they ask to join.
    left: bool,
    /// The election interface has no carrier: the election is stopped until it has.
    fault: bool,
    /// While active, the peer said on the sync link that it is master too.
    split_brain: bool,
    /// Set by the health checks while some checked pool has no backend up.
    pools_failed: Option<&'a AtomicBool>,
    pool_failed: bool,
    /// Sends the adverts, when the kernel allowed the socket.
    sender: Option<vipgate_io::FrameSender>,
    frame: Vec<u8>,
    last_advert: Option<Instant>,
    spacings: Vec<u32>,
    spacing_at: usize,
    last_transition: Option<(Transition, std::time::SystemTime)>,
    last_reannounce: Option<Instant>,
    started: Instant,
}

/// The addresses adverts list: the VIPs and PAT addresses, then the interfaces' virtual
/// addresses, as keepalived would list its virtual_ipaddress block.
fn advertised(cfg: &Config) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = cfg.policy.0.owned_addrs().to_vec();
    v.extend(
        cfg.interfaces
            .iter()
            .flat_map(|i| i.virtual_addrs.iter().copied()),
    );
    v.dedup();
    v
}

/// Makes every data interface accept the VRRP virtual MAC (with `ha.virtual_mac`) and the
/// election interface the VRRP group's MAC (without unicast peers), for as long as the
/// value lives.
///
/// # Errors
/// One line naming the interface.
pub(crate) fn link_addresses(cfg: &Config) -> Result<Vec<vipgate_io::LinkAddresses>, String> {
    let Some(ha) = &cfg.ha else {
        return Ok(Vec::new());
    };
    let mut held = Vec::new();
    for (i, ifc) in cfg.interfaces.iter().enumerate() {
        let mut macs = Vec::new();
        if i == ha.interface && ha.peers.is_empty() {
            macs.push(GROUP_MAC);
        }
        if ha.virtual_mac {
            macs.push(virtual_mac(ha.vrid));
        }
        if !macs.is_empty() {
            held.push(
                vipgate_io::LinkAddresses::add(&ifc.name, &macs)
                    .map_err(|e| format!("interfaces[{i}] ({}): {e}", ifc.name))?,
            );
        }
    }
    Ok(held)
}

/// What the election reads from the rest of the daemon.
pub(crate) struct Inputs<'a> {
    /// Milliseconds of the workers' clock (the neighbor table's).
    pub(crate) clock: &'a (dyn Fn() -> u64 + Sync),
    /// Frames that came up the host path that are not adverts.
    pub(crate) unclaimed: &'a AtomicU64,
    /// The state sync's readiness and the peer's role, with `[ha.sync]`.
    pub(crate) sync: Option<&'a SyncShared>,
    /// Set by the health checks while some checked pool has no backend up.
    pub(crate) pools_failed: Option<&'a AtomicBool>,
}

/// Runs the election until [`HaShared::stop`]; a graceful stop sends priority 0 when master.
/// `looked` says until when (on `inputs.clock`) the workers have taken in what arrived: a
/// backup judges the master's silence only up to then.
pub(crate) fn run(
    dp: &Dataplane,
    cfg: &Config,
    shared: &HaShared,
    looked: &(dyn Fn() -> u64 + Sync),
    inputs: Inputs<'_>,
) {
    let Inputs {
        clock,
        unclaimed,
        sync,
        pools_failed,
    } = inputs;
    let Some(ha) = cfg.ha.clone() else {
        return;
    };
    let Some(ifc) = dp.interfaces().get(ha.interface) else {
        return;
    };
    let election = Election::new(ElectionConfig {
        vrid: ha.vrid,
        priority: ha.priority,
        interval_cs: u16::try_from(ha.advert_interval_ms / 10).unwrap_or(4095),
        preempt: ha.preempt,
        preempt_delay_ms: u64::from(ha.preempt_delay_ms),
        peers: ha.peers.clone(),
        own_addr: ifc.addr,
        addrs: advertised(cfg),
    });
    if ha.peers.is_empty() && !dp.host().subscribe_group(GROUP, Listener::Election) {
        tracing::error!("ha: no free multicast slot on the host path for 224.0.0.18");
    }
    dp.host().subscribe_protocol(PROTO_VRRP, Listener::Election);
    // Adverts leave through the kernel from this thread, on time whatever the workers are
    // doing; through the workers only where the kernel refuses such a socket.
    let sender = match vipgate_io::FrameSender::new(&ifc.name) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "ha: adverts go through the workers");
            None
        }
    };
    let now = Instant::now();
    let mut r = Runner {
        dp,
        shared,
        clock,
        unclaimed,
        iface: ha.interface,
        mac: ifc.mac,
        links: dp.interfaces().iter().map(|i| i.name.clone()).collect(),
        links_down: Vec::new(),
        next_link_check: now,
        garp_left: 0,
        next_garp: now,
        next_refresh: None,
        next_arp: now,
        left: false,
        fault: false,
        split_brain: false,
        pools_failed,
        pool_failed: false,
        sender,
        frame: vec![0; FRAME_MAX],
        last_advert: None,
        spacings: Vec::with_capacity(SPACINGS),
        spacing_at: 0,
        last_transition: None,
        last_reannounce: None,
        started: now,
        election,
        ha,
    };
    realtime();
    tracing::info!(
        vrid = r.ha.vrid,
        priority = r.ha.priority,
        interface = %ifc.name,
        advert_interval_ms = r.ha.advert_interval_ms,
        preempt = r.ha.preempt,
        peers = ?r.ha.peers,
        "ha: joining the virtual router"
    );
    r.check_links();
    if !r.fault {
        let out = r.election.start(clock());
        r.apply(out);
    }
    let mut next_view = Instant::now();
    while !shared.stop.load(Ordering::Acquire) {
        let now_ms = clock();
        r.receive(now_ms);
        r.take_command(now_ms);
        if let Some(sync) = sync {
            r.election.set_ready(sync.ready.load(Ordering::Acquire));
            r.watch_split_brain(sync.peer_master.load(Ordering::Acquire));
        }
        // A backup whose workers have not looked at the wire lately (starved of CPU) can't
        // tell a silent master from an advert still waiting in a ring: it judges the
        // silence up to when they looked, but never more than a master-down interval late.
        let mut t = clock();
        if r.election.role() == Role::Backup {
            let slack = r.election.master_down_interval_ms();
            t = t.min(looked().max(t.saturating_sub(slack)));
        }
        let out = r.election.poll(t);
        r.apply(out);
        r.timers();
        if Instant::now() >= next_view {
            next_view += Duration::from_millis(100);
            r.publish();
        }
        // Sleep to the next deadline, but look at the host path every tick.
        std::thread::sleep(TICK);
    }
    r.leave();
    r.publish();
    // Let the workers send the priority-0 advert before they stop.
    let deadline = Instant::now() + STOP_FLUSH;
    while Instant::now() < deadline && !dp.host().down_is_empty() {
        std::thread::sleep(TICK);
    }
}

impl Runner<'_> {
    fn receive(&mut self, now_ms: u64) {
        while let Some(f) = self.dp.host().receive(Listener::Election) {
            if f.iface != self.iface {
                self.unclaimed.fetch_add(1, Ordering::Relaxed);
                self.dp.host().recycle(f);
                continue;
            }
            let parsed = Advert::parse_frame(f.data());
            self.dp.host().recycle(f);
            let r = match parsed {
                Ok(r) => r,
                Err(AdvertError::NotVrrp) => {
                    self.unclaimed.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Err(e) => {
                    self.shared.bump(e.name());
                    continue;
                }
            };
            if self.left {
                self.shared.bump(Ignored::NotRunning.name());
                continue;
            }
            match self.election.on_advert(r.src, &r.advert, now_ms) {
                Ok(out) => {
                    self.shared.bump("ha_adverts_rx");
                    self.apply(out);
                }
                Err(why) => self.shared.bump(why.name()),
            }
        }
    }

    fn take_command(&mut self, now_ms: u64) {
        // Cleared only once carried out, so the operator's command returns with it done.
        let Some(c) = *self
            .shared
            .command
            .lock()
            .unwrap_or_else(|e| e.into_inner())
        else {
            return;
        };
        match c {
            Command::Leave if !self.left => {
                self.left = true;
                tracing::info!("ha: leaving the virtual router on the operator's request");
                self.leave();
            }
            Command::Join if self.left => {
                self.left = false;
                if self.fault {
                    tracing::info!("ha: joins once the election interface has carrier");
                } else {
                    tracing::info!(
                        "ha: joining the virtual router again on the operator's request"
                    );
                    let out = self.election.start(now_ms);
                    self.apply(out);
                }
            }
            _ => {}
        }
        self.publish();
        *self
            .shared
            .command
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Sends what the election asked for and follows its role with the gate.
    fn apply(&mut self, out: Output) {
        if let Some(t) = out.transition {
            let active = t.to == Role::Master;
            // Close at once on leaving master; open at once on becoming it.
            self.dp.set_active(active);
            self.shared.role.store(
                match t.to {
                    Role::Initialize => 0,
                    Role::Backup => 1,
                    Role::Master => 2,
                },
                Ordering::Relaxed,
            );
            match t.to {
                Role::Master => {
                    self.shared.bump("ha_became_master");
                    // Connections the sync had not delivered yet (opened in the last
                    // moments, or lost to a full queue) are picked up at their next segment.
                    let now_s = u32::try_from((self.clock)() / 1000).unwrap_or(u32::MAX);
                    self.dp
                        .engine()
                        .pick_up_until(now_s.saturating_add(PICKUP_SECS));
                    // set_active announced once; the rest of the burst follows.
                    self.shared.bump("ha_garp_bursts");
                    self.garp_left = self.ha.garp_count.saturating_sub(1);
                    self.next_garp = Instant::now() + self.garp_interval();
                    self.next_refresh = (self.ha.garp_refresh_secs > 0).then(|| {
                        Instant::now() + Duration::from_secs(u64::from(self.ha.garp_refresh_secs))
                    });
                }
                Role::Backup => {
                    self.shared.bump("ha_became_backup");
                    self.garp_left = 0;
                    self.next_refresh = None;
                }
                Role::Initialize => {
                    self.garp_left = 0;
                    self.next_refresh = None;
                }
            }
            if t.to == Role::Master && !self.election.is_ready() {
                tracing::warn!(
                    "ha: taking over before the state sync from the master completed: the \
                     master is down, so connections it opened since the last sync are lost"
                );
            }
            let peer = t.peer.map(|(a, p)| format!("{a} priority {p}"));
            tracing::warn!(
                from = %t.from,
                to = %t.to,
                reason = t.reason.describe(),
                peer = peer.as_deref().unwrap_or("-"),
                priority = self.election.priority(),
                "ha: role changed"
            );
            self.last_transition = Some((t, std::time::SystemTime::now()));
            self.publish();
        }
        if let Some(priority) = out.advert {
            self.send_advert(priority);
        }
        if out.reannounce {
            self.announce_again("another master was on the segment");
        }
    }

    /// Leaves the virtual router (a graceful stop, or `vipgate standby`). A master sends its
    /// priority-0 advert but goes on forwarding until the backup's first advert as master
    /// (or a few intervals): the backup waits its skew time before it takes over, and
    /// traffic that reaches this box meanwhile is not dropped. Then the gate closes.
    fn leave(&mut self) {
        let was_master = self.election.role() == Role::Master;
        let out = self.election.shutdown();
        if !was_master {
            self.apply(out);
            return;
        }
        if let Some(priority) = out.advert {
            self.send_advert(priority);
        }
        let interval = Duration::from_millis(u64::from(self.ha.advert_interval_ms));
        let deadline =
            Instant::now() + (interval * 4).clamp(Duration::from_millis(20), HANDOVER_MAX);
        let vrid = self.ha.vrid;
        'wait: while Instant::now() < deadline {
            while let Some(f) = self.dp.host().receive(Listener::Election) {
                let heard = Advert::parse_frame(f.data()).ok();
                self.dp.host().recycle(f);
                if heard.is_some_and(|r| r.advert.vrid == vrid && r.advert.priority > 0) {
                    break 'wait;
                }
            }
            std::thread::sleep(TICK);
        }
        // Now the transition: the gate closes, the role is logged.
        let out = vipgate_ha::election::Output {
            advert: None,
            ..out
        };
        self.apply(out);
    }

    /// After two masters (a partition), the one that stays announces again once the other
    /// yields: the other may have announced last, and if its yielding was caused by our
    /// advert it sends none that would tell us. The sync link says when it yields.
    fn watch_split_brain(&mut self, peer_master: bool) {
        if !self.dp.is_active() {
            self.split_brain = false;
        } else if peer_master {
            self.split_brain = true;
        } else if self.split_brain {
            self.split_brain = false;
            self.announce_again("the other master yielded (a partition healed)");
        }
    }

    /// Starts another burst of announcements while active: after a partition healed or a
    /// link came back, neighbors may point the addresses at the other box. At most one per
    /// advert interval, so two masters that keep seeing each other can't flood the segment.
    fn reannounce_every(&self) -> Duration {
        Duration::from_millis(u64::from(self.ha.advert_interval_ms)).max(REANNOUNCE_MIN)
    }

    fn announce_again(&mut self, why: &str) {
        let now = Instant::now();
        if !self.dp.is_active()
            || self
                .last_reannounce
                .is_some_and(|t| now < t + self.reannounce_every())
        {
            return;
        }
        self.last_reannounce = Some(now);
        tracing::info!(reason = why, "ha: announcing the addresses again");
        self.dp.request_announce();
        self.shared.bump("ha_garp_bursts");
        self.garp_left = self.ha.garp_count.saturating_sub(1);
        self.next_garp = now + self.garp_interval();
    }

    fn send_advert(&mut self, priority: u8) {
        let advert = self.election.advert(priority);
        let src = self.election.config().own_addr;
        let now = Instant::now();
        let mut all_sent = true;
        if self.ha.peers.is_empty() {
            all_sent &= self.send_to(&advert, GROUP_MAC, GROUP);
        } else {
            for peer in self.ha.peers.clone() {
                let mac = match self.dp.neighbors().resolve(peer, (self.clock)()) {
                    vipgate_dataplane::Resolution::Reachable(m)
                    | vipgate_dataplane::Resolution::Stale(m) => m,
                    vipgate_dataplane::Resolution::Unresolved => {
                        self.ask_mac(peer, src);
                        BROADCAST
                    }
                };
                all_sent &= self.send_to(&advert, mac, peer);
            }
        }
        self.shared.bump(if all_sent {
            "ha_adverts_tx"
        } else {
            "ha_adverts_tx_failed"
        });
        if priority != 0 {
            if let Some(last) = self.last_advert {
                let ms = u32::try_from(now.duration_since(last).as_millis()).unwrap_or(u32::MAX);
                if self.spacings.len() < SPACINGS {
                    self.spacings.push(ms);
                } else if let Some(slot) = self.spacings.get_mut(self.spacing_at) {
                    *slot = ms;
                }
                self.spacing_at = (self.spacing_at + 1) % SPACINGS;
            }
            self.last_advert = Some(now);
        } else {
            self.last_advert = None;
        }
    }

    fn send_to(&mut self, advert: &Advert, dst_mac: [u8; 6], dst: Ipv4Addr) -> bool {
        let src = self.election.config().own_addr;
        // A master with the virtual MAC sends its adverts from it (RFC 5798 section 7.3), which
        // also keeps switches' tables pointing it at this box.
        let mac = if self.ha.virtual_mac {
            virtual_mac(self.ha.vrid)
        } else {
            self.mac
        };
        if let Some(sender) = &self.sender {
            let Ok(n) = advert.emit_frame(&mut self.frame, mac, dst_mac, src, dst) else {
                return false;
            };
            return self.frame.get(..n).is_some_and(|f| sender.send(f).is_ok());
        }
        self.dp.host().send(self.iface, |b| {
            advert.emit_frame(b, mac, dst_mac, src, dst).ok()
        })
    }

    fn ask_mac(&mut self, peer: Ipv4Addr, src: Ipv4Addr) {
        let now = Instant::now();
        if now < self.next_arp {
            return;
        }
        self.next_arp = now + ARP_EVERY;
        let req = ArpRepr::request(self.mac, src, peer);
        self.dp
            .host()
            .send(self.iface, |b| req.emit_frame(b, None).ok());
    }

    fn garp_interval(&self) -> Duration {
        Duration::from_millis(u64::from(self.ha.garp_interval_ms))
    }

    /// Announcement bursts and refreshes, link tracking.
    fn timers(&mut self) {
        let now = Instant::now();
        if self.garp_left > 0 && now >= self.next_garp && self.dp.is_active() {
            self.dp.request_announce();
            self.garp_left -= 1;
            self.next_garp = now + self.garp_interval();
        }
        if let Some(at) = self.next_refresh {
            if now >= at && self.dp.is_active() {
                self.dp.request_announce();
                self.shared.bump("ha_garp_bursts");
                self.next_refresh =
                    Some(now + Duration::from_secs(u64::from(self.ha.garp_refresh_secs)));
            }
        }
        if now >= self.next_link_check {
            self.next_link_check = now + LINK_EVERY;
            self.check_links();
        }
    }

    /// Lowers the priority while any data link is down.
    fn check_links(&mut self) {
        let down: Vec<String> = self
            .links
            .iter()
            .filter(|name| !link_up(name))
            .cloned()
            .collect();
        // Without carrier on the election's own interface this box hears no advert and
        // reaches nobody there: electing itself would only claim the other segments'
        // addresses from a master that is alive (keepalived calls this FAULT).
        let fault = self
            .links
            .get(self.iface)
            .is_some_and(|name| down.contains(name));
        if fault != self.fault {
            self.fault = fault;
            let now_ms = (self.clock)();
            if fault {
                tracing::warn!(
                    "ha: the election interface has no carrier: standing down until it has"
                );
                let out = self.election.shutdown();
                self.apply(out);
            } else if !self.left {
                tracing::warn!("ha: the election interface has carrier again: joining");
                let out = self.election.start(now_ms);
                self.apply(out);
            }
        }
        let pool_failed = self.ha.track_pool_penalty > 0
            && self.pools_failed.is_some_and(|f| f.load(Ordering::Acquire));
        if pool_failed != self.pool_failed {
            self.pool_failed = pool_failed;
            self.election.set_penalty(self.penalty());
            tracing::warn!(
                pool_failed,
                priority = self.election.priority(),
                "ha: a checked pool has {} backend up",
                if pool_failed { "no" } else { "a" }
            );
            self.publish();
        }
        if self.ha.track_link_penalty == 0 {
            return;
        }
        if down != self.links_down {
            let recovered = down.is_empty() && !self.links_down.is_empty();
            self.links_down = down;
            self.election.set_penalty(self.penalty());
            tracing::warn!(
                down = ?self.links_down,
                priority = self.election.priority(),
                "ha: data link state changed"
            );
            if recovered {
                self.announce_again("every data link is up again");
            }
            self.publish();
        }
    }

    /// The tracking penalty now: links down, pools without a backend up.
    fn penalty(&self) -> u8 {
        let links = if self.links_down.is_empty() {
            0
        } else {
            self.ha.track_link_penalty
        };
        let pools = if self.pool_failed {
            self.ha.track_pool_penalty
        } else {
            0
        };
        links.saturating_add(pools)
    }

    fn publish(&self) {
        self.shared
            .priority
            .store(u64::from(self.election.priority()), Ordering::Relaxed);
        let mut sorted = self.spacings.clone();
        sorted.sort_unstable();
        let pct = |p: usize| {
            (!sorted.is_empty())
                .then(|| sorted.get((sorted.len() - 1) * p / 100).copied())
                .flatten()
        };
        let peer = self.election.peer().map(|p| {
            json!({
                "address": p.addr.to_string(),
                "priority": p.priority,
                "advert_interval_ms": u32::from(p.interval_cs) * 10,
            })
        });
        let last = self.last_transition.as_ref().map(|(t, at)| {
            json!({
                "from": t.from.name(),
                "to": t.to.name(),
                "reason": t.reason.describe(),
                "unix_time": at.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
            })
        });
        let v = json!({
            "role": if self.left {
                "left"
            } else if self.fault {
                "fault"
            } else {
                self.election.role().name()
            },
            "active": self.dp.is_active(),
            "vrid": self.ha.vrid,
            "interface": self.links.get(self.iface),
            "address": self.election.config().own_addr.to_string(),
            "priority": self.election.priority(),
            "configured_priority": self.ha.priority,
            "advert_interval_ms": self.ha.advert_interval_ms,
            "preempt": self.ha.preempt,
            "preempt_delay_ms": self.ha.preempt_delay_ms,
            "ready_to_preempt": self.election.is_ready(),
            "peers": self.ha.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "master_down_interval_ms": self.election.master_down_interval_ms(),
            "peer": peer,
            "last_transition": last,
            "links_down": self.links_down,
            "advert_spacing_ms": {
                "samples": sorted.len(),
                "p50": pct(50),
                "p99": pct(99),
                "max": sorted.last(),
            },
            "uptime_secs": self.started.elapsed().as_secs(),
            "counters": self.shared.counters().into_iter().map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        *self.shared.view.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

/// Asks for a real-time priority for the election thread: with adverts every 10 ms, a busy
/// machine must not delay one by the three intervals that make the backup take over (a
/// spurious takeover; keepalived offers the same, `vrrp_rt_priority`). The thread sleeps
/// between rounds, so it takes little of a core. Without the privilege it runs as before.
fn realtime() {
    // SAFETY: sched_param is plain old data; the call reads it and affects only this thread.
    let rc = unsafe {
        let param = libc::sched_param { sched_priority: 10 };
        libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param)
    };
    if rc == 0 {
        tracing::debug!("ha: the election thread runs with real-time priority (SCHED_FIFO 10)");
    } else {
        tracing::info!(
            error = %std::io::Error::from_raw_os_error(rc),
            "ha: no real-time priority for the election thread; adverts may be late on a busy machine"
        );
    }
}

/// Whether interface `name` has carrier. An interface that is administratively down has
/// none (reading `carrier` fails then), nor has one that vanished.
fn link_up(name: &str) -> bool {
    std::fs::read_to_string(format!("/sys/class/net/{name}/carrier")).is_ok_and(|s| s.trim() == "1")
}
