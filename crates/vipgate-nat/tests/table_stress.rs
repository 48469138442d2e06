//! The connection table under concurrent workers and a reclaimer: no connection lost,
//! duplicated or returned for a key it does not have, and one live connection per key when
//! threads race to insert the same key.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing,
    clippy::panic
)]

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;

use vipgate_nat::{
    ConnId, ConnState, ConnTable, Dir, FlowKey, Hit, InsertError, NewConn, Proto, ReclaimCursor,
    Timeouts,
};

const WORKERS: u32 = 4;

/// Key `k` of worker `w`: the original tuple, and the reply tuple after a PAT.
fn keys(w: u32, k: u32, proto: Proto) -> (FlowKey, FlowKey) {
    let orig = FlowKey {
        src: Ipv4Addr::from(0xc612_0000 | (w << 12) | (k >> 4)),
        dst: Ipv4Addr::new(203, 0, 113, 80),
        sport: 2000 + (k & 0xf) as u16,
        dport: 53,
        proto,
    };
    let reply = FlowKey {
        src: orig.dst,
        dst: Ipv4Addr::new(198, 51, 100, 1 + w as u8),
        sport: orig.dport,
        dport: 10_000 + k as u16,
        proto,
    };
    (orig, reply)
}

/// What the backend field of worker `w`'s key `k` holds, to check hits against.
fn tag(w: u32, k: u32) -> u32 {
    w << 20 | k
}

fn new_conn(w: u32, k: u32, proto: Proto, state: ConnState) -> NewConn {
    let (orig, reply) = keys(w, k, proto);
    NewConn {
        orig,
        reply,
        state,
        flags: k as u8,
        owner: w as u8,
        mapping: None,
        backend: tag(w, k),
    }
}

/// Checks that a hit answers for `key` and is internally the connection of worker `w`'s
/// key `k`.
fn check_hit(hit: &Hit, key: &FlowKey, w: u32, k: u32, proto: Proto) {
    let (orig, reply) = keys(w, k, proto);
    let looked_up = match hit.dir {
        Dir::Orig => hit.orig,
        Dir::Reply => hit.reply,
    };
    assert_eq!(&looked_up, key, "hit for a different key");
    assert_eq!(
        (hit.orig, hit.reply),
        (orig, reply),
        "hit fields of another connection"
    );
    assert_eq!(hit.backend, tag(w, k));
    assert_eq!(u32::from(hit.owner), w);
    assert_eq!(hit.flags, k as u8);
}

fn decode(backend: u32) -> (u32, u32) {
    (backend >> 20, backend & 0xf_ffff)
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
}

