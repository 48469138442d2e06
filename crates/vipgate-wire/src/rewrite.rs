//! In-place NAT rewrites with incremental checksum updates.
//!
//! Every function takes the [`Layout`] that [`crate::frame::parse`] returned for the same
//! buffer. Access stays checked: a layout that does not fit the buffer gives
//! [`RewriteError`] and leaves the frame as it was, never a panic.

use std::net::Ipv4Addr;

use crate::checksum::Delta;
use crate::frame::{Inner, InnerPorts, Layout, Transport, ETH_LEN};

/// The frame does not match the layout it was passed with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RewriteError;

impl std::fmt::Display for RewriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("frame does not match its parsed layout")
    }
}

impl std::error::Error for RewriteError {}

/// Field offsets inside the headers the rewrites touch.
mod field {
    pub(super) const IP_TTL: usize = 8;
    pub(super) const IP_CHECKSUM: usize = 10;
    pub(super) const IP_SRC: usize = 12;
    pub(super) const IP_DST: usize = 16;
    pub(super) const SPORT: usize = 0;
    pub(super) const DPORT: usize = 2;
    pub(super) const TCP_CHECKSUM: usize = 16;
    pub(super) const UDP_CHECKSUM: usize = 6;
    pub(super) const ICMP_CHECKSUM: usize = 2;
    pub(super) const ICMP_ID: usize = 4;
}

/// The addresses and ports a datagram gets. For ICMP echo the identifier travels as `sport`
/// in a request and as `dport` in a reply, as in [`crate::frame::Transport::IcmpEcho`] keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port or echo request identifier.
    pub sport: u16,
    /// Destination port or echo reply identifier.
    pub dport: u16,
}

#[inline]
fn rd16(b: &[u8], at: usize) -> Result<u16, RewriteError> {
    match b.get(at..at + 2) {
        Some(&[x, y]) => Ok(u16::from_be_bytes([x, y])),
        _ => Err(RewriteError),
    }
}

#[inline]
fn wr16(b: &mut [u8], at: usize, v: u16) -> Result<(), RewriteError> {
    let dst = b.get_mut(at..at + 2).ok_or(RewriteError)?;
    dst.copy_from_slice(&v.to_be_bytes());
    Ok(())
}

#[inline]
fn rd_addr(b: &[u8], at: usize) -> Result<Ipv4Addr, RewriteError> {
    match b.get(at..at + 4) {
        Some(&[w, x, y, z]) => Ok(Ipv4Addr::new(w, x, y, z)),
        _ => Err(RewriteError),
    }
}

#[inline]
fn wr_addr(b: &mut [u8], at: usize, a: Ipv4Addr) -> Result<(), RewriteError> {
    let dst = b.get_mut(at..at + 4).ok_or(RewriteError)?;
    dst.copy_from_slice(&a.octets());
    Ok(())
}

/// Applies `delta` to the 16-bit checksum stored at `at`.
#[inline]
fn adjust(b: &mut [u8], at: usize, delta: Delta) -> Result<(), RewriteError> {
    let c = rd16(b, at)?;
    wr16(b, at, delta.apply(c))
}

/// Rewrites the addresses of the IPv4 header at `l3`; returns the pseudo-header delta.
#[inline]
fn set_ip_addrs(
    b: &mut [u8],
    l3: usize,
    src: Ipv4Addr,
    dst: Ipv4Addr,
) -> Result<Delta, RewriteError> {
    let old_src = rd_addr(b, l3 + field::IP_SRC)?;
    let old_dst = rd_addr(b, l3 + field::IP_DST)?;
    let d = Delta::ZERO.addr(old_src, src).addr(old_dst, dst);
    // Check every offset before the first write so a failure leaves the frame untouched.
    rd16(b, l3 + field::IP_CHECKSUM)?;
    wr_addr(b, l3 + field::IP_SRC, src)?;
    wr_addr(b, l3 + field::IP_DST, dst)?;
    adjust(b, l3 + field::IP_CHECKSUM, d)?;
    Ok(d)
}

