//! The data plane's pipeline on a sequence of arbitrary frames arriving on either interface,
//! with time moving on: no panic, every frame counted once, and every frame sent (in place
//! or built by the pipeline) fits its buffer.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use vipgate_dataplane::{
    Action, Dataplane, DataplaneConfig, Emit, Interface, NeighborConfig, Route,
};
use vipgate_nat::policy::{DnatRule, Ipv4Net, NatConfig, PatRule};
use vipgate_nat::{Proto, Side};

const PUB_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const PRIV_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const BUF: usize = 2048;

fn dataplane() -> Option<Dataplane> {
    let pub_net = Ipv4Net::new(Ipv4Addr::new(203, 0, 113, 0), 24)?;
    let priv_net = Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 24)?;
    let config = DataplaneConfig {
        interfaces: vec![
            Interface {
                name: "pub".into(),
                side: Side::Public,
                mac: PUB_MAC,
                addr: Ipv4Addr::new(203, 0, 113, 1),
                net: pub_net,
                virtual_addrs: Vec::new(),
            },
            Interface {
                name: "priv".into(),
                side: Side::Private,
                mac: PRIV_MAC,
                addr: Ipv4Addr::new(198, 18, 0, 1),
                net: priv_net,
                virtual_addrs: Vec::new(),
            },
        ],
        routes: vec![Route {
            net: Ipv4Net::new(Ipv4Addr::UNSPECIFIED, 0)?,
            iface: 0,
            via: Some(Ipv4Addr::new(203, 0, 113, 254)),
        }],
        neighbors: NeighborConfig {
            capacity: 16,
            reachable_ms: 1_000,
            retry_ms: 10,
            retries: 2,
            hold: 2,
        },
        icmp_rate: 5,
        frame_size: BUF,
        virtual_mac: None,
    };
    let nat = NatConfig {
        capacity: 64,
        vips: vec![VIP],
        dnat: vec![DnatRule {
            vip: VIP,
            proto: Proto::Tcp,
            port_lo: 80,
            port_hi: 80,
            to: Ipv4Addr::new(198, 18, 0, 10),
            to_port: None,
        }],
        pat: vec![PatRule {
            from: vec![priv_net],
            to: vec![VIP],
        }],
        ..NatConfig::default()
    };
    Dataplane::new(config, nat).ok()
}

struct Sink(usize);

impl Emit for Sink {
    fn emit(&mut self, _iface: usize, build: &mut dyn FnMut(&mut [u8]) -> Option<usize>) -> bool {
        let mut buf = [0u8; BUF];
        match build(&mut buf) {
            Some(n) => {
                assert!(n <= BUF);
                self.0 += 1;
                true
            }
            None => false,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some(dp) = dataplane() else { return };
    let mut p = dp.pipeline(0);
    let mut sink = Sink(0);
    let mut frames = 0u64;
    let mut now = 0u64;
    // Records: [iface/time byte][len][bytes...]; frames are addressed to the interface's MAC
    // half of the time so that most reach the parser.
    let mut rest = data;
    while let [ctl, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (body, next) = tail.split_at(n);
        rest = next;
        let iface = usize::from(ctl & 1);
        now += u64::from(ctl >> 2) * 7;
        let mut buf = [0u8; BUF];
        buf[..n].copy_from_slice(body);
        if ctl & 2 != 0 && n >= 6 {
            buf[..6].copy_from_slice(if iface == 0 { &PUB_MAC } else { &PRIV_MAC });
        }
        if let Action::Send { iface: out, len } = p.frame(iface, &mut buf, n, now, &mut sink) {
            assert!(out < 2 && len <= BUF);
        }
        p.tick(now, &mut sink);
        frames += 1;
    }
    assert_eq!(p.counters.rx_frames, frames);
});
