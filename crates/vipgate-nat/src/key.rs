//! Flow keys: the 5-tuple a packet is looked up by.

use std::net::Ipv4Addr;

/// The transport protocols the engine translates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Proto {
    /// ICMPv4 queries (echo); errors are translated through the flow they embed.
    Icmp = 1,
    /// TCP.
    Tcp = 6,
    /// UDP.
    Udp = 17,
}

impl Proto {
    /// The protocol for an IPv4 protocol number, if the engine translates it.
    pub fn from_number(n: u8) -> Option<Proto> {
        match n {
            1 => Some(Proto::Icmp),
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }

    /// The IPv4 protocol number.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// A dense index (0, 1, 2) for per-protocol arrays.
    pub fn index(self) -> usize {
        match self {
            Proto::Icmp => 0,
            Proto::Tcp => 1,
            Proto::Udp => 2,
        }
    }
}

/// One direction of a flow as seen on the wire.
///
/// For ICMP echo the identifier stands in for a port: an echo request has it in `sport`
/// (and `dport` 0), an echo reply in `dport` (and `sport` 0), so that the key of a reply is
/// exactly the reversed key of its request, as with TCP and UDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Source port (or ICMP echo request identifier).
    pub sport: u16,
    /// Destination port (or ICMP echo reply identifier).
    pub dport: u16,
    /// Protocol.
    pub proto: Proto,
}

impl FlowKey {
    /// The key of the opposite direction.
    #[inline]
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
        }
    }

    /// Packs the key into two words; the table stores and compares keys in this form.
    #[inline]
    pub fn pack(&self) -> [u64; 2] {
        let a = (u64::from(u32::from(self.src)) << 32) | u64::from(u32::from(self.dst));
        let b = (u64::from(self.sport) << 48)
            | (u64::from(self.dport) << 32)
            | (u64::from(self.proto.number()) << 24);
        [a, b]
    }

    /// The inverse of [`FlowKey::pack`]; `None` for words no key packs into.
    #[inline]
    pub fn unpack(words: [u64; 2]) -> Option<FlowKey> {
        let [a, b] = words;
        if b & 0x00ff_ffff != 0 {
            return None;
        }
        Some(FlowKey {
            src: Ipv4Addr::from((a >> 32) as u32),
            dst: Ipv4Addr::from(a as u32),
            sport: (b >> 48) as u16,
            dport: (b >> 32) as u16,
            proto: Proto::from_number((b >> 24) as u8)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> FlowKey {
        FlowKey {
            src: Ipv4Addr::new(198, 18, 0, 10),
            dst: Ipv4Addr::new(203, 0, 113, 7),
            sport: 40000,
            dport: 443,
            proto: Proto::Tcp,
        }
    }

    #[test]
    fn pack_roundtrips_and_distinguishes_fields() {
        let k = key();
        assert_eq!(FlowKey::unpack(k.pack()), Some(k));
        let mut other = k;
        other.proto = Proto::Udp;
        assert_ne!(k.pack(), other.pack());
        assert_ne!(k.pack(), k.reversed().pack());
        assert_eq!(k.reversed().reversed(), k);
    }

    #[test]
    fn unpack_rejects_foreign_words() {
        assert_eq!(FlowKey::unpack([0, 0]), None);
        assert_eq!(FlowKey::unpack([0, 1]), None);
    }
}
