//! A UDP frame generator for the end-to-end benchmark (`scripts/bench-e2e.sh`): prebuilt
//! Ethernet/IPv4/UDP frames, one per flow (flows differ in source port), sent round-robin
//! over an AF_PACKET socket with `sendmmsg`, as fast as the interface takes them.
//!
//! Kernel pktgen is absent here and `trafgen` exits once a veth's queue fills; this sender
//! retries instead, so it keeps the gateway saturated for the whole run. It stops after
//! `--count` frames or `--seconds`, whichever comes first, and prints one line:
//! `udpgen sent=N seconds=S pps=R retries=E`.
//!
//! `udpgen --ifname IF --dst-mac MAC --src IP --dst IP [--dport 5353] [--sport 10000]
//! [--flows 1024] [--size 60] [--batch 64] [--count N] [--seconds S] [--rate PPS] [--src-mac MAC]`
//!
//! `--rate` paces the sender (batch by batch) to at most PPS frames per second, so that several
//! gateways can be compared at one offered rate; without it the sender floods.
//!
//! Needs CAP_NET_RAW; run it inside the generator's network namespace.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Ethernet + IPv4 (no options) + UDP headers.
const HEADERS: usize = 14 + 20 + 8;
/// The smallest frame an Ethernet segment carries (without FCS).
const MIN_FRAME: usize = 60;
/// The largest untagged frame at MTU 1500 (without FCS).
const MAX_FRAME: usize = 1514;
/// The kernel's limit on messages per `sendmmsg` call (UIO_MAXIOV).
const MAX_BATCH: usize = 1024;

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
struct Options {
    ifname: String,
    src_mac: Option<[u8; 6]>,
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flows: usize,
    size: usize,
    batch: usize,
    count: u64,
    seconds: f64,
    rate: Option<f64>,
}

/// A command-line problem, reported as one line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UsageError(String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const USAGE: &str = "usage: udpgen --ifname IF --dst-mac MAC --src IP --dst IP [--dport 5353] \
[--sport 10000] [--flows 1024] [--size 60] [--batch 64] [--count N] [--seconds S] [--rate PPS] \
[--src-mac MAC]";

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn parse_num<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, UsageError> {
    value
        .parse()
        .map_err(|_| UsageError(format!("{key}: {value:?} is not a valid number")))
}

