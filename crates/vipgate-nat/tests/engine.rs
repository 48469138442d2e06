//! The engine end to end over byte fixtures: DNAT, pools, PAT with BEHAVE behaviour,
//! hairpinning, ICMP echo and errors, fragments, timeouts, limits, bad input, and the
//! export/install path of state sync.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::expect_used
)]

use std::net::Ipv4Addr;

use proptest::prelude::*;
use vipgate_nat::counters::DropReason;
use vipgate_nat::engine::{ConnEvent, Engine, Verdict, Worker};
use vipgate_nat::policy::{
    Backend, DnatRule, Filtering, Ipv4Net, NatConfig, PatRule, Persistence, Pool,
};
use vipgate_nat::{FlowKey, Proto, Side};
use vipgate_wire::frame::{InnerPorts, Transport};
use vipgate_wire::testing::{self, layout, verify_checksums};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const PAT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const PAT_IP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 8);
const ROUTER: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const H2: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 12);
const B1: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const B2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const B3: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const SYN_ACK: u8 = 0x12;
const FIN_ACK: u8 = 0x11;
const RST: u8 = 0x04;

fn config() -> NatConfig {
    NatConfig {
        capacity: 4096,
        vips: vec![VIP],
        dnat: vec![
            DnatRule {
                vip: VIP,
                proto: Proto::Tcp,
                port_lo: 80,
                port_hi: 80,
                to: H2,
                to_port: Some(8080),
            },
            DnatRule {
                vip: VIP,
                proto: Proto::Udp,
                port_lo: 5000,
                port_hi: 5009,
                to: H2,
                to_port: Some(6000),
            },
        ],
        pools: vec![Pool {
            name: "web".into(),
            vip: VIP,
            proto: Proto::Tcp,
            port: 443,
            backends: vec![
                Backend {
                    addr: B1,
                    port: 8443,
                    weight: 1,
                },
                Backend {
                    addr: B2,
                    port: 8443,
                    weight: 1,
                },
                Backend {
                    addr: B3,
                    port: 8443,
                    weight: 2,
                },
            ],
            table_size: 65537,
            when_empty: Default::default(),
            persistence: Default::default(),
            reset_on_down: false,
        }],
        pat: vec![PatRule {
            from: vec![Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 24).unwrap()],
            to: vec![PAT_IP],
        }],
        event_queue: 1024,
        ..NatConfig::default()
    }
}

struct Lab {
    engine: Engine,
    w: Worker,
}

impl Lab {
    fn new(config: NatConfig) -> Lab {
        let engine = Engine::new(config).unwrap();
        let w = engine.worker(0);
        Lab { engine, w }
    }

    fn send(&mut self, frame: &mut [u8], side: Side, now: u32) -> Verdict {
        self.engine.process(&mut self.w, frame, side, now)
    }

    /// Sends and expects a forward to `out`, with checksums that verify.
    fn pass(&mut self, mut frame: Vec<u8>, side: Side, out: Side, now: u32) -> Vec<u8> {
        let v = self.send(&mut frame, side, now);
        assert_eq!(v, Verdict::Forward(out), "frame {:?}", layout(&frame));
        verify_checksums(&frame).unwrap();
        frame
    }

    fn dropped(&mut self, mut frame: Vec<u8>, side: Side, now: u32) -> DropReason {
        match self.send(&mut frame, side, now) {
            Verdict::Drop(r) => r,
            v => panic!("expected a drop, got {v:?}"),
        }
    }
}

fn ports_of(frame: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    let l = layout(frame);
    match l.transport {
        Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport } => {
            (l.src, sport, l.dst, dport)
        }
        Transport::IcmpEcho { id, .. } => (l.src, id, l.dst, id),
        t => panic!("no ports in {t:?}"),
    }
}

#[test]
fn dnat_to_one_host_both_ways() {
    let mut lab = Lab::new(config());
    let syn = testing::tcp(CLIENT, VIP, 40000, 80, SYN, b"");
    let out = lab.pass(syn, Side::Public, Side::Private, 1);
    assert_eq!(ports_of(&out), (CLIENT, 40000, H2, 8080));
    let reply = testing::tcp(H2, CLIENT, 8080, 40000, SYN_ACK, b"");
    let back = lab.pass(reply, Side::Private, Side::Public, 1);
    assert_eq!(ports_of(&back), (VIP, 80, CLIENT, 40000));
    let data = testing::tcp(CLIENT, VIP, 40000, 80, ACK, b"GET /");
    let out = lab.pass(data, Side::Public, Side::Private, 2);
    assert_eq!(&out[out.len() - 5..], b"GET /");
    assert_eq!(lab.w.counters.conns_created, 1);
}

#[test]
fn dnat_port_range_maps_with_offset() {
    let mut lab = Lab::new(config());
    let out = lab.pass(
        testing::udp(CLIENT, VIP, 777, 5003, b"x"),
        Side::Public,
        Side::Private,
        1,
    );
    assert_eq!(ports_of(&out), (CLIENT, 777, H2, 6003));
    // A port just past the range has no rule.
    assert_eq!(
        lab.dropped(testing::udp(CLIENT, VIP, 777, 5010, b"x"), Side::Public, 1),
        DropReason::NoRule
    );
}

#[test]
fn pool_spreads_by_weight_and_sticks() {
    let mut lab = Lab::new(config());
    let mut seen = std::collections::HashMap::new();
    for i in 0..400u16 {
        let out = lab.pass(
            testing::tcp(CLIENT, VIP, 10000 + i, 443, SYN, b""),
            Side::Public,
            Side::Private,
            1,
        );
        let (_, _, backend, port) = ports_of(&out);
        assert_eq!(port, 8443);
        *seen.entry(backend).or_insert(0u32) += 1;
        // The same flow again reaches the same backend (the table remembers it).
        let again = lab.pass(
            testing::tcp(CLIENT, VIP, 10000 + i, 443, ACK, b""),
            Side::Public,
            Side::Private,
            1,
        );
        assert_eq!(ports_of(&again).2, backend);
    }
    assert_eq!(seen.len(), 3, "every backend got flows: {seen:?}");
    assert!(
        seen[&B3] > seen[&B1] && seen[&B3] > seen[&B2],
        "weight 2 gets most: {seen:?}"
    );
}

#[test]
fn pat_preserves_port_and_is_endpoint_independent() {
    let mut lab = Lab::new(config());
    let out = lab.pass(
        testing::udp(H1, CLIENT, 5353, 53, b"q1"),
        Side::Private,
        Side::Public,
        1,
    );
    assert_eq!(ports_of(&out), (PAT_IP, 5353, CLIENT, 53));
    let back = lab.pass(
        testing::udp(CLIENT, PAT_IP, 53, 5353, b"a1"),
        Side::Public,
        Side::Private,
        1,
    );
    assert_eq!(ports_of(&back), (CLIENT, 53, H1, 5353));
    // Same internal endpoint to another destination: same public endpoint (RFC 4787 REQ-1).
    let out2 = lab.pass(
        testing::udp(H1, CLIENT2, 5353, 123, b"q2"),
        Side::Private,
        Side::Public,
        2,
    );
    assert_eq!(ports_of(&out2), (PAT_IP, 5353, CLIENT2, 123));
    assert_eq!(lab.w.counters.mappings_created, 1);
    assert_eq!(lab.w.counters.conns_created, 2);
}

#[test]
fn two_hosts_same_source_port_get_distinct_public_ports() {
    let mut lab = Lab::new(config());
    let a = lab.pass(
        testing::tcp(H1, CLIENT, 33000, 80, SYN, b""),
        Side::Private,
        Side::Public,
        1,
    );
    let b = lab.pass(
        testing::tcp(H2, CLIENT, 33000, 80, SYN, b""),
        Side::Private,
        Side::Public,
        1,
    );
    let (pa, pb) = (ports_of(&a).1, ports_of(&b).1);
    assert_ne!(pa, pb);
    let ra = lab.pass(
        testing::tcp(CLIENT, PAT_IP, 80, pa, SYN_ACK, b""),
        Side::Public,
        Side::Private,
        1,
    );
    let rb = lab.pass(
        testing::tcp(CLIENT, PAT_IP, 80, pb, SYN_ACK, b""),
        Side::Public,
        Side::Private,
        1,
    );
    assert_eq!(ports_of(&ra), (CLIENT, 80, H1, 33000));
    assert_eq!(ports_of(&rb), (CLIENT, 80, H2, 33000));
}

