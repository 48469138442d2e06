//! Root-only tests of the namespace support itself: cleanup on every path (panics included),
//! threads and processes inside namespaces, the probes, and the topology with the kernel as
//! the gateway. Each test skips, loudly, where it cannot run.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::process::Command;
use std::time::Duration;

use vipgate_netns::probe;
use vipgate_netns::topology::addr;
use vipgate_netns::{poll_until, require_root_and_netns, veth, Gateway, Netns, Topology};

const A: Ipv4Addr = Ipv4Addr::new(198, 18, 99, 1);
const B: Ipv4Addr = Ipv4Addr::new(198, 18, 99, 2);
const NOBODY: Ipv4Addr = Ipv4Addr::new(198, 18, 99, 3);

fn netns_exists(name: &str) -> bool {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Gone, or a zombie nobody reaps (an orphan in a container whose init does not reap).
fn process_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit(')')
                .next()
                .and_then(|rest| rest.split_whitespace().next())
                == Some("Z")
        }
    }
}

/// Two namespaces joined by a veth, 198.18.99.1/24 and .2/24, both up.
fn pair(queues: u32) -> (Netns, Netns) {
    let a = Netns::new("ta").unwrap();
    let b = Netns::new("tb").unwrap();
    veth(&a, "va", &b, "vb", queues).unwrap();
    a.exec(&["ip", "addr", "add", "198.18.99.1/24", "dev", "va"])
        .unwrap();
    b.exec(&["ip", "addr", "add", "198.18.99.2/24", "dev", "vb"])
        .unwrap();
    a.exec(&["ip", "link", "set", "va", "up"]).unwrap();
    b.exec(&["ip", "link", "set", "vb", "up"]).unwrap();
    (a, b)
}

