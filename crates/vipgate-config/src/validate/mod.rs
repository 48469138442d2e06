//! From the file form ([`crate::raw`]) to [`Config`]: ranges, defaults and the
//! cross-references between sections.

mod check;
mod ha;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use config::{Environment, File, FileFormat, ValueKind};
use vipgate_nat::maglev::{Maglev, MaglevError};
use vipgate_nat::policy::{
    Backend, DnatRule, EmptyPool, Filtering, Ipv4Net, NatConfig, PatRule, Persistence, Policy,
    PolicyError, Pool, SourceCheck,
};
use vipgate_nat::{ConnTable, Proto, Side, Timeouts};

use crate::error::{from_config_crate, read_error_origin, ConfigError};
use crate::raw::{
    Int, RawControl, RawDnat, RawEvents, RawFile, RawInterface, RawLog, RawMetrics, RawNat,
    RawNeighbors, RawPat, RawPool, RawPorts, RawXdp,
};
use crate::{
    CompiledPolicy, Config, Control, Events, HealthCheck, Icmp, Interface, Log, LogFormat, Metrics,
    Neighbors, Route, Xdp, XdpMode, ENV_PREFIX,
};

type Result<T> = std::result::Result<T, ConfigError>;

const IPV4: &str = "expected a.b.c.d";
const PREFIX: &str = "expected a.b.c.d/len with len 0 to 32";
const PORT: &str = "expected 1 to 65535";
const PROTO: &str = "expected \"tcp\" or \"udp\"";
/// Linux's IFNAMSIZ less the terminating NUL.
const IFNAME_MAX: usize = 15;
/// Beyond this, one worker's UMEM (frames * frame_size) passes 4 GiB: surely a typo.
const FRAMES_MAX: i64 = 1 << 20;
const FRAG_ENTRIES_MAX: i64 = 1 << 20;
const FRAG_HOLD_MAX: i64 = 4096;
const NEIGHBORS_MAX: i64 = 1 << 24;
/// A Unix socket's `sun_path` holds 108 bytes, the terminating NUL included.
const SOCKET_PATH_MAX: usize = 107;
const EVENTS_RATE_MAX: i64 = 10_000_000;
const EVENTS_QUEUE_MIN: i64 = 64;
const EVENTS_QUEUE_MAX: i64 = 1 << 24;
/// What `log.level` accepts, in the words of its error messages.
const LOG_LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// True for a variable that overrides a key (`VIPGATE_...`, any case, as the `config`
/// crate matches it).
pub(crate) fn is_override(var: &str) -> bool {
    var.get(..ENV_PREFIX.len() + 1)
        .is_some_and(|p| p.eq_ignore_ascii_case(&format!("{ENV_PREFIX}_")))
}

/// The key path a `VIPGATE_*` variable sets, computed as the `config` crate does.
pub(crate) fn env_key(var: &str) -> String {
    var.get(ENV_PREFIX.len() + 1..)
        .unwrap_or_default()
        .to_lowercase()
        .replace("__", ".")
}

/// Reads `text` with `env` on top, then validates. Errors never name the file: the caller
/// does, once.
pub(crate) fn load(text: &str, env: HashMap<String, String>) -> Result<Config> {
    let by_key: HashMap<String, String> = env
        .keys()
        .filter(|k| is_override(k))
        .map(|k| (env_key(k), k.clone()))
        .collect();
    // The variable that set `key` or the list or table holding it (`workers.cores[1]` was set
    // by VIPGATE_WORKERS__CORES).
    let env_var_for = |key: &str| {
        by_key
            .iter()
            .filter(|(k, _)| {
                key.strip_prefix(k.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(['[', '.']))
            })
            .max_by_key(|(k, _)| k.len())
            .map(|(_, var)| var.clone())
    };
    let EnvSplit { lists, scalars } = split_env(env)?;
    let read_error = |e| from_config_crate(e, &env_var_for);
    let mut builder = config::Config::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("_")
                .separator("__")
                .try_parsing(true)
                .source(Some(scalars)),
        );
    for (key, value) in lists {
        builder = builder.set_override(key, value).map_err(read_error)?;
    }
    let merged = builder.build().map_err(read_error)?;
    check_tables(&merged).map_err(|e| read_error_origin(e, &env_var_for))?;
    let raw: RawFile = merged.try_deserialize().map_err(read_error)?;
    validate(raw).map_err(|e| e.with_env_origins(&env_var_for))
}

/// Keys holding a list of single values, which a variable sets as comma-separated items:
/// `VIPGATE_WORKERS__CORES=0,1`, `VIPGATE_NAT__VIPS=203.0.113.10,203.0.113.11`.
const LIST_KEYS: [&str; 3] = ["workers.cores", "nat.vips", "ha.peers"];

/// Keys holding a list of tables (`[[interfaces]]`), which only the file can set: a variable
/// has no way to say which entry and field it means.
const TABLE_LIST_KEYS: [&str; 4] = ["interfaces", "nat.dnat", "nat.pools", "nat.pat"];

/// The variables of the environment, sorted for the `config` crate.
struct EnvSplit {
    /// The lists set by a variable, by key, with their items parsed.
    lists: Vec<(String, config::Value)>,
    /// Every other variable, for the `config` crate's environment source.
    scalars: config::Map<String, String>,
}

/// Sorts `env` into lists and other variables; refuses a variable naming a list of tables,
/// or a key inside one.
///
/// The lists are parsed here rather than by the `config` crate's `list_separator`: with
/// number parsing on, it reads `VIPGATE_WORKERS__CORES=0` as the number 0 instead of a list,
/// and it makes every item a string, which `workers.cores` (integers only) would refuse.
fn split_env(env: HashMap<String, String>) -> Result<EnvSplit> {
    let mut lists = Vec::new();
    let mut scalars = config::Map::new();
    let mut refused = Vec::new();
    for (var, value) in env {
        let key = env_key(&var);
        let within = |table: &&&str| {
            key.strip_prefix(**table)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        };
        if !is_override(&var) {
            scalars.insert(var, value);
        } else if let Some(table) = TABLE_LIST_KEYS.iter().find(within) {
            refused.push(
                err(
                    table,
                    format!(
                        "is a list of tables, which can only be set in the file; expected \
                         [[{table}]] entries in the file and no environment variable"
                    ),
                )
                .set_by_env(&var),
            );
        } else if LIST_KEYS.contains(&key.as_str()) {
            let items: Vec<config::Value> = if value.trim().is_empty() {
                Vec::new()
            } else {
                value
                    .split(',')
                    .map(|item| {
                        let item = item.trim();
                        // A number stays a number, so that workers.cores can refuse "x" in
                        // the words it uses for the file; an address stays a string.
                        match item.parse::<i64>() {
                            Ok(n) if key == "workers.cores" => config::Value::from(n),
                            _ => config::Value::from(item.to_string()),
                        }
                    })
                    .collect()
            };
            lists.push((key, config::Value::from(items)));
        } else {
            scalars.insert(var, value);
        }
    }
    // HashMap order is arbitrary; the problems come in the order of the keys.
    refused.sort_by(|a, b| a.key().cmp(b.key()).then(a.env_var().cmp(&b.env_var())));
    match ConfigError::all(refused) {
        Some(e) => Err(e),
        None => Ok(EnvSplit { lists, scalars }),
    }
}

/// Refuses a list where a single table belongs (`[[xdp]]` for `[xdp]`): serde would read the
/// list as the table's fields in order and complain about the first field instead.
fn check_tables(merged: &config::Config) -> Result<()> {
    for key in [
        "workers",
        "xdp",
        "nat",
        "nat.timeouts",
        "neighbors",
        "icmp",
        "log",
        "control",
        "metrics",
        "events",
        "ha",
        "ha.sync",
    ] {
        if let Ok(v) = merged.get::<config::Value>(key) {
            if matches!(v.kind, ValueKind::Array(_)) {
                return Err(err(
                    key,
                    format!("a list has the wrong type; expected one table, written [{key}]"),
                ));
            }
        }
    }
    Ok(())
}

