//! Small raw-socket probes for the system tests, so they need no ping, arping, traceroute or
//! ethtool: ICMP echo, ARP requests, hand-made Ethernet frames, ICMP errors read through
//! `IP_RECVERR`, TCP connections from a chosen local port, transmit checksum offload off.
//!
//! Every function works in the network namespace of the calling thread: call them inside
//! [`crate::Netns::run`] or [`crate::Netns::enter_thread`].

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

const ETH_P_ARP: u16 = 0x0806;
const ETH_P_IP: u16 = 0x0800;
const SIOCETHTOOL: u64 = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;
/// Bound on frames read while waiting for one answer: the deadline bounds the time, this the
/// count, whatever else the interface carries meanwhile.
const MAX_READS: u32 = 10_000;

/// The Internet checksum (RFC 1071) of `data`, ready to store big-endian.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        if let [a, b] = c {
            sum += u32::from(u16::from_be_bytes([*a, *b]));
        }
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop above leaves at most 16 bits.
    !(u16::try_from(sum).unwrap_or(0xffff))
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(r).map_err(|_| io::Error::last_os_error())
}

fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket has no memory arguments; a non-negative result is a new fd we own.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: fd was just returned by socket and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe a live c_int.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            socklen::<libc::c_int>(),
        )
    })
    .map(drop)
}

fn socklen<T>() -> libc::socklen_t {
    libc::socklen_t::try_from(mem::size_of::<T>()).unwrap_or(libc::socklen_t::MAX)
}

/// Waits until `fd` has one of `events` (POLLERR and POLLHUP are always reported) or the
/// time is up. Returns the events seen, 0 on timeout.
fn wait_fd(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: Duration,
) -> io::Result<libc::c_short> {
    let deadline = Instant::now() + timeout;
    // EINTR restarts, at most this many times.
    for _ in 0..100 {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        if r >= 0 {
            return Ok(if r == 0 { 0 } else { pfd.revents });
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(0)
}

/// Waits at most `timeout` for `fd` to be readable (or to have an error or hang-up pending).
/// Returns false on timeout.
///
/// # Errors
/// poll failed.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    wait_fd(fd, libc::POLLIN, timeout).map(|ev| ev != 0)
}

fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::sa_family_t::try_from(libc::AF_INET).unwrap_or(2),
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*addr.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    crate::netns::check_ifname(name)?;
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    Ok(ifr)
}

/// The index of interface `name`.
///
/// # Errors
/// No such interface in this namespace.
pub fn interface_index(name: &str) -> io::Result<u32> {
    let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut ifr = ifreq(name)?;
    // SAFETY: SIOCGIFINDEX reads the name and writes the index into the ifreq we own.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFINDEX as _, &mut ifr) })
        .map_err(|e| io::Error::new(e.kind(), format!("interface {name}: {e}")))?;
    // SAFETY: SIOCGIFINDEX filled the ifindex member of the union.
    let idx = unsafe { ifr.ifr_ifru.ifru_ifindex };
    u32::try_from(idx).map_err(|_| io::Error::other(format!("interface {name}: index {idx}")))
}

