//! Rare events worth a log line in the agent's log (via aya-log): a service
//! that gets traffic but has no backend, conntrack inserts that failed, port
//! clashes left unresolved, checksum helpers that failed. Counted always;
//! logged at most once a second per CPU, so an attack on an empty service
//! cannot flood the log or slow the fast path (the common path only reads one
//! per-CPU word).
use aya_ebpf::EbpfContext;
use aya_log_ebpf::{
    macro_support::{Argument, IpFormatter},
    warn,
};
use lb_common::counter;

use crate::{
    clock::{now, NS},
    maps::log_state,
    parse::Packet,
};

/// Notes `event` (a `counter` index) for the hook to report when it is done.
#[inline(always)]
pub fn raise(event: u32) {
    if let Some(s) = log_state.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe { (*s)[0] = event as u64 };
    }
}

/// Whether this CPU may log now (and then not again for a second).
#[inline(always)]
fn allowed() -> bool {
    let Some(s) = log_state.get_ptr_mut(0) else { return false };
    let t = now();
    // SAFETY: per-CPU slot.
    unsafe {
        if t.wrapping_sub((*s)[1]) < NS {
            return false;
        }
        (*s)[1] = t;
    }
    true
}

/// A service without backends was asked for a new flow.
#[inline(always)]
pub fn no_backend<C: EbpfContext, A: Copy + IpFormatter + Argument>(ctx: &C, p: &Packet<A>) {
    if allowed() {
        warn!(ctx, "no backend for service {:i}:{} (proto {}): new flow dropped", p.dst, u16::from_be_bytes(p.dport), p.proto);
    }
}

/// Reports (and clears) an event raised while the packet was processed.
#[inline(always)]
pub fn report<C: EbpfContext>(ctx: &C) {
    let Some(s) = log_state.get_ptr_mut(0) else { return };
    // SAFETY: per-CPU slot.
    let event = unsafe { (*s)[0] } as u32;
    if event == 0 {
        return;
    }
    // SAFETY: per-CPU slot.
    unsafe { (*s)[0] = 0 };
    if !allowed() {
        return;
    }
    match event {
        counter::CT_INSERT_FAILED => warn!(ctx, "conntrack insert failed: the flow is forwarded but not tracked"),
        counter::CT_CLASH_UNRESOLVED => warn!(ctx, "no free client port for a clashing flow; an older flow's replies were taken over"),
        counter::DROP_CSUM => warn!(ctx, "a checksum helper failed; packet dropped"),
        _ => {}
    }
}
