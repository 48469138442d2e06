//! vipgate: a user-space NAT/VIP gateway over AF_XDP.
//!
//! `vipgate run --config FILE` runs the gateway; `vipgate check --config FILE` validates a
//! configuration; the other subcommands (`status`, `stats`, `conns`, `vips`, `flush`,
//! `reload`, `standby`, `active`) talk to a running gateway over its control socket.

use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use vipgate_config::{Config, LogFormat};

mod backends;
mod cli;
mod control;
mod daemon;
mod events;
mod gateway;
mod ha;
mod health;
mod io_errors;
mod live;
mod metrics;
mod signal;
mod sync;
mod worker;

use cli::{Cli, Command, EXIT_FAILED, EXIT_USAGE};
use vipgate::protocol::Request;

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        for p in e.problems() {
            eprintln!("vipgate: {}: {p}", path.display());
        }
        ExitCode::from(EXIT_USAGE)
    })
}

fn init_logging(cfg: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colour codes only for a person at a terminal, never into a journal or a file.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false);
    match cfg.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// What `check` can tell about this host beyond the file: CPUs and interfaces.
fn host_problems(cfg: &Config) -> Vec<String> {
    let mut v = Vec::new();
    if let Err(e) = daemon::check_cores(cfg) {
        v.push(e);
    }
    for (i, ifc) in cfg.interfaces.iter().enumerate() {
        if vipgate_io::interface_index(&ifc.name).is_err() {
            v.push(format!(
                "interfaces[{i}].name: {:?} does not exist on this host (in this network namespace)",
                ifc.name
            ));
        }
    }
    if let Some(sync) = cfg.ha.as_ref().and_then(|h| h.sync.as_ref()) {
        if let Err(e) = sync.key.read() {
            v.push(e);
        }
        if vipgate_io::interface_index(&sync.interface).is_err() {
            v.push(format!(
                "ha.sync.interface: {:?} does not exist on this host (in this network namespace)",
                sync.interface
            ));
        }
    }
    v
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, no_host } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let problems = if no_host {
                Vec::new()
            } else {
                host_problems(&cfg)
            };
            if problems.is_empty() {
                println!("ok");
                ExitCode::SUCCESS
            } else {
                for p in problems {
                    eprintln!("vipgate: {}: {p}", config.display());
                }
                ExitCode::from(EXIT_FAILED)
            }
        }
        Command::Run { config } => {
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg);
            match daemon::run(cfg, &config) {
                Ok(totals) => {
                    for (name, v) in totals {
                        println!("counter {name} {v}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("vipgate: {e}");
                    ExitCode::from(EXIT_FAILED)
                }
            }
        }
        Command::Status(c) => cli::client(&c, Request::Status),
        Command::Stats { common, workers } => cli::client(&common, Request::Stats { workers }),
        Command::Conns {
            common,
            filter,
            count,
            limit,
            after,
        } => cli::client(
            &common,
            Request::Conns {
                filter: filter.into(),
                count,
                limit: usize::try_from(limit).ok(),
                after,
            },
        ),
        Command::Vips(c) => cli::client(&c, Request::Vips),
        Command::Flush {
            common,
            filter,
            all,
        } => cli::client(
            &common,
            Request::Flush {
                filter: filter.into(),
                all,
            },
        ),
        Command::Reload {
            common,
            flush_removed,
        } => cli::client(&common, Request::Reload { flush_removed }),
        Command::Standby(c) => cli::client(&c, Request::Standby),
        Command::Active(c) => cli::client(&c, Request::Active),
        Command::Ha(c) => cli::client(&c, Request::Ha),
        Command::Backends(c) => cli::client(&c, Request::Backends),
        Command::Drain {
            common,
            pool,
            backend,
        } => cli::client(&common, Request::Drain { pool, backend }),
        Command::Undrain {
            common,
            pool,
            backend,
        } => cli::client(&common, Request::Undrain { pool, backend }),
    }
}
