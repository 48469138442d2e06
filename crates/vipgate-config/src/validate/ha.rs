//! `[ha]` and `[ha.sync]`: the election and state sync with a peer box.

use std::net::{Ipv4Addr, SocketAddrV4};

use super::{err, file_path, ifname, int, parse_addr, required, unicast, Problems, Result};
use crate::raw::{RawHa, RawSync};
use crate::{Ha, Interface, Sync, SyncKeySource};

/// `[ha]` checked against the valid interfaces (`None` when some interface was refused:
/// the checks that name one are skipped then).
pub(super) fn ha(raw: RawHa, interfaces: Option<&[Interface]>, p: &mut Problems) -> Option<Ha> {
    let before = p.count();
    let vrid = p.take(
        required(
            raw.vrid,
            "ha.vrid",
            "expected the virtual router id, 1 to 255, the same on both boxes",
        )
        .and_then(|v| int(Some(v), 0, "ha.vrid", 1, 255)),
    );
    let priority = p.take(int(raw.priority, 100, "ha.priority", 1, 255));
    let advert = p.take(advert_interval(raw.advert_interval_ms));
    let preempt_delay_ms = p.take(int(
        raw.preempt_delay_ms,
        0,
        "ha.preempt_delay_ms",
        0,
        3_600_000,
    ));
    let garp_count = p.take(int(raw.garp_count, 5, "ha.garp_count", 1, 100));
    let garp_interval_ms = p.take(int(
        raw.garp_interval_ms,
        100,
        "ha.garp_interval_ms",
        1,
        10_000,
    ));
    let garp_refresh_secs = p.take(int(
        raw.garp_refresh_secs,
        60,
        "ha.garp_refresh_secs",
        0,
        86_400,
    ));
    let penalty = p.take(int(
        raw.track_link_penalty,
        50,
        "ha.track_link_penalty",
        0,
        254,
    ));
    let pool_penalty = p.take(int(
        raw.track_pool_penalty,
        50,
        "ha.track_pool_penalty",
        0,
        254,
    ));
    let interface = interfaces.and_then(|ifs| p.take(election_interface(raw.interface, ifs)));
    let peers = match (interfaces, interface) {
        (Some(ifs), Some(i)) => p.take(peers(raw.peers.unwrap_or_default(), ifs.get(i))),
        _ => None,
    };
    let sync = raw
        .sync
        .and_then(|s| interfaces.and_then(|ifs| sync(s, ifs, p)));
    if p.count() > before {
        return None;
    }
    Some(Ha {
        vrid: u8::try_from(vrid?).ok()?,
        priority: u8::try_from(priority?).ok()?,
        interface: interface?,
        advert_interval_ms: advert?,
        preempt: raw.preempt.unwrap_or(true),
        preempt_delay_ms: u32::try_from(preempt_delay_ms?).ok()?,
        peers: peers?,
        virtual_mac: raw.virtual_mac.unwrap_or(false),
        garp_count: u32::try_from(garp_count?).ok()?,
        garp_interval_ms: u32::try_from(garp_interval_ms?).ok()?,
        garp_refresh_secs: u32::try_from(garp_refresh_secs?).ok()?,
        track_link_penalty: u8::try_from(penalty?).ok()?,
        track_pool_penalty: u8::try_from(pool_penalty?).ok()?,
        sync,
    })
}

fn advert_interval(v: Option<crate::raw::Int>) -> Result<u32> {
    let key = "ha.advert_interval_ms";
    let ms = int(
        v,
        i64::from(Ha::DEFAULT_ADVERT_INTERVAL_MS),
        key,
        10,
        40_950,
    )?;
    if ms % 10 != 0 {
        return Err(err(
            key,
            format!("{ms} is not a multiple of 10; expected whole centiseconds (VRRPv3 sends the interval in units of 10 ms), e.g. 1000"),
        ));
    }
    u32::try_from(ms).map_err(|_| err(key, format!("{ms} is out of range")))
}

fn election_interface(name: Option<String>, ifs: &[Interface]) -> Result<usize> {
    let key = "ha.interface";
    let names = ifs
        .iter()
        .map(|i| format!("{:?}", i.name))
        .collect::<Vec<_>>()
        .join(", ");
    let name = required(
        name,
        key,
        &format!("expected the data interface the election runs on, one of {names}"),
    )?;
    ifs.iter().position(|i| i.name == name).ok_or_else(|| {
        err(
            key,
            format!("{name:?} is not a data interface; expected one of {names}"),
        )
    })
}

fn peers(raw: Vec<String>, iface: Option<&Interface>) -> Result<Vec<Ipv4Addr>> {
    let Some(iface) = iface else {
        return Ok(Vec::new());
    };
    let mut out = Vec::with_capacity(raw.len());
    for (i, s) in raw.iter().enumerate() {
        let key = format!("ha.peers[{i}]");
        let a = parse_addr(s, &key)?;
        if !iface.net.contains(a) || !unicast(a) || a == iface.addr || out.contains(&a) {
            return Err(err(
                &key,
                format!(
                    "{s:?} is not another box on {}'s segment {}/{}; expected the peer's own \
                     address there, once",
                    iface.name, iface.net.addr, iface.net.len
                ),
            ));
        }
        out.push(a);
    }
    Ok(out)
}

