//! The dataplane's clock: one coarse monotonic time source shared by
//! conntrack timeouts, affinity and log rate limits.
use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;

pub const NS: u64 = 1_000_000_000;

/// CLOCK_MONOTONIC at tick resolution (a few ms): every timeout is seconds
/// long, and reading the coarse clock costs a fraction of the precise one
/// (~15 ns less per packet here).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Time since `t`; 0 if `t` is ahead of `now` (a stamp from a precise clock,
/// e.g. written by an earlier version, may be up to a tick ahead).
#[inline(always)]
pub fn since(now: u64, t: u64) -> u64 {
    now.saturating_sub(t)
}
