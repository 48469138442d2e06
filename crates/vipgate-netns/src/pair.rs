//! A high-availability pair: two gateway boxes on shared public and private segments, with a
//! sync link between them.
//!
//! ```text
//!  client 198.51.100.100/25 --- rtr 198.51.100.1/25
//!  inet   198.51.100.130/25 --- rtr 198.51.100.129/25
//!  rtr 203.0.113.254/24 --- bridge in namespace pubsw --- box a vg-pub 203.0.113.2/24
//!                                                     \-- box b vg-pub 203.0.113.3/24
//!  VIP 203.0.113.10 on whichever box is master
//!  box a vg-priv 198.18.0.2/24 --\
//!  box b vg-priv 198.18.0.3/24 ---+- bridge in namespace lan --- h1 198.18.0.10, h2 198.18.0.11
//!  the hosts' default gateway: 198.18.0.1, a virtual address of the master
//!  box a sync0 198.18.9.1/30 --- box b sync0 198.18.9.2/30 (kernel addresses)
//! ```
//!
//! Each box runs vipgate ([`BoxKind::Vipgate`]) or keepalived with kernel addresses
//! ([`BoxKind::Keepalived`], a VRRP peer to check interoperation). Nine namespaces, unique
//! names, removed on drop with every process in them.

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::{veth, ChildGuard, Netns, TempDir};
use crate::poll::{poll_until, try_poll_until};
use crate::probe;
use crate::topology::{Counters, GatewayExit, XdpMode, READY_TIMEOUT, STOP_GRACE};

/// Addresses of the pair topology (the public client, inet and VIP are those of
/// [`crate::topology::addr`]).
pub mod addr {
    use std::net::Ipv4Addr;

    /// Each box's own public address.
    pub const PUBLIC: [Ipv4Addr; 2] =
        [Ipv4Addr::new(203, 0, 113, 2), Ipv4Addr::new(203, 0, 113, 3)];
    /// Each box's own private address.
    pub const PRIVATE: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 0, 2), Ipv4Addr::new(198, 18, 0, 3)];
    /// The internal hosts' default gateway: a virtual address of the master.
    pub const PRIVATE_VIRTUAL: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    /// Each box's sync-link address.
    pub const SYNC: [Ipv4Addr; 2] = [Ipv4Addr::new(198, 18, 9, 1), Ipv4Addr::new(198, 18, 9, 2)];
}

/// Interface names inside each box's namespace.
pub mod ifname {
    /// Public data interface.
    pub const PUBLIC: &str = "vg-pub";
    /// Private data interface.
    pub const PRIVATE: &str = "vg-priv";
    /// The sync link.
    pub const SYNC: &str = "sync0";
    /// The public bridge's port to box `i` (in pubsw).
    pub const SW_BOX: [&str; 2] = ["sw-a", "sw-b"];
    /// The private bridge's port to box `i` (in lan).
    pub const LAN_BOX: [&str; 2] = ["p-a", "p-b"];
}

/// What runs on a box.
#[derive(Clone, Debug)]
pub enum BoxKind {
    /// vipgate with this configuration body (after `[workers]` and `[xdp]`).
    Vipgate(String),
    /// keepalived with this configuration, with kernel addresses on the box's interfaces
    /// and forwarding on (it only elects: no NAT).
    Keepalived(String),
}

/// How to build a pair.
#[derive(Clone, Debug)]
pub struct PairSpec {
    /// Path to the vipgate binary.
    pub binary: PathBuf,
    /// `xdp.mode`.
    pub mode: XdpMode,
    /// Box a and box b.
    pub boxes: [BoxKind; 2],
}

/// The pair topology. Dropping it kills both boxes and removes every namespace.
#[derive(Debug)]
pub struct Pair {
    procs: [Option<ChildGuard>; 2],
    /// The public client.
    pub client: Netns,
    /// The public server.
    pub inet: Netns,
    /// The router.
    pub rtr: Netns,
    /// The public segment's bridge.
    pub pubsw: Netns,
    /// Box a and box b.
    pub boxes: [Netns; 2],
    /// The private segment's bridge.
    pub lan: Netns,
    /// Internal host 1.
    pub h1: Netns,
    /// Internal host 2.
    pub h2: Netns,
    spec: PairSpec,
    dir: TempDir,
}

fn e<T>(r: std::io::Result<T>) -> Result<(), String> {
    r.map(drop).map_err(|e| e.to_string())
}