#[test]
fn namespace_is_set_up_and_removed() {
    if !require_root_and_netns() {
        return;
    }
    let ns = Netns::new("life").unwrap();
    let name = ns.name().to_string();
    assert!(netns_exists(&name));
    assert_eq!(
        ns.read_sysctl("net.ipv6.conf.all.disable_ipv6").unwrap(),
        "1"
    );
    assert_eq!(
        ns.read_sysctl("net.ipv6.conf.default.disable_ipv6")
            .unwrap(),
        "1"
    );
    let lo = ns.exec(&["ip", "-o", "link", "show", "lo"]).unwrap();
    assert!(String::from_utf8_lossy(&lo.stdout).contains("UP"));
    // The sysctl is the namespace's own, not the root namespace's.
    ns.sysctl("net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(ns.read_sysctl("net.ipv4.ip_forward").unwrap(), "1");
    let other = Netns::new("life").unwrap();
    assert_ne!(other.name(), name);
    assert_eq!(other.read_sysctl("net.ipv4.ip_forward").unwrap(), "0");
    drop(ns);
    assert!(!netns_exists(&name));
    assert!(netns_exists(other.name()));
}

#[test]
fn cleanup_happens_when_the_test_body_panics() {
    if !require_root_and_netns() {
        return;
    }
    let mut seen = None;
    let r = catch_unwind(AssertUnwindSafe(|| {
        let ns = Netns::new("panic").unwrap();
        let guarded = ns.spawn(&["sleep", "1000"]).unwrap();
        // A process that escaped its parent: only the namespace's drop can find it.
        let out = ns
            .exec(&["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"])
            .unwrap();
        let orphan: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
        seen = Some((ns.name().to_string(), guarded.pid(), orphan));
        panic!("the test body fails");
    }));
    assert!(r.is_err());
    let (name, guarded, orphan) = seen.unwrap();
    assert!(!netns_exists(&name), "namespace {name} left behind");
    assert!(
        process_gone(guarded),
        "guarded process {guarded} still runs"
    );
    assert!(process_gone(orphan), "orphan {orphan} still runs");
}

#[test]
fn threads_live_in_their_namespace() {
    if !require_root_and_netns() {
        return;
    }
    let (a, b) = pair(1);
    assert!(a.run(|| probe::interface_index("va")).unwrap().is_ok());
    assert!(a.run(|| probe::interface_index("vb")).unwrap().is_err());
    assert!(b.run(|| probe::interface_index("vb")).unwrap().is_ok());
    // A server in b, a client in a, over the veth.
    let server = b
        .enter_thread(|| {
            let l = TcpListener::bind((B, 7777)).unwrap();
            let (mut s, peer) = l.accept().unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            s.write_all(b"world").unwrap();
            (peer, buf)
        })
        .unwrap();
    let reply = a
        .run(|| {
            let mut last = None;
            poll_until(Duration::from_secs(10), "the server in b", || {
                match TcpStream::connect_timeout(&(B, 7777).into(), Duration::from_secs(1)) {
                    Ok(s) => {
                        last = Some(s);
                        true
                    }
                    Err(_) => false,
                }
            })
            .unwrap();
            let mut s = last.unwrap();
            s.write_all(b"hello").unwrap();
            let mut buf = [0u8; 5];
            s.read_exact(&mut buf).unwrap();
            buf
        })
        .unwrap();
    assert_eq!(&reply, b"world");
    let (peer, got) = server.join().unwrap();
    assert_eq!(&got, b"hello");
    assert_eq!(peer.ip(), A);
}

#[test]
fn a_panic_in_a_namespace_thread_reaches_the_caller() {
    if !require_root_and_netns() {
        return;
    }
    let ns = Netns::new("tpanic").unwrap();
    let r = catch_unwind(AssertUnwindSafe(|| ns.run(|| panic!("inside"))));
    assert!(r.is_err());
}

#[test]
fn veth_queues_and_checksum_offload() {
    if !require_root_and_netns() {
        return;
    }
    let (a, b) = pair(2);
    for (ns, dev) in [(&a, "va"), (&b, "vb")] {
        let out = ns.exec(&["ip", "-d", "link", "show", dev]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("numtxqueues 2"), "{text}");
        assert!(text.contains("numrxqueues 2"), "{text}");
    }
    assert!(a.run(|| probe::tx_checksum_enabled("va")).unwrap().unwrap());
    a.run(|| probe::disable_tx_checksum("va")).unwrap().unwrap();
    assert!(!a.run(|| probe::tx_checksum_enabled("va")).unwrap().unwrap());
    assert!(b.run(|| probe::tx_checksum_enabled("vb")).unwrap().unwrap());
    // Driver statistics, as `ethtool -S` lists them: veth names its peer and its queues.
    let stats = a.run(|| probe::ethtool_stats("va")).unwrap().unwrap();
    let names: Vec<&str> = stats.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names.contains(&"peer_ifindex"), "{names:?}");
    assert!(names.contains(&"rx_queue_1_xdp_packets"), "{names:?}");
    let peer = stats.iter().find(|(n, _)| n == "peer_ifindex").unwrap().1;
    assert_eq!(
        peer,
        u64::from(b.run(|| probe::interface_index("vb")).unwrap().unwrap())
    );
    assert!(veth(&a, "this-name-is-too-long", &b, "x", 1).is_err());
    assert!(veth(&a, "x", &b, "y", 0).is_err());
}

#[test]
fn child_guard_stops_and_collects_output() {
    if !require_root_and_netns() {
        return;
    }
    let ns = Netns::new("child").unwrap();
    let script = "echo started; echo to-stderr >&2; trap 'echo bye; exit 0' TERM; \
                  i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; exit 3";
    let mut child = ns.spawn(&["sh", "-c", script]).unwrap();
    poll_until(Duration::from_secs(10), "the script to start", || {
        child.stdout_so_far().contains("started")
    })
    .unwrap();
    assert_eq!(child.try_wait().unwrap(), None);
    let out = child.stop(libc::SIGTERM, Duration::from_secs(10)).unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "started\nbye\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "to-stderr\n");

    // One that ignores SIGTERM is killed, and stop says so.
    let stubborn = ns
        .spawn(&["sh", "-c", "trap '' TERM; echo ready; exec sleep 1000"])
        .unwrap();
    let pid = stubborn.pid();
    poll_until(Duration::from_secs(10), "the stubborn script", || {
        stubborn.stdout_so_far().contains("ready")
    })
    .unwrap();
    let e = stubborn
        .stop(libc::SIGTERM, Duration::from_millis(300))
        .unwrap_err();
    assert!(e.to_string().contains("did not exit"), "{e}");
    assert!(process_gone(pid));

    // Dropping a running guard kills it.
    let running = ns.spawn(&["sleep", "1000"]).unwrap();
    let pid = running.pid();
    drop(running);
    assert!(process_gone(pid));
    // Failing commands report their stderr.
    let e = ns
        .exec(&["ip", "link", "set", "nonexistent", "up"])
        .unwrap_err();
    assert!(e.to_string().contains("nonexistent"), "{e}");
}

