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

mod clock;
mod confirmed;
mod conntrack;
mod dsr;
mod events;
mod flowkey;
mod forward;
mod icmp_error;
mod load;
mod maps;
mod mode;
mod nat;
mod parse;
mod refuse;
mod reset;
mod sctp_nat;
mod select;
mod service;
mod sock;
mod stats;
mod tc;
mod unserved;
mod verdict;
mod xdp;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
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

/// cgroup connect4: a node socket connecting to a service gets a backend.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::balance(&ctx)
}

/// cgroup sendmsg4: the same for unconnected UDP sends.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::balance(&ctx)
}

/// cgroup recvmsg4: replies from the backend read as from the service.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

/// cgroup getpeername4: a balanced socket's peer reads as the service.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never executed.
    loop {}
}