/// The problems found so far. The validator goes on after a problem so that one run reports
/// them all; a check that needs a value refused earlier is skipped rather than run on a
/// stand-in, which would report problems that are not there.
#[derive(Default)]
struct Problems(Vec<ConfigError>);

impl Problems {
    /// The value, or `None` with its problem kept.
    fn take<T>(&mut self, r: Result<T>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    /// The value, or `stand_in` with its problem kept. Only for values no later check reads:
    /// the stand-in never reaches a [`Config`], since a problem fails the whole load.
    fn or<T>(&mut self, r: Result<T>, stand_in: T) -> T {
        self.take(r).unwrap_or(stand_in)
    }

    fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }

    fn count(&self) -> usize {
        self.0.len()
    }

    /// `v` if no problem was found.
    fn finish<T>(self, v: T) -> Result<T> {
        match ConfigError::all(self.0) {
            None => Ok(v),
            Some(e) => Err(e),
        }
    }
}

fn err(key: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(key, problem)
}

fn required<T>(v: Option<T>, key: &str, expected: &str) -> Result<T> {
    v.ok_or_else(|| err(key, format!("missing; {expected}")))
}

/// `v` (or `default` when absent) if it lies in `lo..=hi`.
fn int(v: Option<Int>, default: i64, key: &str, lo: i64, hi: i64) -> Result<i64> {
    let v = v.map_or(default, |v| v.0);
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else if v < lo && hi == i64::from(u32::MAX) {
        // The top of a u32 is no useful hint; the bottom is what was missed.
        Err(err(
            key,
            format!("{v} is out of range; expected at least {lo}"),
        ))
    } else {
        Err(err(
            key,
            format!("{v} is out of range; expected {lo} to {hi}"),
        ))
    }
}

fn int_u32(v: Option<Int>, default: u32, key: &str, lo: u32) -> Result<u32> {
    let v = int(
        v,
        i64::from(default),
        key,
        i64::from(lo),
        i64::from(u32::MAX),
    )?;
    u32::try_from(v).map_err(|_| err(key, format!("{v} is out of range")))
}

fn to_usize(v: i64, key: &str) -> Result<usize> {
    usize::try_from(v).map_err(|_| err(key, format!("{v} is out of range for this machine")))
}

fn parse_addr(s: &str, key: &str) -> Result<Ipv4Addr> {
    s.parse()
        .map_err(|_| err(key, format!("{s:?} is not an IPv4 address; {IPV4}")))
}

/// An address and prefix length as written, host bits allowed (`203.0.113.1/24`).
fn addr_len(s: &str, key: &str) -> Result<(Ipv4Addr, u8)> {
    let bad = || err(key, format!("{s:?} is not an IPv4 prefix; {PREFIX}"));
    let (a, len) = s.split_once('/').ok_or_else(bad)?;
    let a: Ipv4Addr = a.parse().map_err(|_| bad())?;
    // u8's parser takes a leading '+'; a prefix length never has one.
    if !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let len: u8 = len.parse().map_err(|_| bad())?;
    if len > 32 {
        return Err(bad());
    }
    Ok((a, len))
}

fn network(a: Ipv4Addr, len: u8) -> Ipv4Net {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    Ipv4Net {
        addr: Ipv4Addr::from(u32::from(a) & mask),
        len,
    }
}

fn broadcast(net: Ipv4Net) -> Ipv4Addr {
    let host = u32::MAX.checked_shr(u32::from(net.len)).unwrap_or(0);
    Ipv4Addr::from(u32::from(net.addr) | host)
}

/// A destination prefix: written with its host bits zero, so that a typo in the address
/// (`198.18.0.1/24` meant as a host) is caught rather than silently widened.
fn prefix(s: &str, key: &str) -> Result<Ipv4Net> {
    let (a, len) = addr_len(s, key)?;
    let net = network(a, len);
    if net.addr != a {
        return Err(err(
            key,
            format!("{s:?} has host bits set; expected the network address, {net}"),
        ));
    }
    Ok(net)
}

fn parse_port(v: i64, key: &str) -> Result<u16> {
    u16::try_from(v)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| err(key, format!("{v} is not a port; {PORT}")))
}

fn proto(s: Option<&str>, key: &str) -> Result<Proto> {
    match required(s, key, PROTO)? {
        "tcp" => Ok(Proto::Tcp),
        "udp" => Ok(Proto::Udp),
        other => Err(err(key, format!("{other:?} is not a protocol; {PROTO}"))),
    }
}

/// `lo-hi`, both ports, `lo <= hi`.
fn port_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = s.split_once('-')?;
    let p = |t: &str| -> Option<u16> {
        let t = t.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        t.parse().ok().filter(|p| *p != 0)
    };
    let (lo, hi) = (p(lo)?, p(hi)?);
    (lo <= hi).then_some((lo, hi))
}

fn dnat_ports(v: &RawPorts, key: &str) -> Result<(u16, u16)> {
    let expected = "expected a port 1 to 65535 or a range \"lo-hi\" with lo <= hi";
    match v {
        RawPorts::Number(n) => {
            let p = u16::try_from(*n).ok().filter(|p| *p != 0);
            p.map(|p| (p, p))
                .ok_or_else(|| err(key, format!("{n} is not a port; {expected}")))
        }
        RawPorts::Text(s) => {
            if let Ok(n) = s.trim().parse::<i64>() {
                return dnat_ports(&RawPorts::Number(n), key);
            }
            port_range(s).ok_or_else(|| {
                err(
                    key,
                    format!("{s:?} is not a port or port range; {expected}"),
                )
            })
        }
    }
}

fn join_nets(nets: &[Ipv4Net]) -> String {
    nets.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" or ")
}

/// Every section is checked, whatever the others hold; within a list, every item. What
/// depends on another section is checked only when that section is valid: the NAT section's
/// addresses need the interfaces, the PAT port shares need the number of workers.
fn validate(mut raw: RawFile) -> Result<Config> {
    let mut p = Problems::default();
    // The checks are kept apart from the NAT policy, by pool name.
    let raw_checks: Vec<(usize, Option<String>, crate::raw::RawCheck)> = raw
        .nat
        .as_mut()
        .and_then(|n| n.pools.as_mut())
        .map(|pools| {
            pools
                .iter_mut()
                .enumerate()
                .filter_map(|(i, pool)| Some((i, pool.name.clone(), pool.check.take()?)))
                .collect()
        })
        .unwrap_or_default();

    let workers = p.take(workers(raw.workers.and_then(|w| w.cores)));
    let raw_interfaces = raw.interfaces.unwrap_or_default();
    // The UMEM needs room for every interface's rings, valid or not.
    let interface_count = raw_interfaces.len();
    let interfaces = interfaces(raw_interfaces, &mut p);
    let xdp = xdp(raw.xdp.unwrap_or_default(), interface_count, &mut p);
    let (nat, policy) = nat(
        raw.nat.unwrap_or_default(),
        interfaces.as_deref(),
        workers.as_ref().map(Vec::len),
        &mut p,
    );
    let neighbors = neighbors(raw.neighbors.unwrap_or_default(), &mut p);
    let rate = raw.icmp.and_then(|i| i.rate);
    let icmp = Icmp {
        rate: p.or(int_u32(rate, Icmp::default().rate, "icmp.rate", 0), 0),
    };
    let log = log(raw.log.unwrap_or_default(), &mut p);
    let control = p.or(control(raw.control.unwrap_or_default()), Control::default());
    let metrics = p.or(metrics(raw.metrics.unwrap_or_default()), Metrics::default());
    let events = events(raw.events.unwrap_or_default(), &mut p);
    let ha = raw
        .ha
        .and_then(|h| ha::ha(h, interfaces.as_deref(), &mut p));
    let checks: Vec<(String, HealthCheck)> = raw_checks
        .into_iter()
        .filter_map(|(i, name, c)| Some((name?, check::check(c, i, &mut p)?)))
        .filter(|(name, _)| nat.pools.iter().any(|pool| pool.name == *name))
        .collect();
    // Without a policy some problem was found; `finish` returns it.
    let Some(policy) = policy else {
        return Err(p
            .finish(())
            .err()
            .unwrap_or_else(|| err("nat", "the policy could not be compiled")));
    };
    p.finish(Config {
        workers: workers.unwrap_or_default(),
        xdp,
        interfaces: interfaces.unwrap_or_default(),
        nat,
        neighbors,
        icmp,
        log,
        control,
        metrics,
        events,
        ha,
        checks,
        policy: CompiledPolicy(Arc::new(policy)),
    })
}