#[test]
fn workers_and_reclaimer_lose_nothing() {
    const CAPACITY: u32 = 2048;
    const PINNED: u32 = 48;
    const CHURN_KEYS: u32 = 600;
    const ITERATIONS: u32 = 40_000;
    let timeouts = Timeouts {
        udp: 3,
        ..Timeouts::default()
    };
    let table = ConnTable::new(CAPACITY, timeouts).unwrap();
    let clock = AtomicU32::new(1000);
    // The time of the reclaimer's last complete pass.
    let swept = AtomicU32::new(0);
    let done = AtomicU32::new(0);
    let reclaimer_stop = AtomicBool::new(false);

    struct WorkerResult {
        inserted: u64,
        removed: u64,
        full: u64,
        pinned: Vec<ConnId>,
    }

    let (results, reclaimed) = thread::scope(|s| {
        let reclaimer = s.spawn(|| {
            let mut cursors = [ReclaimCursor::new(0, 2), ReclaimCursor::new(1, 2)];
            let mut removed = 0u64;
            let mut seen = HashSet::new();
            for _ in 0..200_000 {
                if reclaimer_stop.load(Ordering::Acquire) {
                    break;
                }
                let now = clock.load(Ordering::Acquire);
                for c in cursors.iter_mut() {
                    table.reclaim(now, c, CAPACITY / 2, |id, rec| {
                        // Only churn connections (UDP, unreferenced) may expire.
                        assert_eq!(rec.state, ConnState::Udp);
                        assert!(rec.idle_secs >= 3);
                        let (w, k) = decode(rec.backend);
                        assert_eq!((rec.orig, rec.reply), keys(w, k, Proto::Udp));
                        assert!(seen.insert(id), "{id:?} removed twice");
                        removed += 1;
                    });
                }
                swept.store(now, Ordering::Release);
                thread::yield_now();
            }
            removed
        });

        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                let table = &table;
                let clock = &clock;
                let swept = &swept;
                let done = &done;
                s.spawn(move || {
                    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(w + 1) << 32);
                    let mut r = WorkerResult {
                        inserted: 0,
                        removed: 0,
                        full: 0,
                        pinned: Vec::new(),
                    };
                    // Referenced connections: never expire, must always be found.
                    for k in 0..PINNED {
                        let c = new_conn(w, k, Proto::Tcp, ConnState::TcpEstablished);
                        let id = table.insert(&c, clock.load(Ordering::Acquire)).unwrap();
                        assert!(table.acquire_ref(id));
                        r.pinned.push(id);
                        r.inserted += 1;
                    }
                    for i in 0..ITERATIONS {
                        // Worker 0 drives the clock: a key is drawn every 600 iterations on
                        // average, so it sometimes outlives the 3 s UDP timeout. Each second
                        // waits for a reclaimer pass, so that expiry happens at any speed.
                        if w == 0 && i % 300 == 0 {
                            let now = clock.load(Ordering::Acquire);
                            for _ in 0..10_000_000u32 {
                                if swept.load(Ordering::Acquire) >= now {
                                    break;
                                }
                                thread::yield_now();
                            }
                            clock.fetch_add(1, Ordering::AcqRel);
                        }
                        let now = clock.load(Ordering::Acquire);
                        let k = rng.next() % CHURN_KEYS;
                        let (orig, reply) = keys(w, k, Proto::Udp);
                        match table.lookup(&orig) {
                            Some(hit) => {
                                check_hit(&hit, &orig, w, k, Proto::Udp);
                                assert_eq!(hit.dir, Dir::Orig);
                                if let Some(back) = table.lookup(&reply) {
                                    check_hit(&back, &reply, w, k, Proto::Udp);
                                    assert_eq!(back.dir, Dir::Reply);
                                }
                                if rng.next() % 16 == 0 {
                                    if let Some(rec) = table.remove(hit.id, now) {
                                        assert_eq!((rec.orig, rec.reply), (orig, reply));
                                        r.removed += 1;
                                    }
                                } else {
                                    table.refresh(&hit, now, 0);
                                }
                            }
                            None => {
                                let c = new_conn(w, k, Proto::Udp, ConnState::Udp);
                                match table.insert(&c, now) {
                                    Ok(id) => {
                                        r.inserted += 1;
                                        let hit = table.lookup(&reply);
                                        // Only this worker removes it before the reclaimer
                                        // may (3 s idle), and time may have moved on.
                                        if let Some(hit) = hit {
                                            assert_eq!(hit.id, id);
                                        }
                                    }
                                    Err(InsertError::Full) => r.full += 1,
                                    Err(e) => panic!("worker {w} key {k}: {e:?} after a miss"),
                                }
                            }
                        }
                        // Another worker's key: absent, or exactly that connection.
                        let ow = rng.next() % WORKERS;
                        let ok = rng.next() % CHURN_KEYS;
                        let (oorig, oreply) = keys(ow, ok, Proto::Udp);
                        let probe = if i % 2 == 0 { oorig } else { oreply };
                        if let Some(hit) = table.lookup(&probe) {
                            check_hit(&hit, &probe, ow, ok, Proto::Udp);
                        }
                        if i % 512 == 0 {
                            for (k, id) in r.pinned.iter().enumerate() {
                                let (po, pr) = keys(w, k as u32, Proto::Tcp);
                                let a = table.lookup(&po).expect("pinned connection lost");
                                let b = table.lookup(&pr).expect("pinned connection lost");
                                assert_eq!(
                                    (a.id, a.dir, b.id, b.dir),
                                    (*id, Dir::Orig, *id, Dir::Reply)
                                );
                                check_hit(&a, &po, w, k as u32, Proto::Tcp);
                            }
                        }
                    }
                    done.fetch_add(1, Ordering::AcqRel);
                    r
                })
            })
            .collect();
        let results: Vec<WorkerResult> = workers.into_iter().map(|h| h.join().unwrap()).collect();
        reclaimer_stop.store(true, Ordering::Release);
        (results, reclaimer.join().unwrap())
    });
    assert_eq!(done.load(Ordering::Acquire), WORKERS);

    let inserted: u64 = results.iter().map(|r| r.inserted).sum();
    let removed: u64 = results.iter().map(|r| r.removed).sum::<u64>() + reclaimed;
    assert!(reclaimed > 0, "the reclaimer expired nothing");
    assert!(results
        .iter()
        .all(|r| r.inserted > u64::from(PINNED) && r.removed > 0));

    // Exactly the connections inserted and not removed are live, each once, each found from
    // both keys.
    let now = clock.load(Ordering::Acquire);
    let mut live: Vec<(ConnId, vipgate_nat::ConnRecord)> = Vec::new();
    table.for_each_live(now, |id, rec| live.push((id, *rec)));
    assert_eq!(live.len() as u64, inserted - removed);
    assert_eq!(u64::from(table.len()), inserted - removed);
    let mut origs = HashSet::new();
    let mut replies = HashSet::new();
    for (id, rec) in &live {
        assert!(origs.insert(rec.orig), "duplicate {:?}", rec.orig);
        assert!(replies.insert(rec.reply), "duplicate {:?}", rec.reply);
        let (w, k) = decode(rec.backend);
        assert_eq!((rec.orig, rec.reply), keys(w, k, rec.orig.proto));
        assert_eq!(
            table.lookup(&rec.orig).map(|h| (h.id, h.dir)),
            Some((*id, Dir::Orig))
        );
        assert_eq!(
            table.lookup(&rec.reply).map(|h| (h.id, h.dir)),
            Some((*id, Dir::Reply))
        );
    }
    assert!(origs.is_disjoint(&replies));

    // Much later only the referenced connections are left; released, they go too.
    let mut cursor = ReclaimCursor::new(0, 1);
    table.reclaim(now + 1_000_000, &mut cursor, CAPACITY, |_, rec| {
        assert_eq!(rec.state, ConnState::Udp)
    });
    assert_eq!(table.len(), WORKERS * PINNED);
    for id in results.iter().flat_map(|r| &r.pinned) {
        table.release_ref(*id);
    }
    let n = table.reclaim(now + 1_000_000, &mut cursor, CAPACITY, |_, rec| {
        assert_eq!(rec.state, ConnState::TcpEstablished)
    });
    assert_eq!(n, WORKERS * PINNED);
    assert!(table.is_empty());
}

