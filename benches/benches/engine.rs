//! Criterion benchmarks of the NAT engine: established flows, new connections, and one
//! shared engine on one and two threads. Every benchmark reports frames (or connections)
//! per second; docs/BENCHMARKS.md has the commands, the results and their reading.
//!
//! Frames are copied from a prepared trace into an RX ring before the engine sees them (see
//! the `vipgate_benches` crate documentation): that copy stands for the NIC's DMA and is
//! part of every number.
//!
//! `VIPGATE_BENCH_THP=1` asks for transparent huge pages on every allocation of 4 MiB or
//! more (the connection table, the traces): an experiment that shows what huge pages would
//! give the engine. Off by default, so the numbers are those of the engine as it allocates.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::hint::black_box;
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use vipgate_benches::{
    client_syn, internal_syn, open_flows, pat_config, pool_config, static_config, Replay, Trace,
    BATCH,
};
use vipgate_nat::engine::{Engine, Worker};
use vipgate_nat::policy::NatConfig;
use vipgate_nat::Side;

const SEED: u64 = 0x7669_7067_6174_6501;

/// Blocks checked frame by frame (verdict and checksums) before each timed run.
const CHECK_BLOCKS: usize = 64;

/// Builds an engine whose `flows` DNAT connections are established, in a table of twice
/// that capacity (a deployment sized with headroom), and a replay of `packets` data segments
/// of them in random order, checked frame by frame.
fn established_setup(flows: u32, packets: usize) -> (Engine, Worker, Replay) {
    let engine = Engine::new(pool_config(2 * flows, 1)).expect("engine");
    let mut w = engine.worker(0);
    let open = open_flows(&engine, &mut w, 0, flows, 1).expect("opening flows");
    let trace = Trace::established(&open, packets, SEED).expect("trace");
    let mut r = Replay::new(trace, 2);
    r.checked(&engine, &mut w, CHECK_BLOCKS)
        .expect("replay check");
    (engine, w, r)
}

/// Panics unless every frame sent since `forwarded_before` was forwarded.
fn assert_all_forwarded(w: &Worker, forwarded_before: u64, sent: u64) {
    assert_eq!(
        w.counters.total_drops(),
        0,
        "drops: {:?}",
        w.counters.named()
    );
    assert_eq!(w.counters.forwarded - forwarded_before, sent);
}

/// How the established-flow benchmarks feed the engine.
#[derive(Clone, Copy)]
enum How {
    /// [`Replay::batch`]: copy a block, [`Engine::process_batch`].
    Batch,
    /// [`Replay::single`]: copy a block, [`Engine::process`] per frame.
    Single,
    /// [`Replay::copy_only`]: the copy alone, no engine.
    CopyOnly,
}

fn established(c: &mut Criterion) {
    let mut g = c.benchmark_group("established");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    // 1k flows: 64 packets of each in the trace. 1M flows: 4 of each, so a flow's lines are
    // long evicted when it comes round again, as with real traffic at that count.
    // `1k/copy_only` times the RX copy alone, to read the engine's share of the others.
    for (name, flows, packets, single) in [
        ("1k", 1_000, 1 << 16, true),
        ("1M", 1_000_000, 1 << 22, false),
    ] {
        // Set up on first use only, so that a filtered run (`cargo bench -- 1k`) skips it.
        let mut setup: Option<(Engine, Worker, Replay)> = None;
        let mut run = |b: &mut criterion::Bencher<'_>, how: How| {
            let (engine, w, r) = setup.get_or_insert_with(|| established_setup(flows, packets));
            let (fwd, sent) = (w.counters.forwarded, r.sent());
            match how {
                How::Batch => b.iter(|| black_box(r.batch(engine, w))),
                How::Single => b.iter(|| black_box(r.single(engine, w))),
                How::CopyOnly => {
                    b.iter(|| black_box(r.copy_only()));
                    return;
                }
            }
            assert_all_forwarded(w, fwd, r.sent() - sent);
            assert_eq!(engine.table().len(), flows);
        };
        g.bench_function(name, |b| run(b, How::Batch));
        if single {
            g.bench_function(format!("{name}/single"), |b| run(b, How::Single));
            g.bench_function(format!("{name}/copy_only"), |b| run(b, How::CopyOnly));
        }
    }
    g.finish();
}

/// New connections per timed iteration: each iteration is a fresh engine fed this many SYNs.
const NEW_CONNS: u32 = 1 << 18;
/// Capacity of those engines: four times the connections (PAT: twice the connections and
/// mappings), so the table never fills.
const NEW_CONNS_CAPACITY: u32 = 1 << 20;

