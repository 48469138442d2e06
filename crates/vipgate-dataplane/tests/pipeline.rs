//! The pipeline over byte fixtures: frames in, frames out.
#![allow(clippy::unwrap_used, clippy::indexing_slicing, clippy::panic)]

use std::net::Ipv4Addr;

use proptest::prelude::*;
use vipgate_dataplane::{
    Action, Dataplane, DataplaneConfig, Emit, Interface, Listener, NeighborConfig, Pipeline, Route,
};
use vipgate_nat::counters::DropReason;
use vipgate_nat::policy::{Backend, DnatRule, EmptyPool, Ipv4Net, NatConfig, PatRule, Pool};
use vipgate_nat::{Proto, Side};
use vipgate_wire::arp::{ArpOp, ArpRepr};
use vipgate_wire::checksum::checksum;
use vipgate_wire::rewrite::set_macs;
use vipgate_wire::testing::{self, verify_checksums, MAC_CLIENT, MAC_GATEWAY};
use vipgate_wire::{Parsed, Transport};

const PUB_MAC: [u8; 6] = MAC_GATEWAY;
const PRIV_MAC: [u8; 6] = [0x02, 0, 0, 0, 1, 1];
const RTR_MAC: [u8; 6] = MAC_CLIENT;
const H1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const PUB_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
const PRIV_IP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const RTR: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 254);
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 100);
const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const FAR: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 5);
const PUB: usize = 0;
const PRIV: usize = 1;
const BUF: usize = 2048;

fn dataplane(icmp_rate: u32) -> Dataplane {
    let net = |a: Ipv4Addr, len| Ipv4Net::new(a, len).unwrap();
    let config = DataplaneConfig {
        interfaces: vec![
            Interface {
                name: "pub".into(),
                side: Side::Public,
                mac: PUB_MAC,
                addr: PUB_IP,
                net: net(PUB_IP, 24),
                virtual_addrs: Vec::new(),
            },
            Interface {
                name: "priv".into(),
                side: Side::Private,
                mac: PRIV_MAC,
                addr: PRIV_IP,
                net: net(PRIV_IP, 24),
                virtual_addrs: Vec::new(),
            },
        ],
        routes: vec![Route {
            net: net(Ipv4Addr::UNSPECIFIED, 0),
            iface: PUB,
            via: Some(RTR),
        }],
        neighbors: NeighborConfig {
            capacity: 64,
            reachable_ms: 30_000,
            retry_ms: 1_000,
            retries: 3,
            hold: 2,
        },
        icmp_rate,
        frame_size: BUF,
        virtual_mac: None,
    };
    let nat = NatConfig {
        capacity: 1024,
        vips: vec![VIP],
        dnat: vec![
            DnatRule {
                vip: VIP,
                proto: Proto::Tcp,
                port_lo: 80,
                port_hi: 80,
                to: H1,
                to_port: None,
            },
            DnatRule {
                vip: VIP,
                proto: Proto::Udp,
                port_lo: 53,
                port_hi: 53,
                to: FAR,
                to_port: None,
            },
        ],
        pat: vec![PatRule {
            from: vec![net(PRIV_IP, 24)],
            to: vec![VIP],
        }],
        // Pools with every backend out of service: two refuse, one drops.
        pools: [
            ("tcp-empty", Proto::Tcp, 8080, EmptyPool::Reject),
            ("tcp-quiet", Proto::Tcp, 8081, EmptyPool::Drop),
            ("udp-empty", Proto::Udp, 5000, EmptyPool::Reject),
        ]
        .into_iter()
        .map(|(name, proto, port, when_empty)| Pool {
            name: name.into(),
            vip: VIP,
            proto,
            port,
            backends: vec![Backend {
                addr: H1,
                port: 80,
                weight: 0,
            }],
            table_size: 251,
            when_empty,
            persistence: Default::default(),
            reset_on_down: false,
        })
        .collect(),
        ..NatConfig::default()
    };
    Dataplane::new(config, nat).unwrap()
}

