//! The command line: `run` and `check` work on a configuration file; every other
//! subcommand talks to a running daemon over its control socket.
//!
//! Exit codes: 0 done; 1 the daemon refused or the work failed; 2 a usage or
//! configuration error; 3 the daemon could not be reached.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::Value;
use vipgate_config::{Config, Control};

use vipgate::protocol::{Filter, Request};

use crate::control::{self, ClientError};

/// Exit code: the daemon refused, or the work failed.
pub(crate) const EXIT_FAILED: u8 = 1;
/// Exit code: bad arguments or configuration.
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit code: no daemon answered on the control socket.
pub(crate) const EXIT_UNREACHABLE: u8 = 3;

/// How long the CLI waits for the daemon's answer (a count over a huge table takes a while).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "vipgate",
    version,
    about = "A user-space NAT/VIP gateway on AF_XDP",
    after_help = "Exit codes: 0 done, 1 refused or failed, 2 bad arguments or configuration, \
                  3 vipgate not reachable on its control socket.\n\
                  Keys of the configuration can be overridden from the environment as \
                  VIPGATE_<SECTION>__<KEY>, e.g. VIPGATE_XDP__MODE=drv."
)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run the gateway until SIGINT or SIGTERM (SIGHUP reloads); prints its counters on exit
    Run {
        /// The configuration file
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a configuration file, and whether this host has its CPUs and interfaces
    /// (exit 2: the file is wrong; 1: the file is right but this host cannot run it)
    Check {
        /// The configuration file
        #[arg(short, long, value_name = "FILE")]
        config: PathBuf,
        /// Check the file only, not this host (for a file meant for another box)
        #[arg(long)]
        no_host: bool,
    },
    /// Version, uptime, role, workers, XDP mode and copy/zero-copy per port, rates, table fill
    Status(Common),
    /// Every counter, summed over workers
    Stats {
        #[command(flatten)]
        common: Common,
        /// One column per worker
        #[arg(long)]
        workers: bool,
    },
    /// List or count connections
    Conns {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only count them (by state)
        #[arg(long)]
        count: bool,
        /// Connections per page, 1 to 10000
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// Continue the listing where a previous page said to
        #[arg(long, value_name = "CURSOR")]
        after: Option<u32>,
    },
    /// VIPs, their rules and pools, with live connections
    Vips(Common),
    /// Remove connections now (a filter, or --all)
    Flush {
        #[command(flatten)]
        common: Common,
        #[command(flatten)]
        filter: FilterArgs,
        /// Every connection
        #[arg(long)]
        all: bool,
    },
    /// Re-read the configuration file and apply its policy (as SIGHUP does)
    Reload {
        #[command(flatten)]
        common: Common,
        /// Also remove connections that the new policy no longer covers
        #[arg(long)]
        flush_removed: bool,
    },
    /// Stop answering for the VIPs and translating (keeps the connection table)
    Standby(Common),
    /// Answer for the VIPs again, announce them with gratuitous ARP and translate
    Active(Common),
    /// High availability: role, peer, priority, advert timing, counters
    Ha(Common),
    /// Pool backends: weight, whether in service, drained, live connections
    Backends(Common),
    /// Give a pool backend no new connections (weight 0); its connections go on
    Drain {
        #[command(flatten)]
        common: Common,
        /// The pool's name
        pool: String,
        /// The backend: ADDRESS:PORT, or ADDRESS when only one backend of the pool has it
        backend: String,
    },
    /// Put a drained backend back into the pool
    Undrain {
        #[command(flatten)]
        common: Common,
        /// The pool's name
        pool: String,
        /// The backend: ADDRESS:PORT, or ADDRESS when only one backend of the pool has it
        backend: String,
    },
}

/// Options of every subcommand that talks to the daemon.
#[derive(Debug, Args)]
pub(crate) struct Common {
    /// Print the daemon's answer as JSON
    #[arg(long)]
    pub(crate) json: bool,
    /// The control socket [default: control.socket of --config, else /run/vipgate/vipgate.sock]
    #[arg(long, value_name = "PATH")]
    pub(crate) socket: Option<PathBuf>,
    /// Find the control socket in this configuration file
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
}

