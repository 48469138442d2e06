//! vipgate's configuration: a TOML file plus `VIPGATE_*` environment overrides, checked as a
//! whole before anything starts.
//!
//! The file is read with the `config` crate into a loose form that mirrors the file
//! (unknown keys refused), then validated into [`Config`]: every value in range and every
//! cross-reference consistent (VIPs on a public segment, backends reachable on the private
//! side, rules that do not overlap). Every problem found comes back in one [`ConfigError`],
//! one line each naming the key, the value and what would be accepted: the validator goes on
//! across sections and list items, and skips only the checks that need a value it refused.
//!
//! Environment variables override single keys of the file: `VIPGATE_<SECTION>__<KEY>`, with
//! `__` between nested keys, e.g. `VIPGATE_NAT__CAPACITY=4096`, `VIPGATE_XDP__MODE=drv`,
//! `VIPGATE_NAT__TIMEOUTS__UDP=120`. Values that look like numbers or booleans are read as
//! such. The two lists of single values are written as comma-separated items:
//! `VIPGATE_WORKERS__CORES=0,1`, `VIPGATE_NAT__VIPS=203.0.113.10,203.0.113.11` (one item is
//! a list of one). The lists of tables (`interfaces`, `nat.dnat`, `nat.pools`, `nat.pat`,
//! and so everything inside them) can only be set in the file: a variable naming one is an
//! error. So is a `VIPGATE_*` variable that names no key, like an unknown key in the file.
//!
//! ```
//! use std::collections::HashMap;
//! use vipgate_config::{Config, XdpMode};
//!
//! let file = r#"
//!     [workers]
//!     cores = [0]
//!     [[interfaces]]
//!     name = "vg-pub"
//!     side = "public"
//!     address = "203.0.113.1/24"
//!     [[interfaces]]
//!     name = "vg-priv"
//!     side = "private"
//!     address = "198.18.0.1/24"
//!     [nat]
//!     vips = ["203.0.113.10"]
//! "#;
//! let env = HashMap::from([
//!     ("VIPGATE_XDP__MODE".to_string(), "drv".to_string()),
//!     ("VIPGATE_WORKERS__CORES".to_string(), "0,1".to_string()),
//! ]);
//! let config = Config::from_toml_str(file, env).unwrap();
//! assert_eq!(config.xdp.mode, XdpMode::Drv);
//! assert_eq!(config.workers, [0, 1]);
//!
//! let env = HashMap::from([("VIPGATE_NAT__CAPACITY".to_string(), "0".to_string())]);
//! let e = Config::from_toml_str(file, env).unwrap_err();
//! assert_eq!(
//!     e.to_string(),
//!     "nat.capacity: 0 is out of range; expected 1 to 2147483648 \
//!      (set by environment variable VIPGATE_NAT__CAPACITY)"
//! );
//! ```

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vipgate_nat::policy::{Ipv4Net, NatConfig, Policy};
use vipgate_nat::Side;

mod error;
mod raw;
mod reload;
mod validate;

pub use error::{ConfigError, Problem};

/// The prefix of environment variables that override keys of the file.
pub const ENV_PREFIX: &str = "VIPGATE";

/// A checked configuration: everything vipgate needs to start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The CPU of each worker, in worker order: worker `i` runs on `workers[i]` and polls
    /// queue `i` of every interface.
    pub workers: Vec<usize>,
    /// AF_XDP settings.
    pub xdp: Xdp,
    /// The data-plane interfaces, in file order; at least one public and one private.
    pub interfaces: Vec<Interface>,
    /// The NAT engine's configuration, ready for `vipgate_nat::Engine::new`; its `workers` is
    /// the number of workers.
    pub nat: NatConfig,
    /// Neighbor (ARP) table settings.
    pub neighbors: Neighbors,
    /// ICMP error generation.
    pub icmp: Icmp,
    /// Logging.
    pub log: Log,
    /// The control socket.
    pub control: Control,
    /// The Prometheus metrics endpoint.
    pub metrics: Metrics,
    /// The NAT event log (RFC 6888 REQ-12).
    pub events: Events,
    /// High availability: the election and state sync with a peer box; `None` runs alone,
    /// always active.
    pub ha: Option<Ha>,
    /// Health checks of pool backends, by pool name (`nat.pools[].check`).
    pub checks: Vec<(String, HealthCheck)>,
    /// [`Config::nat`]'s policy, compiled once by the validation that checked it, for the
    /// engine to run as it is.
    pub policy: CompiledPolicy,
}

/// A compiled NAT policy, shared. Two compare equal whatever they hold: a policy is derived
/// from [`Config::nat`], which the comparison of two [`Config`]s already covers.
#[derive(Clone, Debug)]
pub struct CompiledPolicy(pub Arc<Policy>);

