#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::HashSet;
use std::net::Ipv4Addr;

use super::*;
use crate::key::Proto;
use crate::state::tcp_flags::{ACK, FIN, RST, SYN};

/// Client `i`'s connection to a VIP, DNATed to a backend: the reply comes from the backend.
fn conn(i: u32, proto: Proto, state: ConnState) -> NewConn {
    let client = Ipv4Addr::from(0xc612_0000 + i); // 198.18.x.y
    let orig = FlowKey {
        src: client,
        dst: Ipv4Addr::new(203, 0, 113, 10),
        sport: 1024 + (i % 60000) as u16,
        dport: 443,
        proto,
    };
    let reply = FlowKey {
        src: Ipv4Addr::new(198, 19, 0, 7),
        dst: client,
        sport: 8443,
        dport: orig.sport,
        proto,
    };
    NewConn {
        orig,
        reply,
        state,
        flags: (i % 7) as u8,
        owner: (i % 3) as u8,
        mapping: None,
        backend: i,
    }
}

fn tcp(i: u32) -> NewConn {
    conn(i, Proto::Tcp, ConnState::TcpSynSent)
}

fn table(capacity: u32) -> ConnTable {
    ConnTable::new(capacity, Timeouts::default()).unwrap()
}

fn assert_hit(hit: &Hit, c: &NewConn, id: ConnId, dir: Dir) {
    assert_eq!(hit.id, id);
    assert_eq!(hit.dir, dir);
    assert_eq!((hit.orig, hit.reply), (c.orig, c.reply));
    assert_eq!(
        (hit.flags, hit.owner, hit.backend),
        (c.flags, c.owner, c.backend)
    );
    assert_eq!(hit.mapping, c.mapping);
}

#[test]
fn insert_then_lookup_both_directions() {
    let t = table(1000);
    assert!(t.is_empty());
    let c = tcp(1);
    let id = t.insert(&c, 100).unwrap();
    assert_eq!(id.generation & 1, 1);
    assert_eq!(t.len(), 1);

    let hit = t.lookup(&c.orig).unwrap();
    assert_hit(&hit, &c, id, Dir::Orig);
    assert_eq!(hit.state, ConnState::TcpSynSent);
    assert_hit(&t.lookup(&c.reply).unwrap(), &c, id, Dir::Reply);

    // The untranslated reverse of the original tuple is not a key.
    assert_eq!(t.lookup(&c.orig.reversed()), None);
    assert_eq!(t.lookup(&tcp(2).orig), None);
    let mut udp = c.orig;
    udp.proto = Proto::Udp;
    assert_eq!(t.lookup(&udp), None);

    let h = t.hash(&c.reply);
    t.prefetch(h);
    assert_eq!(t.lookup_hashed(&c.reply, h), t.lookup(&c.reply));
    assert_eq!(h, t.hash(&c.reply));
    assert_ne!(t.hash(&c.orig), h);
}

#[test]
fn many_connections_all_found_with_their_own_fields() {
    let t = table(5000);
    let ids: Vec<ConnId> = (0..5000)
        .map(|i| t.insert(&conn(i, Proto::Udp, ConnState::Udp), 1).unwrap())
        .collect();
    assert_eq!(t.len(), 5000);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 5000);
    for (i, id) in ids.iter().enumerate() {
        let c = conn(i as u32, Proto::Udp, ConnState::Udp);
        assert_hit(&t.lookup(&c.orig).unwrap(), &c, *id, Dir::Orig);
        assert_hit(&t.lookup(&c.reply).unwrap(), &c, *id, Dir::Reply);
    }
}

