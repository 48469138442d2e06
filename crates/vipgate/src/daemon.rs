//! `vipgate run`: attach XDP to every data port, start one pinned worker per configured
//! core, and keep the control thread until SIGINT or SIGTERM.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vipgate_config::{Config, XdpMode};
use vipgate_dataplane::{Dataplane, DataplaneConfig, Interface, NeighborConfig, Route};
use vipgate_io::{Ports, XdpOptions, XdpPorts, XdpProgram};
use vipgate_nat::policy::Ipv4Net;

use crate::signal;
use crate::worker::WorkerLoop;

/// How often the control thread looks at the stop flag.
const CONTROL_TICK: Duration = Duration::from_millis(50);
/// How long an idle worker sleeps in the kernel waiting for frames.
const IDLE_WAIT: Duration = Duration::from_millis(1);
/// Empty steps in a row before a worker waits instead of spinning.
const SPIN_STEPS: u32 = 256;

/// Counters by name, summed over workers and ports, in a stable order.
pub(crate) type Totals = Vec<(String, u64)>;

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
    })
}

fn check_cores(cfg: &Config) -> Result<(), String> {
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
type Ready = Result<(), String>;

/// Runs the gateway until a stop signal; returns the final counters.
///
/// # Errors
/// One line saying what failed at start-up.
pub(crate) fn run(cfg: &Config) -> Result<Totals, String> {
    check_cores(cfg)?;
    let dp_config = dataplane_config(cfg)?;
    let dp = Dataplane::new(dp_config, cfg.nat.clone()).map_err(|e| format!("nat: {e}"))?;
    let mode = match cfg.xdp.mode {
        XdpMode::Skb => vipgate_io::XdpMode::Skb,
        XdpMode::Drv => vipgate_io::XdpMode::Drv,
    };
    let workers =
        u32::try_from(cfg.workers.len()).map_err(|_| "workers.cores: too many".to_string())?;
    let mut programs = Vec::new();
    for (i, ifc) in cfg.interfaces.iter().enumerate() {
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
    signal::install().map_err(|e| format!("signal handlers: {e}"))?;

    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let clock = || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX);
    let (ready_tx, ready_rx) = mpsc::channel::<Ready>();
    let totals = std::thread::scope(|s| -> Result<Totals, String> {
        let mut handles = Vec::new();
        for (w, &core) in cfg.workers.iter().enumerate() {
            let (dp, programs, options, stop, ready) =
                (&dp, &programs, &options, &stop, ready_tx.clone());
            let batch = cfg.xdp.batch;
            let handle = std::thread::Builder::new()
                .name(format!("vipgate-w{w}"))
                .spawn_scoped(s, move || -> Option<Totals> {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
                        let _ = ready
                            .send(Err(format!("workers.cores[{w}]: cannot pin to CPU {core}")));
                        return None;
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
                            return None;
                        }
                    };
                    let mut lp = WorkerLoop::new(ports, batch);
                    let mut pipeline = dp.pipeline(u16::try_from(w).unwrap_or(u16::MAX));
                    let _ = ready.send(Ok(()));
                    if w == 0 {
                        lp.announce(&mut pipeline);
                    }
                    let mut idle = 0u32;
                    while !stop.load(Ordering::Relaxed) {
                        match lp.step(&mut pipeline, clock()) {
                            Ok(0) => {
                                idle += 1;
                                if idle >= SPIN_STEPS {
                                    // Nothing arrived for a while: sleep in the kernel until
                                    // a frame does, rather than spin a core another
                                    // process may need.
                                    let _ = lp.ports_mut().wait(IDLE_WAIT);
                                }
                            }
                            Ok(_) => idle = 0,
                            Err(e) => {
                                tracing::warn!(worker = w, error = %e, "kernel wakeup failed");
                            }
                        }
                    }
                    let mut totals = worker_totals(&pipeline, &lp);
                    add_totals(&mut totals, &kernel_totals(lp.ports()));
                    Some(totals)
                })
                .map_err(|e| format!("worker {w}: cannot start a thread: {e}"))?;
            handles.push(handle);
        }
        drop(ready_tx);
        let mut failure = None;
        for _ in 0..handles.len() {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    failure.get_or_insert(e);
                }
                Err(_) => {
                    failure.get_or_insert_with(|| "a worker stopped during start-up".to_string());
                }
            }
        }
        if failure.is_none() {
            tracing::info!(
                workers = handles.len(),
                interfaces = cfg.interfaces.len(),
                "vipgate ready"
            );
            while !signal::stop_requested() {
                std::thread::sleep(CONTROL_TICK);
            }
            tracing::info!("stopping");
        }
        stop.store(true, Ordering::Relaxed);
        let mut totals: Totals = Vec::new();
        for h in handles {
            if let Ok(Some(t)) = h.join() {
                add_totals(&mut totals, &t);
            }
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(totals),
        }
    })?;
    // The sockets closed with their workers; closing the links detaches the programs.
    drop(programs);
    Ok(totals)
}

fn worker_totals<P: vipgate_io::Ports>(
    p: &vipgate_dataplane::Pipeline<'_>,
    lp: &WorkerLoop<P>,
) -> Totals {
    let mut t: Totals = p
        .named_counters()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect();
    let ports = lp.ports();
    let mut port = vipgate_io::PortStats::default();
    for i in 0..ports.count() {
        let s = ports.stats(i);
        port.rx += s.rx;
        port.tx += s.tx;
        port.tx_dropped += s.tx_dropped;
        port.alloc_failed += s.alloc_failed;
    }
    t.push(("port_rx".into(), port.rx));
    t.push(("port_tx".into(), port.tx));
    t.push(("port_tx_dropped".into(), port.tx_dropped));
    t.push(("port_alloc_failed".into(), port.alloc_failed));
    t.push(("tx_no_buffer".into(), lp.counters.tx_no_buffer));
    t
}

/// The kernel's own drop counters of a worker's sockets, summed over its ports: frames the
/// kernel could not hand to the worker (its RX ring full, no free buffer in the fill ring)
/// never reach the pipeline's counters.
fn kernel_totals(ports: &XdpPorts) -> Totals {
    let mut sum = vipgate_io::KernelStats::default();
    for i in 0..ports.count() {
        match ports.kernel_stats(i) {
            Ok(k) => {
                sum.rx_dropped += k.rx_dropped;
                sum.rx_ring_full += k.rx_ring_full;
                sum.rx_fill_ring_empty += k.rx_fill_ring_empty;
                sum.tx_invalid_descs += k.tx_invalid_descs;
            }
            Err(e) => tracing::warn!(port = i, error = %e, "cannot read the socket's statistics"),
        }
    }
    vec![
        ("xsk_rx_dropped".into(), sum.rx_dropped),
        ("xsk_rx_ring_full".into(), sum.rx_ring_full),
        ("xsk_rx_fill_ring_empty".into(), sum.rx_fill_ring_empty),
        ("xsk_tx_invalid_descs".into(), sum.tx_invalid_descs),
    ]
}

/// Adds `more` into `totals` by name, keeping first-seen order.
pub(crate) fn add_totals(totals: &mut Totals, more: &Totals) {
    for (name, v) in more {
        match totals.iter_mut().find(|(n, _)| n == name) {
            Some((_, total)) => *total += v,
            None => totals.push((name.clone(), *v)),
        }
    }
}
