//! Idle timeouts per connection state.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::state::ConnState;

/// Idle timeouts in seconds, one per connection state: a connection that has seen no packet
/// for its state's timeout (and that nothing references) is reclaimed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timeouts {
    /// TCP, original SYN seen.
    pub tcp_syn_sent: u32,
    /// TCP, reply SYN seen.
    pub tcp_syn_recv: u32,
    /// TCP, handshake done.
    pub tcp_established: u32,
    /// TCP, one FIN seen.
    pub tcp_fin_wait: u32,
    /// TCP, one FIN seen and acknowledged.
    pub tcp_close_wait: u32,
    /// TCP, both FINs seen.
    pub tcp_last_ack: u32,
    /// TCP, both FINs seen and the last acknowledged.
    pub tcp_time_wait: u32,
    /// TCP, after a RST.
    pub tcp_close: u32,
    /// UDP flows.
    pub udp: u32,
    /// ICMP query flows.
    pub icmp: u32,
    /// PAT mappings, counted from the last packet of any of their connections; a mapping
    /// never goes while a connection references it (0: with its last connection).
    pub mapping: u32,
}

impl Default for Timeouts {
    /// The IETF BEHAVE minimums: TCP established 7440 s (RFC 5382 REQ-5: at least 2 h 4 min),
    /// the other TCP states 240 s (RFC 5382: transitory at least 4 min) except after a RST
    /// (10 s), UDP 300 s (RFC 4787 REQ-5: at least 120 s, 300 s recommended), ICMP 60 s
    /// (RFC 5508 REQ-1), and a PAT mapping goes at the first scan after its last reference.
    fn default() -> Self {
        Timeouts {
            tcp_syn_sent: 240,
            tcp_syn_recv: 240,
            tcp_established: 7440,
            tcp_fin_wait: 240,
            tcp_close_wait: 240,
            tcp_last_ack: 240,
            tcp_time_wait: 240,
            tcp_close: 10,
            udp: 300,
            icmp: 60,
            mapping: 0,
        }
    }
}

impl Timeouts {
    /// The idle timeout of a connection in state `s`, in seconds.
    #[inline]
    pub fn for_state(&self, s: ConnState) -> u32 {
        match s {
            ConnState::TcpSynSent => self.tcp_syn_sent,
            ConnState::TcpSynRecv => self.tcp_syn_recv,
            ConnState::TcpEstablished => self.tcp_established,
            ConnState::TcpFinWait => self.tcp_fin_wait,
            ConnState::TcpCloseWait => self.tcp_close_wait,
            ConnState::TcpLastAck => self.tcp_last_ack,
            ConnState::TcpTimeWait => self.tcp_time_wait,
            ConnState::TcpClose => self.tcp_close,
            ConnState::Udp => self.udp,
            ConnState::Icmp => self.icmp,
            ConnState::Mapping => self.mapping,
        }
    }
}

/// Timeouts that a reload can change while workers read them: one atomic per state, so a
/// reader never sees a torn set worse than a mix of old and new values, each valid alone.
#[derive(Debug)]
pub struct SharedTimeouts {
    per_state: [AtomicU32; ConnState::COUNT],
}

impl SharedTimeouts {
    /// Holds `t`.
    pub fn new(t: &Timeouts) -> SharedTimeouts {
        let s = SharedTimeouts {
            per_state: std::array::from_fn(|_| AtomicU32::new(0)),
        };
        s.store(t);
        s
    }

    /// Replaces every timeout with `t`'s.
    pub fn store(&self, t: &Timeouts) {
        for (i, slot) in self.per_state.iter().enumerate() {
            if let Some(s) = u8::try_from(i).ok().and_then(ConnState::from_u8) {
                slot.store(t.for_state(s), Ordering::Relaxed);
            }
        }
    }

    /// The timeout of state `s` now.
    #[inline]
    pub fn for_state(&self, s: ConnState) -> u32 {
        self.per_state
            .get(s as usize)
            .map_or(0, |a| a.load(Ordering::Relaxed))
    }

    /// The current set.
    pub fn load(&self) -> Timeouts {
        let t = |s| self.for_state(s);
        Timeouts {
            tcp_syn_sent: t(ConnState::TcpSynSent),
            tcp_syn_recv: t(ConnState::TcpSynRecv),
            tcp_established: t(ConnState::TcpEstablished),
            tcp_fin_wait: t(ConnState::TcpFinWait),
            tcp_close_wait: t(ConnState::TcpCloseWait),
            tcp_last_ack: t(ConnState::TcpLastAck),
            tcp_time_wait: t(ConnState::TcpTimeWait),
            tcp_close: t(ConnState::TcpClose),
            udp: t(ConnState::Udp),
            icmp: t(ConnState::Icmp),
            mapping: t(ConnState::Mapping),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_behave_minimums() {
        let t = Timeouts::default();
        assert_eq!(t.for_state(ConnState::TcpEstablished), 7440);
        assert!(t.for_state(ConnState::TcpEstablished) >= 2 * 3600 + 4 * 60);
        for s in [
            ConnState::TcpSynSent,
            ConnState::TcpSynRecv,
            ConnState::TcpFinWait,
            ConnState::TcpCloseWait,
            ConnState::TcpLastAck,
            ConnState::TcpTimeWait,
        ] {
            assert_eq!(t.for_state(s), 240, "{s:?}");
        }
        assert_eq!(t.for_state(ConnState::TcpClose), 10);
        assert_eq!(t.for_state(ConnState::Udp), 300);
        assert_eq!(t.for_state(ConnState::Icmp), 60);
        assert_eq!(t.for_state(ConnState::Mapping), 0);
    }

    #[test]
    fn shared_timeouts_round_trip_and_change() {
        let mut t = Timeouts::default();
        let s = SharedTimeouts::new(&t);
        assert_eq!(s.load(), t);
        t.udp = 30;
        t.mapping = 5;
        s.store(&t);
        assert_eq!(s.load(), t);
        assert_eq!(s.for_state(ConnState::Udp), 30);
    }

    #[test]
    fn every_state_reads_its_own_field() {
        let t = Timeouts {
            tcp_syn_sent: 1,
            tcp_syn_recv: 2,
            tcp_established: 3,
            tcp_fin_wait: 4,
            tcp_close_wait: 5,
            tcp_last_ack: 6,
            tcp_time_wait: 7,
            tcp_close: 8,
            udp: 9,
            icmp: 10,
            mapping: 11,
        };
        for v in 0..=10u8 {
            let s = ConnState::from_u8(v);
            assert_eq!(s.map(|s| t.for_state(s)), Some(u32::from(v) + 1));
        }
    }
}