#[test]
fn filtering_default_refuses_unsolicited_and_eif_lets_in() {
    let mut lab = Lab::new(config());
    lab.pass(
        testing::udp(H1, CLIENT, 4000, 3478, b"stun"),
        Side::Private,
        Side::Public,
        1,
    );
    let stranger = testing::udp(CLIENT2, PAT_IP, 9999, 4000, b"hi");
    assert_eq!(
        lab.dropped(stranger.clone(), Side::Public, 1),
        DropReason::Filtered
    );
    // Even the same host from another port is filtered (address and port dependent).
    assert_eq!(
        lab.dropped(
            testing::udp(CLIENT, PAT_IP, 3479, 4000, b"hi"),
            Side::Public,
            1
        ),
        DropReason::Filtered
    );

    let mut eif = config();
    eif.filtering = Filtering::EndpointIndependent;
    let mut lab = Lab::new(eif);
    lab.pass(
        testing::udp(H1, CLIENT, 4000, 3478, b"stun"),
        Side::Private,
        Side::Public,
        1,
    );
    let inbound = lab.pass(stranger, Side::Public, Side::Private, 1);
    assert_eq!(ports_of(&inbound), (CLIENT2, 9999, H1, 4000));
    let reply = lab.pass(
        testing::udp(H1, CLIENT2, 4000, 9999, b"yo"),
        Side::Private,
        Side::Public,
        1,
    );
    assert_eq!(ports_of(&reply), (PAT_IP, 4000, CLIENT2, 9999));
}

#[test]
fn hairpin_to_vip_translates_both_ends() {
    let mut lab = Lab::new(config());
    let out = lab.pass(
        testing::tcp(H1, VIP, 41000, 80, SYN, b""),
        Side::Private,
        Side::Private,
        1,
    );
    let (src, sport, dst, dport) = ports_of(&out);
    assert_eq!((dst, dport), (H2, 8080));
    assert_eq!(src, PAT_IP, "the source is H1's own public mapping");
    let back = lab.pass(
        testing::tcp(H2, src, 8080, sport, SYN_ACK, b""),
        Side::Private,
        Side::Private,
        1,
    );
    assert_eq!(ports_of(&back), (VIP, 80, H1, 41000));
}

#[test]
fn hairpin_without_pat_rule_uses_the_vip() {
    let mut c = config();
    c.pat.clear();
    let mut lab = Lab::new(c);
    let out = lab.pass(
        testing::tcp(H1, VIP, 41000, 80, SYN, b""),
        Side::Private,
        Side::Private,
        1,
    );
    let (src, sport, _, _) = ports_of(&out);
    assert_eq!(src, VIP);
    assert_ne!(sport, 80, "a DNAT port of the VIP is never handed out");
    let back = lab.pass(
        testing::tcp(H2, VIP, 8080, sport, SYN_ACK, b""),
        Side::Private,
        Side::Private,
        1,
    );
    assert_eq!(ports_of(&back), (VIP, 80, H1, 41000));
}

#[test]
fn hairpin_to_another_hosts_mapping() {
    let mut c = config();
    c.filtering = Filtering::EndpointIndependent;
    let mut lab = Lab::new(c);
    // H2 gets a mapping by talking out.
    let out = lab.pass(
        testing::udp(H2, CLIENT, 7000, 3478, b""),
        Side::Private,
        Side::Public,
        1,
    );
    let h2_public = ports_of(&out).1;
    // H1 reaches H2 through H2's public endpoint.
    let hp = lab.pass(
        testing::udp(H1, PAT_IP, 7100, h2_public, b"p2p"),
        Side::Private,
        Side::Private,
        2,
    );
    let (src, sport, dst, dport) = ports_of(&hp);
    assert_eq!((dst, dport), (H2, 7000));
    assert_eq!(
        (src, sport),
        (PAT_IP, 7100),
        "H1 appears as its own mapping"
    );
    let back = lab.pass(
        testing::udp(H2, PAT_IP, 7000, 7100, b"ack"),
        Side::Private,
        Side::Private,
        2,
    );
    assert_eq!(ports_of(&back), (PAT_IP, h2_public, H1, 7100));
}

#[test]
fn hairpin_through_a_mapping_keeps_it_alive() {
    let mut c = config();
    c.filtering = Filtering::EndpointIndependent;
    let mut lab = Lab::new(c.clone());
    let t = lab.engine.config().timeouts;
    let out = lab.pass(
        testing::udp(H2, CLIENT, 7000, 3478, b""),
        Side::Private,
        Side::Public,
        1,
    );
    let h2_public = ports_of(&out).1;
    // H1 keeps talking to H2 through H2's mapping long after H2's own flow went idle.
    let ai = lab.engine.ports().addr_index(PAT_IP).unwrap();
    let mut now = 1;
    for _ in 0..4 {
        now += t.udp / 2;
        lab.pass(
            testing::udp(H1, PAT_IP, 7100, h2_public, b"p2p"),
            Side::Private,
            Side::Private,
            now,
        );
        lab.engine.reclaim(&mut lab.w, now, 1 << 20);
        lab.engine.reclaim(&mut lab.w, now, 1 << 20);
    }
    assert!(now > 1 + t.udp, "H2's own flow has expired by now");
    assert!(
        lab.engine.ports().is_allocated(ai, Proto::Udp, 7000),
        "its mapping lives on"
    );

    // The standby gets the hairpin connection with both mappings.
    let standby = Engine::new(c).unwrap();
    let mut mappings = Vec::new();
    let mut conns = Vec::new();
    lab.engine.table().for_each_live(now, |id, rec| {
        if rec.state == vipgate_nat::state::ConnState::Mapping {
            mappings.push(id);
        } else {
            conns.push(id);
        }
    });
    assert_eq!((mappings.len(), conns.len()), (2, 1));
    for id in mappings.iter().chain(&conns) {
        standby
            .install(&lab.engine.export(*id, now).unwrap(), now)
            .unwrap();
    }
    let mut sw = standby.worker(0);
    let mut again = testing::udp(H1, PAT_IP, 7100, h2_public, b"p2p");
    assert_eq!(
        standby.process(&mut sw, &mut again, Side::Private, now),
        Verdict::Forward(Side::Private)
    );
    assert_eq!(ports_of(&again), (PAT_IP, 7100, H2, 7000));

    // When the hairpin connection goes, both mappings go and their ports are free.
    let later = now + t.udp + 1;
    for _ in 0..3 {
        lab.engine.reclaim(&mut lab.w, later, 1 << 20);
        standby.reclaim(&mut sw, later, 1 << 20);
    }
    assert_eq!(lab.engine.table().len(), 0);
    assert_eq!(standby.table().len(), 0);
    assert!(!lab.engine.ports().is_allocated(ai, Proto::Udp, 7000));
    assert!(!lab.engine.ports().is_allocated(ai, Proto::Udp, 7100));
}

#[test]
fn icmp_echo_through_pat_and_to_vip() {
    let mut lab = Lab::new(config());
    let out = lab.pass(
        testing::icmp_echo(H1, CLIENT, true, 99, 1),
        Side::Private,
        Side::Public,
        1,
    );
    let (src, id, _, _) = ports_of(&out);
    assert_eq!(src, PAT_IP);
    let back = lab.pass(
        testing::icmp_echo(CLIENT, PAT_IP, false, id, 1),
        Side::Public,
        Side::Private,
        1,
    );
    assert_eq!(ports_of(&back), (CLIENT, 99, H1, 99));
    // Two hosts with the same identifier to the same destination stay apart.
    let out2 = lab.pass(
        testing::icmp_echo(H2, CLIENT, true, 99, 1),
        Side::Private,
        Side::Public,
        1,
    );
    assert_ne!(ports_of(&out2).1, id);

    let mut ping = testing::icmp_echo(CLIENT, VIP, true, 5, 5);
    assert_eq!(lab.send(&mut ping, Side::Public, 1), Verdict::Reply);
    verify_checksums(&ping).unwrap();
    let l = layout(&ping);
    assert_eq!((l.src, l.dst), (VIP, CLIENT));
    assert_eq!(
        l.transport,
        Transport::IcmpEcho {
            request: false,
            id: 5
        }
    );
    assert_eq!(lab.w.counters.echo_replies, 1);
}

