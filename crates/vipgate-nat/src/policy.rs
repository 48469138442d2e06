//! NAT policy: which new flows get translated, and to what.
//!
//! - DNAT rules: a VIP, protocol and port (or port range) to one internal host and port.
//! - Pools: a VIP, protocol and port to several weighted backends chosen by Maglev.
//! - PAT rules: internal prefixes whose outbound flows leave behind one or more public
//!   addresses, with ports from the [`crate::ports::PortAllocator`].
//!
//! [`NatConfig`] is the plain description; [`Policy`] is its checked, compiled form used on
//! the miss path.

use std::fmt;
use std::net::Ipv4Addr;

use hashbrown::{HashMap, HashSet};

use crate::counters::DropReason;
use crate::maglev::{Maglev, MaglevError};
use crate::timeouts::Timeouts;
use crate::{Proto, Side};

/// An IPv4 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    /// Network address.
    pub addr: Ipv4Addr,
    /// Prefix length, 0 to 32.
    pub len: u8,
}

impl Ipv4Net {
    /// A prefix; `None` if `len` > 32.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Ipv4Net> {
        (len <= 32).then_some(Ipv4Net { addr, len })
    }

    fn mask(&self) -> u32 {
        u32::MAX
            .checked_shl(32 - u32::from(self.len.min(32)))
            .unwrap_or(0)
    }

    /// True if `a` lies in the prefix.
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        (u32::from(a) ^ u32::from(self.addr)) & self.mask() == 0
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Inbound filtering of PAT mappings (RFC 4787 section 5, RFC 5382 section 4.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Filtering {
    /// Any external endpoint may reach an internal host through its mapping.
    EndpointIndependent,
    /// Only endpoints the internal host has sent to may reach it (the default).
    #[default]
    AddressAndPortDependent,
}

/// A static DNAT rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DnatRule {
    /// The public address.
    pub vip: Ipv4Addr,
    /// TCP or UDP.
    pub proto: Proto,
    /// First port of the range.
    pub port_lo: u16,
    /// Last port of the range (equal to `port_lo` for one port).
    pub port_hi: u16,
    /// The internal host.
    pub to: Ipv4Addr,
    /// The internal port for `port_lo` (the range maps onto `to_port..`); `None` keeps ports.
    pub to_port: Option<u16>,
}

/// A backend of a pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Address.
    pub addr: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Relative weight; 0 takes it out of service.
    pub weight: u32,
}

/// A load-balanced service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    /// Name, for logs and errors.
    pub name: String,
    /// The public address.
    pub vip: Ipv4Addr,
    /// TCP or UDP.
    pub proto: Proto,
    /// The public port.
    pub port: u16,
    /// Backends.
    pub backends: Vec<Backend>,
    /// Maglev table size (prime; [`Maglev::DEFAULT_SIZE`] unless there is a reason).
    pub table_size: u32,
    /// What a new connection gets while no backend is in service.
    pub when_empty: EmptyPool,
    /// What picks a new connection's backend.
    pub persistence: Persistence,
    /// Whether the connections of a backend that fails its health checks are removed (their
    /// clients then get a RST at their next segment) instead of kept.
    pub reset_on_down: bool,
}

/// What Maglev hashes to pick a new connection's backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Persistence {
    /// The client's address and port (and the VIP's): each connection on its own, the most
    /// even spread.
    #[default]
    SourceAddressPort,
    /// The client's address alone: every connection of one client to the same backend
    /// (sessions kept on a backend, at the price of a coarser spread).
    SourceAddress,
}

/// What a new connection to a pool without a backend in service gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EmptyPool {
    /// An immediate refusal: a TCP RST, or an ICMP port unreachable for UDP, from the VIP,
    /// so clients fail at once instead of timing out.
    #[default]
    Reject,
    /// Nothing: the packet is dropped (counted).
    Drop,
}

/// A PAT rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PatRule {
    /// Internal prefixes this rule covers.
    pub from: Vec<Ipv4Net>,
    /// Public addresses their flows leave behind (one internal host always gets the same).
    pub to: Vec<Ipv4Addr>,
}