#[test]
fn duplicates_are_refused_and_leave_nothing_behind() {
    let t = table(8);
    let c = tcp(1);
    let id = t.insert(&c, 0).unwrap();

    // Same original tuple.
    let mut again = tcp(1);
    again.backend = 77;
    match t.insert(&again, 0) {
        Err(InsertError::Exists(hit)) => assert_hit(&hit, &c, id, Dir::Orig),
        other => panic!("{other:?}"),
    }
    // A new connection whose original tuple is an existing reply tuple: that packet is a
    // reply of the existing connection.
    let mut from_backend = tcp(2);
    from_backend.orig = c.reply;
    match t.insert(&from_backend, 0) {
        Err(InsertError::Exists(hit)) => assert_hit(&hit, &c, id, Dir::Reply),
        other => panic!("{other:?}"),
    }
    // Reply tuple taken, as reply or as original tuple.
    let mut clash = tcp(3);
    clash.reply = c.reply;
    assert_eq!(t.insert(&clash, 0), Err(InsertError::Clash));
    clash.reply = c.orig;
    assert_eq!(t.insert(&clash, 0), Err(InsertError::Clash));
    let mut same = tcp(4);
    same.reply = same.orig;
    assert_eq!(t.insert(&same, 0), Err(InsertError::Clash));

    assert_eq!(t.len(), 1);
    assert_eq!(t.lookup(&tcp(3).orig), None);
    // Every failed insert gave its entry and its slots back.
    for i in 10..17 {
        t.insert(&tcp(i), 0).unwrap();
    }
    assert_eq!(t.insert(&tcp(17), 0), Err(InsertError::Full));
    assert_eq!(t.lookup(&c.orig).unwrap().id, id);
}

#[test]
fn full_table_refuses_new_and_keeps_old() {
    let t = table(64);
    let ids: Vec<ConnId> = (0..64).map(|i| t.insert(&tcp(i), 5).unwrap()).collect();
    assert_eq!(t.len(), 64);
    for i in 64..200 {
        assert_eq!(t.insert(&tcp(i), 5), Err(InsertError::Full));
    }
    for (i, id) in ids.iter().enumerate() {
        let c = tcp(i as u32);
        assert_hit(&t.lookup(&c.orig).unwrap(), &c, *id, Dir::Orig);
        assert_hit(&t.lookup(&c.reply).unwrap(), &c, *id, Dir::Reply);
    }
    assert_eq!(t.len(), 64);
    t.remove(ids[10], 6).unwrap();
    let new = t.insert(&tcp(500), 6).unwrap();
    assert_eq!(new.index, ids[10].index);
    assert_ne!(new.generation, ids[10].generation);
    assert_eq!(t.insert(&tcp(501), 6), Err(InsertError::Full));
}

#[test]
fn key_in_second_bucket_and_both_buckets_full() {
    let t = table(64);
    let c = tcp(1);
    let place = Place::new(t.hash(&c.orig), t.n_buckets());
    // Fill the first candidate bucket with slots of another tag.
    let junk = (place.tag ^ (1 << 40)) | 5;
    for s in &t.buckets[place.first].slots {
        s.store(junk, Ordering::SeqCst);
    }
    let id = t.insert(&c, 0).unwrap();
    assert_eq!(t.lookup(&c.orig).unwrap().id, id);
    let in_second = t.buckets[place.second]
        .slots
        .iter()
        .any(|s| s.load(Ordering::SeqCst) == place.slot_value(id.index, Dir::Orig));
    assert!(in_second);
    // The first bucket counts the key that spilled, so lookups look further.
    assert_eq!(t.spilled[place.first].load(Ordering::SeqCst), 1);
    // Removal finds it there too, and uncounts it.
    t.remove(id, 0).unwrap();
    assert_eq!(t.lookup(&c.orig), None);
    assert_eq!(t.spilled[place.first].load(Ordering::SeqCst), 0);
    assert!(t.buckets[place.second]
        .slots
        .iter()
        .all(|s| index::slot_index(s.load(Ordering::SeqCst)) != id.index
            || s.load(Ordering::SeqCst) == 0));

    // Both full: refused, and the entry goes back.
    for s in &t.buckets[place.second].slots {
        if s.load(Ordering::SeqCst) == 0 {
            s.store(junk, Ordering::SeqCst);
        }
    }
    let before = t.len();
    assert_eq!(t.insert(&c, 0), Err(InsertError::Full));
    assert_eq!(t.len(), before);
    // Another key still goes in.
    let other = (2..100)
        .map(tcp)
        .find(|o| {
            let p = Place::new(t.hash(&o.orig), t.n_buckets());
            let q = Place::new(t.hash(&o.reply), t.n_buckets());
            [p.first, p.second, q.first, q.second]
                .iter()
                .all(|b| *b != place.first && *b != place.second)
        })
        .unwrap();
    t.insert(&other, 0).unwrap();
}

