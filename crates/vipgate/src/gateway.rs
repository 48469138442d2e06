//! What the control thread (and the metrics server) know of the running gateway, and the
//! operator's requests carried out on it: status, counters, connections, VIPs, flush,
//! reload and the active/standby gate.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde::Serialize;
use serde_json::{json, Value};
use vipgate_config::Config;
use vipgate_dataplane::Dataplane;
use vipgate_nat::engine::{conn_flags, Endpoints, NO_BACKEND};
use vipgate_nat::policy::backend_id;
use vipgate_nat::{ConnId, ConnRecord, ConnState, Proto};

use crate::backends::BackendStates;
use crate::events::EventLogCounters;
use crate::ha::{Command, HaShared};
use crate::health::HealthShared;
use crate::live::Live;
use crate::sync::SyncShared;
use vipgate::protocol::{error, ok, Filter, Request, PAGE_MAX};

/// One AF_XDP socket, as a worker reported it at start.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct PortInfo {
    pub(crate) interface: String,
    pub(crate) worker: usize,
    pub(crate) queue: u32,
    /// `copy` or `zero-copy`.
    pub(crate) bind: String,
}

/// The running gateway as the control thread sees it.
pub(crate) struct Gateway<'a> {
    pub(crate) dp: &'a Dataplane,
    pub(crate) live: &'a Live,
    pub(crate) started: Instant,
    /// Milliseconds of the workers' clock.
    pub(crate) clock: &'a (dyn Fn() -> u64 + Sync),
    pub(crate) config_path: PathBuf,
    pub(crate) config: Mutex<Config>,
    pub(crate) ports: Mutex<Vec<PortInfo>>,
    pub(crate) reloads_ok: AtomicU64,
    pub(crate) reloads_failed: AtomicU64,
    pub(crate) event_log: EventLogCounters,
    /// Frames that came up the host path with nobody on the control thread to take them.
    pub(crate) host_unclaimed: AtomicU64,
    /// The election, when `[ha]` is configured.
    pub(crate) ha: Option<&'a HaShared>,
    /// State sync, when `[ha.sync]` is configured.
    pub(crate) sync: Option<&'a SyncShared>,
    /// Backends drained by operators or down by their checks.
    pub(crate) backends: Mutex<BackendStates>,
    /// The health checks, when some pool has one.
    pub(crate) health: Option<&'a HealthShared>,
    /// Connections removed because their backend was found down.
    pub(crate) backend_resets: AtomicU64,
    /// Whether some health-checked pool has no backend up (the election's tracking).
    pub(crate) pools_failed: std::sync::atomic::AtomicBool,
    /// (milliseconds, rx frames, tx frames) at the last two rate samples.
    rate: Mutex<(RateSample, RateSample)>,
}

/// (milliseconds, rx frames, tx frames).
type RateSample = (u64, u64, u64);

/// A connection as operators see it: the inside host, the gateway's public address, and
/// the outside host, whichever side opened it.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ConnView {
    pub(crate) id: String,
    pub(crate) proto: &'static str,
    pub(crate) state: &'static str,
    /// `inbound` (opened from outside), `outbound` (PAT) or `hairpin`.
    pub(crate) direction: &'static str,
    pub(crate) inside: String,
    pub(crate) public: String,
    pub(crate) outside: String,
    /// The pool backend, as `pool/address:port` (its id while the policy no longer has it).
    pub(crate) backend: Option<String>,
    #[serde(skip)]
    backend_id: Option<u32>,
    pub(crate) idle_secs: u32,
    pub(crate) worker: u8,
    #[serde(skip)]
    addrs: [Ipv4Addr; 3],
    #[serde(skip)]
    ports: [u16; 3],
}

pub(crate) fn proto_name(p: Proto) -> &'static str {
    match p {
        Proto::Tcp => "tcp",
        Proto::Udp => "udp",
        Proto::Icmp => "icmp",
    }
}

