//! xdplb's eBPF programs. Entry points only dispatch; each concern lives in
//! its own module.
#![no_std]
#![no_main]
// Atomic fetch-add for round-robin (see select.rs).
#![allow(
    internal_features,
    reason = "core_intrinsics is the only atomic fetch-add on bpf"
)]
#![feature(core_intrinsics)]

mod conntrack;
mod events;
mod forward;
mod maps;
mod nat;
mod parse;
mod reset;
mod select;
mod service;
mod stats;
mod tc;
mod verdict;
mod xdp;

use aya_ebpf::{
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};

/// XDP on an uplink: balance packets to service addresses, pass the rest.
#[xdp]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    xdp::run(&ctx)
}

/// tc ingress on host-side pod interfaces: balance east-west service traffic.
#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc::ingress(&ctx)
}

/// tc egress on every attached interface: reverse NAT of replies.
#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    tc::egress(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never executed.
    loop {}
}
