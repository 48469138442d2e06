//! Per-worker counters: one name per reason, the same names in logs, the CLI and metrics.
//!
//! Each worker owns its [`Counters`] and is its only writer, so counting costs a plain add
//! to a cache line no other core writes; readers sum the workers' copies.

/// Why the engine dropped a frame. Each reason has its own counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// The frame ends before a header does.
    Truncated,
    /// IPv4 version, header length or total length that no datagram has.
    BadIpv4Header,
    /// IPv4 header checksum does not verify.
    BadIpv4Checksum,
    /// TCP data offset below 5 words.
    BadTcpHeader,
    /// ICMP error with a malformed or missing quote.
    BadIcmpError,
    /// First fragment too short to hold the transport header (RFC 1858).
    TinyFragment,
    /// IPv6 (not translated yet).
    Ipv6,
    /// Neither IPv4 nor IPv6 (ARP and others belong to the data plane's classifier).
    NotIp,
    /// Source or destination address that must never be forwarded (0/8, 127/8, multicast,
    /// limited broadcast).
    Martian,
    /// A protocol the engine does not translate (not TCP, UDP or ICMP).
    UnsupportedProto,
    /// An ICMP message type the engine does not translate.
    IcmpUnsupported,
    /// No connection, rule, pool or mapping covers the packet.
    NoRule,
    /// A mapping exists but filtering (address-and-port dependent) refuses the sender.
    Filtered,
    /// A TCP segment other than a SYN for a connection the table does not know.
    TcpNoConn,
    /// The connection table is full: the new connection was refused.
    TableFull,
    /// The reply tuple of a new connection is already in use by another connection.
    TupleClash,
    /// No free PAT port on the public address for this internal host.
    PatPortsExhausted,
    /// Every backend of the pool is out of service.
    NoBackend,
    /// A non-first fragment whose first fragment never came in time (or no hold slot).
    FragmentUnmatched,
    /// An ICMP error quoting a flow the table does not know.
    IcmpErrorNoConn,
    /// A packet of a known connection arriving on the side it should not come from.
    WrongSide,
    /// A TCP segment with a flag combination no TCP sends (SYN with FIN or RST, FIN without
    /// ACK, none of SYN, ACK and RST): scans and forgeries.
    TcpBadFlags,
    /// From the public side, a source address of ours (a VIP or PAT address): forged.
    SpoofedOurs,
    /// From the public side, a source address inside (a prefix the private side serves).
    SpoofedInside,
    /// From the private side, a source address outside the prefixes it serves.
    SpoofedOutside,
    /// The internal host holds its quota of PAT mappings (`nat.pat_quota`).
    PatQuota,
}

impl DropReason {
    /// Number of reasons.
    pub const COUNT: usize = 26;

    /// Every reason, in counter order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::Truncated,
        DropReason::BadIpv4Header,
        DropReason::BadIpv4Checksum,
        DropReason::BadTcpHeader,
        DropReason::BadIcmpError,
        DropReason::TinyFragment,
        DropReason::Ipv6,
        DropReason::NotIp,
        DropReason::Martian,
        DropReason::UnsupportedProto,
        DropReason::IcmpUnsupported,
        DropReason::NoRule,
        DropReason::Filtered,
        DropReason::TcpNoConn,
        DropReason::TableFull,
        DropReason::TupleClash,
        DropReason::PatPortsExhausted,
        DropReason::NoBackend,
        DropReason::FragmentUnmatched,
        DropReason::IcmpErrorNoConn,
        DropReason::WrongSide,
        DropReason::TcpBadFlags,
        DropReason::SpoofedOurs,
        DropReason::SpoofedInside,
        DropReason::SpoofedOutside,
        DropReason::PatQuota,
    ];

    /// The counter name.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Truncated => "drop_truncated",
            DropReason::BadIpv4Header => "drop_bad_ipv4_header",
            DropReason::BadIpv4Checksum => "drop_bad_ipv4_checksum",
            DropReason::BadTcpHeader => "drop_bad_tcp_header",
            DropReason::BadIcmpError => "drop_bad_icmp_error",
            DropReason::TinyFragment => "drop_tiny_fragment",
            DropReason::Ipv6 => "drop_ipv6",
            DropReason::NotIp => "drop_not_ip",
            DropReason::Martian => "drop_martian",
            DropReason::UnsupportedProto => "drop_unsupported_proto",
            DropReason::IcmpUnsupported => "drop_icmp_unsupported",
            DropReason::NoRule => "drop_no_rule",
            DropReason::Filtered => "drop_filtered",
            DropReason::TcpNoConn => "drop_tcp_no_conn",
            DropReason::TableFull => "drop_table_full",
            DropReason::TupleClash => "drop_tuple_clash",
            DropReason::PatPortsExhausted => "pat_ports_exhausted",
            DropReason::NoBackend => "drop_no_backend",
            DropReason::FragmentUnmatched => "drop_fragment_unmatched",
            DropReason::IcmpErrorNoConn => "drop_icmp_error_no_conn",
            DropReason::WrongSide => "drop_wrong_side",
            DropReason::TcpBadFlags => "drop_tcp_bad_flags",
            DropReason::SpoofedOurs => "drop_spoofed_ours",
            DropReason::SpoofedInside => "drop_spoofed_inside",
            DropReason::SpoofedOutside => "drop_spoofed_outside",
            DropReason::PatQuota => "drop_pat_quota",
        }
    }
}