fn log(raw: RawLog, p: &mut Problems) -> Log {
    let level = match raw.level {
        None => Log::default().level,
        Some(level) => {
            p.take(log_level(&level));
            level
        }
    };
    let format = match raw.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.push(err(
                "log.format",
                format!("{other:?} is not a log format; expected \"text\" or \"json\""),
            ));
            LogFormat::Text
        }
    };
    Log { level, format }
}

/// Checks `log.level` as `tracing`'s filter would read it, within what vipgate documents: a
/// comma-separated list of levels and `target=level` directives. The binary falls back to
/// `info` on a filter it can't parse, so a typo caught here is a typo not silently ignored.
fn log_level(level: &str) -> Result<()> {
    let key = "log.level";
    let expected = "expected a tracing filter, a comma-separated list of levels (trace, debug, info, warn, error, \
                    off) or target=level directives with a target of letters, digits, '_', ':' \
                    and '-', e.g. \"info,vipgate=debug\"";
    if level.trim().is_empty() {
        return Err(err(key, format!("{level:?} is empty; {expected}")));
    }
    let is_level = |l: &str| LOG_LEVELS.iter().any(|v| v.eq_ignore_ascii_case(l));
    let is_target = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':' || b == b'-')
    };
    for item in level.split(',') {
        let d = item.trim();
        let ok = match d.split_once('=') {
            None => is_level(d),
            Some((target, l)) => is_target(target) && is_level(l),
        };
        if !ok {
            let what = if d == level.trim() {
                format!("{level:?} is not a level or target=level")
            } else {
                format!("{level:?} holds {item:?}, which is not a level or target=level")
            };
            return Err(err(key, format!("{what}; {expected}")));
        }
    }
    Ok(())
}

/// An absolute path naming a file: `/` first, not `/` last.
fn file_path(s: &str, key: &str, example: &str) -> Result<PathBuf> {
    if !s.starts_with('/') {
        return Err(err(
            key,
            format!("{s:?} is not an absolute path; expected a path starting with '/', e.g. {example:?}"),
        ));
    }
    if s.ends_with('/') {
        return Err(err(
            key,
            format!("{s:?} names a directory; expected the path of a file in it, e.g. {example:?}"),
        ));
    }
    if s.contains('\0') {
        return Err(err(
            key,
            format!("{s:?} holds a NUL byte; expected a path without one"),
        ));
    }
    Ok(PathBuf::from(s))
}

fn control(raw: RawControl) -> Result<Control> {
    let key = "control.socket";
    let Some(s) = raw.socket else {
        return Ok(Control::default());
    };
    let socket = file_path(&s, key, Control::DEFAULT_SOCKET)?;
    if s.len() > SOCKET_PATH_MAX {
        return Err(err(
            key,
            format!(
                "{s:?} is {} bytes long; expected at most {SOCKET_PATH_MAX}, what a Unix socket \
                 address holds",
                s.len()
            ),
        ));
    }
    Ok(Control { socket })
}

fn metrics(raw: RawMetrics) -> Result<Metrics> {
    let Some(s) = raw.listen else {
        return Ok(Metrics::default());
    };
    let key = "metrics.listen";
    let expected =
        "expected a.b.c.d:port or [v6]:port with port 1 to 65535, e.g. \"127.0.0.1:9469\"";
    let a: SocketAddr = s
        .parse()
        .map_err(|_| err(key, format!("{s:?} is not a socket address; {expected}")))?;
    if a.port() == 0 {
        return Err(err(key, format!("{s:?} has port 0; {expected}")));
    }
    Ok(Metrics { listen: Some(a) })
}

fn events(raw: RawEvents, p: &mut Problems) -> Events {
    let d = Events::default();
    let file = raw.file.and_then(|f| {
        p.take(file_path(
            &f,
            "events.file",
            "/var/log/vipgate/nat-events.log",
        ))
    });
    let rate = int(
        raw.rate,
        i64::from(d.rate),
        "events.rate",
        1,
        EVENTS_RATE_MAX,
    )
    .and_then(|r| u32::try_from(r).map_err(|_| err("events.rate", format!("{r} is out of range"))));
    let queue = int(
        raw.queue,
        d.queue as i64,
        "events.queue",
        EVENTS_QUEUE_MIN,
        EVENTS_QUEUE_MAX,
    )
    .and_then(|q| to_usize(q, "events.queue"));
    Events {
        file,
        rate: p.or(rate, d.rate),
        queue: p.or(queue, d.queue),
    }
}

fn workers(cores: Option<Vec<Int>>) -> Result<Vec<usize>> {
    let key = "workers.cores";
    let cores = required(
        cores,
        key,
        "expected the CPUs to run workers on, one worker per entry, e.g. [0, 1]",
    )?;
    if cores.is_empty() {
        return Err(err(key, "[] is empty; expected at least one CPU, e.g. [0]"));
    }
    let mut out: Vec<usize> = Vec::with_capacity(cores.len());
    for (i, &Int(c)) in cores.iter().enumerate() {
        let k = format!("{key}[{i}]");
        let cpu = usize::try_from(c)
            .map_err(|_| err(&k, format!("{c} is not a CPU number; expected 0 or more")))?;
        if let Some(j) = out.iter().position(|&o| o == cpu) {
            return Err(err(
                &k,
                format!("{c} repeats {key}[{j}]; expected each CPU at most once"),
            ));
        }
        out.push(cpu);
    }
    Ok(out)
}

fn xdp(raw: RawXdp, interfaces: usize, p: &mut Problems) -> Xdp {
    let d = Xdp::default();
    let mode = match raw.mode.as_deref() {
        None | Some("skb") => XdpMode::Skb,
        Some("drv") => XdpMode::Drv,
        Some(other) => {
            p.push(err(
                "xdp.mode",
                format!("{other:?} is not an XDP mode; expected \"skb\" or \"drv\""),
            ));
            d.mode
        }
    };
    let batch =
        int(raw.batch, d.batch as i64, "xdp.batch", 1, 1024).and_then(|b| to_usize(b, "xdp.batch"));
    let ring = ring(raw.ring.map_or(i64::from(d.ring), |v| v.0));
    let ring = p.take(ring);
    let frame_size = match raw.frame_size.map_or(i64::from(d.frame_size), |v| v.0) {
        2048 => 2048,
        4096 => 4096,
        other => {
            p.push(err(
                "xdp.frame_size",
                format!("{other} is not a supported frame size; expected 2048 or 4096"),
            ));
            d.frame_size
        }
    };
    Xdp {
        mode,
        batch: p.or(batch, d.batch),
        frames: p.or(frames(raw.frames, ring, interfaces), d.frames),
        frame_size,
        ring: ring.unwrap_or(d.ring),
    }
}

