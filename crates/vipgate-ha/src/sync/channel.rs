//! The reliable, authenticated channel to one peer, as a pure state machine: records and
//! datagrams go in, datagrams and delivered records come out, time is an argument.
//!
//! Sending: records are packed into Data messages, numbered 1, 2, 3... in this box's epoch
//! and kept until the peer acknowledges them (cumulatively). After a retransmission timeout
//! the channel goes back to the oldest unacknowledged message and sends from there again
//! (go-back-N: the receiver drops what comes after a loss, so that is what it needs). The
//! timeout doubles while nothing is acknowledged, up to a ceiling, so a peer that is gone
//! costs little. At most `window` messages wait for acknowledgement: past that, records are
//! dropped, counted, and the channel asks for a resync (a bulk copy) through
//! [`SyncChannel::needs_resync`].
//!
//! Receiving: every datagram is authenticated before it is read; Data messages are delivered
//! in order, each exactly once; everything refused is counted under its reason. A receiver
//! learns where a peer instance's stream starts from its control messages (Ack, Heartbeat,
//! BulkRequest), which carry the oldest sequence number the sender still holds; Data that
//! comes before that is refused as out of order and comes again. The same number shows
//! messages the sender no longer holds that never arrived (a gap, reported as
//! [`SyncEvent::Lost`]).
//!
//! The daemon drives it: [`SyncChannel::poll`] at [`SyncChannel::next_poll_ms`] or sooner
//! (and after each batch of received datagrams, so acknowledgements go out),
//! [`SyncChannel::receive`] for each datagram from the peer, and the queueing calls for
//! table changes.

use std::collections::VecDeque;
use std::fmt;
use std::mem;

use vipgate_nat::engine::Exported;
use vipgate_nat::FlowKey;

use super::replay::{Inbound, Refusal};
use super::wire::{
    Batch, Body, DecodeError, Header, Heartbeat, Record, Role, SyncKey, SyncMessage,
};

/// Timers and bounds of a channel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    /// Retransmission timeout: how long a sent Data message waits for its acknowledgement
    /// before the unacknowledged ones are sent again. A dedicated link's round trip is well
    /// under a millisecond; this mostly absorbs the peer's polling delay.
    pub rto_ms: u64,
    /// The ceiling the timeout doubles up to while nothing is acknowledged.
    pub rto_max_ms: u64,
    /// Interval between heartbeats (and between repeated bulk requests).
    pub heartbeat_ms: u64,
    /// The peer is dead when nothing authentic came from it for this long.
    pub dead_ms: u64,
    /// Data messages that may wait for acknowledgement; beyond, records are dropped.
    pub window: usize,
    /// Data messages one [`SyncChannel::poll`] sends at most, so a retransmission of a full
    /// window comes out in slices instead of one burst that overruns socket buffers.
    pub burst: usize,
}

impl Default for SyncConfig {
    fn default() -> SyncConfig {
        SyncConfig {
            rto_ms: 50,
            rto_max_ms: 1_000,
            heartbeat_ms: 100,
            dead_ms: 300,
            window: 4096,
            burst: 256,
        }
    }
}

/// What a channel counted, one field per reason. The daemon publishes each as
/// `vipgate_sync_<name>_total`, with the names [`SyncCounters::named`] gives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SyncCounters {
    /// Data messages sent for the first time.
    pub tx_messages: u64,
    /// Records in those messages.
    pub tx_records: u64,
    /// Data messages sent again after a timeout.
    pub tx_retransmits: u64,
    /// Ack messages sent (acknowledgements that had nothing to ride on).
    pub tx_acks: u64,
    /// Heartbeats sent.
    pub tx_heartbeats: u64,
    /// Bulk requests sent (repeats included).
    pub tx_bulk_requests: u64,
    /// Authentic messages taken, of any kind.
    pub rx_messages: u64,
    /// Records delivered (each once).
    pub rx_records: u64,
    /// Datagrams whose MAC did not verify: wrong key, corruption or forgery.
    pub rx_forged: u64,
    /// Datagrams that are not well-formed sync messages.
    pub rx_malformed: u64,
    /// Authentic messages already taken: duplicates and replays.
    pub rx_replayed: u64,
    /// Authentic messages from an older instance of the peer.
    pub rx_stale: u64,
    /// Data messages that came before their predecessors (dropped; they come again).
    pub rx_out_of_order: u64,
    /// Data messages the peer stopped holding before we received them (a gap).
    pub rx_lost_messages: u64,
    /// Peer instances (epochs) followed, the first one included.
    pub peer_epochs: u64,
    /// Records dropped because the send window was full.
    pub records_dropped_window_full: u64,
    /// Unacknowledged records dropped when a new peer instance appeared (it gets a bulk
    /// copy instead).
    pub records_dropped_peer_restart: u64,
}

impl SyncCounters {
    /// Number of counters.
    pub const COUNT: usize = 17;

    /// Every counter with its name, in declaration order.
    pub fn named(&self) -> [(&'static str, u64); SyncCounters::COUNT] {
        [
            ("tx_messages", self.tx_messages),
            ("tx_records", self.tx_records),
            ("tx_retransmits", self.tx_retransmits),
            ("tx_acks", self.tx_acks),
            ("tx_heartbeats", self.tx_heartbeats),
            ("tx_bulk_requests", self.tx_bulk_requests),
            ("rx_messages", self.rx_messages),
            ("rx_records", self.rx_records),
            ("rx_forged", self.rx_forged),
            ("rx_malformed", self.rx_malformed),
            ("rx_replayed", self.rx_replayed),
            ("rx_stale", self.rx_stale),
            ("rx_out_of_order", self.rx_out_of_order),
            ("rx_lost_messages", self.rx_lost_messages),
            ("peer_epochs", self.peer_epochs),
            (
                "records_dropped_window_full",
                self.records_dropped_window_full,
            ),
            (
                "records_dropped_peer_restart",
                self.records_dropped_peer_restart,
            ),
        ]
    }
}

/// What a received message brought, in stream order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncEvent {
    /// We now follow a new instance of the peer: it restarted (`previous` is the instance
    /// followed before), or this is the first we hear of it (`previous` is `None`). Its
    /// stream starts afresh, and ours towards it restarts where it is: the records it did
    /// not acknowledge are dropped (counted in `records_dropped_peer_restart`), since a
    /// new instance gets the past in a bulk copy, which a standby asks for now
    /// ([`SyncChannel::request_bulk`]).
    PeerRestarted {
        /// The new instance's epoch.
        epoch: u64,
        /// The epoch followed before.
        previous: Option<u64>,
    },
    /// The peer no longer holds Data messages we never received: records were lost. A
    /// standby asks for a bulk copy.
    Lost {
        /// How many messages.
        messages: u64,
    },
    /// Install or replace this connection or mapping.
    Upsert(Exported),
    /// Remove the connection or mapping with this original key.
    Delete(FlowKey),
    /// A bulk copy starts; about `estimate` records follow.
    BulkBegin {
        /// The sender's estimate.
        estimate: u32,
    },
    /// A bulk copy ended. When complete, the table holds everything the peer had when it
    /// began (plus what changed since); entries the copy did not mention are stale.
    BulkEnd {
        /// Records the sender offered between begin and end.
        sent: u32,
        /// Records received between begin and end.
        received: u32,
        /// Whether every offered record arrived (and the begin did).
        complete: bool,
    },
    /// The peer asks for a bulk copy of our table. It repeats the request every heartbeat
    /// interval until our `BulkBegin` reaches it, so one bulk in progress answers them all.
    BulkRequested,
}