#[test]
fn stray_echo_replies_open_nothing() {
    let mut c = config();
    c.filtering = Filtering::EndpointIndependent;
    let mut lab = Lab::new(c);
    // An internal host's echo reply with no request seen allocates no mapping.
    assert_eq!(
        lab.dropped(
            testing::icmp_echo(H1, CLIENT, false, 7, 1),
            Side::Private,
            1
        ),
        DropReason::NoRule
    );
    assert_eq!(lab.w.counters.mappings_created, 0);
    // Even with endpoint-independent filtering, no ICMP query comes in through a mapping.
    let out = lab.pass(
        testing::icmp_echo(H1, CLIENT, true, 7, 1),
        Side::Private,
        Side::Public,
        1,
    );
    let id = ports_of(&out).1;
    assert_eq!(
        lab.dropped(
            testing::icmp_echo(CLIENT2, PAT_IP, false, id, 1),
            Side::Public,
            1
        ),
        DropReason::NoRule
    );
}

#[test]
fn icmp_errors_reach_the_sender_translated() {
    let mut lab = Lab::new(config());
    // H1 sends UDP to a closed port; the far host answers port unreachable.
    let sent = lab.pass(
        testing::udp(H1, CLIENT, 6000, 9, b"probe"),
        Side::Private,
        Side::Public,
        1,
    );
    let err = testing::icmp_error(CLIENT, PAT_IP, 3, 3, testing::datagram(&sent), 512);
    let got = lab.pass(err, Side::Public, Side::Private, 1);
    let l = layout(&got);
    assert_eq!((l.src, l.dst), (CLIENT, H1));
    assert!(matches!(
        l.transport,
        Transport::IcmpError { ty: 3, code: 3 }
    ));
    let inner = l.icmp_inner(&got).unwrap();
    assert_eq!((inner.src, inner.dst), (H1, CLIENT));
    assert_eq!(
        inner.ports,
        InnerPorts::Ports {
            sport: 6000,
            dport: 9
        }
    );
    let original = testing::udp(H1, CLIENT, 6000, 9, b"probe");
    assert_eq!(
        &got[inner.l3..l.end],
        testing::datagram(&original),
        "quote restored byte for byte"
    );

    // A router on the path reports time exceeded: its own address stays.
    let err = testing::icmp_error(ROUTER, PAT_IP, 11, 0, testing::datagram(&sent), 28);
    let got = lab.pass(err, Side::Public, Side::Private, 1);
    assert_eq!((layout(&got).src, layout(&got).dst), (ROUTER, H1));

    // An error addressed elsewhere than the quoted sender, or about an unknown flow: dropped.
    let err = testing::icmp_error(CLIENT, VIP, 3, 3, testing::datagram(&sent), 28);
    assert_eq!(
        lab.dropped(err, Side::Public, 1),
        DropReason::IcmpErrorNoConn
    );
    let stray = testing::udp(PAT_IP, CLIENT, 1, 2, b"");
    let err = testing::icmp_error(CLIENT, PAT_IP, 3, 3, testing::datagram(&stray), 28);
    assert_eq!(
        lab.dropped(err, Side::Public, 1),
        DropReason::IcmpErrorNoConn
    );
}

#[test]
fn icmp_error_from_backend_reaches_client_from_vip() {
    let mut lab = Lab::new(config());
    let sent = lab.pass(
        testing::udp(CLIENT, VIP, 1500, 5000, b"x"),
        Side::Public,
        Side::Private,
        1,
    );
    let err = testing::icmp_error(H2, CLIENT, 3, 3, testing::datagram(&sent), 100);
    let got = lab.pass(err, Side::Private, Side::Public, 1);
    let l = layout(&got);
    assert_eq!((l.src, l.dst), (VIP, CLIENT));
    let inner = l.icmp_inner(&got).unwrap();
    assert_eq!((inner.src, inner.dst), (CLIENT, VIP));
    assert_eq!(
        inner.ports,
        InnerPorts::Ports {
            sport: 1500,
            dport: 5000
        }
    );
}

#[test]
fn icmp_errors_from_private_routers_leave_from_the_public_address() {
    // RFC 5508 REQ-4: a router inside reporting on an inbound flow, and one reporting on an
    // outbound flow's reply, both show up outside as the NAT's public address.
    let inside_router = Ipv4Addr::new(198, 18, 0, 1);
    let mut lab = Lab::new(config());
    let sent = lab.pass(
        testing::udp(CLIENT, VIP, 1500, 5000, b"x"),
        Side::Public,
        Side::Private,
        1,
    );
    let err = testing::icmp_error(inside_router, CLIENT, 3, 1, testing::datagram(&sent), 100);
    let got = lab.pass(err, Side::Private, Side::Public, 1);
    assert_eq!((layout(&got).src, layout(&got).dst), (VIP, CLIENT));
    let out = lab.pass(
        testing::udp(H1, CLIENT, 4000, 53, b"q"),
        Side::Private,
        Side::Public,
        1,
    );
    let back = lab.pass(
        testing::udp(CLIENT, PAT_IP, 53, ports_of(&out).1, b"a"),
        Side::Public,
        Side::Private,
        1,
    );
    let err = testing::icmp_error(inside_router, CLIENT, 3, 1, testing::datagram(&back), 100);
    let got = lab.pass(err, Side::Private, Side::Public, 1);
    let l = layout(&got);
    assert_eq!((l.src, l.dst), (PAT_IP, CLIENT));
    let inner = l.icmp_inner(&got).unwrap();
    assert_eq!((inner.src, inner.dst), (CLIENT, PAT_IP));
}

#[test]
fn icmp_error_about_echo() {
    let mut lab = Lab::new(config());
    let sent = lab.pass(
        testing::icmp_echo(H1, CLIENT, true, 4242, 1),
        Side::Private,
        Side::Public,
        1,
    );
    let err = testing::icmp_error(ROUTER, PAT_IP, 11, 0, testing::datagram(&sent), 200);
    let got = lab.pass(err, Side::Public, Side::Private, 1);
    let l = layout(&got);
    let inner = l.icmp_inner(&got).unwrap();
    assert_eq!(
        inner.ports,
        InnerPorts::Echo {
            request: true,
            id: 4242
        }
    );
    assert_eq!(l.dst, H1);
}

#[test]
fn fragments_follow_the_first() {
    let mut lab = Lab::new(config());
    let whole = testing::udp(H1, CLIENT, 7777, 53, &[5u8; 200]);
    let frags = testing::fragments(&whole, 64);
    assert!(frags.len() >= 3);
    for f in frags.iter().cloned() {
        let out = lab.pass(f, Side::Private, Side::Public, 1);
        assert_eq!(layout(&out).src, PAT_IP);
        assert_eq!(layout(&out).dst, CLIENT);
    }
    // A later fragment of an unseen datagram waits for its first, and goes when that never
    // comes.
    let other = testing::udp(H2, CLIENT, 1, 2, &[0u8; 200]);
    let mut of = testing::fragments(&other, 64);
    assert_eq!(lab.send(&mut of[1], Side::Private, 1), Verdict::Held);
    assert_eq!(lab.w.counters.frags_held, 1);
    let timeout = lab.engine.config().frag_timeout;
    lab.engine.reclaim(&mut lab.w, 1 + timeout, 16);
    assert_eq!(lab.w.counters.drops(DropReason::FragmentUnmatched), 1);
    assert_eq!(
        lab.engine
            .take_released(&mut lab.w, |_, _| panic!("nothing to release")),
        0
    );
}

