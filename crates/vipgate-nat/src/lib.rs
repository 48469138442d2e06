//! The translation engine of vipgate: connection table, flow keys, protocol state and timeouts,
//! PAT port allocation, DNAT/PAT policy and translation, Maglev backend selection.
//!
//! Pure: no I/O, no threads of its own. Frames and the current time go in, decisions and
//! rewritten frames come out.

pub mod key;

pub use key::{FlowKey, Proto};

/// Which network a port faces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Side {
    /// The public network: clients and the internet, where VIPs live.
    Public = 0,
    /// The private network: internal hosts and backends.
    Private = 1,
}