fn ring(ring: i64) -> Result<u32> {
    u32::try_from(ring)
        .ok()
        .filter(|r| (64..=16384).contains(r) && r.is_power_of_two())
        .ok_or_else(|| {
            err(
                "xdp.ring",
                format!(
                    "{ring} is out of range; expected a power of two from 64 to 16384, e.g. 1024"
                ),
            )
        })
}

/// `xdp.frames`: a power of two, and when the ring size is known, enough for every
/// interface's rings.
fn frames(raw: Option<Int>, ring: Option<u32>, interfaces: usize) -> Result<u32> {
    let key = "xdp.frames";
    // Each interface's fill and RX rings can hold `ring` frames each while its TX and
    // completion rings hold as many again: fewer frames and a full ring starves another.
    let min = ring.map(|ring| (2 * i64::from(ring) * interfaces.max(1) as i64).min(FRAMES_MAX));
    let frames = raw.map_or(i64::from(Xdp::default().frames), |v| v.0);
    if frames <= 0 || frames.count_ones() != 1 || frames > FRAMES_MAX {
        let expected = match min {
            Some(min) => format!("a power of two from {min} to {FRAMES_MAX}, e.g. {min}"),
            None => format!("a power of two up to {FRAMES_MAX}"),
        };
        return Err(err(
            key,
            format!("{frames} is out of range; expected {expected}"),
        ));
    }
    if let (Some(min), Some(ring)) = (min, ring) {
        if frames < min {
            return Err(err(
                key,
                format!(
                    "{frames} is too few for {interfaces} interfaces with rings of {ring}; \
                     expected a power of two of at least 2 x ring x interfaces = {min}"
                ),
            ));
        }
    }
    u32::try_from(frames).map_err(|_| err(key, format!("{frames} is out of range")))
}

fn ifname(name: Option<String>, key: &str) -> Result<String> {
    let expected = "expected 1 to 15 bytes without '/', ':' or whitespace";
    let name = required(
        name,
        key,
        "expected the kernel interface name, e.g. \"eth0\"",
    )?;
    let ok = !name.is_empty()
        && name.len() <= IFNAME_MAX
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(name)
    } else {
        Err(err(
            key,
            format!("{name:?} is not an interface name; {expected}"),
        ))
    }
}

fn side(s: Option<&str>, key: &str) -> Result<Side> {
    let expected = "expected \"public\" or \"private\"";
    match required(s, key, expected)? {
        "public" => Ok(Side::Public),
        "private" => Ok(Side::Private),
        other => Err(err(key, format!("{other:?} is not a side; {expected}"))),
    }
}

/// `a` as a neighbor on the segment of `iface` (a next hop): inside the subnet, and neither
/// the gateway's own address nor the subnet's network or broadcast address.
fn neighbor_on(iface: &Interface, a: Ipv4Addr, key: &str) -> Result<()> {
    let net = iface.net;
    if !net.contains(a) {
        return Err(err(
            key,
            format!(
                "{a} is outside the interface's subnet {net}; expected an address in {net} other than {}",
                iface.addr
            ),
        ));
    }
    if a == iface.addr {
        return Err(err(
            key,
            format!("{a} is the interface's own address; expected another address in {net}"),
        ));
    }
    host_in_subnet(net, a, key)
}

/// Refuses the network and broadcast addresses of `net`, which no host can have.
fn host_in_subnet(net: Ipv4Net, a: Ipv4Addr, key: &str) -> Result<()> {
    if a == net.addr {
        return Err(err(
            key,
            format!("{a} is the network address of {net}; expected a host address in it"),
        ));
    }
    if a == broadcast(net) {
        return Err(err(
            key,
            format!("{a} is the broadcast address of {net}; expected a host address in it"),
        ));
    }
    Ok(())
}

fn unicast(a: Ipv4Addr) -> bool {
    !(a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast())
}

/// The interfaces, or `None` when any has a problem (each is reported): the NAT section is
/// checked against them, and against a partial list it would report problems that are not
/// there.
fn interfaces(raw: Vec<RawInterface>, p: &mut Problems) -> Option<Vec<Interface>> {
    // The valid interfaces with their index in the file.
    let mut valid: Vec<(usize, Interface)> = Vec::with_capacity(raw.len());
    // Every destination prefix with its key: directly connected subnets and routes. The
    // default route counts as 0.0.0.0/0, so a gateway and a /0 route can't both be set.
    let mut dests: Vec<(Ipv4Net, String)> = Vec::new();
    let count = raw.len();
    for (i, r) in raw.into_iter().enumerate() {
        // Each is checked against the valid ones before it.
        if let Some((iface, its_dests)) = p.take(interface(r, i, &valid, &dests)) {
            valid.push((i, iface));
            dests.extend(its_dests);
        }
    }
    if valid.len() < count {
        return None;
    }
    let out: Vec<Interface> = valid.into_iter().map(|(_, iface)| iface).collect();
    for (side, name) in [(Side::Public, "public"), (Side::Private, "private")] {
        if !out.iter().any(|i| i.side == side) {
            p.push(err(
                "interfaces",
                format!(
                    "no interface has side \"{name}\"; expected at least one public and one \
                     private interface"
                ),
            ));
            return None;
        }
    }
    Some(out)
}

/// Interface `i`, checked against the valid interfaces before it (`earlier`, with their
/// index) and their destinations; with its own destinations (subnet, default route, routes).
fn interface(
    r: RawInterface,
    i: usize,
    earlier: &[(usize, Interface)],
    dests: &[(Ipv4Net, String)],
) -> Result<(Interface, Vec<(Ipv4Net, String)>)> {
    let at = format!("interfaces[{i}]");
    let name = ifname(r.name, &format!("{at}.name"))?;
    if let Some((j, _)) = earlier.iter().find(|(_, o)| o.name == name) {
        return Err(err(
            &format!("{at}.name"),
            format!("{name:?} repeats interfaces[{j}].name; expected unique names"),
        ));
    }
    let side = side(r.side.as_deref(), &format!("{at}.side"))?;
    let key = format!("{at}.address");
    let text = required(
        r.address,
        &key,
        "expected the gateway's address and subnet on this segment, e.g. \"203.0.113.1/24\"",
    )?;
    let (addr, len) = addr_len(&text, &key)?;
    if len == 0 || len > 30 {
        return Err(err(
            &key,
            format!(
                "{text:?} leaves no room for neighbors on the segment; \
                 expected a prefix length 1 to 30"
            ),
        ));
    }
    let net = network(addr, len);
    if !unicast(addr) {
        return Err(err(
            &key,
            format!("{text:?} is not a unicast address; expected a host address"),
        ));
    }
    host_in_subnet(net, addr, &key)?;
    for (j, o) in earlier {
        if o.net.contains(net.addr) || net.contains(o.net.addr) {
            return Err(err(
                &key,
                format!(
                    "{text:?} overlaps interfaces[{j}].address {}/{} ({}); \
                     expected disjoint subnets",
                    o.addr, o.net.len, o.name
                ),
            ));
        }
    }
    let mut dests = dests.to_vec();
    let first_own = dests.len();
    check_repeat(&dests, net, &key)?;
    let mut iface = Interface {
        name,
        side,
        addr,
        net,
        gateway: None,
        routes: Vec::new(),
        virtual_addrs: Vec::new(),
        source_check: r.source_check.unwrap_or(true),
    };
    dests.push((net, key));
    if let Some(g) = r.gateway {
        let key = format!("{at}.gateway");
        let g = parse_addr(&g, &key)?;
        neighbor_on(&iface, g, &key)?;
        let default = Ipv4Net {
            addr: Ipv4Addr::UNSPECIFIED,
            len: 0,
        };
        check_repeat(&dests, default, &key)?;
        dests.push((default, key));
        iface.gateway = Some(g);
    }
    for (k, route) in r.routes.unwrap_or_default().into_iter().enumerate() {
        let rk = format!("{at}.routes[{k}]");
        let pk = format!("{rk}.prefix");
        let p = required(route.prefix, &pk, "expected a destination prefix")?;
        let p = prefix(&p, &pk)?;
        let vk = format!("{rk}.via");
        let via = required(route.via, &vk, "expected the next hop's address")?;
        let via = parse_addr(&via, &vk)?;
        neighbor_on(&iface, via, &vk)?;
        check_repeat(&dests, p, &pk)?;
        dests.push((p, pk));
        iface.routes.push(Route { net: p, via });
    }
    for (k, v) in r.virtual_addresses.unwrap_or_default().iter().enumerate() {
        let vk = format!("{at}.virtual_addresses[{k}]");
        let a = parse_addr(v, &vk)?;
        if !unicast(a) {
            return Err(err(
                &vk,
                format!("{v:?} is not a unicast address; expected a host address"),
            ));
        }
        if !iface.net.contains(a) {
            return Err(err(
                &vk,
                format!(
                    "{v:?} is outside this interface's subnet {}/{}; expected an address in it",
                    iface.net.addr, iface.net.len
                ),
            ));
        }
        host_in_subnet(iface.net, a, &vk)?;
        if a == iface.addr || iface.virtual_addrs.contains(&a) {
            return Err(err(
                &vk,
                format!("{v:?} repeats an address of this interface; expected another address of its subnet"),
            ));
        }
        iface.virtual_addrs.push(a);
    }
    Ok((iface, dests.split_off(first_own)))
}

