//! System tests: real kernel TCP, UDP and ICMP through vipgate on veth pairs with AF_XDP, in
//! network namespaces each test creates and always removes (crate vipgate-netns; topology in
//! vipgate_netns::topology).
//!
//! Root only: every test first calls `require_root_and_netns()` and, where it cannot run,
//! returns after a loud `SKIP:` on stderr. Each test builds its own topology with unique
//! names, so they run in parallel. No fixed sleeps: everything waits by polling with bounded
//! deadlines; nothing asserts on timings.
//!
//! `SYSTEST_GATEWAY=kernel` runs the same tests with the kernel (forwarding and
//! nftables) as the gateway instead of vipgate: a check of the tests themselves. Assertions
//! on vipgate's counters are then skipped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use vipgate_netns::probe;
use vipgate_netns::topology::addr::{CLIENT, GW_PRIVATE, GW_PUBLIC, H1, H2, INET, RTR_PUBLIC, VIP};
use vipgate_netns::topology::ifname;
use vipgate_netns::{
    poll_until, require_root_and_netns, Counters, Gateway, Netns, Topology, VipgateSpec, XdpMode,
};

/// The configuration under test, after the `[workers]` and `[xdp]` sections the topology
/// writes for each mode: the addresses of the topology, DNAT of tcp 80 and udp 5353 on the
/// VIP to h1, PAT of the private network behind the VIP.
const CONFIG_BODY: &str = r#"
[[interfaces]]
name = "vg-pub"
side = "public"
address = "203.0.113.1/24"
gateway = "203.0.113.254"

[[interfaces]]
name = "vg-priv"
side = "private"
address = "198.18.0.1/24"

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
"#;

/// Waits for anything that should happen: generous, since parallel tests share few cores.
const DEADLINE: Duration = Duration::from_secs(30);
/// Socket read and write timeouts.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest life of a test service, whatever happens to the test.
const SERVICE_LIFETIME: Duration = Duration::from_secs(300);
/// Connections a test service accepts at most.
const MAX_CONNS: usize = 1024;
/// Datagrams sent at most while waiting for one UDP answer, one second apart.
const UDP_ATTEMPTS: u32 = 20;
/// Concurrent connections of the traffic suite.
const CONNS: usize = 64;
/// Bytes of the bulk download.
const BULK_LEN: usize = 8 << 20;
/// Bytes of the bulk upload.
const UPLOAD_LEN: usize = 4 << 20;
/// Pattern blocks: both ends generate and compare the stream in blocks of this size.
const BLOCK: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------
// Topology, gateway and its report

fn kernel_requested() -> bool {
    std::env::var("SYSTEST_GATEWAY").is_ok_and(|v| v == "kernel")
}

/// The topology with vipgate in `mode` with `workers` workers (one queue per worker on the
/// gateway's veths), or None when the test cannot run here.
fn topology(mode: XdpMode, workers: u32) -> Option<Topology> {
    if !require_root_and_netns() {
        return None;
    }
    let gateway = if kernel_requested() {
        Gateway::Kernel
    } else {
        Gateway::Vipgate(VipgateSpec::new(
            env!("CARGO_BIN_EXE_vipgate"),
            mode,
            workers,
            CONFIG_BODY,
        ))
    };
    Some(Topology::build(gateway).unwrap_or_else(|e| panic!("building the topology: {e}")))
}

/// The topology with vipgate (skb mode, one worker) running `body`, with `env` added.
fn topology_with(body: &str, env: &[(&str, &str)]) -> Option<Topology> {
    if !require_root_and_netns() || kernel_requested() {
        return None;
    }
    let mut spec = VipgateSpec::new(env!("CARGO_BIN_EXE_vipgate"), XdpMode::Skb, 1, body);
    spec.env = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Topology::build(Gateway::Vipgate(spec)).unwrap_or_else(|e| panic!("topology: {e}")))
}

/// Runs a test body; if it panics, prints the gateway's log first, so the failure comes
/// with vipgate's side of the story.
fn with_log<R>(t: &Topology, body: impl FnOnce() -> R) -> R {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(r) => r,
        Err(panic) => {
            eprintln!("---- gateway log ----\n{}\n---- end ----", t.gateway_log());
            resume_unwind(panic)
        }
    }
}

/// Stops vipgate with SIGTERM; it must exit 0 and print its counters. None for the kernel.
fn finish(mut t: Topology) -> Option<Counters> {
    let exit = t
        .stop()
        .unwrap_or_else(|e| panic!("stopping vipgate: {e}"))?;
    eprintln!("vipgate counters (non-zero): {}", exit.counters.nonzero());
    Some(exit.counters)
}

/// A counter that must be at least `min`.
fn at_least(c: &Counters, name: &str, min: u64) {
    let v = c.value(name).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        v >= min,
        "counter {name} = {v}, expected at least {min}; non-zero: {}",
        c.nonzero()
    );
}

/// A counter that must be exactly `want`.
fn exactly(c: &Counters, name: &str, want: u64) {
    let v = c.value(name).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(v, want, "counter {name}; non-zero: {}", c.nonzero());
}

/// Every frame sent to the gateway before this call has been through its (single) worker:
/// a ping to the VIP is answered after them on the same queue.
fn barrier(t: &Topology) {
    poll_until(DEADLINE, "a ping to the VIP after the test traffic", || {
        matches!(
            t.client
                .run(|| probe::ping(VIP, 1, Duration::from_millis(500))),
            Ok(Ok(1))
        )
    })
    .unwrap();
}

// ---------------------------------------------------------------------------------------
// A deterministic pseudo-random stream, generated and checked block by block

struct Pattern(u64);

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Fills `buf` with the stream's next bytes; `buf` is a multiple of 8 bytes long except
    /// for the last block of a stream.
    fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            c.copy_from_slice(&x.to_le_bytes()[..c.len()]);
        }
    }
}

/// The block sizes a stream of `len` bytes is made of.
fn blocks(len: usize) -> impl Iterator<Item = usize> {
    (0..len.div_ceil(BLOCK)).map(move |i| BLOCK.min(len - i * BLOCK))
}

// ---------------------------------------------------------------------------------------
// Services: a TCP and a UDP server bound in a namespace, served from ordinary threads (a
// socket stays in the namespace it was created in). Each records who it saw.

type Seen = Arc<Mutex<Vec<(String, SocketAddr)>>>;

struct TcpService {
    stop: Arc<AtomicBool>,
    seen: Seen,
    accept: Option<JoinHandle<Vec<JoinHandle<()>>>>,
}

impl TcpService {
    fn start(ns: &Netns, addr: SocketAddrV4) -> TcpService {
        let listener = ns
            .run(move || TcpListener::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("bind {addr} in {}: {e}", ns.name()));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Seen::default();
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let accept = thread::spawn(move || {
            let mut handlers = Vec::new();
            let end = Instant::now() + SERVICE_LIFETIME;
            while !stop2.load(Ordering::Relaxed)
                && Instant::now() < end
                && handlers.len() < MAX_CONNS
            {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let seen = seen2.clone();
                        handlers.push(thread::spawn(move || {
                            if let Err(e) = serve_tcp(stream, peer, &seen) {
                                eprintln!("tcp service: {peer}: {e}");
                            }
                        }));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let _ = probe::wait_readable(listener.as_fd(), Duration::from_millis(100));
                    }
                    Err(e) => {
                        eprintln!("tcp service: accept: {e}");
                        break;
                    }
                }
            }
            handlers
        });
        TcpService {
            stop,
            seen,
            accept: Some(accept),
        }
    }

    /// Stops accepting, waits for the connections' handlers, returns who said what.
    fn stop(mut self) -> Vec<(String, SocketAddr)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            for h in a.join().unwrap() {
                h.join().unwrap();
            }
        }
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TcpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One command per connection:
/// `HELLO <token>` -> `HELLO <token> FROM <peer>`;
/// `BULK <len> <seed>` -> the pattern's first len bytes;
/// `UPLOAD <len> <seed>` + len bytes -> `OK <len>` if they are the pattern, else `BAD <offset>`;
/// `ECHO` -> every later line back, until the client closes.
fn serve_tcp(stream: TcpStream, peer: SocketAddr, seen: &Seen) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut out = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.by_ref().take(256).read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    seen.lock().unwrap().push((line.trim().to_string(), peer));
    match words.as_slice() {
        ["HELLO", token] => writeln!(out, "HELLO {token} FROM {peer}"),
        ["BULK", len, seed] => {
            let (len, seed) = parse_len_seed(len, seed)?;
            let mut p = Pattern::new(seed);
            let mut buf = vec![0u8; BLOCK];
            for n in blocks(len) {
                p.fill(&mut buf[..n]);
                out.write_all(&buf[..n])?;
            }
            Ok(())
        }
        ["UPLOAD", len, seed] => {
            let (len, seed) = parse_len_seed(len, seed)?;
            let mut p = Pattern::new(seed);
            let (mut want, mut got) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
            let mut offset = 0;
            for n in blocks(len) {
                p.fill(&mut want[..n]);
                reader.read_exact(&mut got[..n])?;
                if want[..n] != got[..n] {
                    return writeln!(out, "BAD {offset}");
                }
                offset += n;
            }
            writeln!(out, "OK {len}")
        }
        ["ECHO"] => {
            writeln!(out, "ECHO")?;
            loop {
                line.clear();
                if reader.by_ref().take(256).read_line(&mut line)? == 0 {
                    return Ok(());
                }
                out.write_all(line.as_bytes())?;
            }
        }
        _ => writeln!(out, "ERR unknown command"),
    }
}

fn parse_len_seed(len: &str, seed: &str) -> io::Result<(usize, u64)> {
    let bad = |_| io::Error::new(io::ErrorKind::InvalidData, "bad number");
    Ok((len.parse().map_err(bad)?, seed.parse().map_err(bad)?))
}

struct UdpService {
    stop: Arc<AtomicBool>,
    seen: Seen,
    thread: Option<JoinHandle<()>>,
}

