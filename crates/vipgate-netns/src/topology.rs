//! The test and lab topology, with the gateway as a parameter:
//!
//! ```text
//!  client 198.51.100.100/25 --- rtr 198.51.100.1/25
//!  inet   198.51.100.130/25 --- rtr 198.51.100.129/25
//!  rtr 203.0.113.254/24 --- vg-pub (gateway, 203.0.113.1/24; VIP 203.0.113.10)
//!  gateway vg-priv 198.18.0.1/24 --- bridge br0 in namespace lan --- h1 198.18.0.10/24, h2 198.18.0.11/24
//! ```
//!
//! Seven namespaces (client, inet, rtr, gw, lan, h1, h2), each with a unique name. client and
//! inet route through rtr, rtr reaches 203.0.113.0/24 directly and nothing private, h1 and h2
//! route through 198.18.0.1. Every kernel endpoint veth has transmit checksum offload off.
//!
//! The gateway namespace is driven by either [`Gateway::Kernel`] (the kernel forwarding, with
//! nftables doing the NAT of [`KERNEL_RULES`]: a reference and a stand-in) or
//! [`Gateway::Vipgate`] (the vipgate binary on the two veths, which then have no kernel
//! addresses). [`Topology::build`] returns once a client's ping to the VIP is answered.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::{veth, ChildGuard, Netns, TempDir};
use crate::poll::{poll_until, try_poll_until};
use crate::probe;

/// Addresses of the topology.
pub mod addr {
    use std::net::Ipv4Addr;

    /// The public client.
    pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
    /// rtr on the client's segment.
    pub const RTR_CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
    /// A public server ("the internet").
    pub const INET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 130);
    /// rtr on inet's segment.
    pub const RTR_INET: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 129);
    /// rtr on the gateway's public segment: the gateway's default route.
    pub const RTR_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
    /// The gateway's own public address.
    pub const GW_PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
    /// The VIP: DNAT and PAT address.
    pub const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    /// The gateway's private address: the internal hosts' default route.
    pub const GW_PRIVATE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    /// Internal host 1 (the DNAT target).
    pub const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    /// Internal host 2.
    pub const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
}

/// Interface names, each unique inside its namespace.
pub mod ifname {
    /// The gateway's public interface.
    pub const GW_PUBLIC: &str = "vg-pub";
    /// The gateway's private interface.
    pub const GW_PRIVATE: &str = "vg-priv";
    /// rtr towards client.
    pub const RTR_CLIENT: &str = "to-client";
    /// rtr towards inet.
    pub const RTR_INET: &str = "to-inet";
    /// rtr towards the gateway.
    pub const RTR_GW: &str = "to-gw";
    /// The only interface of client, inet, h1 and h2.
    pub const HOST: &str = "eth0";
    /// The bridge of the private segment, in namespace lan.
    pub const LAN_BRIDGE: &str = "br0";
    /// Bridge port towards the gateway.
    pub const LAN_GW: &str = "p-gw";
    /// Bridge port towards h1.
    pub const LAN_H1: &str = "p-h1";
    /// Bridge port towards h2.
    pub const LAN_H2: &str = "p-h2";
}

/// The nftables ruleset of [`Gateway::Kernel`]: DNAT of tcp 80 and udp 5353 on the VIP to h1,
/// PAT of 198.18.0.0/24 behind the VIP, and hairpinning (an internal host reaching the VIP is
/// translated to the VIP too, so replies come back through the gateway), as vipgate does.
pub const KERNEL_RULES: &str = "\
table ip vipgate_standin {
    chain prerouting {
        type nat hook prerouting priority dstnat; policy accept;
        ip daddr 203.0.113.10 tcp dport 80 dnat to 198.18.0.10:80
        ip daddr 203.0.113.10 udp dport 5353 dnat to 198.18.0.10:5353
    }
    chain postrouting {
        type nat hook postrouting priority srcnat; policy accept;
        ip saddr 198.18.0.0/24 oifname \"vg-pub\" snat to 203.0.113.10
        ip saddr 198.18.0.0/24 ip daddr 198.18.0.0/24 ct status dnat snat to 203.0.113.10
    }
}
";