fn sync(raw: RawSync, ifs: &[Interface], p: &mut Problems) -> Option<Sync> {
    let before = p.count();
    let interface = p.take(ifname(raw.interface, "ha.sync.interface").and_then(|n| {
        match ifs.iter().position(|i| i.name == n) {
            Some(i) => Err(err(
                "ha.sync.interface",
                format!(
                    "{n:?} is interfaces[{i}], a data interface owned by AF_XDP; expected a \
                     separate kernel interface for the sync link"
                ),
            )),
            None => Ok(n),
        }
    }));
    let local = p.take(endpoint(raw.local, "ha.sync.local"));
    let peer = p.take(endpoint(raw.peer, "ha.sync.peer"));
    if let (Some(l), Some(r)) = (local, peer) {
        if l.ip() == r.ip() {
            p.push(err(
                "ha.sync.peer",
                format!("{r} has the address of ha.sync.local; expected the peer's address"),
            ));
        }
    }
    let key = p.take(key(raw.key, raw.key_file));
    let heartbeat_ms = p.take(int(
        raw.heartbeat_ms,
        100,
        "ha.sync.heartbeat_ms",
        10,
        60_000,
    ));
    let retransmit_ms = p.take(int(
        raw.retransmit_ms,
        50,
        "ha.sync.retransmit_ms",
        5,
        60_000,
    ));
    let refresh_secs = p.take(int(raw.refresh_secs, 30, "ha.sync.refresh_secs", 0, 86_400));
    let dead_ms = p.take(int(raw.dead_ms, 1000, "ha.sync.dead_ms", 30, 600_000));
    if let (Some(h), Some(d)) = (heartbeat_ms, dead_ms) {
        if d < 3 * h {
            p.push(err(
                "ha.sync.dead_ms",
                format!(
                    "{d} is less than three heartbeats ({h} ms each); expected at least {}",
                    3 * h
                ),
            ));
        }
    }
    if p.count() > before {
        return None;
    }
    Some(Sync {
        interface: interface?,
        local: local?,
        peer: peer?,
        key: key?,
        heartbeat_ms: u32::try_from(heartbeat_ms?).ok()?,
        dead_ms: u32::try_from(dead_ms?).ok()?,
        retransmit_ms: u32::try_from(retransmit_ms?).ok()?,
        refresh_secs: u32::try_from(refresh_secs?).ok()?,
    })
}

/// `a.b.c.d:port`, or `a.b.c.d` for the default port.
fn endpoint(v: Option<String>, key: &str) -> Result<SocketAddrV4> {
    let expected = format!(
        "expected a.b.c.d:port or a.b.c.d (port {}), e.g. \"198.18.9.1:{}\"",
        Ha::DEFAULT_SYNC_PORT,
        Ha::DEFAULT_SYNC_PORT
    );
    let s = required(v, key, &expected)?;
    let a = match s.parse::<SocketAddrV4>() {
        Ok(a) => a,
        Err(_) => match s.parse::<Ipv4Addr>() {
            Ok(ip) => SocketAddrV4::new(ip, Ha::DEFAULT_SYNC_PORT),
            Err(_) => return Err(err(key, format!("{s:?} is not an address; {expected}"))),
        },
    };
    if a.port() == 0 || !unicast(*a.ip()) {
        return Err(err(
            key,
            format!("{s:?} is not a unicast address with a port; {expected}"),
        ));
    }
    Ok(a)
}

/// The key from exactly one of `key` (the text's bytes, checked here) and `key_file` (read
/// on the host: [`SyncKeySource::read`]).
fn key(inline: Option<String>, file: Option<String>) -> Result<SyncKeySource> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(err(
            "ha.sync.key",
            "is set together with ha.sync.key_file; expected one of the two",
        )),
        (None, None) => Err(err(
            "ha.sync.key",
            format!(
                "missing; expected a shared secret of at least {} bytes, the same on both \
                 boxes, as ha.sync.key or in the file ha.sync.key_file",
                SyncKeySource::MIN_LEN
            ),
        )),
        (Some(k), None) if k.len() < SyncKeySource::MIN_LEN => Err(err(
            "ha.sync.key",
            format!(
                "holds {} bytes; expected at least {} (e.g. the output of `openssl rand -hex 32`)",
                k.len(),
                SyncKeySource::MIN_LEN
            ),
        )),
        (Some(k), None) => Ok(SyncKeySource::Inline(k.into_bytes())),
        (None, Some(f)) => Ok(SyncKeySource::File(file_path(
            &f,
            "ha.sync.key_file",
            "/etc/vipgate/sync.key",
        )?)),
    }
}