impl Pair {
    /// Builds the topology, starts both boxes and waits until the client's ping to the VIP
    /// is answered (by whichever box won).
    ///
    /// # Errors
    /// Any step failing, with its context; what was built is removed again.
    pub fn build(spec: PairSpec) -> Result<Pair, String> {
        let ns = |tag: &str| Netns::new(tag).map_err(|e| format!("namespace {tag}: {e}"));
        let mut p = Pair {
            procs: [None, None],
            client: ns("cl")?,
            inet: ns("in")?,
            rtr: ns("rt")?,
            pubsw: ns("sw")?,
            boxes: [ns("ga")?, ns("gb")?],
            lan: ns("lan")?,
            h1: ns("h1")?,
            h2: ns("h2")?,
            spec,
            dir: TempDir::new("pair").map_err(|e| format!("temporary directory: {e}"))?,
        };
        p.wire()?;
        for i in 0..2 {
            p.start(i)?;
        }
        p.wait_vip()?;
        Ok(p)
    }

    fn wire(&self) -> Result<(), String> {
        use crate::topology::ifname as t;
        use ifname::*;
        for n in [&self.rtr, &self.boxes[0], &self.boxes[1]] {
            e(n.sysctl("net.ipv4.conf.all.rp_filter", "0"))?;
            e(n.sysctl("net.ipv4.conf.default.rp_filter", "0"))?;
        }
        e(self.rtr.sysctl("net.ipv4.ip_forward", "1"))?;
        e(veth(&self.client, t::HOST, &self.rtr, t::RTR_CLIENT, 1))?;
        e(veth(&self.inet, t::HOST, &self.rtr, t::RTR_INET, 1))?;
        e(veth(&self.rtr, t::RTR_GW, &self.pubsw, "sw-rtr", 1))?;
        let [a, b] = &self.boxes;
        for (n, (sw, lan)) in [a, b].into_iter().zip(SW_BOX.into_iter().zip(LAN_BOX)) {
            e(veth(n, PUBLIC, &self.pubsw, sw, 1))?;
            e(veth(n, PRIVATE, &self.lan, lan, 1))?;
        }
        e(veth(a, SYNC, b, SYNC, 1))?;
        e(veth(&self.h1, t::HOST, &self.lan, t::LAN_H1, 1))?;
        e(veth(&self.h2, t::HOST, &self.lan, t::LAN_H2, 1))?;
        for (n, ports) in [
            (&self.pubsw, vec!["sw-rtr", SW_BOX[0], SW_BOX[1]]),
            (
                &self.lan,
                vec![LAN_BOX[0], LAN_BOX[1], t::LAN_H1, t::LAN_H2],
            ),
        ] {
            e(n.exec(&["ip", "link", "add", "br0", "type", "bridge"]))?;
            for port in ports {
                e(n.exec(&["ip", "link", "set", port, "master", "br0", "up"]))?;
            }
            e(n.exec(&["ip", "link", "set", "br0", "up"]))?;
        }
        let hosts: [(&Netns, &str, Ipv4Addr); 4] = [
            (
                &self.client,
                "198.51.100.100/25",
                crate::topology::addr::RTR_CLIENT,
            ),
            (
                &self.inet,
                "198.51.100.130/25",
                crate::topology::addr::RTR_INET,
            ),
            (&self.h1, "198.18.0.10/24", addr::PRIVATE_VIRTUAL),
            (&self.h2, "198.18.0.11/24", addr::PRIVATE_VIRTUAL),
        ];
        for (n, cidr, via) in hosts {
            e(endpoint(n, t::HOST, cidr))?;
            e(n.exec(&["ip", "route", "add", "default", "via", &via.to_string()]))?;
        }
        e(endpoint(&self.rtr, t::RTR_CLIENT, "198.51.100.1/25"))?;
        e(endpoint(&self.rtr, t::RTR_INET, "198.51.100.129/25"))?;
        e(endpoint(&self.rtr, t::RTR_GW, "203.0.113.254/24"))?;
        for (n, sync) in [a, b].into_iter().zip(addr::SYNC) {
            e(endpoint(n, SYNC, &format!("{sync}/30")))?;
            for dev in [PUBLIC, PRIVATE] {
                e(n.exec(&["ip", "link", "set", dev, "up"]))?;
            }
        }
        Ok(())
    }

