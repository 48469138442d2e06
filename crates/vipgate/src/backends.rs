//! Pool backends at run time: which are drained by an operator (and, with health checks,
//! which are down), and the policy the workers run with them taken out. A backend out of
//! service gets weight 0 in the published policy, so Maglev gives it no new connection; its
//! connections keep their backend (they name it by its stable id) until they end.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use vipgate_nat::policy::{backend_id, NatConfig};

/// Backends taken out of service, by [`backend_id`].
#[derive(Debug, Default)]
pub(crate) struct BackendStates {
    drained: BTreeSet<u32>,
    /// Failed their health checks.
    down: BTreeSet<u32>,
}

/// A backend named by an operator: `pool` and `addr:port` (or `addr` when it is the only
/// backend of the pool on that address).
pub(crate) fn find(nat: &NatConfig, pool: &str, backend: &str) -> Result<u32, String> {
    let p = nat.pools.iter().find(|p| p.name == pool).ok_or_else(|| {
        let names: Vec<&str> = nat.pools.iter().map(|p| p.name.as_str()).collect();
        format!("no pool named {pool:?}; pools: {}", names.join(", "))
    })?;
    let matches: Vec<u32> = p
        .backends
        .iter()
        .filter(|b| backend == format!("{}:{}", b.addr, b.port) || backend == b.addr.to_string())
        .map(|b| backend_id(&p.name, b.addr, b.port))
        .collect();
    match matches.as_slice() {
        [id] => Ok(*id),
        [] => {
            let names: Vec<String> = p
                .backends
                .iter()
                .map(|b| format!("{}:{}", b.addr, b.port))
                .collect();
            Err(format!(
                "pool {pool:?} has no backend {backend:?}; its backends: {}",
                names.join(", ")
            ))
        }
        _ => Err(format!(
            "{backend:?} names several backends of pool {pool:?}; give address:port"
        )),
    }
}

impl BackendStates {
    /// Takes backend `id` out of new-connection assignment (`true`) or puts it back; whether
    /// that changed anything.
    pub(crate) fn set_drained(&mut self, id: u32, drained: bool) -> bool {
        if drained {
            self.drained.insert(id)
        } else {
            self.drained.remove(&id)
        }
    }

    /// Whether backend `id` is drained.
    pub(crate) fn is_drained(&self, id: u32) -> bool {
        self.drained.contains(&id)
    }

    /// The backends the health checks find down now: whether that changed anything, and
    /// those newly down.
    pub(crate) fn set_down(&mut self, down: BTreeSet<u32>) -> (bool, BTreeSet<u32>) {
        let new: BTreeSet<u32> = down.difference(&self.down).copied().collect();
        let changed = down != self.down;
        self.down = down;
        (changed, new)
    }

    /// Whether backend `id` is out of service: drained, or down.
    fn is_out(&self, id: u32) -> bool {
        self.drained.contains(&id) || self.down.contains(&id)
    }

    /// Forgets backends `nat` no longer has (after a reload).
    pub(crate) fn retain(&mut self, nat: &NatConfig) {
        let ids: BTreeSet<u32> = nat
            .pools
            .iter()
            .flat_map(|p| {
                p.backends
                    .iter()
                    .map(|b| backend_id(&p.name, b.addr, b.port))
            })
            .collect();
        self.drained.retain(|id| ids.contains(id));
        self.down.retain(|id| ids.contains(id));
    }

    /// `nat` with every backend out of service at weight 0; `None` when none is, so the
    /// policy compiled with the file can be published as it is.
    pub(crate) fn effective(&self, nat: &NatConfig) -> Option<NatConfig> {
        if self.drained.is_empty() && self.down.is_empty() {
            return None;
        }
        let mut out = nat.clone();
        for p in &mut out.pools {
            for b in &mut p.backends {
                if self.is_out(backend_id(&p.name, b.addr, b.port)) {
                    b.weight = 0;
                }
            }
        }
        Some(out)
    }

