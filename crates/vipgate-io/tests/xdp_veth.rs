//! Root system test of the AF_XDP ports: two network namespaces joined by a veth pair, XDP and
//! AF_XDP on one end ("gw", no kernel addresses), a kernel UDP endpoint on the other ("peer").
//! Without root, or where `ip netns add` fails, every test prints `SKIP: ...` and passes.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use vipgate_io::{
    interface_mac, BindMode, Frame, Ports, XdpMode, XdpOptions, XdpPorts, XdpProgram,
};

const GW_IF: &str = "xg0";
const PEER_IF: &str = "xp0";
const GW_IP: [u8; 4] = [198, 18, 0, 1];
const PEER_IP: [u8; 4] = [198, 18, 0, 2];
const PEER_PORT: u16 = 7000;
const GW_PORT: u16 = 7001;
const CRAFTED_PORT: u16 = 7002;

const CHILD_NETNS: &str = "VIPGATE_IO_TEST_CHILD_NETNS";
const CHILD_MODE: &str = "VIPGATE_IO_TEST_CHILD_MODE";
const ATTACHED: &str = "VIPGATE-IO-CHILD-ATTACHED";

static COUNTER: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------- namespaces

/// A network namespace this test created; deleted on drop, so on every exit path including a
/// panic.
struct Netns {
    name: String,
}

impl Netns {
    fn add(name: String) -> Result<Netns, String> {
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .map_err(|e| format!("cannot run ip: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Netns { name })
    }

    /// `ip -n NAME args...`; panics with ip's stderr on failure.
    fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip -n {} {}: {}",
            self.name,
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread that entered this namespace: sockets, XDP programs and interface
    /// lookups made there belong to it, whichever thread uses them afterwards.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                enter_netns(&path);
                f()
            })
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
        })
    }

    fn xdp_attached(&self, ifname: &str) -> bool {
        self.ip(&["-d", "link", "show", "dev", ifname])
            .contains("xdp")
    }

    /// Polls until no XDP program is attached to `ifname`; false if one still is at the
    /// deadline.
    fn wait_detached(&self, ifname: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if !self.xdp_attached(ifname) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn enter_netns(path: &str) {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a valid namespace fd; affects only the calling thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
}

/// gw and peer namespaces joined by xg0 (gw) -- xp0 (peer, 198.18.0.2/24, checksum offload
/// off, a permanent neighbor entry for 198.18.0.1 since nothing answers ARP on xg0).
struct Lab {
    peer: Netns,
    gw: Netns,
    gw_mac: [u8; 6],
    peer_mac: [u8; 6],
    /// `ethtool -K xp0 tx off` ran, so kernel-sent datagrams carry complete checksums.
    tx_csum_off: bool,
}

impl Lab {
    /// None (after a loud SKIP line) when not root or namespaces cannot be made.
    fn new(test: &str, gw_queues: u32, peer_queues: u32) -> Option<Lab> {
        // SAFETY: plain getter.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIP: {test}: needs root (AF_XDP, XDP and network namespaces)");
            return None;
        }
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let base = format!("vgio-{}-{n}", std::process::id());
        let gw = match Netns::add(format!("{base}-gw")) {
            Ok(ns) => ns,
            Err(e) => {
                eprintln!("SKIP: {test}: cannot create a network namespace: {e}");
                return None;
            }
        };
        let peer = Netns::add(format!("{base}-peer")).expect("second namespace");
        let (gq, pq) = (gw_queues.to_string(), peer_queues.to_string());
        gw.ip(&[
            "link",
            "add",
            GW_IF,
            "numtxqueues",
            &gq,
            "numrxqueues",
            &gq,
            "type",
            "veth",
            "peer",
            "name",
            PEER_IF,
            "netns",
            &peer.name,
            "numtxqueues",
            &pq,
            "numrxqueues",
            &pq,
        ]);
        // IPv6 would add router solicitations and MLD reports to what the sockets receive.
        for ns in [&gw, &peer] {
            ns.run(|| {
                for key in ["all", "default"] {
                    let p = format!("/proc/sys/net/ipv6/conf/{key}/disable_ipv6");
                    let _ = std::fs::write(p, "1");
                }
            });
        }
        peer.ip(&["addr", "add", "198.18.0.2/24", "dev", PEER_IF]);
        peer.ip(&["link", "set", "lo", "up"]);
        peer.ip(&["link", "set", PEER_IF, "up"]);
        gw.ip(&["link", "set", GW_IF, "up"]);
        let tx_csum_off = ethtool_tx_off(&peer, PEER_IF);
        let gw_mac = gw.run(|| interface_mac(GW_IF)).unwrap();
        let peer_mac = peer.run(|| interface_mac(PEER_IF)).unwrap();
        peer.ip(&[
            "neigh",
            "replace",
            "198.18.0.1",
            "lladdr",
            &mac_text(gw_mac),
            "dev",
            PEER_IF,
            "nud",
            "permanent",
        ]);
        Some(Lab {
            peer,
            gw,
            gw_mac,
            peer_mac,
            tx_csum_off,
        })
    }
}

