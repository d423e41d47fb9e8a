//! Counting: one outcome counter per packet, per-service counters for balanced traffic.
use lb_common::{counter, ServiceStats};

use crate::maps::{counters, service_stats};

/// Adds one to the per-CPU counter `idx` (`lb_common::counter`).
#[inline(always)]
pub fn count(idx: u32) {
    if idx == counter::CT_INSERT_FAILED || idx == counter::CT_CLASH_UNRESOLVED || idx == counter::DROP_CSUM {
        crate::events::raise(idx);
    }
    if let Some(p) = counters.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *p += 1 };
    }
}

/// Applies `f` to the per-CPU stats of `service_id`.
#[inline(always)]
pub fn service(service_id: u32, f: impl FnOnce(&mut ServiceStats)) {
    if let Some(p) = service_stats.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        f(unsafe { &mut *p });
    }
}