#[test]
fn a_slot_of_a_reused_entry_never_answers_for_the_old_key() {
    let t = table(1);
    let a = tcp(1);
    let id_a = t.insert(&a, 0).unwrap();
    let place = Place::new(t.hash(&a.orig), t.n_buckets());
    let stale = place.slot_value(id_a.index, Dir::Orig);
    t.remove(id_a, 0).unwrap();
    let b = tcp(2);
    let id_b = t.insert(&b, 0).unwrap();
    assert_eq!(id_b.index, id_a.index);
    // Put the old slot back, as a reader that loaded it before the removal would see it.
    let spare = t.buckets[place.first]
        .slots
        .iter()
        .find(|s| s.load(Ordering::SeqCst) == 0)
        .unwrap();
    spare.store(stale, Ordering::SeqCst);
    assert_eq!(t.lookup(&a.orig), None);
    assert_eq!(t.lookup(&b.orig).unwrap().id, id_b);
    spare.store(0, Ordering::SeqCst);
}

#[test]
fn timeouts_per_state_and_reclaim() {
    let timeouts = Timeouts {
        tcp_syn_sent: 11,
        tcp_syn_recv: 12,
        tcp_established: 13,
        tcp_fin_wait: 14,
        tcp_close_wait: 15,
        tcp_last_ack: 16,
        tcp_time_wait: 17,
        tcp_close: 18,
        udp: 19,
        icmp: 20,
        mapping: 21,
    };
    let t = ConnTable::new(64, timeouts).unwrap();
    let mut want: Vec<(ConnId, ConnState)> = Vec::new();
    for v in 0..=10u8 {
        let state = ConnState::from_u8(v).unwrap();
        let proto = match state {
            ConnState::Udp | ConnState::Mapping => Proto::Udp,
            ConnState::Icmp => Proto::Icmp,
            _ => Proto::Tcp,
        };
        let c = conn(u32::from(v), proto, state);
        want.push((t.insert(&c, 1000).unwrap(), state));
    }
    let mut cursor = ReclaimCursor::new(0, 1);
    for age in 0..=25u32 {
        let mut removed = Vec::new();
        let n = t.reclaim(1000 + age, &mut cursor, 64, |id, rec| {
            removed.push((id, rec.state, rec.idle_secs));
        });
        assert_eq!(n as usize, removed.len());
        let expected: Vec<_> = want
            .iter()
            .filter(|(_, s)| timeouts.for_state(*s) == age)
            .map(|(id, s)| (*id, *s, age))
            .collect();
        assert_eq!(removed, expected, "age {age}");
    }
    assert!(t.is_empty());
}

#[test]
fn refresh_postpones_expiry() {
    let t = table(4);
    let c = conn(1, Proto::Udp, ConnState::Udp);
    let id = t.insert(&c, 0).unwrap();
    let hit = t.lookup(&c.orig).unwrap();
    let mut cursor = ReclaimCursor::new(0, 1);
    assert_eq!(t.refresh(&hit, 200, 0), None);
    assert_eq!(t.export(id, 250).unwrap().idle_secs, 50);
    assert_eq!(t.reclaim(499, &mut cursor, 4, |_, _| {}), 0);
    assert_eq!(t.reclaim(500, &mut cursor, 4, |_, _| {}), 1);
    assert_eq!(t.lookup(&c.orig), None);
    assert_eq!(t.lookup(&c.reply), None);
    // A clock going backwards counts as no idle time.
    let id = t.insert(&c, 900).unwrap();
    assert_eq!(t.export(id, 800).unwrap().idle_secs, 0);
    assert_eq!(t.reclaim(800, &mut cursor, 4, |_, _| {}), 0);
}

