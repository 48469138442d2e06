//! Frame views and in-place rewrites for vipgate, on top of etherparse.
//!
//! - [`frame`]: parse a received Ethernet frame (with or without one VLAN tag) into a checked
//!   [`frame::Layout`] of IPv4 and its transport header, or recognise ARP, IPv6 and others.
//! - [`rewrite`]: NAT rewrites in place with incremental checksums (RFC 1624).
//! - [`arp`]: ARP parse and build (replies, requests, gratuitous ARP).
//! - [`checksum`]: the Internet checksum, full and incremental.

pub mod arp;
pub mod checksum;
pub mod frame;
pub mod rewrite;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use frame::{parse, Layout, ParseError, Parsed, Transport};
pub use rewrite::{RewriteError, Tuple};
