//! Backends: where a service's traffic goes.
use bytemuck::{Pod, Zeroable};

/// Backend id (1-based; 0 means none). Ids are allocated by the agent and
/// not reused while flows may still name them.
pub type BackendId = u32;

/// Backend states (`BackendV4::state`).
pub mod backend_state {
    /// Ready: receives new flows (when it has a slot) and keeps its flows.
    pub const ACTIVE: u8 = 0;
    /// Terminating: keeps its existing flows, gets no new ones unless the
    /// service has no ready backend.
    pub const TERMINATING: u8 = 1;
}

/// Value of `backends_v4`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct BackendV4 {
    /// Backend address, network order.
    pub addr: [u8; 4],
    /// Backend port, network order.
    pub port: [u8; 2],
    /// Relative weight (for weighted algorithms); 1 when unweighted.
    pub weight: u16,
    /// One of [`backend_state`].
    pub state: u8,
    pub _pad: [u8; 3],
}
const _: () = assert!(core::mem::size_of::<BackendV4>() == 12);

crate::user_pod!(BackendV4);