    /// The directory of box `i`'s files (configuration, control socket).
    pub fn box_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(if i == 0 { "a" } else { "b" })
    }

    /// Box `i`'s control socket.
    pub fn control_socket(&self, i: usize) -> PathBuf {
        self.box_dir(i).join("control.sock")
    }

    /// Box `i`'s configuration file.
    pub fn config_path(&self, i: usize) -> PathBuf {
        self.box_dir(i).join(match self.spec.boxes.get(i) {
            Some(BoxKind::Keepalived(_)) => "keepalived.conf",
            _ => "vipgate.toml",
        })
    }

    /// Starts box `i` (again): vipgate waits for `vipgate ready`, keepalived for its first
    /// log line.
    ///
    /// # Errors
    /// It is running, or did not start.
    pub fn start(&mut self, i: usize) -> Result<(), String> {
        if self.procs.get(i).is_some_and(Option::is_some) {
            return Err(format!("box {i} is running"));
        }
        let dir = self.box_dir(i);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config = self.config_path(i);
        let n = self.boxes.get(i).ok_or("no such box")?;
        let kind = self.spec.boxes.get(i).cloned().ok_or("no such box")?;
        let child = match kind {
            BoxKind::Vipgate(body) => {
                let text = format!(
                    "# Written by vipgate-netns for one pair topology.\n[workers]\ncores = [0]\n\n[xdp]\nmode = \"{}\"\n\n{body}",
                    self.spec.mode.as_str()
                );
                fs::write(&config, text)
                    .map_err(|e| format!("writing {}: {e}", config.display()))?;
                let binary = self.spec.binary.to_string_lossy().into_owned();
                let path = config.to_string_lossy().into_owned();
                let socket = self.control_socket(i).to_string_lossy().into_owned();
                let mut c = n
                    .spawn_with_env(
                        &[&binary, "run", "--config", &path],
                        &[("VIPGATE_CONTROL__SOCKET", &socket)],
                    )
                    .map_err(|e| format!("starting {binary}: {e}"))?;
                try_poll_until(READY_TIMEOUT, "`vipgate ready` in vipgate's log", || {
                    if let Some(status) = c.try_wait().map_err(|e| e.to_string())? {
                        return Err(format!(
                            "box {i}: vipgate exited ({status}) before it was ready; stderr:\n{}",
                            c.stderr_so_far()
                        ));
                    }
                    Ok(c.stderr_so_far().contains("vipgate ready"))
                })?;
                c
            }
            BoxKind::Keepalived(conf) => {
                let (Some(public), Some(private)) = (addr::PUBLIC.get(i), addr::PRIVATE.get(i))
                else {
                    return Err("no such box".into());
                };
                if !kernel_box_ready(n)? {
                    e(n.sysctl("net.ipv4.ip_forward", "1"))?;
                    let (public, private) = (format!("{public}/24"), format!("{private}/24"));
                    e(n.exec(&["ip", "addr", "add", &public, "dev", ifname::PUBLIC]))?;
                    e(n.exec(&["ip", "addr", "add", &private, "dev", ifname::PRIVATE]))?;
                    e(n.exec(&["ip", "route", "add", "default", "via", "203.0.113.254"]))?;
                }
                fs::write(&config, conf)
                    .map_err(|e| format!("writing {}: {e}", config.display()))?;
                let path = config.to_string_lossy().into_owned();
                let pid = dir.join("keepalived.pid").to_string_lossy().into_owned();
                let vrrp_pid = dir.join("vrrp.pid").to_string_lossy().into_owned();
                let mut c = n
                    .spawn(&[
                        "keepalived",
                        "--dont-fork",
                        "--log-console",
                        "--log-detail",
                        "--vrrp",
                        "--use-file",
                        &path,
                        "--pid",
                        &pid,
                        "--vrrp_pid",
                        &vrrp_pid,
                    ])
                    .map_err(|e| format!("starting keepalived: {e}"))?;
                try_poll_until(
                    READY_TIMEOUT,
                    "keepalived's VRRP instance in its log",
                    || {
                        if let Some(status) = c.try_wait().map_err(|e| e.to_string())? {
                            return Err(format!(
                                "box {i}: keepalived exited ({status}); stderr:\n{}{}",
                                c.stdout_so_far(),
                                c.stderr_so_far()
                            ));
                        }
                        let log = format!("{}{}", c.stdout_so_far(), c.stderr_so_far());
                        Ok(log.contains("Entering BACKUP STATE")
                            || log.contains("Entering MASTER STATE"))
                    },
                )?;
                c
            }
        };
        if let Some(slot) = self.procs.get_mut(i) {
            *slot = Some(child);
        }
        Ok(())
    }

    /// Waits until the client's ping to the VIP is answered.
    ///
    /// # Errors
    /// Not within [`READY_TIMEOUT`].
    pub fn wait_vip(&self) -> Result<(), String> {
        let client = &self.client;
        poll_until(READY_TIMEOUT, "the client's ping to the VIP", || {
            matches!(
                client.run(|| probe::ping(
                    crate::topology::addr::VIP,
                    1,
                    Duration::from_millis(300)
                )),
                Ok(Ok(1))
            )
        })
        .map_err(|e| format!("{e}; box a:\n{}\nbox b:\n{}", self.log(0), self.log(1)))
    }

    /// What box `i` logged so far.
    pub fn log(&self, i: usize) -> String {
        self.procs
            .get(i)
            .and_then(Option::as_ref)
            .map(|c| format!("{}{}", c.stdout_so_far(), c.stderr_so_far()))
            .unwrap_or_default()
    }

    /// Whether box `i`'s process runs.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.procs
            .get_mut(i)
            .and_then(Option::as_mut)
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills box `i` with SIGKILL: a crash.
    ///
    /// # Errors
    /// It was not running.
    pub fn kill(&mut self, i: usize) -> Result<String, String> {
        let mut c = self
            .procs
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| format!("box {i} is not running"))?;
        c.signal(libc::SIGKILL).map_err(|e| e.to_string())?;
        let _ = c.wait_timeout(STOP_GRACE);
        Ok(format!("{}{}", c.stdout_so_far(), c.stderr_so_far()))
    }

    /// Stops box `i` with SIGTERM (a graceful stop) and returns its exit counters.
    ///
    /// # Errors
    /// It was not running, did not exit in time, or exited non-zero.
    pub fn stop(&mut self, i: usize) -> Result<GatewayExit, String> {
        let c = self
            .procs
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| format!("box {i} is not running"))?;
        let out = c
            .stop(libc::SIGTERM, STOP_GRACE)
            .map_err(|e| e.to_string())?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        if !out.status.success() {
            return Err(format!(
                "box {i} exited with {} after SIGTERM; stderr:\n{stderr}",
                out.status
            ));
        }
        Ok(GatewayExit {
            counters: Counters::parse(&stdout)?,
            stdout,
            stderr,
        })
    }

    /// Takes box `i`'s data links down (`up` false) or up again, from inside the box: its
    /// ports on both bridges lose carrier.
    ///
    /// # Errors
    /// `ip` failed.
    pub fn set_data_links(&self, i: usize, up: bool) -> Result<(), String> {
        let n = self.boxes.get(i).ok_or("no such box")?;
        for dev in [ifname::PUBLIC, ifname::PRIVATE] {
            e(n.exec(&["ip", "link", "set", dev, if up { "up" } else { "down" }]))?;
        }
        Ok(())
    }

    /// Partitions the public segment between the two boxes for VRRP (`blocked` true: the
    /// bridge drops every VRRP packet), or heals it. Everything else still crosses, so each
    /// box keeps reaching the router: both become master, the split brain of a real network
    /// where the boxes lose sight of each other but not of their neighbors.
    ///
    /// # Errors
    /// `nft` failed.
    pub fn set_vrrp_blocked(&self, blocked: bool) -> Result<(), String> {
        if blocked {
            let rules = "table bridge vgpart {\n  chain forward {\n    type filter hook forward priority 0; policy accept;\n    ip protocol 112 drop\n  }\n}\n";
            let path = self.dir.path().join("partition.nft");
            fs::write(&path, rules).map_err(|e| format!("{}: {e}", path.display()))?;
            e(self.pubsw.exec(&["nft", "-f", &path.to_string_lossy()]))
        } else {
            e(self
                .pubsw
                .exec(&["nft", "delete", "table", "bridge", "vgpart"]))
        }
    }

    /// Whether keepalived on box `i` holds the VIP on its public interface (it is master).
    ///
    /// # Errors
    /// `ip` failed.
    pub fn kernel_holds_vip(&self, i: usize) -> Result<bool, String> {
        let n = self.boxes.get(i).ok_or("no such box")?;
        let out = n
            .exec(&["ip", "-o", "-4", "addr", "show", "dev", ifname::PUBLIC])
            .map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .contains(&format!("{}/", crate::topology::addr::VIP)))
    }

    /// The path of the spec's vipgate binary.
    pub fn binary(&self) -> &Path {
        &self.spec.binary
    }
}

/// Whether a keepalived box already has its kernel addresses (a restart).
fn kernel_box_ready(n: &Netns) -> Result<bool, String> {
    let out = n
        .exec(&["ip", "-o", "-4", "addr", "show", "dev", ifname::PUBLIC])
        .map_err(|e| e.to_string())?;
    Ok(!String::from_utf8_lossy(&out.stdout).trim().is_empty())
}

/// A kernel endpoint: address, transmit checksum offload off, up.
fn endpoint(n: &Netns, dev: &str, cidr: &str) -> std::io::Result<()> {
    n.exec(&["ip", "addr", "add", cidr, "dev", dev])?;
    let d = dev.to_string();
    n.run(move || probe::disable_tx_checksum(&d))??;
    n.exec(&["ip", "link", "set", dev, "up"]).map(drop)
}
