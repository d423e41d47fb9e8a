//! Socket-level balancing of the node's own connections (cgroup
//! connect4/sendmsg4/recvmsg4/getpeername4 programs).
use bytemuck::{Pod, Zeroable};

/// Key of `sock_revnat_v4`: a socket and the backend it was pointed at.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct SockRevKeyV4 {
    /// The kernel's socket cookie (`bpf_get_socket_cookie`).
    pub cookie: u64,
    pub backend_addr: [u8; 4],
    pub backend_port: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<SockRevKeyV4>() == 16);

/// Value of `sock_revnat_v4`: the service address the application asked
/// for, shown back to it by getpeername() and recvmsg().
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SockRevV4 {
    pub addr: [u8; 4],
    pub port: [u8; 2],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<SockRevV4>() == 8);

crate::user_pod!(SockRevKeyV4, SockRevV4);
