//! Prometheus metrics over HTTP (`metrics.listen`): every counter as
//! `vipgate_<counter>_total{worker="N"}` under the same name the CLI and the exit summary
//! use, and gauges for the live state. Encoded by `prometheus-client`, served by
//! `tiny_http` on a thread of its own, so a slow scrape never delays the control thread.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::gateway::Gateway;

type Labels = Vec<(String, String)>;

/// The OpenMetrics text format, which Prometheus reads.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Binds the metrics address (so a bad address fails start-up, not later).
///
/// # Errors
/// One line naming the address.
pub(crate) fn bind(addr: SocketAddr) -> Result<tiny_http::Server, String> {
    tiny_http::Server::http(addr).map_err(|e| format!("metrics.listen: {addr}: {e}"))
}

/// Answers scrapes until `stop` is set.
pub(crate) fn serve(server: &tiny_http::Server, gw: &Gateway<'_>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let req = match server.recv_timeout(Duration::from_millis(200)) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "metrics server");
                continue;
            }
        };
        let response = match (req.method(), req.url()) {
            (tiny_http::Method::Get, "/metrics") => {
                let mut r = tiny_http::Response::from_string(render(gw));
                if let Ok(h) = tiny_http::Header::from_bytes(&b"Content-Type"[..], CONTENT_TYPE) {
                    r = r.with_header(h);
                }
                r
            }
            (tiny_http::Method::Get, "/") => {
                tiny_http::Response::from_string("vipgate: metrics at /metrics\n")
            }
            _ => tiny_http::Response::from_string("not found\n").with_status_code(404),
        };
        if let Err(e) = req.respond(response) {
            tracing::debug!(error = %e, "metrics client went away");
        }
    }
}

fn label(k: &str, v: impl ToString) -> (String, String) {
    (k.to_string(), v.to_string())
}

/// The exposition text.
pub(crate) fn render(gw: &Gateway<'_>) -> String {
    let mut reg = Registry::with_prefix("vipgate");
    let per_worker: Vec<Vec<(&'static str, u64)>> =
        (0..gw.live.workers()).map(|w| gw.live.worker(w)).collect();
    for (i, name) in gw.live.names().iter().enumerate() {
        let fam = Family::<Labels, Counter>::default();
        for (w, counters) in per_worker.iter().enumerate() {
            let v = counters.get(i).map_or(0, |(_, v)| *v);
            fam.get_or_create(&vec![label("worker", w)]).inc_by(v);
        }
        reg.register(*name, format!("counter {name}, per worker"), fam);
    }
    // The drop counters once more as one family, so a dashboard can sum or graph them by
    // reason; the reason is the counter's own name.
    let drops = Family::<Labels, Counter>::default();
    for (i, name) in gw.live.names().iter().enumerate() {
        if !name.starts_with("drop_") {
            continue;
        }
        for (w, counters) in per_worker.iter().enumerate() {
            let v = counters.get(i).map_or(0, |(_, v)| *v);
            drops
                .get_or_create(&vec![label("worker", w), label("reason", name)])
                .inc_by(v);
        }
    }
    reg.register("drops", "frames dropped, by worker and reason", drops);
    for (name, v) in gw.control_counters() {
        let c = Counter::<u64>::default();
        c.inc_by(v);
        reg.register(name, format!("counter {name}, of the control thread"), c);
    }

    let gauge = |v: u64| {
        let g = Gauge::<i64>::default();
        g.set(i64::try_from(v).unwrap_or(i64::MAX));
        g
    };
    let g = gw.gauges();
    let table = gw.dp.engine().table();
    reg.register("conns", "live connections", gauge(g.conns));
    reg.register("pat_mappings", "live PAT mappings", gauge(g.mappings));
    reg.register(
        "table_entries",
        "connection table entries in use (connections and mappings)",
        gauge(u64::from(table.len())),
    );
    reg.register(
        "table_capacity",
        "connection table capacity",
        gauge(u64::from(table.capacity())),
    );
    let per_vip = Family::<Labels, Gauge<i64>>::default();
    for (vip, n) in &g.per_vip {
        per_vip
            .get_or_create(&vec![label("vip", vip)])
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    reg.register("vip_conns", "live connections per public address", per_vip);
    let per_backend = Family::<Labels, Gauge<i64>>::default();
    let in_service = Family::<Labels, Gauge<i64>>::default();
    let health = Family::<Labels, Gauge<i64>>::default();
    let latency = Family::<Labels, Gauge<i64>>::default();
    for (pool, backend, id, weight) in gw.backends() {
        let n = g.per_backend.get(&id).copied().unwrap_or(0);
        let labels = vec![label("pool", pool), label("backend", backend)];
        per_backend
            .get_or_create(&labels)
            .set(i64::try_from(n).unwrap_or(i64::MAX));
        in_service.get_or_create(&labels).set(i64::from(weight > 0));
        if let Some(check) = gw.health.and_then(|h| h.of(id)) {
            let up = match check.get("health").and_then(|h| h.as_str()) {
                Some("up") => 1,
                Some("down") => 0,
                _ => -1,
            };
            health.get_or_create(&labels).set(up);
            if let Some(ms) = check.get("last_ms").and_then(serde_json::Value::as_u64) {
                latency
                    .get_or_create(&labels)
                    .set(i64::try_from(ms).unwrap_or(i64::MAX));
            }
        }
    }
    reg.register(
        "backend_health",
        "a checked backend's health: 1 up, 0 down, -1 not decided yet",
        health,
    );
    reg.register(
        "backend_check_milliseconds",
        "how long a checked backend's last probe took",
        latency,
    );
    reg.register(
        "backend_in_service",
        "1 while a pool backend gets new connections (weight above 0, not drained)",
        in_service,
    );
    reg.register(
        "backend_conns",
        "live connections per pool backend",
        per_backend,
    );
    let pat = Family::<Labels, Gauge<i64>>::default();
    for (addr, proto, n) in gw.pat_ports() {
        pat.get_or_create(&vec![label("addr", addr), label("proto", proto)])
            .set(i64::from(n));
    }
    reg.register(
        "pat_ports_in_use",
        "PAT ports in use per public address",
        pat,
    );
    reg.register(
        "neighbors",
        "neighbor (ARP) entries",
        gauge(gw.neighbors() as u64),
    );
    reg.register(
        "active",
        "1 while this box is active, 0 while standby",
        gauge(u64::from(gw.dp.is_active())),
    );
    if let Some(h) = gw.ha {
        reg.register(
            "ha_role",
            "the election's role: 0 init (or left), 1 backup, 2 master",
            gauge(h.role_number()),
        );
        reg.register(
            "ha_priority",
            "the priority this box advertises now (configured less tracking)",
            gauge(h.priority()),
        );
    }
    if let Some(s) = gw.sync {
        reg.register(
            "sync_unacked_messages",
            "sync messages the peer has not acknowledged yet",
            gauge(s.lag_messages()),
        );
        reg.register(
            "sync_peer_alive",
            "1 while the sync peer is heard within its dead interval",
            gauge(u64::from(s.peer_alive())),
        );
    }
    reg.register(
        "policy_generation",
        "generation of the policy in force (1 at start, +1 per reload)",
        gauge(gw.dp.engine().snapshot().generation()),
    );
    reg.register(
        "uptime_seconds",
        "seconds since start",
        gauge(gw.started.elapsed().as_secs()),
    );
    let mut out = String::new();
    if let Err(e) = encode(&mut out, &reg) {
        tracing::warn!(error = %e, "encoding metrics");
    }
    out
}