#[test]
fn refresh_advances_tcp_state() {
    let t = table(4);
    let c = tcp(1);
    t.insert(&c, 0).unwrap();
    let steps = [
        (Dir::Reply, SYN | ACK, Some(ConnState::TcpSynRecv)),
        (Dir::Orig, ACK, Some(ConnState::TcpEstablished)),
        (Dir::Orig, ACK, None),
        (Dir::Reply, FIN | ACK, Some(ConnState::TcpFinWait)),
        (Dir::Reply, FIN | ACK, None),
        (Dir::Orig, ACK, Some(ConnState::TcpCloseWait)),
        (Dir::Orig, FIN | ACK, Some(ConnState::TcpLastAck)),
        (Dir::Reply, ACK, Some(ConnState::TcpTimeWait)),
        (Dir::Orig, SYN, Some(ConnState::TcpSynSent)),
        (Dir::Reply, RST, Some(ConnState::TcpClose)),
    ];
    for (i, (dir, flags, want)) in steps.into_iter().enumerate() {
        let key = if dir == Dir::Orig { c.orig } else { c.reply };
        let hit = t.lookup(&key).unwrap();
        assert_eq!(hit.dir, dir);
        assert_eq!(t.refresh(&hit, i as u32, flags), want, "step {i}");
        if let Some(s) = want {
            assert_eq!(t.lookup(&key).unwrap().state, s);
        }
    }
    // Non-TCP connections keep their state whatever the flags.
    let u = conn(2, Proto::Udp, ConnState::Udp);
    t.insert(&u, 0).unwrap();
    let hit = t.lookup(&u.orig).unwrap();
    assert_eq!(t.refresh(&hit, 1, RST), None);
    assert_eq!(t.lookup(&u.orig).unwrap().state, ConnState::Udp);
}

#[test]
fn refs_block_expiry_and_connections_release_their_mapping() {
    let t = table(16);
    let mut m = conn(100, Proto::Udp, ConnState::Mapping);
    m.reply = m.orig.reversed();
    let mapping = t.insert(&m, 0).unwrap();
    assert!(t.acquire_ref(mapping));
    assert!(t.acquire_ref(mapping));
    let mut cursor = ReclaimCursor::new(0, 1);
    // Referenced: never expires, however old.
    assert_eq!(t.reclaim(1_000_000, &mut cursor, 16, |_, _| {}), 0);
    t.release_ref(mapping);
    assert_eq!(t.reclaim(1_000_000, &mut cursor, 16, |_, _| {}), 0);

    // The connection keeps the caller's remaining reference.
    let mut c = conn(1, Proto::Udp, ConnState::Udp);
    c.mapping = Some(mapping);
    let id = t.insert(&c, 10).unwrap();
    assert_eq!(t.lookup(&c.orig).unwrap().mapping, Some(mapping));
    assert_eq!(t.reclaim(100, &mut cursor, 16, |_, _| {}), 0);
    // The connection expires (udp 300); whoever sees it go releases its reference, and the
    // mapping (timeout 0) goes when the scan reaches it next, never before.
    let mut gone = Vec::new();
    let mut released = 0;
    for _ in 0..2 {
        t.reclaim(310, &mut cursor, 16, |id, rec| {
            gone.push((id, rec.state));
            if let Some(m) = rec.mapping {
                t.release_ref(m);
                released += 1;
            }
        });
    }
    assert_eq!(
        gone,
        vec![(id, ConnState::Udp), (mapping, ConnState::Mapping)]
    );
    assert_eq!(released, 1);
    assert!(!t.acquire_ref(mapping));
    t.release_ref(mapping);
    assert!(t.is_empty());
}

#[test]
fn remove_returns_the_record_once() {
    let t = table(4);
    let c = tcp(1);
    let id = t.insert(&c, 10).unwrap();
    let hit = t.lookup(&c.orig).unwrap();
    t.refresh(&hit, 12, SYN | ACK);
    let rec = t.remove(id, 20).unwrap();
    assert_eq!(
        rec,
        ConnRecord {
            orig: c.orig,
            reply: c.reply,
            state: ConnState::TcpSynSent,
            flags: c.flags,
            owner: c.owner,
            mapping: None,
            backend: c.backend,
            idle_secs: 8,
            fin_seen: 0,
        }
    );
    assert_eq!(t.remove(id, 20), None);
    assert_eq!(t.lookup(&c.orig), None);
    assert_eq!(t.lookup(&c.reply), None);
    assert!(t.is_empty());
    // The same connection can come back.
    t.insert(&c, 30).unwrap();
    assert!(t.lookup(&c.reply).is_some());
}

#[test]
fn remove_ignores_references_and_stale_releases_are_harmless() {
    let t = table(2);
    let m = tcp(1);
    let id = t.insert(&m, 0).unwrap();
    assert!(t.acquire_ref(id));
    assert!(t.remove(id, 0).is_some());
    t.release_ref(id);
    let again = t.insert(&tcp(2), 0).unwrap();
    t.release_ref(id);
    assert!(t.acquire_ref(again));
    t.release_ref(again);
    t.release_ref(again);
    t.release_ref(again);
    assert!(t.acquire_ref(again));
}

