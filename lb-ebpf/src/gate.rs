//! XDP's first look: most packets reaching an uplink are for the node
//! itself or for pods, not for a service, and finding that out costs a
//! parse and a service lookup that misses (IPv6: a tail call first). A
//! service packet's destination port is a frontend's port: `service_ports`
//! holds one bit per port (`lb_common::maps::SERVICE_PORTS`), set by the
//! agent before it writes a frontend on the port and cleared after the
//! last one on it is gone, for every protocol and both families. A TCP,
//! UDP or SCTP packet whose destination port has no bit, and which cannot
//! be the reply of a SNAT flow (this node's SNAT address, a port of the
//! range), is passed at once, counted as the full path counts a packet
//! that is no service's.
//!
//! Nothing that does not depend on the port is skipped: ICMP errors have
//! no ports and DSR packets carry an IPv4 option or an IPv6 extension
//! header, so neither is a plain packet (`portbits::unmarked`); both take
//! the full path, as do malformed packets. (The service CIDR's drop and a
//! ClusterIP's unserved ports are tc ingress's and the socket programs',
//! never XDP's: `unserved.rs`.)
use crate::{
    conntrack,
    family::Family,
    maps::service_ports,
    parse::{ptr_at, ETH_LEN, L4_DPORT},
    portbits,
};

/// Whether the frame `[data, end)` (`frame_len` bytes long) of family `F`
/// is no service's and no SNAT reply (see the module doc).
#[inline(always)]
pub fn skip<F: Family>(data: usize, end: usize, frame_len: usize) -> bool {
    let Some(dport) = portbits::unmarked::<F, true>(data, end, frame_len, &service_ports, L4_DPORT) else {
        return false;
    };
    match ptr_at::<F::Addr>(data, end, ETH_LEN + F::IP_DST) {
        // SAFETY: `ptr_at` checked the address is inside the frame.
        Ok(dst) => !conntrack::snat_reply_to::<F>(unsafe { &*dst }, dport),
        Err(_) => false,
    }
}
