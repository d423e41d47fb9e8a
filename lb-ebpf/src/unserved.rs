//! Destinations that look like services but are none: a ClusterIP on a port
//! or protocol it does not serve (refused), and an address of the service
//! CIDR that no Service has (dropped), as kube-proxy's nftables mode does,
//! so neither leaks to the node's routing. Checked for pods (tc ingress) and
//! node sockets only, after the frontend lookup missed: XDP on an uplink
//! keeps its non-service path at one lookup.
use aya_ebpf::btf_maps::lpm_trie::Key;
use lb_common::{service_flags, Addr, ServiceKey, SourceRange};

use crate::family::Family;

pub enum Unserved {
    /// A ClusterIP, but not on this port or protocol.
    Refused,
    /// Inside a service CIDR, and no Service has the address.
    Dropped,
}

/// Out of line: its keys would otherwise sit in `tc_ingress`'s frame, which
/// 6.1's verifier (frames rounded to 32 bytes) allows 512 bytes with the
/// reset's call chain.
#[inline(never)]
pub fn check<F: Family>(dst: F::Addr) -> Option<Unserved> {
    // SAFETY: read-only copy of an agent-written value.
    if unsafe { F::services().get(ServiceKey::address(dst)) }
        .is_some_and(|s| s.flags & service_flags::UNSERVED_REFUSED != 0)
    {
        return Some(Unserved::Refused);
    }
    let key = Key::new(SourceRange::<F::Addr>::prefix_len(F::Addr::LEN as u8 * 8), SourceRange::service_cidr(dst));
    F::source_ranges().get(&key).map(|_| Unserved::Dropped)
}
