//! The state-sync thread (`[ha.sync]`): a kernel UDP socket on the sync link, the sync
//! channel to the peer box, and the engine on both ends of it.
//!
//! While this box is active it drains the workers' event queues and streams every created,
//! changed and removed connection and PAT mapping to the peer; it answers a peer's request
//! for a bulk copy with a walk of the whole table (mappings first), and walks the table
//! again every `refresh_secs`, so the standby's expiry clock follows traffic it never saw
//! and anything lost to a full queue is repaired. While standby it installs what arrives,
//! so a takeover needs no rebuild, and tells the election whether it may preempt: only once
//! a bulk copy from a live master is complete.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;
use serde_json::{json, Value};
use vipgate_config::Sync;
use vipgate_dataplane::Dataplane;
use vipgate_ha::sync::{Role, SyncChannel, SyncConfig, SyncEvent, SyncKey, MAX_DATAGRAM};
use vipgate_nat::engine::{ConnEvent, Exported};
use vipgate_nat::{ConnState, InsertError};

/// The longest the thread sleeps between two rounds.
const TICK: Duration = Duration::from_millis(1);
/// Bytes of the sync socket's kernel buffers each way: a full send window (4096 messages of
/// 1400 bytes is 5.7 MB) fits.
const SOCKET_BUFFER: libc::c_int = 8 << 20;
/// Records a bulk walk offers per round at most, so one round stays short.
const BULK_PER_ROUND: usize = 4096;
/// How long after losing the active role this box still streams what its workers report:
/// those changes happened while it was active.
const ACTIVE_GRACE_MS: u64 = 200;
/// Records that arrived before the mapping they need, kept to try again.
const PENDING_MAX: usize = 4096;
/// Rounds a pending record is tried before it is given up (and counted).
const PENDING_TRIES: u32 = 200;
/// How long a graceful stop waits for the peer to acknowledge everything.
const STOP_FLUSH: Duration = Duration::from_secs(1);

/// Counters of this thread besides the channel's, in publication order.
const OWN_COUNTERS: [&str; 9] = [
    "sync_installed",
    "sync_install_failed",
    "sync_removed",
    "sync_ignored_active",
    "sync_socket_errors",
    "sync_rx_wrong_source",
    "sync_bulks_sent",
    "sync_bulks_received",
    "sync_pending_given_up",
];

/// What the sync thread shares with the election, the control thread and the metrics.
pub(crate) struct SyncShared {
    /// Whether this box may preempt a live master (see the module documentation).
    pub(crate) ready: AtomicBool,
    /// Whether the peer is heard on the sync link and says it is master.
    pub(crate) peer_master: AtomicBool,
    counters: Mutex<Vec<(&'static str, u64)>>,
    view: Mutex<Value>,
    stop: AtomicBool,
    /// Unacknowledged messages to the peer now, for the metrics.
    lag_messages: AtomicU64,
    peer_alive: AtomicBool,
}

impl SyncShared {
    pub(crate) fn new() -> SyncShared {
        SyncShared {
            ready: AtomicBool::new(false),
            peer_master: AtomicBool::new(false),
            counters: Mutex::new(Vec::new()),
            view: Mutex::new(json!({})),
            stop: AtomicBool::new(false),
            lag_messages: AtomicU64::new(0),
            peer_alive: AtomicBool::new(false),
        }
    }