/// The MAC address of interface `name`.
///
/// # Errors
/// No such interface in this namespace.
pub fn interface_mac(name: &str) -> io::Result<[u8; 6]> {
    let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut ifr = ifreq(name)?;
    // SAFETY: SIOCGIFHWADDR reads the name and writes the address into the ifreq we own.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFHWADDR as _, &mut ifr) })
        .map_err(|e| io::Error::new(e.kind(), format!("interface {name}: {e}")))?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { ifr.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (m, d) in mac.iter_mut().zip(data.iter()) {
        *m = *d as u8;
    }
    Ok(mac)
}

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

fn ethtool_value(name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut ifr = ifreq(name)?;
    let mut value = EthtoolValue { cmd, data };
    ifr.ifr_ifru.ifru_data = std::ptr::from_mut(&mut value).cast();
    // SAFETY: SIOCETHTOOL with a GTXCSUM/STXCSUM command reads and writes the ethtool_value
    // that ifru_data points to, which lives until after the call.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) })
        .map_err(|e| io::Error::new(e.kind(), format!("ethtool on {name}: {e}")))?;
    Ok(value.data)
}

/// Turns transmit checksum offload off on `name`, like `ethtool -K NAME tx off`: a veth would
/// otherwise hand frames with unfinished checksums to the peer, which a gateway reading raw
/// frames (AF_XDP) would forward unfinished.
///
/// # Errors
/// No such interface, or the driver refuses.
pub fn disable_tx_checksum(name: &str) -> io::Result<()> {
    ethtool_value(name, ETHTOOL_STXCSUM, 0).map(drop)
}

/// Whether transmit checksum offload is on for `name`.
///
/// # Errors
/// No such interface, or the driver does not say.
pub fn tx_checksum_enabled(name: &str) -> io::Result<bool> {
    ethtool_value(name, ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
}

const ETHTOOL_GDRVINFO: u32 = 0x03;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETH_SS_STATS: u32 = 1;
const ETH_GSTRING_LEN: usize = 32;
/// Offset of `n_stats` in `struct ethtool_drvinfo`: cmd, five 32-byte strings, 12 reserved
/// bytes, n_priv_flags.
const DRVINFO_N_STATS: usize = 4 + 5 * 32 + 12 + 4;
/// Size of `struct ethtool_drvinfo`.
const DRVINFO_LEN: usize = DRVINFO_N_STATS + 4 * 4;
/// Statistics read at most (veth has a few per queue).
const MAX_STATS: usize = 4096;

/// Runs one SIOCETHTOOL command whose argument is `buf` (starting with the command word).
fn ethtool_buf(name: &str, buf: &mut [u64]) -> io::Result<()> {
    let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut ifr = ifreq(name)?;
    ifr.ifr_ifru.ifru_data = buf.as_mut_ptr().cast();
    // SAFETY: the command in buf's first word reads and writes at most the structure its
    // header describes, which the caller sized buf for; buf outlives the call.
    cvt(unsafe { libc::ioctl(s.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) })
        .map_err(|e| io::Error::new(e.kind(), format!("ethtool on {name}: {e}")))
        .map(drop)
}

fn u64s_to_bytes(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b: [u8; 4] = bytes.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_ne_bytes(b))
}

/// The driver statistics of `name`, as `ethtool -S NAME` lists them (veth has, per queue,
/// `rx_queue_<n>_xdp_packets` and the like).
///
/// # Errors
/// No such interface, or the driver has no statistics.
pub fn ethtool_stats(name: &str) -> io::Result<Vec<(String, u64)>> {
    let mut info = vec![0u64; DRVINFO_LEN.div_ceil(8)];
    write_u32s(&mut info, &[ETHTOOL_GDRVINFO]);
    ethtool_buf(name, &mut info)?;
    let n = u32_at(&u64s_to_bytes(&info), DRVINFO_N_STATS)
        .map_or(0, |n| usize::try_from(n).unwrap_or(0))
        .min(MAX_STATS);

    // struct ethtool_gstrings: cmd, string_set, len, then the strings.
    let mut strings = vec![0u64; (12 + n * ETH_GSTRING_LEN).div_ceil(8)];
    write_u32s(
        &mut strings,
        &[
            ETHTOOL_GSTRINGS,
            ETH_SS_STATS,
            u32::try_from(n).unwrap_or(0),
        ],
    );
    ethtool_buf(name, &mut strings)?;
    let sbytes = u64s_to_bytes(&strings);

    // struct ethtool_stats: cmd, n_stats, then the u64 values (8-byte aligned at 8).
    let mut stats = vec![0u64; 1 + n];
    write_u32s(&mut stats, &[ETHTOOL_GSTATS, u32::try_from(n).unwrap_or(0)]);
    ethtool_buf(name, &mut stats)?;

    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let at = 12 + i * ETH_GSTRING_LEN;
        let raw = sbytes.get(at..at + ETH_GSTRING_LEN).unwrap_or_default();
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        let label = String::from_utf8_lossy(raw.get(..end).unwrap_or_default()).into_owned();
        out.push((label, stats.get(1 + i).copied().unwrap_or(0)));
    }
    Ok(out)
}

/// Writes 32-bit words at the start of a u64 buffer, in memory order.
fn write_u32s(buf: &mut [u64], words: &[u32]) {
    let mut bytes = u64s_to_bytes(buf);
    for (i, w) in words.iter().enumerate() {
        if let Some(dst) = bytes.get_mut(i * 4..i * 4 + 4) {
            dst.copy_from_slice(&w.to_ne_bytes());
        }
    }
    for (word, chunk) in buf.iter_mut().zip(bytes.chunks_exact(8)) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        *word = u64::from_ne_bytes(b);
    }
}