impl PartialEq for CompiledPolicy {
    fn eq(&self, _: &CompiledPolicy) -> bool {
        true
    }
}

impl Eq for CompiledPolicy {}

/// A data-plane interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Kernel interface name.
    pub name: String,
    /// Which network it faces.
    pub side: Side,
    /// The gateway's own address on this segment.
    pub addr: Ipv4Addr,
    /// The segment's subnet (network address and prefix length).
    pub net: Ipv4Net,
    /// The next hop of the default route, if the default route leaves through this interface.
    pub gateway: Option<Ipv4Addr>,
    /// Static routes through this interface.
    pub routes: Vec<Route>,
    /// Addresses on this segment that move with the active role (the internal hosts'
    /// default gateway, typically): answered and announced only while active.
    pub virtual_addrs: Vec<Ipv4Addr>,
    /// Anti-spoofing on this side (`source_check`, on by default): see
    /// [`vipgate_nat::policy::SourceCheck`].
    pub source_check: bool,
}

/// A static route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Destination prefix (host bits zero).
    pub net: Ipv4Net,
    /// Next hop, inside the interface's subnet.
    pub via: Ipv4Addr,
}

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpMode {
    /// Generic XDP (`XDP_FLAGS_SKB_MODE`): works on every driver, veth included; copies.
    #[default]
    Skb,
    /// Native XDP in the driver (`XDP_FLAGS_DRV_MODE`).
    Drv,
}

/// AF_XDP settings, the same for every worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Xdp {
    /// Attach mode.
    pub mode: XdpMode,
    /// Frames per RX/TX batch, 1 to 1024.
    pub batch: usize,
    /// UMEM frames per worker: a power of two, at least `2 * ring * interfaces`.
    pub frames: u32,
    /// Bytes per UMEM frame: 2048 or 4096.
    pub frame_size: u32,
    /// Entries in each RX, TX, fill and completion ring: a power of two, 64 to 16384.
    pub ring: u32,
}

impl Default for Xdp {
    fn default() -> Self {
        Xdp {
            mode: XdpMode::Skb,
            batch: 64,
            frames: 4096,
            frame_size: 2048,
            ring: 1024,
        }
    }
}

/// Neighbor (ARP) table settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbors {
    /// Entries, at least 16.
    pub capacity: usize,
    /// Seconds an ARP answer is trusted before it is confirmed again, at least 1.
    pub reachable_secs: u32,
    /// Milliseconds between ARP requests for an unresolved address, at least 10.
    pub retry_ms: u32,
    /// Requests sent before an address is given up, at least 1.
    pub retries: u32,
    /// Frames held per unresolved address, 1 to 64.
    pub hold: usize,
}

impl Default for Neighbors {
    fn default() -> Self {
        Neighbors {
            capacity: 1024,
            reachable_secs: 30,
            retry_ms: 1000,
            retries: 3,
            hold: 4,
        }
    }
}

/// ICMP error generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmp {
    /// ICMP errors (time exceeded) each worker sends per second; 0 sends none.
    pub rate: u32,
}

impl Default for Icmp {
    fn default() -> Self {
        Icmp { rate: 100 }
    }
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Log {
    /// A `tracing` filter: comma-separated levels (`trace`, `debug`, `info`, `warn`, `error`,
    /// `off`) and `target=level` directives, e.g. `info` or `info,vipgate=debug`.
    pub level: String,
    /// How each line is written.
    pub format: LogFormat,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (`"text"`).
    #[default]
    Text,
    /// One JSON object per line (`"json"`), for log collectors.
    Json,
}

/// The control socket, where `vipgate` commands reach a running gateway.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Control {
    /// Path of the Unix socket: absolute, naming a file.
    pub socket: PathBuf,
}

impl Control {
    /// Where the socket lives unless the file says otherwise; systemd's
    /// `RuntimeDirectory=vipgate` creates `/run/vipgate`.
    pub const DEFAULT_SOCKET: &'static str = "/run/vipgate/vipgate.sock";
}

impl Default for Control {
    fn default() -> Self {
        Control {
            socket: PathBuf::from(Control::DEFAULT_SOCKET),
        }
    }
}

/// The Prometheus metrics endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// Address and port to serve `/metrics` on; `None` (the default) serves nothing.
    pub listen: Option<SocketAddr>,
}

