//! `vipgate run`: attach XDP to every data port, start one pinned worker per configured
//! core, serve the control socket and metrics, reload on SIGHUP, until SIGINT or SIGTERM.

use std::net::Ipv4Addr;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vipgate_config::{Config, XdpMode};
use vipgate_dataplane::{
    Dataplane, DataplaneConfig, Interface, Listener, NeighborConfig, Pipeline, Route,
};
use vipgate_io::{Ports, XdpOptions, XdpPorts, XdpProgram};
use vipgate_nat::policy::Ipv4Net;
use vipgate_nat::Engine;

use crate::control;
use crate::events;
use crate::gateway::{Gateway, PortInfo};
use crate::ha::{self, HaShared};
use crate::health::{self, HealthShared};
use crate::io_errors::{self, IoErrors};
use crate::live::{Block, Live, PUBLISH_EVERY_MS};
use crate::metrics;
use crate::signal;
use crate::sync::{self, SyncShared};
use crate::worker::WorkerLoop;
use crossbeam_queue::ArrayQueue;

/// How long the control thread waits for a client before it looks at its signals again.
const CONTROL_TICK: Duration = Duration::from_millis(50);
/// How long an idle worker sleeps in the kernel waiting for frames.
const IDLE_WAIT: Duration = Duration::from_millis(1);
/// Empty steps in a row before a worker waits instead of spinning.
const SPIN_STEPS: u32 = 256;

