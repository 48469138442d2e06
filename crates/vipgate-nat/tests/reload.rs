//! Publishing a new policy while connections live: they keep their translation, new ones
//! follow the new policy, workers see it only when they refresh between batches.
#![allow(clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::net::Ipv4Addr;

use vipgate_nat::counters::DropReason;
use vipgate_nat::engine::{Engine, Verdict, Worker};
use vipgate_nat::policy::{backend_id, Backend, DnatRule, Filtering, Ipv4Net, NatConfig};
use vipgate_nat::policy::{PatRule, Pool};
use vipgate_nat::{Proto, Side};
use vipgate_wire::testing::{self, layout, verify_checksums};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VIP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
const PAT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const PAT_IP2: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 21);
const H1: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 11);
const B1: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const B2: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const B3: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const REMOTE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 80);

const SYN: u8 = 0x02;
const ACK: u8 = 0x10;

fn pool(name: &str, port: u16, backends: &[(Ipv4Addr, u32)]) -> Pool {
    Pool {
        name: name.into(),
        vip: VIP,
        proto: Proto::Tcp,
        port,
        backends: backends
            .iter()
            .map(|&(addr, weight)| Backend {
                addr,
                port: 8000,
                weight,
            })
            .collect(),
        table_size: 251,
        when_empty: Default::default(),
        persistence: Default::default(),
        reset_on_down: false,
    }
}

fn before() -> NatConfig {
    NatConfig {
        capacity: 1024,
        vips: vec![VIP],
        dnat: vec![
            DnatRule {
                vip: VIP,
                proto: Proto::Tcp,
                port_lo: 22,
                port_hi: 22,
                to: H1,
                to_port: None,
            },
            DnatRule {
                vip: VIP,
                proto: Proto::Tcp,
                port_lo: 25,
                port_hi: 25,
                to: H1,
                to_port: None,
            },
        ],
        pools: vec![pool("web", 80, &[(B1, 1), (B2, 1), (B3, 1)])],
        pat: vec![PatRule {
            from: vec![Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 16).unwrap()],
            to: vec![PAT_IP],
        }],
        ..NatConfig::default()
    }
}

/// Adds a pool in front, changes the weights, drops B1 and the port-25 rule, adds a VIP, a
/// PAT rule in front that keeps 198.18.0.0/24 on its address while the rest of 198.18/16
/// moves to a new one, and endpoint-independent filtering.
fn after() -> NatConfig {
    let mut c = before();
    c.vips.push(VIP2);
    c.dnat.truncate(1);
    c.pools = vec![
        pool("api", 81, &[(B3, 1)]),
        pool("web", 80, &[(B3, 3), (B2, 1)]),
    ];
    c.pat.insert(
        0,
        PatRule {
            from: vec![Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 24).unwrap()],
            to: vec![PAT_IP],
        },
    );
    c.pat[1].to = vec![PAT_IP2];
    c.filtering = Filtering::EndpointIndependent;
    c
}

fn client(i: u16) -> (Ipv4Addr, u16) {
    (Ipv4Addr::new(198, 51, 100, 1 + (i / 1000) as u8), 20000 + i)
}

/// Opens `n` connections to VIP:`port` and returns the backend each reached.
fn open(e: &Engine, w: &mut Worker, port: u16, n: u16, now: u32) -> Vec<(u16, Ipv4Addr)> {
    (0..n)
        .map(|i| {
            let (c, sport) = client(i);
            let mut f = testing::tcp(c, VIP, sport, port, SYN, b"");
            assert_eq!(
                e.process(w, &mut f, Side::Public, now),
                Verdict::Forward(Side::Private)
            );
            (i, layout(&f).dst)
        })
        .collect()
}

#[test]
fn live_connections_keep_their_backend_and_new_ones_follow_the_new_policy() {
    let e = Engine::new(before()).unwrap();
    let mut w = e.worker(0);
    let web = open(&e, &mut w, 80, 300, 1);
    assert!(web.iter().any(|(_, b)| *b == B1));
    let mut ssh = testing::tcp(REMOTE, VIP, 5000, 25, SYN, b"");
    assert_eq!(
        e.process(&mut w, &mut ssh, Side::Public, 1),
        Verdict::Forward(Side::Private)
    );

    let generation = e.publish(&after()).unwrap();
    assert_eq!(generation, 2);
    // Not yet: a worker changes policy only between batches.
    assert_eq!(w.snapshot().unwrap().generation(), 1);
    assert!(e.refresh(&mut w));
    assert!(!e.refresh(&mut w));
    assert_eq!(w.snapshot().unwrap().generation(), 2);

    // Every live connection, B1's included, still reaches the backend it had.
    for &(i, backend) in &web {
        let (c, sport) = client(i);
        let mut f = testing::tcp(c, VIP, sport, 80, ACK, b"data");
        assert_eq!(
            e.process(&mut w, &mut f, Side::Public, 2),
            Verdict::Forward(Side::Private)
        );
        assert_eq!(layout(&f).dst, backend, "connection {i} moved");
        verify_checksums(&f).unwrap();
    }
    // The removed rule's connection continues; a new one to it is refused.
    let mut more = testing::tcp(REMOTE, VIP, 5000, 25, ACK, b"x");
    assert_eq!(
        e.process(&mut w, &mut more, Side::Public, 2),
        Verdict::Forward(Side::Private)
    );
    let mut fresh = testing::tcp(REMOTE, VIP, 5001, 25, SYN, b"");
    assert_eq!(
        e.process(&mut w, &mut fresh, Side::Public, 2),
        Verdict::Drop(DropReason::NoRule)
    );

    // New connections follow the new pools: none to the removed B1, the new pool works,
    // and the new VIP answers pings.
    let fresh: Vec<Ipv4Addr> = (0..300u16)
        .map(|i| {
            let mut f = testing::tcp(REMOTE, VIP, 30000 + i, 80, SYN, b"");
            assert_eq!(
                e.process(&mut w, &mut f, Side::Public, 3),
                Verdict::Forward(Side::Private)
            );
            layout(&f).dst
        })
        .collect();
    assert!(!fresh.contains(&B1));
    let b3 = fresh.iter().filter(|b| **b == B3).count();
    assert!(b3 > 180, "weights 3:1 give B3 about 225 of 300, got {b3}");
    let mut api = testing::tcp(REMOTE, VIP, 9, 81, SYN, b"");
    assert_eq!(
        e.process(&mut w, &mut api, Side::Public, 3),
        Verdict::Forward(Side::Private)
    );
    assert_eq!(layout(&api).dst, B3);
    let mut ping = testing::icmp_echo(REMOTE, VIP2, true, 7, 1);
    assert_eq!(
        e.process(&mut w, &mut ping, Side::Public, 3),
        Verdict::Reply
    );
}