    /// Every counter, by name (`sync_...`).
    pub(crate) fn counters(&self) -> Vec<(&'static str, u64)> {
        self.counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The `sync` part of `vipgate ha`.
    pub(crate) fn view(&self) -> Value {
        self.view.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Unacknowledged messages to the peer.
    pub(crate) fn lag_messages(&self) -> u64 {
        self.lag_messages.load(Ordering::Relaxed)
    }

    /// Whether the peer was heard within the dead interval.
    pub(crate) fn peer_alive(&self) -> bool {
        self.peer_alive.load(Ordering::Relaxed)
    }

    /// Asks the thread to flush what it holds and return.
    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// Opens the sync socket: bound to `local`, on the sync interface only.
///
/// # Errors
/// One line naming `ha.sync`.
pub(crate) fn bind(cfg: &Sync) -> Result<(UdpSocket, SyncKey), String> {
    let secret = cfg.key.read()?;
    let key = SyncKey::new(&secret).map_err(|_| {
        format!(
            "ha.sync.key: shorter than {} bytes",
            vipgate_config::SyncKeySource::MIN_LEN
        )
    })?;
    let socket = UdpSocket::bind(cfg.local)
        .map_err(|e| format!("ha.sync.local: cannot bind {}: {e}", cfg.local))?;
    let name = cfg.interface.as_bytes();
    // SAFETY: the pointer and length describe `name`, which outlives the call; the kernel
    // copies it.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            libc::socklen_t::try_from(name.len()).unwrap_or(0),
        )
    };
    if rc != 0 {
        return Err(format!(
            "ha.sync.interface: cannot bind the sync socket to {:?}: {}",
            cfg.interface,
            std::io::Error::last_os_error()
        ));
    }
    // A bulk copy sends hundreds of datagrams a millisecond; the kernel's default buffers
    // (about 200 KiB) overflow and every loss costs a go-back-N retransmission. As root,
    // FORCE passes the rmem_max/wmem_max limits; otherwise the plain option does what the
    // limits allow.
    for (force, plain) in [
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    ] {
        let size: libc::c_int = SOCKET_BUFFER;
        for opt in [force, plain] {
            // SAFETY: size is a live c_int of the length given.
            let rc = unsafe {
                libc::setsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_SOCKET,
                    opt,
                    std::ptr::from_ref(&size).cast(),
                    libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(0),
                )
            };
            if rc == 0 {
                break;
            }
        }
    }
    socket
        .set_nonblocking(true)
        .map_err(|e| format!("ha.sync: {e}"))?;
    Ok((socket, key))
}

/// Where a table walk is.
#[derive(Clone, Copy, Debug)]
struct Walk {
    /// The entry to resume from.
    next: u32,
    /// A bulk copy (two passes, mappings then connections) or a refresh (one pass).
    bulk: bool,
    /// In a bulk copy: the connections' pass.
    conns: bool,
    /// Records offered so far.
    offered: u64,
    started: Instant,
}

struct Runner<'a> {
    dp: &'a Dataplane,
    shared: &'a SyncShared,
    cfg: Sync,
    socket: UdpSocket,
    peer: SocketAddr,
    channel: SyncChannel,
    workers: u16,
    /// Events for the event log, when it runs: this thread is then the queues' only reader.
    forward: Option<&'a ArrayQueue<ConnEvent>>,
    forward_dropped: &'a AtomicU64,
    own: [u64; OWN_COUNTERS.len()],
    walk: Option<Walk>,
    next_refresh: Instant,
    last_active_ms: Option<u64>,
    pending: Vec<(Exported, u32)>,
    /// Whether the last bulk copy received from the peer's current instance was complete.
    bulk_complete: bool,
    receiving_bulk: Option<(u32, Instant)>,
    last_bulk: Option<Value>,
}