#[test]
fn out_of_order_fragments_wait_for_their_first() {
    let mut lab = Lab::new(config());
    let whole = testing::udp(H1, CLIENT, 7777, 53, &[6u8; 300]);
    let mut frags = testing::fragments(&whole, 64);
    let n = frags.len();
    assert!(n >= 4);
    // Everything but the first arrives first, last to second.
    for f in frags[1..].iter_mut().rev() {
        assert_eq!(lab.send(f, Side::Private, 1), Verdict::Held);
    }
    let first = lab.pass(frags[0].clone(), Side::Private, Side::Public, 1);
    assert_eq!(layout(&first).src, PAT_IP);
    let mut released = Vec::new();
    let got = lab
        .engine
        .take_released(&mut lab.w, |f, side| released.push((f.to_vec(), side)));
    assert_eq!(got, n - 1);
    // Reassembled from what left, the datagram is the one H1 sent, translated, and verifies.
    let mut offsets = Vec::new();
    for (f, side) in &released {
        assert_eq!(*side, Side::Public);
        verify_checksums(f).unwrap();
        let l = layout(f);
        assert_eq!(
            (l.src, l.dst, l.transport),
            (PAT_IP, CLIENT, Transport::Fragment)
        );
        offsets.push(l.frag_offset);
    }
    offsets.sort_unstable();
    offsets.dedup();
    assert_eq!(offsets.len(), n - 1);
    assert_eq!(lab.w.counters.frags_released, (n - 1) as u64);
    assert_eq!(lab.engine.take_released(&mut lab.w, |_, _| {}), 0);
}

#[test]
fn fragment_hold_is_bounded() {
    let mut c = config();
    c.frag_hold = 2;
    let mut lab = Lab::new(c);
    for p in 0..3u16 {
        let mut frags = testing::fragments(&testing::udp(H1, CLIENT, 100 + p, 53, &[1u8; 100]), 48);
        frags[1][18] = p as u8; // distinct IP ids per datagram
        let c = vipgate_wire::checksum::checksum(&{
            let mut h = frags[1][14..34].to_vec();
            h[10] = 0;
            h[11] = 0;
            h
        });
        frags[1][24..26].copy_from_slice(&c.to_be_bytes());
        let v = lab.send(&mut frags[1], Side::Private, 1);
        let expect = if p < 2 {
            Verdict::Held
        } else {
            Verdict::Drop(DropReason::FragmentUnmatched)
        };
        assert_eq!(v, expect);
    }
}

#[test]
fn tcp_needs_a_syn_and_state_drives_timeouts() {
    let mut lab = Lab::new(config());
    assert_eq!(
        lab.dropped(testing::tcp(CLIENT, VIP, 1, 80, ACK, b""), Side::Public, 1),
        DropReason::TcpNoConn
    );
    assert_eq!(
        lab.dropped(
            testing::tcp(H1, CLIENT, 1, 80, SYN_ACK, b""),
            Side::Private,
            1
        ),
        DropReason::TcpNoConn
    );
    // Establish, then close with RST: the connection goes after tcp_close seconds, not 2 hours.
    lab.pass(
        testing::tcp(CLIENT, VIP, 2000, 80, SYN, b""),
        Side::Public,
        Side::Private,
        10,
    );
    lab.pass(
        testing::tcp(H2, CLIENT, 8080, 2000, SYN_ACK, b""),
        Side::Private,
        Side::Public,
        10,
    );
    lab.pass(
        testing::tcp(CLIENT, VIP, 2000, 80, ACK, b""),
        Side::Public,
        Side::Private,
        10,
    );
    let t = lab.engine.config().timeouts;
    let key = FlowKey {
        src: CLIENT,
        dst: VIP,
        sport: 2000,
        dport: 80,
        proto: Proto::Tcp,
    };
    assert_eq!(
        lab.engine.table().lookup(&key).unwrap().state,
        vipgate_nat::state::ConnState::TcpEstablished
    );
    lab.engine
        .reclaim(&mut lab.w, 10 + t.tcp_established - 1, 1 << 20);
    assert!(
        lab.engine.table().lookup(&key).is_some(),
        "established lives its timeout"
    );
    lab.pass(
        testing::tcp(H2, CLIENT, 8080, 2000, RST, b""),
        Side::Private,
        Side::Public,
        20,
    );
    lab.engine
        .reclaim(&mut lab.w, 20 + t.tcp_close - 1, 1 << 20);
    assert!(lab.engine.table().lookup(&key).is_some());
    lab.engine.reclaim(&mut lab.w, 20 + t.tcp_close, 1 << 20);
    assert!(
        lab.engine.table().lookup(&key).is_none(),
        "closed by RST, gone after tcp_close"
    );
}

#[test]
fn fin_handshake_shortens_the_timeout() {
    let mut lab = Lab::new(config());
    lab.pass(
        testing::tcp(H1, CLIENT, 3000, 80, SYN, b""),
        Side::Private,
        Side::Public,
        1,
    );
    let p = ports_of(&lab.pass(
        testing::tcp(CLIENT, PAT_IP, 80, 3000, SYN_ACK, b""),
        Side::Public,
        Side::Private,
        1,
    ))
    .3;
    assert_eq!(p, 3000);
    lab.pass(
        testing::tcp(H1, CLIENT, 3000, 80, ACK, b""),
        Side::Private,
        Side::Public,
        1,
    );
    lab.pass(
        testing::tcp(H1, CLIENT, 3000, 80, FIN_ACK, b""),
        Side::Private,
        Side::Public,
        2,
    );
    lab.pass(
        testing::tcp(CLIENT, PAT_IP, 80, 3000, FIN_ACK, b""),
        Side::Public,
        Side::Private,
        2,
    );
    lab.pass(
        testing::tcp(H1, CLIENT, 3000, 80, ACK, b""),
        Side::Private,
        Side::Public,
        2,
    );
    let key = FlowKey {
        src: H1,
        dst: CLIENT,
        sport: 3000,
        dport: 80,
        proto: Proto::Tcp,
    };
    let st = lab.engine.table().lookup(&key).unwrap().state;
    assert_eq!(st, vipgate_nat::state::ConnState::TcpTimeWait);
    let t = lab.engine.config().timeouts;
    lab.engine.reclaim(&mut lab.w, 2 + t.tcp_time_wait, 1 << 20);
    assert!(lab.engine.table().lookup(&key).is_none());
}

#[test]
fn udp_and_mapping_expire_and_free_the_port() {
    let mut lab = Lab::new(config());
    let t = lab.engine.config().timeouts;
    lab.pass(
        testing::udp(H1, CLIENT, 5353, 53, b""),
        Side::Private,
        Side::Public,
        100,
    );
    let ai = lab.engine.ports().addr_index(PAT_IP).unwrap();
    assert!(lab.engine.ports().is_allocated(ai, Proto::Udp, 5353));
    assert!(t.udp >= 120, "RFC 4787 REQ-5: at least 2 minutes");
    lab.engine.reclaim(&mut lab.w, 100 + t.udp - 1, 1 << 20);
    assert!(
        lab.engine.ports().is_allocated(ai, Proto::Udp, 5353),
        "a live connection keeps its mapping"
    );
    // Traffic in either direction refreshes it.
    lab.pass(
        testing::udp(CLIENT, PAT_IP, 53, 5353, b""),
        Side::Public,
        Side::Private,
        100 + t.udp - 1,
    );
    lab.engine.reclaim(&mut lab.w, 100 + t.udp + 10, 1 << 20);
    assert!(lab.engine.ports().is_allocated(ai, Proto::Udp, 5353));
    // Idle past the timeout: the connection goes, then its mapping, then the port is free.
    let later = 100 + 2 * t.udp + 10;
    lab.engine.reclaim(&mut lab.w, later, 1 << 20);
    lab.engine.reclaim(&mut lab.w, later, 1 << 20);
    assert!(!lab.engine.ports().is_allocated(ai, Proto::Udp, 5353));
    assert_eq!(lab.engine.table().len(), 0);
    assert_eq!(
        lab.dropped(
            testing::udp(CLIENT, PAT_IP, 53, 5353, b""),
            Side::Public,
            later
        ),
        DropReason::NoRule
    );
}