#[test]
fn stale_id_rejected_after_reuse() {
    let t = table(1);
    let a = tcp(1);
    let old = t.insert(&a, 0).unwrap();
    let old_hit = t.lookup(&a.orig).unwrap();
    t.remove(old, 0).unwrap();
    let b = tcp(2);
    let new = t.insert(&b, 50).unwrap();
    assert_eq!(new.index, old.index);
    assert_ne!(new.generation, old.generation);

    assert_eq!(t.export(old, 60), None);
    assert_eq!(t.remove(old, 60), None);
    assert!(!t.acquire_ref(old));
    t.release_ref(old);
    assert_eq!(t.refresh(&old_hit, 55, SYN | ACK | RST), None);
    let rec = t.export(new, 60).unwrap();
    assert_eq!(
        rec.idle_secs, 10,
        "a stale refresh must not touch the new connection"
    );
    assert_eq!(rec.state, ConnState::TcpSynSent);
    assert_eq!(rec.orig, b.orig);
    assert!(t.acquire_ref(new));
    let fake = ConnId {
        index: 7,
        generation: 1,
    };
    assert!(!t.acquire_ref(fake));
    assert_eq!(t.export(fake, 0), None);
    assert_eq!(t.remove(fake, 0), None);
}

#[test]
fn export_install_round_trip() {
    let active = table(64);
    let standby = table(64);
    let mut m = conn(50, Proto::Udp, ConnState::Mapping);
    m.reply = m.orig.reversed();
    let m_active = active.insert(&m, 0).unwrap();
    let m_standby = standby
        .install(&active.export(m_active, 0).unwrap(), 0)
        .unwrap();

    let mut records = Vec::new();
    let flows = [
        (1, ConnState::TcpSynSent, &[][..]),
        (
            2,
            ConnState::TcpSynSent,
            &[(Dir::Reply, SYN | ACK), (Dir::Orig, ACK)][..],
        ),
        (
            3,
            ConnState::TcpSynSent,
            &[(Dir::Reply, SYN | ACK), (Dir::Orig, ACK), (Dir::Orig, FIN)][..],
        ),
        (
            4,
            ConnState::TcpSynSent,
            &[
                (Dir::Reply, SYN | ACK),
                (Dir::Orig, ACK),
                (Dir::Orig, FIN),
                (Dir::Reply, FIN),
            ][..],
        ),
        (5, ConnState::Udp, &[][..]),
        (6, ConnState::Icmp, &[][..]),
    ];
    for (i, state, packets) in flows {
        let proto = match state {
            ConnState::Udp => Proto::Udp,
            ConnState::Icmp => Proto::Icmp,
            _ => Proto::Tcp,
        };
        let mut c = conn(i, proto, state);
        if proto == Proto::Udp {
            assert!(active.acquire_ref(m_active));
            c.mapping = Some(m_active);
        }
        let id = active.insert(&c, 100).unwrap();
        for (k, (dir, flags)) in packets.iter().enumerate() {
            let key = if *dir == Dir::Orig { c.orig } else { c.reply };
            let hit = active.lookup(&key).unwrap();
            active.refresh(&hit, 100 + k as u32, *flags);
        }
        records.push((id, active.export(id, 130).unwrap()));
    }
    for (_, rec) in &records {
        let mut local = *rec;
        if rec.mapping.is_some() {
            assert!(standby.acquire_ref(m_standby));
            local.mapping = Some(m_standby);
        }
        let id = standby.install(&local, 5000).unwrap();
        assert_eq!(standby.export(id, 5000), Some(local));
        assert_eq!(
            standby.export(id, 5007).unwrap().idle_secs,
            rec.idle_secs + 7
        );
        let hit = standby.lookup(&rec.reply).unwrap();
        assert_eq!((hit.id, hit.dir, hit.state), (id, Dir::Reply, rec.state));
    }
    // Installing what is there already is refused like any duplicate.
    assert!(matches!(
        standby.install(&records[0].1, 5000),
        Err(InsertError::Exists(_))
    ));
    // The installed LastAck connection has both FINs: the next ACK closes it.
    let last_ack = &records[3].1;
    assert_eq!(last_ack.state, ConnState::TcpLastAck);
    let hit = standby.lookup(&last_ack.orig).unwrap();
    assert_eq!(
        standby.refresh(&hit, 5001, ACK),
        Some(ConnState::TcpTimeWait)
    );
    // Idle time larger than the clock saturates.
    let mut old = records[4].1;
    old.idle_secs = u32::MAX;
    old.orig.sport = 1;
    old.reply.dport = 1;
    old.mapping = None;
    let id = standby.install(&old, 10).unwrap();
    assert_eq!(standby.export(id, 10).unwrap().idle_secs, 10);
}