/// The NAT event log: one line per mapping created or deleted (RFC 6888 REQ-12), off unless a
/// file is given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Events {
    /// The file events are appended to; `None` (the default) logs none.
    pub file: Option<PathBuf>,
    /// Events written per second at most, 1 to 10 000 000; the rest are counted and dropped.
    pub rate: u32,
    /// Entries in each worker's event queue, 64 to 16 777 216.
    pub queue: usize,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            file: None,
            rate: 10_000,
            queue: 65_536,
        }
    }
}

impl Config {
    /// Loads `path` with the process's `VIPGATE_*` environment variables applied on top.
    ///
    /// # Errors
    /// A [`ConfigError`] for an unreadable file, a TOML syntax error, an unknown key or a
    /// value of the wrong type (the first one found: reading stops there), or else for every
    /// inconsistency the validator finds. It does not name `path`: the caller says which file
    /// it loaded.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with_env(path, process_env()?)
    }

    /// Loads `path` with the overrides in `env` (variable name to value; variables without
    /// the `VIPGATE_` prefix are ignored) instead of the process environment.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn load_with_env(path: &Path, env: HashMap<String, String>) -> Result<Config, ConfigError> {
        // The caller names `path` once (`vipgate: FILE: error`); the error does not repeat it.
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::new("", format!("cannot read the file: {e}")))?;
        validate::load(&text, env)
    }

    /// Loads a configuration from TOML text with the overrides in `env`.
    ///
    /// # Errors
    /// As [`Config::load`].
    pub fn from_toml_str(text: &str, env: HashMap<String, String>) -> Result<Config, ConfigError> {
        validate::load(text, env)
    }

    /// The interface at `index` of [`Config::interfaces`] whose subnet holds `addr`, if any.
    pub fn interface_for(&self, addr: Ipv4Addr) -> Option<(usize, &Interface)> {
        self.interfaces
            .iter()
            .enumerate()
            .find(|(_, i)| i.net.contains(addr))
    }
}

/// The `VIPGATE_*` variables of the process. Others are left out so that an unrelated
/// variable with non-Unicode contents can't fail the load.
fn process_env() -> Result<HashMap<String, String>, ConfigError> {
    let mut env = HashMap::new();
    for (k, v) in std::env::vars_os() {
        let Some(k) = k.to_str() else { continue };
        if !validate::is_override(k) {
            continue;
        }
        match v.into_string() {
            Ok(v) => {
                env.insert(k.to_string(), v);
            }
            Err(v) => {
                return Err(ConfigError::new(
                    validate::env_key(k),
                    format!("{v:?} is not valid UTF-8; expected a UTF-8 value"),
                )
                .set_by_env(k));
            }
        }
    }
    Ok(env)
}

/// High availability (`[ha]`): a VRRPv3 election with a peer box on one data interface,
/// and connection-state sync over a dedicated link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ha {
    /// Virtual router id, 1-255, the same on both boxes (and on keepalived, if a peer).
    pub vrid: u8,
    /// This box's priority, 1-255; 255 claims ownership of the addresses.
    pub priority: u8,
    /// Index in [`Config::interfaces`] of the interface the election runs on.
    pub interface: usize,
    /// Advert interval in milliseconds, a multiple of 10 from 10 to 40950.
    pub advert_interval_ms: u32,
    /// Whether this box takes over from a live master of lower priority.
    pub preempt: bool,
    /// How long it waits before it does, in milliseconds.
    pub preempt_delay_ms: u32,
    /// Unicast peers on the election's segment; empty uses the multicast group 224.0.0.18
    /// and accepts any sender.
    pub peers: Vec<Ipv4Addr>,
    /// Whether the active box uses the VRRP virtual MAC 00:00:5e:00:01:VRID for the
    /// addresses that move, as the source of what it forwards and of its adverts, so that a
    /// takeover changes no neighbor's ARP cache (switches learn the MAC's new port from the
    /// first frame).
    pub virtual_mac: bool,
    /// Gratuitous ARPs per address when this box becomes active.
    pub garp_count: u32,
    /// Milliseconds between them.
    pub garp_interval_ms: u32,
    /// Seconds between repeated announcements while active; 0 announces only on takeover.
    pub garp_refresh_secs: u32,
    /// Priority lost while any data interface's link is down; 0 tracks nothing.
    pub track_link_penalty: u8,
    /// Priority lost while a health-checked pool has no backend up; 0 tracks nothing.
    pub track_pool_penalty: u8,
    /// Connection-state sync with the peer; `None` elects without syncing (failover then
    /// loses every connection).
    pub sync: Option<Sync>,
}

impl Ha {
    /// Default advert interval: one second, as keepalived's.
    pub const DEFAULT_ADVERT_INTERVAL_MS: u32 = 1000;
    /// Default sync port.
    pub const DEFAULT_SYNC_PORT: u16 = 7789;
}

