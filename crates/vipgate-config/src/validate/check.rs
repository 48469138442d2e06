//! `nat.pools[].check`: health checks of a pool's backends.

use super::{err, int, Problems, Result};
use crate::raw::RawCheck;
use crate::{CheckKind, HealthCheck};

/// The check of pool `i`, its problems kept in `p`.
pub(super) fn check(raw: RawCheck, i: usize, p: &mut Problems) -> Option<HealthCheck> {
    let at = format!("nat.pools[{i}].check");
    let key = |k: &str| format!("{at}.{k}");
    let before = p.count();
    let kind = p.take(kind(&raw, &at));
    let interval_ms = p.take(int(
        raw.interval_ms,
        1000,
        &key("interval_ms"),
        100,
        3_600_000,
    ));
    let timeout_ms = p.take(int(raw.timeout_ms, 1000, &key("timeout_ms"), 10, 60_000));
    let rise = p.take(int(raw.rise, 2, &key("rise"), 1, 100));
    let fall = p.take(int(raw.fall, 3, &key("fall"), 1, 100));
    if let (Some(i), Some(t)) = (interval_ms, timeout_ms) {
        if t > i {
            p.push(err(
                &key("timeout_ms"),
                format!("{t} is longer than interval_ms ({i}); expected at most the interval"),
            ));
        }
    }
    if p.count() > before {
        return None;
    }
    Some(HealthCheck {
        kind: kind?,
        interval_ms: u32::try_from(interval_ms?).ok()?,
        timeout_ms: u32::try_from(timeout_ms?).ok()?,
        rise: u32::try_from(rise?).ok()?,
        fall: u32::try_from(fall?).ok()?,
    })
}

fn kind(raw: &RawCheck, at: &str) -> Result<CheckKind> {
    let k = format!("{at}.type");
    let http_only = |name: &str, set: bool| -> Result<()> {
        if set {
            Err(err(
                &format!("{at}.{name}"),
                "is set, but only an \"http\" check uses it; expected it removed or type = \"http\"",
            ))
        } else {
            Ok(())
        }
    };
    match raw.kind.as_deref() {
        Some("tcp") | Some("icmp") => {
            http_only("path", raw.path.is_some())?;
            http_only("status", raw.status.is_some())?;
            http_only("body", raw.body.is_some())?;
            Ok(if raw.kind.as_deref() == Some("tcp") {
                CheckKind::Tcp
            } else {
                CheckKind::Icmp
            })
        }
        Some("http") => {
            let path = raw.path.clone().unwrap_or_else(|| "/".into());
            if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                return Err(err(
                    &format!("{at}.path"),
                    format!("{path:?} is not a request path; expected one starting with '/', without spaces or control characters"),
                ));
            }
            let status = int(raw.status, 200, &format!("{at}.status"), 100, 599)?;
            Ok(CheckKind::Http {
                path,
                status: u16::try_from(status).unwrap_or(200),
                body: raw.body.clone(),
            })
        }
        Some(other) => Err(err(
            &k,
            format!("{other:?} is not a check; expected \"tcp\", \"http\" or \"icmp\""),
        )),
        None => Err(err(&k, "missing; expected \"tcp\", \"http\" or \"icmp\"")),
    }
}