/// Runs the sync thread until [`SyncShared::stop`], then flushes for at most [`STOP_FLUSH`].
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    dp: &Dataplane,
    cfg: &Sync,
    (socket, key): (UdpSocket, SyncKey),
    workers: u16,
    shared: &SyncShared,
    clock: &(dyn Fn() -> u64 + std::marker::Sync),
    forward: Option<&ArrayQueue<ConnEvent>>,
    forward_dropped: &AtomicU64,
) {
    // Grows across restarts, so the peer tells a restarted instance from a replay.
    let epoch = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    let channel = SyncChannel::new(
        epoch,
        key,
        SyncConfig {
            rto_ms: u64::from(cfg.retransmit_ms),
            heartbeat_ms: u64::from(cfg.heartbeat_ms),
            dead_ms: u64::from(cfg.dead_ms),
            ..SyncConfig::default()
        },
    );
    let mut r = Runner {
        dp,
        shared,
        socket,
        peer: SocketAddr::V4(cfg.peer),
        cfg: cfg.clone(),
        channel,
        workers,
        forward,
        forward_dropped,
        own: [0; OWN_COUNTERS.len()],
        walk: None,
        next_refresh: Instant::now() + refresh_every(cfg),
        last_active_ms: None,
        pending: Vec::new(),
        bulk_complete: false,
        receiving_bulk: None,
        last_bulk: None,
    };
    tracing::info!(
        local = %cfg.local,
        peer = %cfg.peer,
        interface = %cfg.interface,
        epoch,
        "ha sync: started"
    );
    let mut next_view = Instant::now();
    let mut stopping: Option<Instant> = None;
    loop {
        let now_ms = clock();
        r.round(now_ms, stopping.is_some());
        if Instant::now() >= next_view {
            next_view += Duration::from_millis(100);
            r.publish(now_ms);
        }
        if stopping.is_none() && shared.stop.load(Ordering::Acquire) {
            stopping = Some(Instant::now());
        }
        if let Some(since) = stopping {
            let lag = r.channel.lag(now_ms);
            let idle = lag.unacked_messages == 0 && lag.queued_records == 0;
            if idle || since.elapsed() >= STOP_FLUSH || !r.channel.peer_alive(now_ms) {
                r.publish(now_ms);
                return;
            }
        }
        std::thread::sleep(TICK);
    }
}

fn refresh_every(cfg: &Sync) -> Duration {
    Duration::from_secs(u64::from(cfg.refresh_secs.max(1)))
}

