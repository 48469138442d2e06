//! Parsing a received frame into a [`Layout`]: where each header starts and the fields the
//! engine needs, checked once so that the rewrites that follow cannot go out of bounds.
//!
//! Contract: [`parse`] is the only entry for untrusted bytes. A [`Layout`] it returns describes
//! exactly the buffer it parsed, and the rewrite functions rely on its offsets being in range;
//! they still use checked access, so a layout paired with the wrong buffer fails softly
//! instead of panicking.

use std::net::Ipv4Addr;

use etherparse::{
    EtherType, Ethernet2HeaderSlice, Ipv4HeaderSlice, SingleVlanHeaderSlice, TcpHeaderSlice,
    UdpHeaderSlice,
};

use crate::checksum;

/// Length of an Ethernet II header.
pub const ETH_LEN: usize = 14;
/// Length of one 802.1Q tag.
pub const VLAN_LEN: usize = 4;

/// IPv4 protocol numbers the engine understands.
pub mod proto {
    /// ICMPv4.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// ICMPv4 message types the engine handles.
pub mod icmp_type {
    /// Echo reply.
    pub const ECHO_REPLY: u8 = 0;
    /// Destination unreachable (code 4: fragmentation needed).
    pub const DEST_UNREACHABLE: u8 = 3;
    /// Echo request.
    pub const ECHO_REQUEST: u8 = 8;
    /// Time exceeded.
    pub const TIME_EXCEEDED: u8 = 11;
    /// Parameter problem.
    pub const PARAMETER_PROBLEM: u8 = 12;
}

/// What a frame carries, as far as the gateway cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// An IPv4 datagram, fully checked.
    Ipv4(Layout),
    /// An ARP packet starting at this offset (after Ethernet and an optional VLAN tag).
    Arp {
        /// VLAN id of the tag, if the frame had one.
        vlan: Option<u16>,
        /// Offset of the ARP packet in the frame.
        offset: usize,
    },
    /// An IPv6 packet: recognised so it can be dropped with its own reason.
    Ipv6,
    /// Any other ethertype.
    Other(u16),
}

/// Why a frame was refused. Each variant is one drop reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// The frame ends before a header does.
    Truncated {
        /// The layer that did not fit.
        layer: Layer,
        /// Bytes that layer needed from its start.
        needed: usize,
        /// Bytes there were.
        available: usize,
    },
    /// IPv4 header fields that no valid datagram has (version, IHL, total length).
    BadIpv4Header,
    /// The IPv4 header checksum does not verify.
    BadIpv4Checksum,
    /// A TCP header whose data offset is below 5 words.
    BadTcpHeader,
    /// An ICMP error whose embedded datagram is not a well-formed IPv4 header and 8 bytes.
    BadIcmpError,
    /// A first fragment too short to hold the transport header (RFC 1858 tiny fragments).
    TinyFragment,
}

/// A protocol layer, for [`ParseError::Truncated`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// Ethernet II.
    Ethernet,
    /// 802.1Q tag.
    Vlan,
    /// IPv4 header.
    Ipv4,
    /// TCP, UDP or ICMP header.
    Transport,
}

/// Offsets and fields of a checked IPv4 frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// VLAN id of the tag, if the frame had one.
    pub vlan: Option<u16>,
    /// Offset of the IPv4 header.
    pub l3: usize,
    /// Offset of the IPv4 payload (the transport header in a first fragment).
    pub l4: usize,
    /// Offset just past the datagram (Ethernet padding may follow).
    pub end: usize,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// Time to live.
    pub ttl: u8,
    /// Identification (for matching fragments).
    pub ident: u16,
    /// Fragment offset in 8-byte units.
    pub frag_offset: u16,
    /// More-fragments flag.
    pub more_fragments: bool,
    /// The transport header, as far as it is present.
    pub transport: Transport,
}

