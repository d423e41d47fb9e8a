//! Socket-level balancing of the node's own connections (cgroup
//! connect/sendmsg/recvmsg/getpeername programs of both families).
use bytemuck::Zeroable;

use crate::{Addr4, Addr6};

/// Key of `sock_revnat_v4` / `_v6`: a socket and the backend it was pointed at.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Zeroable)]
pub struct SockRevKey<A> {
    /// The kernel's socket cookie (`bpf_get_socket_cookie`), native byte
    /// order; bytes, not `u64`, so the IPv6 instance has no tail padding.
    pub cookie: [u8; 8],
    pub backend_addr: A,
    pub backend_port: [u8; 2],
    pub _pad: [u8; 2],
}
pub type SockRevKeyV4 = SockRevKey<Addr4>;
pub type SockRevKeyV6 = SockRevKey<Addr6>;

/// Value of `sock_revnat_v4` / `_v6`: the service address the application asked
/// for, shown back to it by getpeername() and recvmsg().
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct SockRev<A> {
    pub addr: A,
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}
pub type SockRevV4 = SockRev<Addr4>;
pub type SockRevV6 = SockRev<Addr6>;

crate::family::pod_per_family! {
    SockRevKey: 16, 28 { cookie: 0, 0, backend_addr: 8, 8, backend_port: 12, 24, _pad: 14, 26 };
    SockRev: 8, 20 { addr: 0, 0, port: 4, 16, _pad: 6, 18 };
}
