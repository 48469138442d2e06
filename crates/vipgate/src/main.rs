//! vipgate: a user-space NAT/VIP gateway over AF_XDP.
//!
//! `vipgate run --config FILE` runs the gateway; `vipgate check --config FILE` only validates
//! the configuration.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vipgate_config::Config;

mod daemon;
mod signal;
mod worker;

const USAGE: &str = "usage: vipgate run --config FILE
       vipgate check --config FILE

  run     run the gateway until SIGINT or SIGTERM; prints its counters on exit
  check   validate the configuration and exit (0 if valid, 2 if not)

Any key of the configuration file can be overridden from the environment as
VIPGATE_<SECTION>__<KEY>, e.g. VIPGATE_XDP__MODE=drv.";

enum Command {
    Run(PathBuf),
    Check(PathBuf),
    Help,
}

fn parse_args(args: &[String]) -> Result<Command, String> {
    let mut args = args.iter();
    let cmd = args.next().map(String::as_str);
    if matches!(cmd, Some("-h" | "--help" | "help")) {
        return Ok(Command::Help);
    }
    let mut config = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => {
                config = Some(PathBuf::from(args.next().ok_or("--config needs a file")?));
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match (cmd, config) {
        (Some("run"), Some(c)) => Ok(Command::Run(c)),
        (Some("check"), Some(c)) => Ok(Command::Check(c)),
        (Some("run" | "check"), None) => Err("missing --config FILE".into()),
        (Some(other), _) => Err(format!("unknown command {other:?}")),
        (None, _) => Err("missing command".into()),
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("vipgate: {}: {e}", path.display());
        ExitCode::from(2)
    })
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match parse_args(&args) {
        Ok(Command::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Command::Check(path)) => match load(&path) {
            Ok(_) => {
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Ok(Command::Run(path)) => {
            let cfg = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            init_logging(&cfg.log.level);
            match daemon::run(&cfg) {
                Ok(totals) => {
                    for (name, v) in totals {
                        println!("counter {name} {v}");
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("vipgate: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("vipgate: {e}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}