fn parse_args(args: &[String]) -> Result<Options, UsageError> {
    let mut ifname = None;
    let mut src_mac = None;
    let mut dst_mac = None;
    let mut src = None;
    let mut dst = None;
    let mut sport: u16 = 10_000;
    let mut dport: u16 = 5353;
    let mut flows: usize = 1024;
    let mut size: usize = MIN_FRAME;
    let mut batch: usize = 64;
    // Both bounds are always finite: a forgotten option must not make an endless flood.
    let mut count: u64 = 1_000_000_000;
    let mut seconds: f64 = 10.0;
    let mut rate: Option<f64> = None;

    let mut it = args.iter();
    while let Some(key) = it.next() {
        if key == "--help" || key == "-h" {
            return Err(UsageError(USAGE.to_owned()));
        }
        let value = it
            .next()
            .ok_or_else(|| UsageError(format!("{key}: missing value; {USAGE}")))?;
        let mac = |v: &str| {
            parse_mac(v).ok_or_else(|| {
                UsageError(format!(
                    "{key}: {v:?} is not a MAC address; expected aa:bb:cc:dd:ee:ff"
                ))
            })
        };
        let ip = |v: &str| {
            v.parse::<Ipv4Addr>()
                .map_err(|_| UsageError(format!("{key}: {v:?} is not an IPv4 address")))
        };
        match key.as_str() {
            "--ifname" => ifname = Some(value.clone()),
            "--src-mac" => src_mac = Some(mac(value)?),
            "--dst-mac" => dst_mac = Some(mac(value)?),
            "--src" => src = Some(ip(value)?),
            "--dst" => dst = Some(ip(value)?),
            "--sport" => sport = parse_num(key, value)?,
            "--dport" => dport = parse_num(key, value)?,
            "--flows" => flows = parse_num(key, value)?,
            "--size" => size = parse_num(key, value)?,
            "--batch" => batch = parse_num(key, value)?,
            "--count" => count = parse_num(key, value)?,
            "--seconds" => seconds = parse_num(key, value)?,
            "--rate" => rate = Some(parse_num(key, value)?),
            _ => return Err(UsageError(format!("{key}: unknown option; {USAGE}"))),
        }
    }
    let missing = |name: &str| UsageError(format!("{name} is required; {USAGE}"));
    let options = Options {
        ifname: ifname.ok_or_else(|| missing("--ifname"))?,
        src_mac,
        dst_mac: dst_mac.ok_or_else(|| missing("--dst-mac"))?,
        src: src.ok_or_else(|| missing("--src"))?,
        dst: dst.ok_or_else(|| missing("--dst"))?,
        sport,
        dport,
        flows,
        size,
        batch,
        count,
        seconds,
        rate,
    };
    if options.ifname.is_empty() || options.ifname.len() > 15 {
        return Err(UsageError(format!(
            "--ifname: {:?} is not an interface name; expected 1 to 15 bytes",
            options.ifname
        )));
    }
    if options.flows == 0 || options.flows > 65_536 - usize::from(sport) {
        return Err(UsageError(format!(
            "--flows: {} does not fit; expected 1 to {} (source ports from --sport {sport} up)",
            options.flows,
            65_536 - usize::from(sport)
        )));
    }
    if !(MIN_FRAME..=MAX_FRAME).contains(&options.size) {
        return Err(UsageError(format!(
            "--size: {} is out of range; expected {MIN_FRAME} to {MAX_FRAME} bytes",
            options.size
        )));
    }
    if options.batch == 0 || options.batch > MAX_BATCH {
        return Err(UsageError(format!(
            "--batch: {} is out of range; expected 1 to {MAX_BATCH}",
            options.batch
        )));
    }
    if !(options.seconds > 0.0 && options.seconds <= 86_400.0) {
        return Err(UsageError(format!(
            "--seconds: {} is out of range; expected more than 0, at most 86400",
            options.seconds
        )));
    }
    if let Some(rate) = options.rate {
        if !(1.0..=1e9).contains(&rate) {
            return Err(UsageError(format!(
                "--rate: {rate} is out of range; expected 1 to 1000000000 frames per second"
            )));
        }
    }
    Ok(options)
}

/// The ones' complement sum of big-endian 16-bit words, not yet folded.
fn sum16(bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    let mut sum: u32 = chunks
        .by_ref()
        .map(|w| match *w {
            [hi, lo] => u32::from(u16::from_be_bytes([hi, lo])),
            _ => 0,
        })
        .sum();
    if let Some(&last) = chunks.remainder().first() {
        sum += u32::from(last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// One frame of flow `flow`: every header field and checksum final, so the receiver (a kernel
/// gateway or vipgate, which checks IPv4 checksums) treats it as any host's datagram.
fn build_frame(o: &Options, src_mac: [u8; 6], flow: usize) -> Vec<u8> {
    let mut f = vec![0u8; o.size];
    let ip_len = o.size - 14;
    let udp_len = ip_len - 20;
    // Ports and lengths fit: parse_args bounds flows by the port space and size by 1514.
    let sport = o.sport.wrapping_add(flow as u16);
    let mut header = Vec::with_capacity(HEADERS);
    header.extend_from_slice(&o.dst_mac);
    header.extend_from_slice(&src_mac);
    header.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4: version 4, IHL 5, DF set (nothing on this path fragments), TTL 64, UDP.
    header.extend_from_slice(&[0x45, 0]);
    header.extend_from_slice(&(ip_len as u16).to_be_bytes());
    header.extend_from_slice(&(flow as u16).to_be_bytes());
    header.extend_from_slice(&[0x40, 0, 64, 17, 0, 0]);
    header.extend_from_slice(&o.src.octets());
    header.extend_from_slice(&o.dst.octets());
    header.extend_from_slice(&sport.to_be_bytes());
    header.extend_from_slice(&o.dport.to_be_bytes());
    header.extend_from_slice(&(udp_len as u16).to_be_bytes());
    header.extend_from_slice(&[0, 0]);
    for (dst, src) in f.iter_mut().zip(header.iter()) {
        *dst = *src;
    }
    // A recognisable payload for anyone who captures it.
    for (b, p) in f
        .iter_mut()
        .skip(HEADERS)
        .zip(b"vipgate udpgen ".iter().cycle())
    {
        *b = *p;
    }
    let ip_csum = fold(sum16(f.get(14..34).unwrap_or(&[])));
    if let Some(c) = f.get_mut(24..26) {
        c.copy_from_slice(&ip_csum.to_be_bytes());
    }
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&o.src.octets());
    pseudo.extend_from_slice(&o.dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let udp_csum = match fold(sum16(&pseudo) + sum16(f.get(34..).unwrap_or(&[]))) {
        // Zero on the wire means "no checksum"; its ones' complement twin says the same sum.
        0 => 0xffff,
        c => c,
    };
    if let Some(c) = f.get_mut(40..42) {
        c.copy_from_slice(&udp_csum.to_be_bytes());
    }
    f
}

/// The interface's own MAC, as the kernel shows it in this namespace's sysfs.
fn interface_mac(ifname: &str) -> io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))?;
    parse_mac(text.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{ifname}: {text:?} is not a MAC address"),
        )
    })
}

