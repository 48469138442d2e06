//! High-availability system tests: two gateway boxes (vipgate, or vipgate and keepalived) on
//! shared segments, in namespaces each test creates and always removes
//! (vipgate_netns::pair). Root only: where that is missing each test says `SKIP:` loudly and
//! returns. Everything waits by polling with generous deadlines; nothing asserts on timings.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::time::Duration;

use vipgate_netns::pair::{addr, BoxKind, Pair, PairSpec};
use vipgate_netns::topology::addr::{INET, VIP};
use vipgate_netns::{poll_until, probe, require_root_and_netns, XdpMode};

/// Waits for anything that should happen: generous, since parallel tests share few cores.
const DEADLINE: Duration = Duration::from_secs(30);

/// Box `i`'s vipgate configuration: its own addresses, the shared VIP and private gateway,
/// DNAT of tcp 80 and udp 5353 to h1, PAT of the private network, and `ha` on the public
/// side with `ha_extra` appended to the `[ha]` section.
fn vipgate_body(i: usize, priority: u8, ha_extra: &str) -> String {
    format!(
        r#"
[[interfaces]]
name = "vg-pub"
side = "public"
address = "{public}/24"
gateway = "203.0.113.254"

[[interfaces]]
name = "vg-priv"
side = "private"
address = "{private}/24"
virtual_addresses = ["198.18.0.1"]

[nat]
vips = ["203.0.113.10"]
capacity = 65536

[[nat.dnat]]
vip = "203.0.113.10"
proto = "tcp"
port = 80
to = "198.18.0.10"

[[nat.dnat]]
vip = "203.0.113.10"
proto = "udp"
port = 5353
to = "198.18.0.10"

[[nat.pat]]
from = ["198.18.0.0/24"]
to = ["203.0.113.10"]

[log]
level = "info"

[ha]
vrid = 51
priority = {priority}
interface = "vg-pub"
advert_interval_ms = 100
{ha_extra}
"#,
        public = addr::PUBLIC[i],
        private = addr::PRIVATE[i],
    )
}

/// keepalived as box `i`: one VRRPv3 instance on vg-pub, VRID 51, the VIP.
fn keepalived_conf(priority: u8) -> String {
    format!(
        r#"
global_defs {{
    vrrp_version 3
    script_user root
    enable_script_security
}}
vrrp_instance vg {{
    state BACKUP
    interface vg-pub
    virtual_router_id 51
    priority {priority}
    advert_int 0.1
    virtual_ipaddress {{
        203.0.113.10/24
    }}
}}
"#
    )
}

fn pair(boxes: [BoxKind; 2]) -> Option<Pair> {
    if !require_root_and_netns() {
        return None;
    }
    let spec = PairSpec {
        binary: env!("CARGO_BIN_EXE_vipgate").into(),
        mode: XdpMode::Skb,
        boxes,
    };
    Some(Pair::build(spec).unwrap_or_else(|e| panic!("pair topology: {e}")))
}

/// `vipgate ha --json` on box `i`.
fn ha(p: &Pair, i: usize) -> serde_json::Value {
    let out = std::process::Command::new(p.binary())
        .args(["ha", "--json", "--socket"])
        .arg(p.control_socket(i))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "vipgate ha on box {i}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn role(p: &Pair, i: usize) -> String {
    ha(p, i)["role"].as_str().unwrap_or("?").to_string()
}

/// Waits until box `i` has role `want`.
fn wait_role(p: &Pair, i: usize, want: &str) {
    let r = poll_until(DEADLINE, &format!("box {i} {want}"), || role(p, i) == want);
    if let Err(e) = r {
        panic!("{e}: box {i} is {}; {}", role(p, i), ha(p, i));
    }
}

/// Runs `body`, printing both boxes' logs if it fails.
fn with_logs(p: &Pair, body: impl FnOnce()) {
    if let Err(e) = catch_unwind(AssertUnwindSafe(body)) {
        eprintln!("box a log:\n{}\nbox b log:\n{}", p.log(0), p.log(1));
        resume_unwind(e);
    }
}

/// One ping from `n` to `dst` answered, within the deadline.
fn wait_ping(n: &vipgate_netns::Netns, dst: std::net::Ipv4Addr) {
    let r = poll_until(DEADLINE, &format!("ping {dst}"), || {
        matches!(
            n.run(move || probe::ping(dst, 1, Duration::from_millis(300))),
            Ok(Ok(1))
        )
    });
    r.unwrap();
}