fn check_repeat(dests: &[(Ipv4Net, String)], p: Ipv4Net, key: &str) -> Result<()> {
    match dests.iter().find(|(d, _)| *d == p) {
        Some((_, other)) if other.ends_with(".gateway") || p.len == 0 => Err(err(
            key,
            format!("the default route is already set by {other}; expected one default route"),
        )),
        Some((_, other)) => Err(err(
            key,
            format!("{p} is already a destination of {other}; expected each prefix once"),
        )),
        None => Ok(()),
    }
}

/// The validated interfaces, for checking where an address of the NAT section lives.
struct Segments<'a> {
    interfaces: &'a [Interface],
}

impl Segments<'_> {
    fn nets(&self, side: Side) -> Vec<Ipv4Net> {
        self.interfaces
            .iter()
            .filter(|i| i.side == side)
            .map(|i| i.net)
            .collect()
    }

    /// Checks that `a` can be answered for on a public segment: translated addresses
    /// (VIPs, PAT addresses) are claimed by proxy ARP there.
    fn public_addr(&self, a: Ipv4Addr, key: &str, what: &str) -> Result<()> {
        for (i, iface) in self.interfaces.iter().enumerate() {
            if a == iface.addr {
                return Err(err(
                    key,
                    format!(
                        "{a} is interfaces[{i}]'s own address; expected {what} other than \
                         the interfaces' addresses"
                    ),
                ));
            }
            let hops = iface
                .gateway
                .iter()
                .map(|g| (*g, "gateway".to_string()))
                .chain(
                    iface
                        .routes
                        .iter()
                        .enumerate()
                        .map(|(k, r)| (r.via, format!("routes[{k}].via"))),
                );
            for (hop, field) in hops {
                if hop == a {
                    return Err(err(
                        key,
                        format!(
                            "{a} is interfaces[{i}].{field}, a router's address; expected {what} \
                             no other host uses"
                        ),
                    ));
                }
            }
        }
        let Some(iface) = self
            .interfaces
            .iter()
            .find(|i| i.side == Side::Public && i.net.contains(a))
        else {
            return Err(err(
                key,
                format!(
                    "{a} is outside every public interface's subnet; expected {what} in {}",
                    join_nets(&self.nets(Side::Public))
                ),
            ));
        };
        host_in_subnet(iface.net, a, key)
    }

    /// Checks that `a` is an internal host: on a private segment or behind a private route.
    fn private_host(&self, a: Ipv4Addr, key: &str) -> Result<()> {
        for iface in self.interfaces.iter().filter(|i| i.side == Side::Private) {
            if iface.net.contains(a) {
                if a == iface.addr {
                    return Err(err(
                        key,
                        format!(
                            "{a} is the gateway's own address on {}; expected an internal host",
                            iface.name
                        ),
                    ));
                }
                return host_in_subnet(iface.net, a, key);
            }
            if iface.routes.iter().any(|r| r.net.contains(a)) {
                return Ok(());
            }
        }
        Err(err(
            key,
            format!(
                "{a} is outside every private subnet and private route; expected an address in {}",
                join_nets(&self.private_dests())
            ),
        ))
    }

    fn private_dests(&self) -> Vec<Ipv4Net> {
        self.interfaces
            .iter()
            .filter(|i| i.side == Side::Private)
            .flat_map(|i| std::iter::once(i.net).chain(i.routes.iter().map(|r| r.net)))
            .collect()
    }

    /// Checks that prefix `p` lies within a private subnet or a private route's prefix.
    fn private_prefix(&self, p: Ipv4Net, key: &str) -> Result<()> {
        let dests = self.private_dests();
        if dests.iter().any(|d| d.len <= p.len && d.contains(p.addr)) {
            return Ok(());
        }
        Err(err(
            key,
            format!(
                "{p} is not inside a private interface's subnet or a private route; expected a \
                 prefix within {}",
                join_nets(&dests)
            ),
        ))
    }
}

/// The NAT section. Its own values are always checked; its addresses only against valid
/// `interfaces`, the DNAT rules and pools only against valid VIPs, the PAT port shares only
/// for a valid number of `workers`, and the engine's own checks (overlaps, Maglev tables)
/// only when everything they read is valid.
/// Anti-spoofing from the interfaces: inside is what the private side serves (its subnets
/// and routes); a private side with the default route may have any source, so only the
/// public side is checked then. The engine checks per side, so interfaces of one side must
/// agree on `source_check`.
fn source_check(interfaces: &[Interface], p: &mut Problems) -> SourceCheck {
    let mut check = SourceCheck::default();
    for (side, name) in [(Side::Public, "public"), (Side::Private, "private")] {
        let mut on: Option<(usize, bool)> = None;
        for (i, ifc) in interfaces
            .iter()
            .enumerate()
            .filter(|(_, f)| f.side == side)
        {
            match on {
                None => on = Some((i, ifc.source_check)),
                Some((j, first)) if first != ifc.source_check => p.push(err(
                    &format!("interfaces[{i}].source_check"),
                    format!(
                        "{} differs from interfaces[{j}].source_check ({first}); the check \
                         is per side, expected the same on every {name} interface",
                        ifc.source_check,
                    ),
                )),
                Some(_) => {}
            }
        }
        let on = on.is_some_and(|(_, b)| b);
        match side {
            Side::Public => check.public = on,
            Side::Private => check.private = on,
        }
    }
    for ifc in interfaces.iter().filter(|f| f.side == Side::Private) {
        check.inside.push((ifc.net.addr, ifc.net.len));
        check.inside.extend(
            ifc.routes
                .iter()
                .filter(|r| r.net.len > 0)
                .map(|r| (r.net.addr, r.net.len)),
        );
        if ifc.gateway.is_some() || ifc.routes.iter().any(|r| r.net.len == 0) {
            check.private = false;
        }
    }
    check
}