/// Which connections: every option given must match.
#[derive(Debug, Args)]
pub(crate) struct FilterArgs {
    /// The gateway's public address (VIP or PAT address)
    #[arg(long, value_name = "ADDR")]
    vip: Option<Ipv4Addr>,
    /// The internal host's address
    #[arg(long, value_name = "ADDR")]
    inside: Option<Ipv4Addr>,
    /// The outside host's address
    #[arg(long, value_name = "ADDR")]
    outside: Option<Ipv4Addr>,
    /// A port on any side
    #[arg(long)]
    port: Option<u16>,
    /// Protocol
    #[arg(long, value_parser = ["tcp", "udp", "icmp"])]
    proto: Option<String>,
    /// State (syn_sent, syn_recv, established, fin_wait, close_wait, last_ack, time_wait,
    /// close, udp, icmp)
    #[arg(long)]
    state: Option<String>,
}

impl From<FilterArgs> for Filter {
    fn from(f: FilterArgs) -> Filter {
        Filter {
            vip: f.vip,
            inside: f.inside,
            outside: f.outside,
            port: f.port,
            proto: f.proto,
            state: f.state,
        }
    }
}

fn socket_of(c: &Common) -> Result<PathBuf, ExitCode> {
    if let Some(s) = &c.socket {
        return Ok(s.clone());
    }
    match &c.config {
        Some(path) => Config::load(path)
            .map(|cfg| cfg.control.socket)
            .map_err(|e| {
                eprintln!("vipgate: {}: {e}", path.display());
                ExitCode::from(EXIT_USAGE)
            }),
        None => Ok(PathBuf::from(Control::DEFAULT_SOCKET)),
    }
}