/// Collects what the pipeline originates.
#[derive(Default)]
struct Sent(Vec<(usize, Vec<u8>)>);

impl Emit for Sent {
    fn emit(&mut self, iface: usize, build: &mut dyn FnMut(&mut [u8]) -> Option<usize>) -> bool {
        let mut buf = vec![0u8; BUF];
        match build(&mut buf) {
            Some(n) => {
                buf.truncate(n);
                self.0.push((iface, buf));
                true
            }
            None => false,
        }
    }
}

/// Runs one frame; gives the action and the frame as it would leave.
fn run(
    p: &mut Pipeline<'_>,
    iface: usize,
    frame: &[u8],
    now: u64,
    out: &mut Sent,
) -> (Action, Vec<u8>) {
    let mut buf = frame.to_vec();
    buf.resize(BUF, 0);
    let a = p.frame(iface, &mut buf, frame.len(), now, out);
    if let Action::Send { len, .. } = a {
        buf.truncate(len);
    }
    (a, buf)
}

fn counter(p: &Pipeline<'_>, name: &str) -> u64 {
    p.named_counters()
        .into_iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no counter {name}"))
        .1
}

fn arp_frame(
    op: ArpOp,
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let r = ArpRepr {
        op,
        sender_mac,
        sender_ip,
        target_mac,
        target_ip,
    };
    let mut buf = vec![0u8; 64];
    let n = r.emit_frame(&mut buf, None).unwrap();
    buf.truncate(n);
    buf
}

fn arp_of(frame: &[u8]) -> ArpRepr {
    match vipgate_wire::parse(frame).unwrap() {
        Parsed::Arp { offset, .. } => ArpRepr::parse(frame, offset).unwrap(),
        other => panic!("not ARP: {other:?}"),
    }
}

fn to(frame: Vec<u8>, dst_mac: [u8; 6], src_mac: [u8; 6]) -> Vec<u8> {
    let mut f = frame;
    set_macs(&mut f, dst_mac, src_mac).unwrap();
    f
}

fn with_ttl(mut frame: Vec<u8>, ttl: u8) -> Vec<u8> {
    frame[22] = ttl;
    frame[24] = 0;
    frame[25] = 0;
    let sum = checksum(&frame[14..34]);
    frame[24..26].copy_from_slice(&sum.to_be_bytes());
    frame
}

fn learn(
    p: &mut Pipeline<'_>,
    iface: usize,
    ip: Ipv4Addr,
    mac: [u8; 6],
    our_ip: Ipv4Addr,
    our_mac: [u8; 6],
    now: u64,
) {
    let reply = arp_frame(ArpOp::Reply, mac, ip, our_mac, our_ip);
    let (a, _) = run(p, iface, &reply, now, &mut Sent::default());
    assert_eq!(a, Action::Release);
}

#[test]
fn arp_for_a_vip_is_answered_on_the_public_side_only() {
    let dp = dataplane(10);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    let ask = |sender_mac, sender_ip, target| {
        arp_frame(ArpOp::Request, sender_mac, sender_ip, [0; 6], target)
    };

    let (a, reply) = run(&mut p, PUB, &ask(RTR_MAC, RTR, VIP), 0, &mut out);
    assert_eq!(
        a,
        Action::Send {
            iface: PUB,
            len: reply.len()
        }
    );
    let r = arp_of(&reply);
    assert_eq!(
        (r.op, r.sender_mac, r.sender_ip, r.target_mac, r.target_ip),
        (ArpOp::Reply, PUB_MAC, VIP, RTR_MAC, RTR)
    );
    assert_eq!(&reply[..6], &RTR_MAC);

    // The same question on the private side, and a question for an address we do not hold.
    assert_eq!(
        run(&mut p, PRIV, &ask(H1_MAC, H1, VIP), 0, &mut out).0,
        Action::Release
    );
    assert_eq!(
        run(
            &mut p,
            PUB,
            &ask(RTR_MAC, RTR, Ipv4Addr::new(203, 0, 113, 99)),
            0,
            &mut out
        )
        .0,
        Action::Release
    );
    assert_eq!(counter(&p, "drop_arp_not_ours"), 2);

    // The gateway's own private address is answered on the private side.
    let (a, reply) = run(&mut p, PRIV, &ask(H1_MAC, H1, PRIV_IP), 0, &mut out);
    assert_eq!(
        a,
        Action::Send {
            iface: PRIV,
            len: reply.len()
        }
    );
    assert_eq!(arp_of(&reply).sender_mac, PRIV_MAC);
    assert_eq!(counter(&p, "arp_replies"), 2);
    assert!(out.0.is_empty());
}