impl Layout {
    /// True for any fragment of a fragmented datagram, the first one included.
    pub fn is_fragment(&self) -> bool {
        self.more_fragments || self.frag_offset != 0
    }

    /// The embedded datagram of an ICMP error, from the frame this layout was parsed from.
    ///
    /// # Errors
    /// [`ParseError::BadIcmpError`] if the layout is not an ICMP error of `frame`.
    pub fn icmp_inner(&self, frame: &[u8]) -> Result<Inner, ParseError> {
        if !matches!(self.transport, Transport::IcmpError { .. }) {
            return Err(ParseError::BadIcmpError);
        }
        let quote = frame
            .get(self.l4 + 8..self.end)
            .ok_or(ParseError::BadIcmpError)?;
        parse_inner(self.l4 + 8, quote)
    }
}

/// The transport header of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP.
    Tcp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
        /// Flag bits (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
        flags: u8,
    },
    /// UDP.
    Udp {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMP echo request or reply.
    IcmpEcho {
        /// True for a request (type 8), false for a reply (type 0).
        request: bool,
        /// Identifier.
        id: u16,
    },
    /// ICMP error carrying the start of the datagram that caused it (checked by [`parse`];
    /// its layout comes from [`Layout::icmp_inner`], kept out of here so that the layout every
    /// packet carries stays small).
    IcmpError {
        /// ICMP type.
        ty: u8,
        /// ICMP code.
        code: u8,
    },
    /// Any other ICMP message.
    IcmpOther {
        /// ICMP type.
        ty: u8,
    },
    /// A fragment after the first: no transport header.
    Fragment,
    /// Another protocol.
    Other,
}

/// The datagram embedded in an ICMP error (RFC 792: its IP header and at least 8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inner {
    /// Offset of the embedded IPv4 header in the frame.
    pub l3: usize,
    /// Offset of the embedded transport header.
    pub l4: usize,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol number.
    pub proto: u8,
    /// Ports (TCP, UDP) or the echo identifier.
    pub ports: InnerPorts,
}

/// The transport part of an embedded datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InnerPorts {
    /// TCP or UDP ports.
    Ports {
        /// Source port.
        sport: u16,
        /// Destination port.
        dport: u16,
    },
    /// ICMP echo request or reply.
    Echo {
        /// True for a request.
        request: bool,
        /// Identifier.
        id: u16,
    },
    /// Another protocol (or a non-first fragment): no ports.
    None,
}

#[inline]
fn truncated(layer: Layer, needed: usize, available: usize) -> ParseError {
    ParseError::Truncated {
        layer,
        needed,
        available,
    }
}

/// Parses a received Ethernet frame.
///
/// # Errors
/// Every malformation the gateway must not forward gets its own [`ParseError`].
#[inline]
pub fn parse(frame: &[u8]) -> Result<Parsed, ParseError> {
    let eth = Ethernet2HeaderSlice::from_slice(frame)
        .map_err(|_| truncated(Layer::Ethernet, ETH_LEN, frame.len()))?;
    let mut ether_type = eth.ether_type();
    let mut offset = ETH_LEN;
    let mut vlan = None;
    if ether_type == EtherType::VLAN_TAGGED_FRAME {
        let rest = frame.get(offset..).unwrap_or_default();
        let tag = SingleVlanHeaderSlice::from_slice(rest)
            .map_err(|_| truncated(Layer::Vlan, VLAN_LEN, rest.len()))?;
        vlan = Some(tag.vlan_identifier().value());
        ether_type = tag.ether_type();
        offset += VLAN_LEN;
    }
    match ether_type {
        EtherType::IPV4 => parse_ipv4(frame, offset, vlan).map(Parsed::Ipv4),
        EtherType::ARP => Ok(Parsed::Arp { vlan, offset }),
        EtherType::IPV6 => Ok(Parsed::Ipv6),
        other => Ok(Parsed::Other(other.0)),
    }
}