/// An identifier for ICMP echo probes: distinct per call, mixed with the process id so that
/// parallel test processes differ too.
fn echo_id() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(1);
    let pid = u16::try_from(std::process::id() & 0xffff).unwrap_or(0);
    pid.rotate_left(5) ^ NEXT.fetch_add(0x9e37, Ordering::Relaxed)
}

/// Sends `count` ICMP echo requests to `dst` (a raw socket, so no `ping` binary), each
/// waiting at most `timeout` for its reply. Returns how many were answered by `dst` with
/// the right identifier, sequence number and payload.
///
/// # Errors
/// The raw socket could not be opened, or sending failed (no route, for example).
pub fn ping(dst: Ipv4Addr, count: u16, timeout: Duration) -> io::Result<u16> {
    let fd = socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)?;
    let id = echo_id();
    let to = sockaddr_in(SocketAddrV4::new(dst, 0));
    let mut answered = 0;
    for seq in 0..count {
        let mut req = [0u8; 8 + 24];
        req[0] = 8;
        req[4..6].copy_from_slice(&id.to_be_bytes());
        req[6..8].copy_from_slice(&seq.to_be_bytes());
        for (i, b) in req[8..].iter_mut().enumerate() {
            *b = (i as u8) ^ (seq as u8);
        }
        let c = checksum(&req);
        req[2..4].copy_from_slice(&c.to_be_bytes());
        // SAFETY: buffer and address are live for the call, lengths match.
        cvt_size(unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                std::ptr::from_ref(&to).cast(),
                socklen::<libc::sockaddr_in>(),
            )
        })?;
        let deadline = Instant::now() + timeout;
        for _ in 0..MAX_READS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || wait_fd(fd.as_fd(), libc::POLLIN, left)? == 0 {
                break;
            }
            let mut buf = [0u8; 2048];
            // SAFETY: buf is live and writable for its length.
            let n = cvt_size(unsafe {
                libc::recv(
                    fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            });
            let Ok(n) = n else { continue };
            let pkt = buf.get(..n).unwrap_or_default();
            if is_echo_reply(pkt, dst, id, seq, req.get(8..).unwrap_or_default()) {
                answered += 1;
                break;
            }
        }
    }
    Ok(answered)
}

fn is_echo_reply(pkt: &[u8], from: Ipv4Addr, id: u16, seq: u16, payload: &[u8]) -> bool {
    let Some(&vihl) = pkt.first() else {
        return false;
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    let src = match pkt.get(12..16) {
        Some(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d),
        _ => return false,
    };
    let Some(icmp) = pkt.get(ihl..) else {
        return false;
    };
    src == from
        && icmp.first() == Some(&0)
        && icmp.get(4..6) == Some(&id.to_be_bytes()[..])
        && icmp.get(6..8) == Some(&seq.to_be_bytes()[..])
        && icmp.get(8..) == Some(payload)
        && checksum(icmp) == 0
}

/// An AF_PACKET socket on one interface, sending whole Ethernet frames as given.
#[derive(Debug)]
pub struct RawLink {
    fd: OwnedFd,
    ifindex: i32,
    mac: [u8; 6],
}

impl RawLink {
    /// Opens interface `name` for sending (this socket receives nothing).
    ///
    /// # Errors
    /// No such interface, or not allowed (needs CAP_NET_RAW).
    pub fn open(name: &str) -> io::Result<RawLink> {
        Self::open_proto(name, 0)
    }

    fn open_proto(name: &str, proto: u16) -> io::Result<RawLink> {
        let ifindex = i32::try_from(interface_index(name)?).map_err(io::Error::other)?;
        let mac = interface_mac(name)?;
        let fd = socket(
            libc::AF_PACKET,
            libc::SOCK_RAW,
            libc::c_int::from(proto.to_be()),
        )?;
        let mut sll = sockaddr_ll(ifindex, proto, [0; 6]);
        sll.sll_halen = 0;
        // SAFETY: sll is a live sockaddr_ll of the length given.
        cvt(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                std::ptr::from_ref(&sll).cast(),
                socklen::<libc::sockaddr_ll>(),
            )
        })?;
        Ok(RawLink { fd, ifindex, mac })
    }

    /// The interface's MAC address (for source addresses of built frames).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// Sends one frame, Ethernet header included, exactly as given (at least 14 bytes: the
    /// kernel refuses shorter Ethernet frames).
    ///
    /// # Errors
    /// The kernel refused the frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let mut dst = [0u8; 6];
        if let Some(d) = frame.get(..6) {
            dst.copy_from_slice(d);
        }
        let proto = match frame.get(12..14) {
            Some(&[a, b]) => u16::from_be_bytes([a, b]),
            _ => 0,
        };
        let sll = sockaddr_ll(self.ifindex, proto, dst);
        // SAFETY: frame and sll are live for the call, lengths match.
        let n = cvt_size(unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&sll).cast(),
                socklen::<libc::sockaddr_ll>(),
            )
        })?;
        if n == frame.len() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "sent {n} of {} bytes",
                frame.len()
            )))
        }
    }

    /// Waits at most `timeout` for a frame; returns it, or None on timeout.
    fn recv(&self, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        if wait_fd(self.fd.as_fd(), libc::POLLIN, timeout)? == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 2048];
        // SAFETY: buf is live and writable for its length.
        let n = cvt_size(unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        })?;
        buf.truncate(n);
        Ok(Some(buf))
    }
}