/// How long the gateway gets to come up (generous: parallel tests share few cores).
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long vipgate gets to exit after SIGTERM.
pub const STOP_GRACE: Duration = Duration::from_secs(20);

/// AF_XDP attach mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Generic (`xdp.mode = "skb"`).
    Skb,
    /// Native (`xdp.mode = "drv"`).
    Drv,
}

impl XdpMode {
    /// The configuration value.
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Skb => "skb",
            XdpMode::Drv => "drv",
        }
    }
}

/// How to run vipgate as the gateway.
#[derive(Clone, Debug)]
pub struct VipgateSpec {
    /// Path to the vipgate binary (`env!("CARGO_BIN_EXE_vipgate")` in its tests).
    pub binary: PathBuf,
    /// `xdp.mode`.
    pub mode: XdpMode,
    /// Number of workers: `workers.cores = [0, .., workers - 1]`.
    pub workers: u32,
    /// RX/TX queues on both ends of the gateway's two veths.
    pub queues: u32,
    /// The configuration after `[workers]` and `[xdp]` (which the topology writes):
    /// interfaces, NAT, logging.
    pub config_body: String,
    /// Extra environment for the process (`VIPGATE_...` overrides, for example).
    pub env: Vec<(String, String)>,
}

impl VipgateSpec {
    /// One queue per worker, no extra environment.
    pub fn new(
        binary: impl Into<PathBuf>,
        mode: XdpMode,
        workers: u32,
        config_body: &str,
    ) -> VipgateSpec {
        VipgateSpec {
            binary: binary.into(),
            mode,
            workers,
            queues: workers.max(1),
            config_body: config_body.to_string(),
            env: Vec::new(),
        }
    }

    /// The whole configuration file.
    pub fn config_text(&self) -> String {
        let cores: Vec<String> = (0..self.workers.max(1)).map(|c| c.to_string()).collect();
        let mut s = String::new();
        let _ = write!(
            s,
            "# Written by vipgate-netns for one test topology.\n[workers]\ncores = [{}]\n\n[xdp]\nmode = \"{}\"\n\n{}",
            cores.join(", "),
            self.mode.as_str(),
            self.config_body
        );
        s
    }
}

/// What drives the gateway namespace.
#[derive(Clone, Debug)]
pub enum Gateway {
    /// The kernel: addresses on vg-pub (with the VIP) and vg-priv, forwarding on, nftables
    /// with [`KERNEL_RULES`], ARP answered only for the receiving interface's addresses.
    Kernel,
    /// vipgate on the two veths.
    Vipgate(VipgateSpec),
}

impl Gateway {
    /// Queues on the gateway's veths.
    fn queues(&self) -> u32 {
        match self {
            Gateway::Kernel => 1,
            Gateway::Vipgate(v) => v.queues.max(1),
        }
    }
}

/// Counters vipgate printed on exit (`counter <name> <value>` lines).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    values: BTreeMap<String, u64>,
}

