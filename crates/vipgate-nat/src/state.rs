//! Connection states: the direction a packet travels in a connection, and the simplified
//! TCP state machine (conntrack-like, without sequence tracking) that picks the timeout.

/// The direction of a packet relative to the connection it belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Dir {
    /// The direction of the packet that created the connection.
    Orig = 0,
    /// The replies.
    Reply = 1,
}

impl Dir {
    /// The other direction.
    #[inline]
    pub fn opposite(self) -> Dir {
        match self {
            Dir::Orig => Dir::Reply,
            Dir::Reply => Dir::Orig,
        }
    }

    /// This direction's bit in a `fin_seen` mask (1 for `Orig`, 2 for `Reply`).
    #[inline]
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// TCP header flag bits, as in the low byte of the TCP flags field.
pub mod tcp_flags {
    /// No more data from the sender.
    pub const FIN: u8 = 0x01;
    /// Synchronize sequence numbers.
    pub const SYN: u8 = 0x02;
    /// Reset the connection.
    pub const RST: u8 = 0x04;
    /// Push function.
    pub const PSH: u8 = 0x08;
    /// Acknowledgment field significant.
    pub const ACK: u8 = 0x10;
}

/// Whether a TCP segment's flags are a combination TCP sends (the table netfilter's
/// conntrack checks, PSH, ECE and CWR aside): SYN, SYN|ACK, RST, RST|ACK, FIN|ACK and ACK,
/// each with or without URG. Anything else (SYN|FIN, SYN|RST, a FIN without ACK, no flag at
/// all) is a scan or a forgery and must neither open nor move a connection.
#[inline]
pub fn tcp_flags_valid(flags: u8) -> bool {
    use tcp_flags::{ACK, FIN, RST, SYN};
    const URG: u8 = 0x20;
    // FIN, SYN and RST in bits 0..3 and ACK in bit 3: one bit per combination.
    const fn fold(f: u8) -> u32 {
        ((f & 0x7) | ((f & ACK) >> 1)) as u32
    }
    const VALID: u16 = 1 << fold(SYN)
        | 1 << fold(SYN | ACK)
        | 1 << fold(RST)
        | 1 << fold(RST | ACK)
        | 1 << fold(FIN | ACK)
        | 1 << fold(ACK);
    let f = flags & !(URG | tcp_flags::PSH | 0xc0);
    VALID & (1 << fold(f)) != 0
}

/// The state of a connection; it selects the connection's idle timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ConnState {
    /// TCP: the original SYN was seen.
    TcpSynSent = 0,
    /// TCP: the reply SYN (or SYN|ACK) was seen.
    TcpSynRecv = 1,
    /// TCP: the handshake completed.
    TcpEstablished = 2,
    /// TCP: one side sent FIN.
    TcpFinWait = 3,
    /// TCP: one side sent FIN and the other acknowledged it.
    TcpCloseWait = 4,
    /// TCP: both sides sent FIN.
    TcpLastAck = 5,
    /// TCP: both FINs were sent and the last one acknowledged.
    TcpTimeWait = 6,
    /// TCP: reset.
    TcpClose = 7,
    /// UDP flow.
    Udp = 8,
    /// ICMP query (echo) flow.
    Icmp = 9,
    /// A PAT mapping (an endpoint-independent allocation that connections reference).
    Mapping = 10,
}

impl ConnState {
    /// Number of states.
    pub const COUNT: usize = 11;

    /// The state with this wire value (as in [`ConnState`]`as u8`), for state sync.
    pub fn from_u8(v: u8) -> Option<ConnState> {
        Some(match v {
            0 => ConnState::TcpSynSent,
            1 => ConnState::TcpSynRecv,
            2 => ConnState::TcpEstablished,
            3 => ConnState::TcpFinWait,
            4 => ConnState::TcpCloseWait,
            5 => ConnState::TcpLastAck,
            6 => ConnState::TcpTimeWait,
            7 => ConnState::TcpClose,
            8 => ConnState::Udp,
            9 => ConnState::Icmp,
            10 => ConnState::Mapping,
            _ => return None,
        })
    }

    /// The name operators see (CLI, metrics labels).
    pub fn name(self) -> &'static str {
        match self {
            ConnState::TcpSynSent => "syn_sent",
            ConnState::TcpSynRecv => "syn_recv",
            ConnState::TcpEstablished => "established",
            ConnState::TcpFinWait => "fin_wait",
            ConnState::TcpCloseWait => "close_wait",
            ConnState::TcpLastAck => "last_ack",
            ConnState::TcpTimeWait => "time_wait",
            ConnState::TcpClose => "close",
            ConnState::Udp => "udp",
            ConnState::Icmp => "icmp",
            ConnState::Mapping => "mapping",
        }
    }

    /// Whether this is one of the TCP states.
    #[inline]
    pub fn is_tcp(self) -> bool {
        (self as u8) <= ConnState::TcpClose as u8
    }
}