/// Rewrites a datagram to `to`: IPv4 addresses and header checksum, and, where the transport
/// header is present, the ports (TCP, UDP) or echo identifier (ICMP) with their checksums.
/// A UDP checksum of 0 stays 0. Non-first fragments get the address change only; ICMP errors
/// get their outer addresses here and their embedded datagram with [`rewrite_inner`].
///
/// # Errors
/// [`RewriteError`] if `l` does not fit `frame`; the frame is unchanged then.
#[inline]
pub fn rewrite(frame: &mut [u8], l: &Layout, to: &Tuple) -> Result<(), RewriteError> {
    // This runs for every forwarded packet: the headers are taken as fixed-size arrays once,
    // so the field accesses below need no bounds checks, and fields that keep their value
    // are neither written nor folded into a checksum.
    let (head, l4) = frame.split_at_mut_checked(l.l4).ok_or(RewriteError)?;
    let ip = head
        .get_mut(l.l3..)
        .and_then(<[u8]>::first_chunk_mut::<20>)
        .ok_or(RewriteError)?;
    match l.transport {
        Transport::Tcp { sport, dport, .. } => {
            let tcp = l4.first_chunk_mut::<18>().ok_or(RewriteError)?;
            let d = ip_addrs(ip, to.src, to.dst)
                .plus(port(tcp, 0, sport, to.sport))
                .plus(port(tcp, 2, dport, to.dport));
            fold_into(tcp, 16, d, false);
        }
        Transport::Udp { sport, dport } => {
            let udp = l4.first_chunk_mut::<8>().ok_or(RewriteError)?;
            let d = ip_addrs(ip, to.src, to.dst)
                .plus(port(udp, 0, sport, to.sport))
                .plus(port(udp, 2, dport, to.dport));
            fold_into(udp, 6, d, true);
        }
        Transport::IcmpEcho { request, id } => {
            let icmp = l4.first_chunk_mut::<8>().ok_or(RewriteError)?;
            ip_addrs(ip, to.src, to.dst);
            let new_id = if request { to.sport } else { to.dport };
            // ICMP has no pseudo header: only the identifier counts.
            let d = port(icmp, 4, id, new_id);
            fold_into(icmp, 2, d, false);
        }
        _ => {
            ip_addrs(ip, to.src, to.dst);
        }
    }
    Ok(())
}

/// Sets the addresses of an IPv4 header and its checksum; returns the pseudo-header delta.
#[inline]
fn ip_addrs(ip: &mut [u8; 20], src: Ipv4Addr, dst: Ipv4Addr) -> Delta {
    let old_src = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let old_dst = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let mut d = Delta::ZERO;
    if old_src != src {
        d = d.addr(old_src, src);
        ip[12..16].copy_from_slice(&src.octets());
    }
    if old_dst != dst {
        d = d.addr(old_dst, dst);
        ip[16..20].copy_from_slice(&dst.octets());
    }
    fold_into(ip, field::IP_CHECKSUM, d, false);
    d
}

/// Sets the 16-bit field at `at` of `h` from `old` to `new`; returns its checksum delta.
#[inline]
fn port<const N: usize>(h: &mut [u8; N], at: usize, old: u16, new: u16) -> Delta {
    if old == new {
        return Delta::ZERO;
    }
    if let Some(f) = h.get_mut(at..at + 2) {
        f.copy_from_slice(&new.to_be_bytes());
    }
    Delta::ZERO.word(old, new)
}

/// Applies `d` to the checksum at `at` of `h` (the UDP rules if `udp`); nothing for no change.
#[inline]
fn fold_into<const N: usize>(h: &mut [u8; N], at: usize, d: Delta, udp: bool) {
    if d == Delta::ZERO {
        return;
    }
    if let Some([hi, lo]) = h.get_mut(at..at + 2) {
        let old = u16::from_be_bytes([*hi, *lo]);
        let new = if udp { d.apply_udp(old) } else { d.apply(old) };
        [*hi, *lo] = new.to_be_bytes();
    }
}