/// Everything the engine needs to run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatConfig {
    /// Connection table capacity (PAT mappings included).
    pub capacity: u32,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Number of workers (threads calling the engine).
    pub workers: u16,
    /// First PAT port.
    pub port_lo: u16,
    /// Last PAT port.
    pub port_hi: u16,
    /// Inbound filtering of PAT mappings.
    pub filtering: Filtering,
    /// The VIPs: addresses the gateway answers for (echo, and with the data plane, ARP).
    pub vips: Vec<Ipv4Addr>,
    /// Static DNAT rules.
    pub dnat: Vec<DnatRule>,
    /// Load-balanced pools.
    pub pools: Vec<Pool>,
    /// PAT rules, first match wins.
    pub pat: Vec<PatRule>,
    /// Fragment cache entries per worker.
    pub frag_entries: usize,
    /// Seconds a fragment cache entry lives, and a held out-of-order fragment waits.
    pub frag_timeout: u32,
    /// Out-of-order fragments each worker can hold for their first fragment.
    pub frag_hold: usize,
    /// Capacity of each worker's state-sync event queue; 0 turns events off.
    pub event_queue: usize,
    /// Which sources each side may send from (BCP 38/84).
    pub source_check: SourceCheck,
    /// PAT mappings one internal host may hold at once (RFC 6888 REQ-4); 0: no limit.
    pub pat_quota: u32,
}

/// Anti-spoofing (BCP 38/84): which sources may open a flow or send an ICMP error, per side.
/// Off by default in the engine; the daemon's configuration turns it on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SourceCheck {
    /// On the public side, refuse sources inside ([`SourceCheck::inside`]) and the gateway's
    /// own public addresses (VIPs, PAT addresses).
    pub public: bool,
    /// On the private side, refuse sources outside [`SourceCheck::inside`].
    pub private: bool,
    /// The prefixes the private side serves: its subnets and the routes through it
    /// (network, prefix length).
    pub inside: Vec<(Ipv4Addr, u8)>,
}

impl Default for NatConfig {
    fn default() -> Self {
        NatConfig {
            capacity: 1 << 20,
            timeouts: Timeouts::default(),
            workers: 1,
            port_lo: crate::ports::DEFAULT_LO,
            port_hi: crate::ports::DEFAULT_HI,
            filtering: Filtering::default(),
            vips: Vec::new(),
            dnat: Vec::new(),
            pools: Vec::new(),
            pat: Vec::new(),
            frag_entries: 1024,
            frag_timeout: 30,
            frag_hold: 16,
            event_queue: 0,
            source_check: SourceCheck::default(),
            pat_quota: 0,
        }
    }
}

/// A configuration the engine refuses, with the place and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyError {
    /// A DNAT rule or pool uses an address that is not among the VIPs.
    NotAVip {
        /// Which rule, e.g. `dnat[2]` or `pools[0]`.
        at: String,
        /// The address.
        addr: Ipv4Addr,
    },
    /// ICMP in a DNAT rule or pool (only TCP and UDP are port-translated).
    BadProto {
        /// Which rule.
        at: String,
    },
    /// Port 0 or a range whose end is below its start or whose target overflows.
    BadPorts {
        /// Which rule.
        at: String,
        /// What is wrong.
        why: String,
    },
    /// Two rules cover the same VIP, protocol and port.
    Overlap {
        /// One rule.
        at: String,
        /// The other.
        other: String,
        /// A port both cover.
        port: u16,
    },
    /// A pool without backends, or whose Maglev table cannot be built.
    BadPool {
        /// Which pool.
        at: String,
        /// The Maglev error.
        why: MaglevError,
    },
    /// A PAT rule without prefixes or without public addresses.
    EmptyPat {
        /// Which rule.
        at: String,
    },
    /// Zero workers.
    NoWorkers,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PolicyError::NotAVip { at, addr } => {
                write!(
                    f,
                    "{at}: {addr} is not one of the configured vips; add it to vips"
                )
            }
            PolicyError::BadProto { at } => {
                write!(f, "{at}: protocol must be tcp or udp")
            }
            PolicyError::BadPorts { at, why } => write!(f, "{at}: {why}"),
            PolicyError::Overlap { at, other, port } => {
                write!(f, "{at}: port {port} is already covered by {other}")
            }
            PolicyError::BadPool { at, why } => write!(f, "{at}: {why}"),
            PolicyError::EmptyPat { at } => {
                write!(
                    f,
                    "{at}: needs at least one prefix in from and one address in to"
                )
            }
            PolicyError::NoWorkers => write!(f, "workers: must be at least 1"),
        }
    }
}