/// Sends the replay's trace through a fresh engine per iteration; only the sending is timed.
fn fresh_engines(config: &NatConfig, r: &mut Replay, iters: u64, mappings: bool) -> Duration {
    let mut total = Duration::ZERO;
    let (blocks, n) = (r.trace().blocks(), r.trace().frames() as u64);
    for _ in 0..iters {
        let engine = Engine::new(config.clone()).expect("engine");
        let mut w = engine.worker(0);
        r.rewind(1);
        let start = Instant::now();
        for _ in 0..blocks {
            black_box(r.batch(&engine, &mut w));
        }
        total += start.elapsed();
        assert_eq!(w.counters.conns_created, n, "{:?}", w.counters.named());
        assert_eq!(w.counters.mappings_created, if mappings { n } else { 0 });
        assert_all_forwarded(&w, 0, n);
    }
    total
}

fn new_conns(c: &mut Criterion) {
    let mut g = c.benchmark_group("new_conns");
    g.throughput(Throughput::Elements(u64::from(NEW_CONNS)));
    g.sample_size(10);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    type Case = (&'static str, fn() -> NatConfig, bool);
    let cases: [Case; 3] = [
        ("dnat", || static_config(NEW_CONNS_CAPACITY), false),
        ("pool", || pool_config(NEW_CONNS_CAPACITY, 1), false),
        ("pat", || pat_config(NEW_CONNS_CAPACITY), true),
    ];
    for (name, config, mappings) in cases {
        let mut setup: Option<(NatConfig, Replay)> = None;
        g.bench_function(name, |b| {
            let (config, r) = setup.get_or_insert_with(|| {
                let config = config();
                let trace = if mappings {
                    Trace::from_fn(NEW_CONNS, Side::Private, internal_syn)
                } else {
                    Trace::from_fn(NEW_CONNS, Side::Public, client_syn)
                };
                let mut r = Replay::new(trace.expect("trace"), 1);
                // Once checked frame by frame, so the timed runs are known to do the work.
                let engine = Engine::new(config.clone()).expect("engine");
                let mut w = engine.worker(0);
                let blocks = r.trace().blocks();
                r.checked(&engine, &mut w, blocks).expect("replay check");
                (config, r)
            });
            b.iter_custom(|iters| fresh_engines(config, r, iters, mappings))
        });
    }
    g.finish();
}

/// Established flows per thread in the scaling benchmark.
const SCALING_FLOWS: u32 = 1 << 16;
/// Blocks of [`BATCH`] frames each thread sends per iteration.
const SCALING_BLOCKS: u64 = 1024;

/// One thread's worker and traffic, on cache lines of its own (aligned and sized to 128
/// bytes, since the adjacent-line prefetcher pairs lines), as each worker's state is in the
/// gateway: no line written by one thread is read by the other.
#[repr(align(128))]
struct Lane {
    w: Worker,
    r: Replay,
}

/// Nanoseconds the calling thread has spent on a CPU and waiting in a run queue for one
/// (Linux's /proc/thread-self/schedstat); `None` where that is not available.
fn sched_ns() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let mut fields = s.split_whitespace().map(|f| f.parse::<u64>().ok());
    Some((fields.next()??, fields.next()??))
}

/// Where the lane threads' timed wall time went, summed over every sample: a thread that
/// waited for a CPU (other processes on the machine) makes the scaling ratio about the
/// machine, not the engine.
#[derive(Default)]
struct Sched {
    wall_ns: u64,
    run_ns: u64,
    wait_ns: u64,
}

impl Sched {
    fn report(&self, name: &str, threads: u64) {
        if self.wall_ns == 0 {
            return;
        }
        let share = |ns: u64| 100.0 * ns as f64 / (self.wall_ns * threads) as f64;
        eprintln!(
            "scaling/{name}: lane threads on a CPU {:.1} % of the timed wall time, waiting \
             in a run queue for one {:.1} % (/proc/thread-self/schedstat)",
            share(self.run_ns),
            share(self.wait_ns)
        );
    }
}

