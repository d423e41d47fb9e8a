//! A rewrite handed from one XDP program to the next: `xdp_sctp_v6`
//! decides (service, conntrack, selection) and tail-calls `xdp_sctp_v6_nat`,
//! which rewrites and forwards. Split so each program's verifier walk fits:
//! in one program, every state that reaches a decision walks the rewrite
//! (its CRC32c update among it) again, and IPv6 SCTP went past 1M
//! instructions. The rewrite travels in this CPU's flow scratch slot
//! (`Family::scratch`): a tail call stays on the CPU, and the decision
//! writes the slot last.
use lb_common::{direction, flow_flags};

use crate::{
    conntrack::{Kind, Rewrite},
    family::Family,
    nat::Side,
};

/// Leaves `side` and `rw` for the next program; `false` if the slot is
/// missing (the caller drops, counted as `drop_sctp6_stage_missing`).
#[inline(always)]
pub fn put<F: Family>(side: Side, rw: &Rewrite<F::Addr>) -> bool {
    let Some(slot) = F::scratch().get_ptr_mut(0) else { return false };
    // SAFETY: this CPU's slot, used by this program run (and its tail call) alone.
    let e = unsafe { &mut *slot };
    e.nat_addr = rw.addr;
    e.nat_port = rw.port;
    e.peer_addr = rw.peer_addr;
    e.peer_port = rw.peer_port;
    e.flags = match rw.kind {
        Kind::Plain => 0,
        Kind::Snat => flow_flags::SNAT,
        Kind::Dsr => flow_flags::DSR,
    };
    e.direction = match side {
        Side::Dst => direction::FORWARD,
        Side::Src => direction::REPLY,
    };
    true
}

/// What [`put`] left.
#[inline(always)]
pub fn take<F: Family>() -> Option<(Side, Rewrite<F::Addr>)> {
    // SAFETY: this CPU's slot, read-only here.
    let e = unsafe { &*F::scratch().get_ptr(0)? };
    let side = if e.direction == direction::FORWARD { Side::Dst } else { Side::Src };
    Some((side, Rewrite::of(e.nat_addr, e.nat_port, e)))
}