#[test]
fn for_each_live_sees_exactly_the_live_connections() {
    let t = table(100);
    let ids: Vec<ConnId> = (0..50).map(|i| t.insert(&tcp(i), 7).unwrap()).collect();
    for id in ids.iter().step_by(2) {
        t.remove(*id, 7).unwrap();
    }
    let mut seen = Vec::new();
    t.for_each_live(9, |id, rec| {
        assert_eq!(rec.idle_secs, 2);
        assert_eq!(t.export(id, 9).as_ref(), Some(rec));
        seen.push(id);
    });
    seen.sort_by_key(|id| id.index);
    let mut want: Vec<ConnId> = ids.iter().skip(1).step_by(2).copied().collect();
    want.sort_by_key(|id| id.index);
    assert_eq!(seen, want);
    assert_eq!(t.len(), 25);
}

#[test]
fn reclaim_cursors_split_the_table_and_respect_the_budget() {
    let t = table(100);
    for i in 0..100 {
        t.insert(&conn(i, Proto::Icmp, ConnState::Icmp), 0).unwrap();
    }
    let mut parts: Vec<ReclaimCursor> = (0..3).map(|p| ReclaimCursor::new(p, 3)).collect();
    let mut seen = HashSet::new();
    let mut total = 0;
    // 7 entries per call: the shares (33, 33, 34) need 5 calls each.
    for _ in 0..4 {
        for c in parts.iter_mut() {
            let n = t.reclaim(60, c, 7, |id, _| assert!(seen.insert(id)));
            assert_eq!(n, 7);
            total += n;
        }
    }
    for c in parts.iter_mut() {
        total += t.reclaim(60, c, 7, |id, _| assert!(seen.insert(id)));
    }
    assert_eq!(total, 100);
    assert!(t.is_empty());
    // Degenerate cursors are usable.
    let mut c = ReclaimCursor::new(5, 0);
    assert_eq!(t.reclaim(60, &mut c, u32::MAX, |_, _| {}), 0);
}

#[test]
fn capacity_errors_and_memory() {
    assert_eq!(
        ConnTable::new(0, Timeouts::default()).unwrap_err(),
        TableError::ZeroCapacity
    );
    let err = ConnTable::new(ConnTable::MAX_CAPACITY + 1, Timeouts::default()).unwrap_err();
    assert_eq!(
        err,
        TableError::TooLarge {
            capacity: u64::from(ConnTable::MAX_CAPACITY) + 1,
            max: u64::from(ConnTable::MAX_CAPACITY),
        }
    );
    assert!(err.to_string().contains("at most 2147483648"));
    assert!(TableError::ZeroCapacity.to_string().contains("at least 1"));

    let t = table(1 << 16);
    let per_conn = t.memory_bytes() as f64 / f64::from(t.capacity());
    assert!(per_conn <= 128.0, "{per_conn} bytes per connection");
    assert!(per_conn <= ConnTable::BYTES_PER_CONN as f64 + 0.1);
    assert!(per_conn >= (ConnTable::BYTES_PER_CONN - 2) as f64);
    assert_eq!(t.timeouts(), Timeouts::default());
    assert_eq!(t.capacity(), 1 << 16);
    assert!(format!("{t:?}").contains("capacity: 65536"));

    let one = table(1);
    let c = tcp(1);
    one.insert(&c, 0).unwrap();
    assert!(one.lookup(&c.reply).is_some());
    assert_eq!(one.insert(&tcp(2), 0), Err(InsertError::Full));
}

#[test]
fn insert_errors_display() {
    let t = table(2);
    let c = tcp(1);
    t.insert(&c, 0).unwrap();
    let err = t.insert(&c, 0).unwrap_err();
    assert!(err.to_string().contains("Orig"), "{err}");
    assert_eq!(InsertError::Full.to_string(), "connection table full");
    assert!(InsertError::Clash.to_string().contains("reply tuple"));
}

