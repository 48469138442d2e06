//! The whole engine on a sequence of arbitrary frames from both sides: no panic, every frame
//! counted exactly once, and every forwarded or answered frame still a valid IPv4 frame.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use vipgate_nat::counters::Counters;
use vipgate_nat::engine::{Engine, Verdict};
use vipgate_nat::policy::{Backend, DnatRule, Filtering, Ipv4Net, NatConfig, PatRule, Pool};
use vipgate_nat::{Proto, Side};
use vipgate_wire::frame::{parse, Parsed};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const PAT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);

fn engine(eif: bool) -> Engine {
    let config = NatConfig {
        capacity: 64,
        workers: 1,
        port_lo: 1024,
        port_hi: 1100,
        filtering: if eif {
            Filtering::EndpointIndependent
        } else {
            Filtering::AddressAndPortDependent
        },
        vips: vec![VIP],
        dnat: vec![DnatRule {
            vip: VIP,
            proto: Proto::Tcp,
            port_lo: 80,
            port_hi: 81,
            to: Ipv4Addr::new(198, 18, 0, 2),
            to_port: None,
        }],
        pools: vec![Pool {
            name: "p".into(),
            vip: VIP,
            proto: Proto::Udp,
            port: 53,
            backends: vec![
                Backend {
                    addr: Ipv4Addr::new(198, 18, 0, 3),
                    port: 53,
                    weight: 1,
                },
                Backend {
                    addr: Ipv4Addr::new(198, 18, 0, 4),
                    port: 53,
                    weight: 3,
                },
            ],
            table_size: 101,
            when_empty: Default::default(),
            persistence: Default::default(),
            reset_on_down: false,
        }],
        pat: vec![PatRule {
            from: vec![Ipv4Net {
                addr: Ipv4Addr::new(198, 18, 0, 0),
                len: 16,
            }],
            to: vec![PAT, VIP],
        }],
        frag_entries: 8,
        event_queue: 16,
        ..NatConfig::default()
    };
    Engine::new(config).expect("valid fuzz config")
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let engine = engine(mode & 1 == 1);
    let mut w = engine.worker(0);
    let mut now = 1u32;
    // Each record: a control byte (side, time step), a length byte, then the frame.
    while let [control, len, tail @ ..] = rest {
        let n = usize::from(*len).min(tail.len());
        let (frame, next) = tail.split_at(n);
        rest = next;
        let side = if control & 1 == 0 {
            Side::Public
        } else {
            Side::Private
        };
        now = now.saturating_add(u32::from(control >> 1) * 60);
        let mut f = frame.to_vec();
        let before = counted(&w.counters);
        let v = engine.process(&mut w, &mut f, side, now);
        assert_eq!(counted(&w.counters), before + 1, "every frame counted once");
        if matches!(v, Verdict::Forward(_) | Verdict::Reply) {
            assert!(
                matches!(parse(&f), Ok(Parsed::Ipv4(_))),
                "sent a frame that does not parse"
            );
        }
        engine.take_released(&mut w, |held, _| {
            assert!(
                matches!(parse(held), Ok(Parsed::Ipv4(_))),
                "released a frame that does not parse"
            );
        });
        if control & 0x80 != 0 {
            engine.reclaim(&mut w, now, 64);
        }
        engine.drain_events(0, |_| {});
    }
});

/// Verdicts counted so far: every processed frame adds exactly one.
fn counted(c: &Counters) -> u64 {
    c.forwarded + c.echo_replies + c.total_drops() + c.frags_held
}