impl ConnView {
    fn new(id: ConnId, r: &ConnRecord) -> ConnView {
        let e = Endpoints::of(r);
        let outside = e.outside.unwrap_or((Ipv4Addr::UNSPECIFIED, 0));
        let ep = |(a, p): (Ipv4Addr, u16)| format!("{a}:{p}");
        let backend_id = (r.backend != NO_BACKEND && r.flags & conn_flags::PEER_MAPPING == 0)
            .then_some(r.backend);
        ConnView {
            id: format!("{}.{}", id.index, id.generation),
            proto: proto_name(r.orig.proto),
            state: r.state.name(),
            direction: e.direction.name(),
            inside: ep(e.inside),
            public: ep(e.public),
            outside: ep(outside),
            backend: backend_id.map(|id| id.to_string()),
            backend_id,
            idle_secs: r.idle_secs,
            worker: r.owner,
            addrs: [e.inside.0, e.public.0, outside.0],
            ports: [e.inside.1, e.public.1, outside.1],
        }
    }

    fn matches(&self, f: &Filter) -> bool {
        f.inside.is_none_or(|a| a == self.addrs[0])
            && f.vip.is_none_or(|a| a == self.addrs[1])
            && f.outside.is_none_or(|a| a == self.addrs[2])
            && f.port.is_none_or(|p| self.ports.contains(&p))
            && f.proto.as_deref().is_none_or(|p| p == self.proto)
            && f.state.as_deref().is_none_or(|s| s == self.state)
    }
}

/// Live state derived by walking the table: connections per public address and backend.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Gauges {
    pub(crate) conns: u64,
    pub(crate) mappings: u64,
    pub(crate) per_vip: BTreeMap<Ipv4Addr, u64>,
    pub(crate) per_backend: BTreeMap<u32, u64>,
}