/// Plants another insert of `key` in flight, as a concurrent thread would leave it between
/// claiming its slot and committing: an allocated entry with the key, INSERTING, and its
/// pending slot at global position `pos`. The slot value and the entry's id.
fn plant_rival(t: &ConnTable, key: &FlowKey, pos: usize, flags: u64) -> (u64, ConnId) {
    let (idx, _) = t.free.pop(&t.entries, 0).unwrap();
    let e = &t.entries[idx as usize];
    let generation = Life(e.life.load(Ordering::Relaxed)).generation() | 1;
    let other = tcp(999);
    for (a, w) in e.orig.iter().zip(key.pack()) {
        a.store(w, Ordering::Relaxed);
    }
    for (a, w) in e.reply.iter().zip(other.reply.pack()) {
        a.store(w, Ordering::Relaxed);
    }
    e.backend.store(999, Ordering::Relaxed);
    let life = Life::allocated(generation, ConnState::TcpSynSent, 0).0;
    e.life.store(life | flags, Ordering::Release);
    let place = Place::new(t.hash(key), t.n_buckets());
    let value = place.slot_value(idx, Dir::Orig) | PENDING;
    index::slot_at(&t.buckets, pos)
        .unwrap()
        .store(value, Ordering::SeqCst);
    (
        value,
        ConnId {
            index: idx,
            generation,
        },
    )
}

#[test]
fn pending_rival_at_a_higher_slot_is_cancelled() {
    let t = table(64);
    let c = tcp(1);
    let place = Place::new(t.hash(&c.orig), t.n_buckets());
    let pos = place.first * SLOTS + SLOTS - 1;
    let (value, _) = plant_rival(&t, &c.orig, pos, 0);
    let id = t.insert(&c, 0).unwrap();
    let slot = index::slot_at(&t.buckets, pos).unwrap();
    assert_eq!(slot.load(Ordering::SeqCst), value | KILLED);
    assert_eq!(t.lookup(&c.orig).unwrap().id, id);
}

#[test]
fn pending_rival_at_a_lower_slot_wins() {
    let t = table(64);
    let c = tcp(1);
    let place = Place::new(t.hash(&c.orig), t.n_buckets());
    let pos = place.first * SLOTS;
    let (value, rival) = plant_rival(&t, &c.orig, pos, 0);
    // The rival never settles: after its bounded waits the insert reports it.
    match t.insert(&c, 0) {
        Err(InsertError::Exists(hit)) => {
            assert_eq!(
                (hit.id, hit.dir, hit.orig, hit.backend),
                (rival, Dir::Orig, c.orig, 999)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(t.len(), 1, "the losing insert gave its entry back");
    assert_eq!(t.lookup(&c.reply), None);
    let others = t.buckets[place.first]
        .slots
        .iter()
        .chain(&t.buckets[place.second].slots)
        .filter(|s| s.load(Ordering::SeqCst) != 0)
        .count();
    assert_eq!(others, 1, "the losing insert left a slot behind");
    // Invisible while pending; found once committed.
    assert_eq!(t.lookup(&c.orig), None);
    let slot = index::slot_at(&t.buckets, pos).unwrap();
    slot.store(value & !PENDING, Ordering::SeqCst);
    t.entries[rival.index as usize]
        .life
        .fetch_and(!INSERTING, Ordering::Release);
    assert_eq!(t.lookup(&c.orig).unwrap().id, rival);
    assert!(matches!(t.insert(&c, 0), Err(InsertError::Exists(h)) if h.id == rival));
}

#[test]
fn committed_slot_of_a_dying_entry_is_no_conflict() {
    let t = table(64);
    let c = tcp(1);
    let place = Place::new(t.hash(&c.orig), t.n_buckets());
    let pos = place.first * SLOTS;
    let (value, _) = plant_rival(&t, &c.orig, pos, DEAD);
    let slot = index::slot_at(&t.buckets, pos).unwrap();
    slot.store(value & !PENDING, Ordering::SeqCst);
    // Lookups skip it, and a new connection with the key may be inserted meanwhile.
    assert_eq!(t.lookup(&c.orig), None);
    let id = t.insert(&c, 0).unwrap();
    assert_eq!(t.lookup(&c.orig).unwrap().id, id);
}