/// Counters by name, summed over workers and ports, in a stable order.
pub(crate) type Totals = Vec<(&'static str, u64)>;

/// Refuses a port with more receive queues than workers: worker `w` serves queue `w`, and
/// the XDP program drops what arrives on a queue without a socket (it never hands a data
/// port's frames to the kernel), so frames on the others would be lost.
fn every_queue_served(name: &str, workers: u32) -> Result<(), String> {
    match vipgate_io::rx_queue_count(name) {
        Ok(Some(queues)) if queues > workers => Err(format!(
            "{queues} receive queues, but {workers} worker(s) in workers.cores serve queues 0 \
             to {}: frames on the others would be dropped; reduce the queues (ethtool -L \
             {name} combined {workers}) or add workers",
            workers.saturating_sub(1)
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Translates the configuration into the data plane's terms, reading each interface's MAC.
fn dataplane_config(cfg: &Config) -> Result<DataplaneConfig, String> {
    let mut interfaces = Vec::new();
    let mut routes = Vec::new();
    for (i, ifc) in cfg.interfaces.iter().enumerate() {
        let mac = vipgate_io::interface_mac(&ifc.name)
            .map_err(|e| format!("interfaces[{i}].name: {:?}: {e}", ifc.name))?;
        interfaces.push(Interface {
            name: ifc.name.clone(),
            side: ifc.side,
            mac,
            addr: ifc.addr,
            net: ifc.net,
            virtual_addrs: ifc.virtual_addrs.clone(),
        });
        if let Some(gw) = ifc.gateway {
            let any = Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0)
                .ok_or_else(|| "the default route's prefix".to_string())?;
            routes.push(Route {
                net: any,
                iface: i,
                via: Some(gw),
            });
        }
        routes.extend(ifc.routes.iter().map(|r| Route {
            net: r.net,
            iface: i,
            via: Some(r.via),
        }));
    }
    Ok(DataplaneConfig {
        interfaces,
        routes,
        neighbors: NeighborConfig {
            capacity: cfg.neighbors.capacity,
            reachable_ms: u64::from(cfg.neighbors.reachable_secs) * 1000,
            retry_ms: u64::from(cfg.neighbors.retry_ms),
            retries: cfg.neighbors.retries,
            hold: cfg.neighbors.hold,
        },
        icmp_rate: cfg.icmp.rate,
        frame_size: cfg.xdp.frame_size as usize,
        virtual_mac: cfg
            .ha
            .as_ref()
            .filter(|h| h.virtual_mac)
            .map(|h| vipgate_ha::advert::virtual_mac(h.vrid)),
    })
}

pub(crate) fn check_cores(cfg: &Config) -> Result<(), String> {
    let present: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .iter()
        .map(|c| c.id)
        .collect();
    for (i, core) in cfg.workers.iter().enumerate() {
        if !present.contains(core) {
            return Err(format!(
                "workers.cores[{i}]: CPU {core} is not available to this process; available: {present:?}"
            ));
        }
    }
    Ok(())
}

/// What a worker thread reports once its sockets are open (or could not be).
type Ready = Result<Vec<PortInfo>, String>;

/// Counters the daemon adds to the pipeline's, in publication order (see [`publish`]).
const LOOP_COUNTERS: [&str; 9] = [
    "tx_no_buffer",
    "port_rx",
    "port_tx",
    "port_tx_dropped",
    "port_alloc_failed",
    "xsk_rx_dropped",
    "xsk_rx_ring_full",
    "xsk_rx_fill_ring_empty",
    "xsk_tx_invalid_descs",
];

/// Every counter name, in the order workers publish them.
fn counter_names() -> Vec<&'static str> {
    let mut v = Pipeline::counter_names();
    v.extend(LOOP_COUNTERS);
    v
}

/// Copies a worker's counters into its live block, in [`counter_names`] order.
fn publish(block: &Block, p: &Pipeline<'_>, lp: &WorkerLoop<XdpPorts>) {
    let mut i = 0;
    let mut put = |v: u64| {
        block.store(i, v);
        i += 1;
    };
    p.for_each_counter(|_, v| put(v));
    let ports = lp.ports();
    let mut port = vipgate_io::PortStats::default();
    let mut k = vipgate_io::KernelStats::default();
    for i in 0..ports.count() {
        let s = ports.stats(i);
        port.rx += s.rx;
        port.tx += s.tx;
        port.tx_dropped += s.tx_dropped;
        port.alloc_failed += s.alloc_failed;
        // The kernel's own drops: frames it could not hand to the worker (its RX ring
        // full, no free buffer in the fill ring) never reach the pipeline's counters.
        if let Ok(s) = ports.kernel_stats(i) {
            k.rx_dropped += s.rx_dropped;
            k.rx_ring_full += s.rx_ring_full;
            k.rx_fill_ring_empty += s.rx_fill_ring_empty;
            k.tx_invalid_descs += s.tx_invalid_descs;
        }
    }
    for v in [
        lp.counters.tx_no_buffer,
        port.rx,
        port.tx,
        port.tx_dropped,
        port.alloc_failed,
        k.rx_dropped,
        k.rx_ring_full,
        k.rx_fill_ring_empty,
        k.tx_invalid_descs,
    ] {
        put(v);
    }
}

/// Runs the gateway until a stop signal; returns the final counters.
///
/// # Errors
/// One line saying what failed at start-up.
pub(crate) fn run(cfg: Config, path: &Path) -> Result<Totals, String> {
    // First of all, so that a SIGHUP during start-up reloads (later) instead of killing.
    signal::install().map_err(|e| format!("signal handlers: {e}"))?;
    check_cores(&cfg)?;
    let dp_config = dataplane_config(&cfg)?;
    let event_file = cfg.events.file.as_deref().map(events::open).transpose()?;
    let mut nat = cfg.nat.clone();
    let sync_config = cfg.ha.as_ref().and_then(|h| h.sync.clone());
    if event_file.is_some() || sync_config.is_some() {
        nat.event_queue = cfg.events.queue;
    }
    let engine = Engine::with_policy(nat, cfg.policy.0.clone()).map_err(|e| format!("nat: {e}"))?;
    let dp = Dataplane::with_engine(dp_config, engine).map_err(|e| format!("nat: {e}"))?;
    // With an election the box starts standby: it answers for the VIPs only once elected.
    let ha_config = cfg.ha.is_some().then(|| cfg.clone());
    if ha_config.is_some() {
        dp.set_active(false);
    }
    let _link_addresses = ha_config.as_ref().map(ha::link_addresses).transpose()?;
    let ha_shared = HaShared::new();
    let sync_shared = SyncShared::new();
    let health_shared = HealthShared::default();
    let checks = !cfg.checks.is_empty();
    let sync_socket = sync_config.as_ref().map(sync::bind).transpose()?;
    // With both the event log and sync, the sync thread reads the workers' queues and
    // passes every event on to the log's writer.
    let forwarded = (event_file.is_some() && sync_config.is_some())
        .then(|| ArrayQueue::new(cfg.events.queue.max(1)));
    let (listener, socket) = control::bind(&cfg.control.socket)?;
    let metrics_server = cfg.metrics.listen.map(metrics::bind).transpose()?;
    let mode = match cfg.xdp.mode {
        XdpMode::Skb => vipgate_io::XdpMode::Skb,
        XdpMode::Drv => vipgate_io::XdpMode::Drv,
    };
    let workers =
        u32::try_from(cfg.workers.len()).map_err(|_| "workers.cores: too many".to_string())?;
    let mut programs = Vec::new();
    for (i, ifc) in cfg.interfaces.iter().enumerate() {
        every_queue_served(&ifc.name, workers)
            .map_err(|e| format!("interfaces[{i}] ({}): {e}", ifc.name))?;
        let p = XdpProgram::attach(&ifc.name, mode, workers)
            .map_err(|e| format!("interfaces[{i}] ({}): {e}", ifc.name))?;
        programs.push(p);
    }
    let options = XdpOptions {
        mode,
        frames: cfg.xdp.frames,
        frame_size: cfg.xdp.frame_size,
        ring: cfg.xdp.ring,
    };

    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let clock = move || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let live = Live::new(counter_names(), cfg.workers.len());
    let cores = cfg.workers.clone();
    let batch = cfg.xdp.batch;
    let event_rate = cfg.events.rate;
    let gw = Gateway::new(
        &dp,
        &live,
        &clock,
        path.to_path_buf(),
        cfg,
        ha_config.as_ref().map(|_| &ha_shared),
        sync_config.as_ref().map(|_| &sync_shared),
        checks.then_some(&health_shared),
    );
    let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
    std::thread::scope(|s| -> Result<(), String> {
        let mut handles = Vec::new();
        for (w, &core) in cores.iter().enumerate() {
            let (dp, programs, options, stop, ready, live) =
                (&dp, &programs, &options, &stop, ready_tx.clone(), &live);
            let handle = std::thread::Builder::new()
                .name(format!("vipgate-w{w}"))
                .spawn_scoped(s, move || {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                        let _ = ready
                            .send(Err(format!("workers.cores[{w}]: cannot pin to CPU {core}")));
                        return;
                    }
                    let queue = u32::try_from(w).unwrap_or(u32::MAX);
                    let ports: Vec<(&XdpProgram, u32)> =
                        programs.iter().map(|p| (p, queue)).collect();
                    let ports = match XdpPorts::open(&ports, options) {
                        Ok(p) => p,
                        Err(e) => {
                            let _ = ready.send(Err(format!(
                                "worker {w}: AF_XDP sockets on queue {queue}: {e}"
                            )));
                            return;
                        }
                    };
                    let bind = match ports.bind_mode() {
                        vipgate_io::BindMode::Copy => "copy",
                        vipgate_io::BindMode::ZeroCopy => "zero-copy",
                    };
                    let info = (0..ports.count())
                        .filter_map(|i| ports.port_name(i))
                        .map(|(name, queue)| PortInfo {
                            interface: name.to_string(),
                            worker: w,
                            queue,
                            bind: bind.to_string(),
                        })
                        .collect();
                    let Some(block) = live.block(w) else {
                        let _ = ready.send(Err(format!("worker {w}: no counter block")));
                        return;
                    };
                    let mut lp = WorkerLoop::new(ports, batch);
                    let mut pipeline = dp.pipeline(u16::try_from(w).unwrap_or(u16::MAX));
                    let _ = ready.send(Ok(info));
                    if w == 0 {
                        lp.announce(&mut pipeline);
                    }
                    let mut idle = 0u32;
                    let mut errors = IoErrors::default();
                    let mut next_publish = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let now = clock();
                        block.stepped(now);
                        match lp.step(&mut pipeline, now) {
                            Ok(0) => {
                                errors.passed();
                                idle += 1;
                                if idle >= SPIN_STEPS {
                                    // Nothing arrived for a while: sleep in the kernel until
                                    // a frame does, rather than spin a core another
                                    // process may need.
                                    let _ = lp.ports_mut().wait(IDLE_WAIT);
                                }
                            }
                            Ok(_) => {
                                idle = 0;
                                errors.passed();
                            }
                            Err(e) => {
                                if let Some(not_logged) = errors.failed(now) {
                                    tracing::warn!(
                                        worker = w,
                                        error = %e,
                                        not_logged,
                                        "kernel wakeup failed (one line per {} s at most; \
                                         not_logged: failures since the last line)",
                                        io_errors::LOG_EVERY_MS / 1000
                                    );
                                }
                                let pause = errors.pause();
                                if !pause.is_zero() {
                                    // Back off while it goes on; frames still wake us.
                                    let _ = lp.ports_mut().wait(pause);
                                }
                            }
                        }
                        if now >= next_publish {
                            next_publish = now + PUBLISH_EVERY_MS;
                            publish(block, &pipeline, &lp);
                        }
                    }
                    publish(block, &pipeline, &lp);
                })
                .map_err(|e| format!("worker {w}: cannot start a thread: {e}"))?;
            handles.push(handle);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..handles.len() {
            match ready_rx.recv() {
                Ok(Ok(info)) => gw
                    .ports
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(info),
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert_with(|| "a worker stopped during start-up".to_string());
                }
            }
        }
        if failure.is_none() {
            let workers = u16::try_from(cores.len()).unwrap_or(u16::MAX);
            if let Some(file) = event_file {
                let (engine, counters, stop) = (dp.engine(), &gw.event_log, &stop);
                let source = match &forwarded {
                    Some(q) => events::Source::Forwarded(q),
                    None => events::Source::Workers(workers),
                };
                std::thread::Builder::new()
                    .name("vipgate-events".into())
                    .spawn_scoped(s, move || {
                        events::run(engine, &source, file, event_rate, counters, stop);
                    })
                    .map_err(|e| format!("events: cannot start a thread: {e}"))?;
            }
            let mut syncer = None;
            if let (Some(cfg), Some(socket)) = (&sync_config, sync_socket) {
                let (dp, shared, clock) = (&dp, &sync_shared, &clock);
                let (forward, dropped) = (forwarded.as_ref(), &gw.event_log.dropped);
                syncer = Some(
                    std::thread::Builder::new()
                        .name("vipgate-sync".into())
                        .spawn_scoped(s, move || {
                            sync::run(dp, cfg, socket, workers, shared, clock, forward, dropped);
                        })
                        .map_err(|e| format!("ha sync: cannot start a thread: {e}"))?,
                );
            }
            let mut checker = None;
            if checks {
                let (gw, shared, clock) = (&gw, &health_shared, &clock);
                checker = Some(
                    std::thread::Builder::new()
                        .name("vipgate-health".into())
                        .spawn_scoped(s, move || health::run(gw, shared, clock))
                        .map_err(|e| format!("health: cannot start a thread: {e}"))?,
                );
            }
            let mut election = None;
            if let Some(ha_cfg) = &ha_config {
                let (dp, shared, live) = (&dp, &ha_shared, &live);
                let inputs = ha::Inputs {
                    clock: &clock,
                    unclaimed: &gw.host_unclaimed,
                    sync: sync_config.as_ref().map(|_| &sync_shared),
                    pools_failed: checks.then_some(&gw.pools_failed),
                };
                election = Some(
                    std::thread::Builder::new()
                        .name("vipgate-ha".into())
                        .spawn_scoped(s, move || {
                            ha::run(dp, ha_cfg, shared, &|| live.looked_ms(), inputs);
                        })
                        .map_err(|e| format!("ha: cannot start a thread: {e}"))?,
                );
            }
            if let Some(server) = &metrics_server {
                let (gw, stop) = (&gw, &stop);
                std::thread::Builder::new()
                    .name("vipgate-metrics".into())
                    .spawn_scoped(s, move || metrics::serve(server, gw, stop))
                    .map_err(|e| format!("metrics: cannot start a thread: {e}"))?;
            }
            let ports: Vec<String> = gw
                .ports
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|p| format!("{}/q{} {}", p.interface, p.queue, p.bind))
                .collect();
            tracing::info!(
                workers = handles.len(),
                mode = ?mode,
                ports = %ports.join(", "),
                control = %socket.path().display(),
                metrics = ?metrics_server.as_ref().map(|m| m.server_addr().to_string()),
                "vipgate ready"
            );
            control_loop(&listener, &gw);
            tracing::info!("stopping");
            // A master leaves the election (priority 0) while the workers still send.
            ha_shared.stop();
            if let Some(h) = election {
                let _ = h.join();
            }
            health_shared.stop();
            if let Some(h) = checker {
                let _ = h.join();
            }
            // Then the peer gets what the workers reported until now.
            sync_shared.stop();
            if let Some(h) = syncer {
                let _ = h.join();
            }
        }
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            let _ = h.join();
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })?;
    // The sockets closed with their workers; closing the links detaches the programs.
    drop(programs);
    drop(socket);
    let mut totals = live.totals();
    totals.extend(gw.control_counters());
    Ok(totals)
}