#[test]
fn two_boxes_elect_the_higher_priority_and_fail_over_both_ways() {
    let Some(mut p) = pair([
        BoxKind::Vipgate(vipgate_body(0, 200, "")),
        BoxKind::Vipgate(vipgate_body(1, 100, "")),
    ]) else {
        return;
    };
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
        let a = ha(&p, 0);
        assert_eq!(a["active"], true, "{a}");
        assert_eq!(ha(&p, 1)["active"], false);
        poll_until(DEADLINE, "box b hears box a", || {
            ha(&p, 1)["peer"]["address"] == addr::PUBLIC[0].to_string()
        })
        .unwrap();
        assert_eq!(ha(&p, 1)["peer"]["priority"], 200);
        // The VIP and the hosts' virtual gateway answer, through box a.
        wait_ping(&p.client, VIP);
        wait_ping(&p.h1, addr::PRIVATE_VIRTUAL);
        wait_ping(&p.h1, INET);
    });
    // A crash: box b takes over within its master-down interval and answers for both.
    let log_a = p.kill(0).unwrap();
    with_logs(&p, || {
        wait_role(&p, 1, "master");
        let b = ha(&p, 1);
        assert_eq!(b["active"], true);
        assert!(
            b["last_transition"]["reason"]
                .as_str()
                .unwrap()
                .contains("no advert from the master"),
            "{b}"
        );
        wait_ping(&p.client, VIP);
        wait_ping(&p.h1, INET);
        assert!(!log_a.is_empty());
    });
    // Box a comes back with the higher priority and preempts (the default).
    p.start(0).unwrap();
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
        wait_ping(&p.client, VIP);
        wait_ping(&p.h1, INET);
    });
    // A graceful stop hands over at once with a priority-0 advert.
    let exit = p.stop(0).unwrap();
    with_logs(&p, || {
        assert!(exit.counters.value("ha_adverts_tx").unwrap() > 0);
        wait_role(&p, 1, "master");
        let b = ha(&p, 1);
        assert!(
            b["last_transition"]["reason"]
                .as_str()
                .unwrap()
                .contains("priority 0"),
            "{b}"
        );
        wait_ping(&p.client, VIP);
    });
}

#[test]
fn without_preemption_a_returning_box_stays_backup() {
    let Some(mut p) = pair([
        BoxKind::Vipgate(vipgate_body(0, 200, "preempt = false")),
        BoxKind::Vipgate(vipgate_body(1, 100, "preempt = false")),
    ]) else {
        return;
    };
    with_logs(&p, || {
        // Both start as backups; whoever times out first is master and stays.
        poll_until(DEADLINE, "one master", || {
            [role(&p, 0), role(&p, 1)]
                .iter()
                .filter(|r| *r == "master")
                .count()
                == 1
        })
        .unwrap();
    });
    let master = usize::from(role(&p, 1) == "master");
    p.kill(master).unwrap();
    with_logs(&p, || wait_role(&p, 1 - master, "master"));
    p.start(master).unwrap();
    with_logs(&p, || {
        wait_role(&p, master, "backup");
        // It has heard the master and stays backup for several master-down intervals.
        poll_until(DEADLINE, "an advert heard", || {
            ha(&p, master)["counters"]["ha_adverts_rx"].as_u64() > Some(20)
        })
        .unwrap();
        assert_eq!(role(&p, master), "backup");
        assert_eq!(role(&p, 1 - master), "master");
    });
}

#[test]
fn an_operator_hands_over_with_standby_and_takes_back_with_active() {
    let Some(p) = pair([
        BoxKind::Vipgate(vipgate_body(0, 200, "")),
        BoxKind::Vipgate(vipgate_body(1, 100, "")),
    ]) else {
        return;
    };
    let cli = |i: usize, cmd: &str| {
        let out = std::process::Command::new(p.binary())
            .args([cmd, "--socket"])
            .arg(p.control_socket(i))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        cli(0, "standby");
        assert_eq!(role(&p, 0), "left");
        assert_eq!(ha(&p, 0)["active"], false);
        wait_role(&p, 1, "master");
        wait_ping(&p.client, VIP);
        cli(0, "active");
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
        wait_ping(&p.client, VIP);
    });
}

/// The boxes lose sight of each other (the public segment drops VRRP between them) but not of
/// their neighbors: both become master and announce, so traffic moves to whichever announced
/// last, with the connections it has from state sync. When the partition heals one master
/// remains, it announces again, and the established connections, which went on throughout,
/// still do.
#[test]
fn a_partition_makes_two_masters_and_healing_leaves_one() {
    let Some(p) = pair([
        BoxKind::Vipgate(synced_body(0, 200, "")),
        BoxKind::Vipgate(synced_body(1, 100, "")),
    ]) else {
        return;
    };
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
    });
    let flows = Flows::open(&p);
    let want = flows.count();
    let mut driver = Driver::start(flows);
    driver.wait_rounds(3, "rounds before the partition");
    with_logs(&p, || {
        poll_until(DEADLINE, "the standby holds every flow", || {
            table_count(&p, 1) >= want
        })
        .unwrap();
        p.set_vrrp_blocked(true).unwrap();
        wait_role(&p, 1, "master");
        assert_eq!(role(&p, 0), "master", "split brain while partitioned");
    });
    driver.wait_rounds(ROUNDS_AFTER, "rounds while partitioned");
    with_logs(&p, || {
        p.set_vrrp_blocked(false).unwrap();
        wait_role(&p, 1, "backup");
        assert_eq!(role(&p, 0), "master");
        assert!(ha(&p, 1)["last_transition"]["reason"]
            .as_str()
            .unwrap()
            .contains("higher priority"));
    });
    let healed = Instant::now();
    driver.wait_rounds(ROUNDS_AFTER, "rounds after the partition healed");
    eprintln!(
        "partition healed: {want} flows kept, longest gap between rounds {:?}",
        driver.gap_since(healed)
    );
    driver.finish();
    with_logs(&p, || wait_ping(&p.client, VIP));
}