impl Runner<'_> {
    fn bump(&mut self, name: &str) {
        if let Some(i) = OWN_COUNTERS.iter().position(|n| *n == name) {
            if let Some(c) = self.own.get_mut(i) {
                *c += 1;
            }
        }
    }

    /// One round: receive, drain the workers, walk, send.
    fn round(&mut self, now_ms: u64, stopping: bool) {
        let now_s = u32::try_from(now_ms / 1000).unwrap_or(u32::MAX);
        let active = self.dp.is_active();
        if active {
            self.last_active_ms = Some(now_ms);
        }
        // Changes made while active are streamed, also the few reported just after.
        let streaming = active
            || stopping
            || self
                .last_active_ms
                .is_some_and(|t| now_ms.saturating_sub(t) < ACTIVE_GRACE_MS);
        self.receive(now_ms, now_s, active);
        self.retry_pending(now_s, active);
        self.drain(now_s, streaming);
        if active {
            // Nothing to copy from the peer while this box's table is the truth.
            if self.channel.bulk_requested() {
                self.channel.cancel_bulk_request();
            }
            if self.channel.needs_resync() && self.walk.is_none_or(|w| !w.bulk) {
                self.start_bulk("the send window overflowed");
            }
            if self.walk.is_none()
                && self.cfg.refresh_secs > 0
                && Instant::now() >= self.next_refresh
                && self.channel.peer_alive(now_ms)
            {
                self.next_refresh = Instant::now() + refresh_every(&self.cfg);
                self.walk = Some(Walk {
                    next: 0,
                    bulk: false,
                    conns: true,
                    offered: 0,
                    started: Instant::now(),
                });
            }
            self.step_walk(now_s);
        } else if self.walk.is_some() {
            // Only the active box's table is the truth.
            self.walk = None;
            let _ = self.channel.end_bulk();
        }
        let table = self.dp.engine().table();
        self.channel.set_status(
            if active { Role::Master } else { Role::Backup },
            table.len(),
        );
        self.update_ready(now_ms, active);
        for d in self.channel.poll(now_ms) {
            if self.socket.send_to(&d, self.peer).is_err() {
                self.bump("sync_socket_errors");
            }
        }
    }

    fn receive(&mut self, now_ms: u64, now_s: u32, active: bool) {
        let mut buf = [0u8; MAX_DATAGRAM + 64];
        loop {
            match self.socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    if from.ip() != self.peer.ip() {
                        self.bump("sync_rx_wrong_source");
                        continue;
                    }
                    let Some(bytes) = buf.get(..n) else { continue };
                    // Refusals are counted by the channel, one counter per reason.
                    if let Ok(events) = self.channel.receive(bytes, now_ms) {
                        for e in events {
                            self.on_event(e, now_s, active);
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    // ICMP port unreachable from a peer not listening yet, and the like.
                    self.bump("sync_socket_errors");
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, e: SyncEvent, now_s: u32, active: bool) {
        let engine = self.dp.engine();
        match e {
            SyncEvent::PeerRestarted { epoch, previous } => {
                tracing::info!(epoch, ?previous, "ha sync: a new instance of the peer");
                self.bulk_complete = false;
                self.receiving_bulk = None;
                if !active {
                    self.channel.request_bulk();
                }
            }
            SyncEvent::Lost { messages } => {
                tracing::warn!(
                    messages,
                    "ha sync: the peer no longer holds messages we missed"
                );
                if !active {
                    self.bulk_complete = false;
                    self.channel.request_bulk();
                }
            }
            SyncEvent::Upsert(ex) => self.install(&ex, now_s, active),
            SyncEvent::Delete(key) => {
                if active {
                    self.bump("sync_ignored_active");
                } else if engine.remove_synced(&key, now_s) {
                    self.bump("sync_removed");
                }
            }
            SyncEvent::BulkBegin { estimate } => {
                tracing::info!(estimate, "ha sync: receiving a bulk copy");
                self.receiving_bulk = Some((estimate, Instant::now()));
            }
            SyncEvent::BulkEnd {
                sent,
                received,
                complete,
            } => {
                let ms = self
                    .receiving_bulk
                    .take()
                    .map_or(0, |(_, t)| t.elapsed().as_millis());
                self.bump("sync_bulks_received");
                self.last_bulk = Some(json!({
                    "sent": sent, "received": received, "complete": complete, "ms": ms,
                }));
                if complete {
                    tracing::info!(received, ms, "ha sync: bulk copy complete");
                    self.bulk_complete = true;
                } else {
                    tracing::warn!(
                        sent,
                        received,
                        "ha sync: bulk copy incomplete; asking again"
                    );
                    if !active {
                        self.channel.request_bulk();
                    }
                }
            }
            SyncEvent::BulkRequested => {
                if active && self.walk.is_none_or(|w| !w.bulk) {
                    self.start_bulk("the peer asked");
                }
            }
        }
    }

    /// Installs a record from the peer: on the standby as the active box has it; on an
    /// active box (two masters after a partition) only what it does not have.
    fn install(&mut self, ex: &Exported, now_s: u32, active: bool) {
        let engine = self.dp.engine();
        // An active box keeps its own copy of anything it has: its traffic is live.
        if active && engine.table().lookup(&ex.record.orig).is_some() {
            self.bump("sync_ignored_active");
            return;
        }
        let r = if active {
            match engine.install(ex, now_s) {
                Err(InsertError::Exists(_)) => {
                    self.bump("sync_ignored_active");
                    return;
                }
                r => r,
            }
        } else {
            engine.upsert(ex, now_s)
        };
        match r {
            Ok(_) => self.bump("sync_installed"),
            // The mapping it needs may be on its way (another worker's queue): later.
            Err(InsertError::Clash)
                if ex.record.state != ConnState::Mapping && self.pending.len() < PENDING_MAX =>
            {
                self.pending.push((*ex, 0));
            }
            Err(_) => self.bump("sync_install_failed"),
        }
    }

    fn retry_pending(&mut self, now_s: u32, active: bool) {
        if self.pending.is_empty() {
            return;
        }
        let engine = self.dp.engine();
        let mut kept = Vec::with_capacity(self.pending.len());
        for (ex, tries) in std::mem::take(&mut self.pending) {
            let r = if active {
                engine.install(&ex, now_s)
            } else {
                engine.upsert(&ex, now_s)
            };
            match r {
                Ok(_) => self.bump("sync_installed"),
                Err(InsertError::Clash) if tries < PENDING_TRIES => kept.push((ex, tries + 1)),
                Err(InsertError::Exists(_)) if active => self.bump("sync_ignored_active"),
                Err(_) => {
                    self.bump("sync_pending_given_up");
                    self.bump("sync_install_failed");
                }
            }
        }
        self.pending = kept;
    }

    /// Takes the workers' events: to the event log if it runs, to the peer while streaming.
    fn drain(&mut self, now_s: u32, streaming: bool) {
        let engine = self.dp.engine();
        let (forward, dropped) = (self.forward, self.forward_dropped);
        let channel = &mut self.channel;
        for w in 0..self.workers {
            engine.drain_events(w, |e| {
                if let Some(q) = forward {
                    if q.push(e).is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                if !streaming {
                    return;
                }
                // A dropped record raises needs_resync, which a bulk copy repairs.
                let _ = match e {
                    ConnEvent::Created(id) | ConnEvent::Updated(id, _) => {
                        match engine.export(id, now_s) {
                            Some(ex) => channel.upsert(&ex),
                            // Gone already: its deletion follows.
                            None => Ok(()),
                        }
                    }
                    ConnEvent::Deleted(rec) => channel.delete(rec.orig),
                };
            });
        }
    }

    fn start_bulk(&mut self, why: &str) {
        let estimate = self.dp.engine().table().len();
        if self.channel.begin_bulk(estimate).is_err() {
            // The window is full; the next round tries again (needs_resync stays up).
            return;
        }
        tracing::info!(estimate, reason = why, "ha sync: sending a bulk copy");
        self.walk = Some(Walk {
            next: 0,
            bulk: true,
            conns: false,
            offered: 0,
            started: Instant::now(),
        });
    }

    /// Offers the next slice of the walk in progress.
    fn step_walk(&mut self, now_s: u32) {
        let Some(mut walk) = self.walk else { return };
        let engine = self.dp.engine();
        let table = engine.table();
        let budget = if walk.bulk {
            BULK_PER_ROUND.min(self.channel.room().saturating_mul(20))
        } else {
            // A refresh spreads one pass over refresh_secs.
            let per_ms = u64::from(table.len()) / (u64::from(self.cfg.refresh_secs.max(1)) * 1000);
            usize::try_from(per_ms + 1)
                .unwrap_or(usize::MAX)
                .min(self.channel.room().saturating_mul(20))
        };
        if budget == 0 {
            return;
        }
        let channel = &mut self.channel;
        let mut offered = 0usize;
        let next = table.walk(walk.next, now_s, |id, rec| {
            let is_mapping = rec.state == ConnState::Mapping;
            // A bulk copy sends mappings first: connections need theirs on arrival.
            if walk.bulk && is_mapping == walk.conns {
                return true;
            }
            if let Some(ex) = engine.export(id, now_s) {
                let _ = channel.upsert(&ex);
                offered += 1;
            }
            offered < budget
        });
        walk.offered += offered as u64;
        match next {
            Some(n) => {
                walk.next = n;
                self.walk = Some(walk);
            }
            None if walk.bulk && !walk.conns => {
                walk.next = 0;
                walk.conns = true;
                self.walk = Some(walk);
            }
            None => {
                if walk.bulk {
                    let _ = self.channel.end_bulk();
                    self.bump("sync_bulks_sent");
                    tracing::info!(
                        records = walk.offered,
                        ms = walk.started.elapsed().as_millis(),
                        "ha sync: bulk copy sent"
                    );
                }
                self.walk = None;
            }
        }
    }

    /// A standby may preempt a live master only with its table complete. With the peer
    /// heard and standby too there is nothing to copy; with the peer not heard on the sync
    /// link, this box can't know its table is complete, so it does not preempt (the
    /// election still takes over from a master that stopped sending adverts).
    fn update_ready(&mut self, now_ms: u64, active: bool) {
        let alive = self.channel.peer_alive(now_ms);
        let peer_master = self
            .channel
            .peer()
            .and_then(|p| p.heartbeat)
            .is_some_and(|h| h.role == Role::Master);
        let ready = active || self.bulk_complete || (alive && !peer_master);
        let peer_master = alive && peer_master;
        self.shared
            .peer_master
            .store(peer_master, Ordering::Release);
        if !active && peer_master && !self.bulk_complete && !self.channel.bulk_requested() {
            self.channel.request_bulk();
        }
        let was = self.shared.ready.swap(ready, Ordering::AcqRel);
        if was != ready {
            tracing::info!(ready, "ha sync: ready to preempt a live master: {ready}");
        }
    }

    fn publish(&self, now_ms: u64) {
        let lag = self.channel.lag(now_ms);
        let mut counters: Vec<(&'static str, u64)> = self
            .channel
            .counters()
            .named()
            .iter()
            .map(|(n, v)| (sync_name(n), *v))
            .collect();
        counters.extend(OWN_COUNTERS.iter().copied().zip(self.own));
        *self
            .shared
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = counters.clone();
        self.shared
            .lag_messages
            .store(lag.unacked_messages as u64, Ordering::Relaxed);
        let alive = self.channel.peer_alive(now_ms);
        self.shared.peer_alive.store(alive, Ordering::Relaxed);
        let peer = self.channel.peer().map(|p| {
            json!({
                "epoch": p.epoch,
                "alive": alive,
                "last_heard_ms_ago": now_ms.saturating_sub(p.last_heard_ms),
                "role": p.heartbeat.map(|h| match h.role {
                    Role::Master => "master",
                    Role::Backup => "backup",
                    Role::Other => "other",
                }),
                "conns": p.heartbeat.map(|h| h.conns),
                "has_our_bulk": p.heartbeat.map(|h| h.bulk_complete),
            })
        });
        let receiving = self
            .channel
            .bulk_progress()
            .map(|b| json!({ "estimate": b.estimate, "received": b.received }));
        let sending = self
            .walk
            .filter(|w| w.bulk)
            .map(|w| json!({ "offered": w.offered, "ms": w.started.elapsed().as_millis() }));
        let v = json!({
            "local": self.cfg.local.to_string(),
            "peer_address": self.cfg.peer.to_string(),
            "interface": self.cfg.interface,
            "epoch": self.channel.epoch(),
            "peer": peer,
            "ready_to_preempt": self.shared.ready.load(Ordering::Relaxed),
            "bulk_complete": self.bulk_complete,
            "bulk_receiving": receiving,
            "bulk_sending": sending,
            "last_bulk_received": self.last_bulk,
            "lag": {
                "unacked_messages": lag.unacked_messages,
                "unacked_records": lag.unacked_records,
                "queued_records": lag.queued_records,
                "oldest_unacked_ms": lag.oldest_unacked_ms,
            },
            "pending_records": self.pending.len(),
            "counters": counters.into_iter().map(|(n, v)| (n.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        *self.shared.view.lock().unwrap_or_else(|e| e.into_inner()) = v;
    }
}

/// `sync_<name>` for a channel counter: the published names, made once per process.
fn sync_name(n: &str) -> &'static str {
    static NAMES: std::sync::OnceLock<Vec<(&'static str, &'static str)>> =
        std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        vipgate_ha::sync::SyncCounters::default()
            .named()
            .iter()
            .map(|(n, _)| (*n, &*Box::leak(format!("sync_{n}").into_boxed_str())))
            .collect()
    });
    names
        .iter()
        .find(|(short, _)| *short == n)
        .map_or("sync_unknown", |(_, full)| full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_counter_has_its_metric_name() {
        let c = vipgate_ha::sync::SyncCounters::default();
        for (name, _) in c.named() {
            assert_eq!(sync_name(name), format!("sync_{name}"));
        }
    }
}
