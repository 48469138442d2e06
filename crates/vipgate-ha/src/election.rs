//! The VRRPv3 state machine (RFC 5798 section 6.4) for one virtual router: which box is
//! master. Pure: adverts and the time (milliseconds on any monotonic clock) come in, the
//! adverts to send and the role changes come out.
//!
//! Two additions to the RFC, both only ever delaying a preemption, never a takeover from a
//! dead master:
//! - a preemption delay: a backup of higher priority waits this long after it first saw the
//!   lower-priority master before it takes over (keepalived's `preempt_delay`);
//! - a readiness gate: a backup whose state sync is not complete does not preempt a live
//!   master, because its table would not carry the master's connections (pfsync demotes
//!   CARP for the same reason).

use std::fmt;
use std::net::Ipv4Addr;

use crate::advert::{Advert, PRIORITY_OWNER, PRIORITY_STOP};

/// What an election is configured with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// Virtual router id, 1-255, the same on both boxes.
    pub vrid: u8,
    /// This box's priority, 1-255 (255: it owns the addresses and is master at once).
    pub priority: u8,
    /// Advert interval in centiseconds, 1-4095.
    pub interval_cs: u16,
    /// Whether a backup of higher priority takes over from a live master.
    pub preempt: bool,
    /// How long a higher-priority backup waits before it preempts, in milliseconds.
    pub preempt_delay_ms: u64,
    /// The only senders accepted; empty accepts any sender on the segment (multicast).
    pub peers: Vec<Ipv4Addr>,
    /// This box's address on the segment: the adverts' source and the tie breaker.
    pub own_addr: Ipv4Addr,
    /// The virtual addresses the adverts list.
    pub addrs: Vec<Ipv4Addr>,
}

/// A box's role in the virtual router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not started, or stopped.
    Initialize,
    /// Listening for the master's adverts, ready to take over.
    Backup,
    /// Forwarding for the virtual addresses and sending adverts.
    Master,
}

impl Role {
    /// The name operators see.
    pub fn name(self) -> &'static str {
        match self {
            Role::Initialize => "init",
            Role::Backup => "backup",
            Role::Master => "master",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the role changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Started with priority 255: the owner is master at once.
    OwnerStarted,
    /// Started below 255: wait for a master's advert.
    Started,
    /// No advert from a master for the master-down interval.
    MasterDown,
    /// The master sent priority 0: it is stopping.
    MasterStopped,
    /// A higher-priority backup took over from a lower-priority master.
    Preempted,
    /// Another master has a higher priority (or the same and a higher address).
    HigherPriorityMaster,
    /// This box is stopping.
    Shutdown,
}

impl Reason {
    /// The words the log uses.
    pub fn describe(self) -> &'static str {
        match self {
            Reason::OwnerStarted => "started as the address owner (priority 255)",
            Reason::Started => "started: waiting for the master's adverts",
            Reason::MasterDown => "no advert from the master within the master-down interval",
            Reason::MasterStopped => "the master is stopping (priority 0 advert)",
            Reason::Preempted => "preempting a master of lower priority",
            Reason::HigherPriorityMaster => "a master of higher priority (or equal priority and higher address) is on the segment",
            Reason::Shutdown => "stopping",
        }
    }
}

/// A role change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The role before.
    pub from: Role,
    /// The role after.
    pub to: Role,
    /// Why.
    pub reason: Reason,
    /// The other router involved: its address and priority, when an advert decided.
    pub peer: Option<(Ipv4Addr, u8)>,
}

/// What the caller must do after an event.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Output {
    /// Send an advert with this priority now.
    pub advert: Option<u8>,
    /// The role changed.
    pub transition: Option<Transition>,
    /// Another master was heard (a partition healed, or it is stopping): it may have
    /// claimed the addresses, so a master announces them again.
    pub reannounce: bool,
}

/// Why an advert was not considered. Each is one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ignored {
    /// For another virtual router on the same segment.
    OtherVrid,
    /// From a sender that is not a configured peer.
    UnknownPeer,
    /// From our own address: a loop, or a duplicate address.
    Own,
    /// Received while stopped.
    NotRunning,
}

impl Ignored {
    /// The counter name of this reason.
    pub fn name(self) -> &'static str {
        match self {
            Ignored::OtherVrid => "advert_other_vrid",
            Ignored::UnknownPeer => "advert_unknown_peer",
            Ignored::Own => "advert_own_address",
            Ignored::NotRunning => "advert_not_running",
        }
    }
}

/// What the master last told us, for `vipgate ha`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its address.
    pub addr: Ipv4Addr,
    /// Its advertised priority.
    pub priority: u8,
    /// Its advert interval in centiseconds.
    pub interval_cs: u16,
    /// When its last advert arrived.
    pub seen_ms: u64,
}