impl Counters {
    /// Reads every `counter <name> <value>` line of `text`; other lines are ignored.
    ///
    /// # Errors
    /// A counter line that does not have exactly a name and an unsigned value, or a name seen
    /// twice.
    pub fn parse(text: &str) -> Result<Counters, String> {
        let mut values = BTreeMap::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("counter") {
                continue;
            }
            let (Some(name), Some(value), None) = (words.next(), words.next(), words.next()) else {
                return Err(format!("malformed counter line {line:?}"));
            };
            let value: u64 = value
                .parse()
                .map_err(|_| format!("counter line {line:?}: value is not an unsigned integer"))?;
            if values.insert(name.to_string(), value).is_some() {
                return Err(format!("counter {name} printed twice"));
            }
        }
        Ok(Counters { values })
    }

    /// A counter's value, None if it was not printed.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.values.get(name).copied()
    }

    /// A counter's value.
    ///
    /// # Errors
    /// It was not printed (the message lists the names that were).
    pub fn value(&self, name: &str) -> Result<u64, String> {
        self.get(name).ok_or_else(|| {
            format!(
                "no counter {name}; printed: {}",
                self.values.keys().cloned().collect::<Vec<_>>().join(" ")
            )
        })
    }

    /// Number of counters.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True if none were printed.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Every counter, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.values.iter().map(|(k, v)| (k.as_str(), *v))
    }

    /// The counters that are not zero, one `name=value` each, for failure messages.
    pub fn nonzero(&self) -> String {
        self.iter()
            .filter(|(_, v)| *v != 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// What stopping the gateway gave.
#[derive(Debug)]
pub struct GatewayExit {
    /// The counters it printed.
    pub counters: Counters,
    /// Its stdout.
    pub stdout: String,
    /// Its stderr (logs).
    pub stderr: String,
}

/// The topology of the module documentation. Dropping it stops the gateway (SIGKILL if
/// still running) and removes every namespace.
#[derive(Debug)]
pub struct Topology {
    // Fields drop in declaration order: the gateway process before its namespace, namespaces
    // before the directory holding the configuration.
    gateway_process: Option<ChildGuard>,
    /// The public client.
    pub client: Netns,
    /// The public server.
    pub inet: Netns,
    /// The router between client, inet and the gateway.
    pub rtr: Netns,
    /// The gateway's namespace.
    pub gw: Netns,
    /// The private segment's bridge.
    pub lan: Netns,
    /// Internal host 1.
    pub h1: Netns,
    /// Internal host 2.
    pub h2: Netns,
    is_vipgate: bool,
    xdp_mode: Option<XdpMode>,
    config_path: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    dir: TempDir,
}

/// An I/O step of the build, its error as a message.
fn e<T>(r: std::io::Result<T>) -> Result<(), String> {
    r.map(drop).map_err(|e| e.to_string())
}

fn ctx<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> String + '_ {
    move |e| format!("{what}: {e}")
}

impl Topology {
    /// Builds the topology, starts the gateway and waits until the client's ping to the VIP
    /// is answered.
    ///
    /// # Errors
    /// Any step failing, with its context; what was built is removed again.
    pub fn build(gateway: Gateway) -> Result<Topology, String> {
        let ns = |tag: &str| Netns::new(tag).map_err(|e| format!("namespace {tag}: {e}"));
        let dir = TempDir::new("topo").map_err(ctx("temporary directory"))?;
        let mut t = Topology {
            gateway_process: None,
            client: ns("cl")?,
            inet: ns("in")?,
            rtr: ns("rt")?,
            gw: ns("gw")?,
            lan: ns("lan")?,
            h1: ns("h1")?,
            h2: ns("h2")?,
            is_vipgate: matches!(gateway, Gateway::Vipgate(_)),
            xdp_mode: match &gateway {
                Gateway::Kernel => None,
                Gateway::Vipgate(spec) => Some(spec.mode),
            },
            config_path: None,
            control_socket: None,
            dir,
        };
        t.wire(gateway.queues())?;
        match &gateway {
            Gateway::Kernel => t.kernel_gateway()?,
            Gateway::Vipgate(spec) => t.start_vipgate(spec)?,
        }
        t.wait_ready()?;
        if let Some(mode) = t.xdp_mode {
            // The mode asked for is the mode the kernel runs: a driver refusing native mode
            // must not pass for it silently.
            let want = match mode {
                XdpMode::Skb => "xdpgeneric",
                XdpMode::Drv => "xdp",
            };
            for dev in [ifname::GW_PUBLIC, ifname::GW_PRIVATE] {
                let got = t.xdp_attach_mode(dev)?;
                if got.as_deref() != Some(want) {
                    return Err(format!(
                        "{dev}: XDP attached as {got:?}, expected {want} for xdp.mode = \"{}\"",
                        mode.as_str()
                    ));
                }
            }
        }
        Ok(t)
    }

    /// Namespaces, veths, bridge, addresses and routes: everything but the gateway.
    fn wire(&self, gw_queues: u32) -> Result<(), String> {
        use ifname::*;
        for n in [&self.rtr, &self.gw] {
            // Inherited from the root namespace otherwise; strict mode would drop the
            // asymmetric paths NAT tests create.
            e(n.sysctl("net.ipv4.conf.all.rp_filter", "0"))?;
            e(n.sysctl("net.ipv4.conf.default.rp_filter", "0"))?;
        }
        e(self.rtr.sysctl("net.ipv4.ip_forward", "1"))?;

        e(veth(&self.client, HOST, &self.rtr, RTR_CLIENT, 1))?;
        e(veth(&self.inet, HOST, &self.rtr, RTR_INET, 1))?;
        e(veth(&self.rtr, RTR_GW, &self.gw, GW_PUBLIC, gw_queues))?;
        e(veth(&self.gw, GW_PRIVATE, &self.lan, LAN_GW, gw_queues))?;
        e(veth(&self.h1, HOST, &self.lan, LAN_H1, 1))?;
        e(veth(&self.h2, HOST, &self.lan, LAN_H2, 1))?;

        e(self
            .lan
            .exec(&["ip", "link", "add", LAN_BRIDGE, "type", "bridge"]))?;
        for port in [LAN_GW, LAN_H1, LAN_H2] {
            e(self
                .lan
                .exec(&["ip", "link", "set", port, "master", LAN_BRIDGE, "up"]))?;
        }
        e(self.lan.exec(&["ip", "link", "set", LAN_BRIDGE, "up"]))?;

        let hosts: [(&Netns, &str, Ipv4Addr); 4] = [
            (&self.client, "198.51.100.100/25", addr::RTR_CLIENT),
            (&self.inet, "198.51.100.130/25", addr::RTR_INET),
            (&self.h1, "198.18.0.10/24", addr::GW_PRIVATE),
            (&self.h2, "198.18.0.11/24", addr::GW_PRIVATE),
        ];
        for (n, cidr, via) in hosts {
            e(self.endpoint(n, HOST, cidr))?;
            e(n.exec(&["ip", "route", "add", "default", "via", &via.to_string()]))?;
        }
        e(self.endpoint(&self.rtr, RTR_CLIENT, "198.51.100.1/25"))?;
        e(self.endpoint(&self.rtr, RTR_INET, "198.51.100.129/25"))?;
        e(self.endpoint(&self.rtr, RTR_GW, "203.0.113.254/24"))?;
        for dev in [GW_PUBLIC, GW_PRIVATE] {
            e(self.gw.exec(&["ip", "link", "set", dev, "up"]))?;
        }
        Ok(())
    }

    /// A kernel endpoint: address, transmit checksum offload off, up.
    fn endpoint(&self, n: &Netns, dev: &str, cidr: &str) -> std::io::Result<()> {
        n.exec(&["ip", "addr", "add", cidr, "dev", dev])?;
        let d = dev.to_string();
        n.run(move || probe::disable_tx_checksum(&d))??;
        n.exec(&["ip", "link", "set", dev, "up"]).map(drop)
    }

    fn kernel_gateway(&self) -> Result<(), String> {
        use ifname::*;
        let gw = &self.gw;
        for (k, v) in [
            ("net.ipv4.ip_forward", "1"),
            // Answer ARP only for addresses of the interface asked on, as vipgate does.
            ("net.ipv4.conf.all.arp_ignore", "1"),
            // Hairpinned flows leave by the interface they came in on: no redirects.
            ("net.ipv4.conf.all.send_redirects", "0"),
            ("net.ipv4.conf.default.send_redirects", "0"),
        ] {
            e(gw.sysctl(k, v))?;
        }
        e(gw.exec(&["ip", "addr", "add", "203.0.113.1/24", "dev", GW_PUBLIC]))?;
        e(gw.exec(&["ip", "addr", "add", "203.0.113.10/24", "dev", GW_PUBLIC]))?;
        e(gw.exec(&["ip", "addr", "add", "198.18.0.1/24", "dev", GW_PRIVATE]))?;
        e(gw.exec(&["ip", "route", "add", "default", "via", "203.0.113.254"]))?;
        let rules = self.dir.path().join("kernel.nft");
        e(fs::write(&rules, KERNEL_RULES))?;
        let path = rules.to_string_lossy().into_owned();
        e(gw.exec(&["nft", "-f", &path]))
    }

    fn start_vipgate(&mut self, spec: &VipgateSpec) -> Result<(), String> {
        let config = self.dir.path().join("vipgate.toml");
        fs::write(&config, spec.config_text()).map_err(ctx("writing the configuration"))?;
        let binary = spec.binary.to_string_lossy().into_owned();
        let path = config.to_string_lossy().into_owned();
        // Each topology's vipgate gets its own control socket, so tests run in parallel.
        let socket = self.dir.path().join("control.sock");
        let socket_text = socket.to_string_lossy().into_owned();
        let mut env: Vec<(&str, &str)> = spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        if !env.iter().any(|(k, _)| *k == "VIPGATE_CONTROL__SOCKET") {
            env.push(("VIPGATE_CONTROL__SOCKET", &socket_text));
            self.control_socket = Some(socket);
        }
        let child = self
            .gw
            .spawn_with_env(&[&binary, "run", "--config", &path], &env)
            .map_err(|e| format!("starting {binary}: {e}"))?;
        self.gateway_process = Some(child);
        self.config_path = Some(config);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        if let Some(p) = self.gateway_process.as_mut() {
            try_poll_until(READY_TIMEOUT, "`vipgate ready` in vipgate's log", || {
                if let Some(status) = p.try_wait().map_err(|e| e.to_string())? {
                    return Err(format!(
                        "vipgate exited ({status}) before it was ready; stderr:\n{}",
                        p.stderr_so_far()
                    ));
                }
                Ok(p.stderr_so_far().contains("vipgate ready"))
            })?;
        }
        let client = &self.client;
        let r = poll_until(READY_TIMEOUT, "the client's ping to the VIP", || {
            matches!(
                client.run(|| probe::ping(addr::VIP, 1, Duration::from_millis(300))),
                Ok(Ok(1))
            )
        });
        r.map_err(|e| match self.gateway_process.as_ref() {
            Some(p) => format!("{e}; vipgate's stderr:\n{}", p.stderr_so_far()),
            None => e,
        })
    }

    /// How an XDP program is attached to the gateway's interface `dev`, as `ip link` shows it:
    /// `xdpgeneric` (skb mode), `xdp` (native), `xdpoffload`, or None without a program.
    ///
    /// # Errors
    /// `ip` failed.
    pub fn xdp_attach_mode(&self, dev: &str) -> Result<Option<String>, String> {
        let out = self
            .gw
            .exec(&["ip", "-o", "link", "show", "dev", dev])
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find(|w| w.starts_with("xdp"))
            .map(str::to_string))
    }

    /// True if vipgate drives the gateway.
    pub fn is_vipgate(&self) -> bool {
        self.is_vipgate
    }

    /// The configuration file vipgate runs with.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// vipgate's control socket, when the topology chose it.
    pub fn control_socket(&self) -> Option<&Path> {
        self.control_socket.as_deref()
    }

    /// The vipgate process, while it runs.
    pub fn gateway_process(&mut self) -> Option<&mut ChildGuard> {
        self.gateway_process.as_mut()
    }

    /// What vipgate logged so far (empty for the kernel gateway).
    pub fn gateway_log(&self) -> String {
        self.gateway_process
            .as_ref()
            .map(ChildGuard::stderr_so_far)
            .unwrap_or_default()
    }

    /// The MAC address of the gateway's interface `dev` (frames addressed to the gateway).
    ///
    /// # Errors
    /// The interface does not exist.
    pub fn gateway_mac(&self, dev: &str) -> Result<[u8; 6], String> {
        let d = dev.to_string();
        self.gw
            .run(move || probe::interface_mac(&d))
            .and_then(|r| r)
            .map_err(|e| format!("MAC of {dev}: {e}"))
    }

    /// Stops vipgate with SIGTERM and checks what the contract asks: exit status 0 and the
    /// counters printed on stdout. None for the kernel gateway.
    ///
    /// # Errors
    /// vipgate already stopped, did not exit in time, exited non-zero, or printed no counters.
    pub fn stop(&mut self) -> Result<Option<GatewayExit>, String> {
        if !self.is_vipgate {
            return Ok(None);
        }
        let p = self
            .gateway_process
            .take()
            .ok_or_else(|| "vipgate was already stopped".to_string())?;
        let out = p
            .stop(libc::SIGTERM, STOP_GRACE)
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(format!(
                "vipgate exited with {} after SIGTERM; stderr:\n{stderr}",
                out.status
            ));
        }
        let counters = Counters::parse(&stdout)?;
        if counters.is_empty() {
            return Err(format!(
                "vipgate printed no counters on exit; stdout:\n{stdout}\nstderr:\n{stderr}"
            ));
        }
        Ok(Some(GatewayExit {
            counters,
            stdout,
            stderr,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_parse_and_refuse_nonsense() {
        let c = Counters::parse(
            "counter rx_frames 12\nsomething else\ncounter drop_no_rule 0\n  counter tx_frames 9  \n",
        )
        .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("rx_frames"), Some(12));
        assert_eq!(c.get("drop_no_rule"), Some(0));
        assert_eq!(c.get("tx_frames"), Some(9));
        assert_eq!(c.get("nope"), None);
        assert!(c
            .value("nope")
            .unwrap_err()
            .contains("drop_no_rule rx_frames tx_frames"));
        assert_eq!(c.nonzero(), "rx_frames=12 tx_frames=9");
        assert!(Counters::parse("counter a").is_err());
        assert!(Counters::parse("counter a -1").is_err());
        assert!(Counters::parse("counter a 1 2").is_err());
        assert!(Counters::parse("counter a 1\ncounter a 2").is_err());
        assert!(Counters::parse("").unwrap().is_empty());
    }

    #[test]
    fn vipgate_config_gets_workers_and_mode() {
        let mut spec =
            VipgateSpec::new("/bin/vipgate", XdpMode::Drv, 2, "[log]\nlevel = \"info\"\n");
        assert_eq!(spec.queues, 2);
        let text = spec.config_text();
        assert!(text.contains("[workers]\ncores = [0, 1]\n"), "{text}");
        assert!(text.contains("[xdp]\nmode = \"drv\"\n"), "{text}");
        assert!(text.ends_with("[log]\nlevel = \"info\"\n"), "{text}");
        spec.mode = XdpMode::Skb;
        spec.workers = 1;
        let text = spec.config_text();
        assert!(text.contains("cores = [0]\n"), "{text}");
        assert!(text.contains("mode = \"skb\""), "{text}");
    }

    #[test]
    fn interface_names_fit() {
        use ifname::*;
        for n in [
            GW_PUBLIC, GW_PRIVATE, RTR_CLIENT, RTR_INET, RTR_GW, HOST, LAN_BRIDGE, LAN_GW, LAN_H1,
            LAN_H2,
        ] {
            crate::netns::check_ifname(n).unwrap();
        }
    }
}