/// Turns off TX checksum offload on a kernel endpoint. Without ethtool the round trip stays
/// correct (the test recomputes every checksum it sends and does not rely on received ones),
/// so only the check that kernel-sent checksums are complete is skipped.
fn ethtool_tx_off(ns: &Netns, ifname: &str) -> bool {
    let out = Command::new("ip")
        .args([
            "netns", "exec", &ns.name, "ethtool", "-K", ifname, "tx", "off",
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            eprintln!(
                "NOTE: ethtool -K {ifname} tx off failed ({}); received UDP checksums not checked",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            false
        }
        Err(e) => {
            eprintln!("NOTE: no ethtool ({e}); received UDP checksums not checked");
            false
        }
    }
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------- frames

fn sum16(data: &[u8]) -> u32 {
    data.chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum()
}

fn fold(mut s: u32) -> u16 {
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

fn pseudo(src: [u8; 4], dst: [u8; 4], udp_len: usize) -> u32 {
    sum16(&src) + sum16(&dst) + 17 + udp_len as u32
}

/// A complete Ethernet/IPv4/UDP frame with both checksums computed.
fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    (src, sport): ([u8; 4], u16),
    (dst, dport): ([u8; 4], u16),
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let mut f = Vec::with_capacity(14 + ip_len);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    f.extend_from_slice(&[
        0x45,
        0,
        (ip_len >> 8) as u8,
        ip_len as u8,
        0,
        0,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    let ip_csum = !fold(sum16(&f[14..34]));
    f[24..26].copy_from_slice(&ip_csum.to_be_bytes());
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    let mut c = !fold(pseudo(src, dst, udp_len) + sum16(&f[34..]));
    if c == 0 {
        c = 0xffff;
    }
    f[40..42].copy_from_slice(&c.to_be_bytes());
    f
}

struct Udp {
    src_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    payload: Vec<u8>,
    csum_ok: bool,
}

fn parse_udp(f: &[u8]) -> Option<Udp> {
    if f.len() < 42 || f[12..14] != [0x08, 0x00] || f[14] != 0x45 || f[23] != 17 {
        return None;
    }
    let udp = &f[34..];
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    let src: [u8; 4] = f[26..30].try_into().unwrap();
    let dst: [u8; 4] = f[30..34].try_into().unwrap();
    let csum_ok = fold(pseudo(src, dst, udp_len) + sum16(&udp[..udp_len])) == 0xffff;
    Some(Udp {
        src_mac: f[6..12].try_into().unwrap(),
        src,
        dst,
        sport: u16::from_be_bytes([udp[0], udp[1]]),
        dport: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp[8..udp_len].to_vec(),
        csum_ok,
    })
}

/// Copies `bytes` into a frame's buffer; returns the frame with its new length.
fn write_frame(ports: &mut XdpPorts, f: Frame, bytes: &[u8]) -> Frame {
    let buf = ports.buf(f);
    assert!(buf.len() >= bytes.len(), "buffer of {} bytes", buf.len());
    buf[..bytes.len()].copy_from_slice(bytes);
    Frame {
        len: bytes.len() as u32,
        ..f
    }
}

/// Receives on every port until `want` UDP datagrams to GW_PORT arrived or `within` passed;
/// other frames are released.
fn recv_udp(ports: &mut XdpPorts, want: usize, within: Duration) -> Vec<(usize, Frame, Udp)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut batch = [Frame { addr: 0, len: 0 }; 32];
    while got.len() < want && Instant::now() < deadline {
        for port in 0..ports.count() {
            let n = ports.recv(port, &mut batch);
            for &f in &batch[..n] {
                let bytes = ports.buf(f)[..f.len as usize].to_vec();
                match parse_udp(&bytes) {
                    Some(u) if u.dport == GW_PORT => got.push((port, f, u)),
                    _ => ports.release(&[f]),
                }
            }
        }
        ports.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    got
}

/// Collects datagrams on a non-blocking kernel socket until `want` arrived or `within` passed,
/// flushing `ports` meanwhile (flush is what kicks copy-mode transmission).
fn collect_kernel(
    sock: &UdpSocket,
    ports: &mut XdpPorts,
    want: usize,
    within: Duration,
) -> Vec<(u16, Vec<u8>)> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while got.len() < want && Instant::now() < deadline {
        ports.flush().unwrap();
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => got.push((from.port(), buf[..n].to_vec())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("peer recv: {e}"),
        }
    }
    got
}

fn options(mode: XdpMode) -> XdpOptions {
    XdpOptions {
        mode,
        frames: 2048,
        frame_size: 2048,
        ring: 512,
    }
}

// ---------------------------------------------------------------- tests

fn round_trip(mode: XdpMode) {
    let test = format!("round_trip_{mode}");
    let Some(lab) = Lab::new(&test, 2, 2) else {
        return;
    };
    let (prog, mut ports) = lab.gw.run(|| {
        let prog = XdpProgram::attach(GW_IF, mode, 2).unwrap();
        let ports = XdpPorts::open(&[(&prog, 0), (&prog, 1)], &options(mode)).unwrap();
        (prog, ports)
    });
    eprintln!("{test}: bound {:?}", ports.bind_mode());
    assert_eq!(ports.bind_mode(), BindMode::Copy, "veth has no zero-copy");
    assert!(lab.gw.xdp_attached(GW_IF));
    assert_eq!(prog.mode(), mode);
    // Fill rings hold ring frames each; the rest is free.
    let idle_free = ports.free_frames();
    assert_eq!(idle_free, 2048 - 2 * 512);

    // Kernel UDP -> AF_XDP.
    let peer_sock = lab
        .peer
        .run(|| UdpSocket::bind(("198.18.0.2", PEER_PORT)))
        .unwrap();
    peer_sock.set_nonblocking(true).unwrap();
    const N: usize = 16;
    let expected: BTreeSet<Vec<u8>> = (0..N)
        .map(|i| format!("vipgate-io {mode} datagram {i}").into_bytes())
        .collect();
    for p in &expected {
        peer_sock.send_to(p, ("198.18.0.1", GW_PORT)).unwrap();
    }
    let got = recv_udp(&mut ports, N, Duration::from_secs(10));
    let payloads: BTreeSet<Vec<u8>> = got.iter().map(|(_, _, u)| u.payload.clone()).collect();
    assert_eq!(
        payloads, expected,
        "AF_XDP received exactly what the kernel sent"
    );
    let per_queue: Vec<usize> = (0..2)
        .map(|q| got.iter().filter(|(p, _, _)| *p == q).count())
        .collect();
    eprintln!("{test}: datagrams per queue {per_queue:?}");
    for (_, _, u) in &got {
        assert_eq!((u.src, u.dst, u.sport), (PEER_IP, GW_IP, PEER_PORT));
        assert_eq!(u.src_mac, lab.peer_mac);
        if lab.tx_csum_off {
            assert!(
                u.csum_ok,
                "checksum offload is off on {PEER_IF}: checksums complete"
            );
        }
    }
    let rx: u64 = (0..2).map(|p| ports.stats(p).rx).sum();
    assert!(rx >= N as u64, "rx counted: {rx}");

    // AF_XDP -> kernel UDP: reflect each datagram, sending it on the other queue's socket (same
    // UMEM, no copy), plus one frame built from scratch.
    for (port, f, u) in &got {
        let mut payload = b"echo ".to_vec();
        payload.extend_from_slice(&u.payload);
        let bytes = udp_frame(
            u.src_mac,
            lab.gw_mac,
            (u.dst, u.dport),
            (u.src, u.sport),
            &payload,
        );
        let f = write_frame(&mut ports, *f, &bytes);
        assert_eq!(ports.send((port + 1) % 2, &[f]), 1);
    }
    let fresh = ports.alloc().expect("a free frame");
    assert_eq!(fresh.len, 0);
    assert_eq!(ports.buf(fresh).len(), 2048);
    let crafted_payload = format!("vipgate-io {mode} crafted").into_bytes();
    let bytes = udp_frame(
        lab.peer_mac,
        lab.gw_mac,
        (GW_IP, CRAFTED_PORT),
        (PEER_IP, PEER_PORT),
        &crafted_payload,
    );
    let fresh = write_frame(&mut ports, fresh, &bytes);
    assert_eq!(ports.send(0, &[fresh]), 1);

    let echoed = collect_kernel(&peer_sock, &mut ports, N + 1, Duration::from_secs(10));
    let mut want: BTreeSet<(u16, Vec<u8>)> = expected
        .iter()
        .map(|p| (GW_PORT, [b"echo ".as_slice(), p].concat()))
        .collect();
    want.insert((CRAFTED_PORT, crafted_payload));
    let echoed: BTreeSet<(u16, Vec<u8>)> = echoed.into_iter().collect();
    assert_eq!(echoed, want, "the kernel received exactly what AF_XDP sent");
    let (tx, dropped): (u64, u64) = (0..2)
        .map(|p| ports.stats(p))
        .fold((0, 0), |(t, d), s| (t + s.tx, d + s.tx_dropped));
    assert_eq!((tx, dropped), (N as u64 + 1, 0));

    // Every transmitted buffer comes back through a completion ring.
    let deadline = Instant::now() + Duration::from_secs(20);
    while ports.free_frames() != idle_free && Instant::now() < deadline {
        ports.flush().unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(
        ports.free_frames(),
        idle_free,
        "completions reaped, nothing leaked"
    );
    for p in 0..2 {
        let k = ports.kernel_stats(p).unwrap();
        assert_eq!(k.tx_invalid_descs, 0, "port {p}: {k:?}");
    }

    drop(ports);
    assert!(
        lab.gw.xdp_attached(GW_IF),
        "the program outlives the sockets"
    );
    drop(prog);
    assert!(
        lab.gw.wait_detached(GW_IF, Duration::from_secs(20)),
        "dropping XdpProgram detaches it"
    );
}

#[test]
fn round_trip_skb() {
    round_trip(XdpMode::Skb);
}

#[test]
fn round_trip_drv() {
    round_trip(XdpMode::Drv);
}

/// Two workers, one queue each, both bound in DRV mode; frames sent on the peer's TX queue q
/// (by AF_XDP, so the queue is chosen, not hashed) reach the worker of queue q.
#[test]
fn two_queues_two_workers_drv() {
    let Some(lab) = Lab::new("two_queues_two_workers_drv", 2, 2) else {
        return;
    };
    let (prog, mut workers) = lab.gw.run(|| {
        let prog = XdpProgram::attach(GW_IF, XdpMode::Drv, 2).unwrap();
        let opts = XdpOptions {
            frames: 1024,
            ..options(XdpMode::Drv)
        };
        let w0 = XdpPorts::open(&[(&prog, 0)], &opts).unwrap();
        let w1 = XdpPorts::open(&[(&prog, 1)], &opts).unwrap();
        (prog, [w0, w1])
    });
    for w in &workers {
        assert_eq!(w.bind_mode(), BindMode::Copy);
    }
    assert_eq!(workers[1].port_name(0), Some((GW_IF, 1)));

    let (peer_prog, mut sender) = lab.peer.run(|| {
        let prog = XdpProgram::attach(PEER_IF, XdpMode::Skb, 2).unwrap();
        let ports = XdpPorts::open(&[(&prog, 0), (&prog, 1)], &options(XdpMode::Skb)).unwrap();
        (prog, ports)
    });
    for q in 0..2usize {
        for i in 0..4 {
            let f = sender.alloc().unwrap();
            let bytes = udp_frame(
                lab.gw_mac,
                lab.peer_mac,
                (PEER_IP, PEER_PORT),
                (GW_IP, GW_PORT),
                format!("queue {q} frame {i}").as_bytes(),
            );
            let f = write_frame(&mut sender, f, &bytes);
            assert_eq!(sender.send(q, &[f]), 1);
        }
    }
    sender.flush().unwrap();
    for (q, w) in workers.iter_mut().enumerate() {
        let got = recv_udp(w, 4, Duration::from_secs(10));
        let want: BTreeSet<Vec<u8>> = (0..4)
            .map(|i| format!("queue {q} frame {i}").into_bytes())
            .collect();
        let payloads: BTreeSet<Vec<u8>> = got.iter().map(|(_, _, u)| u.payload.clone()).collect();
        assert_eq!(payloads, want, "worker {q} got its queue's frames");
        let frames: Vec<Frame> = got.iter().map(|(_, f, _)| *f).collect();
        w.release(&frames);
    }
    drop(sender);
    drop(peer_prog);
    drop(workers);
    drop(prog);
    assert!(lab.gw.wait_detached(GW_IF, Duration::from_secs(20)));
    assert!(lab.peer.wait_detached(PEER_IF, Duration::from_secs(20)));
}

#[test]
fn attach_and_open_errors_explain_the_cause() {
    let Some(lab) = Lab::new("attach_and_open_errors_explain_the_cause", 2, 2) else {
        return;
    };
    lab.gw.run(|| {
        let e = XdpProgram::attach("vg-nonexist0", XdpMode::Skb, 1).unwrap_err();
        assert!(
            e.to_string().contains("no interface named vg-nonexist0"),
            "{e}"
        );

        let prog = XdpProgram::attach(GW_IF, XdpMode::Drv, 2).unwrap();
        let e = XdpProgram::attach(GW_IF, XdpMode::Skb, 2).unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("XDP attach on xg0 (skb): "), "{s}");
        assert!(s.contains("another XDP program is attached"), "{s}");

        let e = XdpPorts::open(&[(&prog, 0)], &options(XdpMode::Skb))
            .err()
            .unwrap();
        assert!(e.to_string().contains("attached in drv mode"), "{e}");
        let e = XdpPorts::open(&[(&prog, 2)], &options(XdpMode::Drv))
            .err()
            .unwrap();
        assert!(
            e.to_string().contains("outside its program's XSKMAP"),
            "{e}"
        );
        let e = XdpPorts::open(&[(&prog, 1), (&prog, 1)], &options(XdpMode::Drv))
            .err()
            .unwrap();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let small = XdpOptions {
            frames: 512,
            ..options(XdpMode::Drv)
        };
        let e = XdpPorts::open(&[(&prog, 0)], &small).err().unwrap();
        assert!(e.to_string().contains("2 * ring * ports"), "{e}");

        let first = XdpPorts::open(&[(&prog, 0)], &options(XdpMode::Drv)).unwrap();
        let e = XdpPorts::open(&[(&prog, 0)], &options(XdpMode::Drv))
            .err()
            .unwrap();
        let s = e.to_string();
        assert!(s.starts_with("AF_XDP bind on xg0 queue 0 (copy): "), "{s}");
        assert!(s.contains("another AF_XDP socket is bound"), "{s}");
        drop(first);
    });
    assert!(lab.gw.wait_detached(GW_IF, Duration::from_secs(20)));

    // veth refuses native XDP when its peer's MTU exceeds what one page can hold.
    lab.peer.ip(&["link", "set", PEER_IF, "mtu", "9000"]);
    let e = lab
        .gw
        .run(|| XdpProgram::attach(GW_IF, XdpMode::Drv, 2))
        .unwrap_err();
    assert!(e.to_string().contains("MTU is too large"), "{e}");
}

#[test]
fn drv_attach_needs_enough_rx_queues() {
    let Some(lab) = Lab::new("drv_attach_needs_enough_rx_queues", 1, 2) else {
        return;
    };
    let e = lab
        .gw
        .run(|| XdpProgram::attach(GW_IF, XdpMode::Drv, 1))
        .unwrap_err();
    assert!(e.to_string().contains("too few RX queues"), "{e}");
    // Generic mode has no such limit.
    let prog = lab
        .gw
        .run(|| XdpProgram::attach(GW_IF, XdpMode::Skb, 1))
        .unwrap();
    drop(prog);
    assert!(lab.gw.wait_detached(GW_IF, Duration::from_secs(20)));
}

/// Kills the child on every exit path of the parent.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A process that attached the program and dies by SIGKILL leaves nothing attached.
#[test]
fn detached_after_sigkill() {
    let Some(lab) = Lab::new("detached_after_sigkill", 2, 2) else {
        return;
    };
    for mode in ["skb", "drv"] {
        let child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_holds_program",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_NETNS, &lab.gw.name)
            .env(CHILD_MODE, mode)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut child = ChildGuard(child);
        let stdout = child.0.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut attached = false;
        while !attached {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                // The harness prints "test NAME ... " before the test runs, on the same line.
                Ok(line) => attached = line.contains(ATTACHED),
                Err(e) => panic!("child ({mode}) never reported attaching: {e}"),
            }
        }
        assert!(lab.gw.xdp_attached(GW_IF), "child ({mode}) attached");
        child.0.kill().unwrap();
        let status = child.0.wait().unwrap();
        assert!(!status.success(), "killed, not exited: {status}");
        assert!(
            lab.gw.wait_detached(GW_IF, Duration::from_secs(10)),
            "program ({mode}) still attached after SIGKILL"
        );
    }
}

/// Helper run only as a child of `detached_after_sigkill` (a no-op otherwise): attaches,
/// reports, and waits to be killed (bounded, in case the parent died first).
#[test]
fn child_holds_program() {
    let (Ok(netns), Ok(mode)) = (std::env::var(CHILD_NETNS), std::env::var(CHILD_MODE)) else {
        return;
    };
    enter_netns(&format!("/run/netns/{netns}"));
    let mode = if mode == "drv" {
        XdpMode::Drv
    } else {
        XdpMode::Skb
    };
    let _prog = XdpProgram::attach(GW_IF, mode, 2).unwrap();
    println!("{ATTACHED}");
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
}
