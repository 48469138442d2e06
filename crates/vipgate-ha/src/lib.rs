//! High availability for a pair of vipgate boxes, as pure state machines: time is passed
//! in and decisions come out, so tests replay any sequence of events at any pace. Sockets,
//! threads and clocks live in the daemon.
//!
//! - [`advert`]: the VRRPv3 advertisement (RFC 5798 section 5), parse and emit.
//! - [`election`]: the VRRPv3 state machine (RFC 5798 section 6.4): who is master.
//! - [`sync`]: connection-state sync, an authenticated reliable stream of table changes.

pub mod advert;
pub mod election;
pub mod sync;