fn sockaddr_ll(ifindex: i32, proto: u16, dst: [u8; 6]) -> libc::sockaddr_ll {
    let mut addr = [0u8; 8];
    addr[..6].copy_from_slice(&dst);
    libc::sockaddr_ll {
        sll_family: libc::c_ushort::try_from(libc::AF_PACKET).unwrap_or(17),
        sll_protocol: proto.to_be(),
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 6,
        sll_addr: addr,
    }
}

/// An ARP request frame (broadcast) from `mac`/`sender` asking for `target`.
pub fn arp_request(mac: [u8; 6], sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(42);
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ETH_P_ARP.to_be_bytes());
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}

/// Asks for `target`'s MAC on interface `ifname` with ARP requests from `sender` (like
/// `arping -c ATTEMPTS`): each request waits at most `timeout` for a reply from `target`
/// addressed back to `sender`. Returns the MAC announced, None if nobody answered.
///
/// # Errors
/// No such interface, or the socket failed.
pub fn arp_query(
    ifname: &str,
    sender: Ipv4Addr,
    target: Ipv4Addr,
    attempts: u32,
    timeout: Duration,
) -> io::Result<Option<[u8; 6]>> {
    let link = RawLink::open_proto(ifname, ETH_P_ARP)?;
    let req = arp_request(link.mac, sender, target);
    for _ in 0..attempts {
        link.send(&req)?;
        let deadline = Instant::now() + timeout;
        for _ in 0..MAX_READS {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let Some(f) = link.recv(left)? else { break };
            if let Some(mac) = arp_reply_from(&f, target, sender) {
                return Ok(Some(mac));
            }
        }
    }
    Ok(None)
}

/// The sender MAC of an ARP reply from `from` to `to`, if `f` is one.
fn arp_reply_from(f: &[u8], from: Ipv4Addr, to: Ipv4Addr) -> Option<[u8; 6]> {
    if f.get(12..14)? != ETH_P_ARP.to_be_bytes()
        || f.get(14..22)? != [0, 1, 8, 0, 6, 4, 0, 2]
        || f.get(28..32)? != from.octets()
        || f.get(38..42)? != to.octets()
    {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(f.get(22..28)?);
    Some(mac)
}

/// An ICMP error the kernel attached to a socket (`IP_RECVERR`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpErrorReport {
    /// The errno the error maps to (ECONNREFUSED for port unreachable, EHOSTUNREACH for time
    /// exceeded).
    pub errno: i32,
    /// Where it came from: 2 (`SO_EE_ORIGIN_ICMP`) for an ICMP message, 1 for local.
    pub origin: u8,
    /// ICMP type (3 unreachable, 11 time exceeded).
    pub icmp_type: u8,
    /// ICMP code.
    pub icmp_code: u8,
    /// The address that sent the ICMP message.
    pub offender: Option<Ipv4Addr>,
}

/// Turns on `IP_RECVERR`, so ICMP errors for the socket's datagrams queue up with their
/// details (read with [`read_icmp_error`]).
///
/// # Errors
/// setsockopt failed.
pub fn enable_recverr(socket: &UdpSocket) -> io::Result<()> {
    set_int_opt(socket.as_raw_fd(), libc::IPPROTO_IP, libc::IP_RECVERR, 1)
}

