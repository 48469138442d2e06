//! The control socket's protocol: what a client may ask and how the daemon answers.
//!
//! One request per connection: the client writes one JSON object on one line (`{"cmd":
//! "status"}`), the daemon answers one JSON object (`{"ok": true, "data": ...}` or `{"ok":
//! false, "error": "..."}`) and closes. Requests are untrusted: [`parse_request`] refuses
//! anything but a known request, with unknown fields refused too, and [`Filter::check`]
//! refuses unknown names before the table is walked.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vipgate_nat::ConnState;

/// Longest request line accepted.
pub const REQUEST_MAX: u64 = 64 * 1024;
/// Connections listed per page at most.
pub const PAGE_MAX: usize = 10_000;

/// Which connections a `conns` or `flush` request selects; every given field must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The gateway's public address of the connection (a VIP or PAT address).
    pub vip: Option<Ipv4Addr>,
    /// The internal host's address.
    pub inside: Option<Ipv4Addr>,
    /// The remote (outside) host's address.
    pub outside: Option<Ipv4Addr>,
    /// A port on any side.
    pub port: Option<u16>,
    /// `tcp`, `udp` or `icmp`.
    pub proto: Option<String>,
    /// A state name as `conns` shows it (`established`, `syn_sent`, `udp`, ...).
    pub state: Option<String>,
}

/// A request, as it travels on the socket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Version, uptime, role, workers, ports, rates, table fill.
    Status,
    /// Every counter, summed or per worker.
    Stats {
        /// Also each worker's counters.
        #[serde(default)]
        workers: bool,
    },
    /// Connections: a count or a page.
    Conns {
        /// Which connections.
        #[serde(default)]
        filter: Filter,
        /// Count (by state) instead of listing.
        #[serde(default)]
        count: bool,
        /// Connections per page (100 by default, at most [`PAGE_MAX`]).
        #[serde(default)]
        limit: Option<usize>,
        /// Where the previous page said to continue.
        #[serde(default)]
        after: Option<u32>,
    },
    /// VIPs and what they lead to.
    Vips,
    /// Removes the selected connections.
    Flush {
        /// Which connections.
        #[serde(default)]
        filter: Filter,
        /// Every connection (a flush without a filter must say so).
        #[serde(default)]
        all: bool,
    },
    /// Re-reads the configuration file.
    Reload {
        /// Also remove the connections the new policy no longer covers.
        #[serde(default)]
        flush_removed: bool,
    },
    /// Closes the gate (with HA: leaves the election, priority 0 if master).
    Standby,
    /// Opens the gate (with HA: joins the election again).
    Active,
    /// The election and state sync: role, peer, priority, counters.
    Ha,
    /// Pool backends: weight, state, live connections.
    Backends,
    /// Takes a pool backend out of new-connection assignment; its connections go on.
    Drain {
        /// The pool's name.
        pool: String,
        /// `address:port`, or `address` when only one backend of the pool has it.
        backend: String,
    },
    /// Puts a drained backend back.
    Undrain {
        /// The pool's name.
        pool: String,
        /// As for [`Request::Drain`].
        backend: String,
    },
}

/// A success answer.
pub fn ok(data: Value) -> Value {
    json!({ "ok": true, "data": data })
}

/// A failure answer.
pub fn error(msg: impl Into<String>) -> Value {
    json!({ "ok": false, "error": msg.into() })
}

/// Reads one request line.
///
/// # Errors
/// One line saying what is wrong with it.
pub fn parse_request(line: &[u8]) -> Result<Request, String> {
    if line.len() as u64 > REQUEST_MAX {
        return Err(format!("request longer than {REQUEST_MAX} bytes"));
    }
    serde_json::from_slice::<Request>(line.trim_ascii()).map_err(|e| format!("bad request: {e}"))
}

impl Filter {
    /// Checks the filter's names before a walk, so a typo is an error and not an empty
    /// answer.
    ///
    /// # Errors
    /// The bad name and what is accepted.
    pub fn check(&self) -> Result<(), String> {
        if let Some(p) = &self.proto {
            if !["tcp", "udp", "icmp"].contains(&p.as_str()) {
                return Err(format!("proto {p:?}: expected tcp, udp or icmp"));
            }
        }
        if let Some(s) = &self.state {
            let known: Vec<&str> = (0..ConnState::COUNT as u8)
                .filter_map(ConnState::from_u8)
                .filter(|s| *s != ConnState::Mapping)
                .map(ConnState::name)
                .collect();
            if !known.contains(&s.as_str()) {
                return Err(format!("state {s:?}: expected one of {}", known.join(", ")));
            }
        }
        Ok(())
    }

    /// Whether the filter selects nothing in particular (every connection).
    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn requests_round_trip_and_unknown_fields_are_refused() {
        let r = Request::Conns {
            filter: Filter {
                vip: Some(Ipv4Addr::new(203, 0, 113, 10)),
                port: Some(80),
                ..Filter::default()
            },
            count: false,
            limit: Some(10),
            after: None,
        };
        let text = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Request>(&text).unwrap(), r);
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"cmd":"stats"}"#).unwrap(),
            Request::Stats { workers: false }
        );
        assert!(parse_request(br#"{"cmd":"stats","x":1}"#).is_err());
        assert!(parse_request(br#"{"cmd":"rm -rf"}"#).is_err());
        assert!(parse_request(b"[]").is_err());
        assert!(parse_request(&vec![b' '; 70_000]).is_err());
        assert_eq!(
            parse_request(b" {\"cmd\":\"vips\"}\n").unwrap(),
            Request::Vips
        );
        let typo = Filter {
            state: Some("establihsed".into()),
            ..Filter::default()
        };
        assert!(typo.check().unwrap_err().contains("established"));
        assert!(Filter::default().is_empty() && Filter::default().check().is_ok());
    }
}
