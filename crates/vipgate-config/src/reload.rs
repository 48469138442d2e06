//! What a hot reload may change: [`Config::structural_change`].

use vipgate_nat::policy::NatConfig;

use crate::{Config, Control, Events, Interface, Log, Metrics, Neighbors, Xdp};

impl Config {
    /// The key path of the first structural key whose value differs between `self` (the
    /// running configuration) and `new` (the one a reload read), or `None` when only policy
    /// differs and `new` can be applied without a restart.
    ///
    /// This is the one place that classifies keys.
    ///
    /// **Structural** (fixed at start: sockets, memory, threads, files): `workers.cores`;
    /// every `xdp.*` key; `interfaces` (reported as `interfaces` when their number differs,
    /// else as the first differing field, `interfaces[i].name`, `.side`, `.address`,
    /// `.gateway` or `.routes`); `nat.capacity`, `nat.pat_ports`, `nat.frag_entries`,
    /// `nat.frag_timeout`, `nat.frag_hold`; every `neighbors.*` key; `control.socket`;
    /// `metrics.listen`; every `events.*` key; every `log.*` key; `ha` (reported as
    /// `ha.sync` when the sync section differs, else as `ha`).
    ///
    /// **Policy** (free to change by reload): `nat.vips`, `nat.dnat`, `nat.pools`, `nat.pat`,
    /// every `nat.timeouts.*` key, `nat.filtering`, `icmp.rate`, every `nat.pools[].check`.
    ///
    /// Keys are compared in that order, so the answer is the same for the same two files.
    ///
    /// Every field is named below, policy ones with `_`: a field added to [`Config`] or to one
    /// of its parts does not compile until it is classified here.
    pub fn structural_change(&self, new: &Config) -> Option<String> {
        let Config {
            workers,
            xdp,
            interfaces,
            nat,
            neighbors,
            icmp: _,
            log,
            control,
            metrics,
            events,
            ha,
            // The health thread follows them.
            checks: _,
            // Compiled from nat.
            policy: _,
        } = self;
        let Xdp {
            mode,
            batch,
            frames,
            frame_size,
            ring,
        } = xdp;
        let NatConfig {
            capacity,
            timeouts: _,
            // Follows workers.cores.
            workers: _,
            port_lo,
            port_hi,
            filtering: _,
            vips: _,
            dnat: _,
            pools: _,
            pat: _,
            frag_entries,
            frag_timeout,
            frag_hold,
            // Not read from the file.
            event_queue: _,
            // Compiled into the policy: changes with a reload.
            source_check: _,
            pat_quota: _,
        } = nat;
        let Neighbors {
            capacity: neighbor_capacity,
            reachable_secs,
            retry_ms,
            retries,
            hold,
        } = neighbors;
        let Log { level, format } = log;
        let Control { socket } = control;
        let Metrics { listen } = metrics;
        let Events { file, rate, queue } = events;

        let n = new;
        let changed: [(&str, bool); 23] = [
            ("workers.cores", *workers != n.workers),
            ("xdp.mode", *mode != n.xdp.mode),
            ("xdp.batch", *batch != n.xdp.batch),
            ("xdp.frames", *frames != n.xdp.frames),
            ("xdp.frame_size", *frame_size != n.xdp.frame_size),
            ("xdp.ring", *ring != n.xdp.ring),
            ("nat.capacity", *capacity != n.nat.capacity),
            (
                "nat.pat_ports",
                (*port_lo, *port_hi) != (n.nat.port_lo, n.nat.port_hi),
            ),
            ("nat.frag_entries", *frag_entries != n.nat.frag_entries),
            ("nat.frag_timeout", *frag_timeout != n.nat.frag_timeout),
            ("nat.frag_hold", *frag_hold != n.nat.frag_hold),
            (
                "neighbors.capacity",
                *neighbor_capacity != n.neighbors.capacity,
            ),
            (
                "neighbors.reachable",
                *reachable_secs != n.neighbors.reachable_secs,
            ),
            ("neighbors.retry_ms", *retry_ms != n.neighbors.retry_ms),
            ("neighbors.retries", *retries != n.neighbors.retries),
            ("neighbors.hold", *hold != n.neighbors.hold),
            ("control.socket", *socket != n.control.socket),
            ("metrics.listen", *listen != n.metrics.listen),
            ("events.file", *file != n.events.file),
            ("events.rate", *rate != n.events.rate),
            ("events.queue", *queue != n.events.queue),
            ("log.level", *level != n.log.level),
            ("log.format", *format != n.log.format),
        ];
        // The interfaces come between xdp.* and nat.*, in file order.
        let (before, after) = changed.split_at(6);
        let first = |keys: &[(&str, bool)]| {
            keys.iter()
                .find(|(_, differs)| *differs)
                .map(|(key, _)| (*key).to_string())
        };
        let ha_change = || {
            if *ha == n.ha {
                None
            } else if ha.as_ref().map(|h| &h.sync) != n.ha.as_ref().map(|h| &h.sync) {
                Some("ha.sync".to_string())
            } else {
                Some("ha".to_string())
            }
        };
        first(before)
            .or_else(|| interfaces_change(interfaces, &n.interfaces))
            .or_else(|| first(after))
            .or_else(ha_change)
    }
}

/// `interfaces` when their number differs, else the first differing field.
fn interfaces_change(a: &[Interface], b: &[Interface]) -> Option<String> {
    if a.len() != b.len() {
        return Some("interfaces".to_string());
    }
    a.iter().zip(b).enumerate().find_map(|(i, (x, y))| {
        let Interface {
            name,
            side,
            addr,
            net,
            gateway,
            routes,
            virtual_addrs,
            // In the NAT policy: changes with a reload.
            source_check: _,
        } = x;
        let field = if *name != y.name {
            "name"
        } else if *side != y.side {
            "side"
        } else if (*addr, *net) != (y.addr, y.net) {
            "address"
        } else if *gateway != y.gateway {
            "gateway"
        } else if *routes != y.routes {
            "routes"
        } else if *virtual_addrs != y.virtual_addrs {
            "virtual_addresses"
        } else {
            return None;
        };
        Some(format!("interfaces[{i}].{field}"))
    })
}
