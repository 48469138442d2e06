//! The data plane's cost on top of the engine: the same established flows, frame by frame,
//! through `Engine::process` alone and through `Pipeline::frame` (classification, TTL, route
//! and neighbor lookups, Ethernet rewrite), measured side by side in one run.
//!
//! Each frame is first copied from the trace into a receive buffer, as a NIC's DMA would put
//! it there; that copy is in both numbers.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    missing_docs
)]

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use vipgate_benches::{open_flows, pool_config, Flow, Rng, BACKENDS};
use vipgate_dataplane::{
    Action, Dataplane, DataplaneConfig, Emit, Interface, NeighborConfig, Route,
};
use vipgate_nat::policy::Ipv4Net;
use vipgate_nat::{Side, Verdict};
use vipgate_wire::arp::{ArpOp, ArpRepr};
use vipgate_wire::testing::{MAC_CLIENT, MAC_GATEWAY};

const FLOWS: u32 = 1024;
const FRAMES: usize = 4096;
const RTR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
const PUB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PRIV_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 200);

/// Frames built by the pipeline are not expected here; any would be a setup error.
struct NoEmit;

impl Emit for NoEmit {
    fn emit(&mut self, _: usize, _: &mut dyn FnMut(&mut [u8]) -> Option<usize>) -> bool {
        panic!("the pipeline built a frame during the benchmark");
    }
}

fn dataplane() -> Dataplane {
    let net = |a: Ipv4Addr, len| Ipv4Net::new(a, len).unwrap();
    // Both ports share the MAC the benchmark frames are addressed to.
    let iface = |name: &str, side, addr| Interface {
        name: name.into(),
        side,
        mac: MAC_GATEWAY,
        addr,
        net: net(addr, 24),
        virtual_addrs: Vec::new(),
    };
    Dataplane::new(
        DataplaneConfig {
            interfaces: vec![
                iface("pub", Side::Public, PUB_IP),
                iface("priv", Side::Private, PRIV_IP),
            ],
            routes: vec![Route {
                net: net(Ipv4Addr::UNSPECIFIED, 0),
                iface: 0,
                via: Some(RTR),
            }],
            neighbors: NeighborConfig::default(),
            icmp_rate: 0,
            frame_size: 2048,
            virtual_mac: None,
        },
        pool_config(2 * FLOWS, 1),
    )
    .unwrap()
}

fn arp_reply(mac: [u8; 6], ip: Ipv4Addr, to: Ipv4Addr) -> Vec<u8> {
    let r = ArpRepr {
        op: ArpOp::Reply,
        sender_mac: mac,
        sender_ip: ip,
        target_mac: MAC_GATEWAY,
        target_ip: to,
    };
    let mut f = vec![0u8; 64];
    let n = r.emit_frame(&mut f, None).unwrap();
    f.truncate(n);
    f
}

/// The frames: blocks of 32 client segments (public) and 32 backend segments (private) of
/// random flows, as a worker polling both ports sees them.
fn trace(flows: &[Flow]) -> Vec<(usize, Vec<u8>)> {
    let mut rng = Rng::new(7);
    (0..FRAMES)
        .map(|i| {
            let f = flows[rng.below(flows.len() as u64) as usize];
            if (i / 32) % 2 == 0 {
                (0, f.orig_frame())
            } else {
                (1, f.reply_frame())
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let dp = dataplane();
    let mut setup = dp.engine().worker(0);
    let flows = open_flows(dp.engine(), &mut setup, 0, FLOWS, 1).unwrap();
    let frames = trace(&flows);
    let mut p = dp.pipeline(0);
    let mut buf = vec![0u8; 2048];
    let mut learn = |iface, f: Vec<u8>| {
        buf[..f.len()].copy_from_slice(&f);
        p.frame(iface, &mut buf, f.len(), 1_000, &mut NoEmit);
    };
    learn(0, arp_reply(MAC_CLIENT, RTR, PUB_IP));
    for i in 0..BACKENDS {
        learn(
            1,
            arp_reply(
                [2, 0, 0, 0, 0, 0x20 + i],
                vipgate_benches::backend(i),
                PRIV_IP,
            ),
        );
    }

    let mut g = c.benchmark_group("dataplane_1k_flows");
    g.throughput(Throughput::Elements(FRAMES as u64));
    let mut w = dp.engine().worker(0);
    g.bench_function("engine_only", |b| {
        b.iter(|| {
            for (iface, f) in &frames {
                buf[..f.len()].copy_from_slice(f);
                let side = if *iface == 0 {
                    Side::Public
                } else {
                    Side::Private
                };
                let v = dp.engine().process(&mut w, &mut buf[..f.len()], side, 1);
                debug_assert!(matches!(v, Verdict::Forward(_)));
                black_box(v);
            }
        })
    });
    g.bench_function("pipeline", |b| {
        b.iter(|| {
            for (iface, f) in &frames {
                buf[..f.len()].copy_from_slice(f);
                let a = p.frame(*iface, &mut buf, f.len(), 1_000, &mut NoEmit);
                debug_assert!(matches!(a, Action::Send { .. }));
                black_box(a);
            }
        })
    });
    g.finish();
    // Every frame went through: a benchmark of drops would measure nothing.
    let named = p.named_counters();
    let get = |n: &str| named.iter().find(|(k, _)| *k == n).map_or(0, |(_, v)| *v);
    assert_eq!(get("rx_frames"), get("tx_frames") + 1 + u64::from(BACKENDS));
    assert_eq!(w.counters.total_drops(), 0);
}

criterion_group!(benches, bench);
criterion_main!(benches);