/// The control thread's work until a stop signal: operators' requests, SIGHUP reloads,
/// the frames/s sample.
fn control_loop(listener: &UnixListener, gw: &Gateway<'_>) {
    let mut next_sample = Instant::now();
    let mut watch = Watch::default();
    while !signal::stop_requested() {
        if signal::take_reload() {
            let _ = gw.reload(false);
        }
        if control::wait_readable(listener, CONTROL_TICK) {
            control::serve_pending(listener, gw);
        }
        // Without health checks the host stack's queue has no reader: a frame that came up
        // anyway goes back to the pool, counted. The election reads its own queue.
        while let Some(f) = gw
            .health
            .is_none()
            .then(|| gw.dp.host().receive(Listener::Stack))
            .flatten()
        {
            gw.host_unclaimed.fetch_add(1, Ordering::Relaxed);
            gw.dp.host().recycle(f);
        }
        if Instant::now() >= next_sample {
            next_sample += Duration::from_secs(1);
            gw.sample_rate();
            watch.check(gw.live);
            log_quota_reports(gw);
        }
    }
}

/// One line per worker and second at most for hosts refused at their PAT quota: which host
/// (the last one), how many refusals.
fn log_quota_reports(gw: &Gateway<'_>) {
    let engine = gw.dp.engine();
    for w in 0..engine.config().workers {
        if let Some((host, refused)) = engine.take_quota_report(w) {
            tracing::warn!(
                worker = w,
                host = %host,
                mappings = engine.mappings_of(host),
                quota = engine.snapshot().config().pat_quota,
                refused,
                "pat: an internal host holds its quota of mappings; its new ones are refused \
                 (drop_pat_quota)"
            );
        }
    }
}