#[test]
fn probes_ping_arp_and_icmp_errors() {
    if !require_root_and_netns() {
        return;
    }
    let (a, b) = pair(1);
    assert_eq!(
        a.run(|| probe::ping(B, 3, Duration::from_secs(2)))
            .unwrap()
            .unwrap(),
        3
    );
    assert_eq!(
        a.run(|| probe::ping(NOBODY, 1, Duration::from_millis(300)))
            .unwrap()
            .unwrap_or(0),
        0
    );
    let mac_b = b.run(|| probe::interface_mac("vb")).unwrap().unwrap();
    let got = a
        .run(|| probe::arp_query("va", A, B, 2, Duration::from_secs(1)))
        .unwrap()
        .unwrap();
    assert_eq!(got, Some(mac_b));
    let none = a
        .run(|| probe::arp_query("va", A, NOBODY, 2, Duration::from_millis(300)))
        .unwrap()
        .unwrap();
    assert_eq!(none, None);
    // A closed UDP port answers port unreachable: the connected socket gets ECONNREFUSED,
    // and the error queue names the sender.
    let report = a
        .run(|| {
            let s = UdpSocket::bind((A, 0)).unwrap();
            s.connect((B, 9)).unwrap();
            probe::enable_recverr(&s).unwrap();
            probe::udp_icmp_error(&s, b"x", 5, Duration::from_secs(1)).unwrap()
        })
        .unwrap()
        .unwrap();
    assert_eq!(report.errno, libc::ECONNREFUSED);
    assert_eq!(report.origin, libc::SO_EE_ORIGIN_ICMP);
    assert_eq!((report.icmp_type, report.icmp_code), (3, 3));
    assert_eq!(report.offender, Some(B));
    // A TCP connection from a chosen port.
    let server = b
        .enter_thread(|| {
            let l = TcpListener::bind((B, 7000)).unwrap();
            l.accept().unwrap().1
        })
        .unwrap();
    a.run(|| {
        let mut r = None;
        poll_until(Duration::from_secs(10), "the server", || {
            r = probe::tcp_connect_from(
                SocketAddrV4::new(A, 40000),
                SocketAddrV4::new(B, 7000),
                Duration::from_secs(1),
            )
            .ok();
            r.is_some()
        })
        .unwrap();
        assert_eq!(r.unwrap().local_addr().unwrap().port(), 40000);
    })
    .unwrap();
    assert_eq!(server.join().unwrap(), SocketAddrV4::new(A, 40000).into());
}

#[test]
fn kernel_topology_forwards_and_cleans_up() {
    if !require_root_and_netns() {
        return;
    }
    let t = Topology::build(Gateway::Kernel).unwrap();
    let names: Vec<String> = [&t.client, &t.inet, &t.rtr, &t.gw, &t.lan, &t.h1, &t.h2]
        .iter()
        .map(|n| n.name().to_string())
        .collect();
    // DNAT: the client reaches h1 through the VIP, and h1 sees the client's own address.
    let server =
        t.h1.enter_thread(|| {
            let l = TcpListener::bind((addr::H1, 80)).unwrap();
            let (mut s, peer) = l.accept().unwrap();
            s.write_all(b"hi").unwrap();
            peer
        })
        .unwrap();
    let got = t
        .client
        .run(|| {
            let mut r = None;
            poll_until(Duration::from_secs(20), "VIP:80", || {
                r = TcpStream::connect_timeout(&(addr::VIP, 80).into(), Duration::from_secs(1))
                    .ok();
                r.is_some()
            })
            .unwrap();
            let mut s = r.unwrap();
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).unwrap();
            (buf, s.local_addr().unwrap())
        })
        .unwrap();
    assert_eq!(got.0, b"hi");
    assert_eq!(server.join().unwrap(), got.1);
    // PAT: h1 reaches inet.
    assert_eq!(
        t.h1.run(|| probe::ping(addr::INET, 2, Duration::from_secs(2)))
            .unwrap()
            .unwrap(),
        2
    );
    // Checksum offload is off on the endpoints.
    assert!(!t
        .client
        .run(|| probe::tx_checksum_enabled("eth0"))
        .unwrap()
        .unwrap());
    drop(t);
    for n in names {
        assert!(!netns_exists(&n), "namespace {n} left behind");
    }
}
