//! Frame builders and a full-recomputation checksum verifier, for tests and benchmarks of
//! this crate and the crates above it (feature `testing`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic,
    missing_docs
)]

use std::net::Ipv4Addr;

use etherparse::{Icmpv4Type, Ipv4Header, PacketBuilder};

use crate::checksum;
use crate::frame::{parse, proto, InnerPorts, Layout, Parsed, Transport};

pub const MAC_CLIENT: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0c];
pub const MAC_GATEWAY: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn builder(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ttl: u8,
) -> etherparse::PacketBuilderStep<etherparse::IpHeaders> {
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_GATEWAY).ipv4(src.octets(), dst.octets(), ttl)
}

/// A TCP segment in an Ethernet frame. `flags` uses the FIN 1, SYN 2, RST 4, PSH 8, ACK 16 bits.
pub fn tcp(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut b = builder(src, dst, 64).tcp(sport, dport, 1000, 65535);
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    if flags & 0x04 != 0 {
        b = b.rst();
    }
    if flags & 0x08 != 0 {
        b = b.psh();
    }
    if flags & 0x10 != 0 {
        b = b.ack(1);
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// A UDP datagram in an Ethernet frame, with its checksum.
pub fn udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    builder(src, dst, 64)
        .udp(sport, dport)
        .write(&mut v, payload)
        .unwrap();
    v
}

/// A UDP datagram whose checksum field is 0 ("no checksum").
pub fn udp_without_checksum(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = udp(src, dst, sport, dport, payload);
    v[14 + 20 + 6] = 0;
    v[14 + 20 + 7] = 0;
    v
}

/// An ICMP echo request or reply.
pub fn icmp_echo(src: Ipv4Addr, dst: Ipv4Addr, request: bool, id: u16, seq: u16) -> Vec<u8> {
    let b = builder(src, dst, 64);
    let b = if request {
        b.icmpv4_echo_request(id, seq)
    } else {
        b.icmpv4_echo_reply(id, seq)
    };
    let mut v = Vec::new();
    b.write(&mut v, b"ping-payload").unwrap();
    v
}

/// An ICMP error of `ty`/`code` from `src` to `dst` quoting `quoted` (an IPv4 datagram as it
/// was sent, from its IP header on; cut to `quote_len` bytes if shorter).
pub fn icmp_error(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ty: u8,
    code: u8,
    quoted: &[u8],
    quote_len: usize,
) -> Vec<u8> {
    let quote = &quoted[..quote_len.min(quoted.len())];
    let t = Icmpv4Type::Unknown {
        type_u8: ty,
        code_u8: code,
        bytes5to8: [0; 4],
    };
    let mut v = Vec::new();
    builder(src, dst, 64)
        .icmpv4(t)
        .write(&mut v, quote)
        .unwrap();
    v
}

/// The IPv4 datagram of an Ethernet frame built here (no VLAN), for quoting in an error.
pub fn datagram(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// Inserts an 802.1Q tag with `id` after the Ethernet addresses.
pub fn with_vlan(frame: &[u8], id: u16) -> Vec<u8> {
    let mut v = Vec::with_capacity(frame.len() + 4);
    v.extend_from_slice(&frame[..12]);
    v.extend_from_slice(&[0x81, 0x00]);
    v.extend_from_slice(&(id & 0x0fff).to_be_bytes());
    v.extend_from_slice(&frame[12..]);
    v
}

/// Splits the IPv4 datagram of `frame` (no VLAN, no IP options) into fragments whose
/// payloads hold `chunk` bytes (a multiple of 8), each a complete Ethernet frame.
pub fn fragments(frame: &[u8], chunk: usize) -> Vec<Vec<u8>> {
    assert!(chunk % 8 == 0 && chunk > 0);
    let (ip, _) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    let payload = &frame[14 + 20..14 + usize::from(ip.total_len)];
    let mut out = Vec::new();
    let mut off = 0;
    while off < payload.len() {
        let end = (off + chunk).min(payload.len());
        let mut h = ip.clone();
        h.more_fragments = end < payload.len();
        h.fragment_offset = etherparse::IpFragOffset::try_new((off / 8) as u16).unwrap();
        h.set_payload_len(end - off).unwrap();
        h.header_checksum = h.calc_header_checksum();
        let mut v = frame[..14].to_vec();
        h.write(&mut v).unwrap();
        v.extend_from_slice(&payload[off..end]);
        out.push(v);
        off = end;
    }
    out
}

/// An IPv6 UDP datagram.
pub fn ipv6_udp() -> Vec<u8> {
    let mut v = Vec::new();
    PacketBuilder::ethernet2(MAC_CLIENT, MAC_GATEWAY)
        .ipv6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            64,
        )
        .udp(1, 2)
        .write(&mut v, b"v6")
        .unwrap();
    v
}

fn verifies(sum: u64) -> bool {
    checksum::fold(sum) == 0xffff
}

/// Checks every checksum of an IPv4 frame by full recomputation: IP header, TCP/UDP over
/// the pseudo header (UDP 0 accepted), ICMP over the message, and for ICMP errors the quoted
/// IP header and, when the whole quoted datagram is present, its transport checksum.
/// Non-first fragments have only the IP header checked.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    let l = match parse(frame) {
        Ok(Parsed::Ipv4(l)) => l,
        other => return Err(format!("not a valid IPv4 frame: {other:?}")),
    };
    if !verifies(checksum::add_bytes(0, &frame[l.l3..l.l4])) {
        return Err("IPv4 header checksum".into());
    }
    if l.is_fragment() {
        return Ok(());
    }
    verify_l4(frame, &l)
}