/// One virtual router's election.
#[derive(Clone, Debug)]
pub struct Election {
    cfg: ElectionConfig,
    role: Role,
    /// Subtracted from the configured priority while a tracked object is down.
    penalty: u8,
    /// Whether this box may preempt a live master (its state sync is complete).
    ready: bool,
    /// The master's advert interval as learned from its adverts, in milliseconds.
    master_interval_ms: u64,
    /// Backup: when the master is declared down.
    master_down_at: u64,
    /// Backup: why the timer above was last set short (a priority-0 advert).
    master_stopping: bool,
    /// Backup: since when a live master of lower priority has been seen.
    lower_master_since: Option<u64>,
    /// Master: when the next advert is due.
    advert_at: u64,
    /// The last accepted advert from another router.
    peer: Option<PeerInfo>,
}

impl Election {
    /// An election in [`Role::Initialize`]; [`Election::start`] joins the virtual router.
    pub fn new(cfg: ElectionConfig) -> Election {
        let master_interval_ms = u64::from(cfg.interval_cs) * 10;
        Election {
            cfg,
            role: Role::Initialize,
            penalty: 0,
            ready: true,
            master_interval_ms,
            master_down_at: 0,
            master_stopping: false,
            lower_master_since: None,
            advert_at: 0,
            peer: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ElectionConfig {
        &self.cfg
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The priority adverts carry now: the configured one less the tracking penalty, kept
    /// within 1-254 while a penalty applies (a demoted owner is no longer the owner).
    pub fn priority(&self) -> u8 {
        if self.penalty == 0 {
            self.cfg.priority
        } else {
            self.cfg.priority.saturating_sub(self.penalty).clamp(1, 254)
        }
    }

    /// The last master (or competing router) heard from.
    pub fn peer(&self) -> Option<PeerInfo> {
        self.peer
    }

    /// Whether this box may preempt a live master.
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// Says whether this box's state is complete enough to preempt a live master.
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = ready;
    }

    /// Sets the tracking penalty (the sum over tracked objects that are down). A master's
    /// next advert carries the new priority; a backup's counts from its next advert on.
    pub fn set_penalty(&mut self, penalty: u8) {
        self.penalty = penalty;
    }

    /// The RFC's Skew_Time at our priority, in milliseconds.
    pub fn skew_ms(&self) -> u64 {
        (256 - u64::from(self.priority())) * self.master_interval_ms / 256
    }

    /// The RFC's Master_Down_Interval, in milliseconds.
    pub fn master_down_interval_ms(&self) -> u64 {
        3 * self.master_interval_ms + self.skew_ms()
    }

    /// When [`Election::poll`] next has something to do; `None` while stopped.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.role {
            Role::Initialize => None,
            Role::Backup => Some(self.master_down_at),
            Role::Master => Some(self.advert_at),
        }
    }

    /// The advert this box sends, at `priority`.
    pub fn advert(&self, priority: u8) -> Advert {
        Advert {
            vrid: self.cfg.vrid,
            priority,
            interval_cs: self.cfg.interval_cs,
            addrs: self.cfg.addrs.clone(),
        }
    }

    /// Joins the virtual router (the RFC's Startup event).
    pub fn start(&mut self, now: u64) -> Output {
        if self.role != Role::Initialize {
            return Output::default();
        }
        if self.priority() == PRIORITY_OWNER {
            self.become_master(now, Reason::OwnerStarted, None)
        } else {
            self.become_backup(now, Reason::Started, None, self.cfg.interval_cs)
        }
    }

    /// Leaves the virtual router (the RFC's Shutdown event): a master sends a priority-0
    /// advert so that its backup takes over after its skew time, not three intervals.
    pub fn shutdown(&mut self) -> Output {
        let from = self.role;
        if from == Role::Initialize {
            return Output::default();
        }
        self.role = Role::Initialize;
        Output {
            advert: (from == Role::Master).then_some(PRIORITY_STOP),
            transition: Some(Transition {
                from,
                to: Role::Initialize,
                reason: Reason::Shutdown,
                peer: None,
            }),
            reannounce: false,
        }
    }

    /// Runs the timers due at `now`.
    pub fn poll(&mut self, now: u64) -> Output {
        match self.role {
            Role::Initialize => Output::default(),
            Role::Backup if now >= self.master_down_at => {
                let reason = if self.master_stopping {
                    Reason::MasterStopped
                } else if self.lower_master_since.is_some()
                    && self.peer.is_some_and(|p| {
                        now.saturating_sub(p.seen_ms) < self.master_down_interval_ms()
                    })
                {
                    Reason::Preempted
                } else {
                    Reason::MasterDown
                };
                self.become_master(now, reason, self.peer.map(|p| (p.addr, p.priority)))
            }
            Role::Master if now >= self.advert_at => {
                self.advert_at = self.advert_at.saturating_add(self.own_interval_ms());
                if self.advert_at <= now {
                    // Far behind (a stalled thread): no burst of catch-up adverts.
                    self.advert_at = now + self.own_interval_ms();
                }
                Output {
                    advert: Some(self.priority()),
                    transition: None,
                    reannounce: false,
                }
            }
            _ => Output::default(),
        }
    }