#[test]
fn a_data_link_down_lowers_the_priority_and_hands_over() {
    let Some(p) = pair([
        BoxKind::Vipgate(vipgate_body(0, 200, "")),
        BoxKind::Vipgate(vipgate_body(1, 180, "")),
    ]) else {
        return;
    };
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
        // Box a's private link goes down: 200 - 50 < 180, box b preempts.
        let n = &p.boxes[0];
        n.exec(&["ip", "link", "set", "vg-priv", "down"]).unwrap();
        wait_role(&p, 1, "master");
        let a = ha(&p, 0);
        assert_eq!(a["priority"], 150, "{a}");
        assert_eq!(a["links_down"][0], "vg-priv");
        wait_role(&p, 0, "backup");
        wait_ping(&p.h1, INET);
        n.exec(&["ip", "link", "set", "vg-priv", "up"]).unwrap();
        wait_role(&p, 0, "master");
    });
}

/// A health-checked pool with no backend up lowers the priority: a box whose checks fail
/// (its probes are dropped at the backend) hands over to one whose checks pass.
#[test]
fn a_pool_without_a_backend_up_lowers_the_priority() {
    let pool = r#"
[[nat.pools]]
name = "web"
vip = "203.0.113.10"
proto = "tcp"
port = 8080
backends = [{ addr = "198.18.0.10", port = 80 }]
check = { type = "icmp", interval_ms = 200, timeout_ms = 150, rise = 1, fall = 2 }
"#;
    let Some(p) = pair([
        BoxKind::Vipgate(format!("{}{pool}", vipgate_body(0, 200, ""))),
        BoxKind::Vipgate(format!("{}{pool}", vipgate_body(1, 180, ""))),
    ]) else {
        return;
    };
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
        // h1 stops answering box a's probes (and only box a's).
        let rules = "table ip probe {\n  chain input {\n    type filter hook input priority 0; policy accept;\n    ip saddr 198.18.0.2 icmp type echo-request drop\n  }\n}\n";
        let file = p.box_dir(0).join("probe.nft");
        std::fs::write(&file, rules).unwrap();
        p.h1.exec(&["nft", "-f", &file.to_string_lossy()]).unwrap();
        wait_role(&p, 1, "master");
        wait_role(&p, 0, "backup");
        assert_eq!(ha(&p, 0)["priority"], 150);
        // Its checks pass again: full priority, and it preempts back.
        p.h1.exec(&["nft", "delete", "table", "ip", "probe"])
            .unwrap();
        wait_role(&p, 0, "master");
        assert_eq!(ha(&p, 0)["priority"], 200);
    });
}

#[test]
fn vipgate_and_keepalived_elect_the_same_master_both_ways_round() {
    if std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .is_err()
    {
        if require_root_and_netns() {
            panic!("keepalived is not installed: the README's test command installs it");
        }
        return;
    }
    for (vipgate_priority, keepalived_priority) in [(200, 100), (100, 200)] {
        let Some(p) = pair([
            BoxKind::Vipgate(vipgate_body(0, vipgate_priority, "")),
            BoxKind::Keepalived(keepalived_conf(keepalived_priority)),
        ]) else {
            return;
        };
        with_logs(&p, || {
            let vipgate_wins = vipgate_priority > keepalived_priority;
            wait_role(&p, 0, if vipgate_wins { "master" } else { "backup" });
            poll_until(DEADLINE, "keepalived's role", || {
                p.kernel_holds_vip(1).unwrap() != vipgate_wins
            })
            .unwrap();
            // Both see the other's adverts and agree for a while.
            poll_until(DEADLINE, "adverts heard", || {
                ha(&p, 0)["counters"]["ha_adverts_rx"].as_u64() > Some(20) || vipgate_wins
            })
            .unwrap();
            let a = ha(&p, 0);
            assert_eq!(a["active"], vipgate_wins, "{a}");
            assert_eq!(p.kernel_holds_vip(1).unwrap(), !vipgate_wins);
            if vipgate_wins {
                let log = p.log(1);
                assert!(log.contains("Entering BACKUP STATE"), "{log}");
            } else {
                assert_eq!(a["peer"]["address"], addr::PUBLIC[1].to_string(), "{a}");
                assert_eq!(a["peer"]["priority"], keepalived_priority);
            }
            assert_eq!(a["counters"]["advert_bad_checksum"], 0, "{a}");
            wait_ping(&p.client, VIP);
        });
    }
}

// ---------------------------------------------------------------------------------------
// Failover under load: state sync keeps every connection

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Instant;

use vipgate_netns::pair::addr::SYNC;
use vipgate_netns::topology::addr::{CLIENT, H1, H2};
use vipgate_netns::Netns;

/// Connections a failover test opens one after the other up to the failure, at most.
const LATE_MAX: usize = 400;

