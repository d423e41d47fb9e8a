//! Counters: per service, and per reason for every early exit.
use bytemuck::{Pod, Zeroable};

/// Value of the per-CPU `service_stats` array (index = service id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ServiceStats {
    /// Packets and bytes sent to a backend (forward direction).
    pub packets: u64,
    pub bytes: u64,
    /// Flows created (conntrack entries inserted).
    pub new_flows: u64,
    /// Packets dropped because the service had no backend.
    pub drops_no_backend: u64,
}
const _: () = assert!(core::mem::size_of::<ServiceStats>() == 32);

impl core::ops::AddAssign for ServiceStats {
    fn add_assign(&mut self, o: Self) {
        self.packets += o.packets;
        self.bytes += o.bytes;
        self.new_flows += o.new_flows;
        self.drops_no_backend += o.drops_no_backend;
    }
}

crate::user_pod!(ServiceStats);

/// Index of the per-CPU `counters` array. `PACKETS` counts every packet;
/// indexes 1..FIRST_EVENT and [`LATE_OUTCOMES`] are outcomes, of which every
/// packet bumps exactly one ([`is_outcome`]); the others are events that come
/// on top of an outcome.
/// Drop and pass reasons are named so they reach metrics.
macro_rules! counters {
    ($($name:ident = $idx:literal, $label:literal, $doc:literal;)*) => {
        pub mod counter {
            $( #[doc = $doc] pub const $name: u32 = $idx; )*
            /// Size of the `counters` array: the highest index + 1 (indexes
            /// are reserved in ranges by feature, so some may be unused).
            pub const COUNT: u32 = {
                let mut max = 0;
                $( if $idx + 1 > max { max = $idx + 1; } )*
                max
            };
            /// Metric label of each counter, by index; "" for an unused index.
            pub const LABELS: [&str; COUNT as usize] = {
                let mut labels = [""; COUNT as usize];
                $( labels[$idx as usize] = $label; )*
                labels
            };
        }
    };
}

counters! {
    PACKETS = 0, "packets", "Every packet the programs saw.";
    PASS_NOT_IP = 1, "pass_not_ipv4", "Passed: neither IPv4 nor IPv6 (ARP, ...).";
    PASS_VLAN = 2, "pass_vlan", "Passed: VLAN-tagged, handed to the stack unchanged.";
    PASS_NOT_SERVICE = 3, "pass_not_service", "Passed: IPv4 but no service matches.";
    PASS_FRAGMENT = 4, "pass_fragment", "Passed: an IP fragment (handed to the stack).";
    PASS_OTHER_L4 = 5, "pass_other_l4", "Passed: neither TCP nor UDP.";
    DROP_MALFORMED = 6, "drop_malformed", "Dropped (XDP) or passed (tc): truncated or inconsistent headers.";
    DROP_NO_BACKEND = 7, "drop_no_backend", "Dropped: the service has no usable backend.";
    DROP_CSUM = 8, "drop_checksum_helper", "Dropped: a checksum helper failed (tc).";
    NAT_FORWARD = 9, "nat_forward", "Forwarded to a backend (DNAT).";
    NAT_REPLY = 10, "nat_reply", "Reply rewritten back to the service address.";
    REBALANCED = 11, "flow_rebalanced", "Event: an existing flow's backend was gone; it was re-balanced.";
    CT_INSERT_FAILED = 12, "conntrack_insert_failed", "Event: a conntrack insert failed; the packet was still forwarded.";
    CLIENT_PORT_REMAPPED = 13, "client_port_remapped", "Event: a new flow's client port clashed at the backend with another flow's; it got another port.";
    CT_CLASH_UNRESOLVED = 14, "conntrack_clash_unresolved", "Event: no free client port was found for a clashing flow; the older flow's replies are taken over.";
    HAIRPIN = 15, "hairpin", "Event: a hairpin packet (a backend reaching its own service) was sent back to it.";
    RST_SENT = 16, "rst_sent", "Event: a SYN to a service without backends was answered with a TCP reset.";
    XDP_REDIRECTED = 17, "xdp_redirected", "Event: XDP forwarded a balanced packet itself (FIB lookup + redirect), skipping the kernel's forwarding.";
    SOCK_BALANCED = 18, "sock_balanced", "Event: a node socket's connect() or sendmsg() to a service was pointed at a backend.";
    SOCK_NO_BACKEND = 19, "sock_no_backend", "Event: a node socket's connect() or sendmsg() to a service without backends, a port a ClusterIP does not serve or an unallocated service-CIDR address was refused.";
    DROP_SOURCE_RANGE = 20, "drop_source_range", "Dropped: a new flow to a LoadBalancer IP from outside its loadBalancerSourceRanges.";
    DROP_SNAT_EXHAUSTED = 21, "drop_snat_exhausted", "Dropped: a new flow to a backend on another node found no free SNAT port towards that backend.";
    SNAT_NEW = 22, "snat_new", "Event: a new flow to a backend on another node was SNATed to this node's address.";
    CT_HALF_RESTORED = 23, "conntrack_half_restored", "Event: one half of a live flow's conntrack pair had been evicted and was restored from the other.";
    FORWARD_FALLBACK = 24, "forward_fallback", "Event: XDP could not forward a SNATed packet itself (no route or neighbour): passed to the kernel.";
    ICMP_NAT = 25, "icmp_nat", "Translated: an ICMP error about a NATed flow, rewritten to the packet its receiver sent (path MTU, port unreachable).";
    DSR_FORWARD = 26, "dsr_forward", "Forwarded to a backend on another node with DSR: destination rewritten, the service address carried in an IPv4 option (IPv6: a destination options header), the client address kept.";
    DSR_DECAP = 27, "dsr_decap", "Received for a local backend with a DSR option (IPv6: header): the reply state was recorded, the option taken off, the packet passed on.";
    DSR_FRAG_NEEDED = 28, "dsr_frag_needed", "Answered: a DF packet (IPv6: any packet) that no longer fits its egress with the DSR option got an ICMP fragmentation-needed (ICMPv6 packet too big) carrying the reduced MTU.";
    DSR_MSS_CLAMPED = 29, "dsr_mss_clamped", "Event: the MSS of a DSR flow's SYN-ACK was lowered by the DSR option's size.";
    DROP_UNSERVED = 30, "drop_unserved_port", "Refused: a ClusterIP on a port or protocol it does not serve (a TCP SYN gets a reset, UDP a port unreachable).";
    DROP_SERVICE_CIDR = 31, "drop_service_cidr", "Dropped: an address of the service CIDR that no Service has.";
    UNREACH_SENT = 32, "icmp_unreachable_sent", "Event: a UDP datagram to a service port without backends, or one a ClusterIP does not serve, was answered with ICMP port unreachable.";
    SCTP_CRC_UPDATED = 33, "sctp_crc_updated", "Event: an SCTP packet's ports were rewritten and its CRC32c updated in place (a complete checksum: from a wire, or a socket buffer without CRC offload).";
    CT_CONFIRMED = 34, "conntrack_confirmed", "Event: a flow's backend answered a second time: the flow is confirmed and saved in conntrack_confirmed_v4, which new flows cannot evict.";
    CT_CONFIRMED_RESTORED = 35, "conntrack_confirmed_restored", "Event: a confirmed flow evicted from conntrack_v4 (a flood of new flows) was restored from conntrack_confirmed_v4.";
    SCTP_CRC_OFFLOADED = 36, "sctp_crc_offloaded", "Event: an SCTP packet's ports were rewritten in a socket buffer whose CRC32c is still to be computed (checksum offload: the field is zero); the kernel or the receiver computes it over the rewritten packet.";
    DROP_DSR_FLOW_MISSING = 37, "drop_dsr_flow_missing", "Dropped: an IPv6 DSR packet to send, handed to xdp_dsr_v6, whose flow was not in conntrack_v6 (its insert failed, or a flood evicted it between the two programs); the client's retransmission is balanced anew.";
    PASS_V6_EXT_CHAIN = 38, "pass_ipv6_ext_chain", "Passed: an IPv6 packet whose extension header chain is longer than the programs walk (4 headers), handed to the stack untouched.";
    PASS_NDP = 39, "pass_icmpv6_ndp", "Passed: an ICMPv6 router or neighbour discovery message (types 133-137), never touched.";
    DROP_UDP6_NO_CHECKSUM = 40, "drop_udp6_zero_checksum", "Dropped (XDP) or passed (tc): UDP over IPv6 with checksum 0, which IPv6 forbids (RFC 8200 8.1).";
    IPV6 = 41, "ipv6_packets", "Event: an IPv6 packet (counted on top of its outcome).";
    DROP_DSR_PROGRAM = 42, "drop_dsr_program_missing", "Dropped: an IPv6 DSR packet (to send or received) whose program (xdp_dsr_v6, tail-called) is not loaded; the agent loads it with the others.";
    PASS_ICMP6_QUOTE = 43, "pass_icmpv6_error_quote_unwalkable", "Passed: an ICMPv6 error (destination unreachable, packet too big, time exceeded) whose quoted packet's extension headers could not be walked (more than 4, cut short by the quote, or a fragment other than an atomic one), untranslated.";
    PASS_SCTP6_PROGRAM = 44, "pass_sctp6_program_missing", "Passed: an IPv6 SCTP packet at XDP whose program (xdp_sctp_v6, tail-called by xdp_lb_v6) is not loaded; the agent loads it with the others.";
    DROP_SCTP6_PROGRAM = 45, "drop_sctp6_nat_program_missing", "Dropped: an IPv6 SCTP packet balanced at XDP whose rewrite program (xdp_sctp_v6_nat, tail-called by xdp_sctp_v6) is not loaded; the agent loads it with the others.";
    DROP_SCTP6_STAGE = 46, "drop_sctp6_stage_missing", "Dropped: an IPv6 SCTP packet balanced at XDP whose rewrite could not be handed from xdp_sctp_v6 to xdp_sctp_v6_nat, because this CPU's slot of flow_scratch_v6 (a per-CPU array of one entry) could not be read; cannot happen with the maps the agent loads, so any count is a bug to report.";
    FIB_LOOKUP = 47, "fib_lookup", "Event: XDP asked the FIB for a forwarded packet's next hop (none cached for its destination, the cached one stale after a route or neighbour change, or shorter than the packet's MTU needs); every other forwarded packet used the cached next hop.";
    SOCK_MAPPED = 56, "sock_v4_mapped", "Event: a dual-stack (AF_INET6) node socket's connect() or sendmsg() to an IPv4-mapped address (::ffff:a.b.c.d) was looked up in the IPv4 services (counted on top of sock_balanced or sock_no_backend when it is one).";
    SCTP_NODE_ABORTED = 57, "sctp_node_init_aborted", "Answered (tc egress): an SCTP INIT from the node's own socket to a service address (the socket programs never see SCTP) got an ABORT back, so its connect() fails with ECONNREFUSED.";
}

/// First event counter (see [`counter`]).
pub const FIRST_EVENT: u32 = counter::REBALANCED;

/// Outcomes added after the first events: appended, so earlier indexes keep
/// their meaning in pinned `counters` maps across upgrades.
pub const LATE_OUTCOMES: &[u32] = &[
    counter::DROP_SOURCE_RANGE,
    counter::DROP_SNAT_EXHAUSTED,
    counter::ICMP_NAT,
    counter::DSR_FORWARD,
    counter::DSR_DECAP,
    counter::DSR_FRAG_NEEDED,
    counter::DROP_UNSERVED,
    counter::DROP_SERVICE_CIDR,
    counter::PASS_V6_EXT_CHAIN,
    counter::PASS_NDP,
    counter::DROP_UDP6_NO_CHECKSUM,
    counter::SCTP_NODE_ABORTED,
    counter::DROP_DSR_PROGRAM,
    counter::PASS_ICMP6_QUOTE,
    counter::PASS_SCTP6_PROGRAM,
    counter::DROP_SCTP6_PROGRAM,
    counter::DROP_SCTP6_STAGE,
    counter::DROP_DSR_FLOW_MISSING,
];

/// Whether counter `idx` is an outcome (every packet bumps exactly one).
pub fn is_outcome(idx: u32) -> bool {
    (1..FIRST_EVENT).contains(&idx) || LATE_OUTCOMES.contains(&idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_label_is_unique_and_the_stage_drop_is_an_outcome_of_its_own() {
        for (i, a) in counter::LABELS.iter().enumerate().filter(|(_, l)| !l.is_empty()) {
            assert!(!counter::LABELS[i + 1..].contains(a), "{a} labels two counters");
        }
        assert_eq!(counter::LABELS[counter::DROP_SCTP6_STAGE as usize], "drop_sctp6_stage_missing");
        assert!(is_outcome(counter::DROP_SCTP6_STAGE), "a dropped packet's one outcome");
        assert!(!is_outcome(counter::CT_INSERT_FAILED), "an event on top of an outcome, as before");
    }
}