impl<'a> Gateway<'a> {
    // Each argument is one part of the running gateway; a struct of them would only rename it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        dp: &'a Dataplane,
        live: &'a Live,
        clock: &'a (dyn Fn() -> u64 + Sync),
        config_path: PathBuf,
        config: Config,
        ha: Option<&'a HaShared>,
        sync: Option<&'a SyncShared>,
        health: Option<&'a HealthShared>,
    ) -> Gateway<'a> {
        Gateway {
            dp,
            live,
            started: Instant::now(),
            clock,
            config_path,
            config: Mutex::new(config),
            ports: Mutex::new(Vec::new()),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            event_log: EventLogCounters::default(),
            host_unclaimed: AtomicU64::new(0),
            ha,
            sync,
            backends: Mutex::new(BackendStates::default()),
            health,
            backend_resets: AtomicU64::new(0),
            pools_failed: std::sync::atomic::AtomicBool::new(false),
            rate: Mutex::new(((0, 0, 0), (0, 0, 0))),
        }
    }

    fn now_s(&self) -> u32 {
        u32::try_from((self.clock)() / 1000).unwrap_or(u32::MAX)
    }

    /// Takes a frames/s sample; the control thread calls it about once a second.
    pub(crate) fn sample_rate(&self) {
        let sample = (
            (self.clock)(),
            self.live.total("rx_frames"),
            self.live.total("tx_frames"),
        );
        let mut r = self.rate.lock().unwrap_or_else(|e| e.into_inner());
        r.0 = r.1;
        r.1 = sample;
    }

    /// Received and sent frames per second over the last sample interval.
    fn rates(&self) -> (f64, f64) {
        let r = *self.rate.lock().unwrap_or_else(|e| e.into_inner());
        let (old, new) = r;
        let ms = new.0.saturating_sub(old.0);
        if ms == 0 || old.0 == 0 {
            return (0.0, 0.0);
        }
        let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 * 1000.0 / ms as f64;
        (per_s(old.1, new.1), per_s(old.2, new.2))
    }

    /// Walks the table once.
    pub(crate) fn gauges(&self) -> Gauges {
        let mut g = Gauges::default();
        let owned: Vec<Ipv4Addr> = self.dp.engine().snapshot().policy().owned_addrs().to_vec();
        for a in &owned {
            g.per_vip.insert(*a, 0);
        }
        self.dp.engine().table().walk(0, self.now_s(), |id, r| {
            if r.state == ConnState::Mapping {
                g.mappings += 1;
                return true;
            }
            g.conns += 1;
            let v = ConnView::new(id, r);
            *g.per_vip.entry(v.addrs[1]).or_default() += 1;
            if let Some(b) = v.backend_id {
                *g.per_backend.entry(b).or_default() += 1;
            }
            true
        });
        g
    }

    /// (pool, backend "addr:port", id, weight) of every backend in the policy in force.
    pub(crate) fn backends(&self) -> Vec<(String, String, u32, u32)> {
        let snap = self.dp.engine().snapshot();
        snap.config()
            .pools
            .iter()
            .flat_map(|p| {
                p.backends.iter().map(|b| {
                    (
                        p.name.clone(),
                        format!("{}:{}", b.addr, b.port),
                        backend_id(&p.name, b.addr, b.port),
                        b.weight,
                    )
                })
            })
            .collect()
    }

    /// PAT ports in use: (public address, protocol, ports).
    pub(crate) fn pat_ports(&self) -> Vec<(Ipv4Addr, &'static str, u32)> {
        let ports = self.dp.engine().ports();
        let mut v = Vec::new();
        for (i, a) in ports.addrs().into_iter().enumerate() {
            if a.is_unspecified() {
                continue;
            }
            for p in [Proto::Tcp, Proto::Udp, Proto::Icmp] {
                v.push((a, proto_name(p), ports.in_use(i, p)));
            }
        }
        v
    }

    /// Neighbor entries known now.
    pub(crate) fn neighbors(&self) -> usize {
        self.dp.neighbors().entries((self.clock)()).len()
    }

    /// Carries out one request.
    pub(crate) fn handle(&self, req: Request) -> Value {
        match req {
            Request::Status => ok(self.status()),
            Request::Stats { workers } => ok(self.stats(workers)),
            Request::Conns {
                filter,
                count,
                limit,
                after,
            } => match filter.check() {
                Ok(()) => ok(self.conns(&filter, count, limit, after)),
                Err(e) => error(e),
            },
            Request::Vips => ok(self.vips()),
            Request::Flush { filter, all } => {
                if !all && filter.is_empty() {
                    return error("flush needs a filter, or --all to flush every connection");
                }
                match filter.check() {
                    Ok(()) => ok(self.flush(&filter)),
                    Err(e) => error(e),
                }
            }
            Request::Reload { flush_removed } => match self.reload(flush_removed) {
                Ok(v) => ok(v),
                Err(e) => error(e),
            },
            Request::Standby => self.set_active(false),
            Request::Active => self.set_active(true),
            Request::Backends => {
                let cfg = self.config.lock().unwrap_or_else(|e| e.into_inner());
                let g = self.gauges();
                let states = self.backends.lock().unwrap_or_else(|e| e.into_inner());
                ok(states.list(
                    &cfg.nat,
                    |id| g.per_backend.get(&id).copied().unwrap_or(0),
                    |id| self.health.and_then(|h| h.of(id)),
                ))
            }
            Request::Drain { pool, backend } => self.drain(&pool, &backend, true),
            Request::Undrain { pool, backend } => self.drain(&pool, &backend, false),
            Request::Ha => ok(match self.ha {
                Some(h) => {
                    let mut v = h.view();
                    if let Some(obj) = v.as_object_mut() {
                        obj.insert(
                            "sync".into(),
                            self.sync.map_or(Value::Null, SyncShared::view),
                        );
                    }
                    v
                }
                None => json!({ "enabled": false, "role": self.role() }),
            }),
        }
    }

    fn role(&self) -> &'static str {
        if self.dp.is_active() {
            "active"
        } else {
            "standby"
        }
    }

    fn status(&self) -> Value {
        let cfg = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let table = self.dp.engine().table();
        let (rx, tx) = self.rates();
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_secs": self.started.elapsed().as_secs(),
            "role": self.role(),
            "workers": self.live.workers(),
            "cores": cfg.workers,
            "xdp_mode": match cfg.xdp.mode {
                vipgate_config::XdpMode::Skb => "skb",
                vipgate_config::XdpMode::Drv => "drv",
            },
            "ports": *self.ports.lock().unwrap_or_else(|e| e.into_inner()),
            "rx_frames_per_sec": rx.round(),
            "tx_frames_per_sec": tx.round(),
            "table": {
                "entries": table.len(),
                "capacity": table.capacity(),
                "fill_percent": f64::from(table.len()) * 100.0 / f64::from(table.capacity().max(1)),
            },
            "policy_generation": self.dp.engine().snapshot().generation(),
            "config": self.config_path.display().to_string(),
        })
    }

    /// Counters of the control side (reloads, event log, flushes), by name.
    pub(crate) fn control_counters(&self) -> Vec<(&'static str, u64)> {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut v = vec![
            ("reloads_ok", l(&self.reloads_ok)),
            ("reloads_failed", l(&self.reloads_failed)),
            ("event_log_written", l(&self.event_log.written)),
            ("event_log_dropped", l(&self.event_log.dropped)),
            ("event_log_errors", l(&self.event_log.errors)),
            ("flush_events_lost", self.dp.engine().flush_events_lost()),
            ("host_unclaimed", l(&self.host_unclaimed)),
            ("host_send_failed", self.dp.host().send_failed()),
            ("backend_down_resets", l(&self.backend_resets)),
        ];
        if let Some(h) = self.ha {
            v.extend(h.counters());
        }
        if let Some(s) = self.sync {
            v.extend(s.counters());
        }
        v
    }

    fn stats(&self, per_worker: bool) -> Value {
        let to_map = |v: Vec<(&'static str, u64)>| -> serde_json::Map<String, Value> {
            v.into_iter()
                .map(|(n, c)| (n.to_string(), json!(c)))
                .collect()
        };
        let workers: Option<Vec<Value>> = per_worker.then(|| {
            (0..self.live.workers())
                .map(|w| Value::Object(to_map(self.live.worker(w))))
                .collect()
        });
        let mut total = self.live.totals();
        total.extend(self.control_counters());
        json!({ "total": to_map(total), "workers": workers })
    }

    fn conns(&self, f: &Filter, count: bool, limit: Option<usize>, after: Option<u32>) -> Value {
        let now = self.now_s();
        let table = self.dp.engine().table();
        if count {
            let mut n = 0u64;
            let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
            table.walk(0, now, |id, r| {
                if r.state != ConnState::Mapping {
                    let v = ConnView::new(id, r);
                    if v.matches(f) {
                        n += 1;
                        *by_state.entry(v.state).or_default() += 1;
                    }
                }
                true
            });
            return json!({ "count": n, "by_state": by_state });
        }
        let limit = limit.unwrap_or(100).clamp(1, PAGE_MAX);
        let mut list = Vec::new();
        let next = table.walk(after.unwrap_or(0), now, |id, r| {
            if r.state != ConnState::Mapping {
                let v = ConnView::new(id, r);
                if v.matches(f) {
                    list.push(v);
                }
            }
            list.len() < limit
        });
        let names: BTreeMap<u32, String> = self
            .backends()
            .into_iter()
            .map(|(pool, backend, id, _)| (id, format!("{pool}/{backend}")))
            .collect();
        for v in &mut list {
            if let Some(name) = v.backend_id.and_then(|id| names.get(&id)) {
                v.backend = Some(name.clone());
            }
        }
        json!({ "conns": list, "next": next })
    }

    fn vips(&self) -> Value {
        let snap = self.dp.engine().snapshot();
        let cfg = snap.config();
        let gauges = self.gauges();
        let live_of = |a: &Ipv4Addr| gauges.per_vip.get(a).copied().unwrap_or(0);
        let vips: Vec<Value> = cfg
            .vips
            .iter()
            .map(|vip| {
                let dnat: Vec<Value> = cfg
                    .dnat
                    .iter()
                    .filter(|r| r.vip == *vip)
                    .map(|r| {
                        json!({
                            "proto": proto_name(r.proto),
                            "ports": if r.port_lo == r.port_hi { r.port_lo.to_string() } else { format!("{}-{}", r.port_lo, r.port_hi) },
                            "to": match r.to_port { Some(p) => format!("{}:{p}", r.to), None => r.to.to_string() },
                        })
                    })
                    .collect();
                let pools: Vec<Value> = cfg
                    .pools
                    .iter()
                    .filter(|p| p.vip == *vip)
                    .map(|p| {
                        let backends: Vec<Value> = p
                            .backends
                            .iter()
                            .map(|b| {
                                let id = backend_id(&p.name, b.addr, b.port);
                                json!({
                                    "backend": format!("{}:{}", b.addr, b.port),
                                    "id": id,
                                    "weight": b.weight,
                                    "conns": gauges.per_backend.get(&id).copied().unwrap_or(0),
                                })
                            })
                            .collect();
                        json!({ "name": p.name, "proto": proto_name(p.proto), "port": p.port, "backends": backends })
                    })
                    .collect();
                json!({ "vip": vip, "conns": live_of(vip), "dnat": dnat, "pools": pools })
            })
            .collect();
        let pat: Vec<Value> = cfg
            .pat
            .iter()
            .map(|r| {
                json!({
                    "from": r.from.iter().map(ToString::to_string).collect::<Vec<_>>(),
                    "to": r.to,
                })
            })
            .collect();
        json!({ "role": self.role(), "vips": vips, "pat": pat })
    }

    fn flush(&self, f: &Filter) -> Value {
        let now = self.now_s();
        let engine = self.dp.engine();
        let mut ids = Vec::new();
        engine.table().walk(0, now, |id, r| {
            if r.state != ConnState::Mapping && ConnView::new(id, r).matches(f) {
                ids.push(id);
            }
            true
        });
        let flushed = ids
            .into_iter()
            .filter(|id| engine.flush(*id, now).is_some())
            .count();
        tracing::info!(flushed, filter = ?f, "connections flushed");
        json!({ "flushed": flushed })
    }

    /// Re-reads the configuration file and publishes its policy; nothing changes if it is
    /// invalid or changes a structural key.
    pub(crate) fn reload(&self, flush_removed: bool) -> Result<Value, String> {
        let r = self.try_reload(flush_removed);
        match &r {
            Ok(v) => {
                self.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(result = %v, "reloaded {}", self.config_path.display());
            }
            Err(e) => {
                self.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("reload of {} refused: {e}", self.config_path.display());
            }
        }
        r
    }

    fn try_reload(&self, flush_removed: bool) -> Result<Value, String> {
        let new = Config::load(&self.config_path)
            .map_err(|e| format!("{}: {e}", self.config_path.display()))?;
        let mut cfg = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = cfg.structural_change(&new) {
            return Err(format!(
                "{key}: changed, and it can only change with a restart; nothing was reloaded"
            ));
        }
        let generation = {
            let mut states = self.backends.lock().unwrap_or_else(|e| e.into_inner());
            states.retain(&new.nat);
            self.publish(&new, &states)
                .map_err(|e| format!("{e}; nothing was reloaded"))?
        };
        self.dp.set_icmp_rate(new.icmp.rate);
        // Addresses may have come or gone: tell the neighbors at once.
        self.dp.request_announce();
        *cfg = new;
        drop(cfg);
        let flushed = if flush_removed {
            self.dp.engine().flush_removed(self.now_s())
        } else {
            0
        };
        Ok(json!({ "generation": generation, "flushed": flushed }))
    }

    /// Publishes `cfg`'s policy with the backends out of service at weight 0; the new
    /// generation.
    fn publish(&self, cfg: &Config, states: &BackendStates) -> Result<u64, String> {
        let engine = self.dp.engine();
        match states.effective(&cfg.nat) {
            None => engine.publish_compiled(&cfg.nat, cfg.policy.0.clone()),
            Some(nat) => engine.publish(&nat),
        }
        .map_err(|e| format!("nat: {e}"))
    }

    /// The backends the health checks find down now: published at once if that changed.
    pub(crate) fn set_down(&self, down: std::collections::BTreeSet<u32>) {
        let cfg = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let mut states = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        // A checked pool whose every backend in service is down fails: the election lowers
        // this box's priority, so a peer whose checks pass takes over.
        let checked: Vec<&str> = cfg.checks.iter().map(|(p, _)| p.as_str()).collect();
        let failed = cfg.nat.pools.iter().any(|p| {
            let mut serving = p.backends.iter().filter(|b| b.weight > 0).peekable();
            checked.contains(&p.name.as_str())
                && serving.peek().is_some()
                && serving.all(|b| down.contains(&backend_id(&p.name, b.addr, b.port)))
        });
        self.pools_failed.store(failed, Ordering::Release);
        let (changed, newly_down) = states.set_down(down);
        if !changed {
            return;
        }
        if let Err(e) = self.publish(&cfg, &states) {
            tracing::error!(error = %e, "health: the new policy was refused");
        }
        // Pools that reset: the connections of a backend just found down go; their clients
        // get a RST at their next segment.
        let reset: std::collections::BTreeSet<u32> = cfg
            .nat
            .pools
            .iter()
            .filter(|p| p.reset_on_down)
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(|b| backend_id(&p.name, b.addr, b.port))
            })
            .filter(|id| newly_down.contains(id))
            .collect();
        drop(states);
        drop(cfg);
        if reset.is_empty() {
            return;
        }
        let now = self.now_s();
        let engine = self.dp.engine();
        let mut ids = Vec::new();
        engine.table().walk(0, now, |id, r| {
            if r.state != ConnState::Mapping && reset.contains(&r.backend) {
                ids.push(id);
            }
            true
        });
        let flushed = ids
            .into_iter()
            .filter(|id| engine.flush(*id, now).is_some())
            .count();
        self.backend_resets
            .fetch_add(flushed as u64, Ordering::Relaxed);
        tracing::warn!(
            flushed,
            "health: connections of backends found down removed (on_backend_down = \"reset\")"
        );
    }

    /// `vipgate drain` (`drained` true) and `vipgate undrain`.
    fn drain(&self, pool: &str, backend: &str, drained: bool) -> Value {
        let cfg = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let id = match crate::backends::find(&cfg.nat, pool, backend) {
            Ok(id) => id,
            Err(e) => return error(e),
        };
        let mut states = self.backends.lock().unwrap_or_else(|e| e.into_inner());
        let changed = states.set_drained(id, drained);
        if changed {
            if let Err(e) = self.publish(&cfg, &states) {
                states.set_drained(id, !drained);
                return error(e);
            }
            tracing::info!(
                pool,
                backend,
                drained,
                "backend {} by the operator",
                if drained {
                    "drained"
                } else {
                    "back in service"
                }
            );
        }
        ok(json!({ "pool": pool, "backend": backend, "drained": drained, "changed": changed }))
    }

    fn set_active(&self, active: bool) -> Value {
        if let Some(h) = self.ha {
            // The election owns the gate: the operator takes the box out of it (a master
            // hands over at once with priority 0) or puts it back.
            let was = self.dp.is_active();
            let c = if active {
                Command::Join
            } else {
                Command::Leave
            };
            if !h.command(c) {
                return error("the election thread did not carry out the request within 4 s");
            }
            return ok(json!({
                "role": self.role(),
                "changed": was != self.dp.is_active(),
                "ha": h.view().get("role").cloned(),
            }));
        }
        let was = self.dp.is_active();
        self.dp.set_active(active);
        if was != active {
            tracing::info!(
                role = self.role(),
                reason = "operator request",
                "role changed"
            );
        }
        ok(json!({ "role": self.role(), "changed": was != active }))
    }
}
