//! The translation engine of vipgate: connection table, flow keys, protocol state and timeouts,
//! PAT port allocation, DNAT/PAT policy and translation, Maglev backend selection.
//!
//! Pure: no I/O, no threads of its own. Frames and the current time go in, decisions and
//! rewritten frames come out.

pub mod counters;
pub mod engine;
pub mod frag;
pub mod key;
pub mod maglev;
pub mod policy;
pub mod ports;
pub mod state;
pub mod table;
pub mod timeouts;

pub use engine::{Engine, Verdict, Worker};
pub use key::{FlowKey, Proto};
pub use state::{ConnState, Dir};
pub use table::{
    ConnId, ConnRecord, ConnTable, Hit, InsertError, NewConn, ReclaimCursor, TableError,
};
pub use timeouts::Timeouts;

/// Which network a port faces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Side {
    /// The public network: clients and the internet, where VIPs live.
    Public = 0,
    /// The private network: internal hosts and backends.
    Private = 1,
}