/// Lets `n` threads start each round together: closer than a `Barrier`, whose futex wake-ups
/// are spread over far longer than an insert takes.
struct Rendezvous {
    arrived: AtomicU32,
    n: u32,
}

impl Rendezvous {
    fn new(n: u32) -> Self {
        Rendezvous {
            arrived: AtomicU32::new(0),
            n,
        }
    }

    /// Waits for all threads to reach round `round` (bounded: a descheduled thread only makes
    /// the round less contended).
    fn wait(&self, round: u32) {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        let target = self.n * (round + 1);
        for i in 0..1_000_000u32 {
            if self.arrived.load(Ordering::Acquire) >= target {
                return;
            }
            if i % 64 == 63 {
                thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

#[test]
fn same_key_race_leaves_exactly_one() {
    const KEYS: u32 = 2000;
    let table = ConnTable::new(4096, Timeouts::default()).unwrap();
    let barrier = Rendezvous::new(WORKERS);
    // Every worker inserts the same original tuples (with its own reply tuple).
    let conn = |w: u32, k: u32| {
        let mut c = new_conn(0, k, Proto::Tcp, ConnState::TcpSynSent);
        c.reply.dst = Ipv4Addr::new(198, 51, 100, 1 + w as u8);
        c.owner = w as u8;
        c.backend = w;
        c
    };
    let outcomes: Vec<Vec<Result<ConnId, InsertError>>> = thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let table = &table;
                let barrier = &barrier;
                s.spawn(move || {
                    (0..KEYS)
                        .map(|k| {
                            barrier.wait(k);
                            table.insert(&conn(w, k), 1)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    for k in 0..KEYS {
        let orig = conn(0, k).orig;
        let winners: Vec<(u32, ConnId)> = (0..WORKERS)
            .filter_map(|w| outcomes[w as usize][k as usize].ok().map(|id| (w, id)))
            .collect();
        assert_eq!(winners.len(), 1, "key {k}: {:?}", winners);
        let (winner, id) = winners[0];
        for w in 0..WORKERS {
            match outcomes[w as usize][k as usize] {
                Ok(_) => assert_eq!(w, winner),
                Err(InsertError::Exists(hit)) => {
                    assert_eq!((hit.dir, hit.orig), (Dir::Orig, orig));
                    assert_ne!(u32::from(hit.owner), w);
                    // The loser's own reply tuple was never left behind.
                    assert_eq!(table.lookup(&conn(w, k).reply), None);
                }
                Err(e) => panic!("key {k} worker {w}: {e:?}"),
            }
        }
        let hit = table.lookup(&orig).unwrap();
        assert_eq!(
            (hit.id, u32::from(hit.owner), hit.backend),
            (id, winner, winner)
        );
        assert_eq!(table.lookup(&conn(winner, k).reply).map(|h| h.id), Some(id));
    }
    let mut live = 0;
    table.for_each_live(1, |_, _| live += 1);
    assert_eq!(live, KEYS);
    assert_eq!(table.len(), KEYS);
}

#[test]
fn original_and_reply_tuple_race_leaves_exactly_one() {
    const ROUNDS: u32 = 1000;
    let table = ConnTable::new(4096, Timeouts::default()).unwrap();
    let barrier = Rendezvous::new(WORKERS);
    // Round k's contested tuple: workers 0 and 1 want it as their original tuple, workers 2
    // and 3 as their reply tuple.
    let contested = |k: u32| keys(9, k, Proto::Udp).0;
    let conn = |w: u32, k: u32| {
        let mut c = new_conn(w, k, Proto::Udp, ConnState::Udp);
        if w < 2 {
            c.orig = contested(k);
        } else {
            c.reply = contested(k);
        }
        c
    };
    let outcomes: Vec<Vec<Result<ConnId, InsertError>>> = thread::scope(|s| {
        let handles: Vec<_> = (0..WORKERS)
            .map(|w| {
                let table = &table;
                let barrier = &barrier;
                s.spawn(move || {
                    (0..ROUNDS)
                        .map(|k| {
                            barrier.wait(k);
                            table.insert(&conn(w, k), 1)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });

    let mut wins = HashMap::new();
    for k in 0..ROUNDS {
        let key = contested(k);
        let winners: Vec<(u32, ConnId)> = (0..WORKERS)
            .filter_map(|w| outcomes[w as usize][k as usize].ok().map(|id| (w, id)))
            .collect();
        assert_eq!(winners.len(), 1, "round {k}: {winners:?}");
        let (winner, id) = winners[0];
        *wins.entry(winner).or_insert(0) += 1;
        for w in 0..WORKERS {
            match (w < 2, outcomes[w as usize][k as usize]) {
                (_, Ok(_)) => assert_eq!(w, winner),
                (true, Err(InsertError::Exists(hit))) => {
                    let as_seen = if hit.dir == Dir::Orig {
                        hit.orig
                    } else {
                        hit.reply
                    };
                    assert_eq!(as_seen, key);
                }
                (false, Err(InsertError::Clash)) => {
                    assert_eq!(table.lookup(&conn(w, k).orig), None);
                }
                (_, other) => panic!("round {k} worker {w}: {other:?}"),
            }
        }
        let hit = table.lookup(&key).unwrap();
        assert_eq!(hit.id, id);
        assert_eq!(hit.dir, if winner < 2 { Dir::Orig } else { Dir::Reply });
    }
    let mut seen = 0;
    table.for_each_live(1, |_, rec| {
        let n = (0..ROUNDS)
            .filter(|k| rec.orig == contested(*k) || rec.reply == contested(*k))
            .count();
        assert_eq!(n, 1);
        seen += 1;
    });
    assert_eq!(seen, ROUNDS);
}