impl std::error::Error for PolicyError {}

/// Where a DNAT'd flow goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// One host and port.
    Host(Ipv4Addr, u16),
    /// A pool, by index.
    Pool(u16),
}

#[derive(Clone, Copy, Debug)]
struct RangeRule {
    vip: u32,
    proto: Proto,
    lo: u16,
    hi: u16,
    to: Ipv4Addr,
    to_port: Option<u16>,
}

#[derive(Debug)]
struct CompiledPool {
    when_empty: EmptyPool,
    persistence: Persistence,
    backends: Vec<Backend>,
    /// [`backend_id`] of each backend, in `backends` order.
    ids: Vec<u32>,
    maglev: Maglev,
}

/// The stable identity of a pool's backend: a hash of the pool's name and the backend's
/// address and port. Connections keep it, so a reload that reorders, adds or removes pools
/// and backends never makes a connection refer to another backend; and every box with the
/// same configuration computes the same ids, so synced connections keep theirs too.
pub fn backend_id(pool: &str, addr: Ipv4Addr, port: u16) -> u32 {
    // FNV-1a over "pool\0a.b.c.d:port": fixed, portable, no seed.
    let mut h: u32 = 0x811c_9dc5;
    let mut feed = |b: u8| {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    };
    pool.bytes().for_each(&mut feed);
    feed(0);
    addr.octets().into_iter().for_each(&mut feed);
    port.to_be_bytes().into_iter().for_each(&mut feed);
    // u32::MAX means "no backend" in a connection.
    if h == u32::MAX {
        0
    } else {
        h
    }
}

type FixedState = ahash::RandomState;

fn fixed_state() -> FixedState {
    // Keys here come from configuration, so flooding is not a concern; fixed seeds keep
    // iteration and layout the same from run to run.
    ahash::RandomState::with_seeds(1, 2, 3, 4)
}

/// The compiled policy: everything the packet path asks of the configuration, derived once.
#[derive(Debug)]
pub struct Policy {
    owned: HashSet<u32, FixedState>,
    /// VIPs first, then PAT addresses, without repeats.
    owned_list: Vec<Ipv4Addr>,
    vips: HashSet<u32, FixedState>,
    exact: HashMap<(u32, u8, u16), Target, FixedState>,
    ranges: Vec<RangeRule>,
    pools: Vec<CompiledPool>,
    pat: Vec<PatRule>,
    filtering: Filtering,
    timeouts: Timeouts,
    check_public: bool,
    check_private: bool,
    /// [`SourceCheck::inside`] as (network, mask).
    inside: Vec<(u32, u32)>,
}

