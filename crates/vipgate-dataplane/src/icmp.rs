//! ICMP errors the gateway originates, built in place over the datagram that caused them:
//! time exceeded as a router (RFC 792, RFC 1812 4.3.2), and port unreachable from a VIP
//! whose pool has no backend in service.

use std::net::Ipv4Addr;

use vipgate_wire::checksum::checksum;
use vipgate_wire::frame::{icmp_type, proto, ETH_LEN};
use vipgate_wire::{Layout, Transport};

/// Bytes of the offending datagram quoted: RFC 1812 4.3.2.3 asks for as much as fits in 576
/// bytes.
const QUOTE_MAX: usize = 576 - 20 - 8;
const IP_LEN: usize = 20;
const ICMP_HEADER: usize = 8;

/// Whether a datagram may be answered with an ICMP error (RFC 1812 4.3.2.7): never about an
/// ICMP error, a later fragment, or from a source that is not one host.
pub fn may_answer(l: &Layout) -> bool {
    !matches!(l.transport, Transport::IcmpError { .. })
        && l.frag_offset == 0
        && !vipgate_nat::engine::is_martian(l.src)
        && l.src != Ipv4Addr::BROADCAST
}

/// Turns the untagged frame in `buf` (laid out as `l`) into an ICMP time exceeded (TTL
/// expired in transit) from `our_ip`/`our_mac` back to its sender's MAC, quoting the
/// datagram as it arrived. Returns the new frame's length, or `None` if `buf` cannot hold
/// the message or the frame is tagged.
pub fn time_exceeded_in_place(
    buf: &mut [u8],
    l: &Layout,
    our_mac: [u8; 6],
    our_ip: Ipv4Addr,
    ident: u16,
) -> Option<usize> {
    error_in_place(
        buf,
        l,
        (icmp_type::TIME_EXCEEDED, 0),
        our_mac,
        our_ip,
        ident,
    )
}

/// Turns the frame into an ICMP destination unreachable, port unreachable (code 3), from
/// `from` (the VIP the datagram was sent to), as [`time_exceeded_in_place`] does.
pub fn port_unreachable_in_place(
    buf: &mut [u8],
    l: &Layout,
    our_mac: [u8; 6],
    from: Ipv4Addr,
    ident: u16,
) -> Option<usize> {
    error_in_place(
        buf,
        l,
        (icmp_type::DEST_UNREACHABLE, 3),
        our_mac,
        from,
        ident,
    )
}

fn error_in_place(
    buf: &mut [u8],
    l: &Layout,
    (kind, code): (u8, u8),
    our_mac: [u8; 6],
    our_ip: Ipv4Addr,
    ident: u16,
) -> Option<usize> {
    if l.vlan.is_some() || l.l3 != ETH_LEN {
        return None;
    }
    let datagram = l.end.checked_sub(l.l3)?;
    let quote = datagram.min(QUOTE_MAX);
    let ip_at = ETH_LEN;
    let icmp_at = ip_at + IP_LEN;
    let quote_at = icmp_at + ICMP_HEADER;
    let total = quote_at + quote;
    if buf.len() < total || l.end > buf.len() {
        return None;
    }
    let sender_mac: [u8; 6] = buf.get(6..12)?.try_into().ok()?;
    // Moves the quoted bytes behind the new headers; the ranges were checked above.
    buf.copy_within(l.l3..l.l3 + quote, quote_at);

    let mut eth = [0u8; ETH_LEN];
    eth[..6].copy_from_slice(&sender_mac);
    eth[6..12].copy_from_slice(&our_mac);
    eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    buf.get_mut(..ETH_LEN)?.copy_from_slice(&eth);

    let ip_total = u16::try_from(total - ip_at).ok()?;
    let mut ip = [0u8; IP_LEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[4..6].copy_from_slice(&ident.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto::ICMP;
    ip[12..16].copy_from_slice(&our_ip.octets());
    ip[16..20].copy_from_slice(&l.src.octets());
    let ip_sum = checksum(&ip);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    buf.get_mut(ip_at..icmp_at)?.copy_from_slice(&ip);

    let header = [kind, code, 0, 0, 0, 0, 0, 0];
    let icmp = buf.get_mut(icmp_at..total)?;
    icmp.get_mut(..ICMP_HEADER)?.copy_from_slice(&header);
    let sum = checksum(icmp).to_be_bytes();
    icmp.get_mut(2..4)?.copy_from_slice(&sum);
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vipgate_wire::frame::Parsed;
    use vipgate_wire::testing::{self, layout, verify_checksums};

    const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const FAR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    #[test]
    fn time_exceeded_quotes_the_datagram_and_verifies() {
        let original = testing::udp(H1, FAR, 4000, 53, b"query");
        let l = layout(&original);
        let mut buf = original.clone();
        buf.resize(2048, 0);
        let me = Ipv4Addr::new(198, 18, 0, 1);
        let n = time_exceeded_in_place(&mut buf, &l, [2, 0, 0, 0, 0, 1], me, 7).unwrap();
        buf.truncate(n);
        verify_checksums(&buf).unwrap();
        let Ok(Parsed::Ipv4(out)) = vipgate_wire::parse(&buf) else {
            panic!("not IPv4")
        };
        assert_eq!((out.src, out.dst, out.ttl), (me, l.src, 64));
        assert!(matches!(
            out.transport,
            Transport::IcmpError { ty: 11, code: 0 }
        ));
        assert_eq!(&buf[..6], &original[6..12], "back to the frame's sender");
        assert_eq!(
            &buf[42..],
            &original[14..l.end],
            "the whole short datagram is quoted"
        );
        let inner = out.icmp_inner(&buf).unwrap();
        assert_eq!((inner.src, inner.dst), (l.src, l.dst));
    }

    #[test]
    fn errors_are_not_answered_with_errors() {
        let quoted = testing::udp(H1, FAR, 1, 2, b"");
        let e = testing::icmp_error(FAR, H1, 11, 0, testing::datagram(&quoted), 28);
        assert!(!may_answer(&layout(&e)));
        assert!(may_answer(&layout(&testing::udp(H1, FAR, 1, 2, b""))));
    }

    #[test]
    fn a_small_buffer_is_refused_not_overrun() {
        let original = testing::udp(H1, FAR, 4000, 53, b"query");
        let l = layout(&original);
        let mut buf = original.clone();
        assert_eq!(
            time_exceeded_in_place(&mut buf, &l, [2; 6], Ipv4Addr::new(1, 1, 1, 1), 0),
            None
        );
    }
}