#[inline]
fn parse_ipv4(frame: &[u8], l3: usize, vlan: Option<u16>) -> Result<Layout, ParseError> {
    let rest = frame.get(l3..).unwrap_or_default();
    let ip = Ipv4HeaderSlice::from_slice(rest).map_err(|e| match e {
        etherparse::err::ipv4::HeaderSliceError::Len(l) => {
            truncated(Layer::Ipv4, l.required_len, l.len)
        }
        etherparse::err::ipv4::HeaderSliceError::Content(_) => ParseError::BadIpv4Header,
    })?;
    let header_len = ip.slice().len();
    let total_len = usize::from(ip.total_len());
    if total_len < header_len {
        return Err(ParseError::BadIpv4Header);
    }
    if total_len > rest.len() {
        return Err(truncated(Layer::Ipv4, total_len, rest.len()));
    }
    // A router validates the header checksum (RFC 1812 5.2.2); a rewrite would otherwise
    // turn a corrupt header into one that verifies.
    if checksum::fold(checksum::add_bytes(0, ip.slice())) != 0xffff {
        return Err(ParseError::BadIpv4Checksum);
    }
    let l4 = l3 + header_len;
    let end = l3 + total_len;
    let frag_offset = ip.fragments_offset().value();
    let payload = frame.get(l4..end).unwrap_or_default();
    let transport = if frag_offset != 0 {
        Transport::Fragment
    } else {
        let t = parse_transport(l4, payload, ip.protocol().0)?;
        if ip.more_fragments() && matches!(t, Transport::IcmpError { .. }) {
            // A fragmented ICMP error cannot be translated safely: the embedded datagram
            // may be cut, and RFC 1812 routers do not fragment errors anyway.
            return Err(ParseError::BadIcmpError);
        }
        t
    };
    Ok(Layout {
        vlan,
        l3,
        l4,
        end,
        src: ip.source_addr(),
        dst: ip.destination_addr(),
        proto: ip.protocol().0,
        ttl: ip.ttl(),
        ident: ip.identification(),
        frag_offset,
        more_fragments: ip.more_fragments(),
        transport,
    })
}

#[inline]
fn tiny(len: usize, needed: usize) -> ParseError {
    if len == 0 {
        truncated(Layer::Transport, needed, len)
    } else {
        ParseError::TinyFragment
    }
}

#[inline]
fn parse_transport(l4: usize, payload: &[u8], proto: u8) -> Result<Transport, ParseError> {
    match proto {
        proto::TCP => {
            let tcp = TcpHeaderSlice::from_slice(payload).map_err(|e| match e {
                etherparse::err::tcp::HeaderSliceError::Len(l) => tiny(l.len, l.required_len),
                etherparse::err::tcp::HeaderSliceError::Content(_) => ParseError::BadTcpHeader,
            })?;
            let flags = payload.get(13).copied().unwrap_or(0);
            Ok(Transport::Tcp {
                sport: tcp.source_port(),
                dport: tcp.destination_port(),
                flags,
            })
        }
        proto::UDP => {
            let udp = UdpHeaderSlice::from_slice(payload).map_err(|l| tiny(l.len, 8))?;
            Ok(Transport::Udp {
                sport: udp.source_port(),
                dport: udp.destination_port(),
            })
        }
        proto::ICMP => parse_icmp(l4, payload),
        _ => Ok(Transport::Other),
    }
}

#[inline]
fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