#[test]
fn behave_default_timeouts() {
    let t = NatConfig::default().timeouts;
    assert!(t.udp >= 120);
    assert!(t.tcp_established >= 2 * 3600 + 4 * 60);
    assert!(t.tcp_syn_sent >= 240 && t.tcp_fin_wait >= 240);
    assert!(t.icmp >= 60);
}

#[test]
fn full_table_refuses_new_and_keeps_old() {
    let mut c = config();
    c.capacity = 8;
    let mut lab = Lab::new(c);
    lab.pass(
        testing::tcp(CLIENT, VIP, 1000, 80, SYN, b""),
        Side::Public,
        Side::Private,
        1,
    );
    let mut refused = 0;
    for p in 1001..1100 {
        let mut f = testing::tcp(CLIENT, VIP, p, 80, SYN, b"");
        if lab.send(&mut f, Side::Public, 1) == Verdict::Drop(DropReason::TableFull) {
            refused += 1;
        }
    }
    assert!(refused > 0);
    assert_eq!(lab.w.counters.drops(DropReason::TableFull), refused);
    let back = lab.pass(
        testing::tcp(H2, CLIENT, 8080, 1000, SYN_ACK, b""),
        Side::Private,
        Side::Public,
        1,
    );
    assert_eq!(ports_of(&back), (VIP, 80, CLIENT, 1000));
}

#[test]
fn port_exhaustion_is_counted() {
    let mut c = config();
    c.port_lo = 2000;
    c.port_hi = 2003;
    let mut lab = Lab::new(c);
    for p in 0..4 {
        lab.pass(
            testing::udp(H1, CLIENT, 3000 + p, 53, b""),
            Side::Private,
            Side::Public,
            1,
        );
    }
    assert_eq!(
        lab.dropped(testing::udp(H1, CLIENT, 3010, 53, b""), Side::Private, 1),
        DropReason::PatPortsExhausted
    );
    assert_eq!(lab.w.counters.drops(DropReason::PatPortsExhausted), 1);
}

#[test]
fn paired_pooling_keeps_a_host_on_one_address() {
    let mut c = config();
    c.pat[0].to = vec![PAT_IP, PAT_IP2];
    let mut lab = Lab::new(c);
    let first = ports_of(&lab.pass(
        testing::udp(H1, CLIENT, 1, 53, b""),
        Side::Private,
        Side::Public,
        1,
    ))
    .0;
    for p in 2..40 {
        let src = ports_of(&lab.pass(
            testing::udp(H1, CLIENT, p, 53, b""),
            Side::Private,
            Side::Public,
            1,
        ))
        .0;
        assert_eq!(
            src, first,
            "RFC 4787 REQ-2: one internal address, one public address"
        );
    }
}

#[test]
fn wrong_side_and_bad_input_are_dropped_and_counted() {
    let mut lab = Lab::new(config());
    lab.pass(
        testing::udp(H1, CLIENT, 5353, 53, b""),
        Side::Private,
        Side::Public,
        1,
    );
    // The reply tuple arriving from inside is spoofed.
    assert_eq!(
        lab.dropped(
            testing::udp(CLIENT, PAT_IP, 53, 5353, b""),
            Side::Private,
            1
        ),
        DropReason::WrongSide
    );
    assert_eq!(
        lab.dropped(testing::ipv6_udp(), Side::Public, 1),
        DropReason::Ipv6
    );
    let mut arp = [0u8; 60];
    let n = vipgate_wire::arp::ArpRepr::request([2; 6], CLIENT, VIP)
        .emit_frame(&mut arp, None)
        .unwrap();
    assert_eq!(
        lab.dropped(arp[..n].to_vec(), Side::Public, 1),
        DropReason::NotIp
    );
    let mut bad = testing::udp(CLIENT, VIP, 1, 5000, b"");
    bad[24] ^= 1;
    assert_eq!(
        lab.dropped(bad, Side::Public, 1),
        DropReason::BadIpv4Checksum
    );
    assert_eq!(
        lab.dropped(
            testing::udp(H1, Ipv4Addr::new(127, 0, 0, 1), 1, 2, b""),
            Side::Private,
            1
        ),
        DropReason::Martian
    );
    assert_eq!(
        lab.dropped(
            testing::udp(CLIENT, Ipv4Addr::new(203, 0, 113, 99), 1, 2, b""),
            Side::Public,
            1
        ),
        DropReason::NoRule
    );
    let whole = testing::udp(H1, CLIENT, 1, 2, &[0; 40]);
    assert_eq!(
        lab.dropped(whole[..40].to_vec(), Side::Private, 1),
        DropReason::Truncated
    );
    assert_eq!(lab.w.counters.total_drops(), 7);
}

#[test]
fn vlan_tagged_frames_translate() {
    let mut lab = Lab::new(config());
    let f = testing::with_vlan(&testing::tcp(CLIENT, VIP, 40000, 80, SYN, b""), 100);
    let out = lab.pass(f, Side::Public, Side::Private, 1);
    let l = layout(&out);
    assert_eq!(l.vlan, Some(100));
    assert_eq!(l.dst, H2);
}

#[test]
fn events_and_standby_install() {
    let mut lab = Lab::new(config());
    lab.pass(
        testing::tcp(H1, CLIENT, 3000, 443, SYN, b""),
        Side::Private,
        Side::Public,
        5,
    );
    let mut events = Vec::new();
    lab.engine.drain_events(0, |e| events.push(e));
    assert_eq!(events.len(), 2, "mapping and connection: {events:?}");
    let ids: Vec<_> = events
        .iter()
        .map(|e| match e {
            ConnEvent::Created(id) => *id,
            other => panic!("{other:?}"),
        })
        .collect();

    // The standby installs what the active box exports, mapping first.
    let standby = Engine::new(config()).unwrap();
    let mut sw = standby.worker(0);
    for id in &ids {
        let exported = lab.engine.export(*id, 7).unwrap();
        let rec = exported.record;
        assert_eq!(rec.idle_secs, 2);
        standby.install(&exported, 100).unwrap();
    }
    // After takeover, the reply is translated exactly as the active box would have.
    let mut reply = testing::tcp(CLIENT, PAT_IP, 443, 3000, SYN_ACK, b"");
    let mut reply2 = reply.clone();
    assert_eq!(
        standby.process(&mut sw, &mut reply, Side::Public, 101),
        Verdict::Forward(Side::Private)
    );
    lab.engine.drain_events(0, |_| {});
    assert_eq!(
        lab.send(&mut reply2, Side::Public, 6),
        Verdict::Forward(Side::Private)
    );
    assert_eq!(reply, reply2);
    let ai = standby.ports().addr_index(PAT_IP).unwrap();
    assert!(
        standby.ports().is_allocated(ai, Proto::Tcp, 3000),
        "the standby holds the port too"
    );

    // State changes and deletions are events too.
    let mut updates = Vec::new();
    lab.engine.drain_events(0, |e| updates.push(e));
    assert!(
        matches!(updates.as_slice(), [ConnEvent::Updated(_, _)]),
        "{updates:?}"
    );
    lab.engine.reclaim(&mut lab.w, 100_000, 1 << 20);
    lab.engine.reclaim(&mut lab.w, 100_000, 1 << 20);
    let mut deletes = Vec::new();
    lab.engine.drain_events(0, |e| deletes.push(e));
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    let closed = FlowKey {
        src: H1,
        dst: CLIENT,
        sport: 3000,
        dport: 443,
        proto: Proto::Tcp,
    };
    assert!(
        deletes
            .iter()
            .any(|e| matches!(e, ConnEvent::Deleted(r) if r.orig == closed)),
        "{deletes:?}"
    );
}