impl Policy {
    /// Checks and compiles the rules of `config`.
    ///
    /// # Errors
    /// The first [`PolicyError`] found.
    pub fn new(config: &NatConfig) -> Result<Policy, PolicyError> {
        if config.workers == 0 {
            return Err(PolicyError::NoWorkers);
        }
        let vips: HashSet<u32, FixedState> = {
            let mut s = HashSet::with_hasher(fixed_state());
            s.extend(config.vips.iter().map(|a| u32::from(*a)));
            s
        };
        let mut owned = vips.clone();
        let mut exact = HashMap::with_hasher(fixed_state());
        let mut ranges: Vec<(String, RangeRule)> = Vec::new();
        let mut exact_owner: HashMap<(u32, u8, u16), String, FixedState> =
            HashMap::with_hasher(fixed_state());

        for (i, r) in config.dnat.iter().enumerate() {
            let at = format!("dnat[{i}]");
            check_vip_proto(&at, &vips, r.vip, r.proto)?;
            if r.port_lo == 0 || r.port_hi < r.port_lo {
                return Err(PolicyError::BadPorts {
                    at,
                    why: format!(
                        "port range {}-{} must be within 1-65535 and not reversed",
                        r.port_lo, r.port_hi
                    ),
                });
            }
            if let Some(p) = r.to_port {
                let last = u32::from(p) + u32::from(r.port_hi - r.port_lo);
                if p == 0 || last > 65535 {
                    return Err(PolicyError::BadPorts {
                        at,
                        why: format!("to_port {p} maps the range past port 65535 or is 0"),
                    });
                }
            }
            let rule = RangeRule {
                vip: u32::from(r.vip),
                proto: r.proto,
                lo: r.port_lo,
                hi: r.port_hi,
                to: r.to,
                to_port: r.to_port,
            };
            check_overlap(&at, &rule, &ranges, &exact_owner)?;
            if r.port_lo == r.port_hi {
                let key = (rule.vip, r.proto.number(), r.port_lo);
                exact.insert(key, Target::Host(r.to, r.to_port.unwrap_or(r.port_lo)));
                exact_owner.insert(key, at);
            } else {
                ranges.push((at, rule));
            }
        }

        let mut pools = Vec::with_capacity(config.pools.len());
        for (i, p) in config.pools.iter().enumerate() {
            let at = format!("pools[{i}] ({})", p.name);
            check_vip_proto(&at, &vips, p.vip, p.proto)?;
            if p.port == 0 {
                return Err(PolicyError::BadPorts {
                    at,
                    why: "port must be within 1-65535".into(),
                });
            }
            let rule = RangeRule {
                vip: u32::from(p.vip),
                proto: p.proto,
                lo: p.port,
                hi: p.port,
                to: Ipv4Addr::UNSPECIFIED,
                to_port: None,
            };
            check_overlap(&at, &rule, &ranges, &exact_owner)?;
            let ids: Vec<Vec<u8>> = p
                .backends
                .iter()
                .map(|b| format!("{}:{}", b.addr, b.port).into_bytes())
                .collect();
            let weighted: Vec<(&[u8], u32)> = ids
                .iter()
                .zip(&p.backends)
                .map(|(id, b)| (id.as_slice(), b.weight))
                .collect();
            let maglev =
                Maglev::new(&weighted, p.table_size).map_err(|why| PolicyError::BadPool {
                    at: at.clone(),
                    why,
                })?;
            let index = u16::try_from(pools.len()).map_err(|_| PolicyError::BadPool {
                at: at.clone(),
                why: MaglevError::TooManyBackends(pools.len()),
            })?;
            let key = (rule.vip, p.proto.number(), p.port);
            exact.insert(key, Target::Pool(index));
            exact_owner.insert(key, at);
            let ids: Vec<u32> = p
                .backends
                .iter()
                .map(|b| backend_id(&p.name, b.addr, b.port))
                .collect();
            pools.push(CompiledPool {
                when_empty: p.when_empty,
                persistence: p.persistence,
                backends: p.backends.clone(),
                ids,
                maglev,
            });
        }

        for (i, r) in config.pat.iter().enumerate() {
            if r.from.is_empty() || r.to.is_empty() {
                return Err(PolicyError::EmptyPat {
                    at: format!("pat[{i}]"),
                });
            }
            owned.extend(r.to.iter().map(|a| u32::from(*a)));
        }

        let mut owned_list: Vec<Ipv4Addr> = Vec::new();
        for a in config
            .vips
            .iter()
            .chain(config.pat.iter().flat_map(|r| r.to.iter()))
        {
            if !owned_list.contains(a) {
                owned_list.push(*a);
            }
        }
        Ok(Policy {
            owned,
            owned_list,
            vips,
            exact,
            ranges: ranges.into_iter().map(|(_, r)| r).collect(),
            pools,
            pat: config.pat.clone(),
            filtering: config.filtering,
            timeouts: config.timeouts,
            check_public: config.source_check.public,
            check_private: config.source_check.private,
            inside: config
                .source_check
                .inside
                .iter()
                .map(|(net, len)| {
                    let mask = u32::MAX
                        .checked_shl(32 - u32::from(*len).min(32))
                        .unwrap_or(0);
                    (u32::from(*net) & mask, mask)
                })
                .collect(),
        })
    }

    /// Whether `src` may be the source of a new flow or an ICMP error arriving on `side`
    /// (BCP 38/84): not from the public side with an inside address or one of ours, not
    /// from the private side with an address outside. Asked when a flow opens, not for
    /// each packet: a forged source matches no connection on the side it arrives on.
    ///
    /// # Errors
    /// The drop reason naming which check refused it.
    #[inline]
    pub fn check_source(&self, src: Ipv4Addr, side: Side) -> Result<(), DropReason> {
        let a = u32::from(src);
        let inside = || self.inside.iter().any(|(net, mask)| a & mask == *net);
        match side {
            Side::Public if self.check_public => {
                if self.owned.contains(&a) {
                    Err(DropReason::SpoofedOurs)
                } else if inside() {
                    Err(DropReason::SpoofedInside)
                } else {
                    Ok(())
                }
            }
            Side::Private if self.check_private && !inside() => Err(DropReason::SpoofedOutside),
            _ => Ok(()),
        }
    }

