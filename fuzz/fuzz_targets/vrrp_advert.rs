//! VRRP adverts from the segment on arbitrary bytes: parsing never panics; an advert that
//! parses emits a frame that parses back to the same advert; feeding it to an election in
//! either role never panics and leaves it in a valid role.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use vipgate_ha::advert::Advert;
use vipgate_ha::election::{Election, ElectionConfig, Role};

fuzz_target!(|data: &[u8]| {
    let Ok(r) = Advert::parse_frame(data) else {
        return;
    };
    let mut buf = vec![0u8; 14 + 20 + r.advert.len()];
    let n = r
        .advert
        .emit_frame(&mut buf, r.src_mac, [1, 0, 0x5e, 0, 0, 0x12], r.src, r.dst)
        .expect("sized for the advert");
    let again = Advert::parse_frame(&buf[..n]).expect("an emitted advert parses");
    assert_eq!(again.advert, r.advert);
    for priority in [100, 255] {
        let mut e = Election::new(ElectionConfig {
            vrid: r.advert.vrid,
            priority,
            interval_cs: 1,
            preempt: true,
            preempt_delay_ms: 0,
            peers: Vec::new(),
            own_addr: Ipv4Addr::new(198, 18, 0, 1),
            addrs: vec![Ipv4Addr::new(203, 0, 113, 10)],
        });
        e.start(0);
        let _ = e.on_advert(r.src, &r.advert, 1);
        let _ = e.poll(u64::MAX / 2);
        assert_ne!(e.role(), Role::Initialize);
    }
});
