//! Live flows per backend (`backend_load`): bumped by conntrack when a flow
//! starts and ends, read by least-connections selection and the metrics.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use lb_common::BackendId;

use crate::maps::backend_load;

/// Adds `v` to the u64 behind `p` atomically; returns the previous value.
///
/// `AtomicU64::fetch_add` is missing on the bpf target (no CAS); the
/// intrinsic lowers to BPF's atomic fetch-add. It must be SeqCst: with
/// Relaxed, LLVM's BPF backend emits the legacy XADD, which returns nothing,
/// and the "old value" read back is garbage (caught by the
/// `round_robin_takes_slots_in_turn` test).
#[inline(always)]
pub fn atomic_add(p: *mut u64, v: u64) -> u64 {
    // SAFETY: `p` points at a live, 8-byte aligned map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, v) }
}

/// Records a flow's start (+1) or end (-1) on its backend's live count.
#[inline(always)]
pub fn change(backend_id: BackendId, up: bool) {
    if let Some(p) = backend_load.get_ptr_mut(backend_id) {
        atomic_add(p, if up { 1 } else { u64::MAX });
    }
}

/// A backend's live flows (`u64::MAX` for an unknown id, so it is never least).
#[inline(always)]
pub fn of(backend_id: BackendId) -> u64 {
    match backend_load.get(backend_id) {
        Some(l) => *l,
        None => u64::MAX,
    }
}