/// Rewrites the datagram embedded in an ICMP error to `to` (its addresses, its IP checksum,
/// its ports or echo identifier and, where present in the quote, its transport checksum),
/// and adjusts the outer ICMP checksum by every word changed.
///
/// # Errors
/// [`RewriteError`] if the layouts do not fit `frame`; the frame is unchanged then.
pub fn rewrite_inner(
    frame: &mut [u8],
    l: &Layout,
    inner: &Inner,
    to: &Tuple,
) -> Result<(), RewriteError> {
    let icmp_csum_at = l.l4 + field::ICMP_CHECKSUM;
    rd16(frame, icmp_csum_at)?;
    rd16(frame, inner.l4 + 6)?; // the 8 quoted transport bytes
    let ip_csum_at = inner.l3 + field::IP_CHECKSUM;
    let old_ip_csum = rd16(frame, ip_csum_at)?;
    let pseudo = set_ip_addrs(frame, inner.l3, to.src, to.dst)?;
    let new_ip_csum = rd16(frame, ip_csum_at)?;
    // The outer checksum covers the whole quote: addresses and the embedded IP checksum.
    let mut outer = pseudo.word(old_ip_csum, new_ip_csum);
    match inner.ports {
        InnerPorts::Ports { sport, dport } => {
            wr16(frame, inner.l4 + field::SPORT, to.sport)?;
            wr16(frame, inner.l4 + field::DPORT, to.dport)?;
            let ports = Delta::ZERO.word(sport, to.sport).word(dport, to.dport);
            outer = outer.plus(ports);
            let l4_csum_at = match inner.proto {
                crate::frame::proto::TCP => inner.l4 + field::TCP_CHECKSUM,
                _ => inner.l4 + field::UDP_CHECKSUM,
            };
            // A TCP checksum lies past the 8 quoted bytes and is often cut off: rewrite it
            // only when the quote holds it (within the datagram, not Ethernet padding).
            if l4_csum_at + 2 <= l.end {
                let old = rd16(frame, l4_csum_at)?;
                let d = pseudo.plus(ports);
                let new = if inner.proto == crate::frame::proto::UDP {
                    d.apply_udp(old)
                } else {
                    d.apply(old)
                };
                wr16(frame, l4_csum_at, new)?;
                outer = outer.word(old, new);
            }
        }
        InnerPorts::Echo { request, id } => {
            let new_id = if request { to.sport } else { to.dport };
            wr16(frame, inner.l4 + field::ICMP_ID, new_id)?;
            let at = inner.l4 + field::ICMP_CHECKSUM;
            let old = rd16(frame, at)?;
            let new = Delta::ZERO.word(id, new_id).apply(old);
            wr16(frame, at, new)?;
            outer = outer.word(id, new_id).word(old, new);
        }
        InnerPorts::None => {}
    }
    adjust(frame, icmp_csum_at, outer)
}

/// Turns an ICMP echo request addressed to us into its reply, in place: Ethernet and IP
/// addresses swapped, TTL set to `ttl`, type 0; checksums adjusted.
///
/// # Errors
/// [`RewriteError`] if `l` is not an echo request layout fitting `frame`.
pub fn echo_request_to_reply(frame: &mut [u8], l: &Layout, ttl: u8) -> Result<(), RewriteError> {
    if !matches!(l.transport, Transport::IcmpEcho { request: true, .. }) {
        return Err(RewriteError);
    }
    let ttl_word = rd16(frame, l.l3 + field::IP_TTL)?;
    let type_word = rd16(frame, l.l4)?;
    rd16(frame, l.l4 + field::ICMP_CHECKSUM)?;
    // Swapping source and destination leaves the IP checksum as it was.
    set_ip_addrs(frame, l.l3, l.dst, l.src)?;
    let new_ttl_word = (u16::from(ttl) << 8) | (ttl_word & 0x00ff);
    wr16(frame, l.l3 + field::IP_TTL, new_ttl_word)?;
    adjust(
        frame,
        l.l3 + field::IP_CHECKSUM,
        Delta::ZERO.word(ttl_word, new_ttl_word),
    )?;
    let new_type_word = type_word & 0x00ff; // type 0 = echo reply, code kept
    wr16(frame, l.l4, new_type_word)?;
    adjust(
        frame,
        l.l4 + field::ICMP_CHECKSUM,
        Delta::ZERO.word(type_word, new_type_word),
    )?;
    swap_macs(frame)
}