#[test]
fn malformed_and_foreign_frames_are_counted_by_reason() {
    let dp = dataplane(10);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    let ask = arp_frame(ArpOp::Request, RTR_MAC, RTR, [0; 6], VIP);
    assert_eq!(run(&mut p, PUB, &ask[..30], 0, &mut out).0, Action::Release);
    assert_eq!(counter(&p, "drop_arp_malformed"), 1);

    let syn = testing::tcp(CLIENT, VIP, 40000, 80, 0x02, b"");
    let other = to(syn.clone(), [0x02, 9, 9, 9, 9, 9], RTR_MAC);
    assert_eq!(run(&mut p, PUB, &other, 0, &mut out).0, Action::Release);
    assert_eq!(counter(&p, "drop_other_mac"), 1);

    assert_eq!(
        run(&mut p, PUB, &testing::with_vlan(&syn, 7), 0, &mut out).0,
        Action::Release
    );
    assert_eq!(counter(&p, "drop_vlan"), 1);

    let mut bad_sum = syn.clone();
    bad_sum[24] ^= 0xff;
    assert_eq!(run(&mut p, PUB, &bad_sum, 0, &mut out).0, Action::Release);
    assert_eq!(p.worker().counters.drops(DropReason::BadIpv4Checksum), 1);

    assert_eq!(run(&mut p, PUB, &syn[..20], 0, &mut out).0, Action::Release);
    assert_eq!(p.worker().counters.drops(DropReason::Truncated), 1);

    let unknown = testing::udp(CLIENT, Ipv4Addr::new(192, 0, 2, 1), 1, 2, b"x");
    assert_eq!(run(&mut p, PUB, &unknown, 0, &mut out).0, Action::Release);
    assert_eq!(p.worker().counters.drops(DropReason::NoRule), 1);
    assert_eq!(counter(&p, "rx_frames"), 6);
    assert!(out.0.is_empty());
}

#[test]
fn a_translated_frame_waits_for_arp_then_leaves_with_the_right_header() {
    let dp = dataplane(10);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    let syn = testing::tcp(CLIENT, VIP, 40000, 80, 0x02, b"");
    assert_eq!(run(&mut p, PUB, &syn, 1_000, &mut out).0, Action::Release);
    let (iface, req) = out.0.pop().unwrap();
    let r = arp_of(&req);
    assert_eq!(
        (iface, r.op, r.sender_mac, r.sender_ip, r.target_ip),
        (PRIV, ArpOp::Request, PRIV_MAC, PRIV_IP, H1)
    );

    // Nothing leaves before the answer; the answer releases the held frame.
    p.tick(1_100, &mut out);
    assert!(out.0.is_empty());
    learn(&mut p, PRIV, H1, H1_MAC, PRIV_IP, PRIV_MAC, 1_200);
    p.tick(1_300, &mut out);
    let (iface, f) = out.0.pop().unwrap();
    assert_eq!(iface, PRIV);
    assert_eq!((&f[..6], &f[6..12]), (&H1_MAC[..], &PRIV_MAC[..]));
    verify_checksums(&f).unwrap();
    let l = testing::layout(&f);
    assert_eq!((l.src, l.dst, l.ttl), (CLIENT, H1, 63));

    // The next frame of the flow goes straight through.
    let ack = testing::tcp(CLIENT, VIP, 40000, 80, 0x10, b"GET /");
    let (a, f) = run(&mut p, PUB, &ack, 1_400, &mut out);
    assert_eq!(
        a,
        Action::Send {
            iface: PRIV,
            len: f.len()
        }
    );
    assert_eq!(&f[..6], &H1_MAC);
    verify_checksums(&f).unwrap();
    assert_eq!(counter(&p, "arp_requests"), 1);
    assert_eq!(counter(&p, "arp_learned"), 1);
}

