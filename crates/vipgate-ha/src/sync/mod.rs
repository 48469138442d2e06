//! Connection-state sync between the active and the standby box: the active box streams
//! every change of its connection table (and, on request, a bulk copy of all of it) to the
//! standby over UDP on a dedicated link, so the standby can take over without breaking
//! connections.
//!
//! - [`wire`]: the message codec. One UDP datagram per message, at most
//!   [`wire::MAX_DATAGRAM`] bytes, authenticated with HMAC-SHA-256 under a shared key; the
//!   MAC is verified before anything past the framing is read.
//! - [`channel`]: the reliable channel to one peer, a pure state machine (time is an
//!   argument): Data messages numbered per sender instance (epoch), cumulative
//!   acknowledgements, go-back-N retransmission, a bounded window, heartbeats, bulk copy
//!   bookkeeping, and one counter per reason a datagram is refused.
//! - `replay`: the receive side's position in the peer's stream (which instance, how far
//!   in order), which tells new from duplicate, early and stale.
//!
//! Properties the design keeps:
//! - Untrusted bytes never panic, and nothing unauthenticated changes state.
//! - Records are delivered in the order they were queued, each exactly once, per peer
//!   instance; a restarted peer (a newer epoch) is reported, and an older epoch refused.
//! - Whatever cannot be delivered (window full, messages the peer no longer holds) is
//!   counted and reported, so the daemon repairs it with a bulk copy instead of the copies
//!   silently drifting apart.
//!
//! Not protected: a replay of the latest control message (heartbeat, ack) of the current
//! peer instance is taken again, since control messages consume no sequence number; it
//! repeats what the peer said and can at most keep [`channel::SyncChannel::peer_alive`] true
//! for a peer that just died. Failover itself is decided by the election, not by this.

pub mod channel;
mod replay;
pub mod wire;

#[cfg(test)]
mod testing;

pub use channel::{
    BulkProgress, Lag, PeerStatus, RejectReason, SyncChannel, SyncConfig, SyncCounters, SyncEvent,
    WindowFull,
};
pub use wire::{
    Batch, BatchFull, Body, DecodeError, Field, Header, Heartbeat, Kind, Record, Role, SyncKey,
    SyncMessage, MAX_DATAGRAM,
};
