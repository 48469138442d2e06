//! ARP for Ethernet and IPv4 (RFC 826): parse requests and replies, build replies, requests
//! and gratuitous announcements (RFC 5227 section 3).

use std::net::Ipv4Addr;

use etherparse::{ArpHardwareId, ArpOperation, ArpPacketSlice, EtherType};

use crate::frame::{ETH_LEN, VLAN_LEN};

/// The Ethernet broadcast address.
pub const BROADCAST: [u8; 6] = [0xff; 6];

/// Bytes of an Ethernet/IPv4 ARP packet.
pub const ARP_LEN: usize = 28;

/// Minimum Ethernet frame without FCS: shorter frames are padded.
pub const MIN_FRAME: usize = 60;

/// ARP operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpOp {
    /// Who has `target_ip`?
    Request,
    /// `sender_ip` is at `sender_mac`.
    Reply,
}

/// Why an ARP packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArpError {
    /// Shorter than its address lengths say.
    Truncated,
    /// Not Ethernet hardware with IPv4 protocol addresses (6 and 4 bytes).
    NotEthernetIpv4,
    /// An operation other than request or reply.
    UnknownOperation(u16),
    /// The output buffer cannot hold the frame.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes given.
        available: usize,
    },
}

/// An Ethernet/IPv4 ARP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArpRepr {
    /// Request or reply.
    pub op: ArpOp,
    /// Sender hardware address.
    pub sender_mac: [u8; 6],
    /// Sender protocol address.
    pub sender_ip: Ipv4Addr,
    /// Target hardware address (zero in requests).
    pub target_mac: [u8; 6],
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

impl ArpRepr {
    /// Parses the ARP packet at `offset` of `frame` (as [`crate::frame::Parsed::Arp`] gives).
    ///
    /// # Errors
    /// See [`ArpError`].
    pub fn parse(frame: &[u8], offset: usize) -> Result<ArpRepr, ArpError> {
        let bytes = frame.get(offset..).unwrap_or_default();
        let arp = ArpPacketSlice::from_slice(bytes).map_err(|_| ArpError::Truncated)?;
        if arp.hw_addr_type() != ArpHardwareId::ETHERNET
            || arp.proto_addr_type() != EtherType::IPV4
            || arp.hw_addr_size() != 6
            || arp.proto_addr_size() != 4
        {
            return Err(ArpError::NotEthernetIpv4);
        }
        let op = match arp.operation() {
            ArpOperation::REQUEST => ArpOp::Request,
            ArpOperation::REPLY => ArpOp::Reply,
            other => return Err(ArpError::UnknownOperation(other.0)),
        };
        let mac = |s: &[u8]| -> Result<[u8; 6], ArpError> {
            s.try_into().map_err(|_| ArpError::Truncated)
        };
        let ip = |s: &[u8]| -> Result<Ipv4Addr, ArpError> {
            let a: [u8; 4] = s.try_into().map_err(|_| ArpError::Truncated)?;
            Ok(Ipv4Addr::from(a))
        };
        Ok(ArpRepr {
            op,
            sender_mac: mac(arp.sender_hw_addr())?,
            sender_ip: ip(arp.sender_protocol_addr())?,
            target_mac: mac(arp.target_hw_addr())?,
            target_ip: ip(arp.target_protocol_addr())?,
        })
    }

    /// The reply that tells the sender of this request that `target_ip` is at `our_mac`.
    pub fn reply_to(&self, our_mac: [u8; 6]) -> ArpRepr {
        ArpRepr {
            op: ArpOp::Reply,
            sender_mac: our_mac,
            sender_ip: self.target_ip,
            target_mac: self.sender_mac,
            target_ip: self.sender_ip,
        }
    }

    /// A request for `target_ip` from `our_ip` at `our_mac`.
    pub fn request(our_mac: [u8; 6], our_ip: Ipv4Addr, target_ip: Ipv4Addr) -> ArpRepr {
        ArpRepr {
            op: ArpOp::Request,
            sender_mac: our_mac,
            sender_ip: our_ip,
            target_mac: [0; 6],
            target_ip,
        }
    }

    /// A gratuitous ARP announcing that `ip` is at `mac` (an ARP announcement, RFC 5227: a
    /// request with sender and target address both `ip`), sent to broadcast.
    pub fn gratuitous(mac: [u8; 6], ip: Ipv4Addr) -> ArpRepr {
        ArpRepr {
            op: ArpOp::Request,
            sender_mac: mac,
            sender_ip: ip,
            target_mac: [0; 6],
            target_ip: ip,
        }
    }

    /// The Ethernet destination this message goes to: broadcast for requests, the target for
    /// replies.
    pub fn eth_dst(&self) -> [u8; 6] {
        match self.op {
            ArpOp::Request => BROADCAST,
            ArpOp::Reply => self.target_mac,
        }
    }