/// Counters an operator must hear about in the log, not only in `stats`: each is logged
/// when it grew, at most once per [`WATCH_EVERY`], with the growth since the last line.
const WATCHED: [(&str, &str); 4] = [
    (
        "pat_ports_exhausted",
        "new connections refused: no free PAT port on their public address",
    ),
    (
        "drop_neighbor_unresolved",
        "frames dropped: their next hop never answered ARP",
    ),
    (
        "drop_table_full",
        "new connections refused: the connection table is full",
    ),
    (
        "events_lost",
        "sync and event-log events lost: a worker's event queue was full",
    ),
];
/// The shortest time between two log lines about one watched counter.
const WATCH_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Watch {
    seen: [u64; WATCHED.len()],
    logged: [Option<Instant>; WATCHED.len()],
}

impl Watch {
    fn check(&mut self, live: &Live) {
        let now = Instant::now();
        for ((name, what), (seen, logged)) in WATCHED
            .iter()
            .zip(self.seen.iter_mut().zip(self.logged.iter_mut()))
        {
            let total = live.total(name);
            if total <= *seen || logged.is_some_and(|t| now.duration_since(t) < WATCH_EVERY) {
                continue;
            }
            tracing::warn!(counter = name, more = total - *seen, total, "{what}");
            *seen = total;
            *logged = Some(now);
        }
    }
}
