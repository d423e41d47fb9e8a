//! The next-hop cache: what a FIB lookup said about where a forwarded
//! packet goes (egress interface, MACs, MTU), kept per destination so the
//! packets of established flows skip the lookup (~90 ns of a SNAT packet,
//! `prog_cost`). An entry is valid only while its generation equals
//! `next_hop_gen[0]`, which the agent bumps on every route, neighbour,
//! link, address, rule or nexthop change it hears of from netlink (and
//! when it starts): a changed route or MAC is never used after the bump.
use bytemuck::Zeroable;

use crate::{Addr4, Addr6};

/// Key of `next_hop_v4` / `next_hop_v6`: the interface the packet came in
/// on (the FIB lookup's input interface) and the address it goes to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct HopKey<A = Addr4> {
    pub ifindex: u32,
    /// Destination address of the rewritten packet, network order.
    pub dst: A,
}
pub type HopKeyV4 = HopKey<Addr4>;
pub type HopKeyV6 = HopKey<Addr6>;

crate::family::pod_per_family! {
    HopKey: 8, 20 { ifindex: 0, 0, dst: 4, 4 };
}

/// Value of the next-hop cache: a successful FIB lookup's answer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable, bytemuck::Pod)]
pub struct NextHop {
    /// `next_hop_gen[0]` read before the lookup; another value: stale.
    pub generation: u32,
    /// Egress interface.
    pub ifindex: u32,
    /// Destination MAC (the next hop's neighbour entry) and source MAC
    /// (the egress interface's): in the Ethernet header's order, so the
    /// programs write both as three words.
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    /// The route's MTU: a longer packet asks the FIB again (which then
    /// answers "fragmentation needed").
    pub mtu: u16,
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<NextHop>() == 24);
const _: () = assert!(core::mem::offset_of!(NextHop, dmac) == 8 && core::mem::offset_of!(NextHop, smac) == 14);

crate::user_pod!(NextHop);
