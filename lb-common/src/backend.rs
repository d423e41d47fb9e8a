//! Backends: where a service's traffic goes.
use bytemuck::Zeroable;

use crate::{Addr, Addr4, Addr6};

/// Backend id (1-based; 0 means none): the index of the backend in the
/// `backends_v4` array, so at most the map's size. Ids are allocated by the
/// agent and not reused while flows may still name them.
pub type BackendId = u32;

/// Backend states (`BackendV4::state`).
pub mod backend_state {
    /// Ready: receives new flows (when it has a slot) and keeps its flows.
    pub const ACTIVE: u8 = 0;
    /// Terminating: keeps its existing flows, gets no new ones unless the
    /// service has no ready backend.
    pub const TERMINATING: u8 = 1;
}

/// Backend flags (`BackendV4::flags`).
pub mod backend_flags {
    /// The backend is not on this node (another node's pod, an address off
    /// the cluster): replies from it do not pass this node unless the flow
    /// is SNATed to this node's address.
    pub const REMOTE: u8 = 1 << 0;
}

/// Value of `backends_v4`, an array indexed by backend id: a slot whose
/// address is 0.0.0.0 (a zeroed entry, [`BackendV4::EMPTY`]) holds no backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Zeroable)]
pub struct Backend<A> {
    /// Backend address, network order.
    pub addr: A,
    /// Backend port, network order.
    pub port: [u8; 2],
    /// Relative weight (for weighted algorithms); 1 when unweighted.
    pub weight: u16,
    /// One of [`backend_state`].
    pub state: u8,
    /// Bit set of [`backend_flags`].
    pub flags: u8,
    pub _pad: [u8; 2],
}
pub type BackendV4 = Backend<Addr4>;
pub type BackendV6 = Backend<Addr6>;

impl<A: Addr> Backend<A> {
    /// An unused slot of `backends_v4` (what the array holds until written,
    /// and what removing a backend writes).
    pub const EMPTY: Self = Self { addr: A::ZERO, port: [0; 2], weight: 0, state: 0, flags: 0, _pad: [0; 2] };

    /// Whether this slot holds no backend (0.0.0.0 is never a backend address).
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.addr == A::ZERO
    }

    /// Whether the backend lives on another node.
    #[inline(always)]
    pub fn is_remote(&self) -> bool {
        self.flags & backend_flags::REMOTE != 0
    }
}

crate::family::pod_per_family! {
    Backend: 12, 24 { addr: 0, 0, port: 4, 16, weight: 6, 18, state: 8, 20, flags: 9, 21, _pad: 10, 22 };
}
