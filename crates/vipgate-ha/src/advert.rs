//! The VRRPv3 advertisement for IPv4 (RFC 5798 section 5): parse one out of a received
//! Ethernet frame, and build the frame a master sends.
//!
//! Layout of the VRRP packet (after the IPv4 header, protocol 112):
//! ```text
//!  0                   1                   2                   3
//! |Version| Type  |   Virtual Rtr ID  |   Priority    |Count IPvX Addr|
//! |(rsvd) |     Max Adver Int         |          Checksum             |
//! |                      IPvX Address(es)                              |
//! ```
//! The checksum covers the VRRP packet and the IPv4 pseudo-header (source, destination,
//! protocol, length), as keepalived computes it for version 3.

use std::net::Ipv4Addr;

use etherparse::{EtherType, Ethernet2HeaderSlice, Ipv4HeaderSlice};
use vipgate_wire::checksum;
use vipgate_wire::frame::ETH_LEN;

/// IPv4 protocol number of VRRP.
pub const PROTO_VRRP: u8 = 112;
/// The multicast group adverts go to (RFC 5798 section 5.1.1.2).
pub const GROUP: Ipv4Addr = Ipv4Addr::new(224, 0, 0, 18);
/// The Ethernet address of [`GROUP`] (RFC 1112 section 6.4).
pub const GROUP_MAC: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x12];
/// Adverts are sent with this TTL and any other is refused (RFC 5798 section 5.1.1.3).
pub const TTL: u8 = 255;
/// The only version spoken.
pub const VERSION: u8 = 3;
/// The only packet type VRRP has.
const TYPE_ADVERTISEMENT: u8 = 1;
/// Bytes of the VRRP header before the addresses.
const HEADER_LEN: usize = 8;
/// Bytes of an IPv4 header without options.
const IPV4_LEN: usize = 20;
/// The priority of a master that stops: its backups take over at once.
pub const PRIORITY_STOP: u8 = 0;
/// The priority of the box that owns the virtual addresses.
pub const PRIORITY_OWNER: u8 = 255;
/// The most addresses one advert lists (the count is one byte).
pub const MAX_ADDRS: usize = 255;

/// The VRRP virtual MAC of router `vrid` (RFC 5798 section 7.3).
pub fn virtual_mac(vrid: u8) -> [u8; 6] {
    [0x00, 0x00, 0x5e, 0x00, 0x01, vrid]
}

/// Why a frame is not an advert we accept. Each is one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdvertError {
    /// Not an Ethernet/IPv4 frame carrying protocol 112, or its IPv4 header is damaged.
    NotVrrp,
    /// The frame ends before the VRRP packet does.
    Truncated {
        /// Bytes the VRRP packet needed.
        needed: usize,
        /// Bytes there were.
        available: usize,
    },
    /// A version other than 3 (VRRPv2 speakers are not peers of ours).
    BadVersion(u8),
    /// A type other than advertisement.
    BadType(u8),
    /// The IPv4 TTL is not 255: the advert was routed, so it is not from this segment.
    BadTtl(u8),
    /// The checksum does not verify.
    BadChecksum,
    /// The output buffer cannot hold the frame.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        available: usize,
    },
}

impl AdvertError {
    /// The counter name of this reason.
    pub fn name(self) -> &'static str {
        match self {
            AdvertError::NotVrrp => "advert_not_vrrp",
            AdvertError::Truncated { .. } => "advert_truncated",
            AdvertError::BadVersion(_) => "advert_bad_version",
            AdvertError::BadType(_) => "advert_bad_type",
            AdvertError::BadTtl(_) => "advert_bad_ttl",
            AdvertError::BadChecksum => "advert_bad_checksum",
            AdvertError::BufferTooSmall { .. } => "advert_buffer_too_small",
        }
    }
}

