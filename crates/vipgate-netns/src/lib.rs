//! Test support for vipgate's system tests and lab: network namespaces that remove themselves,
//! veth pairs created directly inside them, processes killed and reaped when their guard
//! goes, threads that run inside a namespace, bounded polling, small raw-socket probes (ICMP
//! echo, ARP, hand-made frames, ICMP errors through `IP_RECVERR`, driver statistics), and the
//! test topology (the lab of scripts/lab.sh) with the gateway as a parameter
//! ([`topology::Gateway`]).
//!
//! Everything here runs as root and only inside namespaces it created: nothing is added to
//! the root namespace. Names carry the process id and a counter, so tests of one or several
//! processes can run in parallel.

pub mod netns;
pub mod pair;
pub mod poll;
pub mod probe;
pub mod topology;

pub use netns::{require_root_and_netns, veth, ChildGuard, Netns, NsThread, TempDir};
pub use poll::{poll_until, try_poll_until};
pub use topology::{Counters, Gateway, Topology, VipgateSpec, XdpMode};