    /// Inbound filtering of PAT mappings.
    #[inline]
    pub fn filtering(&self) -> Filtering {
        self.filtering
    }

    /// The idle timeouts.
    pub fn timeouts(&self) -> &Timeouts {
        &self.timeouts
    }

    /// True for every address the gateway translates for: VIPs and PAT addresses.
    #[inline]
    pub fn is_owned(&self, a: Ipv4Addr) -> bool {
        self.owned.contains(&u32::from(a))
    }

    /// True for the configured VIPs.
    pub fn is_vip(&self, a: Ipv4Addr) -> bool {
        self.vips.contains(&u32::from(a))
    }

    /// Every owned address (VIPs first, then PAT addresses), without repeats.
    pub fn owned_addrs(&self) -> &[Ipv4Addr] {
        &self.owned_list
    }

    /// The ports DNAT rules and pools use on each VIP: PAT must never hand them out.
    pub fn reserved_ports(&self) -> Vec<(Ipv4Addr, Proto, u16)> {
        let mut v: Vec<(Ipv4Addr, Proto, u16)> = self
            .exact
            .keys()
            .filter_map(|(a, p, port)| Some((Ipv4Addr::from(*a), Proto::from_number(*p)?, *port)))
            .collect();
        for r in &self.ranges {
            v.extend((r.lo..=r.hi).map(|p| (Ipv4Addr::from(r.vip), r.proto, p)));
        }
        v
    }

    /// The DNAT target for a new flow to `vip:port`.
    #[inline]
    pub fn dnat(&self, vip: Ipv4Addr, proto: Proto, port: u16) -> Option<Target> {
        let v = u32::from(vip);
        if let Some(t) = self.exact.get(&(v, proto.number(), port)) {
            return Some(*t);
        }
        self.ranges
            .iter()
            .find(|r| r.vip == v && r.proto == proto && (r.lo..=r.hi).contains(&port))
            .map(|r| {
                let to_port = match r.to_port {
                    Some(p) => p.saturating_add(port - r.lo),
                    None => port,
                };
                Target::Host(r.to, to_port)
            })
    }

    /// What a new connection to `vip:port` gets when it is a pool's and no backend of it is
    /// in service (`None` when the address and port lead to no pool).
    pub fn when_empty(&self, vip: Ipv4Addr, proto: Proto, port: u16) -> Option<EmptyPool> {
        match self.dnat(vip, proto, port)? {
            Target::Pool(i) => self.pools.get(usize::from(i)).map(|p| p.when_empty),
            Target::Host(..) => None,
        }
    }