/// Advances the TCP state of a connection for one packet travelling in `dir` with `flags`.
///
/// `fin_seen` holds one bit per direction that has sent a FIN ([`Dir::bit`]); the new mask is
/// returned with the new state. A connection in `TcpFinWait` or `TcpCloseWait` with an empty
/// mask (only a malformed sync record can install one) is taken to have seen one FIN from an
/// unknown side: an ACK alone then moves nothing, and the next FIN leads to `TcpLastAck`.
/// Non-TCP states never change.
pub fn next_tcp_state(cur: ConnState, fin_seen: u8, dir: Dir, flags: u8) -> (ConnState, u8) {
    use tcp_flags::{ACK, FIN, RST, SYN};
    use ConnState::*;

    if !cur.is_tcp() {
        return (cur, fin_seen);
    }
    let syn = flags & SYN != 0;
    let ack = flags & ACK != 0;
    let fin = flags & FIN != 0;
    if flags & RST != 0 {
        return (TcpClose, fin_seen);
    }
    match cur {
        TcpSynSent => {
            if dir == Dir::Reply && syn {
                (TcpSynRecv, fin_seen)
            } else {
                (cur, fin_seen)
            }
        }
        TcpSynRecv | TcpEstablished if fin => on_fin(cur, fin_seen, dir),
        TcpSynRecv if ack && !syn => (TcpEstablished, fin_seen),
        TcpFinWait | TcpCloseWait if fin => on_fin(cur, fin_seen, dir),
        TcpFinWait if ack && fin_seen != 0 && fin_seen & dir.bit() == 0 => (TcpCloseWait, fin_seen),
        TcpLastAck if ack && !fin => (TcpTimeWait, fin_seen),
        TcpTimeWait | TcpClose if dir == Dir::Orig && flags & (SYN | ACK | FIN) == SYN => {
            (TcpSynSent, 0)
        }
        _ => (cur, fin_seen),
    }
}

/// A FIN from `dir`: the first one leads to `TcpFinWait`, the second (from the other side)
/// to `TcpLastAck`; a retransmitted FIN changes nothing.
fn on_fin(cur: ConnState, fin_seen: u8, dir: Dir) -> (ConnState, u8) {
    let unknown_first =
        matches!(cur, ConnState::TcpFinWait | ConnState::TcpCloseWait) && fin_seen == 0;
    let seen = fin_seen | dir.bit();
    if unknown_first || seen == Dir::Orig.bit() | Dir::Reply.bit() {
        (ConnState::TcpLastAck, seen)
    } else if cur == ConnState::TcpCloseWait {
        (cur, seen)
    } else {
        (ConnState::TcpFinWait, seen)
    }
}

#[cfg(test)]
mod tests {
    use super::tcp_flags::*;
    use super::ConnState::*;
    use super::*;

    #[test]
    fn from_u8_roundtrips_every_state() {
        for v in 0..=255u8 {
            match ConnState::from_u8(v) {
                Some(s) => assert_eq!(s as u8, v),
                None => assert!(v > 10, "{v} should be a state"),
            }
        }
        assert!(TcpClose.is_tcp() && TcpSynSent.is_tcp());
        assert!(!Udp.is_tcp() && !Icmp.is_tcp() && !Mapping.is_tcp());
        assert_eq!(Dir::Orig.opposite(), Dir::Reply);
        assert_eq!(Dir::Reply.opposite(), Dir::Orig);
    }