impl UdpService {
    /// Answers every datagram with `<payload> FROM <peer>`.
    fn start(ns: &Netns, addr: SocketAddrV4) -> UdpService {
        let sock = ns
            .run(move || UdpSocket::bind(addr))
            .unwrap()
            .unwrap_or_else(|e| panic!("bind udp {addr} in {}: {e}", ns.name()));
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Seen::default();
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = thread::spawn(move || {
            let end = Instant::now() + SERVICE_LIFETIME;
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                let Ok((n, peer)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let _ = sock.send_to(format!("{msg} FROM {peer}").as_bytes(), peer);
                seen2.lock().unwrap().push((msg, peer));
            }
        });
        UdpService {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> Vec<(String, SocketAddr)> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for UdpService {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------
// Clients (called on a thread inside the client's namespace)

/// Connects to `to`, retrying until the deadline (a SYN may meet a gateway still learning
/// its neighbors).
fn connect(to: SocketAddrV4) -> TcpStream {
    let mut stream = None;
    poll_until(DEADLINE, &format!("a TCP connection to {to}"), || {
        stream = TcpStream::connect_timeout(&to.into(), Duration::from_secs(3)).ok();
        stream.is_some()
    })
    .unwrap();
    let s = stream.unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn read_line(s: &TcpStream) -> String {
    let mut line = String::new();
    BufReader::new(s).take(256).read_line(&mut line).unwrap();
    line.trim_end().to_string()
}

/// `HELLO token` on a connected stream; returns the answer.
fn hello(s: &TcpStream, token: &str) -> String {
    let mut w = s;
    writeln!(w, "HELLO {token}").unwrap();
    read_line(s)
}

/// Reads `len` bytes of BULK and checks them; `between` runs after every block.
fn download(
    s: &TcpStream,
    len: usize,
    seed: u64,
    mut between: impl FnMut(usize),
) -> Result<(), String> {
    let mut w = s;
    writeln!(w, "BULK {len} {seed}").unwrap();
    let mut p = Pattern::new(seed);
    let (mut want, mut got) = (vec![0u8; BLOCK], vec![0u8; BLOCK]);
    let mut r = s;
    let mut offset = 0;
    for (i, n) in blocks(len).enumerate() {
        p.fill(&mut want[..n]);
        r.read_exact(&mut got[..n])
            .map_err(|e| format!("download: reading at {offset} of {len}: {e}"))?;
        if let Some(at) = want[..n].iter().zip(&got[..n]).position(|(a, b)| a != b) {
            return Err(format!("download: content differs at byte {}", offset + at));
        }
        offset += n;
        between(i);
    }
    // Nothing more: the server closes after the stream.
    let mut extra = [0u8; 1];
    match r.read(&mut extra) {
        Ok(0) => Ok(()),
        Ok(_) => Err("download: more bytes than asked for".into()),
        Err(e) => Err(format!("download: waiting for the end: {e}")),
    }
}

/// Sends `len` bytes of the pattern; returns the server's verdict line.
fn upload(s: &TcpStream, len: usize, seed: u64) -> String {
    let mut w = s;
    writeln!(w, "UPLOAD {len} {seed}").unwrap();
    let mut p = Pattern::new(seed);
    let mut buf = vec![0u8; BLOCK];
    for n in blocks(len) {
        p.fill(&mut buf[..n]);
        w.write_all(&buf[..n]).unwrap();
    }
    read_line(s)
}

/// Sends `msg` on a connected UDP socket until the service answers it; returns the answer.
fn udp_ask(s: &UdpSocket, msg: &str) -> String {
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let want = format!("{msg} FROM ");
    let mut buf = [0u8; 1500];
    for _ in 0..UDP_ATTEMPTS {
        s.send(msg.as_bytes()).unwrap();
        match s.recv(&mut buf) {
            Ok(n) => {
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                if reply.starts_with(&want) {
                    return reply;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("udp {msg}: {e}"),
        }
    }
    panic!("no answer to udp {msg:?} after {UDP_ATTEMPTS} attempts");
}

/// The peer address in an answer `... FROM a.b.c.d:port`.
fn from_addr(reply: &str) -> SocketAddrV4 {
    let (_, peer) = reply
        .rsplit_once(" FROM ")
        .unwrap_or_else(|| panic!("answer {reply:?} names no peer"));
    peer.parse()
        .unwrap_or_else(|e| panic!("answer {reply:?}: peer: {e}"))
}

fn udp_connected(local: Ipv4Addr, to: SocketAddrV4) -> UdpSocket {
    let s = UdpSocket::bind((local, 0)).unwrap();
    s.connect(to).unwrap();
    s
}

fn sa(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

// ---------------------------------------------------------------------------------------
// The traffic suite, in each XDP mode

fn run_traffic_suite(mode: XdpMode, workers: u32) {
    let Some(t) = topology(mode, workers) else {
        return;
    };
    let web = TcpService::start(&t.h1, sa(H1, 80));
    let dns = UdpService::start(&t.h1, sa(H1, 5353));
    let far = UdpService::start(&t.inet, sa(INET, 7000));
    with_log(&t, || {
        // Many connections at once: all open before any speaks. DNAT only, so h1 sees the
        // client's own address and port.
        let answers = t
            .client
            .run(|| {
                let conns: Vec<TcpStream> = (0..CONNS).map(|_| connect(sa(VIP, 80))).collect();
                for (i, c) in conns.iter().enumerate() {
                    let mut w = c;
                    writeln!(w, "HELLO c{i}").unwrap();
                }
                conns
                    .iter()
                    .map(|c| (read_line(c), c.local_addr().unwrap()))
                    .collect::<Vec<_>>()
            })
            .unwrap();
        for (i, (answer, local)) in answers.iter().enumerate() {
            assert_eq!(answer, &format!("HELLO c{i} FROM {local}"));
        }

        // Bulk both ways, content checked.
        t.client
            .run(|| download(&connect(sa(VIP, 80)), BULK_LEN, 7, |_| {}))
            .unwrap()
            .unwrap();
        let verdict = t
            .client
            .run(|| upload(&connect(sa(VIP, 80)), UPLOAD_LEN, 11))
            .unwrap();
        assert_eq!(verdict, format!("OK {UPLOAD_LEN}"));

        // UDP through DNAT: the answer comes back from VIP:5353 (the socket is connected
        // there), and h1 saw the client's own address.
        let (answer, local) = t
            .client
            .run(|| {
                let s = udp_connected(CLIENT, sa(VIP, 5353));
                (udp_ask(&s, "dnat-udp"), s.local_addr().unwrap())
            })
            .unwrap();
        assert_eq!(answer, format!("dnat-udp FROM {local}"));

        // UDP through PAT: inet sees the VIP.
        let answer =
            t.h1.run(|| udp_ask(&udp_connected(H1, sa(INET, 7000)), "pat-udp"))
                .unwrap();
        assert_eq!(*from_addr(&answer).ip(), VIP, "{answer}");

        // ICMP: echo to the VIP, answered by the gateway; echo from h1 to inet through PAT.
        let n = t
            .client
            .run(|| probe::ping(VIP, 3, Duration::from_secs(10)))
            .unwrap()
            .unwrap();
        assert_eq!(n, 3, "echo replies from the VIP");
        let n =
            t.h1.run(|| probe::ping(INET, 3, Duration::from_secs(10)))
                .unwrap()
                .unwrap();
        assert_eq!(n, 3, "echo replies from inet to h1");
    });
    if t.is_vipgate() && mode == XdpMode::Drv && workers > 1 {
        // Each worker polls its own queue: both queues of both interfaces carried traffic,
        // so flows met a worker other than the one that created their connection.
        for dev in [ifname::GW_PUBLIC, ifname::GW_PRIVATE] {
            let stats =
                t.gw.run(move || probe::ethtool_stats(dev))
                    .unwrap()
                    .unwrap();
            for q in 0..workers {
                let name = format!("rx_queue_{q}_xdp_packets");
                let n = stats.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
                assert!(n.unwrap_or(0) > 0, "{dev} {name} = {n:?}; stats: {stats:?}");
            }
        }
    }
    let seen = web.stop();
    let hellos: Vec<_> = seen
        .iter()
        .filter(|(l, _)| l.starts_with("HELLO c"))
        .collect();
    assert_eq!(hellos.len(), CONNS);
    assert!(hellos.iter().all(|(_, p)| p.ip() == CLIENT));
    assert!(dns.stop().iter().all(|(_, p)| p.ip() == CLIENT));
    assert!(far.stop().iter().all(|(_, p)| p.ip() == VIP));
    if let Some(c) = finish(t) {
        // 64 + 2 TCP connections, 2 UDP, 1 ICMP query.
        at_least(&c, "conns_created", CONNS as u64 + 2 + 2 + 1);
        // Every byte of the bulk went through vipgate: at least one frame per 1500 bytes.
        at_least(&c, "forwarded", ((BULK_LEN + UPLOAD_LEN) / 1500) as u64);
        at_least(&c, "echo_replies", 3);
        at_least(&c, "rx_frames", 1);
        at_least(&c, "tx_frames", 1);
        // The kernel accepted every descriptor vipgate put in its TX rings.
        exactly(&c, "xsk_tx_invalid_descs", 0);
    }
}

#[test]
fn traffic_skb() {
    run_traffic_suite(XdpMode::Skb, 1);
}

#[test]
fn traffic_drv() {
    run_traffic_suite(XdpMode::Drv, 1);
}

#[test]
fn traffic_drv_two_workers_two_queues() {
    run_traffic_suite(XdpMode::Drv, 2);
}

// ---------------------------------------------------------------------------------------
// PAT: two internal hosts, one source port, one destination

#[test]
fn pat_two_hosts_same_source_port() {
    let Some(t) = topology(XdpMode::Drv, 2) else {
        return;
    };
    let udp = UdpService::start(&t.inet, sa(INET, 7000));
    let tcp = TcpService::start(&t.inet, sa(INET, 7001));
    with_log(&t, || {
        let bind_udp = |ns: &Netns, ip: Ipv4Addr| {
            ns.run(move || {
                let s = UdpSocket::bind((ip, 40000)).unwrap();
                s.connect(sa(INET, 7000)).unwrap();
                s
            })
            .unwrap()
        };
        let s1 = bind_udp(&t.h1, H1);
        let s2 = bind_udp(&t.h2, H2);
        let p1 = from_addr(&udp_ask(&s1, "udp-h1"));
        let p2 = from_addr(&udp_ask(&s2, "udp-h2"));
        assert_eq!((*p1.ip(), *p2.ip()), (VIP, VIP));
        assert_ne!(p1.port(), p2.port(), "two hosts share a public port");
        // Both mappings hold, each for its own host.
        assert_eq!(from_addr(&udp_ask(&s1, "udp-h1-again")), p1);
        assert_eq!(from_addr(&udp_ask(&s2, "udp-h2-again")), p2);

        let connect_from = |ns: &Netns, ip: Ipv4Addr| {
            ns.run(move || {
                let mut s = None;
                poll_until(DEADLINE, "a TCP connection to inet:7001", || {
                    s = probe::tcp_connect_from(
                        sa(ip, 40001),
                        sa(INET, 7001),
                        Duration::from_secs(3),
                    )
                    .ok();
                    s.is_some()
                })
                .unwrap();
                let s = s.unwrap();
                s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
                s
            })
            .unwrap()
        };
        let c1 = connect_from(&t.h1, H1);
        let c2 = connect_from(&t.h2, H2);
        assert_eq!(c1.local_addr().unwrap().port(), 40001);
        assert_eq!(c2.local_addr().unwrap().port(), 40001);
        let q1 = from_addr(&hello(&c1, "tcp-h1"));
        let q2 = from_addr(&hello(&c2, "tcp-h2"));
        assert_eq!((*q1.ip(), *q2.ip()), (VIP, VIP));
        assert_ne!(
            q1.port(),
            q2.port(),
            "two TCP connections share a public port"
        );
    });
    // The servers' own records agree: two peers, both the VIP, distinct ports.
    let udp_seen = udp.stop();
    let peer_of = |seen: &[(String, SocketAddr)], prefix: &str| -> Vec<SocketAddr> {
        let mut v: Vec<SocketAddr> = seen
            .iter()
            .filter(|(m, _)| m.starts_with(prefix))
            .map(|(_, p)| *p)
            .collect();
        v.dedup();
        v
    };
    let (u1, u2) = (peer_of(&udp_seen, "udp-h1"), peer_of(&udp_seen, "udp-h2"));
    assert_eq!((u1.len(), u2.len()), (1, 1), "{udp_seen:?}");
    assert_ne!(u1[0], u2[0]);
    assert!(udp_seen.iter().all(|(_, p)| p.ip() == VIP));
    let tcp_seen = tcp.stop();
    let (t1, t2) = (
        peer_of(&tcp_seen, "HELLO tcp-h1"),
        peer_of(&tcp_seen, "HELLO tcp-h2"),
    );
    assert_eq!((t1.len(), t2.len()), (1, 1), "{tcp_seen:?}");
    assert_ne!(t1[0], t2[0]);
    assert!(tcp_seen.iter().all(|(_, p)| p.ip() == VIP));
    if let Some(c) = finish(t) {
        exactly(&c, "pat_ports_exhausted", 0);
        exactly(&c, "drop_tuple_clash", 0);
        at_least(&c, "mappings_created", 4);
    }
}

// ---------------------------------------------------------------------------------------
// Hairpin: h2 reaches h1 through the VIP

/// README "Hairpinning" (RFC 4787 REQ-9, RFC 5382 REQ-8): an internal host reaching a VIP
/// gets there with its own source translated to its public mapping (here the VIP, the PAT
/// address of 198.18.0.0/24), so h1 sees the VIP and its replies come back through the
/// gateway.
#[test]
fn hairpin_through_the_vip() {
    let Some(t) = topology(XdpMode::Skb, 1) else {
        return;
    };
    let web = TcpService::start(&t.h1, sa(H1, 80));
    let dns = UdpService::start(&t.h1, sa(H1, 5353));
    with_log(&t, || {
        let answer =
            t.h2.run(|| hello(&connect(sa(VIP, 80)), "hairpin"))
                .unwrap();
        assert!(answer.starts_with("HELLO hairpin FROM "), "{answer}");
        assert_eq!(*from_addr(&answer).ip(), VIP, "{answer}");
        // A bulk transfer over the hairpin too: every segment makes the round.
        t.h2.run(|| download(&connect(sa(VIP, 80)), 1 << 20, 3, |_| {}))
            .unwrap()
            .unwrap();
        let answer =
            t.h2.run(|| udp_ask(&udp_connected(H2, sa(VIP, 5353)), "hairpin-udp"))
                .unwrap();
        assert_eq!(*from_addr(&answer).ip(), VIP, "{answer}");
    });
    let seen = web.stop();
    assert!(!seen.is_empty());
    assert!(seen.iter().all(|(_, p)| p.ip() == VIP), "{seen:?}");
    assert!(dns.stop().iter().all(|(_, p)| p.ip() == VIP));
    finish(t);
}

// ---------------------------------------------------------------------------------------
// ICMP errors from the far side, translated back to the internal host

#[test]
fn icmp_errors_reach_the_internal_host() {
    let Some(t) = topology(XdpMode::Drv, 1) else {
        return;
    };
    with_log(&t, || {
        // Port unreachable from inet: the connected socket's recv fails with ECONNREFUSED.
        let refused =
            t.h1.run(|| {
                let s = udp_connected(H1, sa(INET, 9));
                s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
                let mut buf = [0u8; 64];
                for _ in 0..UDP_ATTEMPTS {
                    if let Err(e) = s.send(b"anyone?") {
                        return Err(format!("send: {e}"));
                    }
                    match s.recv(&mut buf) {
                        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(()),
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => return Err(format!("recv: {e}")),
                        Ok(n) => return Err(format!("unexpected {n}-byte answer")),
                    }
                }
                Err("no ECONNREFUSED".to_string())
            })
            .unwrap();
        assert_eq!(refused, Ok(()));

        // The same in detail, through IP_RECVERR: who sent it, type and code.
        let recv_err = |ttl: Option<u8>, port: u16| {
            t.h1.run(move || {
                let s = udp_connected(H1, sa(INET, port));
                if let Some(ttl) = ttl {
                    probe::set_ttl(&s, ttl).unwrap();
                }
                probe::enable_recverr(&s).unwrap();
                probe::udp_icmp_error(&s, b"probe", UDP_ATTEMPTS, Duration::from_secs(1)).unwrap()
            })
            .unwrap()
            .expect("an ICMP error")
        };
        let r = recv_err(None, 9);
        assert_eq!((r.icmp_type, r.icmp_code), (3, 3), "{r:?}");
        assert_eq!(r.offender, Some(INET), "{r:?}");
        assert_eq!(r.errno, libc::ECONNREFUSED);
        assert_eq!(r.origin, libc::SO_EE_ORIGIN_ICMP);

        // TTL 2: the gateway forwards with TTL 1, rtr's time exceeded comes back translated.
        let r = recv_err(Some(2), 33434);
        assert_eq!((r.icmp_type, r.icmp_code), (11, 0), "{r:?}");
        assert_eq!(r.offender, Some(RTR_PUBLIC), "{r:?}");
        assert_eq!(r.errno, libc::EHOSTUNREACH);

        // TTL 1: the gateway itself answers, as a router, from its private address.
        let r = recv_err(Some(1), 33435);
        assert_eq!((r.icmp_type, r.icmp_code), (11, 0), "{r:?}");
        assert_eq!(r.offender, Some(GW_PRIVATE), "{r:?}");
    });
    if let Some(c) = finish(t) {
        at_least(&c, "icmp_time_exceeded", 1);
        at_least(&c, "drop_ttl_exceeded", 1);
    }
}

// ---------------------------------------------------------------------------------------
// ARP

#[test]
fn arp_answers_for_our_addresses_only() {
    let Some(t) = topology(XdpMode::Skb, 1) else {
        return;
    };
    let pub_mac = t.gateway_mac(ifname::GW_PUBLIC).unwrap();
    let priv_mac = t.gateway_mac(ifname::GW_PRIVATE).unwrap();
    let ask = |ns: &Netns, dev: &'static str, sender: Ipv4Addr, target: Ipv4Addr| {
        ns.run(move || probe::arp_query(dev, sender, target, 3, Duration::from_secs(2)))
            .unwrap()
            .unwrap()
    };
    with_log(&t, || {
        let on_public = |target| ask(&t.rtr, ifname::RTR_GW, RTR_PUBLIC, target);
        assert_eq!(on_public(VIP), Some(pub_mac), "ARP for the VIP");
        assert_eq!(on_public(GW_PUBLIC), Some(pub_mac), "ARP for 203.0.113.1");
        assert_eq!(
            on_public(Ipv4Addr::new(203, 0, 113, 99)),
            None,
            "ARP for 203.0.113.99"
        );
        let on_private = |target| ask(&t.h1, ifname::HOST, H1, target);
        assert_eq!(on_private(GW_PRIVATE), Some(priv_mac), "ARP for 198.18.0.1");
        assert_eq!(on_private(VIP), None, "ARP for the VIP on the private side");
    });
    if let Some(c) = finish(t) {
        at_least(&c, "arp_replies", 3);
        // Two unanswered requests for each of the two addresses that are not ours here.
        at_least(&c, "drop_arp_not_ours", 4);
    }
}

// ---------------------------------------------------------------------------------------
// Unknown destination

#[test]
fn unknown_destination_is_dropped_and_counted() {
    const SENT: u64 = 25;
    let Some(t) = topology(XdpMode::Skb, 1) else {
        return;
    };
    let mac = t.gateway_mac(ifname::GW_PUBLIC).unwrap();
    let mac = mac
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":");
    // rtr sends 192.0.2.0/24 to the gateway; a permanent neighbor entry, so no datagram
    // waits for (or is lost to) ARP on the way.
    t.rtr
        .exec(&["ip", "route", "add", "192.0.2.0/24", "via", "203.0.113.1"])
        .unwrap();
    t.rtr
        .exec(&[
            "ip",
            "neigh",
            "replace",
            "203.0.113.1",
            "lladdr",
            &mac,
            "dev",
            ifname::RTR_GW,
            "nud",
            "permanent",
        ])
        .unwrap();
    with_log(&t, || {
        t.client
            .run(|| {
                let s = UdpSocket::bind((CLIENT, 0)).unwrap();
                for i in 0..SENT {
                    s.send_to(
                        format!("lost {i}").as_bytes(),
                        (Ipv4Addr::new(192, 0, 2, 1), 9),
                    )
                    .unwrap();
                }
            })
            .unwrap();
        barrier(&t);
    });
    if let Some(c) = finish(t) {
        at_least(&c, "drop_no_rule", SENT);
    }
}

// ---------------------------------------------------------------------------------------
// Malformed frames during a transfer

/// A hand-made frame and the one counter it must land under.
struct Malformed {
    what: &'static str,
    counter: &'static str,
    frame: Vec<u8>,
}

fn with_checksum(mut ip: [u8; 20]) -> [u8; 20] {
    ip[10] = 0;
    ip[11] = 0;
    let c = probe::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    ip
}

/// Frames from rtr to the gateway's public MAC, one per reason. Each passes every check
/// before the one it is meant to fail.
fn malformed_frames(gw: [u8; 6], me: [u8; 6]) -> Vec<Malformed> {
    let eth = |ty: u16| probe::ethernet(gw, me, ty);
    let udp = {
        let mut u = vec![0x13, 0x88, 0x14, 0xe9, 0, 12, 0, 0];
        u.extend_from_slice(b"abcd");
        u
    };
    let frame = |ip: [u8; 20], payload: &[u8]| {
        let mut f = eth(0x0800);
        f.extend_from_slice(&ip);
        f.extend_from_slice(payload);
        f
    };
    let header = |proto: u8, len: usize| probe::ipv4_header(RTR_PUBLIC, VIP, proto, len, 0x4242);
    let mut v = Vec::new();
    let mut add = |what, counter, frame| {
        v.push(Malformed {
            what,
            counter,
            frame,
        })
    };

    add("Ethernet header alone", "drop_truncated", eth(0x0800));
    let mut f = eth(0x0800);
    f.extend_from_slice(&header(17, udp.len())[..12]);
    add("IPv4 header cut at 12 bytes", "drop_truncated", f);
    add(
        "total length beyond the frame",
        "drop_truncated",
        frame(header(17, 100), &udp),
    );

    let mut bad_sum = header(17, udp.len());
    bad_sum[10] ^= 0x5a;
    add(
        "bad header checksum",
        "drop_bad_ipv4_checksum",
        frame(bad_sum, &udp),
    );
    let mut ihl4 = header(17, udp.len());
    ihl4[0] = 0x44;
    add(
        "IHL 4",
        "drop_bad_ipv4_header",
        frame(with_checksum(ihl4), &udp),
    );
    let mut v6 = header(17, udp.len());
    v6[0] = 0x65;
    add(
        "version 6 in an IPv4 frame",
        "drop_bad_ipv4_header",
        frame(with_checksum(v6), &udp),
    );
    let mut short_total = header(17, udp.len());
    short_total[2..4].copy_from_slice(&16u16.to_be_bytes());
    add(
        "total length below the header length",
        "drop_bad_ipv4_header",
        frame(with_checksum(short_total), &udp),
    );

    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[12] = 0x40;
    tcp[13] = 0x02;
    add(
        "TCP data offset 4",
        "drop_bad_tcp_header",
        frame(header(6, 20), &tcp),
    );
    let mut first_frag = header(6, 8);
    first_frag[6] = 0x20;
    add(
        "first fragment of 8 bytes (TCP)",
        "drop_tiny_fragment",
        frame(with_checksum(first_frag), &tcp[..8]),
    );
    let mut icmp = vec![3, 1, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&header(17, 8)[..12]);
    let c = probe::checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    add(
        "ICMP error quoting 12 bytes",
        "drop_bad_icmp_error",
        frame(header(1, icmp.len()), &icmp),
    );
    add(
        "source 127.0.0.1",
        "drop_martian",
        frame(
            probe::ipv4_header(Ipv4Addr::LOCALHOST, VIP, 17, udp.len(), 1),
            &udp,
        ),
    );
    let mut arp = eth(0x0806);
    arp.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1, 1, 2]);
    add("ARP cut at 10 bytes", "drop_arp_malformed", arp);
    let mut ip6 = eth(0x86dd);
    ip6.extend_from_slice(&[0x60, 0, 0, 0, 0, 0, 17, 64]);
    ip6.extend_from_slice(&[0; 32]);
    add("IPv6", "drop_ipv6", ip6);
    let mut other = eth(0x88b5);
    other.extend_from_slice(&[0; 46]);
    add("ethertype 0x88b5", "drop_not_ip", other);
    v
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    // Rounds of malformed frames, each sent while the download is part way.
    const ROUNDS: usize = 16;
    let Some(t) = topology(XdpMode::Drv, 1) else {
        return;
    };
    let web = TcpService::start(&t.h1, sa(H1, 80));
    let gw_mac = t.gateway_mac(ifname::GW_PUBLIC).unwrap();
    let rtr_mac = t
        .rtr
        .run(|| probe::interface_mac(ifname::RTR_GW))
        .unwrap()
        .unwrap();
    let frames = malformed_frames(gw_mac, rtr_mac);
    let mut expected: Vec<(&'static str, u64)> = Vec::new();
    for m in &frames {
        match expected.iter_mut().find(|(c, _)| *c == m.counter) {
            Some((_, n)) => *n += ROUNDS as u64,
            None => expected.push((m.counter, ROUNDS as u64)),
        }
    }
    // A frame for another host's MAC, dropped before parsing; other segments' floods may
    // add to that counter, so it is checked as a minimum.
    let stray_frames = vec![probe::ipv4_frame(
        [0x02, 0, 0x5e, 0, 0x53, 0x99],
        rtr_mac,
        RTR_PUBLIC,
        VIP,
        17,
        &[0x13, 0x88, 0x14, 0xe9, 0, 8, 0, 0],
    )];

    with_log(&t, || {
        let (round_tx, round_rx) = mpsc::channel::<usize>();
        let (done_tx, done_rx) = mpsc::channel::<usize>();
        let sender = t
            .rtr
            .enter_thread(move || -> Result<(), String> {
                let link = probe::RawLink::open(ifname::RTR_GW).map_err(|e| e.to_string())?;
                for _ in 0..ROUNDS {
                    let round = round_rx
                        .recv_timeout(DEADLINE)
                        .map_err(|e| format!("waiting for the download: {e}"))?;
                    for m in &frames {
                        link.send(&m.frame)
                            .map_err(|e| format!("sending {}: {e}", m.what))?;
                    }
                    for f in &stray_frames {
                        link.send(f)
                            .map_err(|e| format!("sending a stray frame: {e}"))?;
                    }
                    done_tx
                        .send(round)
                        .map_err(|e| format!("reporting round {round}: {e}"))?;
                }
                Ok(())
            })
            .unwrap();
        let blocks_total = BULK_LEN.div_ceil(BLOCK);
        let every = blocks_total / ROUNDS;
        let downloaded = t
            .client
            .run(move || {
                let s = connect(sa(VIP, 80));
                let mut round = 0;
                download(&s, BULK_LEN, 5, |block| {
                    if block % every == 0 && round < ROUNDS {
                        // Pause the reader (the transfer stays open, held by TCP flow
                        // control) while rtr sends a round of malformed frames.
                        round_tx.send(round).unwrap();
                        let r = done_rx.recv_timeout(DEADLINE).expect("the frame sender");
                        assert_eq!(r, round);
                        round += 1;
                    }
                })
                .map(|()| round)
            })
            .unwrap();
        assert_eq!(
            downloaded,
            Ok(ROUNDS),
            "download with malformed frames interleaved"
        );
        sender.join().unwrap().unwrap();
        barrier(&t);
    });
    web.stop();
    if let Some(c) = finish(t) {
        for (counter, n) in &expected {
            exactly(&c, counter, *n);
        }
        at_least(&c, "drop_other_mac", ROUNDS as u64);
    }
}

#[test]
fn frames_from_outside_with_inside_or_our_sources_never_reach_inside() {
    const ROUNDS: u64 = 5;
    let Some(t) = topology(XdpMode::Skb, 1) else {
        return;
    };
    let dns = UdpService::start(&t.h1, SocketAddrV4::new(H1, 5353));
    let gw_mac = t.gateway_mac(ifname::GW_PUBLIC).unwrap();
    // UDP to VIP:5353 (DNAT to h1), checksum 0 (none, as IPv4 allows).
    let datagram = move |src: Ipv4Addr, text: &str, rtr_mac: [u8; 6]| {
        let mut udp = Vec::new();
        udp.extend_from_slice(&1500u16.to_be_bytes());
        udp.extend_from_slice(&5353u16.to_be_bytes());
        udp.extend_from_slice(&u16::try_from(8 + text.len()).unwrap().to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(text.as_bytes());
        probe::ipv4_frame(gw_mac, rtr_mac, src, VIP, 17, &udp)
    };
    with_log(&t, || {
        let sent = t
            .rtr
            .run(move || -> Result<(), String> {
                let link = probe::RawLink::open(ifname::RTR_GW).map_err(|e| e.to_string())?;
                let mac = link.mac();
                for _ in 0..ROUNDS {
                    for (src, text) in [(H1, "inside"), (H2, "inside"), (VIP, "ours")] {
                        link.send(&datagram(src, text, mac))
                            .map_err(|e| format!("sending from {src}: {e}"))?;
                    }
                }
                // A genuine one last, on the same path: once it is in, the forged ones
                // had their chance.
                link.send(&datagram(RTR_PUBLIC, "genuine", mac))
                    .map_err(|e| e.to_string())
            })
            .unwrap();
        assert_eq!(sent, Ok(()));
        poll_until(DEADLINE, "the genuine datagram at h1", || {
            dns.seen.lock().unwrap().iter().any(|(m, _)| m == "genuine")
        })
        .unwrap();
    });
    let seen = dns.stop();
    assert_eq!(
        seen.iter()
            .map(|(m, p)| (m.as_str(), p.ip()))
            .collect::<Vec<_>>(),
        vec![("genuine", std::net::IpAddr::V4(RTR_PUBLIC))],
        "only the genuine datagram reached h1"
    );
    if let Some(c) = finish(t) {
        exactly(&c, "drop_spoofed_inside", 2 * ROUNDS);
        exactly(&c, "drop_spoofed_ours", ROUNDS);
    }
}

#[test]
fn a_port_with_more_receive_queues_than_workers_is_refused() {
    // The XDP program drops what arrives on a queue without a socket (a data port fails
    // closed), so a queue no worker serves must stop the start, not lose frames.
    if !require_root_and_netns() {
        return;
    }
    let gw = Netns::new("vgq").unwrap();
    let peer = Netns::new("vgqp").unwrap();
    vipgate_netns::veth(&gw, ifname::GW_PUBLIC, &peer, "p-pub", 2).unwrap();
    vipgate_netns::veth(&gw, ifname::GW_PRIVATE, &peer, "p-priv", 1).unwrap();
    let dir = vipgate_netns::TempDir::new("vgq").unwrap();
    let config = dir.path().join("vipgate.toml");
    let socket = dir.path().join("control.sock");
    std::fs::write(
        &config,
        format!(
            "[workers]\ncores = [0]\n[control]\nsocket = {:?}\n{CONFIG_BODY}",
            socket.to_string_lossy()
        ),
    )
    .unwrap();
    let mut child = gw
        .spawn(&[
            env!("CARGO_BIN_EXE_vipgate"),
            "run",
            "--config",
            &config.to_string_lossy(),
        ])
        .unwrap();
    let status = child
        .wait_timeout(DEADLINE)
        .unwrap()
        .expect("vipgate refuses to start at once");
    let stderr = child.stderr_so_far();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "interfaces[0] (vg-pub): 2 receive queues, but 1 worker(s) in workers.cores serve \
             queues 0 to 0"
        ),
        "{stderr}"
    );
    assert!(!socket.exists(), "the control socket is removed");
}

// ---------------------------------------------------------------------------------------
// The control plane: CLI over the control socket, the gate, reload under load, metrics

/// `vipgate <args> --socket <the topology's socket>`: (exit code, stdout, stderr).
fn cli(t: &Topology, args: &[&str]) -> (i32, String, String) {
    let socket = t
        .control_socket()
        .expect("the topology chose a control socket");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vipgate"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `vipgate <args> --json`, which must succeed and parse.
fn cli_json(t: &Topology, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.push("--json");
    let (code, out, err) = cli(t, &a);
    assert_eq!(code, 0, "vipgate {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("vipgate {args:?} --json: {e}: {out}"))
}

/// An ECHO connection to VIP:80 from the client, checked once.
fn echo_conn(t: &Topology) -> TcpStream {
    let conn = t.client.run(|| connect(sa(VIP, 80))).unwrap();
    let mut w = &conn;
    writeln!(w, "ECHO").unwrap();
    assert_eq!(read_line(&conn), "ECHO");
    assert_eq!(echo(&conn, "first"), "first");
    conn
}

/// Sends a line on an ECHO connection and reads the answer (without buffering past it).
fn echo(conn: &TcpStream, msg: &str) -> String {
    let mut w = conn;
    writeln!(w, "{msg}").unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while (&*conn).read_exact(&mut b).is_ok() && b[0] != b'\n' {
        line.push(b[0]);
    }
    String::from_utf8_lossy(&line).into_owned()
}

/// Polls `stats` until `name` reaches `min` (workers publish every 100 ms).
fn stat_at_least(t: &Topology, name: &str, min: u64) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    poll_until(DEADLINE, &format!("counter {name} >= {min}"), || {
        last = cli_json(t, &["stats", "--workers"]);
        last["total"][name].as_u64().unwrap_or(0) >= min
    })
    .unwrap_or_else(|e| panic!("{e}: {last}"));
    last
}

fn ping_vip(t: &Topology) -> bool {
    matches!(
        t.client
            .run(|| probe::ping(VIP, 1, Duration::from_millis(300))),
        Ok(Ok(1))
    )
}

#[test]
fn cli_drives_a_running_gateway() {
    let Some(t) = topology_with(CONFIG_BODY, &[]) else {
        return;
    };
    let web = TcpService::start(&t.h1, sa(H1, 80));
    with_log(&t, || {
        let status = cli_json(&t, &["status"]);
        assert_eq!(status["role"], "active");
        assert_eq!(status["workers"], 1);
        assert_eq!(status["xdp_mode"], "skb");
        assert_eq!(status["table"]["capacity"], 65536);
        assert_eq!(status["policy_generation"], 1);
        let ports = status["ports"].as_array().unwrap();
        assert_eq!(ports.len(), 2, "{status}");
        assert!(
            ports.iter().all(|p| p["bind"] == "copy"),
            "veth is copy mode: {status}"
        );
        let (code, human, _) = cli(&t, &["status"]);
        assert_eq!(code, 0);
        assert!(
            human.contains("role") && human.contains("active"),
            "{human}"
        );

        // One connection held open, so conns has something to show.
        let conn = echo_conn(&t);
        let local = conn.local_addr().unwrap();

        let stats = stat_at_least(&t, "conns_created", 1);
        assert!(stats["total"]["rx_frames"].as_u64().unwrap() > 0, "{stats}");
        assert_eq!(stats["workers"].as_array().unwrap().len(), 1);

        let conns = cli_json(&t, &["conns", "--vip", "203.0.113.10", "--port", "80"]);
        let list = conns["conns"].as_array().unwrap();
        let mine: Vec<_> = list
            .iter()
            .filter(|c| c["outside"] == local.to_string())
            .collect();
        assert_eq!(mine.len(), 1, "{conns}");
        assert_eq!(mine[0]["direction"], "inbound");
        assert_eq!(mine[0]["inside"], format!("{H1}:80"));
        assert_eq!(mine[0]["public"], format!("{VIP}:80"));
        assert_eq!(mine[0]["proto"], "tcp");
        assert_eq!(mine[0]["state"], "established");
        let count = cli_json(
            &t,
            &[
                "conns",
                "--count",
                "--proto",
                "tcp",
                "--state",
                "established",
            ],
        );
        assert!(count["count"].as_u64().unwrap() >= 1, "{count}");
        let (code, _, err) = cli(&t, &["conns", "--state", "establihsed"]);
        assert_eq!(code, 1, "a misspelt state is refused: {err}");
        let (code, human, _) = cli(&t, &["conns", "--limit", "1"]);
        assert_eq!(code, 0);
        assert!(human.starts_with("PROTO"), "{human}");

        let vips = cli_json(&t, &["vips"]);
        assert_eq!(vips["vips"][0]["vip"], "203.0.113.10");
        assert_eq!(vips["vips"][0]["dnat"][0]["to"], "198.18.0.10");
        assert_eq!(vips["pat"][0]["from"][0], "198.18.0.0/24");

        let (code, _, err) = cli(&t, &["flush"]);
        assert_eq!(code, 1, "flush without a filter is refused: {err}");
        let flushed = cli_json(
            &t,
            &[
                "flush",
                "--outside",
                &local.ip().to_string(),
                "--port",
                &local.port().to_string(),
            ],
        );
        assert_eq!(flushed["flushed"], 1, "{flushed}");
        let gone = cli_json(
            &t,
            &["conns", "--count", "--port", &local.port().to_string()],
        );
        assert_eq!(gone["count"], 0, "{gone}");

        // A structural change is refused by name; the daemon keeps running.
        let path = t.config_path().unwrap().to_path_buf();
        let original = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            original.replace("capacity = 65536", "capacity = 4096"),
        )
        .unwrap();
        let (code, _, err) = cli(&t, &["reload"]);
        assert_eq!(code, 1);
        assert!(err.contains("nat.capacity"), "{err}");
        std::fs::write(&path, &original).unwrap();
        let reloaded = cli_json(&t, &["reload"]);
        assert_eq!(reloaded["generation"], 2);
    });
    // SIGHUP reloads and never kills.
    let mut t = t;
    t.gateway_process().unwrap().signal(libc::SIGHUP).unwrap();
    poll_until(DEADLINE, "a SIGHUP reload", || {
        cli_json(&t, &["status"])["policy_generation"] == 3
    })
    .unwrap();
    drop(web);
    let socket = t.control_socket().unwrap().to_path_buf();
    assert!(socket.exists());
    // Stopped, with the topology (and the socket's directory) still there.
    let counters = t.stop().unwrap().unwrap().counters;
    assert!(!socket.exists(), "the control socket is removed at exit");
    at_least(&counters, "conns_created", 1);
    at_least(&counters, "reloads_ok", 2);
}

#[test]
fn cli_without_a_daemon_says_so() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vipgate"))
        .args(["status", "--socket", "/nonexistent/vipgate.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach vipgate"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vipgate"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("vipgate "));
}

#[test]
fn standby_goes_quiet_and_active_answers_again() {
    let Some(t) = topology_with(CONFIG_BODY, &[]) else {
        return;
    };
    let web = TcpService::start(&t.h1, sa(H1, 80));
    with_log(&t, || {
        let conn = echo_conn(&t);

        let standby = cli_json(&t, &["standby"]);
        assert_eq!(standby["role"], "standby");
        assert_eq!(cli_json(&t, &["status"])["role"], "standby");
        // No answer for the VIP: no ARP (asked from the router, whose cache is flushed),
        // no ping, and the open connection hears nothing.
        t.rtr.exec(&["ip", "neigh", "flush", "all"]).unwrap();
        let arp = t
            .rtr
            .run(|| probe::arp_query(ifname::RTR_GW, RTR_PUBLIC, VIP, 2, Duration::from_secs(1)))
            .unwrap()
            .unwrap();
        assert_eq!(arp, None, "a standby answered ARP for the VIP");
        assert!(!ping_vip(&t), "a standby answered a ping to the VIP");
        conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut w = &conn;
        writeln!(w, "held").unwrap();
        let mut buf = [0u8; 64];
        assert!((&conn).read(&mut buf).is_err(), "a standby forwarded data");
        let conns = cli_json(&t, &["conns", "--count"]);
        assert!(
            conns["count"].as_u64().unwrap() >= 1,
            "the table is kept: {conns}"
        );

        let active = cli_json(&t, &["active"]);
        assert_eq!(active["role"], "active");
        poll_until(DEADLINE, "the VIP answering again", || ping_vip(&t)).unwrap();
        // The connection lived through: TCP's retransmission carries the held line over.
        conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        let mut line = String::new();
        BufReader::new(&conn).read_line(&mut line).unwrap();
        assert_eq!(line, "held\n");
        assert_eq!(echo(&conn, "after"), "after");
        let again = t.client.run(|| connect(sa(VIP, 80))).unwrap();
        assert!(hello(&again, "new").starts_with("HELLO new"));
        stat_at_least(&t, "drop_standby", 1);
        // Three announcements at start (two addresses public, one private), three on opening.
        stat_at_least(&t, "arp_announcements", 6);
    });
    drop(web);
}

/// An HTTP GET from inside `ns` to 127.0.0.1:`port`; the body, or None on any failure.
fn http_get(ns: &Netns, port: u16, path: &str) -> Option<String> {
    let path = path.to_string();
    ns.run(move || -> Option<String> {
        let mut s = TcpStream::connect_timeout(
            &SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
            Duration::from_secs(2),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.").then(|| body.to_string())
    })
    .ok()
    .flatten()
}

#[test]
fn prometheus_scrapes_the_counters_the_test_drove() {
    const METRICS: u16 = 9469;
    const PROM: u16 = 9090;
    let Some(t) = topology_with(
        &format!("{CONFIG_BODY}\n[metrics]\nlisten = \"127.0.0.1:{METRICS}\"\n"),
        &[],
    ) else {
        return;
    };
    let Ok(prometheus) = which("prometheus") else {
        panic!("the prometheus server is not installed (Debian package prometheus; scripts/test.sh installs it)");
    };
    with_log(&t, || {
        // Five pings to the gateway's own public address: gateway_echo_replies = 5.
        let answered = t
            .client
            .run(|| {
                probe::ping(
                    vipgate_netns::topology::addr::GW_PUBLIC,
                    5,
                    Duration::from_secs(2),
                )
            })
            .unwrap()
            .unwrap();
        assert_eq!(answered, 5);

        let dir = t.config_path().unwrap().parent().unwrap().to_path_buf();
        let conf = dir.join("prometheus.yml");
        std::fs::write(
            &conf,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: vipgate\n    static_configs:\n      - targets: ['127.0.0.1:{METRICS}']\n"
            ),
        )
        .unwrap();
        let data = dir.join("prometheus-data");
        let conf_arg = format!("--config.file={}", conf.display());
        let data_arg = format!("--storage.tsdb.path={}", data.display());
        let listen_arg = format!("--web.listen-address=127.0.0.1:{PROM}");
        let _server =
            t.gw.spawn(&[&prometheus, &conf_arg, &data_arg, &listen_arg])
                .unwrap();
        let query = |q: &str| -> Option<serde_json::Value> {
            let body = http_get(&t.gw, PROM, &format!("/api/v1/query?query={q}"))?;
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            v["data"]["result"].get(0).map(|r| r["value"][1].clone())
        };
        poll_until(
            Duration::from_secs(90),
            "prometheus sees vipgate up",
            || query("up").is_some_and(|v| v == "1"),
        )
        .unwrap();
        poll_until(
            Duration::from_secs(60),
            "prometheus has vipgate_gateway_echo_replies_total = 5",
            || query("sum(vipgate_gateway_echo_replies_total)").is_some_and(|v| v == "5"),
        )
        .unwrap();
        let text = http_get(&t.gw, METRICS, "/metrics").unwrap();
        assert!(text.contains("vipgate_active 1"), "{text}");
        assert!(text.contains("vipgate_table_capacity 65536"), "{text}");
        assert!(
            text.contains("vipgate_drop_no_rule_total{worker=\"0\"}"),
            "{text}"
        );
    });
}

/// A program on PATH.
fn which(name: &str) -> Result<String, ()> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .ok_or(())
}

/// Pools for the reload test: `a` on port 8080 over h1 and h2, `b` on 8081 over h1, and an
/// unrelated DNAT rule for udp 5353.
const RELOAD_BEFORE: &str = r#"
[[nat.pools]]
name = "a"
vip = "203.0.113.10"
proto = "tcp"
port = 8080
backends = [{ addr = "198.18.0.10", port = 80, weight = 1 }, { addr = "198.18.0.11", port = 80, weight = 1 }]

[[nat.pools]]
name = "b"
vip = "203.0.113.10"
proto = "tcp"
port = 8081
backends = [{ addr = "198.18.0.10", port = 80, weight = 1 }]
"#;

/// Adds pool `c`, puts it first, reorders `b` before `a` and changes `a`'s weights.
const RELOAD_AFTER: &str = r#"
[[nat.pools]]
name = "c"
vip = "203.0.113.10"
proto = "tcp"
port = 8082
backends = [{ addr = "198.18.0.11", port = 80, weight = 1 }]

[[nat.pools]]
name = "b"
vip = "203.0.113.10"
proto = "tcp"
port = 8081
backends = [{ addr = "198.18.0.10", port = 80, weight = 1 }]

[[nat.pools]]
name = "a"
vip = "203.0.113.10"
proto = "tcp"
port = 8080
backends = [{ addr = "198.18.0.10", port = 80, weight = 3 }, { addr = "198.18.0.11", port = 80, weight = 1 }]
"#;

#[test]
fn reload_under_load_keeps_every_connection() {
    const N: usize = 100;
    let before = format!("{CONFIG_BODY}{RELOAD_BEFORE}");
    let Some(t) = topology_with(&before, &[]) else {
        return;
    };
    let s1 = TcpService::start(&t.h1, sa(H1, 80));
    let s2 = TcpService::start(&t.h2, sa(H2, 80));
    with_log(&t, || {
        let conns: Vec<TcpStream> = t
            .client
            .run(|| {
                (0..N)
                    .map(|_| {
                        let c = connect(sa(VIP, 8080));
                        let mut w = &c;
                        writeln!(w, "ECHO").unwrap();
                        assert_eq!(read_line(&c), "ECHO");
                        c
                    })
                    .collect()
            })
            .unwrap();
        // Every connection exchanges lines without pause until told to stop.
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let driver = {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            thread::spawn(move || -> Result<Vec<TcpStream>, String> {
                let end = Instant::now() + SERVICE_LIFETIME;
                let mut round = 0u64;
                while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                    for (i, c) in conns.iter().enumerate() {
                        let msg = format!("{i}-{round}-{}", "x".repeat(i % 50));
                        let got = echo(c, &msg);
                        if got != msg {
                            return Err(format!(
                                "connection {i} round {round}: sent {msg:?}, got {got:?}"
                            ));
                        }
                    }
                    round += 1;
                    rounds.store(round, Ordering::Relaxed);
                }
                Ok(conns)
            })
        };
        let wait_rounds = |more: u64, what: &str| {
            let target = rounds.load(Ordering::Relaxed) + more;
            poll_until(DEADLINE, what, || {
                rounds.load(Ordering::Relaxed) >= target || driver.is_finished()
            })
            .unwrap();
        };
        wait_rounds(3, "three rounds before the reload");

        let path = t.config_path().unwrap().to_path_buf();
        let original = std::fs::read_to_string(&path).unwrap();
        // The new file: the pools changed and the unrelated udp 5353 rule removed.
        let without_udp = original.replace(
            "[[nat.dnat]]\nvip = \"203.0.113.10\"\nproto = \"udp\"\nport = 5353\nto = \"198.18.0.10\"\n",
            "",
        );
        assert_ne!(without_udp, original, "the udp rule is in the file");
        let after = without_udp.replace(RELOAD_BEFORE, RELOAD_AFTER);
        std::fs::write(&path, &after).unwrap();
        let reloaded = cli_json(&t, &["reload"]);
        assert_eq!(reloaded["generation"], 2);
        wait_rounds(3, "three rounds after the reload");
        // Pool connections name their backend by pool and address, before and after.
        let page = cli_json(&t, &["conns", "--vip", "203.0.113.10", "--port", "8080"]);
        let conns = page["conns"].as_array().unwrap();
        assert!(!conns.is_empty(), "{page}");
        for c in conns {
            let b = c["backend"].as_str().unwrap_or_default();
            assert!(b == format!("a/{}", c["inside"].as_str().unwrap()), "{c}");
        }

        // A broken file changes nothing and says why.
        std::fs::write(&path, after.replace("weight = 3", "weight = -3")).unwrap();
        let (code, _, err) = cli(&t, &["reload"]);
        assert_eq!(code, 1);
        assert!(err.contains("nat.pools[2].backends[0].weight"), "{err}");
        assert_eq!(cli_json(&t, &["status"])["policy_generation"], 2);
        wait_rounds(2, "two rounds after the refused reload");

        stop.store(true, Ordering::Relaxed);
        let conns = driver.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(conns.len(), N);
        // The new pool answers; the removed rule does not.
        let c = t.client.run(|| connect(sa(VIP, 8082))).unwrap();
        let answer = hello(&c, "c");
        assert!(answer.starts_with("HELLO c FROM"), "{answer}");
        let vips = cli_json(&t, &["vips"]);
        let pools: Vec<&str> = vips["vips"][0]["pools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(pools, ["c", "b", "a"]);
        assert!(vips["vips"][0]["dnat"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["proto"] != "udp"));
    });
    drop((s1, s2));
}

#[test]
fn nat_event_log_records_mappings_and_connections() {
    let dir = std::env::temp_dir().join(format!("vipgate-events-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("nat-events.log");
    let body = format!("{CONFIG_BODY}\n[events]\nfile = \"{}\"\n", log.display());
    let Some(t) = topology_with(&body, &[]) else {
        let _ = std::fs::remove_dir_all(&dir);
        return;
    };
    let web = TcpService::start(&t.h1, sa(H1, 80));
    let far = UdpService::start(&t.inet, sa(INET, 7000));
    let result = catch_unwind(AssertUnwindSafe(|| {
        with_log(&t, || {
            let conn = echo_conn(&t);
            let client = conn.local_addr().unwrap();
            let answer =
                t.h1.run(|| udp_ask(&udp_connected(H1, sa(INET, 7000)), "logged"))
                    .unwrap();
            let public = from_addr(&answer);
            let read = || std::fs::read_to_string(&log).unwrap_or_default();
            let inbound =
                format!("created conn tcp inbound inside={H1}:80 public={VIP}:80 outside={client}");
            let mapping = format!("created mapping udp inside={H1}:");
            let outbound = format!("public={public} outside={INET}:7000");
            poll_until(DEADLINE, "the three creations in the event log", || {
                let text = read();
                text.contains(&inbound) && text.contains(&mapping) && text.contains(&outbound)
            })
            .unwrap_or_else(|e| panic!("{e}:\n{}", read()));
            let flushed = cli_json(&t, &["flush", "--all"]);
            assert!(flushed["flushed"].as_u64().unwrap() >= 2, "{flushed}");
            let deleted = inbound.replace("created", "deleted");
            poll_until(DEADLINE, "the deletion in the event log", || {
                read().contains(&deleted)
            })
            .unwrap_or_else(|e| panic!("{e}:\n{}", read()));
            // Every line starts with an RFC 3339 time.
            for line in read().lines() {
                let (time, _) = line.split_once(' ').unwrap();
                assert!(time.len() == 24 && time.ends_with('Z'), "{line}");
            }
            let stats = cli_json(&t, &["stats"]);
            assert!(
                stats["total"]["event_log_written"].as_u64().unwrap() >= 4,
                "{stats}"
            );
            assert_eq!(stats["total"]["event_log_dropped"], 0, "{stats}");
        });
    }));
    drop((web, far, t));
    let _ = std::fs::remove_dir_all(&dir);
    if let Err(p) = result {
        resume_unwind(p);
    }
}

#[test]
fn a_full_table_is_said_in_the_log() {
    let Some(t) = topology_with(CONFIG_BODY, &[("VIPGATE_NAT__CAPACITY", "4")]) else {
        return;
    };
    let web = TcpService::start(&t.h1, sa(H1, 80));
    with_log(&t, || {
        let opened: Vec<TcpStream> = t
            .client
            .run(|| {
                (0..8)
                    .filter_map(|_| {
                        TcpStream::connect_timeout(&sa(VIP, 80).into(), Duration::from_secs(1)).ok()
                    })
                    .collect()
            })
            .unwrap();
        assert!(
            opened.len() <= 4,
            "{} connections in a table of 4",
            opened.len()
        );
        poll_until(DEADLINE, "the log line about the full table", || {
            t.gateway_log()
                .contains("new connections refused: the connection table is full")
        })
        .unwrap();
    });
    drop(web);
}

/// Backend `backend` (`address:port`) of pool `pool`, as `vipgate backends --json` lists it.
fn backend_row(t: &Topology, pool: &str, backend: &str) -> Option<serde_json::Value> {
    cli_json(t, &["backends"])["backends"]
        .as_array()?
        .iter()
        .find(|r| r["pool"] == pool && r["backend"] == backend)
        .cloned()
}

/// `vipgate backends`, `drain` and `undrain`: a drained backend gets no new connection, its
/// long-lived ones go on, a reload keeps it drained, and undrain puts it back.
#[test]
fn a_drained_backend_gets_no_new_connections_and_keeps_its_own() {
    let Some(t) = topology_with(&format!("{CONFIG_BODY}{RELOAD_BEFORE}"), &[]) else {
        return;
    };
    let s1 = TcpService::start(&t.h1, sa(H1, 80));
    let s2 = TcpService::start(&t.h2, sa(H2, 80));
    with_log(&t, || {
        let conns_of = |addr: &str| -> u64 {
            backend_row(&t, "a", addr)
                .unwrap_or_else(|| panic!("{addr} in {}", cli_json(&t, &["backends"])))["conns"]
                .as_u64()
                .unwrap()
        };
        let open = |n: usize| -> Vec<TcpStream> {
            t.client
                .run(move || {
                    (0..n)
                        .map(|_| {
                            let c = connect(sa(VIP, 8080));
                            let mut w = &c;
                            writeln!(w, "ECHO").unwrap();
                            assert_eq!(read_line(&c), "ECHO");
                            c
                        })
                        .collect()
                })
                .unwrap()
        };
        let before = open(20);
        // Long transfers, started before the drain: some of them on h2.
        let transfers: Vec<TcpStream> = t
            .client
            .run(|| (0..6).map(|_| connect(sa(VIP, 8080))).collect())
            .unwrap();
        let on_h2 = conns_of("198.18.0.11:80");
        assert!(on_h2 > 0, "Maglev gave h2 some of 26 connections");

        let mut drained = serde_json::Value::Null;
        for (k, c) in transfers.iter().enumerate() {
            // The drain lands in the middle of the first transfer; the others were open.
            download(c, 2 << 20, k as u64, |block| {
                if k == 0 && block == 4 {
                    drained = cli_json(&t, &["drain", "a", "198.18.0.11"]);
                }
            })
            .unwrap_or_else(|e| panic!("transfer {k}: {e}"));
        }
        drop(transfers);
        assert_eq!(drained["changed"], true, "{drained}");
        let h2 = backend_row(&t, "a", "198.18.0.11:80").unwrap();
        assert_eq!(
            (h2["drained"].clone(), h2["in_service"].clone()),
            (true.into(), false.into())
        );
        let (code, _, err) = cli(&t, &["drain", "a", "198.18.0.99"]);
        assert_eq!(code, 1);
        assert!(err.contains("198.18.0.10:80, 198.18.0.11:80"), "{err}");

        // New connections all go to h1; the old ones on h2 go on.
        // Every new connection from now on goes to h1.
        let h1_before = conns_of("198.18.0.10:80");
        let after = open(40);
        assert_eq!(
            conns_of("198.18.0.10:80"),
            h1_before + 40,
            "every new connection on h1"
        );
        for (i, c) in before.iter().enumerate() {
            assert_eq!(echo(c, &format!("still {i}")), format!("still {i}"));
        }
        // A reload of the same file keeps the drain.
        assert_eq!(cli_json(&t, &["reload"])["generation"], 3);
        let h1_before = conns_of("198.18.0.10:80");
        let more = open(20);
        assert_eq!(
            conns_of("198.18.0.10:80"),
            h1_before + 20,
            "still drained after reload"
        );

        assert_eq!(
            cli_json(&t, &["undrain", "a", "198.18.0.11:80"])["changed"],
            true
        );
        let h2_before = conns_of("198.18.0.11:80");
        let back = open(40);
        assert!(
            conns_of("198.18.0.11:80") > h2_before,
            "h2 gets new connections again"
        );
        // A reload removes h2 from the pool: every connection goes on, h1's untouched, h2's
        // until they end; new ones all go to h1.
        let path = t.config_path().unwrap().to_path_buf();
        let text = std::fs::read_to_string(&path).unwrap();
        let smaller = text.replace(
            "backends = [{ addr = \"198.18.0.10\", port = 80, weight = 1 }, { addr = \"198.18.0.11\", port = 80, weight = 1 }]",
            "backends = [{ addr = \"198.18.0.10\", port = 80, weight = 1 }]",
        );
        assert_ne!(smaller, text);
        std::fs::write(&path, smaller).unwrap();
        cli_json(&t, &["reload"]);
        for (i, c) in before.iter().chain(&after).enumerate() {
            assert_eq!(echo(c, &format!("reloaded {i}")), format!("reloaded {i}"));
        }
        let h1_before = conns_of("198.18.0.10:80");
        let last = open(20);
        assert_eq!(conns_of("198.18.0.10:80"), h1_before + 20);
        drop((after, more, back, last));
    });
    drop((s1, s2));
}

/// A pool whose every backend is drained refuses new connections at once: a TCP client's
/// connect fails with "connection refused" (the gateway's RST), a UDP client's connected
/// socket gets "connection refused" (the gateway's ICMP port unreachable), not a timeout.
#[test]
fn an_empty_pool_refuses_tcp_and_udp_at_once() {
    const UDP_POOL: &str = r#"
[[nat.pools]]
name = "dns"
vip = "203.0.113.10"
proto = "udp"
port = 5354
backends = [{ addr = "198.18.0.10", port = 5353 }]
"#;
    let Some(t) = topology_with(&format!("{CONFIG_BODY}{RELOAD_BEFORE}{UDP_POOL}"), &[]) else {
        return;
    };
    with_log(&t, || {
        for (pool, backend) in [
            ("a", "198.18.0.10"),
            ("a", "198.18.0.11"),
            ("dns", "198.18.0.10"),
        ] {
            assert_eq!(cli_json(&t, &["drain", pool, backend])["changed"], true);
        }
        let tcp = t
            .client
            .run(|| TcpStream::connect_timeout(&sa(VIP, 8080).into(), Duration::from_secs(20)))
            .unwrap();
        let e = tcp.expect_err("no backend in service");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
        let udp = t
            .client
            .run(|| -> io::Result<io::Error> {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect(sa(VIP, 5354))?;
                s.set_read_timeout(Some(Duration::from_secs(20)))?;
                s.send(b"query")?;
                let mut buf = [0u8; 64];
                Ok(s.recv(&mut buf).expect_err("no answer, an error"))
            })
            .unwrap()
            .unwrap();
        assert_eq!(udp.kind(), io::ErrorKind::ConnectionRefused, "{udp}");
        stat_at_least(&t, "empty_pool_resets", 1);
        stat_at_least(&t, "empty_pool_unreachables", 1);
    });
}

/// A minimal HTTP/1.0 server that counts the requests it answered (not the health checks
/// to /health).
struct HttpCounter {
    served: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl HttpCounter {
    fn start(ns: &Netns, addr: SocketAddrV4) -> HttpCounter {
        let listener = ns.run(move || TcpListener::bind(addr)).unwrap().unwrap();
        listener.set_nonblocking(true).unwrap();
        let served = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (served2, stop2) = (served.clone(), stop.clone());
        let handle = thread::spawn(move || {
            let end = Instant::now() + SERVICE_LIFETIME;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < end {
                let Ok((s, _)) = listener.accept() else {
                    let _ = probe::wait_readable(listener.as_fd(), Duration::from_millis(50));
                    continue;
                };
                let answer = || -> io::Result<bool> {
                    s.set_nonblocking(false)?;
                    s.set_read_timeout(Some(IO_TIMEOUT))?;
                    let mut r = BufReader::new(s.try_clone()?);
                    let mut request = String::new();
                    r.read_line(&mut request)?;
                    let mut line = String::new();
                    // The headers, up to the blank line.
                    while r.read_line(&mut line)? > 2 {
                        line.clear();
                    }
                    let body = format!("served by {addr}\n");
                    write!(
                        &s,
                        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )?;
                    Ok(!request.starts_with("GET /health "))
                };
                if answer().unwrap_or(false) {
                    served2.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        HttpCounter {
            served,
            stop,
            handle: Some(handle),
        }
    }

    fn take(&self) -> u64 {
        self.served.swap(0, Ordering::Relaxed)
    }
}

impl Drop for HttpCounter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Three HTTP backends behind one VIP: 3,000 new connections spread by the weights, equal
/// and then (after a reload) 1:1:2.
#[test]
fn a_pool_spreads_new_connections_by_weight() {
    const N: u64 = 3000;
    const POOL: &str = r#"
[[nat.pools]]
name = "web"
vip = "203.0.113.10"
proto = "tcp"
port = 8080
backends = [
    { addr = "198.18.0.10", port = 8080, weight = 1 },
    { addr = "198.18.0.10", port = 8081, weight = 1 },
    { addr = "198.18.0.11", port = 8080, weight = 1 },
]
"#;
    let Some(t) = topology_with(&format!("{CONFIG_BODY}{POOL}"), &[]) else {
        return;
    };
    let servers = [
        HttpCounter::start(&t.h1, sa(H1, 8080)),
        HttpCounter::start(&t.h1, sa(H1, 8081)),
        HttpCounter::start(&t.h2, sa(H2, 8080)),
    ];
    let round = |t: &Topology| -> Vec<f64> {
        t.client
            .run(|| {
                for i in 0..N {
                    let s = connect(sa(VIP, 8080));
                    write!(&s, "GET / HTTP/1.0\r\nHost: vip\r\n\r\n").unwrap();
                    let mut answer = String::new();
                    (&s).read_to_string(&mut answer).unwrap();
                    assert!(
                        answer.starts_with("HTTP/1.0 200 OK"),
                        "request {i}: {answer:?}"
                    );
                }
            })
            .unwrap();
        let counts: Vec<u64> = servers.iter().map(HttpCounter::take).collect();
        assert_eq!(counts.iter().sum::<u64>(), N, "{counts:?}");
        counts
            .iter()
            .map(|c| *c as f64 * 100.0 / N as f64)
            .collect()
    };
    with_log(&t, || {
        let equal = round(&t);
        eprintln!("equal weights: shares {equal:?} %");
        for s in &equal {
            assert!((25.0..=42.0).contains(s), "{equal:?}");
        }
        let path = t.config_path().unwrap().to_path_buf();
        let text = std::fs::read_to_string(&path).unwrap();
        let weighted = text.replace(
            "{ addr = \"198.18.0.11\", port = 8080, weight = 1 }",
            "{ addr = \"198.18.0.11\", port = 8080, weight = 2 }",
        );
        assert_ne!(weighted, text);
        std::fs::write(&path, weighted).unwrap();
        cli_json(&t, &["reload"]);
        let shares = round(&t);
        eprintln!("weights 1:1:2: shares {shares:?} %");
        for (s, want) in shares.iter().zip([25.0, 25.0, 50.0]) {
            assert!((s - want).abs() <= 5.0, "{shares:?}");
        }
    });
}

/// Health checks from the appliance: HTTP checks of two backends; one stops, leaves the pool
/// within fall intervals and no new connection fails; it starts again and rejoins within rise
/// intervals. ICMP checks see hosts that answer ping.
#[test]
fn health_checks_take_a_dead_backend_out_and_bring_it_back() {
    const POOL: &str = r#"
[[nat.pools]]
name = "web"
vip = "203.0.113.10"
proto = "tcp"
port = 8080
backends = [{ addr = "198.18.0.10", port = 8080 }, { addr = "198.18.0.11", port = 8080 }]
check = { type = "http", path = "/health", interval_ms = 200, timeout_ms = 150, rise = 2, fall = 2 }

[[nat.pools]]
name = "ping"
vip = "203.0.113.10"
proto = "tcp"
port = 8090
backends = [{ addr = "198.18.0.10", port = 8080 }, { addr = "198.18.0.11", port = 8080 }]
check = { type = "icmp", interval_ms = 200, timeout_ms = 150 }
"#;
    let Some(t) = topology_with(&format!("{CONFIG_BODY}{POOL}"), &[]) else {
        return;
    };
    let h1 = HttpCounter::start(&t.h1, sa(H1, 8080));
    let mut h2 = Some(HttpCounter::start(&t.h2, sa(H2, 8080)));
    let health = |pool: &str, backend: &str| -> String {
        backend_row(&t, pool, backend)
            .map(|r| r["health"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    };
    let wait_health = |pool: &str, backend: &str, want: &str| {
        poll_until(DEADLINE, &format!("{pool} {backend} {want}"), || {
            health(pool, backend) == want
        })
        .unwrap_or_else(|e| panic!("{e}: {}", cli_json(&t, &["backends"])));
    };
    let requests = |n: u64| {
        t.client
            .run(move || {
                for i in 0..n {
                    let s = connect(sa(VIP, 8080));
                    write!(&s, "GET / HTTP/1.0\r\n\r\n").unwrap();
                    let mut answer = String::new();
                    (&s).read_to_string(&mut answer).unwrap();
                    assert!(
                        answer.starts_with("HTTP/1.0 200"),
                        "request {i}: {answer:?}"
                    );
                }
            })
            .unwrap();
    };
    with_log(&t, || {
        for b in ["198.18.0.10:8080", "198.18.0.11:8080"] {
            wait_health("web", b, "up");
            wait_health("ping", b, "up");
        }
        drop(h2.take());
        wait_health("web", "198.18.0.11:8080", "down");
        let b = cli_json(&t, &["backends"]);
        assert!(b.to_string().contains("\"in_service\":false"), "{b}");
        h1.take();
        requests(50);
        assert_eq!(h1.take(), 50, "every new connection on the healthy backend");
        h2 = Some(HttpCounter::start(&t.h2, sa(H2, 8080)));
        wait_health("web", "198.18.0.11:8080", "up");
        requests(50);
        let on_h2 = h2.as_ref().unwrap().take();
        assert!(on_h2 > 0, "back in the pool");
        assert!(t.gateway_log().contains("health: backend down"));
    });
}

/// A pool with `on_backend_down = "reset"`: when its backend fails its checks, the backend's
/// connections are removed and the client's next segment gets a RST from the VIP.
#[test]
fn a_backend_found_down_resets_its_connections_when_the_pool_says_so() {
    const POOL: &str = r#"
[[nat.pools]]
name = "solo"
vip = "203.0.113.10"
proto = "tcp"
port = 8085
backends = [{ addr = "198.18.0.11", port = 80 }]
check = { type = "icmp", interval_ms = 200, timeout_ms = 150, rise = 1, fall = 2 }
on_backend_down = "reset"
"#;
    let Some(t) = topology_with(&format!("{CONFIG_BODY}{POOL}"), &[]) else {
        return;
    };
    let service = TcpService::start(&t.h2, sa(H2, 80));
    with_log(&t, || {
        poll_until(DEADLINE, "solo up", || {
            cli_json(&t, &["backends"])
                .to_string()
                .contains("\"health\":\"up\"")
        })
        .unwrap();
        let c = t.client.run(|| connect(sa(VIP, 8085))).unwrap();
        let mut w = &c;
        writeln!(w, "ECHO").unwrap();
        assert_eq!(read_line(&c), "ECHO");
        assert_eq!(echo(&c, "before"), "before");
        // The backend stops answering its checks (its connection would still work).
        t.h2.sysctl("net.ipv4.icmp_echo_ignore_all", "1").unwrap();
        poll_until(DEADLINE, "solo down", || {
            cli_json(&t, &["backends"])
                .to_string()
                .contains("\"health\":\"down\"")
        })
        .unwrap();
        stat_at_least(&t, "backend_down_resets", 1);
        writeln!(w, "after").unwrap();
        let mut buf = [0u8; 16];
        let e = (&c).read(&mut buf).expect_err("the connection was reset");
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "{e}");
        stat_at_least(&t, "tcp_no_conn_resets", 1);
    });
    drop(service);
}