impl From<vipgate_wire::ParseError> for DropReason {
    fn from(e: vipgate_wire::ParseError) -> DropReason {
        use vipgate_wire::ParseError as P;
        match e {
            P::Truncated { .. } => DropReason::Truncated,
            P::BadIpv4Header => DropReason::BadIpv4Header,
            P::BadIpv4Checksum => DropReason::BadIpv4Checksum,
            P::BadTcpHeader => DropReason::BadTcpHeader,
            P::BadIcmpError => DropReason::BadIcmpError,
            P::TinyFragment => DropReason::TinyFragment,
        }
    }
}

/// One worker's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames forwarded after translation.
    pub forwarded: u64,
    /// Echo requests to our addresses answered.
    pub echo_replies: u64,
    /// Connections created.
    pub conns_created: u64,
    /// PAT mappings created.
    pub mappings_created: u64,
    /// Connections and mappings reclaimed after their timeout.
    pub reclaimed: u64,
    /// Sync events dropped because the worker's event queue was full.
    pub events_lost: u64,
    /// Fragment cache entries evicted before their timeout to make room.
    pub frag_evictions: u64,
    /// Fragments held because they came before their first fragment.
    pub frags_held: u64,
    /// Held fragments released, translated, after their first fragment (also counted in
    /// `forwarded` when taken).
    pub frags_released: u64,
    /// TCP connections picked up mid-stream after a takeover (see
    /// [`crate::Engine::pick_up_until`]).
    pub tcp_picked_up: u64,
    drops: [u64; DropReason::COUNT],
}

impl Counters {
    /// Counts a drop.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        if let Some(c) = self.drops.get_mut(reason as usize) {
            *c += 1;
        }
    }

    /// Drops counted for `reason`.
    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops.get(reason as usize).copied().unwrap_or(0)
    }

    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().sum()
    }

    /// Adds another worker's counters (for totals).
    pub fn add(&mut self, other: &Counters) {
        self.forwarded += other.forwarded;
        self.echo_replies += other.echo_replies;
        self.conns_created += other.conns_created;
        self.mappings_created += other.mappings_created;
        self.reclaimed += other.reclaimed;
        self.events_lost += other.events_lost;
        self.frag_evictions += other.frag_evictions;
        self.frags_held += other.frags_held;
        self.frags_released += other.frags_released;
        for (a, b) in self.drops.iter_mut().zip(other.drops.iter()) {
            *a += b;
        }
    }

    /// Every counter as (name, value), for logs and metrics.
    pub fn named(&self) -> Vec<(&'static str, u64)> {
        let mut v = Vec::new();
        self.for_each(|n, c| v.push((n, c)));
        v
    }

    /// Calls `f` with every counter's name and value, always in the same order, allocating
    /// nothing (a worker publishes its counters this way while it runs).
    pub fn for_each(&self, mut f: impl FnMut(&'static str, u64)) {
        f("forwarded", self.forwarded);
        f("echo_replies", self.echo_replies);
        f("conns_created", self.conns_created);
        f("mappings_created", self.mappings_created);
        f("reclaimed", self.reclaimed);
        f("events_lost", self.events_lost);
        f("frag_evictions", self.frag_evictions);
        f("frags_held", self.frags_held);
        f("frags_released", self.frags_released);
        f("tcp_picked_up", self.tcp_picked_up);
        for r in DropReason::ALL {
            f(r.name(), self.drops(r));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_all_listed() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "ALL is in discriminant order");
        }
    }

    #[test]
    fn counts_and_sums() {
        let mut a = Counters::default();
        a.drop(DropReason::TableFull);
        a.drop(DropReason::TableFull);
        a.forwarded = 5;
        let mut total = Counters::default();
        total.add(&a);
        total.add(&a);
        assert_eq!(total.drops(DropReason::TableFull), 4);
        assert_eq!(total.forwarded, 10);
        assert_eq!(total.total_drops(), 4);
        assert!(total.named().contains(&("drop_table_full", 4)));
    }
}