/// Counter `name` of box `i`, summed over its workers.
fn stat(p: &Pair, i: usize, name: &str) -> u64 {
    let out = std::process::Command::new(p.binary())
        .args(["stats", "--json", "--socket"])
        .arg(p.control_socket(i))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["total"][name].as_u64().unwrap_or(0)
}

/// Long-lived TCP connections through the VIP, as the issue asks.
const FLOWS_TCP: usize = 200;
/// UDP flows through the VIP (inbound) and through PAT (outbound).
const FLOWS_UDP: usize = 8;
/// Rounds of exchanges that must succeed after a failure.
const ROUNDS_AFTER: u64 = 20;
/// The longest a test service lives, whatever the test does.
const SERVICE_LIFETIME: Duration = Duration::from_secs(300);
/// Tries for one UDP echo, each waiting this long: datagrams sent in the gap are lost.
const UDP_TRIES: u32 = 100;
const UDP_WAIT: Duration = Duration::from_millis(100);

/// A box's configuration with state sync on the sync link.
fn synced_body(i: usize, priority: u8, ha_extra: &str) -> String {
    format!(
        "{}\n[ha.sync]\ninterface = \"sync0\"\nlocal = \"{}\"\npeer = \"{}\"\nkey = \"vipgate-test-sync-key-0123456789\"\nheartbeat_ms = 50\ndead_ms = 300\nrefresh_secs = 5\n",
        vipgate_body(i, priority, ha_extra),
        SYNC[i],
        SYNC[1 - i]
    )
}

