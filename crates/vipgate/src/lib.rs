//! The library part of the vipgate daemon: what its control socket accepts, shared by the
//! daemon, its CLI and the fuzz target of that decoder.

pub mod protocol;