/// Runs a client subcommand: sends the request, prints the answer.
pub(crate) fn client(common: &Common, req: Request) -> ExitCode {
    let path = match socket_of(common) {
        Ok(p) => p,
        Err(code) => return code,
    };
    match control::call(&path, &req, ANSWER_TIMEOUT) {
        Ok(data) => {
            if common.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&data).unwrap_or_default()
                );
            } else {
                print!("{}", human(&req, &data));
            }
            ExitCode::SUCCESS
        }
        Err(ClientError::Refused(e)) => {
            eprintln!("vipgate: {e}");
            ExitCode::from(EXIT_FAILED)
        }
        Err(ClientError::Unreachable(e)) => {
            eprintln!("vipgate: {e}");
            ExitCode::from(EXIT_UNREACHABLE)
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Left-aligned columns.
fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|x| x.len())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(x, w)| format!("{x:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// The answer as a person reads it.
// Reading a serde_json `Value` by key gives `Null` for a missing key; it never panics.
#[allow(clippy::indexing_slicing)]
fn human(req: &Request, d: &Value) -> String {
    match req {
        Request::Status => {
            let mut rows = vec![
                vec!["version".into(), s(&d["version"])],
                vec!["uptime".into(), format!("{} s", s(&d["uptime_secs"]))],
                vec!["role".into(), s(&d["role"])],
                vec![
                    "workers".into(),
                    format!("{} on cores {}", s(&d["workers"]), d["cores"]),
                ],
                vec!["xdp mode".into(), s(&d["xdp_mode"])],
                vec![
                    "frames/s".into(),
                    format!(
                        "rx {} tx {}",
                        s(&d["rx_frames_per_sec"]),
                        s(&d["tx_frames_per_sec"])
                    ),
                ],
                vec![
                    "table".into(),
                    format!(
                        "{} of {} entries ({:.1} %)",
                        s(&d["table"]["entries"]),
                        s(&d["table"]["capacity"]),
                        d["table"]["fill_percent"].as_f64().unwrap_or(0.0)
                    ),
                ],
                vec![
                    "policy".into(),
                    format!("generation {}", s(&d["policy_generation"])),
                ],
                vec!["config".into(), s(&d["config"])],
            ];
            for p in d["ports"].as_array().into_iter().flatten() {
                rows.push(vec![
                    "port".into(),
                    format!(
                        "{} queue {} worker {}: {}",
                        s(&p["interface"]),
                        s(&p["queue"]),
                        s(&p["worker"]),
                        s(&p["bind"])
                    ),
                ]);
            }
            table(&rows)
        }
        Request::Stats { workers } => {
            let total = d["total"].as_object().cloned().unwrap_or_default();
            let per: Vec<serde_json::Map<String, Value>> = d["workers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|w| w.as_object().cloned())
                .collect();
            let mut rows = Vec::new();
            if *workers {
                let mut head = vec!["counter".to_string(), "total".to_string()];
                head.extend((0..per.len()).map(|i| format!("w{i}")));
                rows.push(head);
            }
            for (name, v) in &total {
                let mut r = vec![name.clone(), s(v)];
                if *workers {
                    r.extend(per.iter().map(|w| s(&w[name])));
                }
                rows.push(r);
            }
            table(&rows)
        }
        Request::Conns { count: true, .. } => {
            let mut out = format!("{} connections\n", s(&d["count"]));
            for (state, n) in d["by_state"].as_object().into_iter().flatten() {
                out.push_str(&format!("  {state} {}\n", s(n)));
            }
            out
        }
        Request::Conns { .. } => {
            let mut rows = vec![[
                "PROTO", "STATE", "DIR", "INSIDE", "PUBLIC", "OUTSIDE", "BACKEND", "IDLE", "WORKER",
            ]
            .map(String::from)
            .to_vec()];
            for c in d["conns"].as_array().into_iter().flatten() {
                rows.push(
                    [
                        "proto",
                        "state",
                        "direction",
                        "inside",
                        "public",
                        "outside",
                        "backend",
                        "idle_secs",
                        "worker",
                    ]
                    .iter()
                    .map(|k| s(&c[*k]))
                    .collect(),
                );
            }
            let mut out = table(&rows);
            if let Some(next) = d["next"].as_u64() {
                out.push_str(&format!("more: --after {next}\n"));
            }
            out
        }
        Request::Vips => {
            let mut out = format!("role {}\n", s(&d["role"]));
            for v in d["vips"].as_array().into_iter().flatten() {
                out.push_str(&format!(
                    "vip {}  {} connections\n",
                    s(&v["vip"]),
                    s(&v["conns"])
                ));
                for r in v["dnat"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "  dnat {} {} -> {}\n",
                        s(&r["proto"]),
                        s(&r["ports"]),
                        s(&r["to"])
                    ));
                }
                for p in v["pools"].as_array().into_iter().flatten() {
                    out.push_str(&format!(
                        "  pool {} {} {}\n",
                        s(&p["name"]),
                        s(&p["proto"]),
                        s(&p["port"])
                    ));
                    for b in p["backends"].as_array().into_iter().flatten() {
                        out.push_str(&format!(
                            "    {} weight {} {} connections\n",
                            s(&b["backend"]),
                            s(&b["weight"]),
                            s(&b["conns"])
                        ));
                    }
                }
            }
            for r in d["pat"].as_array().into_iter().flatten() {
                out.push_str(&format!("pat {} -> {}\n", r["from"], r["to"]));
            }
            out
        }
        Request::Flush { .. } => format!("flushed {} connections\n", s(&d["flushed"])),
        Request::Reload { .. } => format!(
            "reloaded: policy generation {}, {} connections flushed\n",
            s(&d["generation"]),
            s(&d["flushed"])
        ),
        Request::Ha => ha_text(d),
        Request::Backends => {
            const COLUMNS: [&str; 7] = [
                "pool",
                "vip",
                "backend",
                "weight",
                "in_service",
                "drained",
                "conns",
            ];
            let mut rows = vec![COLUMNS.map(String::from).to_vec()];
            for b in d["backends"].as_array().into_iter().flatten() {
                rows.push(COLUMNS.iter().map(|k| s(&b[*k])).collect());
            }
            table(&rows)
        }
        Request::Drain { .. } | Request::Undrain { .. } => format!(
            "{} {} in pool {}: {}\n",
            if d["drained"].as_bool() == Some(true) {
                "drained"
            } else {
                "in service"
            },
            s(&d["backend"]),
            s(&d["pool"]),
            if d["changed"].as_bool() == Some(true) {
                "changed"
            } else {
                "unchanged"
            }
        ),
        Request::Standby | Request::Active => format!(
            "role {}{}\n",
            s(&d["role"]),
            if d["changed"].as_bool() == Some(true) {
                ""
            } else {
                " (unchanged)"
            }
        ),
    }
}