fn verify_l4(frame: &[u8], l: &Layout) -> Result<(), String> {
    let seg = &frame[l.l4..l.end];
    match l.transport {
        Transport::Tcp { .. } | Transport::Udp { .. } => verify_pseudo(l.src, l.dst, l.proto, seg),
        Transport::IcmpEcho { .. } | Transport::IcmpOther { .. } => {
            if verifies(checksum::add_bytes(0, seg)) {
                Ok(())
            } else {
                Err("ICMP checksum".into())
            }
        }
        Transport::IcmpError { .. } => {
            let inner = l.icmp_inner(frame).map_err(|e| format!("quote: {e:?}"))?;
            if !verifies(checksum::add_bytes(0, seg)) {
                return Err("ICMP error checksum".into());
            }
            if !verifies(checksum::add_bytes(0, &frame[inner.l3..inner.l4])) {
                return Err("quoted IPv4 header checksum".into());
            }
            let total = usize::from(u16::from_be_bytes([
                frame[inner.l3 + 2],
                frame[inner.l3 + 3],
            ]));
            let quoted_end = inner.l3 + total;
            if quoted_end <= l.end {
                let qseg = &frame[inner.l4..quoted_end];
                match inner.ports {
                    InnerPorts::Ports { .. } => {
                        verify_pseudo(inner.src, inner.dst, inner.proto, qseg)
                            .map_err(|e| format!("quoted {e}"))?
                    }
                    InnerPorts::Echo { .. } => {
                        if !verifies(checksum::add_bytes(0, qseg)) {
                            return Err("quoted ICMP checksum".into());
                        }
                    }
                    InnerPorts::None => {}
                }
            }
            Ok(())
        }
        Transport::Fragment | Transport::Other => Ok(()),
    }
}

fn verify_pseudo(src: Ipv4Addr, dst: Ipv4Addr, p: u8, seg: &[u8]) -> Result<(), String> {
    if p == proto::UDP && seg.len() >= 8 && seg[6] == 0 && seg[7] == 0 {
        return Ok(());
    }
    let sum = checksum::add_bytes(
        checksum::pseudo_header_sum(src, dst, p, seg.len() as u16),
        seg,
    );
    if verifies(sum) {
        Ok(())
    } else {
        Err(format!("L4 checksum (proto {p})"))
    }
}

/// The IPv4 layout of a frame that must parse.
pub fn layout(frame: &[u8]) -> Layout {
    match parse(frame) {
        Ok(Parsed::Ipv4(l)) => l,
        other => panic!("not IPv4: {other:?}"),
    }
}
