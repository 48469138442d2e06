//! The NAT event log (RFC 6888 REQ-12), `events.file`: one line per mapping or connection
//! created or deleted, with the time, protocol and the inside, public and outside endpoints,
//! so an operator can say which internal host held a public address and port at a time.
//!
//! Workers only push events into their bounded queues (a full queue drops and counts
//! `events_lost`); this module's thread drains them, formats and writes, at most
//! `events.rate` lines a second (the rest counted as `event_log_dropped`), so neither a slow
//! disk nor a flood of connections can hold a worker up.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_queue::ArrayQueue;
use vipgate_nat::engine::{ConnEvent, Direction, Endpoints};
use vipgate_nat::{ConnRecord, Engine};

use crate::gateway::proto_name;

/// How often the writer drains the workers' queues.
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// How often written lines reach the file at the latest.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// What the writer did, for `stats`, metrics and the exit summary.
#[derive(Debug, Default)]
pub(crate) struct EventLogCounters {
    /// Lines written.
    pub(crate) written: AtomicU64,
    /// Events over the rate, not written.
    pub(crate) dropped: AtomicU64,
    /// Write errors (the line is lost; the writer goes on).
    pub(crate) errors: AtomicU64,
}

/// Opens `path` for appending (created 0640 if missing).
///
/// # Errors
/// One line naming `events.file`.
pub(crate) fn open(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| format!("events.file: {}: {e}", path.display()))
}

/// Where the writer takes events from.
pub(crate) enum Source<'a> {
    /// The workers' queues, when nothing else reads them.
    Workers(u16),
    /// The queue the state-sync thread, the queues' reader then, forwards them to.
    Forwarded(&'a ArrayQueue<ConnEvent>),
}

/// Drains `source` into `file` until `stop` is set, then drains once more.
pub(crate) fn run(
    engine: &Engine,
    source: &Source<'_>,
    file: File,
    rate: u32,
    counters: &EventLogCounters,
    stop: &AtomicBool,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, file);
    let mut bucket = Bucket::new(rate);
    let started = Instant::now();
    let mut last_flush = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        let wall = SystemTime::now();
        let now_s = u32::try_from(started.elapsed().as_secs()).unwrap_or(u32::MAX);
        let mut each = |e: ConnEvent| {
            let rec = match e {
                // One already gone has its deletion logged with the same endpoints.
                ConnEvent::Created(id) => engine.export(id, now_s).map(|ex| ("created", ex.record)),
                ConnEvent::Deleted(rec) => Some(("deleted", rec)),
                ConnEvent::Updated(..) => None,
            };
            let Some((what, rec)) = rec else { return };
            if !bucket.take(Instant::now()) {
                counters.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            match writeln!(out, "{}", line(wall, what, &rec)) {
                Ok(()) => counters.written.fetch_add(1, Ordering::Relaxed),
                Err(_) => counters.errors.fetch_add(1, Ordering::Relaxed),
            };
        };
        match source {
            Source::Workers(workers) => {
                for w in 0..*workers {
                    engine.drain_events(w, &mut each);
                }
            }
            Source::Forwarded(q) => {
                while let Some(e) = q.pop() {
                    each(e);
                }
            }
        }
        if stopping || last_flush.elapsed() >= FLUSH_EVERY {
            if let Err(e) = out.flush() {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "event log: flush failed");
            }
            last_flush = Instant::now();
        }
        if stopping {
            return;
        }
        std::thread::sleep(DRAIN_EVERY);
    }
}

/// A token bucket of `rate` lines a second, bursts of one second's worth.
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Bucket {
        Bucket {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// One line: `TIME created|deleted conn|mapping PROTO inside=A:P public=A:P outside=A:P`
/// (no `outside` for a mapping; `direction` for a connection).
fn line(wall: SystemTime, what: &str, r: &ConnRecord) -> String {
    let e = Endpoints::of(r);
    let ep = |(a, p): (std::net::Ipv4Addr, u16)| format!("{a}:{p}");
    let proto = proto_name(r.orig.proto);
    match (e.direction, e.outside) {
        (Direction::Mapping, _) | (_, None) => format!(
            "{} {what} mapping {proto} inside={} public={}",
            rfc3339(wall),
            ep(e.inside),
            ep(e.public)
        ),
        (d, Some(outside)) => format!(
            "{} {what} conn {proto} {} inside={} public={} outside={}",
            rfc3339(wall),
            d.name(),
            ep(e.inside),
            ep(e.public),
            ep(outside)
        ),
    }
}

/// `2026-12-03T17:31:08.123Z`.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Year, month, day of a day count since 1970-01-01 (H. Hinnant's civil_from_days).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Writes one line directly (for tests of the format).
#[cfg(test)]
fn format_for_test(secs: u64, what: &str, r: &ConnRecord) -> String {
    line(UNIX_EPOCH + Duration::from_secs(secs), what, r)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::Ipv4Addr;

    use vipgate_nat::engine::conn_flags;
    use vipgate_nat::{ConnState, FlowKey, Proto};

    use super::*;

    fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> FlowKey {
        FlowKey {
            src: Ipv4Addr::from(src),
            dst: Ipv4Addr::from(dst),
            sport,
            dport,
            proto: Proto::Udp,
        }
    }

    fn record(orig: FlowKey, reply: FlowKey, state: ConnState, flags: u8) -> ConnRecord {
        ConnRecord {
            orig,
            reply,
            state,
            flags,
            owner: 0,
            mapping: None,
            backend: u32::MAX,
            idle_secs: 0,
            fin_seen: 0,
        }
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_796_318_668_123);
        assert_eq!(rfc3339(t), "2026-12-03T17:24:28.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn lines_name_inside_public_and_outside() {
        let out = record(
            key([198, 18, 0, 10], 4000, [198, 51, 100, 7], 53),
            key([198, 51, 100, 7], 53, [203, 0, 113, 10], 4000),
            ConnState::Udp,
            conn_flags::ORIG_IN_PRIVATE | conn_flags::SNAT,
        );
        assert_eq!(
            format_for_test(0, "created", &out),
            "1970-01-01T00:00:00.000Z created conn udp outbound inside=198.18.0.10:4000 \
             public=203.0.113.10:4000 outside=198.51.100.7:53"
        );
        let mapping = record(
            key([198, 18, 0, 10], 4000, [0, 0, 0, 0], 0),
            key([0, 0, 0, 0], 0, [203, 0, 113, 10], 4000),
            ConnState::Mapping,
            0,
        );
        assert_eq!(
            format_for_test(0, "deleted", &mapping),
            "1970-01-01T00:00:00.000Z deleted mapping udp inside=198.18.0.10:4000 \
             public=203.0.113.10:4000"
        );
    }

    #[test]
    fn the_bucket_holds_the_rate() {
        let mut b = Bucket::new(10);
        let t = Instant::now();
        let first: usize = (0..100).filter(|_| b.take(t)).count();
        assert_eq!(first, 10);
        assert!(b.take(t + Duration::from_millis(150)));
        assert!(!b.take(t + Duration::from_millis(150)));
    }
}