#[test]
fn a_closing_connection_closes_the_same_way_after_install() {
    let mut lab = Lab::new(config());
    lab.pass(
        testing::tcp(H1, CLIENT, 3000, 80, SYN, b""),
        Side::Private,
        Side::Public,
        1,
    );
    lab.pass(
        testing::tcp(CLIENT, PAT_IP, 80, 3000, SYN_ACK, b""),
        Side::Public,
        Side::Private,
        1,
    );
    lab.pass(
        testing::tcp(H1, CLIENT, 3000, 80, ACK, b""),
        Side::Private,
        Side::Public,
        1,
    );
    lab.pass(
        testing::tcp(H1, CLIENT, 3000, 80, FIN_ACK, b""),
        Side::Private,
        Side::Public,
        2,
    );
    let standby = Engine::new(config()).unwrap();
    let mut sw = standby.worker(0);
    let mut ids = Vec::new();
    lab.engine.table().for_each_live(2, |id, rec| {
        if rec.state == vipgate_nat::state::ConnState::Mapping {
            ids.insert(0, id);
        } else {
            ids.push(id);
        }
    });
    for id in ids {
        standby
            .install(&lab.engine.export(id, 2).unwrap(), 2)
            .unwrap();
    }
    // The host's own FIN again (a retransmission) must not count as the peer's.
    let mut again = testing::tcp(H1, CLIENT, 3000, 80, FIN_ACK, b"");
    standby.process(&mut sw, &mut again, Side::Private, 3);
    let key = FlowKey {
        src: H1,
        dst: CLIENT,
        sport: 3000,
        dport: 80,
        proto: Proto::Tcp,
    };
    assert_eq!(
        standby.table().lookup(&key).unwrap().state,
        vipgate_nat::state::ConnState::TcpFinWait
    );
    let mut fin = testing::tcp(CLIENT, PAT_IP, 80, 3000, FIN_ACK, b"");
    assert_eq!(
        standby.process(&mut sw, &mut fin, Side::Public, 3),
        Verdict::Forward(Side::Private)
    );
    assert_eq!(
        standby.table().lookup(&key).unwrap().state,
        vipgate_nat::state::ConnState::TcpLastAck
    );
}

#[test]
fn bad_policies_are_refused_with_their_place() {
    let mut c = config();
    c.dnat[1].port_lo = 70;
    c.dnat[1].port_hi = 90; // covers 80/tcp? no: udp; make it tcp to overlap
    c.dnat[1].proto = Proto::Tcp;
    let e = Engine::new(c).unwrap_err().to_string();
    assert!(e.contains("dnat[1]") && e.contains("dnat[0]"), "{e}");
    let mut c = config();
    c.pools[0].vip = CLIENT;
    let e = Engine::new(c).unwrap_err().to_string();
    assert!(e.contains("pools[0]") && e.contains("198.51.100.7"), "{e}");
    let mut c = config();
    c.pools[0].table_size = 65536;
    assert!(Engine::new(c).unwrap_err().to_string().contains("pools[0]"));
    let mut c = config();
    c.capacity = 0;
    assert!(Engine::new(c).unwrap_err().to_string().contains("capacity"));
    let mut c = config();
    c.pat[0].to.clear();
    assert!(Engine::new(c).unwrap_err().to_string().contains("pat[0]"));
}

#[test]
fn batch_equals_one_by_one() {
    let mut a = Lab::new(config());
    let mut b = Lab::new(config());
    let mut frames: Vec<Vec<u8>> = (0..70u16)
        .map(|i| match i % 5 {
            0 => testing::tcp(CLIENT, VIP, 1000 + i, 80, SYN, b""),
            1 => testing::udp(H1, CLIENT, 2000 + i, 53, b"q"),
            2 => testing::icmp_echo(CLIENT, VIP, true, i, 1),
            3 => testing::ipv6_udp(),
            _ => testing::tcp(CLIENT, VIP, 1000 + i, 443, SYN, b""),
        })
        .collect();
    let mut copies = frames.clone();
    let sides: Vec<Side> = (0..70)
        .map(|i| {
            if i % 5 == 1 {
                Side::Private
            } else {
                Side::Public
            }
        })
        .collect();
    let mut one = Vec::new();
    for (f, s) in copies.iter_mut().zip(&sides) {
        one.push(a.send(f, *s, 1));
    }
    let mut batched = Vec::new();
    for side in [Side::Public, Side::Private] {
        let idx: Vec<usize> = (0..70).filter(|i| sides[*i] == side).collect();
        let mut refs: Vec<&mut [u8]> = Vec::new();
        let mut rest: &mut [Vec<u8>] = &mut frames;
        let mut taken = 0;
        for i in &idx {
            let (_, tail) = rest.split_at_mut(i - taken);
            let (head, tail) = tail.split_at_mut(1);
            refs.push(head[0].as_mut_slice());
            rest = tail;
            taken = i + 1;
        }
        let mut v = vec![Verdict::Drop(DropReason::Truncated); refs.len()];
        b.engine.process_batch(&mut b.w, &mut refs, side, 1, &mut v);
        batched.extend(idx.into_iter().zip(v));
    }
    batched.sort_by_key(|(i, _)| *i);
    let batched: Vec<Verdict> = batched.into_iter().map(|(_, v)| v).collect();
    assert_eq!(one, batched);
    assert_eq!(frames, copies);
    assert_eq!(a.w.counters, b.w.counters);
}

fn any_internal() -> impl Strategy<Value = Ipv4Addr> {
    (1u8..250).prop_map(|h| Ipv4Addr::new(198, 18, 0, h))
}

fn any_external() -> impl Strategy<Value = Ipv4Addr> {
    (1u8..250, 1u8..250).prop_map(|(a, b)| Ipv4Addr::new(198, 51, a, b))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Outbound PAT: the translated frame's checksums verify, and the reply to it comes back
    /// as exactly the reply the host expects (the original tuple, reversed).
    #[test]
    fn pat_round_trip(h in any_internal(), e in any_external(), sp in 1u16.., dp in 1u16.., kind in 0u8..3,
                      payload in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut lab = Lab::new(config());
        let (sent, reply_to) = match kind {
            0 => (testing::tcp(h, e, sp, dp, SYN, &payload), 0),
            1 => (testing::udp(h, e, sp, dp, &payload), 1),
            _ => (testing::icmp_echo(h, e, true, sp, dp), 2),
        };
        let out = lab.pass(sent, Side::Private, Side::Public, 1);
        let (psrc, pport, pdst, dport) = ports_of(&out);
        prop_assert_eq!(psrc, PAT_IP);
        prop_assert_eq!(pdst, e);
        let reply = match reply_to {
            0 => testing::tcp(e, PAT_IP, dport, pport, SYN_ACK, &payload),
            1 => testing::udp(e, PAT_IP, dport, pport, &payload),
            _ => testing::icmp_echo(e, PAT_IP, false, pport, dp),
        };
        let back = lab.pass(reply, Side::Public, Side::Private, 1);
        let expect = match reply_to {
            0 => testing::tcp(e, h, dp, sp, SYN_ACK, &payload),
            1 => testing::udp(e, h, dp, sp, &payload),
            _ => testing::icmp_echo(e, h, false, sp, dp),
        };
        prop_assert_eq!(back, expect);
    }

    /// Inbound DNAT the same way, through the pool.
    #[test]
    fn dnat_round_trip(c in any_external(), cp in 1u16.., payload in proptest::collection::vec(any::<u8>(), 0..40)) {
        let mut lab = Lab::new(config());
        let out = lab.pass(testing::tcp(c, VIP, cp, 443, SYN, &payload), Side::Public, Side::Private, 1);
        let (_, _, b, bp) = ports_of(&out);
        let back = lab.pass(testing::tcp(b, c, bp, cp, SYN_ACK, &payload), Side::Private, Side::Public, 1);
        prop_assert_eq!(back, testing::tcp(VIP, c, 443, cp, SYN_ACK, &payload));
    }

    /// Arbitrary bytes on either side never panic and are counted exactly once.
    #[test]
    fn arbitrary_frames_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..120), public in any::<bool>()) {
        let mut lab = Lab::new(config());
        let mut f = bytes;
        let side = if public { Side::Public } else { Side::Private };
        let _ = lab.send(&mut f, side, 1);
        let c = &lab.w.counters;
        prop_assert_eq!(c.forwarded + c.echo_replies + c.total_drops() + c.frags_held, 1);
    }

    /// Mutated real frames (one byte changed anywhere) never panic.
    #[test]
    fn mutated_frames_never_panic(pos in 0usize..200, val in any::<u8>(), which in 0u8..4) {
        let mut lab = Lab::new(config());
        lab.pass(testing::udp(H1, CLIENT, 5353, 53, b"q"), Side::Private, Side::Public, 1);
        let sent = testing::udp(PAT_IP, CLIENT, 5353, 53, b"q");
        let mut f = match which {
            0 => testing::tcp(CLIENT, VIP, 1, 80, SYN, b"abc"),
            1 => testing::icmp_error(CLIENT, PAT_IP, 3, 3, testing::datagram(&sent), 64),
            2 => testing::fragments(&testing::udp(H1, CLIENT, 5353, 53, &[1; 100]), 48)[1].clone(),
            _ => testing::with_vlan(&testing::icmp_echo(CLIENT, VIP, true, 1, 1), 5),
        };
        let pos = pos % f.len();
        f[pos] = val;
        let _ = lab.send(&mut f, Side::Public, 1);
        let _ = lab.send(&mut f, Side::Private, 1);
    }
}

