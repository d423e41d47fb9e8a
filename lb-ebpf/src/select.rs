//! Backend selection for a new flow. Every algorithm has the same signature:
//! service in, slot (1..=count) out. The agent fills the slots.
use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{algorithm, ServiceV4};

use crate::maps::rr_state;

/// The slot a new flow of `svc` uses. `svc.count` must be non-zero.
#[inline(always)]
pub fn slot(svc: &ServiceV4) -> u32 {
    let n = if svc.algorithm == algorithm::ROUND_ROBIN {
        round_robin(svc.id)
    } else {
        // SAFETY: helper without preconditions.
        unsafe { bpf_get_prandom_u32() }
    };
    n % svc.count + 1
}

/// Next position of the service's rotation. One shared counter per service,
/// bumped atomically: exact round-robin across CPUs, and the shared cache line
/// is touched only on new flows, never on established ones.
#[inline(always)]
fn round_robin(service_id: u32) -> u32 {
    match rr_state.get_ptr_mut(service_id) {
        // `AtomicU64::fetch_add` is missing on the bpf target (no CAS); the
        // intrinsic lowers to BPF's atomic fetch-add. It must be SeqCst: with
        // Relaxed, LLVM's BPF backend emits the legacy XADD, which returns
        // nothing, and the "old value" read back is garbage (caught by the
        // `round_robin_takes_slots_in_turn` test).
        // SAFETY: the map value is a valid, 8-byte aligned u64 for the program's run.
        Some(p) => unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, 1) as u32 },
        None => 0,
    }
}