/// One VRRPv3 advertisement.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Advert {
    /// Virtual router id, 1-255.
    pub vrid: u8,
    /// The sender's priority: 0 when it stops, 255 when it owns the addresses.
    pub priority: u8,
    /// The sender's advert interval in centiseconds (12 bits).
    pub interval_cs: u16,
    /// The virtual addresses.
    pub addrs: Vec<Ipv4Addr>,
}

/// An advert as received, with the IPv4 fields the election checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The sender's Ethernet address.
    pub src_mac: [u8; 6],
    /// The sender's (primary) address: the election's tie breaker.
    pub src: Ipv4Addr,
    /// Where it was sent: the group, or one of our addresses in unicast mode.
    pub dst: Ipv4Addr,
    /// The advert.
    pub advert: Advert,
}

impl Advert {
    /// Parses the frame `frame` (Ethernet II, IPv4, VRRP), checking version, type, TTL and
    /// checksum. The VRID and the sender are the election's to judge.
    ///
    /// # Errors
    /// [`AdvertError`] saying the first thing wrong.
    pub fn parse_frame(frame: &[u8]) -> Result<Received, AdvertError> {
        let eth = Ethernet2HeaderSlice::from_slice(frame).map_err(|_| AdvertError::NotVrrp)?;
        if eth.ether_type() != EtherType::IPV4 {
            return Err(AdvertError::NotVrrp);
        }
        let ip_bytes = frame.get(ETH_LEN..).ok_or(AdvertError::NotVrrp)?;
        let ip = Ipv4HeaderSlice::from_slice(ip_bytes).map_err(|_| AdvertError::NotVrrp)?;
        if ip.protocol().0 != PROTO_VRRP || ip.is_fragmenting_payload() {
            return Err(AdvertError::NotVrrp);
        }
        let header_len = ip.slice().len();
        if checksum::checksum(ip.slice()) != 0 {
            return Err(AdvertError::NotVrrp);
        }
        let total = usize::from(ip.total_len());
        let payload = ip_bytes
            .get(header_len..total)
            .ok_or(AdvertError::Truncated {
                needed: total.saturating_sub(header_len),
                available: ip_bytes.len().saturating_sub(header_len),
            })?;
        if ip.ttl() != TTL {
            return Err(AdvertError::BadTtl(ip.ttl()));
        }
        let (src, dst) = (ip.source_addr(), ip.destination_addr());
        let advert = Advert::parse(payload, src, dst)?;
        Ok(Received {
            src_mac: eth.source(),
            src,
            dst,
            advert,
        })
    }

    /// Parses a VRRP packet `packet` that came from `src` to `dst` (for the checksum).
    ///
    /// # Errors
    /// [`AdvertError`] saying the first thing wrong.
    pub fn parse(packet: &[u8], src: Ipv4Addr, dst: Ipv4Addr) -> Result<Advert, AdvertError> {
        let short = |needed: usize| AdvertError::Truncated {
            needed,
            available: packet.len(),
        };
        let h: [u8; HEADER_LEN] = packet
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or(short(HEADER_LEN))?;
        let [vt, vrid, priority, count, i0, i1, _, _] = h;
        let version = vt >> 4;
        if version != VERSION {
            return Err(AdvertError::BadVersion(version));
        }
        if vt & 0x0f != TYPE_ADVERTISEMENT {
            return Err(AdvertError::BadType(vt & 0x0f));
        }
        let interval_cs = u16::from_be_bytes([i0, i1]) & 0x0fff;
        let len = HEADER_LEN + 4 * usize::from(count);
        let body = packet.get(..len).ok_or(short(len))?;
        // Over the whole payload the IPv4 header gave: that is what the sender summed.
        let l4_len = u16::try_from(packet.len()).map_err(|_| AdvertError::BadChecksum)?;
        let sum = checksum::add_bytes(
            checksum::pseudo_header_sum(src, dst, PROTO_VRRP, l4_len),
            packet,
        );
        if checksum::fold(sum) != 0xffff {
            return Err(AdvertError::BadChecksum);
        }
        let addrs = body
            .get(HEADER_LEN..)
            .unwrap_or_default()
            .chunks_exact(4)
            .filter_map(|c| <[u8; 4]>::try_from(c).ok())
            .map(Ipv4Addr::from)
            .collect();
        Ok(Advert {
            vrid,
            priority,
            interval_cs,
            addrs,
        })
    }

