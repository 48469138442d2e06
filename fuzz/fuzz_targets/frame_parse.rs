//! Frame parsing and in-place rewriting on arbitrary bytes: parsing never panics, a parsed
//! layout lies within the frame, and rewriting a parsed IPv4 frame always succeeds and gives
//! a frame that parses again with the new addresses (its header checksum still verifying).
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use vipgate_wire::arp::ArpRepr;
use vipgate_wire::frame::{parse, Parsed, Transport};
use vipgate_wire::rewrite::{rewrite, rewrite_inner, Tuple};

fuzz_target!(|data: &[u8]| {
    // The first 12 bytes choose the new tuple; the rest is the frame.
    let Some((choice, frame)) = data.split_first_chunk::<12>() else {
        return;
    };
    let word =
        |i: usize| u32::from_be_bytes([choice[i], choice[i + 1], choice[i + 2], choice[i + 3]]);
    let to = Tuple {
        src: Ipv4Addr::from(word(0)),
        dst: Ipv4Addr::from(word(4)),
        sport: u16::from_be_bytes([choice[8], choice[9]]),
        dport: u16::from_be_bytes([choice[10], choice[11]]),
    };
    match parse(frame) {
        Ok(Parsed::Ipv4(l)) => {
            assert!(l.l3 < l.l4 && l.l4 <= l.end && l.end <= frame.len());
            let mut f = frame.to_vec();
            rewrite(&mut f, &l, &to).expect("a parsed layout fits its frame");
            if let Transport::IcmpError { .. } = l.transport {
                let inner = l.icmp_inner(frame).expect("parse checked the quote");
                assert!(inner.l3 >= l.l4 && inner.l4 <= l.end);
                rewrite_inner(&mut f, &l, &inner, &to).expect("the quote fits its frame");
            }
            match parse(&f) {
                Ok(Parsed::Ipv4(again)) => assert_eq!((again.src, again.dst), (to.src, to.dst)),
                other => panic!("rewritten frame no longer parses: {other:?}"),
            }
        }
        Ok(Parsed::Arp { offset, .. }) => {
            let _ = ArpRepr::parse(frame, offset);
        }
        Ok(Parsed::Ipv6 | Parsed::Other(_)) | Err(_) => {}
    }
});