#[test]
fn upsert_installs_then_updates_and_deletions_remove() {
    let mut lab = Lab::new(config());
    lab.pass(
        testing::tcp(H1, CLIENT, 3000, 443, SYN, b""),
        Side::Private,
        Side::Public,
        5,
    );
    let mut ids = Vec::new();
    lab.engine.drain_events(0, |e| {
        if let ConnEvent::Created(id) = e {
            ids.push(id);
        }
    });
    let standby = Engine::new(config()).unwrap();
    // Twice (a bulk copy after the live stream): the second is an update, not an error.
    for _ in 0..2 {
        for id in &ids {
            standby
                .upsert(&lab.engine.export(*id, 5).unwrap(), 10)
                .unwrap();
        }
    }
    assert_eq!(standby.table().len(), 2);
    // The connection moves on at the active box; the standby follows.
    lab.pass(
        testing::tcp(CLIENT, PAT_IP, 443, 3000, SYN_ACK, b""),
        Side::Public,
        Side::Private,
        8,
    );
    let conn = ids[1];
    let ex = lab.engine.export(conn, 9).unwrap();
    assert_ne!(ex.record.state, vipgate_nat::ConnState::TcpSynSent);
    standby.upsert(&ex, 20).unwrap();
    let key = ex.record.orig;
    let hit = standby.table().lookup(&key).unwrap();
    assert_eq!(hit.state, ex.record.state);
    let rec = standby.table().export(hit.id, 20).unwrap();
    assert_eq!(rec.idle_secs, ex.record.idle_secs);
    // Deletion on the standby, as the active box sends it.
    assert!(standby.remove_synced(&key, 30));
    assert!(standby.table().lookup(&key).is_none());
    assert!(!standby.remove_synced(&key, 30), "already gone");
    assert_eq!(
        standby.table().len(),
        1,
        "the mapping stays until it is deleted too"
    );
}

#[test]
fn after_a_takeover_mid_stream_segments_are_picked_up_for_a_while() {
    let mut lab = Lab::new(config());
    // Before any takeover: only a SYN opens.
    assert_eq!(
        lab.dropped(
            testing::tcp(CLIENT, VIP, 40000, 80, ACK, b"data"),
            Side::Public,
            1
        ),
        DropReason::TcpNoConn
    );
    lab.engine.pick_up_until(10);
    // An ACK with data opens an established connection to where the SYN would have gone.
    let out = lab.pass(
        testing::tcp(CLIENT, VIP, 40000, 80, ACK, b"data"),
        Side::Public,
        Side::Private,
        2,
    );
    let l = layout(&out);
    assert_eq!(l.dst, H2);
    let key = FlowKey {
        src: CLIENT,
        dst: VIP,
        sport: 40000,
        dport: 80,
        proto: Proto::Tcp,
    };
    assert_eq!(
        lab.engine.table().lookup(&key).unwrap().state,
        vipgate_nat::ConnState::TcpEstablished
    );
    assert_eq!(lab.w.counters.tcp_picked_up, 1);
    // Outbound too: the host keeps its source port.
    let out = lab.pass(
        testing::tcp(H1, CLIENT, 3333, 443, ACK, b""),
        Side::Private,
        Side::Public,
        2,
    );
    let l = layout(&out);
    assert_eq!(l.src, PAT_IP);
    assert!(
        matches!(
            l.transport,
            vipgate_wire::Transport::Tcp { sport: 3333, .. }
        ),
        "{:?}",
        l.transport
    );
    // A backend's segment to a client opens the inbound connection it is a reply of (the
    // failed box's last data may be the only segment that comes): it leaves from the VIP,
    // and the client's next segment finds the same connection.
    let out = lab.pass(
        testing::tcp(H2, CLIENT2, 8080, 40003, ACK, b"reply"),
        Side::Private,
        Side::Public,
        3,
    );
    assert_eq!(ports_of(&out), (VIP, 80, CLIENT2, 40003));
    assert_eq!(lab.w.counters.tcp_picked_up, 3);
    let out = lab.pass(
        testing::tcp(CLIENT2, VIP, 40003, 80, ACK, b""),
        Side::Public,
        Side::Private,
        3,
    );
    assert_eq!(ports_of(&out), (CLIENT2, 40003, H2, 8080));
    assert_eq!(lab.w.counters.tcp_picked_up, 3, "no second connection");
    // A port range maps back by its offset, UDP as well.
    let out = lab.pass(
        testing::udp(H2, CLIENT2, 6003, 7000, b"reply"),
        Side::Private,
        Side::Public,
        3,
    );
    assert_eq!(ports_of(&out), (VIP, 5003, CLIENT2, 7000));
    // A pool backend's segment opens the connection only where Maglev sends that client.
    let mut picked = 0;
    for cport in 41000..41030 {
        let backends = [B1, B2, B3];
        let mut opened = Vec::new();
        for b in backends {
            let mut frame = testing::tcp(b, CLIENT, 8443, cport, ACK, b"r");
            match lab.send(&mut frame, Side::Private, 3) {
                Verdict::Forward(Side::Public) => {
                    assert_eq!(ports_of(&frame), (VIP, 443, CLIENT, cport));
                    opened.push(b);
                }
                Verdict::Drop(DropReason::TcpNoConn) => {}
                v => panic!("backend {b} to port {cport}: {v:?}"),
            }
        }
        assert_eq!(opened.len(), 1, "one backend is the client's, port {cport}");
        let out = lab.pass(
            testing::tcp(CLIENT, VIP, cport, 443, ACK, b""),
            Side::Public,
            Side::Private,
            3,
        );
        picked += 1;
        assert_eq!(layout(&out).dst, opened[0], "port {cport}");
    }
    assert_eq!(picked, 30);
    // A RST or a SYN-ACK never opens anything, window or not.
    for flags in [RST, RST | ACK, SYN_ACK] {
        assert_eq!(
            lab.dropped(
                testing::tcp(CLIENT2, VIP, 40001, 80, flags, b""),
                Side::Public,
                3
            ),
            DropReason::TcpNoConn,
            "flags {flags:#x}"
        );
    }
    // After the window, back to SYN only.
    assert_eq!(
        lab.dropped(
            testing::tcp(CLIENT2, VIP, 40002, 80, ACK, b""),
            Side::Public,
            10
        ),
        DropReason::TcpNoConn
    );
}

#[test]
fn persistence_by_source_address_sends_a_client_to_one_backend() {
    let backends_of = |persistence| {
        let mut cfg = config();
        cfg.pools[0].persistence = persistence;
        let mut lab = Lab::new(cfg);
        let port = 443;
        let mut seen = std::collections::BTreeSet::new();
        for sport in 40000..40064 {
            let out = lab.pass(
                testing::tcp(CLIENT, VIP, sport, port, SYN, b""),
                Side::Public,
                Side::Private,
                1,
            );
            seen.insert(layout(&out).dst);
        }
        seen
    };
    assert_eq!(backends_of(Persistence::SourceAddress).len(), 1);
    assert!(
        backends_of(Persistence::SourceAddressPort).len() > 1,
        "by address and port, 64 connections spread"
    );
}

