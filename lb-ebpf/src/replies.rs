//! tc egress's first look: most packets leaving the node are not replies
//! of ours, and finding that out in conntrack costs two lookups that miss
//! (conntrack, then the confirmed-flow table). A reply's source is its
//! backend, so its source port is a backend's port: `reply_ports` holds one
//! bit per port (`lb_common::reply_ports`), set by the agent before it
//! writes a backend and here when a DSR reply is recorded (whose backend
//! this node's agent may not know yet). A TCP or UDP packet whose source
//! port has no bit is passed at once, counted as the full path counts a
//! packet that is no reply. Bits are never cleared: a port that stopped
//! being a backend's only costs its packets the lookups again.
//!
//! The look takes only packets the full parser would accept (see
//! `portbits.rs`); ICMP errors and SCTP (the node's INIT to a service is
//! answered there) always take the full path.
use crate::{family::Family, maps::reply_ports, parse::L4_SPORT, portbits};

/// Marks `port` as a source port replies of ours may have.
#[inline(always)]
pub fn mark(port: [u8; 2]) {
    portbits::mark(&reply_ports, port)
}

/// Whether the frame `[data, end)` (`frame_len` bytes long) is a TCP or UDP
/// packet of family `F` the full parser would accept, whose source port is
/// no reply's (see the module doc).
#[inline(always)]
pub fn skip<F: Family>(data: usize, end: usize, frame_len: usize) -> bool {
    portbits::unmarked::<F, false>(data, end, frame_len, &reply_ports, L4_SPORT).is_some()
}