/// A line echo (TCP) or datagram echo (UDP) service in a namespace, stopped on drop.
struct Echo {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Echo {
    fn tcp(ns: &Netns, addr: SocketAddrV4) -> Echo {
        let listener = ns.run(move || TcpListener::bind(addr)).unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            let end = Instant::now() + SERVICE_LIFETIME;
            let mut conns = Vec::new();
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end && conns.len() < 1024 {
                match listener.accept() {
                    Ok((s, _)) => {
                        let stop3 = stop2.clone();
                        conns.push(thread::spawn(move || {
                            s.set_nonblocking(false).unwrap();
                            s.set_read_timeout(Some(Duration::from_millis(200)))
                                .unwrap();
                            let mut r = BufReader::new(s.try_clone().unwrap());
                            let mut w = s;
                            let mut line = String::new();
                            while !stop3.load(Ordering::Relaxed) && Instant::now() < end {
                                match r.read_line(&mut line) {
                                    Ok(0) => return,
                                    Ok(_) => {
                                        if w.write_all(line.as_bytes()).is_err() {
                                            return;
                                        }
                                        line.clear();
                                    }
                                    Err(e)
                                        if matches!(
                                            e.kind(),
                                            std::io::ErrorKind::WouldBlock
                                                | std::io::ErrorKind::TimedOut
                                        ) => {}
                                    Err(_) => return,
                                }
                            }
                        }));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
            stop2.store(true, Ordering::Relaxed);
            for c in conns {
                let _ = c.join();
            }
        });
        Echo {
            stop,
            handle: Some(handle),
        }
    }

    fn udp(ns: &Netns, addr: SocketAddrV4) -> Echo {
        let socket = ns.run(move || UdpSocket::bind(addr)).unwrap().unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let handle = thread::spawn(move || {
            let end = Instant::now() + SERVICE_LIFETIME;
            let mut buf = [0u8; 2048];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        });
        Echo {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// The flows of a failover test: TCP to the VIP (DNAT), UDP to the VIP (DNAT), UDP from an
/// internal host out (PAT), and one TCP connection from an internal host out (PAT).
struct Flows {
    tcp: Vec<(BufReader<TcpStream>, TcpStream)>,
    udp: Vec<UdpSocket>,
    _services: Vec<Echo>,
}

fn tcp_flow(ns: &Netns, dst: SocketAddrV4) -> (BufReader<TcpStream>, TcpStream) {
    let s = ns
        .run(move || TcpStream::connect_timeout(&SocketAddr::V4(dst), DEADLINE))
        .unwrap()
        .unwrap_or_else(|e| panic!("connect {dst}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    s.set_nodelay(true).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

fn udp_flow(ns: &Netns, dst: SocketAddrV4) -> UdpSocket {
    let s = ns
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(dst)?;
            Ok::<_, std::io::Error>(s)
        })
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(UDP_WAIT)).unwrap();
    s
}

impl Flows {
    fn open(p: &Pair) -> Flows {
        let services = vec![
            Echo::tcp(&p.h1, SocketAddrV4::new(H1, 80)),
            Echo::udp(&p.h1, SocketAddrV4::new(H1, 5353)),
            Echo::tcp(&p.inet, SocketAddrV4::new(INET, 7)),
            Echo::udp(&p.inet, SocketAddrV4::new(INET, 7)),
        ];
        let mut tcp: Vec<_> = (0..FLOWS_TCP)
            .map(|_| tcp_flow(&p.client, SocketAddrV4::new(VIP, 80)))
            .collect();
        tcp.push(tcp_flow(&p.h2, SocketAddrV4::new(INET, 7)));
        let mut udp: Vec<_> = (0..FLOWS_UDP / 2)
            .map(|_| udp_flow(&p.client, SocketAddrV4::new(VIP, 5353)))
            .collect();
        udp.extend((0..FLOWS_UDP / 2).map(|_| udp_flow(&p.h1, SocketAddrV4::new(INET, 7))));
        Flows {
            tcp,
            udp,
            _services: services,
        }
    }

    /// Conntrack entries the flows make on a box: every TCP and UDP flow, and the PAT
    /// mappings of the outbound ones.
    fn count(&self) -> u64 {
        (self.tcp.len() + self.udp.len()) as u64
    }

    /// One round: every flow sends a message and gets it back.
    fn round(&mut self, round: u64) -> Result<(), String> {
        for (i, (r, w)) in self.tcp.iter_mut().enumerate() {
            let msg = format!("t{round}-{i}\n");
            w.write_all(msg.as_bytes())
                .map_err(|e| format!("tcp flow {i} round {round}: write: {e}"))?;
            let mut line = String::new();
            r.read_line(&mut line)
                .map_err(|e| format!("tcp flow {i} round {round}: read: {e}"))?;
            if line != msg {
                return Err(format!(
                    "tcp flow {i} round {round}: got {line:?}, sent {msg:?}"
                ));
            }
        }
        for (i, s) in self.udp.iter().enumerate() {
            let msg = format!("u{round}-{i}");
            let mut ok = false;
            let mut buf = [0u8; 64];
            'tries: for _ in 0..UDP_TRIES {
                let _ = s.send(msg.as_bytes());
                let deadline = Instant::now() + UDP_WAIT;
                while Instant::now() < deadline {
                    match s.recv(&mut buf) {
                        Ok(n) if &buf[..n] == msg.as_bytes() => {
                            ok = true;
                            break 'tries;
                        }
                        // An echo of an earlier try of an earlier round.
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            }
            if !ok {
                return Err(format!(
                    "udp flow {i} round {round}: no echo in {UDP_TRIES} tries"
                ));
            }
        }
        Ok(())
    }
}

/// Drives rounds on a thread until stopped; records when each round completed.
struct Driver {
    stop: Arc<AtomicBool>,
    done: Arc<Mutex<Vec<Instant>>>,
    handle: Option<JoinHandle<Result<(), String>>>,
}

impl Driver {
    fn start(mut flows: Flows) -> Driver {
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(Mutex::new(Vec::new()));
        let (stop2, done2) = (stop.clone(), done.clone());
        let handle = thread::spawn(move || {
            let end = Instant::now() + SERVICE_LIFETIME;
            let mut round = 0u64;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                flows.round(round)?;
                done2.lock().unwrap().push(Instant::now());
                round += 1;
                thread::sleep(Duration::from_millis(2));
            }
            Ok(())
        });
        Driver {
            stop,
            done,
            handle: Some(handle),
        }
    }

    fn rounds(&self) -> u64 {
        self.done.lock().unwrap().len() as u64
    }

    /// Waits until `n` more rounds completed (the flows all work), failing with the
    /// driver's error if one broke.
    fn wait_rounds(&mut self, n: u64, what: &str) {
        let target = self.rounds() + n;
        let r = poll_until(Duration::from_secs(120), what, || {
            self.rounds() >= target || self.handle.as_ref().is_some_and(JoinHandle::is_finished)
        });
        if self.handle.as_ref().is_some_and(JoinHandle::is_finished) {
            let e = self.handle.take().unwrap().join().unwrap();
            panic!("{what}: the flows broke: {e:?}");
        }
        r.unwrap();
    }

    /// The longest time between two completed rounds after `since`.
    fn gap_since(&self, since: Instant) -> Duration {
        let done = self.done.lock().unwrap();
        let mut last = since;
        let mut gap = Duration::ZERO;
        for t in done.iter().filter(|t| **t >= since) {
            gap = gap.max(t.duration_since(last));
            last = *t;
        }
        gap
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let r = self.handle.take().unwrap().join().unwrap();
        r.unwrap();
    }
}

/// Connections and mappings box `i` holds.
fn table_count(p: &Pair, i: usize) -> u64 {
    let out = std::process::Command::new(p.binary())
        .args(["conns", "--count", "--json", "--socket"])
        .arg(p.control_socket(i))
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["count"].as_u64().unwrap_or(0)
}

#[derive(Clone, Copy, Debug)]
enum Failure {
    Kill,
    LinksDown,
    Stop,
}

/// The failover test of one failure mode: every flow keeps working through the failure of
/// the master and through its return (it preempts only after its bulk copy).
fn failover(mode: Failure) {
    failover_with(mode, "");
}

/// The MAC `ns` has for `addr` in its ARP cache, as `ip neigh` prints it.
fn neighbor_mac(ns: &Netns, addr: std::net::Ipv4Addr) -> String {
    let out = ns
        .exec(&["ip", "neigh", "show", &addr.to_string()])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .skip_while(|w| *w != "lladdr")
        .nth(1)
        .unwrap_or("none")
        .to_string()
}

fn failover_with(mode: Failure, ha_extra: &str) {
    let vmac = ha_extra.contains("virtual_mac = true");
    let Some(mut p) = pair([
        BoxKind::Vipgate(synced_body(0, 200, ha_extra)),
        BoxKind::Vipgate(synced_body(1, 100, ha_extra)),
    ]) else {
        return;
    };
    let _ = CLIENT;
    let _ = H2;
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
    });
    let flows = Flows::open(&p);
    let want = flows.count();
    let mut driver = Driver::start(flows);
    driver.wait_rounds(3, "rounds before the failure");
    with_logs(&p, || {
        poll_until(DEADLINE, "the standby holds every flow", || {
            table_count(&p, 1) >= want
        })
        .unwrap();
    });
    // With the virtual MAC, neighbors know the moving addresses by it, before and after.
    const VMAC: &str = "00:00:5e:00:01:33";
    if vmac {
        assert_eq!(neighbor_mac(&p.rtr, VIP), VMAC);
        assert_eq!(neighbor_mac(&p.h1, addr::PRIVATE_VIRTUAL), VMAC);
    }
    // Connections opened one after the other up to the very moment of the failure: the
    // last ones are younger than the sync's lag.
    let stop_opening = Arc::new(AtomicBool::new(false));
    let opener = {
        let stop = stop_opening.clone();
        p.client
            .enter_thread(move || {
                let mut conns = Vec::new();
                let end = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed)
                    && conns.len() < LATE_MAX
                    && Instant::now() < end
                {
                    let dst = SocketAddr::V4(SocketAddrV4::new(VIP, 80));
                    let Ok(s) = TcpStream::connect_timeout(&dst, DEADLINE) else {
                        continue;
                    };
                    s.set_read_timeout(Some(DEADLINE)).unwrap();
                    s.set_nodelay(true).unwrap();
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut w = s;
                    w.write_all(b"hello\n").unwrap();
                    let mut line = String::new();
                    let first = r.read_line(&mut line);
                    assert!(
                        first.is_ok() && line == "hello\n",
                        "late connection {} (its first exchange): {first:?} {line:?}",
                        conns.len()
                    );
                    conns.push((r, w));
                    thread::sleep(Duration::from_millis(2));
                }
                conns
            })
            .unwrap()
    };
    with_logs(&p, || {
        poll_until(DEADLINE, "some late connections", || {
            table_count(&p, 0) >= want + 5
        })
        .unwrap();
    });
    // The opener goes on through the failure: the youngest connections race it, their
    // first exchange answered by either box, or by the old one's last act.
    let at = Instant::now();
    match mode {
        Failure::Kill => drop(p.kill(0).unwrap()),
        Failure::LinksDown => p.set_data_links(0, false).unwrap(),
        Failure::Stop => drop(p.stop(0).unwrap()),
    }
    with_logs(&p, || wait_role(&p, 1, "master"));
    stop_opening.store(true, Ordering::Relaxed);
    let mut late = opener.join().unwrap();
    driver.wait_rounds(ROUNDS_AFTER, "rounds after the failure");
    // Every late connection works on the new master, the youngest included.
    let n = late.len();
    for (i, (r, w)) in late.iter_mut().enumerate() {
        w.write_all(b"after\n").unwrap();
        let mut line = String::new();
        r.read_line(&mut line)
            .unwrap_or_else(|e| panic!("late connection {i} of {n}: {e}"));
        assert_eq!(line, "after\n", "late connection {i} of {n}");
    }
    eprintln!(
        "failover {mode:?}: {n} connections opened up to the failure kept, {} picked up mid-stream",
        stat(&p, 1, "tcp_picked_up")
    );
    eprintln!(
        "failover {mode:?}{}: {} flows kept, longest gap between rounds {:?}",
        if vmac { " (virtual MAC)" } else { "" },
        want,
        driver.gap_since(at)
    );
    if vmac {
        assert_eq!(
            neighbor_mac(&p.rtr, VIP),
            VMAC,
            "the router's cache never changed"
        );
        assert_eq!(neighbor_mac(&p.h1, addr::PRIVATE_VIRTUAL), VMAC);
    }
    // The old master returns; with preemption it takes over again, after its bulk copy.
    match mode {
        Failure::LinksDown => p.set_data_links(0, true).unwrap(),
        Failure::Kill | Failure::Stop => p.start(0).unwrap(),
    }
    let back = Instant::now();
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
        let a = ha(&p, 0);
        assert!(
            a["sync"]["bulk_complete"] == true || matches!(mode, Failure::LinksDown),
            "took over without a complete bulk copy: {a}"
        );
    });
    driver.wait_rounds(ROUNDS_AFTER, "rounds after the return");
    eprintln!(
        "return {mode:?}: longest gap between rounds {:?}",
        driver.gap_since(back)
    );
    driver.finish();
    with_logs(&p, || {
        for i in 0..2 {
            let c = &ha(&p, i)["sync"]["counters"];
            for bad in ["sync_rx_forged", "sync_rx_malformed", "sync_install_failed"] {
                assert_eq!(c[bad], 0, "box {i} {bad}: {c}");
            }
        }
    });
}