    /// The public addresses and ports (`vip:port`) whose DNAT rule or pool leads to
    /// `addr:port` (`proto`): a segment from there is a reply of an inbound connection,
    /// never a new outbound one. Not on the packet path (a linear scan): only a mid-stream
    /// pickup asks.
    pub fn services_of(
        &self,
        addr: Ipv4Addr,
        proto: Proto,
        port: u16,
    ) -> impl Iterator<Item = (Ipv4Addr, u16)> + '_ {
        let in_pool = move |i: usize| {
            self.pools
                .get(i)
                .is_some_and(|p| p.backends.iter().any(|b| b.addr == addr && b.port == port))
        };
        let exact = self
            .exact
            .iter()
            .filter(move |((_, p, _), t)| {
                *p == proto.number()
                    && match t {
                        Target::Host(a, tp) => *a == addr && *tp == port,
                        Target::Pool(i) => in_pool(usize::from(*i)),
                    }
            })
            .map(|((vip, _, vport), _)| (Ipv4Addr::from(*vip), *vport));
        let ranges = self.ranges.iter().filter_map(move |r| {
            let lo = r.to_port.unwrap_or(r.lo);
            let hi = lo.saturating_add(r.hi - r.lo);
            (r.proto == proto && r.to == addr && (lo..=hi).contains(&port))
                .then(|| (Ipv4Addr::from(r.vip), r.lo + (port - lo)))
        });
        exact.chain(ranges)
    }

    /// What pool `pool` hashes to pick a backend.
    #[inline]
    pub fn persistence(&self, pool: u16) -> Persistence {
        self.pools
            .get(usize::from(pool))
            .map_or(Persistence::default(), |p| p.persistence)
    }

    /// The backend of pool `pool` for a flow hashing to `hash`, with its [`backend_id`].
    #[inline]
    pub fn pick_backend(&self, pool: u16, hash: u64) -> Option<(u32, &Backend)> {
        let p = self.pools.get(usize::from(pool))?;
        let i = usize::from(p.maglev.lookup(hash)?);
        Some((*p.ids.get(i)?, p.backends.get(i)?))
    }

    /// Whether some pool has a backend with this [`backend_id`] and a weight above 0.
    pub fn has_backend(&self, id: u32) -> bool {
        self.pools.iter().any(|p| {
            p.ids
                .iter()
                .zip(&p.backends)
                .any(|(i, b)| *i == id && b.weight > 0)
        })
    }

    /// The index of the first PAT rule covering `src`.
    #[inline]
    pub fn pat_rule_for(&self, src: Ipv4Addr) -> Option<usize> {
        self.pat
            .iter()
            .position(|r| r.from.iter().any(|n| n.contains(src)))
    }
}

fn check_vip_proto(
    at: &str,
    vips: &HashSet<u32, FixedState>,
    vip: Ipv4Addr,
    proto: Proto,
) -> Result<(), PolicyError> {
    if !vips.contains(&u32::from(vip)) {
        return Err(PolicyError::NotAVip {
            at: at.to_string(),
            addr: vip,
        });
    }
    if proto == Proto::Icmp {
        return Err(PolicyError::BadProto { at: at.to_string() });
    }
    Ok(())
}