    #[test]
    fn transitions_table() {
        const O: Dir = Dir::Orig;
        const R: Dir = Dir::Reply;
        // (state, fin_seen, dir, flags) -> (state, fin_seen)
        let table: &[(ConnState, u8, Dir, u8, ConnState, u8)] = &[
            // handshake
            (TcpSynSent, 0, R, SYN | ACK, TcpSynRecv, 0),
            (TcpSynSent, 0, R, SYN, TcpSynRecv, 0),
            (TcpSynSent, 0, O, SYN, TcpSynSent, 0),
            (TcpSynSent, 0, R, ACK, TcpSynSent, 0),
            (TcpSynSent, 0, O, ACK, TcpSynSent, 0),
            (TcpSynRecv, 0, O, ACK, TcpEstablished, 0),
            (TcpSynRecv, 0, R, ACK | PSH, TcpEstablished, 0),
            (TcpSynRecv, 0, R, SYN | ACK, TcpSynRecv, 0),
            (TcpSynRecv, 0, O, FIN | ACK, TcpFinWait, 1),
            (TcpEstablished, 0, O, ACK | PSH, TcpEstablished, 0),
            // orig closes first
            (TcpEstablished, 0, O, FIN | ACK, TcpFinWait, 1),
            (TcpFinWait, 1, O, FIN | ACK, TcpFinWait, 1),
            (TcpFinWait, 1, O, ACK, TcpFinWait, 1),
            (TcpFinWait, 1, R, ACK, TcpCloseWait, 1),
            (TcpCloseWait, 1, R, ACK | PSH, TcpCloseWait, 1),
            (TcpCloseWait, 1, O, FIN | ACK, TcpCloseWait, 1),
            (TcpCloseWait, 1, R, FIN | ACK, TcpLastAck, 3),
            (TcpLastAck, 3, O, ACK, TcpTimeWait, 3),
            (TcpLastAck, 3, R, FIN | ACK, TcpLastAck, 3),
            // reply closes first, then both FINs without an ACK in between
            (TcpEstablished, 0, R, FIN | ACK, TcpFinWait, 2),
            (TcpFinWait, 2, O, ACK, TcpCloseWait, 2),
            (TcpFinWait, 2, O, FIN | ACK, TcpLastAck, 3),
            // unknown first FIN (installed from sync)
            (TcpFinWait, 0, O, ACK, TcpFinWait, 0),
            (TcpFinWait, 0, R, FIN, TcpLastAck, 2),
            (TcpCloseWait, 0, O, FIN | ACK, TcpLastAck, 1),
            // reset from anywhere
            (TcpEstablished, 0, O, RST, TcpClose, 0),
            (TcpSynSent, 0, R, RST | ACK, TcpClose, 0),
            (TcpFinWait, 1, R, RST, TcpClose, 1),
            (TcpTimeWait, 3, R, RST, TcpClose, 3),
            // reopen
            (TcpTimeWait, 3, O, SYN, TcpSynSent, 0),
            (TcpClose, 1, O, SYN, TcpSynSent, 0),
            (TcpTimeWait, 3, R, SYN, TcpTimeWait, 3),
            (TcpTimeWait, 3, O, SYN | ACK, TcpTimeWait, 3),
            (TcpClose, 0, O, ACK, TcpClose, 0),
            (TcpEstablished, 0, O, SYN, TcpEstablished, 0),
            // non-TCP states never change
            (Udp, 0, O, RST, Udp, 0),
            (Icmp, 0, R, SYN, Icmp, 0),
            (Mapping, 0, O, FIN | ACK, Mapping, 0),
        ];
        for &(cur, fin, dir, flags, want, want_fin) in table {
            assert_eq!(
                next_tcp_state(cur, fin, dir, flags),
                (want, want_fin),
                "{cur:?} fin={fin} {dir:?} flags={flags:#x}"
            );
        }
    }

    #[test]
    fn only_flag_combinations_tcp_sends_are_valid() {
        let valid = [
            SYN,
            SYN | ACK,
            RST,
            RST | ACK,
            FIN | ACK,
            ACK,
            ACK | PSH,
            FIN | ACK | PSH,
            SYN | 0xc0,
            SYN | ACK | 0x40,
            ACK | 0x20,
        ];
        for f in valid {
            assert!(tcp_flags_valid(f), "{f:#x} is valid");
        }
        let invalid = [
            0,
            FIN,
            PSH,
            0x20,
            FIN | PSH | 0x20,
            SYN | FIN,
            SYN | FIN | ACK,
            SYN | RST,
            SYN | RST | ACK,
            RST | FIN,
            RST | FIN | ACK,
            0xff,
        ];
        for f in invalid {
            assert!(!tcp_flags_valid(f), "{f:#x} is invalid");
        }
    }

    #[test]
    fn full_connection_lifecycle() {
        let packets = [
            (Dir::Orig, SYN),
            (Dir::Reply, SYN | ACK),
            (Dir::Orig, ACK),
            (Dir::Orig, ACK | PSH),
            (Dir::Reply, ACK),
            (Dir::Orig, FIN | ACK),
            (Dir::Reply, ACK),
            (Dir::Reply, FIN | ACK),
            (Dir::Orig, ACK),
        ];
        let want = [
            TcpSynSent,
            TcpSynRecv,
            TcpEstablished,
            TcpEstablished,
            TcpEstablished,
            TcpFinWait,
            TcpCloseWait,
            TcpLastAck,
            TcpTimeWait,
        ];
        let (mut s, mut fin) = (TcpSynSent, 0);
        for ((dir, flags), want) in packets.into_iter().zip(want) {
            (s, fin) = next_tcp_state(s, fin, dir, flags);
            assert_eq!(s, want);
        }
    }
}
