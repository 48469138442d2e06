//! Sync messages come from the network: any bytes give a message or an error, never a panic,
//! whether fed to the decoder or to a channel.
//!
//! Random bytes almost never carry a valid MAC, so most of the input is also framed and
//! signed with the key, as a peer that holds it could send it: that reaches the body parser
//! and the channel's epoch, sequence and acknowledgement logic. Whatever decodes encodes back
//! to the same bytes, and whatever the channel sends back decodes.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use vipgate_ha::sync::wire::{seal, Header, Kind, SyncKey, SyncMessage, MAX_DATAGRAM};
use vipgate_ha::sync::{RejectReason, SyncChannel, SyncConfig};
use vipgate_nat::{FlowKey, Proto};

/// Our epoch; the peer's epochs in the input are small numbers around it.
const EPOCH: u64 = 4;

fuzz_target!(|data: &[u8]| {
    let Ok(key) = SyncKey::new(b"vipgate-fuzz-sync-key-0123456789") else {
        return;
    };
    let config = SyncConfig {
        window: 4,
        ..SyncConfig::default()
    };
    let mut ch = SyncChannel::new(EPOCH, key.clone(), config);
    // Something in flight, so acknowledgements have something to free.
    for n in 0..200u16 {
        let _ = ch.delete(FlowKey {
            src: Ipv4Addr::new(192, 0, 2, 1),
            dst: Ipv4Addr::new(203, 0, 113, 9),
            sport: n,
            dport: 53,
            proto: Proto::Udp,
        });
    }
    let mut now = 0;
    take(&mut ch, &key, data, now);

    // Then as frames: kind, epoch, seq, ack, flags, body length, body.
    let mut rest = data;
    while let Some((&[kind, epoch, seq, ack, flags, len], tail)) = rest.split_first_chunk::<6>() {
        let len = usize::from(len).min(tail.len());
        let (body, tail) = tail.split_at(len);
        rest = tail;
        let Some(kind) = Kind::from_u8(1 + kind % 4) else {
            return;
        };
        let header = Header {
            epoch: u64::from(epoch % 8),
            seq: u64::from(seq),
            ack: u64::from(ack),
            ack_epoch: if flags & 1 != 0 {
                EPOCH
            } else {
                u64::from(flags >> 1)
            },
        };
        let Ok(bytes) = seal(kind, &header, body, &key) else {
            return;
        };
        now += u64::from(flags >> 4) * 10;
        take(&mut ch, &key, &bytes, now);
        if flags & 2 != 0 {
            let _ = ch.begin_bulk(u32::from(seq));
        }
        if flags & 4 != 0 {
            let _ = ch.end_bulk();
        }
        if flags & 8 != 0 {
            ch.request_bulk();
        }
    }
});

/// Decodes `bytes` and hands them to the channel, checking what comes back.
fn take(ch: &mut SyncChannel, key: &SyncKey, bytes: &[u8], now: u64) {
    let decoded = SyncMessage::decode(bytes, key);
    if let Ok(m) = &decoded {
        assert_eq!(
            m.encode(key).as_deref().ok(),
            Some(bytes),
            "decoding is canonical"
        );
    }
    match (ch.receive(bytes, now), decoded) {
        (Err(RejectReason::Forged | RejectReason::Malformed(_)), Ok(_)) => {
            panic!("the channel refused a message that decodes")
        }
        (Ok(_) | Err(RejectReason::Replayed | RejectReason::Stale { .. }), Err(e)) => {
            panic!("the channel took bytes that do not decode: {e}")
        }
        _ => {}
    }
    for d in ch.poll(now) {
        assert!(d.len() <= MAX_DATAGRAM);
        assert!(
            SyncMessage::decode(&d, key).is_ok(),
            "the channel sends what decodes"
        );
    }
    let lag = ch.lag(now);
    assert!(lag.unacked_messages <= ch.config().window);
}