/// Why a datagram was refused. Each reason has its counter in [`SyncCounters`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The MAC does not verify.
    Forged,
    /// Not a well-formed message.
    Malformed(DecodeError),
    /// Already taken (duplicate or replay).
    Replayed,
    /// From an older instance of the peer.
    Stale {
        /// The message's epoch.
        epoch: u64,
        /// The epoch we follow.
        current: u64,
    },
    /// Data beyond the next expected, or before we know where the peer's stream starts.
    OutOfOrder {
        /// The message's sequence number.
        seq: u64,
        /// What we wait for, if known.
        expected: Option<u64>,
    },
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::Forged => f.write_str("forged: authentication failed"),
            RejectReason::Malformed(e) => write!(f, "malformed: {e}"),
            RejectReason::Replayed => f.write_str("replayed: already received"),
            RejectReason::Stale { epoch, current } => {
                write!(f, "stale: epoch {epoch}, following {current}")
            }
            RejectReason::OutOfOrder { seq, expected } => match expected {
                Some(e) => write!(f, "out of order: seq {seq}, expecting {e}"),
                None => write!(
                    f,
                    "out of order: seq {seq} before the stream's start is known"
                ),
            },
        }
    }
}

impl std::error::Error for RejectReason {}

/// A record was dropped: the send window is full. Counted, and
/// [`SyncChannel::needs_resync`] is raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowFull;

impl fmt::Display for WindowFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("sync send window full: record dropped")
    }
}

impl std::error::Error for WindowFull {}

/// How far the peer is behind us.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lag {
    /// Data messages not acknowledged yet (sent or not).
    pub unacked_messages: usize,
    /// Records in them.
    pub unacked_records: u64,
    /// Records queued but not in a message yet.
    pub queued_records: u32,
    /// How long ago the oldest unacknowledged message was first sent.
    pub oldest_unacked_ms: Option<u64>,
}

/// A bulk copy being received.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BulkProgress {
    /// Records the sender said to expect.
    pub estimate: u32,
    /// Records received so far.
    pub received: u32,
}

/// What we know of the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStatus {
    /// The instance we follow.
    pub epoch: u64,
    /// When we last took an authentic message from it.
    pub last_heard_ms: u64,
    /// Its last heartbeat, once one came from this instance.
    pub heartbeat: Option<Heartbeat>,
}

/// A Data message waiting for acknowledgement.
#[derive(Debug)]
struct Outgoing {
    seq: u64,
    batch: Batch,
    /// When it was first sent; `None` until then.
    first_sent_ms: Option<u64>,
}

/// The sync channel to one peer. See the module documentation.
#[derive(Debug)]
pub struct SyncChannel {
    epoch: u64,
    key: SyncKey,
    config: SyncConfig,
    counters: SyncCounters,

    // Sending.
    /// The sequence number the next Data message gets.
    next_seq: u64,
    /// Records not in a message yet.
    open: Batch,
    /// Data messages not acknowledged, oldest first, numbered without holes.
    unacked: VecDeque<Outgoing>,
    unacked_records: u64,
    /// The sequence number to transmit next: back at the oldest after a timeout.
    cursor: u64,
    /// The highest sequence number ever transmitted, so a send is known as a first one or
    /// a retransmission.
    highest_sent: u64,
    rto_ms: u64,
    rto_deadline: Option<u64>,
    next_heartbeat_ms: u64,
    needs_resync: bool,
    /// Records offered since `begin_bulk`, while a bulk is being sent.
    bulk_out: Option<u32>,
    role: Role,
    conns: u32,

    // Receiving.
    inbound: Inbound,
    /// An acknowledgement is owed: new data came in order, or a duplicate (our last
    /// acknowledgement may have been lost).
    ack_owed: bool,
    last_heard_ms: Option<u64>,
    peer_heartbeat: Option<Heartbeat>,
    bulk_in: Option<BulkProgress>,
    /// We received a complete bulk copy from the peer instance we follow.
    bulk_complete: bool,
    bulk_wanted: bool,
    next_bulk_request_ms: u64,
}

impl SyncChannel {
    /// A channel for this box's instance `epoch` (its start time in microseconds since the
    /// epoch, so that it grows across restarts: a peer refuses messages from an epoch
    /// older than the one it follows). Timers of 0 and a window or burst of 0 are taken as
    /// 1.
    pub fn new(epoch: u64, key: SyncKey, config: SyncConfig) -> SyncChannel {
        let config = SyncConfig {
            rto_ms: config.rto_ms.max(1),
            rto_max_ms: config.rto_max_ms.max(config.rto_ms).max(1),
            heartbeat_ms: config.heartbeat_ms.max(1),
            dead_ms: config.dead_ms.max(1),
            window: config.window.max(1),
            burst: config.burst.max(1),
        };
        SyncChannel {
            epoch,
            key,
            counters: SyncCounters::default(),
            next_seq: 1,
            open: Batch::new(),
            unacked: VecDeque::new(),
            unacked_records: 0,
            cursor: 1,
            highest_sent: 0,
            rto_ms: config.rto_ms,
            rto_deadline: None,
            next_heartbeat_ms: 0,
            needs_resync: false,
            bulk_out: None,
            role: Role::Other,
            conns: 0,
            inbound: Inbound::default(),
            ack_owed: false,
            last_heard_ms: None,
            peer_heartbeat: None,
            bulk_in: None,
            bulk_complete: false,
            bulk_wanted: false,
            next_bulk_request_ms: 0,
            config,
        }
    }

    /// This box's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The configuration in force (zeros raised to 1).
    pub fn config(&self) -> &SyncConfig {
        &self.config
    }

    /// The counters.
    pub fn counters(&self) -> &SyncCounters {
        &self.counters
    }

    // ----- Sending -----

    /// Queues a connection or mapping to create or replace on the peer.
    ///
    /// # Errors
    /// [`WindowFull`]: dropped (see [`SyncChannel::room`]).
    pub fn upsert(&mut self, e: &Exported) -> Result<(), WindowFull> {
        self.count_bulk();
        self.offer(&Record::Upsert(*e))
    }

