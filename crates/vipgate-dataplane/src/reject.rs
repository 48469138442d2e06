//! TCP resets the gateway sends for a VIP: a SYN to a pool with no backend in service is
//! refused at once (RFC 9293 3.10.7.1: a segment for no connection gets a RST), so the
//! client fails in a round trip instead of after its SYN retries.

use vipgate_wire::checksum::{checksum, l4_checksum};
use vipgate_wire::frame::{proto, ETH_LEN};
use vipgate_wire::{Layout, Transport};

const IP_LEN: usize = 20;
const TCP_LEN: usize = 20;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;
const SYN: u8 = 0x02;
const FIN: u8 = 0x01;

/// Turns the untagged TCP segment in `buf` (laid out as `l`) into the RST that refuses it,
/// from its destination back to its sender's MAC: with the segment's ACK as sequence
/// number if it had one, else sequence 0 and an ACK of everything it carried. Returns the
/// new frame's length, or `None` for a tagged frame, another protocol, or a RST (never
/// answered).
pub fn tcp_reset_in_place(
    buf: &mut [u8],
    l: &Layout,
    our_mac: [u8; 6],
    ident: u16,
) -> Option<usize> {
    let Transport::Tcp {
        sport,
        dport,
        flags,
    } = l.transport
    else {
        return None;
    };
    if l.vlan.is_some() || l.l3 != ETH_LEN || flags & RST != 0 {
        return None;
    }
    let tcp = buf.get(l.l4..l.end)?;
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(tcp.get(at..at + 4)?.try_into().ok()?))
    };
    let (seq, ack) = (word(4)?, word(8)?);
    let header = usize::from(tcp.get(12)? >> 4) * 4;
    let payload = u32::try_from(tcp.len().checked_sub(header)?).ok()?;
    let (rst_seq, rst_ack, rst_flags) = if flags & ACK != 0 {
        (ack, 0, RST)
    } else {
        let len = payload + u32::from(flags & SYN != 0) + u32::from(flags & FIN != 0);
        (0, seq.wrapping_add(len), RST | ACK)
    };
    let sender_mac: [u8; 6] = buf.get(6..12)?.try_into().ok()?;
    let total = ETH_LEN + IP_LEN + TCP_LEN;
    let out = buf.get_mut(..total)?;
    let mut eth = [0u8; ETH_LEN];
    eth[..6].copy_from_slice(&sender_mac);
    eth[6..12].copy_from_slice(&our_mac);
    eth[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let mut ip = [0u8; IP_LEN];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((IP_LEN + TCP_LEN) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&ident.to_be_bytes());
    ip[8] = 64;
    ip[9] = proto::TCP;
    ip[12..16].copy_from_slice(&l.dst.octets());
    ip[16..20].copy_from_slice(&l.src.octets());
    let ip_sum = checksum(&ip);
    ip[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let mut t = [0u8; TCP_LEN];
    t[0..2].copy_from_slice(&dport.to_be_bytes());
    t[2..4].copy_from_slice(&sport.to_be_bytes());
    t[4..8].copy_from_slice(&rst_seq.to_be_bytes());
    t[8..12].copy_from_slice(&rst_ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = rst_flags;
    let sum = l4_checksum(l.dst, l.src, proto::TCP, &t);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    let (e, rest) = out.split_at_mut(ETH_LEN);
    e.copy_from_slice(&eth);
    let (i, tcp_out) = rest.split_at_mut(IP_LEN);
    i.copy_from_slice(&ip);
    tcp_out.copy_from_slice(&t);
    Some(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::net::Ipv4Addr;

    use vipgate_wire::testing;
    use vipgate_wire::{parse, Parsed};

    use super::*;

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    fn layout(f: &[u8]) -> Layout {
        match parse(f).unwrap() {
            Parsed::Ipv4(l) => l,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_syn_gets_a_rst_ack_of_its_sequence_plus_one() {
        let mut f = testing::tcp(CLIENT, VIP, 40000, 80, SYN, b"");
        let seq = u32::from_be_bytes(f[38..42].try_into().unwrap());
        let sender = f[6..12].to_vec();
        let l = layout(&f);
        let n = tcp_reset_in_place(&mut f, &l, MAC, 7).unwrap();
        let r = layout(&f[..n]);
        assert_eq!((r.src, r.dst), (VIP, CLIENT));
        assert!(matches!(
            r.transport,
            Transport::Tcp { sport: 80, dport: 40000, flags } if flags == RST | ACK
        ));
        assert_eq!(&f[..6], &sender[..]);
        assert_eq!(&f[6..12], &MAC);
        assert_eq!(u32::from_be_bytes(f[38..42].try_into().unwrap()), 0);
        assert_eq!(
            u32::from_be_bytes(f[42..46].try_into().unwrap()),
            seq.wrapping_add(1)
        );
        testing::verify_checksums(&f[..n]).unwrap();
    }

    #[test]
    fn an_ack_gets_a_rst_at_its_acknowledgement_and_a_rst_gets_nothing() {
        let mut f = testing::tcp(CLIENT, VIP, 40000, 80, ACK, b"data");
        f[42..46].copy_from_slice(&1234u32.to_be_bytes());
        let l = layout(&f);
        let n = tcp_reset_in_place(&mut f, &l, MAC, 7).unwrap();
        assert_eq!(u32::from_be_bytes(f[38..42].try_into().unwrap()), 1234);
        assert_eq!(f[47], RST);
        testing::verify_checksums(&f[..n]).unwrap();
        let mut r = testing::tcp(CLIENT, VIP, 40000, 80, RST, b"");
        let l = layout(&r);
        assert!(tcp_reset_in_place(&mut r, &l, MAC, 7).is_none());
    }
}
