//! The configuration as written: every value in the loosest type that still lets the
//! validator name the key and quote the value back. Numbers are [`Int`] (any `i64`) and
//! addresses are strings so that a negative count or a malformed address reaches the
//! validator, which explains it in the contract's words, instead of failing inside serde
//! with a generic type error. Every key is optional here: the validator says which are
//! required, and what they should hold.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub(crate) workers: Option<RawWorkers>,
    pub(crate) xdp: Option<RawXdp>,
    pub(crate) interfaces: Option<Vec<RawInterface>>,
    pub(crate) nat: Option<RawNat>,
    pub(crate) neighbors: Option<RawNeighbors>,
    pub(crate) icmp: Option<RawIcmp>,
    pub(crate) log: Option<RawLog>,
    pub(crate) control: Option<RawControl>,
    pub(crate) metrics: Option<RawMetrics>,
    pub(crate) events: Option<RawEvents>,
    pub(crate) ha: Option<RawHa>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawWorkers {
    pub(crate) cores: Option<Vec<Int>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawXdp {
    pub(crate) mode: Option<String>,
    pub(crate) batch: Option<Int>,
    pub(crate) frames: Option<Int>,
    pub(crate) frame_size: Option<Int>,
    pub(crate) ring: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawInterface {
    pub(crate) name: Option<String>,
    pub(crate) side: Option<String>,
    pub(crate) address: Option<String>,
    pub(crate) gateway: Option<String>,
    pub(crate) routes: Option<Vec<RawRoute>>,
    pub(crate) virtual_addresses: Option<Vec<String>>,
    pub(crate) source_check: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) prefix: Option<String>,
    pub(crate) via: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNat {
    pub(crate) vips: Option<Vec<String>>,
    pub(crate) capacity: Option<Int>,
    pub(crate) filtering: Option<String>,
    pub(crate) pat_ports: Option<String>,
    pub(crate) pat_quota: Option<Int>,
    pub(crate) frag_entries: Option<Int>,
    pub(crate) frag_timeout: Option<Int>,
    pub(crate) frag_hold: Option<Int>,
    pub(crate) timeouts: Option<RawTimeouts>,
    pub(crate) dnat: Option<Vec<RawDnat>>,
    pub(crate) pools: Option<Vec<RawPool>>,
    pub(crate) pat: Option<Vec<RawPat>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTimeouts {
    pub(crate) tcp_syn_sent: Option<Int>,
    pub(crate) tcp_syn_recv: Option<Int>,
    pub(crate) tcp_established: Option<Int>,
    pub(crate) tcp_fin_wait: Option<Int>,
    pub(crate) tcp_close_wait: Option<Int>,
    pub(crate) tcp_last_ack: Option<Int>,
    pub(crate) tcp_time_wait: Option<Int>,
    pub(crate) tcp_close: Option<Int>,
    pub(crate) udp: Option<Int>,
    pub(crate) icmp: Option<Int>,
    pub(crate) mapping: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDnat {
    pub(crate) vip: Option<String>,
    pub(crate) proto: Option<String>,
    pub(crate) port: Option<RawPorts>,
    pub(crate) to: Option<String>,
    pub(crate) to_port: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub(crate) name: Option<String>,
    pub(crate) vip: Option<String>,
    pub(crate) proto: Option<String>,
    pub(crate) port: Option<Int>,
    pub(crate) table_size: Option<Int>,
    pub(crate) backends: Option<Vec<RawBackend>>,
    pub(crate) when_empty: Option<String>,
    pub(crate) persistence: Option<String>,
    pub(crate) on_backend_down: Option<String>,
    pub(crate) check: Option<RawCheck>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCheck {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) interval_ms: Option<Int>,
    pub(crate) timeout_ms: Option<Int>,
    pub(crate) rise: Option<Int>,
    pub(crate) fall: Option<Int>,
    pub(crate) path: Option<String>,
    pub(crate) status: Option<Int>,
    pub(crate) body: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBackend {
    pub(crate) addr: Option<String>,
    pub(crate) port: Option<Int>,
    pub(crate) weight: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPat {
    pub(crate) from: Option<Vec<String>>,
    pub(crate) to: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawNeighbors {
    pub(crate) capacity: Option<Int>,
    pub(crate) reachable: Option<Int>,
    pub(crate) retry_ms: Option<Int>,
    pub(crate) retries: Option<Int>,
    pub(crate) hold: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIcmp {
    pub(crate) rate: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub(crate) level: Option<String>,
    pub(crate) format: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawControl {
    pub(crate) socket: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub(crate) listen: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEvents {
    pub(crate) file: Option<String>,
    pub(crate) rate: Option<Int>,
    pub(crate) queue: Option<Int>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHa {
    pub(crate) vrid: Option<Int>,
    pub(crate) priority: Option<Int>,
    pub(crate) interface: Option<String>,
    pub(crate) advert_interval_ms: Option<Int>,
    pub(crate) preempt: Option<bool>,
    pub(crate) preempt_delay_ms: Option<Int>,
    pub(crate) peers: Option<Vec<String>>,
    pub(crate) virtual_mac: Option<bool>,
    pub(crate) garp_count: Option<Int>,
    pub(crate) garp_interval_ms: Option<Int>,
    pub(crate) garp_refresh_secs: Option<Int>,
    pub(crate) track_link_penalty: Option<Int>,
    pub(crate) track_pool_penalty: Option<Int>,
    pub(crate) sync: Option<RawSync>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSync {
    pub(crate) interface: Option<String>,
    pub(crate) local: Option<String>,
    pub(crate) peer: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) key_file: Option<String>,
    pub(crate) heartbeat_ms: Option<Int>,
    pub(crate) dead_ms: Option<Int>,
    pub(crate) retransmit_ms: Option<Int>,
    pub(crate) refresh_secs: Option<Int>,
}

/// A DNAT port as written: a number (`80`) or a string holding a number or a range
/// (`"8000-8099"`). An untagged enum would do the same but would turn every mistake into
/// "data did not match any variant", so the visitor below accepts both shapes itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RawPorts {
    Number(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawPorts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortsVisitor;

        impl Visitor<'_> for PortsVisitor {
            type Value = RawPorts;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number or a \"lo-hi\" port range")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawPorts, E> {
                Ok(RawPorts::Number(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawPorts, E> {
                // Anything above i64::MAX is out of range anyway; saturating keeps it so.
                Ok(RawPorts::Number(i64::try_from(v).unwrap_or(i64::MAX)))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawPorts, E> {
                Ok(RawPorts::Text(v.to_string()))
            }

            fn visit_string<E: de::Error>(self, v: String) -> Result<RawPorts, E> {
                Ok(RawPorts::Text(v))
            }
        }

        deserializer.deserialize_any(PortsVisitor)
    }
}

/// An integer as written. The `config` crate would round `1.5` to 2 and read `true` or
/// `"yes"` as 1 for an `i64` field; this accepts integers only, so a typo can't become a
/// different number silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Int(pub(crate) i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IntVisitor;

        impl Visitor<'_> for IntVisitor {
            type Value = Int;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }

        deserializer.deserialize_any(IntVisitor)
    }
}