#[test]
fn tcp_segments_with_flags_no_tcp_sends_open_and_move_nothing() {
    let mut lab = Lab::new(config());
    const FIN: u8 = 0x01;
    let bad = [SYN | FIN, SYN | FIN | ACK, SYN | RST, FIN, 0, RST | FIN];
    for flags in bad {
        assert_eq!(
            lab.dropped(
                testing::tcp(CLIENT, VIP, 40000, 80, flags, b""),
                Side::Public,
                1
            ),
            DropReason::TcpBadFlags,
            "inbound {flags:#x}"
        );
        assert_eq!(
            lab.dropped(
                testing::tcp(H1, CLIENT, 3000, 443, flags, b""),
                Side::Private,
                1
            ),
            DropReason::TcpBadFlags,
            "outbound {flags:#x}"
        );
    }
    assert_eq!(lab.engine.table().len(), 0, "nothing opened");
    // An established connection is not moved by them either.
    lab.pass(
        testing::tcp(CLIENT, VIP, 40000, 80, SYN, b""),
        Side::Public,
        Side::Private,
        1,
    );
    lab.pass(
        testing::tcp(H2, CLIENT, 8080, 40000, SYN_ACK, b""),
        Side::Private,
        Side::Public,
        1,
    );
    lab.pass(
        testing::tcp(CLIENT, VIP, 40000, 80, ACK, b""),
        Side::Public,
        Side::Private,
        1,
    );
    let key = FlowKey {
        src: CLIENT,
        dst: VIP,
        sport: 40000,
        dport: 80,
        proto: Proto::Tcp,
    };
    assert_eq!(
        lab_state(&lab, &key),
        vipgate_nat::ConnState::TcpEstablished
    );
    for flags in bad {
        lab.dropped(
            testing::tcp(CLIENT, VIP, 40000, 80, flags, b""),
            Side::Public,
            2,
        );
    }
    assert_eq!(
        lab_state(&lab, &key),
        vipgate_nat::ConnState::TcpEstablished
    );
    assert_eq!(
        lab.w.counters.drops(DropReason::TcpBadFlags),
        3 * bad.len() as u64
    );
}

fn lab_state(lab: &Lab, key: &FlowKey) -> vipgate_nat::ConnState {
    lab.engine.table().lookup(key).unwrap().state
}

#[test]
fn a_mapping_timeout_counts_from_its_last_use() {
    let mut c = config();
    c.timeouts.udp = 30;
    c.timeouts.mapping = 60;
    let mut lab = Lab::new(c);
    let ai = lab.engine.ports().addr_index(PAT_IP).unwrap();
    let out = lab.pass(
        testing::udp(H1, CLIENT, 4000, 53, b"q"),
        Side::Private,
        Side::Public,
        1,
    );
    let public = ports_of(&out).1;
    // Used for 100 s, well past the mapping timeout counted from its creation.
    for now in (10..=100).step_by(10) {
        lab.pass(
            testing::udp(H1, CLIENT, 4000, 53, b"q"),
            Side::Private,
            Side::Public,
            now,
        );
    }
    let reclaim = |lab: &mut Lab, now| {
        for _ in 0..2 {
            lab.engine.reclaim(&mut lab.w, now, 1 << 20);
        }
    };
    reclaim(&mut lab, 131);
    assert_eq!(
        lab.engine.table().len(),
        1,
        "the flow went, its mapping stays"
    );
    reclaim(&mut lab, 159);
    assert!(
        lab.engine.ports().is_allocated(ai, Proto::Udp, public),
        "59 s after the last packet"
    );
    reclaim(&mut lab, 160);
    assert_eq!(lab.engine.table().len(), 0, "60 s after the last packet");
    assert!(!lab.engine.ports().is_allocated(ai, Proto::Udp, public));
}

#[test]
fn forged_sources_open_nothing_when_the_sides_check_them() {
    let checked = |on: bool| {
        let mut c = config();
        c.source_check = vipgate_nat::policy::SourceCheck {
            public: on,
            private: on,
            inside: vec![(Ipv4Addr::new(198, 18, 0, 0), 15)],
        };
        Lab::new(c)
    };
    let mut lab = checked(true);
    // From outside with an inside source, or one of ours: never delivered inside.
    let forged = [
        (
            testing::udp(H1, VIP, 1500, 5000, b"x"),
            DropReason::SpoofedInside,
        ),
        (
            testing::tcp(B2, VIP, 1500, 80, SYN, b""),
            DropReason::SpoofedInside,
        ),
        (
            testing::udp(VIP, VIP, 1500, 5000, b"x"),
            DropReason::SpoofedOurs,
        ),
        (
            testing::udp(PAT_IP, VIP, 1500, 5000, b"x"),
            DropReason::SpoofedOurs,
        ),
    ];
    for (frame, why) in forged {
        assert_eq!(lab.dropped(frame, Side::Public, 1), why);
    }
    // An ICMP error from outside claiming an inside source, about a real flow.
    lab.pass(
        testing::udp(CLIENT, VIP, 1500, 5000, b"x"),
        Side::Public,
        Side::Private,
        1,
    );
    let out = lab.pass(
        testing::udp(H2, CLIENT, 6000, 1500, b"y"),
        Side::Private,
        Side::Public,
        1,
    );
    let err = || testing::icmp_error(H1, VIP, 3, 3, testing::datagram(&out), 28);
    assert_eq!(
        lab.dropped(err(), Side::Public, 1),
        DropReason::SpoofedInside
    );
    // From inside with an outside source.
    assert_eq!(
        lab.dropped(
            testing::udp(CLIENT2, CLIENT, 1500, 53, b"x"),
            Side::Private,
            1
        ),
        DropReason::SpoofedOutside
    );
    // The genuine ones pass.
    lab.pass(
        testing::udp(H1, CLIENT, 4000, 53, b"q"),
        Side::Private,
        Side::Public,
        1,
    );
    // With the check off (an unusual topology), the same forgeries go through.
    let mut lab = checked(false);
    lab.pass(
        testing::udp(H1, VIP, 1500, 5000, b"x"),
        Side::Public,
        Side::Private,
        1,
    );
}

#[test]
fn one_host_at_its_pat_quota_leaves_the_others_working() {
    let mut c = config();
    c.pat_quota = 3;
    c.timeouts.udp = 30;
    let mut lab = Lab::new(c);
    for sport in 4000..4003 {
        lab.pass(
            testing::udp(H1, CLIENT, sport, 53, b"q"),
            Side::Private,
            Side::Public,
            1,
        );
    }
    // A fourth mapping for H1 is refused; a new flow on a mapping it holds is not.
    assert_eq!(
        lab.dropped(testing::udp(H1, CLIENT, 4003, 53, b"q"), Side::Private, 1),
        DropReason::PatQuota
    );
    lab.pass(
        testing::udp(H1, CLIENT2, 4000, 53, b"q"),
        Side::Private,
        Side::Public,
        1,
    );
    assert_eq!(lab.engine.mappings_of(H1), 3);
    // Another host is not held back by it.
    lab.pass(
        testing::udp(H2, CLIENT, 4003, 53, b"q"),
        Side::Private,
        Side::Public,
        1,
    );
    assert_eq!(lab.engine.take_quota_report(0), Some((H1, 1)));
    assert_eq!(lab.engine.take_quota_report(0), None, "taken");
    // Once its mappings go, H1 may open again.
    for _ in 0..3 {
        lab.engine.reclaim(&mut lab.w, 100, 1 << 20);
    }
    assert_eq!(lab.engine.mappings_of(H1), 0);
    lab.pass(
        testing::udp(H1, CLIENT, 4003, 53, b"q"),
        Side::Private,
        Side::Public,
        100,
    );
}