    /// Decides whether to consider an advert from `src` at all.
    ///
    /// # Errors
    /// [`Ignored`] naming why not.
    pub fn check(&self, src: Ipv4Addr, advert: &Advert) -> Result<(), Ignored> {
        if self.role == Role::Initialize {
            Err(Ignored::NotRunning)
        } else if advert.vrid != self.cfg.vrid {
            Err(Ignored::OtherVrid)
        } else if src == self.cfg.own_addr {
            Err(Ignored::Own)
        } else if !self.cfg.peers.is_empty() && !self.cfg.peers.contains(&src) {
            Err(Ignored::UnknownPeer)
        } else {
            Ok(())
        }
    }

    /// Handles an advert from `src` received at `now` (the RFC's section 6.4.2 and 6.4.3).
    ///
    /// # Errors
    /// [`Ignored`] if the advert is not for this election; nothing changed then.
    pub fn on_advert(
        &mut self,
        src: Ipv4Addr,
        advert: &Advert,
        now: u64,
    ) -> Result<Output, Ignored> {
        self.check(src, advert)?;
        self.peer = Some(PeerInfo {
            addr: src,
            priority: advert.priority,
            interval_cs: advert.interval_cs,
            seen_ms: now,
        });
        let ours = self.priority();
        let out = match self.role {
            Role::Initialize => Output::default(),
            Role::Backup => {
                if advert.priority == PRIORITY_STOP {
                    self.master_down_at = now + self.skew_ms();
                    self.master_stopping = true;
                } else if advert.priority >= ours || !self.may_preempt(now) {
                    if advert.priority < ours && self.cfg.preempt {
                        self.lower_master_since.get_or_insert(now);
                    } else {
                        self.lower_master_since = None;
                    }
                    self.master_interval_ms = master_interval(advert.interval_cs);
                    self.master_down_at = now + self.master_down_interval_ms();
                    self.master_stopping = false;
                } else {
                    // Discarded: the master-down timer runs out and this box preempts.
                    self.lower_master_since.get_or_insert(now);
                }
                Output::default()
            }
            Role::Master => {
                if advert.priority == PRIORITY_STOP {
                    // Another master is stopping: assert ourselves at once.
                    self.advert_at = now + self.own_interval_ms();
                    Output {
                        advert: Some(ours),
                        transition: None,
                        reannounce: true,
                    }
                } else if advert.priority > ours
                    || (advert.priority == ours && u32::from(src) > u32::from(self.cfg.own_addr))
                {
                    self.become_backup(
                        now,
                        Reason::HigherPriorityMaster,
                        Some((src, advert.priority)),
                        advert.interval_cs,
                    )
                } else {
                    // A lower master (after a partition heals): answer at once, so it
                    // yields within one round trip instead of one interval.
                    self.advert_at = now + self.own_interval_ms();
                    Output {
                        advert: Some(ours),
                        transition: None,
                        reannounce: true,
                    }
                }
            }
        };
        Ok(out)
    }

    /// Whether a backup may take over from a live master of lower priority now.
    fn may_preempt(&self, now: u64) -> bool {
        if !self.cfg.preempt || !self.ready {
            return false;
        }
        match self.lower_master_since {
            Some(since) => now.saturating_sub(since) >= self.cfg.preempt_delay_ms,
            None => self.cfg.preempt_delay_ms == 0,
        }
    }

    fn own_interval_ms(&self) -> u64 {
        master_interval(self.cfg.interval_cs)
    }

    fn become_master(&mut self, now: u64, reason: Reason, peer: Option<(Ipv4Addr, u8)>) -> Output {
        let from = self.role;
        self.role = Role::Master;
        self.advert_at = now + self.own_interval_ms();
        self.lower_master_since = None;
        self.master_stopping = false;
        Output {
            advert: Some(self.priority()),
            transition: Some(Transition {
                from,
                to: Role::Master,
                reason,
                peer,
            }),
            reannounce: false,
        }
    }

    fn become_backup(
        &mut self,
        now: u64,
        reason: Reason,
        peer: Option<(Ipv4Addr, u8)>,
        interval_cs: u16,
    ) -> Output {
        let from = self.role;
        self.role = Role::Backup;
        self.master_interval_ms = master_interval(interval_cs);
        self.master_down_at = now + self.master_down_interval_ms();
        self.master_stopping = false;
        self.lower_master_since = None;
        Output {
            advert: None,
            transition: Some(Transition {
                from,
                to: Role::Backup,
                reason,
                peer,
            }),
            reannounce: false,
        }
    }
}

/// An advert interval in milliseconds; 0 (invalid on the wire) is taken as the smallest.
fn master_interval(interval_cs: u16) -> u64 {
    u64::from(interval_cs.max(1)) * 10
}
