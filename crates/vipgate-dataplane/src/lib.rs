//! The per-packet pipeline of a vipgate worker: classify each received frame, answer ARP
//! (proxy ARP for the VIPs) and pings for the gateway, translate IPv4 through the NAT engine,
//! count down the TTL as a router does (answering expiry with ICMP time exceeded), and set
//! the Ethernet header from the neighbor table, which resolves next hops by ARP itself.
//!
//! Pure: frames and time in, frames out; the daemon owns sockets, threads and clocks.

pub mod counters;
pub mod host;
pub mod icmp;
pub mod neighbor;
pub mod pipeline;
pub mod reject;
pub mod route;

pub use counters::DataplaneCounters;
pub use host::{HostFrame, HostPath, Listener};
pub use neighbor::{NeighborConfig, NeighborTable, Resolution};
pub use pipeline::{Action, Dataplane, DataplaneConfig, DataplaneError, Emit, Interface, Pipeline};
pub use route::{NextHop, Route, Routes};