#[test]
fn failover_on_a_crash_keeps_every_connection() {
    failover(Failure::Kill);
}

#[test]
fn failover_on_data_links_down_keeps_every_connection() {
    failover(Failure::LinksDown);
}

#[test]
fn failover_on_a_graceful_stop_keeps_every_connection() {
    failover(Failure::Stop);
}

#[test]
fn failover_with_the_virtual_mac_changes_no_neighbor_cache() {
    failover_with(Failure::Kill, "virtual_mac = true");
}

// ---------------------------------------------------------------------------------------
// Bulk copy and hostile input

use vipgate_ha::advert::Advert;
use vipgate_ha::sync::{Header, Kind, SyncKey};

const SYNC_KEY: &[u8] = b"vipgate-test-sync-key-0123456789";

/// Connections made with crafted UDP frames from the router to VIP:5353, one per source
/// port (they need no answer to exist).
fn udp_conns(p: &Pair, master: usize, n: u16) {
    let mac = {
        let b = &p.boxes[master];
        b.run(|| probe::interface_mac("vg-pub")).unwrap().unwrap()
    };
    p.rtr
        .run(move || {
            let link = probe::RawLink::open("to-gw").unwrap();
            for i in 0..n {
                let port = 10_000 + i;
                let mut udp = Vec::with_capacity(12);
                udp.extend_from_slice(&port.to_be_bytes());
                udp.extend_from_slice(&5353u16.to_be_bytes());
                udp.extend_from_slice(&12u16.to_be_bytes());
                udp.extend_from_slice(&[0, 0]); // no checksum
                udp.extend_from_slice(b"bulk");
                let f = probe::ipv4_frame(mac, link.mac(), CLIENT, VIP, 17, &udp);
                link.send(&f).unwrap();
                if i % 256 == 255 {
                    // Let the gateway's queue drain: this is about state, not load.
                    thread::sleep(Duration::from_millis(2));
                }
            }
        })
        .unwrap();
}