#[test]
fn an_unanswered_next_hop_is_retried_then_its_frames_are_dropped() {
    let dp = dataplane(10);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    for port in 0..4u16 {
        let syn = testing::tcp(CLIENT, VIP, 40000 + port, 80, 0x02, b"");
        run(&mut p, PUB, &syn, 0, &mut out);
    }
    // The hold keeps two frames per address; the others are dropped at once.
    assert_eq!(counter(&p, "drop_hold_full"), 2);
    for t in (100..=3_000).step_by(100) {
        p.tick(t, &mut out);
    }
    assert_eq!(
        counter(&p, "arp_requests"),
        3,
        "one request and two retries"
    );
    assert_eq!(counter(&p, "drop_neighbor_unresolved"), 2);
    assert!(out
        .0
        .iter()
        .all(|(i, f)| *i == PRIV && arp_of(f).target_ip == H1));
}

#[test]
fn an_expiring_ttl_is_answered_with_time_exceeded_within_the_rate() {
    let dp = dataplane(2);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    let syn = with_ttl(testing::tcp(CLIENT, VIP, 40000, 80, 0x02, b""), 1);
    let (a, f) = run(&mut p, PUB, &syn, 0, &mut out);
    assert_eq!(
        a,
        Action::Send {
            iface: PUB,
            len: f.len()
        }
    );
    verify_checksums(&f).unwrap();
    let l = testing::layout(&f);
    assert_eq!((l.src, l.dst), (PUB_IP, CLIENT));
    assert!(matches!(
        l.transport,
        Transport::IcmpError { ty: 11, code: 0 }
    ));
    assert_eq!(&f[..6], &syn[6..12], "back to the frame's sender");
    let inner = l.icmp_inner(&f).unwrap();
    assert_eq!(
        (inner.src, inner.dst),
        (CLIENT, VIP),
        "quoted as it arrived"
    );

    run(&mut p, PUB, &syn, 0, &mut out);
    assert_eq!(run(&mut p, PUB, &syn, 0, &mut out).0, Action::Release);
    assert_eq!(
        (
            counter(&p, "icmp_time_exceeded"),
            counter(&p, "icmp_rate_limited")
        ),
        (2, 1)
    );
    // Tokens come back with time.
    assert!(matches!(
        run(&mut p, PUB, &syn, 1_000, &mut out).0,
        Action::Send { .. }
    ));
    assert_eq!(counter(&p, "drop_ttl_exceeded"), 4);
    assert_eq!(
        counter(&p, "conns_created"),
        0,
        "expired datagrams create nothing"
    );
}

