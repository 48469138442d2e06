//! Memory per connection: builds engines of several capacities and prints what the
//! connection table and the PAT port allocator hold, then fills a 1M table with live
//! connections and shows that neither the table's bytes nor the process's resident memory
//! move (the table allocates everything up front).
//!
//! `cargo run -p vipgate-benches --release --bin memory`
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::ExitCode;

use vipgate_benches::{client_syn, open_flows, pat_config, pool_config, Flow};
use vipgate_nat::counters::DropReason;
use vipgate_nat::engine::{Engine, Verdict};
use vipgate_nat::table::ConnTable;
use vipgate_nat::Side;

/// Bytes of a page as /proc/self/statm counts them (4 KiB on x86_64 and aarch64 Linux).
const PAGE: u64 = 4096;

/// Resident pages of this process, from /proc/self/statm (its second field).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * PAGE)
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> ExitCode {
    println!(
        "target: <= 128 B per connection; ConnTable::BYTES_PER_CONN = {}",
        ConnTable::BYTES_PER_CONN
    );
    println!();
    println!(
        "{:>10} {:>14} {:>10} {:>16} {:>16}",
        "capacity", "table bytes", "B/conn", "ports (1 addr)", "ports (16 addrs)"
    );
    for capacity in [1u32 << 10, 1 << 16, 1 << 20, 1 << 22] {
        let dnat = Engine::new(pool_config(capacity, 1)).expect("engine");
        let pat = Engine::new(pat_config(capacity)).expect("engine");
        let table = dnat.table().memory_bytes();
        println!(
            "{:>10} {:>14} {:>10.2} {:>16} {:>16}",
            capacity,
            table,
            table as f64 / f64::from(capacity),
            dnat.ports().memory_bytes(),
            pat.ports().memory_bytes(),
        );
    }
    println!();

    let capacity = 1u32 << 20;
    let engine = Engine::new(pool_config(capacity, 1)).expect("engine");
    let mut w = engine.worker(0);
    // One connection opened before measuring, so the frame builder's buffers exist already.
    let first: Vec<Flow> = open_flows(&engine, &mut w, 0, 1, 1).expect("first flow");
    let table_before = engine.table().memory_bytes();
    let rss_before = resident_bytes();
    let mut refused = 0u64;
    let mut i = 1u32;
    // Every SYN opens one connection until the table is full; the bound keeps the loop finite
    // even if refusals came early.
    while engine.table().len() < capacity && i < capacity + (capacity >> 4) {
        let mut syn = client_syn(i);
        match engine.process(&mut w, &mut syn, Side::Public, 1) {
            Verdict::Forward(Side::Private) => {}
            Verdict::Drop(DropReason::TableFull) => refused += 1,
            v => {
                eprintln!("SYN {i}: unexpected verdict {v:?}");
                return ExitCode::FAILURE;
            }
        }
        i += 1;
    }
    // Past capacity every new connection is refused; established ones keep working.
    let mut extra = client_syn(i);
    let over = engine.process(&mut w, &mut extra, Side::Public, 1);
    let mut data = first.first().expect("flow").orig_frame();
    let old = engine.process(&mut w, &mut data, Side::Public, 2);
    let rss_after = resident_bytes();
    let table_after = engine.table().memory_bytes();
    let len = engine.table().len();

    println!("filling a table of capacity {capacity} with live DNAT connections:");
    println!(
        "  live connections {len} ({:.4} % of capacity), SYNs refused before full {refused}",
        100.0 * f64::from(len) / f64::from(capacity)
    );
    println!("  one more SYN: {over:?}; a segment of the first connection: {old:?}");
    println!(
        "  table bytes  before {table_before} ({:.1} MiB), after {table_after} ({:.1} MiB), \
         {:.2} B/conn",
        mib(table_before as u64),
        mib(table_after as u64),
        table_after as f64 / f64::from(len.max(1))
    );
    match (rss_before, rss_after) {
        (Some(b), Some(a)) => println!(
            "  process RSS  before {:.1} MiB, after {:.1} MiB, change {:+.2} MiB \
             ({:+.2} B per connection inserted)",
            mib(b),
            mib(a),
            (a as f64 - b as f64) / (1024.0 * 1024.0),
            (a as f64 - b as f64) / f64::from(len.max(1))
        ),
        _ => println!("  process RSS: /proc/self/statm not readable"),
    }
    if over != Verdict::Drop(DropReason::TableFull) || old != Verdict::Forward(Side::Private) {
        eprintln!("a full table must refuse new connections and keep the old ones");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