    /// Bytes of this advert's VRRP packet.
    pub fn len(&self) -> usize {
        HEADER_LEN + 4 * self.addrs.len().min(MAX_ADDRS)
    }

    /// Whether the packet would be empty (it never is: the header is always there).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Writes the whole frame `src_mac` sends from `src` to `dst` (the group, or a unicast
    /// peer at `dst_mac`) into `buf`; returns its length. At most [`MAX_ADDRS`] addresses
    /// are listed.
    ///
    /// # Errors
    /// [`AdvertError::BufferTooSmall`] if `buf` cannot hold it.
    pub fn emit_frame(
        &self,
        buf: &mut [u8],
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        src: Ipv4Addr,
        dst: Ipv4Addr,
    ) -> Result<usize, AdvertError> {
        let vrrp_len = self.len();
        let len = ETH_LEN + IPV4_LEN + vrrp_len;
        let available = buf.len();
        let out = buf.get_mut(..len).ok_or(AdvertError::BufferTooSmall {
            needed: len,
            available,
        })?;
        let total = u16::try_from(IPV4_LEN + vrrp_len).unwrap_or(u16::MAX);
        let count = self.addrs.len().min(MAX_ADDRS);
        let mut ip = [0u8; IPV4_LEN];
        let [t0, t1] = total.to_be_bytes();
        let [s0, s1, s2, s3] = src.octets();
        let [d0, d1, d2, d3] = dst.octets();
        // DSCP CS6 (network control) as keepalived sends it; no fragmentation, no options.
        ip.copy_from_slice(&[
            0x45, 0xc0, t0, t1, 0, 0, 0, 0, TTL, PROTO_VRRP, 0, 0, s0, s1, s2, s3, d0, d1, d2, d3,
        ]);
        let [c0, c1] = checksum::checksum(&ip).to_be_bytes();
        ip[10] = c0;
        ip[11] = c1;
        let mut vrrp = Vec::with_capacity(vrrp_len);
        let [i0, i1] = (self.interval_cs & 0x0fff).to_be_bytes();
        vrrp.extend_from_slice(&[
            (VERSION << 4) | TYPE_ADVERTISEMENT,
            self.vrid,
            self.priority,
            u8::try_from(count).unwrap_or(u8::MAX),
            i0,
            i1,
            0,
            0,
        ]);
        for a in self.addrs.iter().take(count) {
            vrrp.extend_from_slice(&a.octets());
        }
        let [v0, v1] = checksum::l4_checksum(src, dst, PROTO_VRRP, &vrrp).to_be_bytes();
        if let Some(c) = vrrp.get_mut(6..8) {
            c.copy_from_slice(&[v0, v1]);
        }
        let frame = [
            &dst_mac[..],
            &src_mac[..],
            &[0x08, 0x00],
            &ip[..],
            &vrrp[..],
        ]
        .concat();
        out.copy_from_slice(&frame);
        Ok(len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

    /// VRID 51, priority 100, 1 s, one address 203.0.113.10, from 198.18.0.2 to the group;
    /// checksums computed independently of this code.
    const FIXTURE: [u8; 46] = [
        0x01, 0x00, 0x5e, 0x00, 0x00, 0x12, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x08, 0x00, 0x45,
        0xc0, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0xff, 0x70, 0x14, 0x87, 0xc6, 0x12, 0x00, 0x02,
        0xe0, 0x00, 0x00, 0x12, 0x31, 0x33, 0x64, 0x01, 0x00, 0x64, 0x87, 0xb8, 0xcb, 0x00, 0x71,
        0x0a,
    ];

    fn advert() -> Advert {
        Advert {
            vrid: 51,
            priority: 100,
            interval_cs: 100,
            addrs: vec![Ipv4Addr::new(203, 0, 113, 10)],
        }
    }

    #[test]
    fn parses_the_fixture() {
        let r = Advert::parse_frame(&FIXTURE).unwrap();
        assert_eq!(r.advert, advert());
        assert_eq!((r.src, r.dst, r.src_mac), (SRC, GROUP, MAC));
    }

    #[test]
    fn emits_the_fixture_byte_for_byte() {
        let mut buf = [0u8; 128];
        let n = advert()
            .emit_frame(&mut buf, MAC, GROUP_MAC, SRC, GROUP)
            .unwrap();
        assert_eq!(&buf[..n], &FIXTURE[..]);
    }

    #[test]
    fn round_trips_many_addresses_and_unicast() {
        let a = Advert {
            vrid: 255,
            priority: 0,
            interval_cs: 0x0fff,
            addrs: (0..40).map(|i| Ipv4Addr::new(198, 51, 100, i)).collect(),
        };
        let dst = Ipv4Addr::new(198, 18, 0, 3);
        let mut buf = [0u8; 512];
        let n = a.emit_frame(&mut buf, MAC, [2; 6], SRC, dst).unwrap();
        let r = Advert::parse_frame(&buf[..n]).unwrap();
        assert_eq!((r.advert, r.dst), (a, dst));
    }

    #[test]
    fn refuses_what_is_wrong_and_names_it() {
        let mut f = FIXTURE;
        f[22] = 254; // TTL (IPv4 checksum fixed below)
        fix_ip_checksum(&mut f);
        assert_eq!(Advert::parse_frame(&f), Err(AdvertError::BadTtl(254)));
        let mut f = FIXTURE;
        f[34] = 0x21; // VRRPv2
        assert_eq!(Advert::parse_frame(&f), Err(AdvertError::BadVersion(2)));
        let mut f = FIXTURE;
        f[34] = 0x32;
        assert_eq!(Advert::parse_frame(&f), Err(AdvertError::BadType(2)));
        let mut f = FIXTURE;
        f[36] = 101; // priority changed, checksum not
        assert_eq!(Advert::parse_frame(&f), Err(AdvertError::BadChecksum));
        let mut f = FIXTURE;
        f[37] = 2; // two addresses announced, one present
        assert!(matches!(
            Advert::parse_frame(&f),
            Err(AdvertError::Truncated { .. })
        ));
        let mut f = FIXTURE;
        f[23] = 17; // UDP
        fix_ip_checksum(&mut f);
        assert_eq!(Advert::parse_frame(&f), Err(AdvertError::NotVrrp));
    }

    #[test]
    fn every_truncation_and_bit_flip_is_refused_without_panic() {
        for n in 0..FIXTURE.len() {
            assert!(Advert::parse_frame(&FIXTURE[..n]).is_err(), "length {n}");
        }
        for byte in 0..FIXTURE.len() {
            for bit in 0..8 {
                let mut f = FIXTURE;
                f[byte] ^= 1 << bit;
                // The Ethernet addresses are not covered by any checksum.
                if Advert::parse_frame(&f).is_ok() {
                    assert!(byte < 12, "byte {byte} bit {bit} accepted");
                }
            }
        }
    }

    #[test]
    fn virtual_mac_is_the_iana_block() {
        assert_eq!(virtual_mac(51), [0, 0, 0x5e, 0, 1, 51]);
    }

    fn fix_ip_checksum(f: &mut [u8; 46]) {
        f[24] = 0;
        f[25] = 0;
        let c = checksum::checksum(&f[14..34]).to_be_bytes();
        f[24..26].copy_from_slice(&c);
    }
}
