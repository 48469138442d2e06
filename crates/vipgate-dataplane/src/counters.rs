//! The data plane's own counters, one per worker, one name per reason (the engine counts its
//! own in [`vipgate_nat::counters::Counters`]).

/// One worker's data-plane counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DataplaneCounters {
    /// Frames handed to the pipeline.
    pub rx_frames: u64,
    /// Frames the pipeline sent or built for sending.
    pub tx_frames: u64,
    /// ARP requests for our addresses answered.
    pub arp_replies: u64,
    /// ARP requests we sent to resolve next hops.
    pub arp_requests: u64,
    /// Gratuitous ARPs sent to announce our addresses.
    pub arp_announcements: u64,
    /// Neighbor entries learned or refreshed from ARP.
    pub arp_learned: u64,
    /// ARP that does not parse (truncated, not Ethernet/IPv4).
    pub drop_arp_malformed: u64,
    /// Well-formed ARP that asks for nothing we answer for (other hosts, VIPs on the
    /// private side) or answers nothing we asked.
    pub drop_arp_not_ours: u64,
    /// Frames whose Ethernet destination is neither us nor broadcast.
    pub drop_other_mac: u64,
    /// 802.1Q-tagged frames: the configured interfaces carry untagged traffic only.
    pub drop_vlan: u64,
    /// Translated datagrams with no route on their side.
    pub drop_no_route: u64,
    /// Frames held for a next hop that never answered ARP.
    pub drop_neighbor_unresolved: u64,
    /// Frames for an unresolved next hop that found its hold full.
    pub drop_hold_full: u64,
    /// The neighbor table had no room for a new address.
    pub drop_neighbor_table_full: u64,
    /// Datagrams to the gateway's own interface address that it does not answer.
    pub drop_to_gateway: u64,
    /// Datagrams whose TTL ran out here.
    pub drop_ttl_exceeded: u64,
    /// ICMP time exceeded messages sent.
    pub icmp_time_exceeded: u64,
    /// ICMP errors not sent because of the rate limit.
    pub icmp_rate_limited: u64,
    /// New TCP connections to a pool with no backend in service refused with a RST.
    pub empty_pool_resets: u64,
    /// New UDP flows to such a pool refused with an ICMP port unreachable.
    pub empty_pool_unreachables: u64,
    /// TCP segments to a VIP service of a connection the table does not know, answered with
    /// a RST (the connection's backend went down, or the table lost it).
    pub tcp_no_conn_resets: u64,
    /// Echo requests to an interface address answered.
    pub gateway_echo_replies: u64,
    /// Frames not sent because no buffer was free.
    pub drop_no_buffer: u64,
    /// Datagrams not translated because this box is standby (see [`crate::Dataplane::set_active`]).
    pub drop_standby: u64,
    /// Frames handed up the host path to the control thread.
    pub host_rx: u64,
    /// Frames the control thread sent through this worker.
    pub host_tx: u64,
    /// Frames for the control thread dropped: its queue full or no buffer free.
    pub drop_host_full: u64,
}

impl DataplaneCounters {
    /// Counts a frame the pipeline built: sent, or lost for want of a buffer.
    pub(crate) fn count_emit(&mut self, sent: bool) {
        if sent {
            self.tx_frames += 1;
        } else {
            self.drop_no_buffer += 1;
        }
    }

    /// Every counter as (name, value), for logs and the shutdown report.
    pub fn named(&self) -> [(&'static str, u64); 27] {
        [
            ("rx_frames", self.rx_frames),
            ("tx_frames", self.tx_frames),
            ("arp_replies", self.arp_replies),
            ("arp_requests", self.arp_requests),
            ("arp_announcements", self.arp_announcements),
            ("arp_learned", self.arp_learned),
            ("drop_arp_malformed", self.drop_arp_malformed),
            ("drop_arp_not_ours", self.drop_arp_not_ours),
            ("drop_other_mac", self.drop_other_mac),
            ("drop_vlan", self.drop_vlan),
            ("drop_no_route", self.drop_no_route),
            ("drop_neighbor_unresolved", self.drop_neighbor_unresolved),
            ("drop_hold_full", self.drop_hold_full),
            ("drop_neighbor_table_full", self.drop_neighbor_table_full),
            ("drop_to_gateway", self.drop_to_gateway),
            ("drop_ttl_exceeded", self.drop_ttl_exceeded),
            ("icmp_time_exceeded", self.icmp_time_exceeded),
            ("icmp_rate_limited", self.icmp_rate_limited),
            ("empty_pool_resets", self.empty_pool_resets),
            ("empty_pool_unreachables", self.empty_pool_unreachables),
            ("tcp_no_conn_resets", self.tcp_no_conn_resets),
            ("gateway_echo_replies", self.gateway_echo_replies),
            ("drop_no_buffer", self.drop_no_buffer),
            ("drop_standby", self.drop_standby),
            ("host_rx", self.host_rx),
            ("host_tx", self.host_tx),
            ("drop_host_full", self.drop_host_full),
        ]
    }
}
