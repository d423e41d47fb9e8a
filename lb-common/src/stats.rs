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

/// Index of the per-CPU `counters` array. Every packet bumps exactly one
/// `*_SEEN`-style outcome; drop and pass reasons are named so they reach metrics.
macro_rules! counters {
    ($($name:ident = $idx:literal, $label:literal, $doc:literal;)*) => {
        pub mod counter {
            $( #[doc = $doc] pub const $name: u32 = $idx; )*
            /// Number of counters (size of the `counters` array).
            pub const COUNT: u32 = 0 $( + { let _ = $idx; 1 } )*;
            /// Metric label of each counter, by index.
            pub const LABELS: &[&str] = &[$($label),*];
        }
    };
}

counters! {
    PACKETS = 0, "packets", "Every packet the programs saw.";
    PASS_NOT_IP = 1, "pass_not_ipv4", "Passed: not IPv4 (ARP, IPv6, ...).";
    PASS_NOT_SERVICE = 2, "pass_not_service", "Passed: IPv4 but no service matches.";
    PASS_FRAGMENT = 3, "pass_fragment", "Passed: an IP fragment (handed to the stack).";
    PASS_OTHER_L4 = 4, "pass_other_l4", "Passed: neither TCP nor UDP.";
    DROP_MALFORMED = 5, "drop_malformed", "Dropped: truncated or inconsistent headers.";
    DROP_NO_BACKEND = 6, "drop_no_backend", "Dropped: the service has no usable backend.";
    CT_FULL = 7, "conntrack_insert_failed", "A conntrack insert failed (map full or error); the packet was still forwarded.";
    NAT_FORWARD = 8, "nat_forward", "Forwarded to a backend (DNAT).";
    NAT_REPLY = 9, "nat_reply", "Reply rewritten back to the service address.";
    REBALANCED = 10, "flow_rebalanced", "An existing flow's backend was gone; it was re-balanced.";
    PASS_VLAN = 11, "pass_vlan", "Passed: VLAN-tagged, handed to the stack unchanged.";
    DROP_CSUM = 12, "drop_checksum_helper", "Dropped: a checksum helper failed (tc).";
}