/// Sends `payload` on a connected UDP socket (with [`enable_recverr`] on) until an ICMP error
/// comes back for it: at most `attempts` datagrams, each waiting at most `timeout`.
///
/// # Errors
/// Sending or reading failed in another way than with the awaited error.
pub fn udp_icmp_error(
    socket: &UdpSocket,
    payload: &[u8],
    attempts: u32,
    timeout: Duration,
) -> io::Result<Option<IcmpErrorReport>> {
    for _ in 0..attempts {
        if let Some(r) = read_icmp_error(socket)? {
            return Ok(Some(r));
        }
        if let Err(e) = socket.send(payload) {
            // A pending error from an earlier datagram surfaces here; it is in the queue.
            if e.raw_os_error().is_none() {
                return Err(e);
            }
        }
        // Events 0: poll reports POLLERR, which is what a queued error raises.
        if wait_fd(socket.as_fd(), 0, timeout)? != 0 {
            if let Some(r) = read_icmp_error(socket)? {
                return Ok(Some(r));
            }
        }
    }
    Ok(None)
}

/// Reads one queued error (`MSG_ERRQUEUE`) without waiting.
///
/// # Errors
/// recvmsg failed other than with "nothing queued".
pub fn read_icmp_error(socket: &UdpSocket) -> io::Result<Option<IcmpErrorReport>> {
    let mut data = [0u8; 512];
    // u64s: cmsg headers need their alignment.
    let mut control = [0u64; 64];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    let mut from: libc::sockaddr_in = sockaddr_in(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));
    // SAFETY: msghdr is plain data; all zeroes is valid before the fields are set.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = std::ptr::from_mut(&mut from).cast();
    msg.msg_namelen = socklen::<libc::sockaddr_in>();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = mem::size_of_val(&control);
    // SAFETY: every pointer in msg refers to a live buffer of the length given.
    let r = unsafe {
        libc::recvmsg(
            socket.as_raw_fd(),
            &mut msg,
            libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(e)
        };
    }
    // SAFETY: msg was filled by recvmsg; the CMSG macros stay within msg_controllen.
    let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
    for _ in 0..16 {
        if cmsg.is_null() {
            break;
        }
        // SAFETY: cmsg is non-null and within the control buffer.
        let hdr = unsafe { std::ptr::read_unaligned(cmsg) };
        if hdr.cmsg_level == libc::IPPROTO_IP && hdr.cmsg_type == libc::IP_RECVERR {
            // SAFETY: an IP_RECVERR message carries a sock_extended_err followed by the
            // offender's sockaddr_in, both inside the control buffer.
            let (ee, offender) = unsafe {
                let p = libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>();
                let ee = std::ptr::read_unaligned(p);
                let sa = libc::SO_EE_OFFENDER(p).cast::<libc::sockaddr_in>();
                (ee, std::ptr::read_unaligned(sa))
            };
            let offender = (i32::from(offender.sin_family) == libc::AF_INET)
                .then(|| Ipv4Addr::from(u32::from_be(offender.sin_addr.s_addr)));
            return Ok(Some(IcmpErrorReport {
                errno: i32::try_from(ee.ee_errno).unwrap_or(-1),
                origin: ee.ee_origin,
                icmp_type: ee.ee_type,
                icmp_code: ee.ee_code,
                offender,
            }));
        }
        // SAFETY: as above.
        cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
    }
    Ok(None)
}

/// Sets the TTL of datagrams sent on `socket`.
///
/// # Errors
/// setsockopt failed.
pub fn set_ttl(socket: &UdpSocket, ttl: u8) -> io::Result<()> {
    socket.set_ttl(u32::from(ttl))
}

/// Connects a TCP socket bound to `local` (port included, `SO_REUSEADDR` on) to `remote`,
/// waiting at most `timeout`.
///
/// # Errors
/// bind or connect failed, or the timeout passed.
pub fn tcp_connect_from(
    local: SocketAddrV4,
    remote: SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let fd = socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK, 0)?;
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    let l = sockaddr_in(local);
    // SAFETY: l is a live sockaddr_in of the length given.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&l).cast(),
            socklen::<libc::sockaddr_in>(),
        )
    })
    .map_err(|e| io::Error::new(e.kind(), format!("bind {local}: {e}")))?;
    let r = sockaddr_in(remote);
    // SAFETY: r is a live sockaddr_in of the length given.
    let c = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            std::ptr::from_ref(&r).cast(),
            socklen::<libc::sockaddr_in>(),
        )
    };
    if c < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
        if wait_fd(fd.as_fd(), libc::POLLOUT, timeout)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect {local} -> {remote}: no answer within {timeout:?}"),
            ));
        }
        let mut err: libc::c_int = 0;
        let mut len = socklen::<libc::c_int>();
        // SAFETY: err and len are live and sized for SO_ERROR.
        cvt(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                std::ptr::from_mut(&mut err).cast(),
                &mut len,
            )
        })?;
        if err != 0 {
            return Err(io::Error::from_raw_os_error(err));
        }
    }
    let stream = TcpStream::from(fd);
    stream.set_nonblocking(false)?;
    Ok(stream)
}

