//! Fixtures shared by the sync tests.

use std::net::Ipv4Addr;

use vipgate_nat::engine::Exported;
use vipgate_nat::{ConnRecord, ConnState, FlowKey, Proto};

use super::wire::SyncKey;

/// The key the fixtures are signed with.
pub(crate) const SECRET: &[u8] = b"vipgate-sync-test-key-0123456789";

pub(crate) fn key() -> SyncKey {
    SyncKey::new(SECRET).expect("the test key is long enough")
}

/// A TCP key numbered `n`: distinct numbers give distinct keys.
pub(crate) fn flow(n: u32) -> FlowKey {
    FlowKey {
        src: Ipv4Addr::from(0xc612_0000 | (n >> 16)),
        dst: Ipv4Addr::new(203, 0, 113, 7),
        sport: n as u16,
        dport: 443,
        proto: Proto::Tcp,
    }
}

/// An established inbound connection numbered `n` (its backend is `n`, so tests can tell
/// records apart).
pub(crate) fn exported(n: u32) -> Exported {
    let orig = flow(n);
    Exported {
        record: ConnRecord {
            orig,
            reply: FlowKey {
                src: Ipv4Addr::new(10, 0, 0, 5),
                dst: orig.src,
                sport: 8443,
                dport: orig.sport,
                proto: Proto::Tcp,
            },
            state: ConnState::TcpEstablished,
            flags: 0x04,
            owner: 1,
            mapping: None,
            backend: n,
            idle_secs: 3,
            fin_seen: 0,
        },
        mapping: None,
        peer_mapping: None,
    }
}