fn check_overlap(
    at: &str,
    rule: &RangeRule,
    ranges: &[(String, RangeRule)],
    exact_owner: &HashMap<(u32, u8, u16), String, FixedState>,
) -> Result<(), PolicyError> {
    for (other, r) in ranges {
        if r.vip == rule.vip && r.proto == rule.proto && r.lo <= rule.hi && rule.lo <= r.hi {
            return Err(PolicyError::Overlap {
                at: at.to_string(),
                other: other.clone(),
                port: rule.lo.max(r.lo),
            });
        }
    }
    for port in rule.lo..=rule.hi {
        if let Some(other) = exact_owner.get(&(rule.vip, rule.proto.number(), port)) {
            return Err(PolicyError::Overlap {
                at: at.to_string(),
                other: other.clone(),
                port,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const HOST: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 5);

    fn rule(lo: u16, hi: u16, to_port: Option<u16>) -> DnatRule {
        DnatRule {
            vip: VIP,
            proto: Proto::Udp,
            port_lo: lo,
            port_hi: hi,
            to: HOST,
            to_port,
        }
    }

    fn config(dnat: Vec<DnatRule>) -> NatConfig {
        NatConfig {
            vips: vec![VIP],
            dnat,
            ..NatConfig::default()
        }
    }

    #[test]
    fn prefixes() {
        let n = Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 15).unwrap();
        assert!(n.contains(Ipv4Addr::new(198, 19, 255, 255)));
        assert!(!n.contains(Ipv4Addr::new(198, 20, 0, 0)));
        let all = Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0).unwrap();
        assert!(all.contains(Ipv4Addr::new(1, 2, 3, 4)));
        let one = Ipv4Net::new(HOST, 32).unwrap();
        assert!(one.contains(HOST) && !one.contains(VIP));
        assert_eq!(Ipv4Net::new(HOST, 33), None);
        assert_eq!(n.to_string(), "198.18.0.0/15");
    }

    #[test]
    fn ranges_map_with_offset_or_keep_ports() {
        let p = Policy::new(&config(vec![
            rule(100, 199, Some(1000)),
            rule(300, 399, None),
        ]))
        .unwrap();
        assert_eq!(p.dnat(VIP, Proto::Udp, 100), Some(Target::Host(HOST, 1000)));
        assert_eq!(p.dnat(VIP, Proto::Udp, 199), Some(Target::Host(HOST, 1099)));
        assert_eq!(p.dnat(VIP, Proto::Udp, 350), Some(Target::Host(HOST, 350)));
        assert_eq!(p.dnat(VIP, Proto::Udp, 200), None);
        assert_eq!(p.dnat(VIP, Proto::Tcp, 100), None);
        assert_eq!(p.reserved_ports().len(), 200);
    }

    #[test]
    fn refuses_bad_rules_naming_them() {
        let e = Policy::new(&config(vec![rule(10, 5, None)])).unwrap_err();
        assert!(e.to_string().starts_with("dnat[0]: port range 10-5"), "{e}");
        let e = Policy::new(&config(vec![rule(65000, 65535, Some(65000))])).unwrap();
        assert_eq!(
            e.dnat(VIP, Proto::Udp, 65535),
            Some(Target::Host(HOST, 65535))
        );
        let e = Policy::new(&config(vec![rule(65000, 65535, Some(65001))])).unwrap_err();
        assert!(e.to_string().contains("to_port 65001"), "{e}");
        let e = Policy::new(&config(vec![rule(1, 10, None), rule(10, 20, None)])).unwrap_err();
        assert_eq!(
            e,
            PolicyError::Overlap {
                at: "dnat[1]".into(),
                other: "dnat[0]".into(),
                port: 10
            }
        );
        let mut icmp = rule(1, 1, None);
        icmp.proto = Proto::Icmp;
        assert!(matches!(
            Policy::new(&config(vec![icmp])),
            Err(PolicyError::BadProto { .. })
        ));
        let mut c = config(vec![]);
        c.workers = 0;
        assert_eq!(Policy::new(&c).unwrap_err(), PolicyError::NoWorkers);
    }

    #[test]
    fn first_pat_rule_wins_and_addresses_are_owned() {
        let c = NatConfig {
            vips: vec![VIP],
            pat: vec![
                PatRule {
                    from: vec![Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 24).unwrap()],
                    to: vec![Ipv4Addr::new(203, 0, 113, 20)],
                },
                PatRule {
                    from: vec![Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 16).unwrap()],
                    to: vec![VIP],
                },
            ],
            ..NatConfig::default()
        };
        let p = Policy::new(&c).unwrap();
        assert_eq!(p.pat_rule_for(HOST), Some(0));
        assert_eq!(p.pat_rule_for(Ipv4Addr::new(198, 18, 7, 1)), Some(1));
        assert_eq!(p.pat_rule_for(Ipv4Addr::new(10, 0, 0, 1)), None);
        assert!(p.is_owned(Ipv4Addr::new(203, 0, 113, 20)) && p.is_owned(VIP));
        assert!(p.is_vip(VIP) && !p.is_vip(Ipv4Addr::new(203, 0, 113, 20)));
        assert_eq!(p.owned_addrs(), [VIP, Ipv4Addr::new(203, 0, 113, 20)]);
    }

    #[test]
    fn backend_ids_follow_the_backend_not_its_position() {
        let b = |last: u8, weight| Backend {
            addr: Ipv4Addr::new(198, 18, 0, last),
            port: 80,
            weight,
        };
        let pool = |backends: Vec<Backend>| Pool {
            name: "web".into(),
            vip: VIP,
            proto: Proto::Tcp,
            port: 80,
            backends,
            table_size: 251,
            when_empty: Default::default(),
            persistence: Default::default(),
            reset_on_down: false,
        };
        let mut c = config(vec![]);
        c.pools = vec![pool(vec![b(1, 1), b(2, 1), b(3, 1)])];
        let before = Policy::new(&c).unwrap();
        c.pools = vec![pool(vec![b(3, 2), b(2, 1)])];
        let after = Policy::new(&c).unwrap();
        let id = |p: &Policy, addr| {
            (0..2000u64)
                .filter_map(|h| p.pick_backend(0, h.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
                .find(|(_, b)| b.addr == addr)
                .map(|(id, _)| id)
        };
        let three = Ipv4Addr::new(198, 18, 0, 3);
        assert_eq!(id(&before, three), id(&after, three));
        assert_eq!(id(&before, three), Some(backend_id("web", three, 80)));
        assert_ne!(backend_id("web", three, 80), backend_id("api", three, 80));
        assert_ne!(backend_id("web", three, 80), backend_id("web", three, 81));
    }
}