#[inline]
fn parse_icmp(l4: usize, payload: &[u8]) -> Result<Transport, ParseError> {
    if payload.len() < 8 {
        return Err(tiny(payload.len(), 8));
    }
    let ty = payload.first().copied().unwrap_or(0);
    let code = payload.get(1).copied().unwrap_or(0);
    match ty {
        icmp_type::ECHO_REQUEST | icmp_type::ECHO_REPLY => Ok(Transport::IcmpEcho {
            request: ty == icmp_type::ECHO_REQUEST,
            id: be16(payload, 4).unwrap_or(0),
        }),
        icmp_type::DEST_UNREACHABLE | icmp_type::TIME_EXCEEDED | icmp_type::PARAMETER_PROBLEM => {
            // Checked now, so that a malformed quote is a parse error; the engine reads it
            // again (Layout::icmp_inner) only for the rare errors it translates.
            parse_inner(l4 + 8, payload.get(8..).unwrap_or_default())?;
            Ok(Transport::IcmpError { ty, code })
        }
        _ => Ok(Transport::IcmpOther { ty }),
    }
}

#[inline]
fn parse_inner(l3: usize, data: &[u8]) -> Result<Inner, ParseError> {
    let ip = Ipv4HeaderSlice::from_slice(data).map_err(|_| ParseError::BadIcmpError)?;
    let header_len = ip.slice().len();
    let l4_bytes = data.get(header_len..).unwrap_or_default();
    // RFC 792: the error carries the IP header and the first 64 bits of the datagram.
    if l4_bytes.len() < 8 {
        return Err(ParseError::BadIcmpError);
    }
    let proto = ip.protocol().0;
    let ports = if ip.fragments_offset().value() != 0 {
        InnerPorts::None
    } else {
        match proto {
            proto::TCP | proto::UDP => InnerPorts::Ports {
                sport: be16(l4_bytes, 0).unwrap_or(0),
                dport: be16(l4_bytes, 2).unwrap_or(0),
            },
            proto::ICMP => match l4_bytes.first().copied() {
                Some(t @ (icmp_type::ECHO_REQUEST | icmp_type::ECHO_REPLY)) => InnerPorts::Echo {
                    request: t == icmp_type::ECHO_REQUEST,
                    id: be16(l4_bytes, 4).unwrap_or(0),
                },
                _ => InnerPorts::None,
            },
            _ => InnerPorts::None,
        }
    };
    Ok(Inner {
        l3,
        l4: l3 + header_len,
        src: ip.source_addr(),
        dst: ip.destination_addr(),
        proto,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{self, layout};

    const A: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const B: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);

    #[test]
    fn parses_tcp() {
        let f = testing::tcp(A, B, 40000, 443, 0x02, b"");
        let l = layout(&f);
        assert_eq!(
            (l.src, l.dst, l.proto, l.l3, l.l4, l.end),
            (A, B, 6, 14, 34, 54)
        );
        assert_eq!(
            l.transport,
            Transport::Tcp {
                sport: 40000,
                dport: 443,
                flags: 0x02
            }
        );
        assert!(!l.is_fragment());
        assert_eq!(l.vlan, None);
    }

    #[test]
    fn parses_udp_and_vlan() {
        let f = testing::with_vlan(&testing::udp(A, B, 5353, 53, b"query"), 7);
        let l = layout(&f);
        assert_eq!(l.vlan, Some(7));
        assert_eq!(l.l3, 18);
        assert_eq!(
            l.transport,
            Transport::Udp {
                sport: 5353,
                dport: 53
            }
        );
    }

    #[test]
    fn parses_echo_both_ways() {
        let l = layout(&testing::icmp_echo(A, B, true, 77, 1));
        assert_eq!(
            l.transport,
            Transport::IcmpEcho {
                request: true,
                id: 77
            }
        );
        let l = layout(&testing::icmp_echo(B, A, false, 78, 1));
        assert_eq!(
            l.transport,
            Transport::IcmpEcho {
                request: false,
                id: 78
            }
        );
    }

    #[test]
    fn parses_icmp_error_with_quote() {
        let sent = testing::udp(A, B, 1234, 33434, b"probe");
        let f = testing::icmp_error(
            B,
            A,
            icmp_type::DEST_UNREACHABLE,
            3,
            testing::datagram(&sent),
            28,
        );
        let l = layout(&f);
        let inner = l.icmp_inner(&f).unwrap();
        match l.transport {
            Transport::IcmpError { ty: 3, code: 3 } => {
                assert_eq!((inner.src, inner.dst, inner.proto), (A, B, 17));
                assert_eq!(
                    inner.ports,
                    InnerPorts::Ports {
                        sport: 1234,
                        dport: 33434
                    }
                );
                assert_eq!(inner.l3, l.l4 + 8);
                assert_eq!(inner.l4, inner.l3 + 20);
            }
            other => panic!("{other:?}"),
        }
        // A quote shorter than the IP header and 8 bytes is refused.
        let short = testing::icmp_error(B, A, 11, 0, testing::datagram(&sent), 27);
        assert_eq!(parse(&short), Err(ParseError::BadIcmpError));
    }

    #[test]
    fn recognises_other_ethertypes() {
        assert_eq!(parse(&testing::ipv6_udp()), Ok(Parsed::Ipv6));
        let mut f = testing::udp(A, B, 1, 2, b"");
        f[12] = 0x88;
        f[13] = 0xcc;
        assert_eq!(parse(&f), Ok(Parsed::Other(0x88cc)));
    }

    #[test]
    fn fragments_first_has_ports_rest_not() {
        let whole = testing::udp(A, B, 1111, 2222, &[7u8; 100]);
        let frags = testing::fragments(&whole, 48);
        assert_eq!(frags.len(), 3);
        let first = layout(&frags[0]);
        assert!(first.more_fragments && first.is_fragment());
        assert_eq!(
            first.transport,
            Transport::Udp {
                sport: 1111,
                dport: 2222
            }
        );
        let second = layout(&frags[1]);
        assert_eq!(second.frag_offset, 6);
        assert_eq!(second.transport, Transport::Fragment);
        assert_eq!(second.ident, first.ident);
    }

    #[test]
    fn tiny_first_fragment_refused() {
        let whole = testing::tcp(A, B, 1, 2, 0x10, &[0u8; 64]);
        let frags = testing::fragments(&whole, 16);
        assert_eq!(parse(&frags[0]), Err(ParseError::TinyFragment));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let f = testing::tcp(A, B, 40000, 443, 0x18, b"hello");
        for cut in 0..f.len() {
            assert!(parse(&f[..cut]).is_err(), "cut at {cut} parsed");
        }
        // Ethernet padding after the datagram is fine.
        let mut padded = f.clone();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(layout(&padded).end, f.len());
    }

    #[test]
    fn impossible_headers_refused() {
        let f = testing::udp(A, B, 1, 2, b"x");
        let mut bad = f.clone();
        bad[14] = 0x65; // version 6 in an IPv4 ethertype
        assert_eq!(parse(&bad), Err(ParseError::BadIpv4Header));
        let mut bad = f.clone();
        bad[14] = 0x44; // IHL 4
        assert_eq!(parse(&bad), Err(ParseError::BadIpv4Header));
        let mut bad = f.clone();
        bad[24] ^= 0xff; // header checksum
        assert_eq!(parse(&bad), Err(ParseError::BadIpv4Checksum));
        let mut bad = f.clone();
        bad[16] = 0;
        bad[17] = 10; // total length below the header
        assert!(parse(&bad).is_err());
        let mut tcp = testing::tcp(A, B, 1, 2, 0x02, b"");
        tcp[14 + 20 + 12] = 0x40; // data offset 4
        let c = tcp.clone();
        assert!(matches!(parse(&c), Err(ParseError::BadTcpHeader)));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            let _ = parse(&bytes);
        }

        #[test]
        fn mutated_frames_never_panic(pos in 0usize..80, val in proptest::num::u8::ANY) {
            let sent = testing::udp(A, B, 1234, 53, b"abcdefgh");
            let mut f = testing::icmp_error(B, A, 3, 3, testing::datagram(&sent), 64);
            let pos = pos % f.len();
            f[pos] = val;
            let _ = parse(&f);
        }
    }
}