/// Connection-state sync (`[ha.sync]`).
#[derive(Clone, PartialEq, Eq)]
pub struct Sync {
    /// The kernel interface of the sync link; never a data interface.
    pub interface: String,
    /// The address and UDP port this box listens on.
    pub local: SocketAddrV4,
    /// The peer's address and port.
    pub peer: SocketAddrV4,
    /// Where the shared HMAC-SHA-256 key comes from.
    pub key: SyncKeySource,
    /// Milliseconds between heartbeats.
    pub heartbeat_ms: u32,
    /// Milliseconds without a valid message after which the peer is gone.
    pub dead_ms: u32,
    /// Milliseconds before an unacknowledged message is sent again.
    pub retransmit_ms: u32,
    /// Seconds over which the active box sends every connection again, so the standby's
    /// expiry clock follows traffic it did not see; 0 never does.
    pub refresh_secs: u32,
}

impl std::fmt::Debug for Sync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key, not even in a debug dump.
        f.debug_struct("Sync")
            .field("interface", &self.interface)
            .field("local", &self.local)
            .field("peer", &self.peer)
            .field("key", &self.key)
            .field("heartbeat_ms", &self.heartbeat_ms)
            .field("dead_ms", &self.dead_ms)
            .field("retransmit_ms", &self.retransmit_ms)
            .field("refresh_secs", &self.refresh_secs)
            .finish()
    }
}

/// Where the sync key comes from: the file is read on the host, by `vipgate check` and at
/// start, so that validating a file needs nothing from the machine it is checked on.
#[derive(Clone, PartialEq, Eq)]
pub enum SyncKeySource {
    /// `ha.sync.key`: the text's bytes (at least [`SyncKeySource::MIN_LEN`], checked).
    Inline(Vec<u8>),
    /// `ha.sync.key_file`: the file's bytes, trailing whitespace removed.
    File(PathBuf),
}

impl SyncKeySource {
    /// The shortest key accepted: 128 bits.
    pub const MIN_LEN: usize = 16;
    /// The longest key file read: a key, not a file someone pointed at by mistake.
    pub const FILE_MAX: u64 = 4096;

    /// The key's bytes.
    ///
    /// # Errors
    /// One line naming `ha.sync.key_file` (unreadable, too large, too short).
    pub fn read(&self) -> Result<Vec<u8>, String> {
        let path = match self {
            SyncKeySource::Inline(k) => return Ok(k.clone()),
            SyncKeySource::File(p) => p,
        };
        let key = "ha.sync.key_file";
        let shown = path.display();
        let meta =
            std::fs::metadata(path).map_err(|e| format!("{key}: {shown:?} cannot be read: {e}"))?;
        if meta.len() > Self::FILE_MAX {
            return Err(format!(
                "{key}: {shown:?} holds {} bytes; expected a key of at most {}",
                meta.len(),
                Self::FILE_MAX
            ));
        }
        let mut bytes =
            std::fs::read(path).map_err(|e| format!("{key}: {shown:?} cannot be read: {e}"))?;
        while bytes.last().is_some_and(u8::is_ascii_whitespace) {
            bytes.pop();
        }
        if bytes.len() < Self::MIN_LEN {
            return Err(format!(
                "{key}: {shown:?} holds a key of {} bytes; expected at least {} (e.g. made with `openssl rand -hex 32`)",
                bytes.len(),
                Self::MIN_LEN
            ));
        }
        Ok(bytes)
    }
}

impl std::fmt::Debug for SyncKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key itself, not even in a debug dump.
        match self {
            SyncKeySource::Inline(k) => write!(f, "Inline(<{} bytes>)", k.len()),
            SyncKeySource::File(p) => write!(f, "File({p:?})"),
        }
    }
}

/// A pool's health check (`nat.pools[].check`): each backend is probed every interval; it
/// leaves the pool after `fall` failures in a row and rejoins after `rise` successes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthCheck {
    /// What a probe does.
    pub kind: CheckKind,
    /// Milliseconds between two probes of one backend.
    pub interval_ms: u32,
    /// Milliseconds a probe may take.
    pub timeout_ms: u32,
    /// Successes in a row that bring a backend (back) into service.
    pub rise: u32,
    /// Failures in a row that take it out.
    pub fall: u32,
}

/// What a health probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// A TCP connection to the backend's port is accepted.
    Tcp,
    /// `GET path` over HTTP/1.0 answers with `status` (and, if given, a body containing
    /// `body`).
    Http {
        /// The path asked for.
        path: String,
        /// The status expected.
        status: u16,
        /// A substring the body must contain.
        body: Option<String>,
    },
    /// An ICMP echo to the backend's address is answered.
    Icmp,
}
