//! Connection-state sync between the active and the standby box.
//!
//! - [`wire`]: the message codec (one authenticated UDP datagram per message).
#[cfg(test)]
mod testing;
pub mod wire;
