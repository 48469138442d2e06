//! The election between simulated boxes on one segment, time stepped by hand.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)]

use std::net::Ipv4Addr;

use vipgate_ha::advert::Advert;
use vipgate_ha::election::{Election, ElectionConfig, Ignored, Reason, Role};

const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

fn addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, i)
}

fn config(i: u8, priority: u8, preempt: bool) -> ElectionConfig {
    ElectionConfig {
        vrid: 51,
        priority,
        interval_cs: 1,
        preempt,
        preempt_delay_ms: 0,
        peers: Vec::new(),
        own_addr: addr(i),
        addrs: vec![VIP],
    }
}

/// Boxes on one segment; `up[i]` false means box `i` is cut off (it neither sends nor hears).
struct Segment {
    boxes: Vec<Election>,
    up: Vec<bool>,
    now: u64,
    /// Every transition seen: (time, box, reason, new role).
    log: Vec<(u64, usize, Reason, Role)>,
    adverts_sent: Vec<Vec<u64>>,
}

impl Segment {
    fn new(configs: Vec<ElectionConfig>) -> Segment {
        let n = configs.len();
        Segment {
            boxes: configs.into_iter().map(Election::new).collect(),
            up: vec![true; n],
            now: 0,
            log: Vec::new(),
            adverts_sent: vec![Vec::new(); n],
        }
    }

    fn start(&mut self, i: usize) {
        let out = self.boxes[i].start(self.now);
        self.apply(i, out);
    }

    fn apply(&mut self, i: usize, out: vipgate_ha::election::Output) {
        if let Some(t) = out.transition {
            self.log.push((self.now, i, t.reason, t.to));
        }
        if let Some(priority) = out.advert {
            self.adverts_sent[i].push(self.now);
            if !self.up[i] {
                return;
            }
            let a = self.boxes[i].advert(priority);
            let src = self.boxes[i].config().own_addr;
            for j in 0..self.boxes.len() {
                if j != i && self.up[j] {
                    if let Ok(out) = self.boxes[j].on_advert(src, &a, self.now) {
                        self.apply(j, out);
                    }
                }
            }
        }
    }

    fn run_until(&mut self, end: u64) {
        while self.now < end {
            self.now += 1;
            for i in 0..self.boxes.len() {
                let out = self.boxes[i].poll(self.now);
                self.apply(i, out);
            }
        }
    }

    fn roles(&self) -> Vec<Role> {
        self.boxes.iter().map(Election::role).collect()
    }
}

#[test]
fn two_boxes_agree_on_the_higher_priority_whichever_starts_first() {
    for first in [0, 1] {
        let mut s = Segment::new(vec![config(1, 200, true), config(2, 100, true)]);
        s.start(first);
        s.run_until(5);
        s.start(1 - first);
        s.run_until(1000);
        assert_eq!(s.roles(), [Role::Master, Role::Backup], "box {first} first");
    }
}

#[test]
fn two_masters_of_equal_priority_leave_the_higher_address() {
    let mut s = Segment::new(vec![config(1, 100, true), config(2, 100, true)]);
    s.up = vec![false, false];
    s.start(0);
    s.start(1);
    s.run_until(100);
    assert_eq!(s.roles(), [Role::Master, Role::Master]);
    s.up = vec![true, true];
    s.run_until(1000);
    assert_eq!(s.roles(), [Role::Backup, Role::Master]);
}

#[test]
fn the_owner_is_master_at_once() {
    let mut s = Segment::new(vec![config(1, 255, true)]);
    s.start(0);
    assert_eq!(s.roles(), [Role::Master]);
    assert_eq!(s.log[0].2, Reason::OwnerStarted);
}

#[test]
fn a_backup_takes_over_after_the_master_down_interval_of_the_rfc() {
    let mut s = Segment::new(vec![config(1, 200, true), config(2, 100, true)]);
    s.start(0);
    s.start(1);
    s.run_until(100);
    let last = *s.adverts_sent[0].last().unwrap();
    s.up[0] = false;
    s.run_until(200);
    // Master_Down_Interval = 3 * 10 ms + (256 - 100) * 10 / 256 ms = 36 ms.
    assert_eq!(s.boxes[1].master_down_interval_ms(), 36);
    let (t, who, reason, role) = *s.log.last().unwrap();
    assert_eq!((who, reason, role), (1, Reason::MasterDown, Role::Master));
    assert_eq!(t, last + 36);
}

#[test]
fn a_stopping_master_hands_over_within_the_skew_time() {
    let mut s = Segment::new(vec![config(1, 200, true), config(2, 100, true)]);
    s.start(0);
    s.start(1);
    s.run_until(100);
    let out = s.boxes[0].shutdown();
    assert_eq!(out.advert, Some(0));
    s.apply(0, out);
    s.run_until(200);
    let (t, who, reason, role) = *s.log.last().unwrap();
    assert_eq!(
        (who, reason, role),
        (1, Reason::MasterStopped, Role::Master)
    );
    assert!(t <= 100 + s.boxes[1].skew_ms(), "took over at {t}");
}

#[test]
fn preemption_off_leaves_a_live_master_alone() {
    let mut s = Segment::new(vec![config(1, 100, false), config(2, 200, false)]);
    s.start(0);
    s.run_until(100);
    s.start(1);
    s.run_until(2000);
    assert_eq!(s.roles(), [Role::Master, Role::Backup]);
}