    /// `vipgate backends`: every backend of every pool of `nat` (the file's), with its
    /// state and live connections (`conns_of` by id).
    pub(crate) fn list(
        &self,
        nat: &NatConfig,
        conns_of: impl Fn(u32) -> u64,
        check_of: impl Fn(u32) -> Option<Value>,
    ) -> Value {
        let rows: Vec<Value> = nat
            .pools
            .iter()
            .flat_map(|p| p.backends.iter().map(move |b| (p, b)))
            .map(|(p, b)| {
                let id = backend_id(&p.name, b.addr, b.port);
                let drained = self.is_drained(id);
                json!({
                    "pool": p.name,
                    "vip": format!("{}:{}", p.vip, p.port),
                    "backend": format!("{}:{}", b.addr, b.port),
                    "id": id,
                    "weight": b.weight,
                    "in_service": !self.is_out(id) && b.weight > 0,
                    "drained": drained,
                    "health": check_of(id).map_or(Value::from("unchecked"), |c| c.get("health").cloned().unwrap_or_default()),
                    "check": check_of(id),
                    "conns": conns_of(id),
                })
            })
            .collect();
        json!({ "backends": rows })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::net::Ipv4Addr;

    use vipgate_nat::policy::{Backend, Pool};
    use vipgate_nat::Proto;

    use super::*;

    fn nat() -> NatConfig {
        let backend = |last, port| Backend {
            addr: Ipv4Addr::new(198, 18, 0, last),
            port,
            weight: 1,
        };
        NatConfig {
            pools: vec![Pool {
                name: "web".into(),
                vip: Ipv4Addr::new(203, 0, 113, 10),
                proto: Proto::Tcp,
                port: 80,
                backends: vec![backend(10, 80), backend(11, 80), backend(11, 8080)],
                table_size: 65537,
                when_empty: Default::default(),
                persistence: Default::default(),
                reset_on_down: false,
            }],
            ..NatConfig::default()
        }
    }

    #[test]
    fn operators_name_backends_and_drained_ones_get_weight_zero() {
        let nat = nat();
        let id = find(&nat, "web", "198.18.0.10").unwrap();
        assert_eq!(find(&nat, "web", "198.18.0.10:80").unwrap(), id);
        assert!(find(&nat, "web", "198.18.0.11")
            .unwrap_err()
            .contains("several"));
        assert!(find(&nat, "api", "198.18.0.10")
            .unwrap_err()
            .contains("pools: web"));
        assert!(find(&nat, "web", "198.18.0.12")
            .unwrap_err()
            .contains("198.18.0.11:8080"));

        let mut s = BackendStates::default();
        assert!(
            s.effective(&nat).is_none(),
            "nothing drained: the file's policy"
        );
        assert!(s.set_drained(id, true) && !s.set_drained(id, true));
        let eff = s.effective(&nat).unwrap();
        let weights: Vec<u32> = eff.pools[0].backends.iter().map(|b| b.weight).collect();
        assert_eq!(weights, [0, 1, 1]);
        let list = s.list(&nat, |_| 7, |_| None);
        assert_eq!(list["backends"][0]["drained"], true);
        assert_eq!(list["backends"][0]["in_service"], false);
        assert_eq!(list["backends"][1]["conns"], 7);
        let mut smaller = nat.clone();
        smaller.pools[0].backends.remove(0);
        s.retain(&smaller);
        assert!(
            !s.is_drained(id),
            "a backend removed by reload is forgotten"
        );
        let other = find(&nat, "web", "198.18.0.11:8080").unwrap();
        assert_eq!(s.set_down([other].into()), (true, [other].into()));
        assert_eq!(s.set_down([other].into()), (false, BTreeSet::new()));
        let eff = s.effective(&nat).unwrap();
        assert_eq!(eff.pools[0].backends[2].weight, 0, "down: out of service");
        assert_eq!(s.set_down(BTreeSet::new()), (true, BTreeSet::new()));
        assert!(s.effective(&nat).is_none());
    }
}