fn nat(
    raw: RawNat,
    interfaces: Option<&[Interface]>,
    workers: Option<usize>,
    p: &mut Problems,
) -> (NatConfig, Option<Policy>) {
    let d = NatConfig::default();
    let before = p.count();

    let capacity = int(
        raw.capacity,
        i64::from(d.capacity),
        "nat.capacity",
        1,
        i64::from(ConnTable::MAX_CAPACITY),
    )
    .and_then(|c| {
        u32::try_from(c).map_err(|_| err("nat.capacity", format!("{c} is out of range")))
    });
    let capacity = p.or(capacity, d.capacity);
    let filtering = match raw.filtering.as_deref() {
        None => d.filtering,
        Some("address-and-port-dependent") => Filtering::AddressAndPortDependent,
        Some("endpoint-independent") => Filtering::EndpointIndependent,
        Some(other) => {
            p.push(err(
                "nat.filtering",
                format!(
                    "{other:?} is not a filtering behaviour; expected \
                     \"address-and-port-dependent\" or \"endpoint-independent\""
                ),
            ));
            d.filtering
        }
    };
    let pat_ports = match raw.pat_ports.as_deref() {
        None => Some((d.port_lo, d.port_hi)),
        Some(s) => p.take(port_range(s).ok_or_else(|| {
            err(
                "nat.pat_ports",
                format!(
                    "{s:?} is not a port range; expected \"lo-hi\" with 1 <= lo <= hi <= 65535"
                ),
            )
        })),
    };
    let workers = workers.and_then(|workers| {
        if let Some((port_lo, port_hi)) = pat_ports {
            let ports = usize::from(port_hi - port_lo) + 1;
            if workers > ports {
                p.push(err(
                    "workers.cores",
                    format!(
                        "{workers} workers but nat.pat_ports has only {ports} ports; expected at \
                         most one worker per PAT port"
                    ),
                ));
                return None;
            }
        }
        p.take(u16::try_from(workers).map_err(|_| {
            err(
                "workers.cores",
                format!("{workers} workers; expected at most {}", u16::MAX),
            )
        }))
    });
    let (port_lo, port_hi) = pat_ports.unwrap_or((d.port_lo, d.port_hi));
    // By default one host may hold a quarter of one address's ports (RFC 6888 REQ-4).
    let quota_default = (i64::from(port_hi) - i64::from(port_lo) + 1) / 4;
    let pat_quota = int(
        raw.pat_quota,
        quota_default.max(1),
        "nat.pat_quota",
        0,
        i64::from(u32::MAX),
    )
    .and_then(|q| {
        u32::try_from(q).map_err(|_| err("nat.pat_quota", format!("{q} is out of range")))
    });
    let pat_quota = p.or(pat_quota, 0);
    let frag_entries = int(
        raw.frag_entries,
        d.frag_entries as i64,
        "nat.frag_entries",
        1,
        FRAG_ENTRIES_MAX,
    )
    .and_then(|f| to_usize(f, "nat.frag_entries"));
    let frag_timeout = int_u32(raw.frag_timeout, d.frag_timeout, "nat.frag_timeout", 1);
    let frag_hold = int(
        raw.frag_hold,
        d.frag_hold as i64,
        "nat.frag_hold",
        0,
        FRAG_HOLD_MAX,
    )
    .and_then(|f| to_usize(f, "nat.frag_hold"));
    let frag_entries = p.or(frag_entries, d.frag_entries);
    let frag_timeout = p.or(frag_timeout, d.frag_timeout);
    let frag_hold = p.or(frag_hold, d.frag_hold);
    let timeouts = timeouts(raw.timeouts.unwrap_or_default(), p);

    let raw_vips = raw.vips.unwrap_or_default();
    let raw_pat = raw.pat.unwrap_or_default();
    if raw_vips.is_empty() && raw_pat.is_empty() {
        p.push(err(
            "nat",
            "translates nothing; expected at least one address in nat.vips or one [[nat.pat]] rule",
        ));
    }
    let mut config = NatConfig {
        capacity,
        timeouts,
        workers: workers.unwrap_or(1),
        port_lo,
        port_hi,
        filtering,
        vips: Vec::new(),
        dnat: Vec::new(),
        pools: Vec::new(),
        pat: Vec::new(),
        frag_entries,
        frag_timeout,
        frag_hold,
        event_queue: d.event_queue,
        source_check: SourceCheck::default(),
        pat_quota,
    };
    let Some(interfaces) = interfaces else {
        return (config, None);
    };
    config.source_check = source_check(interfaces, p);
    let seg = Segments { interfaces };

    // The valid VIPs with their index in the file.
    let mut vips: Vec<(usize, Ipv4Addr)> = Vec::with_capacity(raw_vips.len());
    for (i, v) in raw_vips.iter().enumerate() {
        if let Some(a) = p.take(vip(v, i, &vips, &seg)) {
            vips.push((i, a));
        }
    }
    let vips_valid = vips.len() == raw_vips.len();
    config.vips = vips.into_iter().map(|(_, a)| a).collect();
    // Rules and pools name VIPs: against a list missing a refused one, a rule naming it
    // would be reported too.
    if vips_valid {
        for (i, r) in raw.dnat.unwrap_or_default().into_iter().enumerate() {
            let rule = dnat_rule(r, &format!("nat.dnat[{i}]"), &config.vips, &seg);
            if let Some(rule) = p.take(rule) {
                config.dnat.push(rule);
            }
        }
        // The index in the file of each valid pool.
        let mut pool_at: Vec<usize> = Vec::new();
        for (i, raw_pool) in raw.pools.unwrap_or_default().into_iter().enumerate() {
            let at = format!("nat.pools[{i}]");
            let pool = pool(raw_pool, &at, &config.vips, &seg).and_then(|pool| {
                let earlier = config.pools.iter().zip(&pool_at);
                match earlier
                    .map(|(o, j)| (&o.name, j))
                    .find(|(n, _)| **n == pool.name)
                {
                    Some((_, j)) => Err(err(
                        &format!("{at}.name"),
                        format!(
                            "{:?} repeats nat.pools[{j}].name; expected unique names",
                            pool.name
                        ),
                    )),
                    None => Ok(pool),
                }
            });
            if let Some(pool) = p.take(pool) {
                config.pools.push(pool);
                pool_at.push(i);
            }
        }
    }
    for (i, r) in raw_pat.into_iter().enumerate() {
        if let Some(rule) = p.take(pat_rule(r, &format!("nat.pat[{i}]"), &seg)) {
            config.pat.push(rule);
        }
    }
    // The engine's checks see the section whole: an overlap with a refused rule can't be
    // told.
    let policy = if p.count() == before && workers.is_some() {
        p.take(Policy::new(&config).map_err(policy_error))
    } else {
        None
    };
    (config, policy)
}

/// VIP `i`, `v`, given the valid VIPs before it with their index.
fn vip(v: &str, i: usize, earlier: &[(usize, Ipv4Addr)], seg: &Segments<'_>) -> Result<Ipv4Addr> {
    let key = format!("nat.vips[{i}]");
    let a = parse_addr(v, &key)?;
    if let Some((j, _)) = earlier.iter().find(|(_, o)| *o == a) {
        return Err(err(
            &key,
            format!("{a} repeats nat.vips[{j}]; expected each VIP once"),
        ));
    }
    seg.public_addr(a, &key, "a VIP")?;
    Ok(a)
}

