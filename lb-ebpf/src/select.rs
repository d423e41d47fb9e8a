//! Backend selection for a new flow. Every algorithm has the same shape:
//! service and packet in, a slot (1..=count) out; the agent fills the slots
//! (for Maglev, with the service's lookup table). ClientIP affinity sits in
//! front of all of them.
use aya_ebpf::helpers::bpf_get_prandom_u32;
use lb_common::{algorithm, AffinityKey, AffinityV4, BackendId, Service, SlotKey};
use lb_ebpf::hash::flow_hash;

use crate::{
    clock::{since, NS},
    family::Family,
    load::{self, atomic_add},
    maps::{rr_state, service_slots},
    parse::Packet,
};

#[inline(always)]
fn random() -> u32 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_get_prandom_u32() }
}

#[inline(always)]
fn slot_backend(service_id: u32, slot: u32) -> Option<BackendId> {
    // SAFETY: read-only copy of an agent-written value.
    unsafe { service_slots.get(SlotKey { service_id, slot }) }.copied()
}

/// What a new flow's choice depends on besides its service: ClientIP
/// affinity keys on `src`, Maglev hashes all four.
pub struct Client<A = [u8; 4]> {
    pub src: A,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub proto: u8,
}

/// The slot and backend of a new flow of `p` to `svc` (`svc.count` > 0), or
/// `None` if the slot is empty (the agent is mid-update; counted as no backend).
#[inline(always)]
pub fn pick<F: Family>(svc: &Service, p: &Packet<F::Addr>, now: u64) -> Option<(u32, BackendId)> {
    if F::SPLIT {
        pick_call::<F>(svc, p, now)
    } else {
        pick_inline::<F>(svc, p, now)
    }
}

/// [`pick`] with a frame of its own (see `Family::SPLIT`).
#[inline(never)]
fn pick_call<F: Family>(svc: &Service, p: &Packet<F::Addr>, now: u64) -> Option<(u32, BackendId)> {
    pick_inline::<F>(svc, p, now)
}

#[inline(always)]
fn pick_inline<F: Family>(svc: &Service, p: &Packet<F::Addr>, now: u64) -> Option<(u32, BackendId)> {
    let client = Client {
        src: p.src,
        sport: p.sport,
        dport: p.dport,
        proto: p.proto,
    };
    pick_for::<F>(svc, &client, now)
}

/// As [`pick`], for a flow described by its client (a socket has no packet yet).
#[inline(always)]
pub fn pick_for<F: Family>(svc: &Service, p: &Client<F::Addr>, now: u64) -> Option<(u32, BackendId)> {
    // Callers check it; out of line (`Family::SPLIT`) the divisions below
    // would not know it.
    if svc.count == 0 {
        return None;
    }
    let affinity = AffinityKey {
        service_id: svc.id,
        client: p.src,
    };
    if svc.affinity_timeout_s != 0 {
        // SAFETY: read-only copy of a program-written value.
        if let Some(a) = unsafe { F::affinity().get(&affinity) } {
            let live = since(now, a.last_used_ns) <= svc.affinity_timeout_s as u64 * NS;
            if live && a.slot <= svc.count && slot_backend(svc.id, a.slot) == Some(a.backend_id) {
                let kept = AffinityV4 {
                    last_used_ns: now,
                    ..*a
                };
                let _ = F::affinity().insert(&affinity, &kept, 0);
                return Some((a.slot, a.backend_id));
            }
        }
    }
    let slot = match svc.algorithm {
        algorithm::ROUND_ROBIN => round_robin(svc.id) % svc.count + 1,
        algorithm::MAGLEV => flow_hash(F::hash_word(&p.src), p.sport, p.dport, p.proto) % svc.count + 1,
        algorithm::LEAST_CONN => least_loaded(svc),
        _ => random() % svc.count + 1,
    };
    let backend_id = slot_backend(svc.id, slot)?;
    if svc.affinity_timeout_s != 0 {
        let a = AffinityV4 {
            backend_id,
            slot,
            last_used_ns: now,
        };
        let _ = F::affinity().insert(&affinity, &a, 0);
    }
    Some((slot, backend_id))
}

/// Next position of the service's rotation. One shared counter per service,
/// bumped atomically: exact round-robin across CPUs, and the shared cache line
/// is touched only on new flows, never on established ones.
#[inline(always)]
fn round_robin(service_id: u32) -> u32 {
    match rr_state.get_ptr_mut(service_id) {
        Some(p) => atomic_add(p, 1) as u32,
        None => 0,
    }
}

/// Services with at most this many slots get an exact least-connections
/// scan; larger ones the power of two choices.
const SCAN_MAX: u32 = 16;

/// The slot whose backend has the fewest live flows: an exact scan (from a
/// random start, so ties spread) for small services; for large ones, the
/// better of two random slots (power of two choices: nearly as good, O(1)).
#[inline(always)]
fn least_loaded(svc: &Service) -> u32 {
    let load = |slot| match slot_backend(svc.id, slot) {
        Some(id) => load::of(id),
        None => u64::MAX,
    };
    let start = random() % svc.count;
    if svc.count > SCAN_MAX {
        let (a, b) = (start + 1, random() % svc.count + 1);
        return if load(a) <= load(b) { a } else { b };
    }
    let (mut best, mut best_load) = (start + 1, u64::MAX);
    for i in 0..SCAN_MAX {
        if i >= svc.count {
            break;
        }
        let slot = (start + i) % svc.count + 1;
        let l = load(slot);
        if l < best_load {
            (best, best_load) = (slot, l);
        }
    }
    best
}