#[test]
fn pings_to_the_gateway_and_its_vips_are_answered_others_to_it_dropped() {
    let dp = dataplane(10);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    let ping = to(
        testing::icmp_echo(H1, PRIV_IP, true, 7, 1),
        PRIV_MAC,
        H1_MAC,
    );
    let (a, f) = run(&mut p, PRIV, &ping, 0, &mut out);
    assert_eq!(
        a,
        Action::Send {
            iface: PRIV,
            len: f.len()
        }
    );
    verify_checksums(&f).unwrap();
    let l = testing::layout(&f);
    assert_eq!((l.src, l.dst), (PRIV_IP, H1));
    assert_eq!(&f[..6], &H1_MAC);

    // A ping to the VIP with TTL 1 is ours to answer, not to expire.
    let vip_ping = with_ttl(testing::icmp_echo(CLIENT, VIP, true, 9, 1), 1);
    let (a, f) = run(&mut p, PUB, &vip_ping, 0, &mut out);
    assert_eq!(
        a,
        Action::Send {
            iface: PUB,
            len: f.len()
        }
    );
    assert!(matches!(
        testing::layout(&f).transport,
        Transport::IcmpEcho { request: false, .. }
    ));

    let udp = to(testing::udp(H1, PRIV_IP, 1, 2, b"x"), PRIV_MAC, H1_MAC);
    assert_eq!(run(&mut p, PRIV, &udp, 0, &mut out).0, Action::Release);
    assert_eq!(counter(&p, "drop_to_gateway"), 1);
    assert_eq!(counter(&p, "gateway_echo_replies"), 1);
}

#[test]
fn pat_leaves_by_the_default_route_and_a_missing_route_is_counted() {
    let dp = dataplane(10);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    learn(&mut p, PUB, RTR, RTR_MAC, PUB_IP, PUB_MAC, 0);
    let out_udp = to(
        testing::udp(H1, CLIENT, 5000, 7000, b"hi"),
        PRIV_MAC,
        H1_MAC,
    );
    let (a, f) = run(&mut p, PRIV, &out_udp, 0, &mut out);
    assert_eq!(
        a,
        Action::Send {
            iface: PUB,
            len: f.len()
        }
    );
    assert_eq!((&f[..6], &f[6..12]), (&RTR_MAC[..], &PUB_MAC[..]));
    let l = testing::layout(&f);
    assert_eq!((l.src, l.dst), (VIP, CLIENT));
    verify_checksums(&f).unwrap();

    // udp 53 goes to 198.19.0.5, behind no private route.
    let dns = testing::udp(CLIENT, VIP, 5000, 53, b"q");
    assert_eq!(run(&mut p, PUB, &dns, 0, &mut out).0, Action::Release);
    assert_eq!(counter(&p, "drop_no_route"), 1);
}

#[test]
fn startup_announces_every_address_with_gratuitous_arp() {
    let dp = dataplane(10);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    p.announce(&mut out);
    let mut seen: Vec<(usize, Ipv4Addr)> = out
        .0
        .iter()
        .map(|(i, f)| {
            let r = arp_of(f);
            assert_eq!(r.sender_ip, r.target_ip);
            (*i, r.sender_ip)
        })
        .collect();
    seen.sort();
    assert_eq!(seen, vec![(PUB, PUB_IP), (PUB, VIP), (PRIV, PRIV_IP)]);
}

#[test]
fn standby_keeps_quiet_for_the_vips_and_active_announces_and_forwards_at_once() {
    let dp = dataplane(10);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    learn(&mut p, PRIV, H1, H1_MAC, PRIV_IP, PRIV_MAC, 0);
    learn(&mut p, PUB, RTR, RTR_MAC, PUB_IP, PUB_MAC, 0);
    let syn = |sport| {
        to(
            testing::tcp(CLIENT, VIP, sport, 80, 0x02, b""),
            PUB_MAC,
            RTR_MAC,
        )
    };
    let ask = |target| arp_frame(ArpOp::Request, RTR_MAC, RTR, [0; 6], target);
    assert!(matches!(
        run(&mut p, PUB, &syn(1000), 1, &mut out).0,
        Action::Send { iface: PRIV, .. }
    ));

    dp.set_active(false);
    assert!(!dp.is_active());
    assert_eq!(run(&mut p, PUB, &ask(VIP), 2, &mut out).0, Action::Release);
    assert!(matches!(
        run(&mut p, PUB, &ask(PUB_IP), 2, &mut out).0,
        Action::Send { .. }
    ));
    // Neither the connection that exists nor a new one passes; both stay in the table.
    let data = to(
        testing::tcp(CLIENT, VIP, 1000, 80, 0x10, b"x"),
        PUB_MAC,
        RTR_MAC,
    );
    assert_eq!(run(&mut p, PUB, &data, 2, &mut out).0, Action::Release);
    assert_eq!(run(&mut p, PUB, &syn(1001), 2, &mut out).0, Action::Release);
    assert_eq!(counter(&p, "drop_standby"), 2);
    assert_eq!(dp.engine().table().len(), 1);
    p.tick(3, &mut out);
    assert!(out.0.is_empty(), "a standby announces nothing");

    dp.set_active(true);
    p.tick(4, &mut out);
    let announced: Vec<Ipv4Addr> = out.0.iter().map(|(_, f)| arp_of(f).sender_ip).collect();
    assert!(announced.contains(&VIP), "{announced:?}");
    out.0.clear();
    p.tick(5, &mut out);
    assert!(out.0.is_empty(), "one announcement per opening");
    assert!(matches!(
        run(&mut p, PUB, &data, 6, &mut out).0,
        Action::Send { iface: PRIV, .. }
    ));
    assert!(matches!(
        run(&mut p, PUB, &ask(VIP), 6, &mut out).0,
        Action::Send { .. }
    ));
}

