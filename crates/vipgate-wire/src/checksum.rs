//! Internet checksum (RFC 1071): full computation and incremental update (RFC 1624).
//!
//! NAT changes a few 16-bit words of a header; recomputing over the payload would cost a pass
//! over every byte, so rewrites adjust the stored checksum by the difference of the changed
//! words instead. The incremental form is RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`,
//! which, unlike equation 2, never produces the -0 (0x0000 from 0xFFFF) ambiguity for the
//! fields we touch.

use std::net::Ipv4Addr;

/// Adds `data` as big-endian 16-bit words to `acc` (an odd trailing byte is padded with zero).
#[inline]
pub fn add_bytes(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for pair in &mut chunks {
        if let &[hi, lo] = pair {
            acc += u64::from(u16::from_be_bytes([hi, lo]));
        }
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a wide one's-complement accumulator to 16 bits (not inverted).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum of `data`: the inverted one's-complement sum of its 16-bit words.
#[inline]
pub fn checksum(data: &[u8]) -> u16 {
    !fold(add_bytes(0, data))
}

/// The sum of the IPv4 pseudo header that TCP and UDP checksums cover.
#[inline]
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, l4_len: u16) -> u64 {
    let s = u32::from(src);
    let d = u32::from(dst);
    u64::from(s >> 16)
        + u64::from(s & 0xffff)
        + u64::from(d >> 16)
        + u64::from(d & 0xffff)
        + u64::from(proto)
        + u64::from(l4_len)
}

/// The TCP or UDP checksum of `segment` (header with its checksum field zeroed, and payload).
///
/// A UDP result of 0 is sent as 0xFFFF (RFC 768): 0 means "no checksum".
#[inline]
pub fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, segment: &[u8]) -> u16 {
    let len = u16::try_from(segment.len()).unwrap_or(u16::MAX);
    let c = !fold(add_bytes(pseudo_header_sum(src, dst, proto, len), segment));
    if proto == 17 && c == 0 {
        0xffff
    } else {
        c
    }
}

/// The difference to apply to a checksum when words change, accumulated over several edits
/// and applied once with [`Delta::apply`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u64);

impl Delta {
    /// No change.
    pub const ZERO: Delta = Delta(0);

    /// Records that a 16-bit word changed from `old` to `new`.
    #[inline]
    pub fn word(self, old: u16, new: u16) -> Delta {
        Delta(self.0 + u64::from(!old) + u64::from(new))
    }

    /// Records that a 32-bit value (an address) changed from `old` to `new`.
    #[inline]
    pub fn addr(self, old: Ipv4Addr, new: Ipv4Addr) -> Delta {
        let (o, n) = (u32::from(old), u32::from(new));
        self.word((o >> 16) as u16, (n >> 16) as u16)
            .word(o as u16, n as u16)
    }

    /// Adds another delta.
    #[inline]
    pub fn plus(self, other: Delta) -> Delta {
        Delta(self.0 + other.0)
    }

    /// The updated checksum: RFC 1624 eqn. 3, `HC' = ~(~HC + sum(~m + m'))`.
    #[inline]
    pub fn apply(self, checksum: u16) -> u16 {
        !fold(u64::from(!checksum) + self.0)
    }

    /// Like [`Delta::apply`] for a UDP checksum: 0 (no checksum) stays 0, and a result of 0
    /// is sent as 0xFFFF (RFC 768).
    #[inline]
    pub fn apply_udp(self, checksum: u16) -> u16 {
        if checksum == 0 {
            return 0;
        }
        match self.apply(checksum) {
            0 => 0xffff,
            c => c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 1071 section 3 example words.
    #[test]
    fn rfc1071_example_sum() {
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add_bytes(0, &data)), 0xddf2);
        assert_eq!(checksum(&data), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(
            checksum(&[0x12, 0x34, 0x56]),
            checksum(&[0x12, 0x34, 0x56, 0x00])
        );
    }

    #[test]
    fn known_ipv4_header_checksum() {
        // A header from the Wikipedia IPv4 checksum example: checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10] = 0xb8;
        h[11] = 0x61;
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn incremental_equals_full_recomputation() {
        let mut data = [0u8; 20];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(11);
        }
        let before = checksum(&data);
        let old = u16::from_be_bytes([data[4], data[5]]);
        data[4] = 0xff;
        data[5] = 0xff;
        let after = Delta::ZERO.word(old, 0xffff).apply(before);
        assert_eq!(after, checksum(&data));
    }

    #[test]
    fn udp_zero_checksum_stays_zero() {
        let d = Delta::ZERO.word(1, 2);
        assert_eq!(d.apply_udp(0), 0);
        assert_ne!(d.apply_udp(0x1234), 0);
    }

    proptest::proptest! {
        #[test]
        fn incremental_matches_full(mut data in proptest::collection::vec(proptest::num::u8::ANY, 2..64),
                                    pos in 0usize..32, new in proptest::num::u16::ANY) {
            let pos = (pos % (data.len() / 2)) * 2;
            let before = checksum(&data);
            let old = u16::from_be_bytes([data[pos], data[pos + 1]]);
            let [hi, lo] = new.to_be_bytes();
            data[pos] = hi;
            data[pos + 1] = lo;
            let inc = Delta::ZERO.word(old, new).apply(before);
            // One's complement has two zeros; both verify the same way.
            let full = checksum(&data);
            proptest::prop_assert!(inc == full || (inc == 0xffff && full == 0) || (inc == 0 && full == 0xffff));
        }
    }
}