/// Runs `lanes` on a thread each, `blocks` blocks per lane; the wall time from the common
/// start to the last thread's end. Adds the threads' CPU and run-queue time to `sched`.
fn run_lanes(engine: &Engine, lanes: &mut [Lane], blocks: u64, sched: &mut Sched) -> Duration {
    let barrier = Barrier::new(lanes.len() + 1);
    thread::scope(|s| {
        let handles: Vec<_> = lanes
            .iter_mut()
            .map(|lane| {
                let barrier = &barrier;
                s.spawn(move || {
                    let before = sched_ns();
                    barrier.wait();
                    for _ in 0..blocks {
                        black_box(lane.r.batch(engine, &mut lane.w));
                    }
                    before.zip(sched_ns())
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        let spent: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("lane thread"))
            .collect();
        let wall = start.elapsed();
        sched.wall_ns += wall.as_nanos() as u64;
        for ((run0, wait0), (run1, wait1)) in spent.into_iter().flatten() {
            sched.run_ns += run1.saturating_sub(run0);
            sched.wait_ns += wait1.saturating_sub(wait0);
        }
        wall
    })
}

fn scaling(c: &mut Criterion) {
    let mut g = c.benchmark_group("scaling");
    g.sample_size(20);
    g.warm_up_time(Duration::from_secs(1));
    g.measurement_time(Duration::from_secs(4));
    let mut setup: Option<Scaling> = None;
    let per_iter = SCALING_BLOCKS * BATCH as u64;
    for (name, threads) in [("1_thread", 1u64), ("2_threads", 2)] {
        g.throughput(Throughput::Elements(threads * per_iter));
        let mut sched = Sched::default();
        g.bench_function(name, |b| {
            let s = setup.get_or_insert_with(scaling_setup);
            let lanes = s.lanes.get_mut(..threads as usize).expect("lanes");
            b.iter_custom(|iters| run_lanes(&s.engine, lanes, iters * SCALING_BLOCKS, &mut sched))
        });
        sched.report(name, threads);
    }
    if let Some(s) = &mut setup {
        paired_ratio(s);
        for (lane, (fwd, sent)) in s.lanes.iter().zip(&s.before) {
            assert_all_forwarded(&lane.w, *fwd, lane.r.sent() - sent);
        }
    }
    g.finish();
}

/// Rounds of the paired comparison, and blocks per thread in each half of a round.
const PAIRED_ROUNDS: usize = 15;
const PAIRED_BLOCKS: u64 = 16384;
/// A round counts as clean when neither half's threads waited for a CPU more than this
/// share of their time.
const CLEAN_WAIT: f64 = 0.02;

/// Median, lowest and highest of `v` (sorted in place); `None` if empty.
fn median_range(v: &mut [f64]) -> Option<(f64, f64, f64)> {
    v.sort_by(f64::total_cmp);
    Some((*v.get(v.len() / 2)?, *v.first()?, *v.last()?))
}

/// The 2-thread/1-thread throughput ratio measured in alternating rounds (one thread, then
/// two, back to back), printed as the median and range over all rounds and over the clean
/// ones (no thread of either half kept waiting for a CPU by other processes). Criterion
/// measures `1_thread` and `2_threads` seconds apart; on a shared machine whose load drifts,
/// pairs taken milliseconds apart, with the run-queue time of each, say more about the
/// engine.
fn paired_ratio(s: &mut Scaling) {
    let mut all = Vec::new();
    let mut clean = Vec::new();
    let mut cpu_ns = [0u64; 2];
    for _ in 0..PAIRED_ROUNDS {
        let mut halves = [Sched::default(), Sched::default()];
        let [s1, s2] = &mut halves;
        let first = s.lanes.get_mut(..1).expect("lane");
        let one = run_lanes(&s.engine, first, PAIRED_BLOCKS, s1);
        let two = run_lanes(&s.engine, &mut s.lanes, PAIRED_BLOCKS, s2);
        // Two threads sent twice the frames.
        let ratio = 2.0 * one.as_secs_f64() / two.as_secs_f64().max(f64::MIN_POSITIVE);
        all.push(ratio);
        let waited = |h: &Sched, threads: u64| {
            h.wait_ns as f64 / (h.wall_ns.max(1) * threads) as f64 > CLEAN_WAIT
        };
        if !waited(s1, 1) && !waited(s2, 2) {
            clean.push(ratio);
        }
        cpu_ns[0] += s1.run_ns;
        cpu_ns[1] += s2.run_ns;
    }
    // CPU time per frame as each thread saw it: equal with one thread and with two means the
    // threads do not slow each other down (no shared line written, no memory bottleneck), so
    // wall-clock ratios below 2 come from CPUs the machine did not give.
    let frames = (PAIRED_ROUNDS as u64 * PAIRED_BLOCKS * BATCH as u64) as f64;
    let per_frame = [cpu_ns[0] as f64 / frames, cpu_ns[1] as f64 / (2.0 * frames)];
    if per_frame[1] > 0.0 {
        eprintln!(
            "scaling: CPU time per frame and thread: {:.1} ns with 1 thread, {:.1} ns with 2 \
             (throughput per CPU second, 2 threads / 1: {:.2})",
            per_frame[0],
            per_frame[1],
            2.0 * per_frame[0] / per_frame[1]
        );
    }
    let n = clean.len();
    if let Some((mid, lo, hi)) = median_range(&mut all) {
        eprintln!(
            "scaling: 2_threads/1_thread throughput in {PAIRED_ROUNDS} alternating rounds: \
             median {mid:.2}, range {lo:.2} - {hi:.2}"
        );
    }
    match median_range(&mut clean) {
        Some((mid, lo, hi)) => eprintln!(
            "scaling: in the {n} rounds where no lane thread waited for a CPU more than \
             {:.0} % of its time: median {mid:.2}, range {lo:.2} - {hi:.2}",
            CLEAN_WAIT * 100.0
        ),
        None => eprintln!("scaling: other processes kept the lane threads waiting in every round"),
    }
}

/// One engine shared by two lanes.
struct Scaling {
    engine: Engine,
    lanes: Vec<Lane>,
    /// Each lane's forwarded and sent counts before the timed runs.
    before: Vec<(u64, u64)>,
}

/// One engine of two workers, each with its own established flows and their traffic.
fn scaling_setup() -> Scaling {
    let engine = Engine::new(pool_config(4 * SCALING_FLOWS, 2)).expect("engine");
    let mut lanes = Vec::new();
    for id in 0..2u16 {
        let mut w = engine.worker(id);
        let first = u32::from(id) * SCALING_FLOWS;
        let flows = open_flows(&engine, &mut w, first, SCALING_FLOWS, 1).expect("flows");
        let packets = 4 * SCALING_FLOWS as usize;
        let trace = Trace::established(&flows, packets, SEED + u64::from(id)).expect("trace");
        let mut r = Replay::new(trace, 2);
        r.checked(&engine, &mut w, CHECK_BLOCKS)
            .expect("replay check");
        lanes.push(Lane { w, r });
    }
    let before = lanes
        .iter()
        .map(|l| (l.w.counters.forwarded, l.r.sent()))
        .collect();
    Scaling {
        engine,
        lanes,
        before,
    }
}

/// The system allocator, advising the kernel to back large blocks with huge pages when
/// asked to (see the crate documentation).
mod thp {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::atomic::{AtomicBool, Ordering};

    /// Blocks from this size on are advised.
    const LARGE: usize = 4 << 20;
    const HUGE_PAGE: usize = 2 << 20;

    static ON: AtomicBool = AtomicBool::new(false);

    /// Turns the advice on if `VIPGATE_BENCH_THP=1`; whether it is on.
    pub(crate) fn init() -> bool {
        let on = std::env::var_os("VIPGATE_BENCH_THP").is_some_and(|v| v == "1");
        ON.store(on, Ordering::Relaxed);
        on
    }

    /// Advises the whole huge pages inside `len` bytes at `p`, before anything touched them.
    fn advise(p: *mut u8, len: usize) {
        if p.is_null() || len < LARGE || !ON.load(Ordering::Relaxed) {
            return;
        }
        let start = (p as usize).next_multiple_of(HUGE_PAGE);
        let end = (p as usize + len) / HUGE_PAGE * HUGE_PAGE;
        if end > start {
            // SAFETY: the range lies inside a block this allocator just handed out; the advice
            // changes how pages are backed, never their contents. A failure only means 4 KiB
            // pages, so its result is ignored.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
            }
        }
    }

    pub(crate) struct Advising;

    // SAFETY: every block comes from `System` with the caller's layout and goes back to it;
    // `advise` only adds a hint on blocks already obtained.
    unsafe impl GlobalAlloc for Advising {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            let p = unsafe { System.alloc(layout) };
            advise(p, layout.size());
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            let p = unsafe { System.alloc_zeroed(layout) };
            advise(p, layout.size());
            p
        }

        unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
            // SAFETY: forwarded with the caller's guarantees.
            unsafe { System.dealloc(p, layout) }
        }

        unsafe fn realloc(&self, p: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: forwarded with the caller's guarantees.
            let q = unsafe { System.realloc(p, layout, new_size) };
            advise(q, new_size);
            q
        }
    }
}

#[global_allocator]
static ALLOC: thp::Advising = thp::Advising;

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = established, new_conns, scaling
}

fn main() {
    if thp::init() {
        eprintln!("VIPGATE_BENCH_THP=1: large allocations advised to use transparent huge pages");
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