/// Decrements the TTL as a router does and adjusts the header checksum; returns the new TTL.
/// A datagram arriving with TTL 0 or 1 must not be forwarded: the caller checks the result.
///
/// # Errors
/// [`RewriteError`] if `l` does not fit `frame`.
pub fn decrement_ttl(frame: &mut [u8], l: &Layout) -> Result<u8, RewriteError> {
    let word = rd16(frame, l.l3 + field::IP_TTL)?;
    rd16(frame, l.l3 + field::IP_CHECKSUM)?;
    let ttl = (word >> 8) as u8;
    let new_ttl = ttl.saturating_sub(1);
    let new_word = (u16::from(new_ttl) << 8) | (word & 0x00ff);
    wr16(frame, l.l3 + field::IP_TTL, new_word)?;
    adjust(
        frame,
        l.l3 + field::IP_CHECKSUM,
        Delta::ZERO.word(word, new_word),
    )?;
    Ok(new_ttl)
}

/// Swaps the Ethernet source and destination addresses.
///
/// # Errors
/// [`RewriteError`] if the frame is shorter than an Ethernet header.
pub fn swap_macs(frame: &mut [u8]) -> Result<(), RewriteError> {
    let eth = frame.get_mut(..ETH_LEN).ok_or(RewriteError)?;
    let (dst, rest) = eth.split_at_mut(6);
    dst.swap_with_slice(rest.get_mut(..6).ok_or(RewriteError)?);
    Ok(())
}