/// An Ethernet header: destination, source, ethertype.
pub fn ethernet(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(64);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// A 20-byte IPv4 header (no options, DF clear, TTL 64) with a correct checksum.
pub fn ipv4_header(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload_len: usize,
    ident: u16,
) -> [u8; 20] {
    let total = u16::try_from(20 + payload_len).unwrap_or(u16::MAX);
    let mut h = [0u8; 20];
    h[0] = 0x45;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&ident.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

/// A whole Ethernet + IPv4 frame around `payload`.
pub fn ipv4_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = ethernet(dst_mac, src_mac, ETH_P_IP);
    f.extend_from_slice(&ipv4_header(src, dst, proto, payload.len(), 0x1234));
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_rfc1071_example() {
        // RFC 1071 section 3 example: sum 0xddf2, checksum its complement.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(checksum(&data), !0xddf2);
        // Odd length: the last byte is the high half of a word.
        assert_eq!(checksum(&[0x01]), !0x0100);
    }

    #[test]
    fn built_ipv4_header_verifies() {
        let h = ipv4_header(
            Ipv4Addr::new(203, 0, 113, 254),
            Ipv4Addr::new(203, 0, 113, 10),
            17,
            8,
            7,
        );
        assert_eq!(checksum(&h), 0);
        assert_eq!(u16::from_be_bytes([h[2], h[3]]), 28);
        assert_eq!(h[9], 17);
    }

    #[test]
    fn arp_request_and_reply_match() {
        let me = [2, 0, 0, 0, 0, 1];
        let a = Ipv4Addr::new(203, 0, 113, 254);
        let b = Ipv4Addr::new(203, 0, 113, 10);
        let req = arp_request(me, a, b);
        assert_eq!(req.len(), 42);
        // A request is not a reply.
        assert_eq!(arp_reply_from(&req, a, b), None);
        let them = [2, 0, 0, 0, 0, 2];
        let mut rep = ethernet(me, them, ETH_P_ARP);
        rep.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 2]);
        rep.extend_from_slice(&them);
        rep.extend_from_slice(&b.octets());
        rep.extend_from_slice(&me);
        rep.extend_from_slice(&a.octets());
        assert_eq!(arp_reply_from(&rep, b, a), Some(them));
        // From someone else, or to someone else: not ours.
        assert_eq!(arp_reply_from(&rep, a, a), None);
        assert_eq!(arp_reply_from(&rep, b, b), None);
        assert_eq!(arp_reply_from(&rep[..30], b, a), None);
    }

    #[test]
    fn echo_reply_is_matched_on_everything() {
        let from = Ipv4Addr::new(203, 0, 113, 10);
        let payload = [1u8, 2, 3, 4];
        let mut icmp = vec![0u8, 0, 0, 0, 0x12, 0x34, 0, 7];
        icmp.extend_from_slice(&payload);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut pkt =
            ipv4_header(from, Ipv4Addr::new(198, 51, 100, 100), 1, icmp.len(), 1).to_vec();
        pkt.extend_from_slice(&icmp);
        assert!(is_echo_reply(&pkt, from, 0x1234, 7, &payload));
        assert!(!is_echo_reply(&pkt, from, 0x1235, 7, &payload));
        assert!(!is_echo_reply(&pkt, from, 0x1234, 8, &payload));
        assert!(!is_echo_reply(
            &pkt,
            Ipv4Addr::new(203, 0, 113, 11),
            0x1234,
            7,
            &payload
        ));
        assert!(!is_echo_reply(&pkt, from, 0x1234, 7, &[1, 2, 3, 5]));
        assert!(!is_echo_reply(&pkt[..25], from, 0x1234, 7, &payload));
    }
}