fn timeouts(raw: crate::raw::RawTimeouts, p: &mut Problems) -> Timeouts {
    let d = Timeouts::default();
    let mut t = |v: Option<Int>, default: u32, name: &str| {
        p.or(
            int_u32(v, default, &format!("nat.timeouts.{name}"), 1),
            default,
        )
    };
    let timeouts = Timeouts {
        tcp_syn_sent: t(raw.tcp_syn_sent, d.tcp_syn_sent, "tcp_syn_sent"),
        tcp_syn_recv: t(raw.tcp_syn_recv, d.tcp_syn_recv, "tcp_syn_recv"),
        tcp_established: t(raw.tcp_established, d.tcp_established, "tcp_established"),
        tcp_fin_wait: t(raw.tcp_fin_wait, d.tcp_fin_wait, "tcp_fin_wait"),
        tcp_close_wait: t(raw.tcp_close_wait, d.tcp_close_wait, "tcp_close_wait"),
        tcp_last_ack: t(raw.tcp_last_ack, d.tcp_last_ack, "tcp_last_ack"),
        tcp_time_wait: t(raw.tcp_time_wait, d.tcp_time_wait, "tcp_time_wait"),
        tcp_close: t(raw.tcp_close, d.tcp_close, "tcp_close"),
        udp: t(raw.udp, d.udp, "udp"),
        icmp: t(raw.icmp, d.icmp, "icmp"),
        mapping: d.mapping,
    };
    // 0 is meaningful here: a mapping goes at the first scan after its last connection.
    Timeouts {
        mapping: p.or(
            int_u32(raw.mapping, d.mapping, "nat.timeouts.mapping", 0),
            d.mapping,
        ),
        ..timeouts
    }
}

fn vip_of(v: Option<String>, key: &str, vips: &[Ipv4Addr]) -> Result<Ipv4Addr> {
    let v = required(v, key, "expected one of nat.vips")?;
    let a = parse_addr(&v, key)?;
    if !vips.contains(&a) {
        let list = vips
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ");
        let accepted = if list.is_empty() {
            "add it to nat.vips".to_string()
        } else {
            format!("expected one of nat.vips ({list}) or add it there")
        };
        return Err(err(key, format!("{a} is not one of nat.vips; {accepted}")));
    }
    Ok(a)
}

fn dnat_rule(r: RawDnat, at: &str, vips: &[Ipv4Addr], seg: &Segments<'_>) -> Result<DnatRule> {
    let vip = vip_of(r.vip, &format!("{at}.vip"), vips)?;
    let proto = proto(r.proto.as_deref(), &format!("{at}.proto"))?;
    let pk = format!("{at}.port");
    let (port_lo, port_hi) = dnat_ports(
        &required(r.port, &pk, "expected a port or a range \"lo-hi\"")?,
        &pk,
    )?;
    let tk = format!("{at}.to");
    let to = parse_addr(
        &required(r.to, &tk, "expected the internal host's address")?,
        &tk,
    )?;
    seg.private_host(to, &tk)?;
    let to_port = match r.to_port {
        None => None,
        Some(Int(p)) => {
            let key = format!("{at}.to_port");
            let p = parse_port(p, &key)?;
            let last = u32::from(p) + u32::from(port_hi - port_lo);
            if last > 65535 {
                return Err(err(
                    &key,
                    format!(
                        "{p} maps {at}.port {port_lo}-{port_hi} past port 65535; expected at most {}",
                        65535 - u32::from(port_hi - port_lo)
                    ),
                ));
            }
            Some(p)
        }
    };
    Ok(DnatRule {
        vip,
        proto,
        port_lo,
        port_hi,
        to,
        to_port,
    })
}

fn pool(p: RawPool, at: &str, vips: &[Ipv4Addr], seg: &Segments<'_>) -> Result<Pool> {
    let nk = format!("{at}.name");
    let name = required(p.name, &nk, "expected a name for logs, e.g. \"web\"")?;
    if name.trim().is_empty() {
        return Err(err(
            &nk,
            format!("{name:?} is empty; expected a name, e.g. \"web\""),
        ));
    }
    let vip = vip_of(p.vip, &format!("{at}.vip"), vips)?;
    let proto = proto(p.proto.as_deref(), &format!("{at}.proto"))?;
    let pk = format!("{at}.port");
    let port = parse_port(required(p.port, &pk, PORT)?.0, &pk)?;
    let sk = format!("{at}.table_size");
    let table_size = int(
        p.table_size,
        i64::from(Maglev::DEFAULT_SIZE),
        &sk,
        1,
        i64::from(Maglev::MAX_SIZE),
    )?;
    let bk = format!("{at}.backends");
    let raw_backends = required(p.backends, &bk, "expected at least one backend")?;
    if raw_backends.is_empty() {
        return Err(err(
            &bk,
            "[] is empty; expected at least one { addr = \"a.b.c.d\", port = N }",
        ));
    }
    let mut backends: Vec<Backend> = Vec::with_capacity(raw_backends.len());
    for (i, b) in raw_backends.into_iter().enumerate() {
        let at = format!("{bk}[{i}]");
        let ak = format!("{at}.addr");
        let a = parse_addr(
            &required(b.addr, &ak, "expected the backend's address")?,
            &ak,
        )?;
        seg.private_host(a, &ak)?;
        let pk = format!("{at}.port");
        let port = parse_port(required(b.port, &pk, PORT)?.0, &pk)?;
        let weight = int_u32(b.weight, 1, &format!("{at}.weight"), 0)?;
        if let Some(j) = backends.iter().position(|o| o.addr == a && o.port == port) {
            return Err(err(
                &at,
                format!("{a}:{port} repeats {bk}[{j}]; expected each backend once (use weight to favour one)"),
            ));
        }
        backends.push(Backend {
            addr: a,
            port,
            weight,
        });
    }
    let ek = format!("{at}.when_empty");
    let when_empty = match p.when_empty.as_deref() {
        None | Some("reject") => EmptyPool::Reject,
        Some("drop") => EmptyPool::Drop,
        Some(other) => {
            return Err(err(
                &ek,
                format!(
                    "{other:?} is not a choice; expected \"reject\" (a TCP RST or an ICMP \
                     port unreachable from the VIP) or \"drop\""
                ),
            ))
        }
    };
    let pk = format!("{at}.persistence");
    let persistence = match p.persistence.as_deref() {
        None | Some("source_address_port") => Persistence::SourceAddressPort,
        Some("source_address") => Persistence::SourceAddress,
        Some(other) => {
            return Err(err(
                &pk,
                format!(
                    "{other:?} is not a choice; expected \"source_address_port\" (each \
                     connection on its own) or \"source_address\" (all of a client's \
                     connections to one backend)"
                ),
            ))
        }
    };
    let dk = format!("{at}.on_backend_down");
    let reset_on_down = match p.on_backend_down.as_deref() {
        None | Some("keep") => false,
        Some("reset") => true,
        Some(other) => {
            return Err(err(
                &dk,
                format!(
                    "{other:?} is not a choice; expected \"keep\" (its connections go on) or \
                     \"reset\" (they are removed, and their clients reset)"
                ),
            ))
        }
    };
    Ok(Pool {
        name,
        vip,
        proto,
        port,
        backends,
        when_empty,
        persistence,
        reset_on_down,
        table_size: u32::try_from(table_size).map_err(|_| err(&sk, "out of range"))?,
    })
}