/// Sets the Ethernet destination and source addresses.
///
/// # Errors
/// [`RewriteError`] if the frame is shorter than an Ethernet header.
pub fn set_macs(frame: &mut [u8], dst: [u8; 6], src: [u8; 6]) -> Result<(), RewriteError> {
    let eth = frame.get_mut(..12).ok_or(RewriteError)?;
    let (d, s) = eth.split_at_mut(6);
    d.copy_from_slice(&dst);
    s.copy_from_slice(&src);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{icmp_type, parse, Parsed};
    use crate::testing::{self, layout, verify_checksums};
    use proptest::prelude::*;

    const H: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
    const E: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
    const P: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);

    fn tuple(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16) -> Tuple {
        Tuple {
            src,
            dst,
            sport,
            dport,
        }
    }

    #[test]
    fn tcp_rewrite_verifies_and_reverses() {
        let orig = testing::tcp(H, E, 40000, 443, 0x18, b"GET / HTTP/1.1\r\n");
        let mut f = orig.clone();
        let l = layout(&f);
        rewrite(&mut f, &l, &tuple(P, E, 61000, 443)).unwrap();
        verify_checksums(&f).unwrap();
        let l = layout(&f);
        assert_eq!((l.src, l.dst), (P, E));
        assert_eq!(
            l.transport,
            Transport::Tcp {
                sport: 61000,
                dport: 443,
                flags: 0x18
            }
        );
        let l = layout(&f);
        rewrite(&mut f, &l, &tuple(H, E, 40000, 443)).unwrap();
        assert_eq!(f, orig, "reverse rewrite restores every byte");
    }

    #[test]
    fn udp_rewrite_and_zero_checksum() {
        let mut f = testing::udp(H, E, 5000, 53, b"q");
        let l = layout(&f);
        rewrite(&mut f, &l, &tuple(P, E, 1024, 53)).unwrap();
        verify_checksums(&f).unwrap();
        let mut z = testing::udp_without_checksum(H, E, 5000, 53, b"q");
        let l = layout(&z);
        rewrite(&mut z, &l, &tuple(P, E, 1024, 53)).unwrap();
        assert_eq!(&z[40..42], &[0, 0], "UDP checksum 0 stays 0");
        verify_checksums(&z).unwrap();
    }

    #[test]
    fn echo_id_moves_with_direction() {
        let mut req = testing::icmp_echo(H, E, true, 100, 1);
        let l = layout(&req);
        rewrite(&mut req, &l, &tuple(P, E, 2000, 0)).unwrap();
        verify_checksums(&req).unwrap();
        assert_eq!(
            layout(&req).transport,
            Transport::IcmpEcho {
                request: true,
                id: 2000
            }
        );
        let mut rep = testing::icmp_echo(E, P, false, 2000, 1);
        let l = layout(&rep);
        rewrite(&mut rep, &l, &tuple(E, H, 0, 100)).unwrap();
        verify_checksums(&rep).unwrap();
        assert_eq!(
            layout(&rep).transport,
            Transport::IcmpEcho {
                request: false,
                id: 100
            }
        );
    }

    #[test]
    fn later_fragments_get_addresses_only() {
        let whole = testing::udp(H, E, 1111, 2222, &[9u8; 100]);
        let mut frags = testing::fragments(&whole, 48);
        for f in &mut frags {
            let l = layout(f);
            rewrite(f, &l, &tuple(P, E, 3333, 2222)).unwrap();
            verify_checksums(f).unwrap();
            assert_eq!(layout(f).src, P);
        }
        // Reassembled, the transport checksum (fixed in the first fragment) still verifies.
        let mut whole2 = frags[0].clone();
        for f in &frags[1..] {
            whole2.extend_from_slice(&f[34..]);
        }
        let total = (whole2.len() - 14) as u16;
        whole2[16..18].copy_from_slice(&total.to_be_bytes());
        whole2[20] = 0;
        whole2[21] = 0;
        whole2[24] = 0;
        whole2[25] = 0;
        let c = crate::checksum::checksum(&whole2[14..34]);
        whole2[24..26].copy_from_slice(&c.to_be_bytes());
        verify_checksums(&whole2).unwrap();
    }

    fn error_about(sent: &[u8], quote_len: usize) -> Vec<u8> {
        testing::icmp_error(
            E,
            P,
            icmp_type::DEST_UNREACHABLE,
            3,
            testing::datagram(sent),
            quote_len,
        )
    }

    #[test]
    fn icmp_error_inner_udp_full_quote() {
        // The translated datagram P:3333 -> E:53 bounced; the host gets it about H:5000.
        let sent = testing::udp(P, E, 3333, 53, b"payload!");
        let mut f = error_about(&sent, 512);
        let l = layout(&f);
        let inner = l.icmp_inner(&f).unwrap();
        rewrite(&mut f, &l, &tuple(E, H, 0, 0)).unwrap();
        rewrite_inner(&mut f, &l, &inner, &tuple(H, E, 5000, 53)).unwrap();
        verify_checksums(&f).unwrap();
        let l2 = layout(&f);
        let i2 = l2.icmp_inner(&f).unwrap();
        assert_eq!((l2.src, l2.dst), (E, H));
        assert_eq!((i2.src, i2.dst), (H, E));
        assert_eq!(
            i2.ports,
            InnerPorts::Ports {
                sport: 5000,
                dport: 53
            }
        );
        // The quoted datagram is now exactly what the host sent.
        let host_sent = testing::udp(H, E, 5000, 53, b"payload!");
        assert_eq!(&f[i2.l3..l2.end], testing::datagram(&host_sent));
    }

    #[test]
    fn icmp_error_inner_tcp_cut_quote() {
        let sent = testing::tcp(P, E, 3333, 80, 0x02, b"");
        for quote in [28, 36, 38, 40] {
            let mut f = error_about(&sent, quote);
            let l = layout(&f);
            let inner = l.icmp_inner(&f).unwrap();
            rewrite(&mut f, &l, &tuple(E, H, 0, 0)).unwrap();
            rewrite_inner(&mut f, &l, &inner, &tuple(H, E, 5000, 80)).unwrap();
            verify_checksums(&f).unwrap();
            if quote >= 38 {
                let host_sent = testing::tcp(H, E, 5000, 80, 0x02, b"");
                let at = inner.l4 + 16;
                assert_eq!(
                    &f[at..at + 2],
                    &host_sent[14 + 20 + 16..14 + 20 + 18],
                    "quoted TCP checksum"
                );
            }
        }
    }

    #[test]
    fn icmp_error_inner_echo() {
        let sent = testing::icmp_echo(P, E, true, 2000, 5);
        let mut f = testing::icmp_error(
            E,
            P,
            icmp_type::TIME_EXCEEDED,
            0,
            testing::datagram(&sent),
            200,
        );
        let l = layout(&f);
        let inner = l.icmp_inner(&f).unwrap();
        rewrite(&mut f, &l, &tuple(E, H, 0, 0)).unwrap();
        rewrite_inner(&mut f, &l, &inner, &tuple(H, E, 100, 0)).unwrap();
        verify_checksums(&f).unwrap();
        let host_sent = testing::icmp_echo(H, E, true, 100, 5);
        let l2 = layout(&f);
        assert_eq!(&f[inner.l3..l2.end], testing::datagram(&host_sent));
    }

    #[test]
    fn echo_reply_in_place() {
        let mut f = testing::icmp_echo(E, P, true, 9, 3);
        let l = layout(&f);
        echo_request_to_reply(&mut f, &l, 64).unwrap();
        verify_checksums(&f).unwrap();
        let r = layout(&f);
        assert_eq!((r.src, r.dst, r.ttl), (P, E, 64));
        assert_eq!(
            r.transport,
            Transport::IcmpEcho {
                request: false,
                id: 9
            }
        );
        assert_eq!(&f[..6], &testing::MAC_CLIENT);
        let mut rep = testing::icmp_echo(E, P, false, 9, 3);
        let l = layout(&rep);
        assert_eq!(echo_request_to_reply(&mut rep, &l, 64), Err(RewriteError));
    }

    #[test]
    fn ttl_decrement() {
        let mut f = testing::udp(H, E, 1, 2, b"");
        let l = layout(&f);
        assert_eq!(decrement_ttl(&mut f, &l), Ok(63));
        verify_checksums(&f).unwrap();
        assert_eq!(layout(&f).ttl, 63);
    }

    #[test]
    fn wrong_layout_fails_softly_and_leaves_frame() {
        let big = testing::tcp(H, E, 1, 2, 0x10, &[0u8; 100]);
        let l = layout(&big);
        let short = testing::udp(H, E, 1, 2, b"");
        let mut cut = short[..30].to_vec();
        let before = cut.clone();
        assert_eq!(rewrite(&mut cut, &l, &tuple(P, E, 3, 4)), Err(RewriteError));
        assert_eq!(cut, before);
        assert!(swap_macs(&mut [0u8; 10]).is_err());
        assert!(set_macs(&mut [0u8; 10], [1; 6], [2; 6]).is_err());
    }

    fn any_addr() -> impl Strategy<Value = Ipv4Addr> {
        any::<u32>().prop_map(Ipv4Addr::from)
    }

    proptest! {
        #[test]
        fn rewrite_always_verifies(kind in 0u8..4, a in any_addr(), b in any_addr(), sp in any::<u16>(), dp in any::<u16>(),
                                   to_src in any_addr(), to_dst in any_addr(), nsp in any::<u16>(), ndp in any::<u16>(),
                                   payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut f = match kind {
                0 => testing::tcp(a, b, sp, dp, 0x18, &payload),
                1 => testing::udp(a, b, sp, dp, &payload),
                2 => testing::udp_without_checksum(a, b, sp, dp, &payload),
                _ => testing::icmp_echo(a, b, sp % 2 == 0, dp, sp),
            };
            let l = layout(&f);
            rewrite(&mut f, &l, &tuple(to_src, to_dst, nsp, ndp)).unwrap();
            prop_assert!(verify_checksums(&f).is_ok(), "{:?}", verify_checksums(&f));
            let after = layout(&f);
            prop_assert_eq!((after.src, after.dst), (to_src, to_dst));
        }

        #[test]
        fn inner_rewrite_always_verifies(a in any_addr(), b in any_addr(), sp in any::<u16>(), dp in any::<u16>(),
                                         h in any_addr(), hp in any::<u16>(), quote in 28usize..80, tcp in any::<bool>()) {
            let sent = if tcp { testing::tcp(a, b, sp, dp, 0x02, b"0123456789") } else { testing::udp(a, b, sp, dp, b"0123456789") };
            let mut f = testing::icmp_error(b, a, 3, 3, testing::datagram(&sent), quote);
            let Ok(Parsed::Ipv4(l)) = parse(&f) else { panic!() };
            let inner = l.icmp_inner(&f).unwrap();
            rewrite(&mut f, &l, &tuple(b, h, 0, 0)).unwrap();
            rewrite_inner(&mut f, &l, &inner, &tuple(h, b, hp, dp)).unwrap();
            prop_assert!(verify_checksums(&f).is_ok(), "{:?}", verify_checksums(&f));
        }
    }
}
