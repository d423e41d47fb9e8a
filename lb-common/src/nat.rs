//! Source NAT of flows to backends on other nodes.
//!
//! An external client's packet balanced to a pod on another node cannot keep
//! the client's address: the pod would answer the client directly, past the
//! node that rewrote the destination, and the client would reset a reply from
//! an address it never dialed. Such a flow's source becomes this node's
//! address and a port of the SNAT range, so the reply returns here and is
//! rewritten back (as kube-proxy's masquerade and Cilium's default do).
use bytemuck::Zeroable;

use crate::{Addr, Addr4, Addr6};

/// Value of `nat_config[0]` (IPv4) and `nat_config_v6[0]` (IPv6), written
/// by the agent: one per family, as each family's flows take a source of
/// their own family.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct NatConfig<A = Addr4> {
    /// Source address of SNATed flows: this node's address, network order.
    /// All zeros turns SNAT off for the family (remote backends then see
    /// the client address and must route their replies through this node).
    pub addr: A,
    /// First and last source port of SNATed flows, inclusive, HOST order
    /// (arithmetic, not wire data). See [`DEFAULT_SNAT_PORTS`].
    pub port_min: u16,
    pub port_max: u16,
}
pub type NatConfigV4 = NatConfig<Addr4>;
pub type NatConfigV6 = NatConfig<Addr6>;

crate::family::pod_per_family! {
    NatConfig: 8, 20 { addr: 0, 0, port_min: 4, 16, port_max: 6, 18 };
}

/// The default SNAT port range: above Linux's default ephemeral range
/// (32768–60999, `net.ipv4.ip_local_port_range`) and the NodePort range
/// (30000–32767), so neither the node's own sockets nor NodePorts meet a
/// SNAT port. The agent also reserves the range from the node's ephemeral
/// ports (`net.ipv4.ip_local_reserved_ports`), for hosts whose ephemeral
/// range was widened. 4,536 ports: concurrent SNAT flows per backend
/// (address, port, protocol) through one node.
pub const DEFAULT_SNAT_PORTS: (u16, u16) = (61_000, 65_535);

impl<A: Addr> NatConfig<A> {
    /// Whether `port` (host order) is in the SNAT range.
    #[inline(always)]
    pub fn in_range(&self, port: u16) -> bool {
        port >= self.port_min && port <= self.port_max
    }
}