fn pat_rule(r: RawPat, at: &str, seg: &Segments<'_>) -> Result<PatRule> {
    let fk = format!("{at}.from");
    let from_raw = required(
        r.from,
        &fk,
        "expected the internal prefixes this rule covers",
    )?;
    if from_raw.is_empty() {
        return Err(err(
            &fk,
            "[] is empty; expected at least one internal prefix",
        ));
    }
    let mut from = Vec::with_capacity(from_raw.len());
    for (i, s) in from_raw.iter().enumerate() {
        let key = format!("{fk}[{i}]");
        let p = prefix(s, &key)?;
        seg.private_prefix(p, &key)?;
        from.push(p);
    }
    let tk = format!("{at}.to");
    let to_raw = required(
        r.to,
        &tk,
        "expected the public addresses flows leave behind",
    )?;
    if to_raw.is_empty() {
        return Err(err(
            &tk,
            "[] is empty; expected at least one public address",
        ));
    }
    let mut to: Vec<Ipv4Addr> = Vec::with_capacity(to_raw.len());
    for (i, s) in to_raw.iter().enumerate() {
        let key = format!("{tk}[{i}]");
        let a = parse_addr(s, &key)?;
        if let Some(j) = to.iter().position(|o| *o == a) {
            return Err(err(
                &key,
                format!("{a} repeats {tk}[{j}]; expected each address once"),
            ));
        }
        seg.public_addr(a, &key, "a PAT address")?;
        to.push(a);
    }
    Ok(PatRule { from, to })
}

fn neighbors(raw: RawNeighbors, p: &mut Problems) -> Neighbors {
    let d = Neighbors::default();
    let capacity = int(
        raw.capacity,
        d.capacity as i64,
        "neighbors.capacity",
        16,
        NEIGHBORS_MAX,
    )
    .and_then(|c| to_usize(c, "neighbors.capacity"));
    let hold = int(raw.hold, d.hold as i64, "neighbors.hold", 1, 64)
        .and_then(|h| to_usize(h, "neighbors.hold"));
    Neighbors {
        capacity: p.or(capacity, d.capacity),
        reachable_secs: p.or(
            int_u32(raw.reachable, d.reachable_secs, "neighbors.reachable", 1),
            d.reachable_secs,
        ),
        retry_ms: p.or(
            int_u32(raw.retry_ms, d.retry_ms, "neighbors.retry_ms", 10),
            d.retry_ms,
        ),
        retries: p.or(
            int_u32(raw.retries, d.retries, "neighbors.retries", 1),
            d.retries,
        ),
        hold: p.or(hold, d.hold),
    }
}

/// The engine's own checks, with its `at` (`dnat[1]`, `pools[0] (web)`) turned into a key
/// path under `nat.`.
fn policy_error(e: PolicyError) -> ConfigError {
    let key = |at: &str| format!("nat.{}", at.split(' ').next().unwrap_or(at));
    match e {
        PolicyError::Overlap { at, other, port } => err(
            &key(&at),
            format!(
                "port {port} is already covered by {}; expected each VIP, protocol and port in \
                 one rule or pool",
                key(&other)
            ),
        ),
        PolicyError::BadPool { at, why } => {
            let (field, expected) = match why {
                MaglevError::SizeNotPrime(_) => (
                    ".table_size",
                    format!("; expected a prime number such as {}", Maglev::DEFAULT_SIZE),
                ),
                MaglevError::TooSmall { .. } | MaglevError::TooLarge(_) => {
                    (".table_size", String::new())
                }
                MaglevError::NoBackends | MaglevError::TooManyBackends(_) => {
                    (".backends", String::new())
                }
            };
            err(&format!("{}{field}", key(&at)), format!("{why}{expected}"))
        }
        PolicyError::NotAVip { at, addr } => err(
            &key(&at),
            format!("{addr} is not one of nat.vips; add it there"),
        ),
        PolicyError::BadProto { at } => {
            err(&key(&at), format!("protocol is not tcp or udp; {PROTO}"))
        }
        PolicyError::BadPorts { at, why } => err(&key(&at), why),
        PolicyError::EmptyPat { at } => err(
            &key(&at),
            "needs at least one prefix in from and one address in to",
        ),
        PolicyError::NoWorkers => err("workers.cores", "[] is empty; expected at least one CPU"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_parse_strictly() {
        assert_eq!(
            addr_len("203.0.113.1/24", "k").ok(),
            Some((Ipv4Addr::new(203, 0, 113, 1), 24))
        );
        for bad in [
            "203.0.113.1",
            "203.0.113.1/33",
            "203.0.113.1/+8",
            "1.2.3/8",
            "/8",
            "1.2.3.4/",
        ] {
            let e = addr_len(bad, "k").unwrap_err().to_string();
            assert_eq!(e, format!("k: {bad:?} is not an IPv4 prefix; {PREFIX}"));
        }
        assert_eq!(
            prefix("198.18.0.0/15", "k").ok(),
            Some(Ipv4Net {
                addr: Ipv4Addr::new(198, 18, 0, 0),
                len: 15
            })
        );
        let e = prefix("198.19.0.0/15", "k").unwrap_err().to_string();
        assert!(
            e.contains("expected the network address, 198.18.0.0/15"),
            "{e}"
        );
        assert_eq!(prefix("0.0.0.0/0", "k").map(|p| p.len).ok(), Some(0));
    }

    #[test]
    fn network_and_broadcast() {
        let n = network(Ipv4Addr::new(203, 0, 113, 77), 26);
        assert_eq!(n.addr, Ipv4Addr::new(203, 0, 113, 64));
        assert_eq!(broadcast(n), Ipv4Addr::new(203, 0, 113, 127));
        let all = network(Ipv4Addr::new(1, 2, 3, 4), 0);
        assert_eq!(
            (all.addr, broadcast(all)),
            (Ipv4Addr::UNSPECIFIED, Ipv4Addr::BROADCAST)
        );
        let host = network(Ipv4Addr::new(1, 2, 3, 4), 32);
        assert_eq!(broadcast(host), Ipv4Addr::new(1, 2, 3, 4));
    }

    #[test]
    fn port_ranges() {
        assert_eq!(port_range("1024-65535"), Some((1024, 65535)));
        assert_eq!(port_range("80-80"), Some((80, 80)));
        assert_eq!(port_range(" 80 - 90 "), Some((80, 90)));
        for bad in [
            "0-10", "10-5", "1-65536", "80", "a-b", "-5-10", "+5-10", "5-",
        ] {
            assert_eq!(port_range(bad), None, "{bad}");
        }
        assert_eq!(dnat_ports(&RawPorts::Number(80), "k").ok(), Some((80, 80)));
        assert_eq!(
            dnat_ports(&RawPorts::Text("80".into()), "k").ok(),
            Some((80, 80))
        );
        assert_eq!(
            dnat_ports(&RawPorts::Text("8000-8099".into()), "k").ok(),
            Some((8000, 8099))
        );
        assert!(dnat_ports(&RawPorts::Number(0), "k").is_err());
        assert!(dnat_ports(&RawPorts::Number(65536), "k").is_err());
        assert!(dnat_ports(&RawPorts::Text("x".into()), "k").is_err());
    }

    #[test]
    fn env_names_map_to_keys() {
        assert!(is_override("VIPGATE_NAT__CAPACITY"));
        assert!(is_override("vipgate_log__level"));
        assert!(!is_override("VIPGATEX"));
        assert!(!is_override("PATH"));
        assert_eq!(env_key("VIPGATE_NAT__CAPACITY"), "nat.capacity");
        assert_eq!(
            env_key("VIPGATE_NAT__TIMEOUTS__TCP_CLOSE"),
            "nat.timeouts.tcp_close"
        );
        assert_eq!(env_key("VIPGATE_XDP__FRAME_SIZE"), "xdp.frame_size");
    }

    #[test]
    fn interface_names() {
        assert!(ifname(Some("vg-pub".into()), "k").is_ok());
        assert!(ifname(Some("a".repeat(15)), "k").is_ok());
        for bad in ["", "a234567890123456", "a b", "a/b", "a:1", ".", ".."] {
            assert!(ifname(Some(bad.into()), "k").is_err(), "{bad:?}");
        }
    }
}