/// At least `n` connections on box `master`, made by [`udp_conns`]: frames lost on a busy
/// machine are sent again (the ones that arrived make no second connection).
fn make_conns(p: &Pair, master: usize, n: u16) {
    for _ in 0..10 {
        udp_conns(p, master, n);
        let r = poll_until(Duration::from_secs(3), "connections", || {
            table_count(p, master) >= u64::from(n)
        });
        if r.is_ok() {
            return;
        }
    }
    panic!(
        "box {master} holds {} of {n} connections",
        table_count(p, master)
    );
}

#[test]
fn a_late_standby_gets_every_connection_before_it_preempts() {
    const N: u16 = 5000;
    let Some(mut p) = pair([
        BoxKind::Vipgate(synced_body(0, 100, "")),
        BoxKind::Vipgate(synced_body(1, 200, "")),
    ]) else {
        return;
    };
    p.stop(1).unwrap();
    with_logs(&p, || wait_role(&p, 0, "master"));
    with_logs(&p, || make_conns(&p, 0, N));
    p.start(1).unwrap();
    with_logs(&p, || {
        wait_role(&p, 1, "master");
        let b = ha(&p, 1);
        let bulk = &b["sync"]["last_bulk_received"];
        assert_eq!(bulk["complete"], true, "{b}");
        assert!(bulk["received"].as_u64().unwrap() >= u64::from(N), "{b}");
        assert!(table_count(&p, 1) >= u64::from(N));
        let log = p.log(1);
        let complete = log.find("bulk copy complete").expect("bulk logged");
        let master = log.find("to=master").expect("takeover logged");
        assert!(
            complete < master,
            "preempted before the bulk copy completed:\n{log}"
        );
        wait_role(&p, 0, "backup");
    });
}