    /// Writes the whole Ethernet frame (with a VLAN tag if given, padded to the Ethernet
    /// minimum) into `buf`; returns its length. The Ethernet source is `sender_mac`.
    ///
    /// # Errors
    /// [`ArpError::BufferTooSmall`] if `buf` cannot hold it.
    pub fn emit_frame(&self, buf: &mut [u8], vlan: Option<u16>) -> Result<usize, ArpError> {
        let header = ETH_LEN + if vlan.is_some() { VLAN_LEN } else { 0 };
        let len = (header + ARP_LEN).max(MIN_FRAME);
        let available = buf.len();
        let out = buf.get_mut(..len).ok_or(ArpError::BufferTooSmall {
            needed: len,
            available,
        })?;
        out.fill(0);
        let mut w = Writer { out, at: 0 };
        w.put(&self.eth_dst());
        w.put(&self.sender_mac);
        if let Some(id) = vlan {
            w.put(&0x8100u16.to_be_bytes());
            w.put(&(id & 0x0fff).to_be_bytes());
        }
        w.put(&0x0806u16.to_be_bytes());
        w.put(&1u16.to_be_bytes()); // Ethernet
        w.put(&0x0800u16.to_be_bytes()); // IPv4
        w.put(&[6, 4]);
        let op: u16 = match self.op {
            ArpOp::Request => 1,
            ArpOp::Reply => 2,
        };
        w.put(&op.to_be_bytes());
        w.put(&self.sender_mac);
        w.put(&self.sender_ip.octets());
        w.put(&self.target_mac);
        w.put(&self.target_ip.octets());
        Ok(len)
    }
}

struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    // The caller sized `out` for everything written, so a miss here cannot happen; it is
    // still checked rather than indexed.
    fn put(&mut self, bytes: &[u8]) {
        if let Some(dst) = self.out.get_mut(self.at..self.at + bytes.len()) {
            dst.copy_from_slice(bytes);
        }
        self.at += bytes.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{parse, Parsed};

    const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x0a];
    const MAC_G: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
    const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const CLIENT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);

    // A request "who has 203.0.113.10? tell 203.0.113.99" as captured on the wire.
    const REQUEST: [u8; 42] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0, 0, 0, 0, 0x0a, 0x08, 0x06, // ethernet
        0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01, // htype ptype hlen plen op
        0x02, 0, 0, 0, 0, 0x0a, 203, 0, 113, 99, // sender
        0, 0, 0, 0, 0, 0, 203, 0, 113, 10, // target
    ];

    fn arp_of(frame: &[u8]) -> ArpRepr {
        match parse(frame).unwrap() {
            Parsed::Arp { offset, .. } => ArpRepr::parse(frame, offset).unwrap(),
            other => panic!("not ARP: {other:?}"),
        }
    }

    #[test]
    fn parses_a_request_fixture() {
        let r = arp_of(&REQUEST);
        assert_eq!(r, ArpRepr::request(MAC_A, CLIENT, VIP));
    }

    #[test]
    fn reply_goes_back_to_the_asker() {
        let reply = arp_of(&REQUEST).reply_to(MAC_G);
        let mut buf = [0u8; 128];
        let n = reply.emit_frame(&mut buf, None).unwrap();
        assert_eq!(n, MIN_FRAME);
        assert_eq!(&buf[..6], &MAC_A);
        assert_eq!(&buf[6..12], &MAC_G);
        let back = arp_of(&buf[..n]);
        assert_eq!(back.op, ArpOp::Reply);
        assert_eq!(back.sender_ip, VIP);
        assert_eq!(back.sender_mac, MAC_G);
        assert_eq!(back.target_ip, CLIENT);
        assert_eq!(back.target_mac, MAC_A);
        assert!(buf[42..n].iter().all(|&b| b == 0), "padding is zero");
    }

    #[test]
    fn emitted_request_equals_fixture_bytes() {
        let mut buf = [0u8; 64];
        let n = ArpRepr::request(MAC_A, CLIENT, VIP)
            .emit_frame(&mut buf, None)
            .unwrap();
        assert_eq!(&buf[..42], &REQUEST[..]);
        assert_eq!(n, 60);
    }

    #[test]
    fn gratuitous_with_vlan() {
        let mut buf = [0u8; 64];
        let n = ArpRepr::gratuitous(MAC_G, VIP)
            .emit_frame(&mut buf, Some(42))
            .unwrap();
        assert_eq!(n, 60);
        match parse(&buf[..n]).unwrap() {
            Parsed::Arp { vlan, offset } => {
                assert_eq!(vlan, Some(42));
                let r = ArpRepr::parse(&buf[..n], offset).unwrap();
                assert_eq!((r.sender_ip, r.target_ip), (VIP, VIP));
                assert_eq!(r.eth_dst(), BROADCAST);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn refuses_truncated_and_foreign() {
        for cut in 14..42 {
            assert_eq!(
                ArpRepr::parse(&REQUEST[..cut], 14),
                Err(ArpError::Truncated)
            );
        }
        let mut odd = REQUEST;
        odd[19] = 16; // protocol address length 16: not IPv4
        assert!(ArpRepr::parse(&odd, 14).is_err());
        let mut op = REQUEST;
        op[21] = 9;
        assert_eq!(ArpRepr::parse(&op, 14), Err(ArpError::UnknownOperation(9)));
        let mut small = [0u8; 30];
        assert!(matches!(
            ArpRepr::request(MAC_A, CLIENT, VIP).emit_frame(&mut small, None),
            Err(ArpError::BufferTooSmall { needed: 60, .. })
        ));
    }
}