#[test]
fn pat_moves_to_the_new_address_for_new_mappings_only() {
    let e = Engine::new(before()).unwrap();
    let mut w = e.worker(0);
    let mut out = testing::udp(H1, REMOTE, 4000, 53, b"q");
    assert_eq!(
        e.process(&mut w, &mut out, Side::Private, 1),
        Verdict::Forward(Side::Public)
    );
    assert_eq!(layout(&out).src, PAT_IP);

    e.publish(&after()).unwrap();
    e.refresh(&mut w);
    // The existing mapping keeps its address (and, filtering being endpoint independent
    // now, takes a new peer).
    let mut again = testing::udp(H1, REMOTE, 4000, 53, b"q");
    assert_eq!(
        e.process(&mut w, &mut again, Side::Private, 2),
        Verdict::Forward(Side::Public)
    );
    assert_eq!(layout(&again).src, PAT_IP);
    let mut other_peer = testing::udp(Ipv4Addr::new(198, 51, 100, 99), PAT_IP, 1, 4000, b"r");
    assert_eq!(
        e.process(&mut w, &mut other_peer, Side::Public, 2),
        Verdict::Forward(Side::Private)
    );
    let mut new_host = testing::udp(Ipv4Addr::new(198, 18, 5, 12), REMOTE, 4000, 53, b"q");
    assert_eq!(
        e.process(&mut w, &mut new_host, Side::Private, 2),
        Verdict::Forward(Side::Public)
    );
    assert_eq!(layout(&new_host).src, PAT_IP2);
}

#[test]
fn a_bad_policy_changes_nothing_and_timeouts_follow_the_reload() {
    let e = Engine::new(before()).unwrap();
    let mut bad = after();
    bad.pools.push(pool("web2", 80, &[(B1, 1)]));
    assert!(e.publish(&bad).is_err());
    assert_eq!(e.snapshot().generation(), 1);

    let mut c = before();
    c.timeouts.udp = 17;
    e.publish(&c).unwrap();
    assert_eq!(e.table().timeouts().udp, 17);
    assert_eq!(e.snapshot().policy().timeouts().udp, 17);
}

#[test]
fn pool_connections_carry_the_backend_id() {
    let e = Engine::new(before()).unwrap();
    let mut w = e.worker(0);
    let mut f = testing::tcp(REMOTE, VIP, 1234, 80, SYN, b"");
    e.process(&mut w, &mut f, Side::Public, 1);
    let dst = layout(&f).dst;
    let mut ids = Vec::new();
    e.table().for_each_live(1, |_, r| ids.push(r.backend));
    assert_eq!(ids, vec![backend_id("web", dst, 8000)]);
}

#[test]
fn flush_removed_takes_exactly_what_the_new_policy_no_longer_covers() {
    let e = Engine::new(before()).unwrap();
    let mut w = e.worker(0);
    let web = open(&e, &mut w, 80, 90, 1);
    let on_b1 = web.iter().filter(|(_, b)| *b == B1).count() as u32;
    assert!(on_b1 > 0);
    let mut ssh = testing::tcp(REMOTE, VIP, 5000, 22, SYN, b"");
    let mut smtp = testing::tcp(REMOTE, VIP, 5000, 25, SYN, b"");
    let mut out = testing::udp(H1, REMOTE, 4000, 53, b"q");
    e.process(&mut w, &mut ssh, Side::Public, 1);
    e.process(&mut w, &mut smtp, Side::Public, 1);
    e.process(&mut w, &mut out, Side::Private, 1);
    assert_eq!(
        e.flush_removed(1),
        0,
        "everything is covered before the change"
    );

    e.publish(&after()).unwrap();
    assert_eq!(
        e.flush_removed(2),
        on_b1 + 1,
        "B1's connections and port 25's"
    );
    let mut again = testing::tcp(REMOTE, VIP, 5000, 22, ACK, b"x");
    e.refresh(&mut w);
    assert_eq!(
        e.process(&mut w, &mut again, Side::Public, 2),
        Verdict::Forward(Side::Private)
    );
    let mut gone = testing::tcp(REMOTE, VIP, 5000, 25, ACK, b"x");
    assert_eq!(
        e.process(&mut w, &mut gone, Side::Public, 2),
        Verdict::Drop(DropReason::TcpNoConn)
    );
}