/// An AF_PACKET socket bound to one interface, closed on drop.
struct PacketSocket(libc::c_int);

impl Drop for PacketSocket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is ours and closed once.
        unsafe { libc::close(self.0) };
    }
}

fn open_socket(ifname: &str) -> io::Result<PacketSocket> {
    let name = CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error());
    }
    // Protocol 0: the socket receives nothing, so incoming traffic costs this process nothing.
    // SAFETY: plain system call with constant arguments.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let sock = PacketSocket(fd);
    // Straight to the driver: the qdisc layer would only add a lock and a queue per frame.
    let one: libc::c_int = 1;
    // SAFETY: `one` outlives the call and its size is passed.
    let rc = unsafe {
        libc::setsockopt(
            sock.0,
            libc::SOL_PACKET,
            libc::PACKET_QDISC_BYPASS,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as libc::c_ushort;
    addr.sll_ifindex = ifindex as libc::c_int;
    // SAFETY: `addr` is a valid sockaddr_ll and its size is passed.
    let rc = unsafe {
        libc::bind(
            sock.0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(sock)
}

/// What a run did.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Report {
    sent: u64,
    retries: u64,
    elapsed: Duration,
}

fn run(o: &Options) -> io::Result<Report> {
    let src_mac = match o.src_mac {
        Some(mac) => mac,
        None => interface_mac(&o.ifname)?,
    };
    let sock = open_socket(&o.ifname)?;
    let frames: Vec<Vec<u8>> = (0..o.flows)
        .map(|flow| build_frame(o, src_mac, flow))
        .collect();
    let mut iovecs: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    // Headers for flows + batch messages, message k carrying frame k % flows: a batch that
    // starts at any flow is one contiguous slice, so the send loop never copies or rebuilds.
    let iov_base = iovecs.as_mut_ptr();
    let mut msgs: Vec<libc::mmsghdr> = (0..o.flows + o.batch)
        .map(|k| {
            // SAFETY: msghdr is plain data; all-zero is valid (no name, no control).
            let mut hdr: libc::msghdr = unsafe { std::mem::zeroed() };
            // SAFETY: k % flows < iovecs.len(); `iovecs` is not moved or resized after this.
            hdr.msg_iov = unsafe { iov_base.add(k % o.flows) };
            hdr.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: hdr,
                msg_len: 0,
            }
        })
        .collect();

    let deadline = Duration::from_secs_f64(o.seconds);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut retries: u64 = 0;
    let mut next = 0usize;
    while sent < o.count {
        let elapsed = start.elapsed();
        if elapsed >= deadline {
            break;
        }
        if let Some(rate) = o.rate {
            // Ahead of schedule: wait until the frames sent so far are due. Sleep for long
            // gaps, spin for short ones (a sleep overshoots by tens of microseconds).
            let due = Duration::from_secs_f64(sent as f64 / rate);
            if due > elapsed {
                let gap = due - elapsed;
                if gap > Duration::from_micros(200) {
                    std::thread::sleep(gap - Duration::from_micros(100));
                }
                continue;
            }
        }
        let want = (o.count - sent).min(o.batch as u64) as usize;
        let Some(window) = msgs.get_mut(next..next + want) else {
            break;
        };
        // SAFETY: `window` holds `want` initialised headers whose iovecs point into `frames`,
        // which lives until the end of this function.
        let n = unsafe {
            libc::sendmmsg(
                sock.0,
                window.as_mut_ptr(),
                want as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                // A full device queue (EAGAIN) or a full peer backlog (ENOBUFS, the frame was
                // dropped) is the normal state of a saturated path: offer the frame again.
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) | Some(libc::EINTR) => {
                    retries += 1;
                    continue;
                }
                _ => return Err(err),
            }
        }
        let n = n as usize;
        sent += n as u64;
        next = (next + n) % o.flows;
    }
    drop(iovecs);
    Ok(Report {
        sent,
        retries,
        elapsed: start.elapsed(),
    })
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = match parse_args(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("udpgen: {e}");
            return ExitCode::from(2);
        }
    };
    match run(&options) {
        Ok(r) => {
            let secs = r.elapsed.as_secs_f64();
            let pps = if secs > 0.0 {
                r.sent as f64 / secs
            } else {
                0.0
            };
            println!(
                "udpgen sent={} seconds={secs:.3} pps={pps:.0} retries={}",
                r.sent, r.retries
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("udpgen: {}: {e}", options.ifname);
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn options() -> Options {
        parse_args(&args(
            "--ifname g0 --dst-mac 02:00:00:00:00:01 --src 198.51.100.100 --dst 203.0.113.10 \
             --src-mac 02:00:00:00:00:02 --flows 4 --size 64",
        ))
        .unwrap()
    }

    #[test]
    fn frames_carry_valid_checksums_and_distinct_ports() {
        let o = options();
        let mut ports = Vec::new();
        for flow in 0..o.flows {
            let f = build_frame(&o, [2, 0, 0, 0, 0, 2], flow);
            assert_eq!(f.len(), 64);
            assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 1]);
            assert_eq!(&f[12..14], &[0x08, 0x00]);
            // A header that includes its own correct checksum sums to 0xffff (folds to zero).
            assert_eq!(fold(sum16(&f[14..34])), 0);
            let mut pseudo = Vec::new();
            pseudo.extend_from_slice(&f[26..34]);
            pseudo.extend_from_slice(&[0, 17]);
            pseudo.extend_from_slice(&f[38..40]);
            assert_eq!(fold(sum16(&pseudo) + sum16(&f[34..])), 0);
            assert_eq!(u16::from_be_bytes([f[16], f[17]]), 50);
            assert_eq!(u16::from_be_bytes([f[38], f[39]]), 30);
            assert_eq!(u16::from_be_bytes([f[36], f[37]]), 5353);
            ports.push(u16::from_be_bytes([f[34], f[35]]));
        }
        assert_eq!(ports, vec![10_000, 10_001, 10_002, 10_003]);
    }

    #[test]
    fn checksum_matches_a_known_header() {
        // The classic example header (RFC 1071 style walk-through): checksum 0xb861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(fold(sum16(&h)), 0xb861);
    }

    #[test]
    fn rejects_what_it_cannot_send() {
        let base =
            "--ifname g0 --dst-mac 02:00:00:00:00:01 --src 198.51.100.100 --dst 203.0.113.10";
        assert!(parse_args(&args(base)).is_ok());
        for extra in [
            "--size 59",
            "--size 1515",
            "--flows 0",
            "--flows 60000",
            "--batch 0",
            "--batch 1025",
            "--seconds 0",
            "--seconds -1",
            "--rate 0",
            "--rate x",
            "--dst-mac 02:00:00:00:00",
            "--src 198.51.100",
            "--bogus 1",
            "--count",
        ] {
            let all = format!("{base} {extra}");
            assert!(parse_args(&args(&all)).is_err(), "{all}");
        }
        assert!(parse_args(&args("--dst-mac 02:00:00:00:00:01")).is_err());
    }

    #[test]
    fn parses_macs() {
        assert_eq!(parse_mac("02:0a:FF:00:00:01"), Some([2, 10, 255, 0, 0, 1]));
        assert_eq!(parse_mac("02:0a:ff:00:00:01:00"), None);
        assert_eq!(parse_mac("02:0a:ff:00:00"), None);
        assert_eq!(parse_mac("zz:0a:ff:00:00:01"), None);
    }
}