    /// Queues the removal of the connection or mapping with original key `orig`.
    ///
    /// # Errors
    /// [`WindowFull`]: dropped.
    pub fn delete(&mut self, orig: FlowKey) -> Result<(), WindowFull> {
        self.count_bulk();
        self.offer(&Record::Delete(orig))
    }

    /// Starts a bulk copy: the caller then upserts every connection and mapping (mappings
    /// first, as [`vipgate_nat::Engine::install`] needs) and calls [`SyncChannel::end_bulk`].
    /// Live changes may go on in between; the receiver counts them in. Clears
    /// [`SyncChannel::needs_resync`]. A bulk larger than the window is fed while
    /// [`SyncChannel::room`] is above 0, polling in between.
    ///
    /// # Errors
    /// [`WindowFull`]: nothing started; try again when the window drained.
    pub fn begin_bulk(&mut self, estimate: u32) -> Result<(), WindowFull> {
        self.offer(&Record::BulkBegin { estimate })?;
        self.bulk_out = Some(0);
        self.needs_resync = false;
        Ok(())
    }

    /// Ends the bulk copy begun last, telling the receiver how many records were offered
    /// since, dropped ones included, so holes show. Does nothing when no bulk is begun.
    ///
    /// # Errors
    /// [`WindowFull`]: dropped; the receiver never sees the end, and
    /// [`SyncChannel::needs_resync`] asks for another bulk.
    pub fn end_bulk(&mut self) -> Result<(), WindowFull> {
        match self.bulk_out.take() {
            Some(sent) => self.offer(&Record::BulkEnd { sent }),
            None => Ok(()),
        }
    }

    /// Whether a bulk copy is being sent (begun, not ended).
    pub fn sending_bulk(&self) -> bool {
        self.bulk_out.is_some()
    }

    /// Data messages that can still be added to the window. While it is above 0, any
    /// record is accepted.
    pub fn room(&self) -> usize {
        self.config.window.saturating_sub(self.unacked.len())
    }

    /// Records were dropped (window full) since the last bulk began: the peer's copy has
    /// holes, and a bulk copy ([`SyncChannel::begin_bulk`]) is needed once the window has
    /// room.
    pub fn needs_resync(&self) -> bool {
        self.needs_resync
    }

    /// What our heartbeats tell the peer about us.
    pub fn set_status(&mut self, role: Role, conns: u32) {
        self.role = role;
        self.conns = conns;
    }

    /// Asks the peer for a bulk copy: a BulkRequest now and every heartbeat interval until
    /// the copy begins (or [`SyncChannel::cancel_bulk_request`]).
    pub fn request_bulk(&mut self) {
        self.bulk_wanted = true;
        self.next_bulk_request_ms = 0;
    }

    /// Stops asking for a bulk copy.
    pub fn cancel_bulk_request(&mut self) {
        self.bulk_wanted = false;
    }

    /// Whether we are asking the peer for a bulk copy.
    pub fn bulk_requested(&self) -> bool {
        self.bulk_wanted
    }