/// `vipgate ha` for people: one line per fact, the counters that are not zero.
fn ha_text(d: &Value) -> String {
    if d["enabled"].as_bool() == Some(false) {
        return "high availability is off (no [ha] section): this box is always active\n".into();
    }
    let mut out = format!(
        "role {}  ({})\nvrid {} on {} from {}  priority {} (configured {})  adverts every {} ms  preempt {}\n",
        s(&d["role"]),
        if d["active"].as_bool() == Some(true) { "active" } else { "standby" },
        s(&d["vrid"]),
        s(&d["interface"]),
        s(&d["address"]),
        s(&d["priority"]),
        s(&d["configured_priority"]),
        s(&d["advert_interval_ms"]),
        s(&d["preempt"]),
    );
    match d["peer"].as_object() {
        Some(p) => out.push_str(&format!(
            "peer {} priority {} adverts every {} ms\n",
            s(&p["address"]),
            s(&p["priority"]),
            s(&p["advert_interval_ms"])
        )),
        None => out.push_str("peer none heard\n"),
    }
    if let Some(t) = d["last_transition"].as_object() {
        out.push_str(&format!(
            "last change {} -> {}: {}\n",
            s(&t["from"]),
            s(&t["to"]),
            s(&t["reason"])
        ));
    }
    if let Some(l) = d["links_down"].as_array().filter(|l| !l.is_empty()) {
        let names: Vec<String> = l.iter().map(s).collect();
        out.push_str(&format!("links down: {}\n", names.join(", ")));
    }
    let sp = &d["advert_spacing_ms"];
    if sp["samples"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "advert spacing ms: p50 {} p99 {} max {} ({} samples)\n",
            s(&sp["p50"]),
            s(&sp["p99"]),
            s(&sp["max"]),
            s(&sp["samples"])
        ));
    }
    if let Some(c) = d["counters"].as_object() {
        for (k, v) in c.iter().filter(|(_, v)| v.as_u64() != Some(0)) {
            out.push_str(&format!("  {k} {v}\n"));
        }
    }
    let sync = &d["sync"];
    if sync.is_object() {
        let peer = &sync["peer"];
        out.push_str(&format!(
            "sync {} -> {} on {}: peer {}{}, ready to preempt {}, bulk copy complete {}\n",
            s(&sync["local"]),
            s(&sync["peer_address"]),
            s(&sync["interface"]),
            if peer["alive"].as_bool() == Some(true) {
                "alive"
            } else {
                "not heard"
            },
            peer["role"]
                .as_str()
                .map(|r| format!(" ({r}, {} entries)", s(&peer["conns"])))
                .unwrap_or_default(),
            s(&sync["ready_to_preempt"]),
            s(&sync["bulk_complete"]),
        ));
        if let Some(b) = sync["bulk_receiving"].as_object() {
            out.push_str(&format!(
                "  receiving a bulk copy: {} of about {}\n",
                s(&b["received"]),
                s(&b["estimate"])
            ));
        }
        if let Some(b) = sync["bulk_sending"].as_object() {
            out.push_str(&format!(
                "  sending a bulk copy: {} records so far\n",
                s(&b["offered"])
            ));
        }
        let lag = &sync["lag"];
        out.push_str(&format!(
            "  unacknowledged: {} messages, {} records; queued {}\n",
            s(&lag["unacked_messages"]),
            s(&lag["unacked_records"]),
            s(&lag["queued_records"])
        ));
        if let Some(c) = sync["counters"].as_object() {
            for (k, v) in c.iter().filter(|(_, v)| v.as_u64() != Some(0)) {
                out.push_str(&format!("  {k} {v}\n"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn config_takes_both_spellings_and_every_subcommand_has_help() {
        let a = Cli::try_parse_from(["vipgate", "run", "--config=x.toml"]).unwrap();
        let b = Cli::try_parse_from(["vipgate", "run", "--config", "x.toml"]).unwrap();
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        for sub in [
            "run", "check", "status", "stats", "conns", "vips", "flush", "reload", "standby",
            "active", "ha", "backends", "drain", "undrain",
        ] {
            let e = Cli::try_parse_from(["vipgate", sub, "--help"]).unwrap_err();
            assert_eq!(e.kind(), clap::error::ErrorKind::DisplayHelp, "{sub}");
        }
        let e = Cli::try_parse_from(["vipgate", "conns", "--proto", "sctp"]).unwrap_err();
        assert_eq!(e.exit_code(), i32::from(EXIT_USAGE));
    }

    #[test]
    fn tables_align() {
        let t = table(&[
            vec!["a".into(), "bb".into()],
            vec!["ccc".into(), "d".into()],
        ]);
        assert_eq!(t, "a    bb\nccc  d\n");
    }
}
