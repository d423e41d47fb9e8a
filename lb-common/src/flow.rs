//! Conntrack: both directions of every balanced flow.
use bytemuck::Zeroable;

use crate::{Addr4, Addr6};

/// Key of `conntrack_v4` / `conntrack_v6`: a 5-tuple as it appears on the wire.
///
/// A flow has two entries: the forward one keyed by what the client sent
/// (client → VIP:port) and the reply one keyed by what the backend sends
/// (backend:port → client). Keying the reply by the full backend 5-tuple is what
/// keeps two services that share a backend apart.
///
/// 8-byte aligned (no padding: the sizes are multiples of 8) so the BPF
/// backend copies a key in words, not bytes.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Zeroable)]
pub struct FlowKey<A> {
    pub src_addr: A,
    pub dst_addr: A,
    pub src_port: [u8; 2],
    pub dst_port: [u8; 2],
    pub proto: u8,
    pub _pad: [u8; 3],
}
pub type FlowKeyV4 = FlowKey<Addr4>;
pub type FlowKeyV6 = FlowKey<Addr6>;

/// Source address of hairpin flows as their backend sees them: a backend
/// that reaches its own service and is chosen itself would otherwise get a
/// packet from its own address, which Linux drops as martian. Link-local, never
/// routed off the node (Cilium uses the same address for the same purpose).
pub const HAIRPIN_ADDR_V4: [u8; 4] = [169, 254, 42, 1];
/// As [`HAIRPIN_ADDR_V4`], for IPv6: `fd00:7864:706c:6200::a9fe:2a01`, a
/// unique-local address no node or pod has. Not link-local: a pod would
/// look a link-local source up with neighbour discovery on its link and
/// find nobody, where an off-link one goes to its default gateway, this node.
pub const HAIRPIN_ADDR_V6: [u8; 16] = [0xfd, 0x00, 0x78, 0x64, 0x70, 0x6c, 0x62, 0x00, 0, 0, 0, 0, 0xa9, 0xfe, 0x2a, 0x01];

/// Direction of a conntrack entry (`FlowV4::direction`).
pub mod direction {
    /// Client → service: rewrite the destination to the backend.
    pub const FORWARD: u8 = 0;
    /// Backend → client: rewrite the source back to the service address.
    pub const REPLY: u8 = 1;
}

/// Flow flags (`FlowV4::flags`).
pub mod flow_flags {
    /// A FIN or RST was seen: the entry lives only for the closing timeout.
    pub const CLOSING: u8 = 1 << 0;
    /// A SYN-ACK or any reply was seen.
    pub const SEEN_REPLY: u8 = 1 << 1;
    /// The flow's client is replaced by this node's address and a port of
    /// the SNAT range (its backend is on another node): XDP forwards its
    /// packets itself, as the kernel drops packets from its own address.
    pub const SNAT: u8 = 1 << 2;
    /// A DSR flow (see [`crate::dsr`]): on the balancing node a FORWARD
    /// entry alone (replies never pass it), on the backend's node a REPLY
    /// entry alone (made from the packets' option). Neither has the other
    /// half on its node, so none is restored.
    pub const DSR: u8 = 1 << 3;
    /// On both halves: the backend answered at least twice, and both
    /// halves were saved in `conntrack_confirmed_v4` (see lb-ebpf's
    /// `confirmed`), so a SNAT flow's halves need not look each other up
    /// on every packet. A high bit, clear of the flags other branches add
    /// after bit 2.
    pub const CONFIRMED: u8 = 1 << 6;
}

/// Value of `conntrack_v4` / `conntrack_v6`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct Flow<A> {
    /// Backend the flow is pinned to.
    pub backend_id: u32,
    /// Service the flow was balanced by.
    pub service_id: u32,
    /// FORWARD: the backend address; REPLY: the service address (both network
    /// order): what the address is rewritten to.
    pub nat_addr: A,
    /// As `nat_addr`, for the port.
    pub nat_port: [u8; 2],
    /// The client's port on the other side of the rewrite. FORWARD: the port
    /// the backend sees (the client's own, unless it clashed with another
    /// flow at the backend and was remapped); REPLY: the client's original
    /// port, restored as the reply's destination port. Network order.
    pub peer_port: [u8; 2],
    /// As `peer_port`, for the client address: it differs from the client's
    /// own only for hairpin flows (a backend reaching its own service), whose
    /// source becomes [`HAIRPIN_ADDR_V4`], and for SNAT flows (FORWARD: this
    /// node's address, see [`crate::NatConfig`]).
    pub peer_addr: A,
    /// One of [`direction`].
    pub direction: u8,
    /// Bit set of [`flow_flags`].
    pub flags: u8,
    pub _pad: [u8; 2],
    /// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC, tick resolution) at creation.
    pub created_ns: u64,
    /// The same clock at the last packet (updated at most once a second).
    pub last_seen_ns: u64,
    /// Packets and bytes in this entry's direction.
    pub packets: u64,
    pub bytes: u64,
}
pub type FlowV4 = Flow<Addr4>;
pub type FlowV6 = Flow<Addr6>;

crate::family::pod_per_family! {
    FlowKey: 16, 40 { src_addr: 0, 0, dst_addr: 4, 16, src_port: 8, 32, dst_port: 10, 34, proto: 12, 36, _pad: 13, 37 };
    Flow: 56, 80 {
        backend_id: 0, 0, service_id: 4, 4, nat_addr: 8, 8, nat_port: 12, 24, peer_port: 14, 26, peer_addr: 16, 28,
        direction: 20, 44, flags: 21, 45, _pad: 22, 46, created_ns: 24, 48, last_seen_ns: 32, 56, packets: 40, 64, bytes: 48, 72,
    };
}