/// A VRRP advert (IP protocol 112) from `src` to 224.0.0.18, to its multicast MAC.
fn vrrp_advert(src: Ipv4Addr) -> Vec<u8> {
    let mut f = testing::udp(src, Ipv4Addr::new(224, 0, 0, 18), 1, 2, b"advert");
    f[..6].copy_from_slice(&[0x01, 0x00, 0x5e, 0x00, 0x00, 0x12]);
    f[14 + 8] = 255; // TTL
    f[14 + 9] = 112; // protocol
    f[24] = 0;
    f[25] = 0;
    let sum = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f
}

#[test]
fn the_host_path_carries_what_the_control_thread_subscribed_both_ways() {
    let dp = dataplane(10);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    let advert = vrrp_advert(RTR);
    let to_gw = to(
        testing::tcp(CLIENT, PUB_IP, 40000, 179, 0x02, b""),
        PUB_MAC,
        RTR_MAC,
    );
    // Nothing subscribed: multicast is not ours, TCP to the gateway is dropped.
    assert_eq!(run(&mut p, PUB, &advert, 0, &mut out).0, Action::Release);
    assert_eq!(run(&mut p, PUB, &to_gw, 0, &mut out).0, Action::Release);
    assert_eq!(counter(&p, "drop_other_mac"), 1);
    assert_eq!(counter(&p, "drop_to_gateway"), 1);
    assert!(dp.host().receive(Listener::Stack).is_none());

    assert!(dp
        .host()
        .subscribe_group(Ipv4Addr::new(224, 0, 0, 18), Listener::Election));
    dp.host().subscribe_protocol(6, Listener::Stack);
    assert_eq!(run(&mut p, PUB, &advert, 1, &mut out).0, Action::Release);
    assert_eq!(run(&mut p, PUB, &to_gw, 1, &mut out).0, Action::Release);
    let up = dp.host().receive(Listener::Election).unwrap();
    assert_eq!((up.iface, up.data()), (PUB, &advert[..]));
    dp.host().recycle(up);
    let up = dp.host().receive(Listener::Stack).unwrap();
    assert_eq!((up.iface, up.data()), (PUB, &to_gw[..]));
    dp.host().recycle(up);
    assert_eq!(counter(&p, "host_rx"), 2);
    // Pings to the gateway are still answered in place, even with ICMP subscribed.
    dp.host().subscribe_protocol(1, Listener::Stack);
    let ping = to(
        testing::icmp_echo(CLIENT, PUB_IP, true, 1, 1),
        PUB_MAC,
        RTR_MAC,
    );
    assert!(matches!(
        run(&mut p, PUB, &ping, 2, &mut out).0,
        Action::Send { .. }
    ));
    // A standby box still hears its peer.
    dp.set_active(false);
    run(&mut p, PUB, &advert, 3, &mut out);
    assert!(dp.host().receive(Listener::Election).is_some());

    // Down: the control thread's frame leaves at the worker's next tick, as built.
    let garp = ArpRepr::gratuitous(PUB_MAC, VIP);
    assert!(dp.host().send(PUB, |b| garp.emit_frame(b, None).ok()));
    p.tick(4, &mut out);
    assert_eq!(out.0.len(), 1);
    assert_eq!(out.0[0].0, PUB);
    assert_eq!(arp_of(&out.0[0].1).sender_ip, VIP);
    assert_eq!(counter(&p, "host_tx"), 1);
}