#[test]
fn forged_replayed_and_truncated_sync_messages_and_strange_adverts_change_nothing() {
    let peers = |other: usize| format!("peers = [\"{}\"]", addr::PUBLIC[other]);
    let Some(p) = pair([
        BoxKind::Vipgate(synced_body(0, 200, &peers(1))),
        BoxKind::Vipgate(synced_body(1, 100, &peers(0))),
    ]) else {
        return;
    };
    with_logs(&p, || {
        wait_role(&p, 0, "master");
        wait_role(&p, 1, "backup");
    });
    udp_conns(&p, 0, 50);
    with_logs(&p, || {
        poll_until(DEADLINE, "the standby has the connections", || {
            table_count(&p, 1) >= 50
        })
        .unwrap();
    });
    let before = table_count(&p, 1);
    let epoch = ha(&p, 0)["sync"]["epoch"].as_u64().unwrap();
    let key = SyncKey::new(SYNC_KEY).unwrap();
    let wrong = SyncKey::new(b"another-key-entirely-0123456789").unwrap();
    // A Data message carrying one upsert of a connection nobody made.
    let bogus = {
        let ex = vipgate_nat::engine::Exported {
            record: vipgate_nat::ConnRecord {
                orig: vipgate_nat::FlowKey {
                    src: std::net::Ipv4Addr::new(198, 51, 100, 66),
                    dst: VIP,
                    sport: 4444,
                    dport: 80,
                    proto: vipgate_nat::Proto::Tcp,
                },
                reply: vipgate_nat::FlowKey {
                    src: H1,
                    dst: std::net::Ipv4Addr::new(198, 51, 100, 66),
                    sport: 80,
                    dport: 4444,
                    proto: vipgate_nat::Proto::Tcp,
                },
                state: vipgate_nat::ConnState::TcpEstablished,
                flags: 0x04,
                owner: 0,
                mapping: None,
                backend: u32::MAX,
                idle_secs: 0,
                fin_seen: 0,
            },
            mapping: None,
            peer_mapping: None,
        };
        let mut b = vipgate_ha::sync::Batch::new();
        b.push(&vipgate_ha::sync::Record::Upsert(ex)).unwrap();
        b
    };
    let header = |epoch, seq| Header {
        epoch,
        seq,
        ack: 0,
        ack_epoch: 0,
    };
    let mut truncated = bogus.seal(&header(epoch, u64::MAX / 2), &key);
    truncated.truncate(truncated.len() - 5);
    let datagrams: Vec<(&str, Vec<u8>)> = vec![
        ("sync_rx_malformed", vec![0x5a; 100]),
        (
            "sync_rx_forged",
            bogus.seal(&header(epoch, 1_000_000), &wrong),
        ),
        ("sync_rx_malformed", truncated),
        ("sync_rx_stale", bogus.seal(&header(epoch - 1, 1), &key)),
        ("sync_rx_replayed", bogus.seal(&header(epoch, 1), &key)),
        (
            "sync_rx_malformed",
            vipgate_ha::sync::wire::seal(Kind::Heartbeat, &header(epoch, 1), &[9, 9], &key)
                .unwrap(),
        ),
    ];
    let counters = |i| ha(&p, i)["sync"]["counters"].clone();
    let c0 = counters(1);
    let sent: Vec<Vec<u8>> = datagrams.iter().map(|(_, d)| d.clone()).collect();
    p.boxes[0]
        .run(move || {
            let s = UdpSocket::bind(SocketAddrV4::new(SYNC[0], 0)).unwrap();
            for d in sent {
                s.send_to(&d, SocketAddrV4::new(SYNC[1], 7789)).unwrap();
            }
        })
        .unwrap();
    with_logs(&p, || {
        for name in [
            "sync_rx_malformed",
            "sync_rx_forged",
            "sync_rx_stale",
            "sync_rx_replayed",
        ] {
            let want = datagrams.iter().filter(|(n, _)| *n == name).count() as u64;
            poll_until(DEADLINE, name, || {
                counters(1)[name].as_u64().unwrap() >= c0[name].as_u64().unwrap() + want
            })
            .unwrap_or_else(|e| panic!("{e}: {}", counters(1)));
        }
        assert_eq!(table_count(&p, 1), before, "nothing installed");
        assert_eq!(role(&p, 1), "backup");
    });

    // Adverts: from a box that is not a peer, with a bad checksum, with a routed TTL.
    let b_mac = p.boxes[1]
        .run(|| probe::interface_mac("vg-pub"))
        .unwrap()
        .unwrap();
    let stranger = std::net::Ipv4Addr::new(203, 0, 113, 99);
    let advert = Advert {
        vrid: 51,
        priority: 255,
        interval_cs: 1,
        addrs: vec![VIP],
    };
    let a0 = ha(&p, 1)["counters"].clone();
    p.rtr
        .run(move || {
            let link = probe::RawLink::open("to-gw").unwrap();
            let mut buf = [0u8; 128];
            let n = advert
                .emit_frame(&mut buf, link.mac(), b_mac, stranger, addr::PUBLIC[1])
                .unwrap();
            link.send(&buf[..n]).unwrap();
            let n = advert
                .emit_frame(
                    &mut buf,
                    link.mac(),
                    b_mac,
                    addr::PUBLIC[0],
                    addr::PUBLIC[1],
                )
                .unwrap();
            let mut bad_sum = buf[..n].to_vec();
            bad_sum[14 + 20 + 2] = 254; // the priority, checksum unchanged
            link.send(&bad_sum).unwrap();
            let mut routed = buf[..n].to_vec();
            routed[14 + 8] = 254; // TTL
            routed[14 + 10] = 0;
            routed[14 + 11] = 0;
            let sum = probe::checksum(&routed[14..34]);
            routed[14 + 10..14 + 12].copy_from_slice(&sum.to_be_bytes());
            link.send(&routed).unwrap();
        })
        .unwrap();
    with_logs(&p, || {
        for name in [
            "advert_unknown_peer",
            "advert_bad_checksum",
            "advert_bad_ttl",
        ] {
            poll_until(DEADLINE, name, || {
                ha(&p, 1)["counters"][name].as_u64().unwrap() > a0[name].as_u64().unwrap()
            })
            .unwrap_or_else(|e| panic!("{e}: {}", ha(&p, 1)));
        }
        assert_eq!(
            role(&p, 1),
            "backup",
            "a priority-255 stranger changed nothing"
        );
        assert_eq!(role(&p, 0), "master");
    });
}
