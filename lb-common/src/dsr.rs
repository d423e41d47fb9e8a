//! Direct server return (DSR) across nodes: the wire format both nodes agree on.
//!
//! The balancing node rewrites an external client's packet to the backend
//! (destination only; the client address stays) and adds one IPv4 option
//! carrying the service address and port the client dialed. The backend's
//! node takes the option off, remembers it as the flow's reply rewrite, and
//! the backend's replies leave that node straight to the client, from the
//! service address. The option is Cilium's (type 0x9a: copied on
//! fragmentation, class 0, number 26; length 8), so a mixed capture reads
//! the same:
//!
//! ```text
//!  0      1      2      3      4      5      6      7
//! +------+------+------+------+------+------+------+------+
//! | 0x9a |  8   | service port | service address (IPv4)    |
//! +------+------+------+------+------+------+------+------+
//! ```
//!
//! Over IPv6 the service travels in a Destination Options extension header
//! right behind the fixed header (Cilium's IPv6 encoding: one option, type
//! 0x1b, which a node that does not know it skips), 24 bytes:
//!
//! ```text
//!  0      1      2      3      4 ..                19   20   21   22   23
//! +------+------+------+------+-----------------------+---------+---------+
//! | next |  2   | 0x1b |  20  | service address (IPv6)| port    | 0, 0    |
//! +------+------+------+------+-----------------------+---------+---------+
//! ```
//!
//! (`next`: the transport protocol; length 2 = (24 − 8) / 8; the two zero
//! bytes are Pad1 options filling the header to a multiple of 8.)

/// Option type: copied (0x80) | class 0 | number 26.
pub const OPT_TYPE: u8 = 0x9a;
/// Option length, and what it adds to every forwarded packet (the MTU cost).
pub const OPT_LEN: usize = 8;

/// IPv6: the extension header's protocol number (Destination Options).
pub const IPPROTO_DSTOPTS: u8 = 60;
/// IPv6: the option's type: skip if unknown (00), not changed en route (0), 27.
pub const OPT6_TYPE: u8 = 0x1b;
/// IPv6: the option's data length (address and port, then padding).
pub const OPT6_LEN: u8 = 20;
/// IPv6: the whole extension header's length, what it adds to every
/// forwarded packet (the MTU cost).
pub const EXT6_LEN: usize = 24;

/// Whether an external client's new flow of protocol `proto` to a backend
/// on another node uses DSR: the service's own mode
/// ([`crate::service_flags::LB_MODE`]) if it sets one, else the node's
/// (`config_flags`, from `--lb-mode`). The dataplane decides with this, and
/// `lb-agent explain` says what it decides.
#[inline(always)]
pub fn uses_dsr(svc_flags: u8, config_flags: u32, proto: u8) -> bool {
    use crate::{config_flags as cfg, service_flags as svc, IPPROTO_TCP, IPPROTO_UDP};
    let (tcp, udp) = if svc_flags & svc::LB_MODE != 0 {
        (svc_flags & svc::DSR_TCP != 0, svc_flags & svc::DSR_UDP != 0)
    } else {
        (config_flags & cfg::DSR_TCP != 0, config_flags & cfg::DSR_UDP != 0)
    };
    (proto == IPPROTO_TCP && tcp) || (proto == IPPROTO_UDP && udp)
}