#[test]
fn a_full_host_path_drops_and_counts_without_blocking() {
    let dp = dataplane(10);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    dp.host().subscribe_protocol(6, Listener::Stack);
    let to_gw = to(
        testing::tcp(CLIENT, PUB_IP, 40000, 179, 0x02, b""),
        PUB_MAC,
        RTR_MAC,
    );
    for _ in 0..1100 {
        run(&mut p, PUB, &to_gw, 0, &mut out);
    }
    assert_eq!(counter(&p, "host_rx"), 1024);
    assert_eq!(counter(&p, "drop_host_full"), 76);
}

proptest! {
    #[test]
    fn arbitrary_frames_never_panic_and_are_counted_once(
        frames in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..20),
        iface in 0usize..3,
    ) {
        let dp = dataplane(10);
        let mut p = dp.pipeline(0);
        let mut out = Sent::default();
        for f in &frames {
            let mut f = f.clone();
            if f.len() >= 6 {
                f[..6].copy_from_slice(&PUB_MAC);
            }
            run(&mut p, iface, &f, 0, &mut out);
            p.tick(0, &mut out);
        }
        prop_assert_eq!(counter(&p, "rx_frames"), frames.len() as u64);
    }
}

#[test]
fn an_empty_pool_refuses_at_once_unless_told_to_drop() {
    let dp = dataplane(10);
    let mut p = dp.pipeline(0);
    let mut out = Sent::default();
    let syn = to(
        testing::tcp(CLIENT, VIP, 40000, 8080, 0x02, b""),
        PUB_MAC,
        RTR_MAC,
    );
    let (action, frame) = run(&mut p, PUB, &syn, 0, &mut out);
    assert!(
        matches!(action, Action::Send { iface: PUB, .. }),
        "{action:?}"
    );
    let l = match vipgate_wire::parse(&frame).unwrap() {
        vipgate_wire::Parsed::Ipv4(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!((l.src, l.dst), (VIP, CLIENT));
    assert!(matches!(
        l.transport,
        Transport::Tcp {
            sport: 8080,
            dport: 40000,
            flags: 0x14
        }
    ));
    assert_eq!(&frame[..6], &RTR_MAC, "back to the sender's MAC");
    assert_eq!(counter(&p, "empty_pool_resets"), 1);

    let datagram = to(
        testing::udp(CLIENT, VIP, 40000, 5000, b"q"),
        PUB_MAC,
        RTR_MAC,
    );
    let (action, frame) = run(&mut p, PUB, &datagram, 1, &mut out);
    assert!(matches!(action, Action::Send { .. }), "{action:?}");
    let l = match vipgate_wire::parse(&frame).unwrap() {
        vipgate_wire::Parsed::Ipv4(l) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!((l.src, l.dst, l.proto), (VIP, CLIENT, 1));
    assert_eq!((frame[34], frame[35]), (3, 3), "port unreachable");
    assert_eq!(counter(&p, "empty_pool_unreachables"), 1);

    let quiet = to(
        testing::tcp(CLIENT, VIP, 40001, 8081, 0x02, b""),
        PUB_MAC,
        RTR_MAC,
    );
    assert_eq!(run(&mut p, PUB, &quiet, 2, &mut out).0, Action::Release);
    assert_eq!(
        counter(&p, "drop_no_backend"),
        3,
        "every one counted as a drop too"
    );
}