#[test]
fn preemption_waits_for_its_delay() {
    let mut high = config(2, 200, true);
    high.preempt_delay_ms = 500;
    let mut s = Segment::new(vec![config(1, 100, true), high]);
    s.start(0);
    s.run_until(100);
    s.start(1);
    s.run_until(550);
    assert_eq!(s.roles(), [Role::Master, Role::Backup], "before the delay");
    s.run_until(1000);
    assert_eq!(s.roles(), [Role::Backup, Role::Master], "after the delay");
    let took = s
        .log
        .iter()
        .find(|e| e.1 == 1 && e.3 == Role::Master)
        .unwrap();
    assert_eq!(took.2, Reason::Preempted);
    assert!(took.0 >= 600, "preempted at {}", took.0);
}

#[test]
fn a_box_not_ready_never_preempts_but_takes_over_from_a_dead_master() {
    let mut s = Segment::new(vec![config(1, 100, true), config(2, 200, true)]);
    s.boxes[1].set_ready(false);
    s.start(0);
    s.run_until(100);
    s.start(1);
    s.run_until(2000);
    assert_eq!(
        s.roles(),
        [Role::Master, Role::Backup],
        "not ready: no preemption"
    );
    s.boxes[1].set_ready(true);
    s.run_until(2100);
    assert_eq!(s.roles(), [Role::Backup, Role::Master], "ready: preempts");

    let mut s = Segment::new(vec![config(1, 100, true), config(2, 200, true)]);
    s.boxes[1].set_ready(false);
    s.start(0);
    s.start(1);
    s.run_until(100);
    s.up[0] = false;
    s.run_until(200);
    assert_eq!(
        s.boxes[1].role(),
        Role::Master,
        "the master died: takes over"
    );
    assert_eq!(s.log.last().unwrap().2, Reason::MasterDown);
}

#[test]
fn a_healed_partition_leaves_one_master() {
    let mut s = Segment::new(vec![config(1, 200, true), config(2, 100, true)]);
    s.start(0);
    s.start(1);
    s.run_until(100);
    s.up = vec![false, false];
    s.run_until(300);
    assert_eq!(s.roles(), [Role::Master, Role::Master], "split brain");
    s.up = vec![true, true];
    s.run_until(320);
    assert_eq!(s.roles(), [Role::Master, Role::Backup]);
    // The winner heard the other master: it must announce the addresses again.
    let a = Advert {
        vrid: 51,
        priority: 100,
        interval_cs: 1,
        addrs: vec![VIP],
    };
    let out = s.boxes[0].on_advert(addr(2), &a, 321).unwrap();
    assert!(out.reannounce && out.advert == Some(200));
    let (_, who, reason, _) = *s.log.last().unwrap();
    assert_eq!((who, reason), (1, Reason::HigherPriorityMaster));
}

#[test]
fn a_tracking_penalty_hands_over_to_a_preempting_backup() {
    let mut s = Segment::new(vec![config(1, 200, true), config(2, 150, true)]);
    s.start(0);
    s.start(1);
    s.run_until(100);
    s.boxes[0].set_penalty(100);
    assert_eq!(s.boxes[0].priority(), 100);
    s.run_until(300);
    assert_eq!(s.roles(), [Role::Backup, Role::Master]);
    s.boxes[0].set_penalty(0);
    s.run_until(500);
    assert_eq!(
        s.roles(),
        [Role::Master, Role::Backup],
        "recovered, preempts back"
    );
}

#[test]
fn adverts_for_others_change_nothing() {
    let mut peers = config(1, 100, true);
    peers.peers = vec![addr(2)];
    let mut e = Election::new(peers);
    let advert = |vrid, priority| Advert {
        vrid,
        priority,
        interval_cs: 1,
        addrs: vec![VIP],
    };
    assert_eq!(
        e.on_advert(addr(2), &advert(51, 200), 0),
        Err(Ignored::NotRunning)
    );
    e.start(0);
    let deadline = e.next_deadline();
    assert_eq!(
        e.on_advert(addr(2), &advert(52, 200), 1),
        Err(Ignored::OtherVrid)
    );
    assert_eq!(
        e.on_advert(addr(9), &advert(51, 200), 1),
        Err(Ignored::UnknownPeer)
    );
    assert_eq!(e.on_advert(addr(1), &advert(51, 200), 1), Err(Ignored::Own));
    assert_eq!(e.next_deadline(), deadline);
    assert_eq!(e.peer(), None);
    assert!(e.on_advert(addr(2), &advert(51, 200), 1).is_ok());
    assert_ne!(e.next_deadline(), deadline);
}

#[test]
fn a_master_advertises_on_its_interval_without_catch_up_bursts() {
    let mut cfg = config(1, 255, true);
    cfg.interval_cs = 10;
    let mut s = Segment::new(vec![cfg]);
    s.start(0);
    s.run_until(1000);
    let sent = &s.adverts_sent[0];
    assert_eq!(sent.len(), 11);
    assert!(sent.windows(2).all(|w| w[1] - w[0] == 100));
    // A thread stalled for a second sends one advert, not ten.
    let out = s.boxes[0].poll(2000);
    assert_eq!(out.advert, Some(255));
    assert_eq!(s.boxes[0].poll(2001).advert, None);
    assert_eq!(s.boxes[0].next_deadline(), Some(2100));
}