    /// Datagrams to send now: heartbeat and bulk request when due, Data messages (new
    /// ones, and again from the oldest unacknowledged after a timeout), and an Ack when one
    /// is owed and nothing else carries it.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        if self.room() > 0 {
            self.close_open();
        }
        // Heartbeat first: a peer that does not know where our stream starts learns it
        // from this before the Data behind it arrives.
        if now_ms >= self.next_heartbeat_ms {
            let hb = Heartbeat {
                role: self.role,
                bulk_complete: self.bulk_complete,
                conns: self.conns,
            };
            self.push_control(Body::Heartbeat(hb), &mut out);
            self.counters.tx_heartbeats += 1;
            self.next_heartbeat_ms = now_ms.saturating_add(self.config.heartbeat_ms);
        }
        if self.bulk_wanted && now_ms >= self.next_bulk_request_ms {
            self.push_control(Body::BulkRequest, &mut out);
            self.counters.tx_bulk_requests += 1;
            self.next_bulk_request_ms = now_ms.saturating_add(self.config.heartbeat_ms);
        }
        if self.rto_deadline.is_some_and(|d| now_ms >= d) {
            // Go back N: the receiver dropped whatever followed the loss.
            self.cursor = self.base();
            self.rto_deadline = None;
            self.rto_ms = self.rto_ms.saturating_mul(2).min(self.config.rto_max_ms);
        }
        self.transmit(now_ms, &mut out);
        if out.is_empty() && self.ack_owed {
            self.push_control(Body::Ack, &mut out);
            self.counters.tx_acks += 1;
        }
        if !out.is_empty() {
            // Every message carries the acknowledgement.
            self.ack_owed = false;
        }
        out
    }

    /// When [`SyncChannel::poll`] next has something to do; a time at or before now means now.
    pub fn next_poll_ms(&self) -> u64 {
        let unsent = self.cursor < self.next_seq;
        let closable = !self.open.is_empty() && self.room() > 0;
        if self.ack_owed || unsent || closable {
            return 0;
        }
        let mut t = self.next_heartbeat_ms;
        if let Some(d) = self.rto_deadline {
            t = t.min(d);
        }
        if self.bulk_wanted {
            t = t.min(self.next_bulk_request_ms);
        }
        t
    }

    /// How far the peer is behind.
    pub fn lag(&self, now_ms: u64) -> Lag {
        Lag {
            unacked_messages: self.unacked.len(),
            unacked_records: self.unacked_records,
            queued_records: self.open.records(),
            oldest_unacked_ms: self
                .unacked
                .front()
                .and_then(|m| m.first_sent_ms)
                .map(|t| now_ms.saturating_sub(t)),
        }
    }

    /// Counts a record offered during a bulk, before it is queued or dropped.
    fn count_bulk(&mut self) {
        if let Some(n) = self.bulk_out.as_mut() {
            *n = n.saturating_add(1);
        }
    }

    /// Adds a record to the open batch, closing it into a message when full.
    fn offer(&mut self, record: &Record) -> Result<(), WindowFull> {
        if self.open.push(record).is_ok() {
            return Ok(());
        }
        if self.room() > 0 {
            self.close_open();
            // Any record fits an empty batch, so this takes it.
            if self.open.push(record).is_ok() {
                return Ok(());
            }
        }
        self.counters.records_dropped_window_full += 1;
        self.needs_resync = true;
        Err(WindowFull)
    }

    /// Turns the open batch, if it holds records, into the next Data message.
    fn close_open(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let batch = mem::take(&mut self.open);
        self.unacked_records += u64::from(batch.records());
        self.unacked.push_back(Outgoing {
            seq: self.next_seq,
            batch,
            first_sent_ms: None,
        });
        self.next_seq += 1;
    }

    /// The oldest sequence number still held: what control messages carry.
    fn base(&self) -> u64 {
        self.unacked.front().map_or(self.next_seq, |m| m.seq)
    }

    fn header(&self, seq: u64) -> Header {
        let (ack, ack_epoch) = self.inbound.ack();
        Header {
            epoch: self.epoch,
            seq,
            ack,
            ack_epoch,
        }
    }

    fn push_control(&self, body: Body, out: &mut Vec<Vec<u8>>) {
        let m = SyncMessage {
            header: self.header(self.base()),
            body,
        };
        // Control bodies are a few bytes: encoding cannot fail.
        if let Ok(d) = m.encode(&self.key) {
            out.push(d);
        }
    }

    /// Sends Data messages from the cursor on, at most a burst.
    fn transmit(&mut self, now_ms: u64, out: &mut Vec<Vec<u8>>) {
        let base = self.base();
        let mut sent = 0;
        while sent < self.config.burst {
            // The window is numbered without holes, so the cursor's message is at
            // cursor - base.
            let Some(i) = self
                .cursor
                .checked_sub(base)
                .and_then(|d| usize::try_from(d).ok())
            else {
                break;
            };
            let header = self.header(self.cursor);
            let Some(m) = self.unacked.get_mut(i) else {
                break;
            };
            out.push(m.batch.seal(&header, &self.key));
            if m.seq <= self.highest_sent {
                self.counters.tx_retransmits += 1;
            } else {
                self.highest_sent = m.seq;
                m.first_sent_ms = Some(now_ms);
                self.counters.tx_messages += 1;
                self.counters.tx_records += u64::from(m.batch.records());
            }
            self.cursor += 1;
            sent += 1;
        }
        if sent > 0 && self.rto_deadline.is_none() {
            self.rto_deadline = Some(now_ms.saturating_add(self.rto_ms));
        }
    }

    /// Frees what the peer acknowledged in our current epoch.
    fn on_ack(&mut self, h: &Header, now_ms: u64) {
        // An acknowledgement of a previous instance of ours, or of more than we ever sent
        // (impossible from an honest peer), frees nothing.
        if h.ack_epoch != self.epoch || h.ack == 0 || h.ack > self.highest_sent {
            return;
        }
        let mut freed = false;
        while let Some(m) = self.unacked.front() {
            if m.seq > h.ack {
                break;
            }
            self.unacked_records -= u64::from(m.batch.records());
            self.unacked.pop_front();
            freed = true;
        }
        if freed {
            let base = self.base();
            self.cursor = self.cursor.max(base);
            self.rto_ms = self.config.rto_ms;
            // Restart the timer for what is still in flight.
            self.rto_deadline = (self.cursor > base).then(|| now_ms.saturating_add(self.rto_ms));
        }
    }

    // ----- Receiving -----

    /// Takes a datagram from the peer: authenticates it, checks it belongs, and returns
    /// what it brought, in order. Data records are delivered exactly once, in the order
    /// they were queued.
    ///
    /// # Errors
    /// Why it was refused, counted under that reason. A refused datagram changes nothing
    /// else, except that a duplicate of delivered Data makes us acknowledge again (our
    /// acknowledgement may have been lost).
    pub fn receive(&mut self, bytes: &[u8], now_ms: u64) -> Result<Vec<SyncEvent>, RejectReason> {
        let msg = match SyncMessage::decode(bytes, &self.key) {
            Ok(m) => m,
            Err(DecodeError::BadAuth) => {
                self.counters.rx_forged += 1;
                return Err(RejectReason::Forged);
            }
            Err(e) => {
                self.counters.rx_malformed += 1;
                return Err(RejectReason::Malformed(e));
            }
        };
        let h = msg.header;
        let mut events = Vec::new();
        match msg.body {
            Body::Data(records) => {
                if let Err(r) = self.inbound.admit_data(h.epoch, h.seq) {
                    if r == Refusal::Replayed {
                        self.ack_owed = true;
                    }
                    return Err(self.refuse(r, &h));
                }
                self.ack_owed = true;
                self.on_ack(&h, now_ms);
                self.took(now_ms);
                for r in records {
                    self.deliver(r, &mut events);
                }
            }
            body => {
                let c = match self.inbound.admit_control(h.epoch, h.seq) {
                    Ok(c) => c,
                    Err(r) => return Err(self.refuse(r, &h)),
                };
                // Acknowledgements first: what a new instance already has is not dropped.
                self.on_ack(&h, now_ms);
                if let Some(previous) = c.new_peer {
                    self.on_new_peer(h.epoch, previous, &mut events);
                }
                if c.lost > 0 {
                    // Saturating: an authentic but hostile peer can claim any gap.
                    self.counters.rx_lost_messages =
                        self.counters.rx_lost_messages.saturating_add(c.lost);
                    self.bulk_complete = false;
                    self.ack_owed = true;
                    events.push(SyncEvent::Lost { messages: c.lost });
                }
                self.took(now_ms);
                match body {
                    Body::Heartbeat(hb) => self.peer_heartbeat = Some(hb),
                    Body::BulkRequest => events.push(SyncEvent::BulkRequested),
                    Body::Ack | Body::Data(_) => {}
                }
            }
        }
        Ok(events)
    }

    /// Whether an authentic message came from the peer within the dead interval.
    pub fn peer_alive(&self, now_ms: u64) -> bool {
        self.last_heard_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < self.config.dead_ms)
    }

    /// The peer instance we follow, if any.
    pub fn peer(&self) -> Option<PeerStatus> {
        Some(PeerStatus {
            epoch: self.inbound.epoch()?,
            last_heard_ms: self.last_heard_ms?,
            heartbeat: self.peer_heartbeat,
        })
    }

    /// The bulk copy being received, if one began and has not ended.
    pub fn bulk_progress(&self) -> Option<BulkProgress> {
        self.bulk_in
    }

    /// Whether we received a complete bulk copy from the peer instance we follow (what our
    /// heartbeats tell it).
    pub fn bulk_complete(&self) -> bool {
        self.bulk_complete
    }

    /// Stops following the peer's instance, so the next control message from any epoch,
    /// older ones included, starts a new stream. For a peer whose clock went back across
    /// a restart: its new, smaller epoch is refused as stale until then.
    pub fn forget_peer(&mut self) {
        self.inbound.forget();
    }

    fn refuse(&mut self, r: Refusal, h: &Header) -> RejectReason {
        match r {
            Refusal::Stale { current } => {
                self.counters.rx_stale += 1;
                RejectReason::Stale {
                    epoch: h.epoch,
                    current,
                }
            }
            Refusal::Replayed => {
                self.counters.rx_replayed += 1;
                RejectReason::Replayed
            }
            Refusal::OutOfOrder { expected } => {
                self.counters.rx_out_of_order += 1;
                RejectReason::OutOfOrder {
                    seq: h.seq,
                    expected,
                }
            }
        }
    }

    /// What every taken message does: it counts, and shows the peer alive.
    fn took(&mut self, now_ms: u64) {
        self.counters.rx_messages += 1;
        self.last_heard_ms = Some(now_ms);
    }

    fn on_new_peer(&mut self, epoch: u64, previous: Option<u64>, events: &mut Vec<SyncEvent>) {
        self.counters.peer_epochs += 1;
        // A new instance starts following our stream where it is now and gets the past
        // in the bulk copy it asks for: what it did not acknowledge is dead weight
        // (perhaps a full window that made us drop records, or one filled while no peer
        // listened), and sending it would only delay what matters.
        self.counters.records_dropped_peer_restart += self.unacked_records;
        self.unacked.clear();
        self.unacked_records = 0;
        self.cursor = self.next_seq;
        self.rto_deadline = None;
        self.rto_ms = self.config.rto_ms;
        self.peer_heartbeat = None;
        self.bulk_in = None;
        self.bulk_complete = false;
        events.push(SyncEvent::PeerRestarted { epoch, previous });
    }

    fn deliver(&mut self, r: Record, events: &mut Vec<SyncEvent>) {
        self.counters.rx_records += 1;
        match r {
            Record::Upsert(e) => {
                self.count_bulk_in();
                events.push(SyncEvent::Upsert(e));
            }
            Record::Delete(k) => {
                self.count_bulk_in();
                events.push(SyncEvent::Delete(k));
            }
            Record::BulkBegin { estimate } => {
                self.bulk_in = Some(BulkProgress {
                    estimate,
                    received: 0,
                });
                self.bulk_complete = false;
                // The copy we asked for is coming: stop asking.
                self.bulk_wanted = false;
                events.push(SyncEvent::BulkBegin { estimate });
            }
            Record::BulkEnd { sent } => {
                let received = self.bulk_in.take().map(|p| p.received);
                let complete = received == Some(sent);
                self.bulk_complete = complete;
                events.push(SyncEvent::BulkEnd {
                    sent,
                    received: received.unwrap_or(0),
                    complete,
                });
            }
        }
    }

    fn count_bulk_in(&mut self) {
        if let Some(p) = self.bulk_in.as_mut() {
            p.received = p.received.saturating_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::testing::{exported, flow, key};
    use crate::sync::wire::{self, Kind};

    const A_EPOCH: u64 = 1_000;
    const B_EPOCH: u64 = 2_000;

    fn channel(epoch: u64) -> SyncChannel {
        SyncChannel::new(epoch, key(), SyncConfig::default())
    }

    /// Hands every datagram of `from`'s poll to `to`, collecting what it delivered.
    fn pump(from: &mut SyncChannel, to: &mut SyncChannel, now: u64) -> Vec<SyncEvent> {
        let mut events = Vec::new();
        for d in from.poll(now) {
            events.extend(to.receive(&d, now).unwrap());
        }
        events
    }

    fn upserts(events: &[SyncEvent]) -> Vec<u32> {
        events
            .iter()
            .filter_map(|e| match e {
                SyncEvent::Upsert(x) => Some(x.record.backend),
                _ => None,
            })
            .collect()
    }

    /// The kinds of the datagrams in `out`.
    fn kinds(out: &[Vec<u8>]) -> Vec<Kind> {
        out.iter()
            .map(|d| SyncMessage::decode(d, &key()).unwrap().body.kind())
            .collect()
    }

    #[test]
    fn records_reach_the_peer_and_acks_free_the_window() {
        let (mut a, mut b) = (channel(A_EPOCH), channel(B_EPOCH));
        a.upsert(&exported(1)).unwrap();
        a.delete(flow(2)).unwrap();
        let ev = pump(&mut a, &mut b, 0);
        assert_eq!(
            ev,
            vec![
                SyncEvent::PeerRestarted {
                    epoch: A_EPOCH,
                    previous: None
                },
                SyncEvent::Upsert(exported(1)),
                SyncEvent::Delete(flow(2)),
            ]
        );
        assert_eq!(a.lag(5).unacked_messages, 1);
        assert_eq!(a.lag(5).unacked_records, 2);
        assert_eq!(a.lag(5).oldest_unacked_ms, Some(5));
        // B owes an ack; its first poll has a heartbeat to carry it.
        assert_eq!(
            pump(&mut b, &mut a, 1)
                .first()
                .map(|e| matches!(e, SyncEvent::PeerRestarted { .. })),
            Some(true)
        );
        assert_eq!(a.lag(5).unacked_messages, 0);
        assert_eq!(a.lag(5).oldest_unacked_ms, None);
        // More data: B has nothing else to send, so a bare Ack goes.
        a.upsert(&exported(3)).unwrap();
        assert_eq!(upserts(&pump(&mut a, &mut b, 2)), vec![3]);
        let out = b.poll(3);
        assert_eq!(kinds(&out), vec![Kind::Ack]);
        for d in out {
            assert_eq!(a.receive(&d, 3), Ok(vec![]));
        }
        assert_eq!(a.lag(3).unacked_messages, 0);
        assert!(b.poll(4).is_empty(), "nothing owed, nothing due");
        let c = b.counters();
        assert_eq!(
            (c.rx_messages, c.rx_records, c.tx_acks, c.tx_heartbeats),
            (3, 3, 1, 1)
        );
        let c = a.counters();
        assert_eq!((c.tx_messages, c.tx_records, c.tx_retransmits), (2, 3, 0));
        assert!(b.peer_alive(4) && b.peer_alive(299) && !b.peer_alive(302));
        assert_eq!(
            a.counters().records_dropped_peer_restart,
            0,
            "acknowledged first"
        );
        assert_eq!(b.peer().map(|p| p.epoch), Some(A_EPOCH));
    }

    #[test]
    fn many_records_pack_into_few_messages() {
        let (mut a, mut b) = (channel(A_EPOCH), channel(B_EPOCH));
        for n in 0..100 {
            a.upsert(&exported(n)).unwrap();
        }
        let out = a.poll(0);
        let per = wire::MAX_BODY / Record::Upsert(exported(0)).wire_len();
        let data = 100_usize.div_ceil(per);
        assert_eq!(out.len(), 1 + data, "a heartbeat and the data");
        let mut got = Vec::new();
        for d in &out {
            assert!(d.len() <= wire::MAX_DATAGRAM);
            got.extend(b.receive(d, 0).unwrap());
        }
        assert_eq!(upserts(&got), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn a_lost_message_is_sent_again_after_the_timeout() {
        let (mut a, mut b) = (channel(A_EPOCH), channel(B_EPOCH));
        let hb = a.poll(0);
        for d in &hb {
            b.receive(d, 0).unwrap();
        }
        a.upsert(&exported(1)).unwrap();
        let lost = a.poll(1);
        assert_eq!(kinds(&lost), vec![Kind::Data]);
        a.upsert(&exported(2)).unwrap();
        let second = a.poll(2);
        assert_eq!(
            b.receive(&second[0], 2),
            Err(RejectReason::OutOfOrder {
                seq: 2,
                expected: Some(1)
            })
        );
        assert!(
            a.poll(50).is_empty(),
            "the timeout runs from the first send"
        );
        assert_eq!(a.next_poll_ms(), 51);
        let again = a.poll(51);
        assert_eq!(kinds(&again), vec![Kind::Data, Kind::Data]);
        assert_eq!(a.counters().tx_retransmits, 2);
        let mut got = Vec::new();
        for d in &again {
            got.extend(b.receive(d, 51).unwrap());
        }
        assert_eq!(upserts(&got), vec![1, 2]);
        // B's acks never reach A: the timeout doubles each time.
        let data = |out: Vec<Vec<u8>>| kinds(&out).iter().filter(|k| **k == Kind::Data).count();
        assert_eq!(data(a.poll(150)), 0);
        assert_eq!(data(a.poll(151)), 2);
        assert_eq!(data(a.poll(350)), 0);
        assert_eq!(data(a.poll(351)), 2);
        assert_eq!(a.counters().tx_retransmits, 6);
    }

    #[test]
    fn duplicates_are_replays_and_acked_again() {
        let (mut a, mut b) = (channel(A_EPOCH), channel(B_EPOCH));
        a.upsert(&exported(1)).unwrap();
        let out = a.poll(0);
        for d in &out {
            b.receive(d, 0).unwrap();
        }
        let _ = b.poll(0);
        for d in &out {
            assert_eq!(
                b.receive(d, 1).map(|_| ()),
                if kinds(std::slice::from_ref(d)) == vec![Kind::Data] {
                    Err(RejectReason::Replayed)
                } else {
                    Ok(())
                }
            );
        }
        assert_eq!(b.counters().rx_replayed, 1);
        assert_eq!(kinds(&b.poll(2)), vec![Kind::Ack]);
    }

    #[test]
    fn forged_malformed_stale_and_restarted_peers() {
        let (mut a, mut b) = (channel(A_EPOCH), channel(B_EPOCH));
        let hb = a.poll(0).remove(0);
        b.receive(&hb, 0).unwrap();

        let mut forged = hb.clone();
        let last = forged.len() - 1;
        forged[last] ^= 1;
        assert_eq!(b.receive(&forged, 1), Err(RejectReason::Forged));
        let mut other = SyncChannel::new(
            A_EPOCH,
            SyncKey::new(b"some-other-key-16").unwrap(),
            SyncConfig::default(),
        );
        assert_eq!(b.receive(&other.poll(0)[0], 1), Err(RejectReason::Forged));
        assert!(matches!(
            b.receive(&hb[..10], 1),
            Err(RejectReason::Malformed(_))
        ));

        let mut old = channel(A_EPOCH - 1);
        assert_eq!(
            b.receive(&old.poll(0)[0], 2),
            Err(RejectReason::Stale {
                epoch: A_EPOCH - 1,
                current: A_EPOCH
            })
        );
        let mut newer = channel(A_EPOCH + 1);
        assert_eq!(
            b.receive(&newer.poll(0)[0], 3),
            Ok(vec![SyncEvent::PeerRestarted {
                epoch: A_EPOCH + 1,
                previous: Some(A_EPOCH)
            }])
        );
        assert_eq!(
            b.receive(&hb, 4),
            Err(RejectReason::Stale {
                epoch: A_EPOCH,
                current: A_EPOCH + 1
            })
        );
        let c = b.counters();
        assert_eq!(
            (
                c.rx_forged,
                c.rx_malformed,
                c.rx_stale,
                c.peer_epochs,
                c.rx_messages
            ),
            (2, 1, 2, 2, 2)
        );
        // Nothing refused counted as life: only the two taken messages did.
        assert_eq!(b.peer().map(|p| p.last_heard_ms), Some(3));
    }

    #[test]
    fn data_before_the_stream_start_is_early() {
        let (mut a, mut b) = (channel(A_EPOCH), channel(B_EPOCH));
        let _ = a.poll(0); // the heartbeat is lost
        a.upsert(&exported(1)).unwrap();
        let data = a.poll(1);
        assert_eq!(
            b.receive(&data[0], 1),
            Err(RejectReason::OutOfOrder {
                seq: 1,
                expected: None
            })
        );
        // The next heartbeat says where the stream starts; the retransmission then lands.
        let mut got = Vec::new();
        for now in [100, 101] {
            for d in a.poll(now) {
                got.extend(b.receive(&d, now).unwrap());
            }
        }
        assert_eq!(upserts(&got), vec![1]);
    }

    #[test]
    fn a_restarted_receiver_clears_the_senders_window() {
        let (mut a, mut b) = (channel(A_EPOCH), channel(B_EPOCH));
        for d in b.poll(0) {
            a.receive(&d, 0).unwrap();
        }
        for n in 0..50 {
            a.upsert(&exported(n)).unwrap();
        }
        let _ = a.poll(0); // never arrives
        assert_eq!(a.lag(0).unacked_records, 50);
        let mut b2 = channel(B_EPOCH + 1);
        b2.request_bulk();
        let mut ev = Vec::new();
        for d in b2.poll(10) {
            ev.extend(a.receive(&d, 10).unwrap());
        }
        assert_eq!(
            ev,
            vec![
                SyncEvent::PeerRestarted {
                    epoch: B_EPOCH + 1,
                    previous: Some(B_EPOCH)
                },
                SyncEvent::BulkRequested
            ]
        );
        assert_eq!(a.lag(10).unacked_messages, 0);
        assert_eq!(a.counters().records_dropped_peer_restart, 50);
        // The new instance learns where our stream is now and takes what follows.
        a.upsert(&exported(99)).unwrap();
        let mut got = Vec::new();
        for now in [100, 101] {
            for d in a.poll(now) {
                got.extend(b2.receive(&d, now).unwrap());
            }
        }
        assert_eq!(upserts(&got), vec![99]);
        assert_eq!(b2.counters().rx_lost_messages, 0);
    }

    #[test]
    fn what_nobody_acknowledged_is_dropped_on_first_contact() {
        let (mut a, mut b) = (channel(A_EPOCH), channel(B_EPOCH));
        for n in 0..5 {
            a.upsert(&exported(n)).unwrap();
        }
        let _ = a.poll(0); // nobody listens yet
        a.upsert(&exported(5)).unwrap(); // still in the open batch
        let mut ev = Vec::new();
        for d in b.poll(1) {
            ev.extend(a.receive(&d, 1).unwrap());
        }
        assert_eq!(
            ev,
            vec![SyncEvent::PeerRestarted {
                epoch: B_EPOCH,
                previous: None
            }]
        );
        assert_eq!(a.counters().records_dropped_peer_restart, 5);
        assert_eq!(a.lag(1).unacked_messages, 0);
        // What was queued after stays queued, and B takes it once A's next heartbeat
        // told it where A's stream stands.
        let mut got = Vec::new();
        for d in a.poll(100) {
            got.extend(b.receive(&d, 100).unwrap());
        }
        assert_eq!(upserts(&got), vec![5]);
    }

    #[test]
    fn a_base_past_what_we_received_is_reported_lost() {
        let (mut a, mut b) = (channel(A_EPOCH), channel(B_EPOCH));
        for d in a.poll(0) {
            b.receive(&d, 0).unwrap();
        }
        // A heartbeat from A's instance saying it holds nothing before 10 (as if 1..=9 had
        // been acknowledged by someone else): signed with the key, so it is authentic.
        let m = SyncMessage {
            header: Header {
                epoch: A_EPOCH,
                seq: 10,
                ack: 0,
                ack_epoch: 0,
            },
            body: Body::Ack,
        };
        let d = m.encode(&key()).unwrap();
        assert_eq!(b.receive(&d, 1), Ok(vec![SyncEvent::Lost { messages: 9 }]));
        assert_eq!(b.counters().rx_lost_messages, 9);
        // An older base again is a replay.
        let old = SyncMessage {
            header: Header { seq: 9, ..m.header },
            body: Body::Ack,
        };
        assert_eq!(
            b.receive(&old.encode(&key()).unwrap(), 2),
            Err(RejectReason::Replayed)
        );
    }

    #[test]
    fn a_full_window_drops_counts_and_asks_for_a_resync() {
        let config = SyncConfig {
            window: 2,
            ..SyncConfig::default()
        };
        let mut a = SyncChannel::new(A_EPOCH, key(), config);
        let mut b = channel(B_EPOCH);
        let per = u32::try_from(wire::MAX_BODY / Record::Upsert(exported(0)).wire_len()).unwrap();
        // Two messages in the window and a full open batch: everything after is dropped.
        let fits = 3 * per;
        let mut dropped = 0;
        for n in 0..fits + 10 {
            if a.upsert(&exported(n)).is_err() {
                dropped += 1;
            }
        }
        assert_eq!(dropped, 10);
        assert_eq!(a.room(), 0);
        assert!(a.needs_resync());
        assert_eq!(a.counters().records_dropped_window_full, 10);

        // The peer comes; the window drains.
        let mut got = Vec::new();
        for now in 0..10 {
            for d in a.poll(now) {
                got.extend(b.receive(&d, now).unwrap());
            }
            for d in b.poll(now) {
                got.extend(a.receive(&d, now).unwrap());
            }
        }
        assert_eq!(a.lag(10).unacked_messages, 0);
        assert_eq!(upserts(&got).len(), fits as usize);
        assert_eq!(a.counters().records_dropped_peer_restart, 0);

        // A bulk repairs it; a drop inside the bulk shows as an incomplete copy.
        a.begin_bulk(3).unwrap();
        assert!(!a.needs_resync());
        assert!(a.sending_bulk());
        for n in 0..3 {
            a.upsert(&exported(n)).unwrap();
        }
        a.end_bulk().unwrap();
        assert!(!a.sending_bulk());
        let mut ev = Vec::new();
        for d in a.poll(20) {
            ev.extend(b.receive(&d, 20).unwrap());
        }
        assert_eq!(ev.first(), Some(&SyncEvent::BulkBegin { estimate: 3 }));
        assert_eq!(
            ev.last(),
            Some(&SyncEvent::BulkEnd {
                sent: 3,
                received: 3,
                complete: true
            })
        );
        assert!(b.bulk_complete());
        // B's heartbeat tells A.
        for d in b.poll(200) {
            a.receive(&d, 200).unwrap();
        }
        assert_eq!(
            a.peer().and_then(|p| p.heartbeat).map(|h| h.bulk_complete),
            Some(true)
        );

        let mut small = SyncChannel::new(
            A_EPOCH,
            key(),
            SyncConfig {
                window: 1,
                ..config
            },
        );
        let mut c = channel(B_EPOCH);
        small.begin_bulk(0).unwrap();
        let mut n = 0;
        while small.upsert(&exported(n)).is_ok() {
            n += 1;
        }
        assert!(small.needs_resync());
        // The end is a small record: it still fits, and its count shows the hole.
        small.end_bulk().unwrap();
        let mut ev = Vec::new();
        for now in 0..10 {
            for d in small.poll(now) {
                ev.extend(c.receive(&d, now).unwrap());
            }
            for d in c.poll(now) {
                small.receive(&d, now).unwrap();
            }
        }
        assert_eq!(upserts(&ev).len(), n as usize);
        assert_eq!(
            ev.last(),
            Some(&SyncEvent::BulkEnd {
                sent: n + 1,
                received: n,
                complete: false
            })
        );
        assert!(!c.bulk_complete());
        assert!(small.needs_resync());
    }

    #[test]
    fn bulk_requests_repeat_until_the_copy_begins() {
        let (mut a, mut b) = (channel(A_EPOCH), channel(B_EPOCH));
        b.request_bulk();
        let first = b.poll(0);
        assert_eq!(kinds(&first), vec![Kind::Heartbeat, Kind::BulkRequest]);
        assert!(b.poll(50).is_empty());
        assert_eq!(
            kinds(&b.poll(100)),
            vec![Kind::Heartbeat, Kind::BulkRequest]
        );
        let mut ev = Vec::new();
        for d in &first {
            ev.extend(a.receive(d, 100).unwrap());
        }
        assert_eq!(ev.last(), Some(&SyncEvent::BulkRequested));
        a.begin_bulk(0).unwrap();
        a.end_bulk().unwrap();
        for d in a.poll(100) {
            b.receive(&d, 100).unwrap();
        }
        assert!(!b.bulk_requested());
        assert_eq!(kinds(&b.poll(200)), vec![Kind::Heartbeat]);
        assert_eq!(b.counters().tx_bulk_requests, 2);
    }

    #[test]
    fn counters_are_named_once_each() {
        let c = SyncCounters {
            rx_forged: 7,
            ..SyncCounters::default()
        };
        let named = c.named();
        let mut names: Vec<_> = named.iter().map(|(n, _)| *n).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SyncCounters::COUNT);
        assert!(named.contains(&("rx_forged", 7)));
    }

    proptest::proptest! {
        /// Authentic messages with any header and body (as a peer holding the key could
        /// send) and any interleaving of the caller's calls: no panic, no overflow, and
        /// the channel's own output always decodes and stays within its window.
        #[test]
        fn any_authentic_sequence_keeps_the_channel_sound(
            frames in proptest::collection::vec(
                (1..=4u8, 0..4u64, 0..12u64, 0..12u64, proptest::bool::ANY, 0..16u8,
                 proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80)),
                0..40,
            )
        ) {
            let config = SyncConfig { window: 3, ..SyncConfig::default() };
            let mut ch = SyncChannel::new(2, key(), config);
            let mut now = 0;
            for (i, (kind, epoch, seq, ack, ours, flags, body)) in frames.into_iter().enumerate() {
                let _ = ch.delete(flow(i as u32));
                let header = Header {
                    epoch: if flags & 8 != 0 { u64::MAX - epoch } else { epoch },
                    seq: if flags & 4 != 0 { u64::MAX - seq } else { seq },
                    ack,
                    ack_epoch: if ours { 2 } else { epoch },
                };
                let kind = Kind::from_u8(kind).unwrap();
                let bytes = wire::seal(kind, &header, &body, &key()).unwrap();
                let _ = ch.receive(&bytes, now);
                if flags & 1 != 0 {
                    let _ = ch.begin_bulk(7);
                }
                if flags & 2 != 0 {
                    let _ = ch.end_bulk();
                }
                now += u64::from(flags) * 9;
                for d in ch.poll(now) {
                    proptest::prop_assert!(SyncMessage::decode(&d, &key()).is_ok());
                }
                let lag = ch.lag(now);
                proptest::prop_assert!(lag.unacked_messages <= 3);
            }
        }
    }

    /// A deterministic pseudo-random source (xorshift64*): the same run every time.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// One direction of a bad link: loses `loss_pct` percent, delays each datagram by up
    /// to `max_delay` ms (so they overtake each other) and sometimes duplicates one.
    struct Link {
        loss_pct: u64,
        max_delay: u64,
        in_flight: Vec<(u64, Vec<u8>)>,
        sent: u64,
        lost: u64,
    }

    impl Link {
        fn new(loss_pct: u64, max_delay: u64) -> Link {
            Link {
                loss_pct,
                max_delay,
                in_flight: Vec::new(),
                sent: 0,
                lost: 0,
            }
        }

        fn send(&mut self, rng: &mut Rng, now: u64, d: Vec<u8>) {
            self.sent += 1;
            if rng.below(100) < self.loss_pct {
                self.lost += 1;
                return;
            }
            if rng.below(100) < 3 {
                let at = now + rng.below(self.max_delay + 1);
                self.in_flight.push((at, d.clone()));
            }
            let at = now + rng.below(self.max_delay + 1);
            self.in_flight.push((at, d));
        }

        /// What arrives by `now`, in a shuffled order.
        fn arrivals(&mut self, rng: &mut Rng, now: u64) -> Vec<Vec<u8>> {
            let (due, later): (Vec<_>, Vec<_>) =
                self.in_flight.drain(..).partition(|(at, _)| *at <= now);
            self.in_flight = later;
            let mut due: Vec<_> = due.into_iter().map(|(_, d)| d).collect();
            for i in (1..due.len()).rev() {
                let j = rng.below(i as u64 + 1) as usize;
                due.swap(i, j);
            }
            due
        }
    }

    /// Takes what arrived, keeping delivered records and checking no refusal is anything a
    /// bad link explains.
    fn arrive(
        ch: &mut SyncChannel,
        link: &mut Link,
        rng: &mut Rng,
        now: u64,
        got: &mut Vec<SyncEvent>,
    ) {
        for d in link.arrivals(rng, now) {
            match ch.receive(&d, now) {
                Ok(ev) => got.extend(ev),
                Err(RejectReason::Replayed | RejectReason::OutOfOrder { .. }) => {}
                Err(e) => panic!("a lossy link does not explain {e}"),
            }
        }
    }

    #[test]
    fn a_lossy_reordering_link_delivers_everything_once_in_order() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut a, mut b) = (channel(A_EPOCH), channel(B_EPOCH));
        let (mut ab, mut ba) = (Link::new(25, 8), Link::new(25, 8));
        b.request_bulk();
        let (mut got_a, mut got_b) = (Vec::new(), Vec::new());
        let total = 3000;
        let (mut next_a, mut next_b) = (0u32, 100_000u32);
        let mut bulk_sent = false;
        let mut now = 0;
        while now < 60_000 {
            // A streams records in bursts; B sends a few of its own (both ways work). Each
            // starts once it heard the other: what a new peer instance did not acknowledge
            // is dropped, as it gets a bulk copy instead.
            if next_a < total && a.peer().is_some() && rng.below(4) == 0 {
                for _ in 0..rng.below(40) {
                    if next_a < total && a.room() > 0 {
                        a.upsert(&exported(next_a)).unwrap();
                        next_a += 1;
                    }
                }
            }
            if next_b < 100_200 && b.peer().is_some() && rng.below(20) == 0 {
                b.delete(flow(next_b)).unwrap();
                next_b += 1;
            }
            arrive(&mut a, &mut ba, &mut rng, now, &mut got_a);
            arrive(&mut b, &mut ab, &mut rng, now, &mut got_b);
            if !bulk_sent && got_a.contains(&SyncEvent::BulkRequested) {
                a.begin_bulk(0).unwrap();
                a.end_bulk().unwrap();
                bulk_sent = true;
            }
            for d in a.poll(now) {
                ab.send(&mut rng, now, d);
            }
            for d in b.poll(now) {
                ba.send(&mut rng, now, d);
            }
            let done = next_a == total
                && next_b == 100_200
                && a.lag(now).unacked_messages == 0
                && b.lag(now).unacked_messages == 0
                && a.lag(now).queued_records == 0
                && b.lag(now).queued_records == 0;
            if done && b.bulk_complete() {
                break;
            }
            now += 1;
        }
        assert!(
            now < 60_000,
            "not done by {now} ms: {:?} {:?}",
            a.lag(now),
            b.lag(now)
        );
        assert!(ab.lost * 100 >= ab.sent * 20 && ba.lost * 100 >= ba.sent * 20);
        assert_eq!(upserts(&got_b), (0..total).collect::<Vec<_>>());
        let deletes: Vec<_> = got_a
            .iter()
            .filter_map(|e| match e {
                SyncEvent::Delete(k) => Some(*k),
                _ => None,
            })
            .collect();
        assert_eq!(deletes, (100_000..100_200).map(flow).collect::<Vec<_>>());
        assert!(got_b
            .iter()
            .any(|e| matches!(e, SyncEvent::BulkEnd { complete: true, .. })));
        for c in [a.counters(), b.counters()] {
            assert_eq!(
                (c.rx_forged, c.rx_malformed, c.rx_stale, c.rx_lost_messages),
                (0, 0, 0, 0)
            );
            assert_eq!(c.records_dropped_window_full, 0);
            assert_eq!(c.records_dropped_peer_restart, 0);
            assert_eq!(c.peer_epochs, 1);
        }
        assert!(a.counters().tx_retransmits > 0);
        assert!(b.counters().rx_out_of_order > 0);
        assert!(b.counters().rx_replayed > 0);
    }
}
