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
//! Each box runs vipgate ([`BoxKind::Vipgate`], [`BoxKind::VipgateOnCores`]), keepalived with kernel addresses
//! ([`BoxKind::Keepalived`], a VRRP peer to check interoperation), or the kernel as a NAT
//! gateway with keepalived, conntrackd and nftables ([`BoxKind::KernelNat`], the stack
//! vipgate is compared with). Nine namespaces, unique names, removed on drop with every
//! process in them.

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
    /// vipgate with this configuration body (after `[workers]` and `[xdp]`), its worker on
    /// CPU 0.
    Vipgate(String),
    /// vipgate with this configuration body and `workers.cores`: on a small machine, each
    /// box's worker on a core of its own, as two machines would have.
    VipgateOnCores {
        /// The configuration after `[workers]` and `[xdp]`.
        body: String,
        /// `workers.cores`.
        cores: Vec<usize>,
    },
    /// keepalived with this configuration, with kernel addresses on the box's interfaces
    /// and forwarding on (it only elects: no NAT).
    Keepalived(String),
    /// The kernel as the gateway: kernel addresses and forwarding as for
    /// [`BoxKind::Keepalived`], the `nft` ruleset (NAT), conntrackd with the `conntrackd`
    /// configuration (state sync over the sync link) and keepalived with the `keepalived`
    /// configuration, whose notify scripts drive conntrackd. `{dir}` in any of the three is
    /// replaced by the box's directory ([`Pair::box_dir`]), where the pair also writes
    /// [`kernel::NOTIFY_SCRIPT`] as `primary-backup.sh`. [`kernel::kernel_nat`] builds the
    /// usual one.
    KernelNat {
        /// keepalived's configuration.
        keepalived: String,
        /// conntrackd's configuration.
        conntrackd: String,
        /// The nftables ruleset (`nft -f`).
        nft: String,
    },
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
    /// A box's other processes (conntrackd of a [`BoxKind::KernelNat`] box).
    aux: [Vec<ChildGuard>; 2],
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
            aux: [Vec::new(), Vec::new()],
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
            Some(BoxKind::Keepalived(_) | BoxKind::KernelNat { .. }) => "keepalived.conf",
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
            BoxKind::Vipgate(_) | BoxKind::VipgateOnCores { .. } => {
                let (body, cores) = match kind {
                    BoxKind::VipgateOnCores { body, cores } => (body, cores),
                    BoxKind::Vipgate(body) => (body, vec![0]),
                    _ => return Err("not a vipgate box".into()),
                };
                let cores: Vec<String> = cores.iter().map(ToString::to_string).collect();
                let text = format!(
                    "# Written by vipgate-netns for one pair topology.\n[workers]\ncores = [{}]\n\n[xdp]\nmode = \"{}\"\n\n{body}",
                    cores.join(", "),
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
                kernel_addresses(n, i)?;
                spawn_keepalived(n, i, &dir, &config, &conf)?
            }
            BoxKind::KernelNat {
                keepalived,
                conntrackd,
                nft,
            } => {
                let fill = |text: &str| text.replace("{dir}", &dir.to_string_lossy());
                let first = !kernel_box_ready(n)?;
                kernel_addresses(n, i)?;
                if first {
                    // Answer ARP only for the receiving interface's own addresses, and
                    // source ARP from them: the two boxes share both segments.
                    for (k, v) in [
                        ("net.ipv4.conf.all.arp_ignore", "1"),
                        ("net.ipv4.conf.all.arp_announce", "2"),
                    ] {
                        e(n.sysctl(k, v))?;
                    }
                }
                let rules = dir.join("nat.nft");
                write(&rules, &fill(&nft))?;
                e(n.exec(&["nft", "flush", "ruleset"]))?;
                e(n.exec(&["nft", "-f", &rules.to_string_lossy()]))?;
                let script = dir.join("primary-backup.sh");
                write(&script, &fill(kernel::NOTIFY_SCRIPT))?;
                set_mode(&script, 0o755)?;
                if let Some(aux) = self.aux.get_mut(i) {
                    // A conntrackd left from a start that failed half way.
                    aux.clear();
                }
                let ct_conf = dir.join("conntrackd.conf");
                write(&ct_conf, &fill(&conntrackd))?;
                // A SIGKILL leaves the lock file behind, and conntrackd refuses to start
                // while it is there.
                let _ = fs::remove_file(dir.join("conntrackd.lock"));
                let ct_path = ct_conf.to_string_lossy().into_owned();
                let mut ct = n
                    .spawn(&["conntrackd", "-C", &ct_path])
                    .map_err(|e| format!("starting conntrackd: {e}"))?;
                try_poll_until(READY_TIMEOUT, "conntrackd's control socket", || {
                    if let Some(status) = ct.try_wait().map_err(|e| e.to_string())? {
                        return Err(format!(
                            "box {i}: conntrackd exited ({status}); output:\n{}{}",
                            ct.stdout_so_far(),
                            ct.stderr_so_far()
                        ));
                    }
                    Ok(n.exec(&["conntrackd", "-C", &ct_path, "-s", "cache"])
                        .is_ok())
                })?;
                if let Some(aux) = self.aux.get_mut(i) {
                    aux.push(ct);
                }
                spawn_keepalived(n, i, &dir, &config, &fill(&keepalived))?
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

    /// Kills box `i` with SIGKILL: a crash. On a [`BoxKind::KernelNat`] box every process
    /// in the box's namespace gets it at once (keepalived and its VRRP child, conntrackd, a
    /// notify script), as a crash of the whole stack; the kernel's forwarding and addresses
    /// stay as they were. Returns what the box's processes logged.
    ///
    /// # Errors
    /// It was not running.
    pub fn kill(&mut self, i: usize) -> Result<String, String> {
        let mut c = self
            .procs
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| format!("box {i} is not running"))?;
        if matches!(self.spec.boxes.get(i), Some(BoxKind::KernelNat { .. })) {
            let n = self.boxes.get(i).ok_or("no such box")?;
            let me = i32::try_from(std::process::id()).unwrap_or(-1);
            for pid in n.pids().map_err(|e| e.to_string())? {
                if pid > 0 && pid != me {
                    // SAFETY: kill has no memory effects; these are processes this pair
                    // started in its own namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        c.signal(libc::SIGKILL).map_err(|e| e.to_string())?;
        let _ = c.wait_timeout(STOP_GRACE);
        let mut log = format!("{}{}", c.stdout_so_far(), c.stderr_so_far());
        for mut a in self.aux.get_mut(i).map(std::mem::take).unwrap_or_default() {
            let _ = a.signal(libc::SIGKILL);
            let _ = a.wait_timeout(STOP_GRACE);
            log.push_str(&format!(
                "--- {}\n{}{}",
                a.label(),
                a.stdout_so_far(),
                a.stderr_so_far()
            ));
        }
        Ok(log)
    }

    /// Stops box `i` gracefully, whatever runs on it: vipgate with SIGTERM (as
    /// [`Pair::stop`]); keepalived with SIGTERM (it sends priority 0 and removes its
    /// addresses), then conntrackd. Returns what the box's processes logged.
    ///
    /// # Errors
    /// It was not running, or did not exit in time.
    pub fn stop_gracefully(&mut self, i: usize) -> Result<String, String> {
        if matches!(
            self.spec.boxes.get(i),
            Some(BoxKind::Vipgate(_) | BoxKind::VipgateOnCores { .. })
        ) {
            return self.stop(i).map(|x| x.stderr);
        }
        let c = self
            .procs
            .get_mut(i)
            .and_then(Option::take)
            .ok_or_else(|| format!("box {i} is not running"))?;
        let out = c
            .stop(libc::SIGTERM, STOP_GRACE)
            .map_err(|e| e.to_string())?;
        let mut log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        for a in self.aux.get_mut(i).map(std::mem::take).unwrap_or_default() {
            let label = a.label().to_string();
            let out = a
                .stop(libc::SIGTERM, STOP_GRACE)
                .map_err(|e| e.to_string())?;
            log.push_str(&format!(
                "--- {label}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(log)
    }

    /// What box `i`'s other processes logged (conntrackd's output and log file, and the
    /// notify script's log of a [`BoxKind::KernelNat`] box).
    pub fn aux_log(&self, i: usize) -> String {
        let mut log = String::new();
        for a in self.aux.get(i).into_iter().flatten() {
            log.push_str(&format!(
                "--- {}\n{}{}",
                a.label(),
                a.stdout_so_far(),
                a.stderr_so_far()
            ));
        }
        for f in ["conntrackd.log", "notify.log"] {
            if let Ok(text) = fs::read_to_string(self.box_dir(i).join(f)) {
                log.push_str(&format!("--- {f}\n{text}"));
            }
        }
        log
    }

    /// Runs `conntrackd -C <box i's configuration> ARGS` in box `i` (a client command to
    /// its conntrackd) and returns its output.
    ///
    /// # Errors
    /// It failed.
    pub fn conntrackd(&self, i: usize, args: &[&str]) -> Result<String, String> {
        let n = self.boxes.get(i).ok_or("no such box")?;
        let conf = self.box_dir(i).join("conntrackd.conf");
        let conf = conf.to_string_lossy();
        let mut cmd = vec!["conntrackd", "-C", &conf];
        cmd.extend_from_slice(args);
        let out = n.exec(&cmd).map_err(|e| e.to_string())?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Entries in box `i`'s conntrackd caches: (internal, external), from `conntrackd -s
    /// cache`.
    ///
    /// # Errors
    /// conntrackd did not answer, or its answer had no such lines.
    pub fn conntrackd_caches(&self, i: usize) -> Result<(u64, u64), String> {
        let out = self.conntrackd(i, &["-s", "cache"])?;
        kernel::parse_caches(&out).ok_or_else(|| format!("conntrackd -s cache: {out}"))
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

/// A keepalived or kernel box's own addresses and default route, and forwarding on (once:
/// a restarted box has them already).
fn kernel_addresses(n: &Netns, i: usize) -> Result<(), String> {
    let (Some(public), Some(private)) = (addr::PUBLIC.get(i), addr::PRIVATE.get(i)) else {
        return Err("no such box".into());
    };
    if !kernel_box_ready(n)? {
        e(n.sysctl("net.ipv4.ip_forward", "1"))?;
        let (public, private) = (format!("{public}/24"), format!("{private}/24"));
        e(n.exec(&["ip", "addr", "add", &public, "dev", ifname::PUBLIC]))?;
        e(n.exec(&["ip", "addr", "add", &private, "dev", ifname::PRIVATE]))?;
        e(n.exec(&["ip", "route", "add", "default", "via", "203.0.113.254"]))?;
    }
    Ok(())
}

/// Starts keepalived (VRRP only, in the foreground) with `conf` written to `config`, and
/// waits for its instance's first state.
fn spawn_keepalived(
    n: &Netns,
    i: usize,
    dir: &Path,
    config: &Path,
    conf: &str,
) -> Result<ChildGuard, String> {
    write(config, conf)?;
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
            Ok(log.contains("Entering BACKUP STATE") || log.contains("Entering MASTER STATE"))
        },
    )?;
    Ok(c)
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {}: {e}", path.display()))
}

/// A kernel endpoint: address, transmit checksum offload off, up.
fn endpoint(n: &Netns, dev: &str, cidr: &str) -> std::io::Result<()> {
    n.exec(&["ip", "addr", "add", cidr, "dev", dev])?;
    let d = dev.to_string();
    n.run(move || probe::disable_tx_checksum(&d))??;
    n.exec(&["ip", "link", "set", dev, "up"]).map(drop)
}

/// The kernel stack of [`BoxKind::KernelNat`]: keepalived (VRRPv3) elects, nftables
/// translates, conntrackd copies the connection tracking table to the peer over the sync
/// link (FTFW, unicast UDP), with the failover script of the Debian conntrackd package's
/// example (`primary-backup.sh`).
pub mod kernel {
    use super::{addr, BoxKind};
    use crate::topology::KERNEL_RULES;

    /// keepalived's notify script: on becoming master, commit conntrackd's external cache
    /// (the peer's connections) to the kernel table, flush both caches, resync the internal
    /// cache from the kernel and send the peer a bulk copy; on becoming backup, shorten the
    /// kernel's timers of the entries left (`-t`) and ask the master for a resync (`-n`); on
    /// a fault, `-t`. As the Debian example `primary-backup.sh`, without its starting of a
    /// conntrackd that is not running: the pair runs conntrackd. Each step is logged with
    /// its time to `{dir}/notify.log`.
    pub const NOTIFY_SCRIPT: &str = r#"#!/bin/sh
# keepalived's notify script for a kernel NAT box (vipgate-netns), after the Debian conntrackd
# example primary-backup.sh.
PATH=/usr/sbin:/usr/bin:/sbin:/bin
CONF='{dir}/conntrackd.conf'
LOG='{dir}/notify.log'
log() { echo "$(date +%s.%N) $*" >>"$LOG"; }
run() { conntrackd -C "$CONF" "$@" >/dev/null 2>&1 || log "conntrackd $* failed"; }
log "$1"
case "$1" in
primary)
    run -c
    run -f
    run -R
    run -B
    ;;
backup)
    run -s
    run -t
    run -n
    ;;
fault)
    run -t
    ;;
*)
    log "unknown state $1"
    exit 1
    ;;
esac
log "$1 done"
"#;

    /// keepalived's `advert_int` for an interval in milliseconds (seconds, as a decimal).
    pub fn advert_int(ms: u32) -> String {
        let s = format!("{}.{:03}", ms / 1000, ms % 1000);
        let s = s.trim_end_matches('0');
        s.strip_suffix('.').unwrap_or(s).to_string()
    }

    /// keepalived on box `i`: one VRRPv3 instance on vg-pub (VRID 51) that holds the VIP on
    /// vg-pub and the hosts' gateway 198.18.0.1 on vg-priv, tracks vg-priv, and runs
    /// [`NOTIFY_SCRIPT`] on every change of state. As vipgate's `[ha]`: one election for
    /// both segments, adverts on the public one.
    pub fn keepalived_conf(priority: u8, advert_interval_ms: u32) -> String {
        format!(
            r#"global_defs {{
    vrrp_version 3
    script_user root
    enable_script_security
}}
vrrp_instance vg {{
    state BACKUP
    interface vg-pub
    virtual_router_id 51
    priority {priority}
    advert_int {int}
    track_interface {{
        vg-priv
    }}
    virtual_ipaddress {{
        {vip}/24 dev vg-pub
        {gw}/24 dev vg-priv
    }}
    notify_master "{{dir}}/primary-backup.sh primary"
    notify_backup "{{dir}}/primary-backup.sh backup"
    notify_fault "{{dir}}/primary-backup.sh fault"
}}
"#,
            int = advert_int(advert_interval_ms),
            vip = crate::topology::addr::VIP,
            gw = addr::PRIVATE_VIRTUAL,
        )
    }

    /// conntrackd on box `i`: FTFW over unicast UDP on the sync link, TCP and UDP
    /// connections, the box's own addresses ignored, files in `{dir}`.
    pub fn conntrackd_conf(i: usize) -> String {
        let me = addr::SYNC.get(i).copied().unwrap_or(addr::SYNC[0]);
        let peer = addr::SYNC
            .get(1 - i.min(1))
            .copied()
            .unwrap_or(addr::SYNC[1]);
        let public = addr::PUBLIC.get(i).copied().unwrap_or(addr::PUBLIC[0]);
        let private = addr::PRIVATE.get(i).copied().unwrap_or(addr::PRIVATE[0]);
        format!(
            r#"Sync {{
    Mode FTFW {{
        DisableExternalCache Off
    }}
    UDP {{
        IPv4_address {me}
        IPv4_Destination_Address {peer}
        Port 3780
        Interface sync0
        SndSocketBuffer 1249280
        RcvSocketBuffer 1249280
        Checksum on
    }}
}}
General {{
    Systemd off
    HashSize 32768
    HashLimit 524288
    LogFile {{dir}}/conntrackd.log
    Syslog off
    LockFile {{dir}}/conntrackd.lock
    UNIX {{
        Path {{dir}}/conntrackd.ctl
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    Filter From Userspace {{
        Protocol Accept {{
            TCP
            UDP
        }}
        Address Ignore {{
            IPv4_address 127.0.0.1
            IPv4_address {public}
            IPv4_address {private}
            IPv4_address {me}
        }}
    }}
}}
"#
        )
    }

    /// Box `i` of a kernel pair with this priority and advert interval: [`keepalived_conf`],
    /// [`conntrackd_conf`] and the NAT rules of [`KERNEL_RULES`] (the ones vipgate's
    /// configuration of the HA tests has: DNAT of tcp 80 and udp 5353 on the VIP to h1, PAT
    /// of 198.18.0.0/24 behind the VIP).
    pub fn kernel_nat(i: usize, priority: u8, advert_interval_ms: u32) -> BoxKind {
        BoxKind::KernelNat {
            keepalived: keepalived_conf(priority, advert_interval_ms),
            conntrackd: conntrackd_conf(i),
            nft: KERNEL_RULES.to_string(),
        }
    }

    /// The active objects of the internal and external caches in `conntrackd -s cache`.
    pub fn parse_caches(text: &str) -> Option<(u64, u64)> {
        let active = |cache: &str| {
            text.lines()
                .find(|l| l.starts_with(cache))
                .and_then(|l| l.split(':').next_back())
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        Some((active("cache:internal")?, active("cache:external")?))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn advert_intervals_read_as_keepalived_seconds() {
            assert_eq!(advert_int(1000), "1");
            assert_eq!(advert_int(100), "0.1");
            assert_eq!(advert_int(10), "0.01");
            assert_eq!(advert_int(2500), "2.5");
        }

        #[test]
        fn cache_counts_are_read_from_conntrackd_statistics() {
            let text = "cache:internal\tactive objects:\t\t           3\n\
                        \tactive/total entries:\t\t           3/           3\n\
                        \ncache:external\tactive objects:\t\t         100\n\
                        \tactive/total entries:\t\t         100/         100\n";
            assert_eq!(parse_caches(text), Some((3, 100)));
            assert_eq!(parse_caches("nothing"), None);
        }

        #[test]
        fn every_file_of_the_box_is_in_its_directory() {
            let BoxKind::KernelNat {
                keepalived,
                conntrackd,
                ..
            } = kernel_nat(1, 100, 10)
            else {
                unreachable!()
            };
            assert!(keepalived.contains("advert_int 0.01"));
            assert!(keepalived.contains("\"{dir}/primary-backup.sh primary\""));
            assert!(conntrackd.contains("IPv4_address 198.18.9.2\n"));
            assert!(conntrackd.contains("IPv4_Destination_Address 198.18.9.1"));
            assert!(conntrackd.contains("LockFile {dir}/conntrackd.lock"));
            assert!(conntrackd.contains("Path {dir}/conntrackd.ctl"));
            assert!(NOTIFY_SCRIPT.contains("CONF='{dir}/conntrackd.conf'"));
        }
    }
}
