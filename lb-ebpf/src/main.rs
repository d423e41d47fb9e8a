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
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values go to the helpers by reference on purpose: by value each is copied onto the 512-byte stack first (IPv6 flows are 80 bytes)"
)]

mod clock;
mod confirmed;
mod conntrack;
mod dsr;
mod events;
mod family;
mod flowkey;
mod forward;
mod gate;
mod icmp_error;
mod load;
mod maps;
mod mode;
mod nat;
mod node_sctp;
mod parse;
mod parse6;
mod portbits;
mod refuse;
mod replies;
mod reset;
mod sctp_nat;
mod select;
mod service;
mod sock;
mod stage;
mod stats;
mod tc;
mod unserved;
mod verdict;
mod xdp;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use family::{V4, V6NoSctp, V6Sctp, V6};
use lb_common::counter;

/// XDP on an uplink: balance packets to service addresses, pass the rest.
/// IPv6 frames are tail-called to `xdp_lb_v6`. `inline(always)` reaches the
/// body the `#[xdp]` macro wraps, which LLVM otherwise left a call of its
/// own: ~5 ns on every packet (`prog_cost` A/B).
#[xdp]
#[inline(always)]
pub fn xdp_lb(ctx: XdpContext) -> u32 {
    xdp::dispatch(&ctx)
}

/// tc ingress on host-side pod interfaces: balance east-west service traffic.
#[classifier]
pub fn tc_ingress(ctx: TcContext) -> i32 {
    tc::ingress_v4(&ctx)
}

/// tc egress on every attached interface: reverse NAT of replies.
#[classifier]
pub fn tc_egress(ctx: TcContext) -> i32 {
    tc::egress_v4(&ctx)
}

/// `xdp_lb` for IPv6 frames (tail-called; the same path, over IPv6, SCTP
/// handed to `xdp_sctp_v6`: see `family::V6Of`).
#[xdp]
pub fn xdp_lb_v6(ctx: XdpContext) -> u32 {
    stats::count(counter::IPV6);
    xdp::run::<V6NoSctp>(&ctx)
}

/// `xdp_lb_v6` for SCTP (tail-called; the same path, over IPv6 SCTP).
#[xdp]
pub fn xdp_sctp_v6(ctx: XdpContext) -> u32 {
    xdp::run::<V6Sctp>(&ctx)
}

/// `xdp_sctp_v6`'s rewrite and forwarding (tail-called, see `stage.rs`).
#[xdp]
pub fn xdp_sctp_v6_nat(ctx: XdpContext) -> u32 {
    xdp::run_nat::<V6Sctp>(&ctx)
}

/// IPv6 DSR, sent and received (tail-called by `xdp_lb_v6`, see `xdp::run_dsr`).
#[xdp]
pub fn xdp_dsr_v6(ctx: XdpContext) -> u32 {
    xdp::run_dsr::<V6NoSctp>(&ctx)
}

/// `tc_ingress` for IPv6 frames (tail-called).
#[classifier]
pub fn tc_ingress_v6(ctx: TcContext) -> i32 {
    stats::count(counter::IPV6);
    tc::ingress::<V6>(&ctx)
}

/// `tc_egress` for IPv6 frames (tail-called).
#[classifier]
pub fn tc_egress_v6(ctx: TcContext) -> i32 {
    stats::count(counter::IPV6);
    tc::egress::<V6>(&ctx)
}

/// cgroup connect4: a node socket connecting to a service gets a backend.
#[cgroup_sock_addr(connect4)]
pub fn sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::balance::<V4>(&ctx)
}

/// cgroup sendmsg4: the same for unconnected UDP sends.
#[cgroup_sock_addr(sendmsg4)]
pub fn sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::balance::<V4>(&ctx)
}

/// cgroup recvmsg4: replies from the backend read as from the service.
#[cgroup_sock_addr(recvmsg4)]
pub fn sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse::<V4>(&ctx)
}

/// cgroup getpeername4: a balanced socket's peer reads as the service.
#[cgroup_sock_addr(getpeername4)]
pub fn sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse::<V4>(&ctx)
}

/// The four for IPv6 sockets; an IPv4-mapped address of a dual-stack
/// socket goes through IPv4's maps (sock.rs).
#[cgroup_sock_addr(connect6)]
pub fn sock_connect6(ctx: SockAddrContext) -> i32 {
    sock::balance::<V6>(&ctx)
}

#[cgroup_sock_addr(sendmsg6)]
pub fn sock_sendmsg6(ctx: SockAddrContext) -> i32 {
    sock::balance::<V6>(&ctx)
}

#[cgroup_sock_addr(recvmsg6)]
pub fn sock_recvmsg6(ctx: SockAddrContext) -> i32 {
    sock::reverse::<V6>(&ctx)
}

#[cgroup_sock_addr(getpeername6)]
pub fn sock_getpeername6(ctx: SockAddrContext) -> i32 {
    sock::reverse::<V6>(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never executed.
    loop {}
}
