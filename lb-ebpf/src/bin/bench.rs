//! Test-only programs for `cargo xtask bench`; never attached in production.
//!
//! - floors: `bench_pass` (XDP_PASS), `bench_tx` (swap MACs, XDP_TX),
//!   `bench_drop` (count, XDP_DROP), `bench_redirect` (to one ifindex),
//!   `bench_tc_ok` (TC_ACT_OK);
//! - wrappers `bench_wrap_xdp` / `bench_wrap_tc`: with `repeat > 1` the kernel
//!   does not restore the packet between iterations, so a NAT program would
//!   see its own output. The wrappers copy a template frame back into the
//!   packet on every iteration (and, for the new-flow case, give it a fresh
//!   source address and port) and tail-call the program under test;
//! - `bench_gen`: the live-frames generator (XDP_TX of every frame; the
//!   flows are `xdplb_bench_traffic`'s, shared with the AF_PACKET sender).
//!
//! The map value layouts are mirrored in `tests/bench/src/progs.rs`.
#![no_std]
#![no_main]
#![allow(non_upper_case_globals, reason = "the statics are named as the maps bpftool shows")]

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    btf_maps::{Array, PerCpuArray, ProgramArray},
    helpers::{bpf_get_smp_processor_id, bpf_redirect, bpf_skb_store_bytes, bpf_xdp_adjust_head, bpf_xdp_store_bytes},
    macros::{btf_map, classifier, xdp},
    programs::{TcContext, XdpContext},
    EbpfContext as _,
};
use lb_ebpf::csum;
use xdplb_bench_traffic::{write_flow, TrafficConfig, TRAFFIC_FRAME_LEN};

/// Frames of the generator are 64 bytes (minimum Ethernet frame without FCS + 4).
const FRAME_LEN: usize = TRAFFIC_FRAME_LEN;
/// Room for a wrapper's template: IPv6 TCP is 74 bytes, with extension
/// headers or options more.
const TEMPLATE_MAX: usize = 128;
const ETH_TYPE: usize = 12;
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const IPPROTO_UDP: u8 = 17;
/// IPv4 offsets; the templates have no IP options.
const IP_PROTO: usize = 14 + 9;
const IP_CHECK: usize = 14 + 10;
const IP_SRC: usize = 14 + 12;
const L4_SPORT: usize = 14 + 20;
/// IPv6 offsets; the templates have no extension headers.
const IP6_NEXT: usize = 14 + 6;
const IP6_SRC: usize = 14 + 8;
const L4_SPORT6: usize = 14 + 40;

/// The frame the wrappers restore before each iteration.
#[repr(C)]
pub struct Template {
    pub frame: [u8; TEMPLATE_MAX],
    /// Bytes of `frame` in use (1..=TEMPLATE_MAX).
    pub len: u32,
    /// Non-zero: give every iteration a distinct source address and port.
    pub vary: u32,
}
const _: () = assert!(core::mem::size_of::<Template>() == TEMPLATE_MAX + 8);

/// Template of the wrappers, at index 0. Written by the bench.
#[btf_map]
static bench_template: Array<Template, 1> = Array::new();

/// Iteration counter of the new-flow case (a plain array: one runner at a time).
#[btf_map]
static bench_seq: Array<u32, 1> = Array::new();

/// Slot 0: the XDP program under test.
#[btf_map]
static bench_xdp_jump: ProgramArray<1> = ProgramArray::new();

/// Slot 0: the tc program under test.
#[btf_map]
static bench_tc_jump: ProgramArray<1> = ProgramArray::new();

/// Frames dropped by `bench_drop`, per CPU.
#[btf_map]
static bench_drops: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Per-CPU sequence of the generator.
#[btf_map]
static bench_gen_seq: PerCpuArray<u32, 1> = PerCpuArray::new();

/// Generator settings, at index 0.
#[btf_map]
static bench_gen_cfg: Array<TrafficConfig, 1> = Array::new();

/// Ifindex `bench_redirect` sends to, at index 0.
#[btf_map]
static bench_redirect_to: Array<u32, 1> = Array::new();

#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

#[xdp]
pub fn bench_tx(ctx: XdpContext) -> u32 {
    let Some(eth) = frame::<12>(ctx.data(), ctx.data_end()) else { return xdp_action::XDP_DROP };
    // SAFETY: `frame` checked that 12 bytes are inside the packet.
    unsafe {
        let mut macs = *eth;
        macs.rotate_left(6);
        *eth = macs;
    }
    xdp_action::XDP_TX
}

#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    if let Some(n) = bench_drops.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, only this CPU writes it.
        unsafe { *n += 1 };
    }
    xdp_action::XDP_DROP
}

#[xdp]
pub fn bench_redirect(_ctx: XdpContext) -> u32 {
    match bench_redirect_to.get(0) {
        // SAFETY: helper without memory arguments.
        Some(ifindex) => unsafe { bpf_redirect(*ifindex, 0) as u32 },
        None => xdp_action::XDP_ABORTED,
    }
}

#[classifier]
pub fn bench_tc_ok(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Restores the template, varies it if asked, tail-calls `bench_xdp_jump[0]`.
/// Returns XDP_ABORTED when anything fails, which no measured case expects.
#[xdp]
pub fn bench_wrap_xdp(ctx: XdpContext) -> u32 {
    let Some(t) = bench_template.get_ptr(0) else { return xdp_action::XDP_ABORTED };
    // SAFETY: read of a map value.
    let Some(want) = template_len(unsafe { (*t).len }) else { return xdp_action::XDP_ABORTED };
    // A program that added or took off header bytes (DSR's IPv4 option)
    // left the frame longer or shorter: the frame starts where it did.
    let len = (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: plain helper call on this program's context.
    if len != want as i32 && unsafe { bpf_xdp_adjust_head(ctx.as_ptr() as _, len - want as i32) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: `t` points to a map value of TEMPLATE_MAX bytes and more, `want` is at most that.
    if unsafe { bpf_xdp_store_bytes(ctx.as_ptr() as _, 0, t as *mut _, want) } != 0 {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: read of a map value.
    if unsafe { (*t).vary } != 0 && vary_source(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    // SAFETY: on success this does not return.
    unsafe { bench_xdp_jump.tail_call(&ctx, 0) };
    xdp_action::XDP_ABORTED
}

/// As `bench_wrap_xdp`, for tc programs (no variation). Returns TC_ACT_SHOT on failure.
#[classifier]
pub fn bench_wrap_tc(ctx: TcContext) -> i32 {
    let Some(t) = bench_template.get_ptr(0) else { return TC_ACT_SHOT };
    // SAFETY: read of a map value.
    let Some(want) = template_len(unsafe { (*t).len }) else { return TC_ACT_SHOT };
    // SAFETY: `t` points to a map value of TEMPLATE_MAX bytes and more, `want` is at most that.
    if unsafe { bpf_skb_store_bytes(ctx.as_ptr() as _, 0, t as *const _, want, 0) } != 0 {
        return TC_ACT_SHOT;
    }
    // SAFETY: on success this does not return.
    unsafe { bench_tc_jump.tail_call(&ctx, 0) };
    TC_ACT_SHOT
}

/// The template's length, if the helpers may copy that much of it.
#[inline(always)]
fn template_len(len: u32) -> Option<u32> {
    (len != 0 && len as usize <= TEMPLATE_MAX).then_some(len)
}

/// Gives the frame the next source address and port of `bench_seq`: the low
/// 16 bits become the port, the high 16 the last two address bytes. The
/// checksums are updated, so the program under test sees a valid frame.
#[inline(always)]
fn vary_source(ctx: &XdpContext) -> Option<()> {
    let seq = bench_seq.get_ptr_mut(0)?;
    // SAFETY: one runner at a time (the bench pins itself); a plain add.
    let n = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    let eth = frame::<14>(data, end)?;
    // SAFETY: `frame` checked that the Ethernet header is inside the packet.
    if unsafe { [(*eth)[ETH_TYPE], (*eth)[ETH_TYPE + 1]] } == ETH_P_IPV6 {
        // SAFETY: `frame` checked the length; the offsets are below it.
        vary::<{ L4_SPORT6 + 20 }>(unsafe { &mut *frame(data, end)? }, n, IP6_SRC + 14, L4_SPORT6, IP6_NEXT, None);
    } else {
        // SAFETY: as above.
        vary::<FRAME_LEN>(unsafe { &mut *frame(data, end)? }, n, IP_SRC + 2, L4_SPORT, IP_PROTO, Some(IP_CHECK));
    }
    Some(())
}

/// Writes `n` into the address bytes at `addr_low` (two) and the source port
/// at `l4`; fixes the IP header checksum at `ip_check` if the family has one,
/// and the TCP or UDP checksum (the protocol byte is at `proto`). Inlined with
/// constant offsets: the verifier rejects variable ones here.
#[inline(always)]
fn vary<const N: usize>(f: &mut [u8; N], n: u32, addr_low: usize, l4: usize, proto: usize, ip_check: Option<usize>) {
    let new_addr = ((n >> 16) as u16).to_be_bytes();
    let new_port = (n as u16).to_be_bytes();
    let old_addr = [f[addr_low], f[addr_low + 1]];
    let old_port = [f[l4], f[l4 + 1]];
    f[addr_low..addr_low + 2].copy_from_slice(&new_addr);
    f[l4..l4 + 2].copy_from_slice(&new_port);
    if let Some(at) = ip_check {
        let ipc = csum::replace2(u16::from_be_bytes([f[at], f[at + 1]]), old_addr, new_addr);
        f[at..at + 2].copy_from_slice(&ipc.to_be_bytes());
    }
    let l4_check = if f[proto] == IPPROTO_UDP { l4 + 6 } else { l4 + 16 };
    let c = u16::from_be_bytes([f[l4_check], f[l4_check + 1]]);
    let c = csum::replace2(csum::replace2(c, old_addr, new_addr), old_port, new_port);
    f[l4_check..l4_check + 2].copy_from_slice(&c.to_be_bytes());
}

/// The live-frames generator: every frame is the next of
/// `xdplb_bench_traffic` (established flows, and new ones if configured; the
/// CPU number tells senders apart), sent back out of the interface it was
/// injected on (XDP_TX).
#[xdp]
pub fn bench_gen(ctx: XdpContext) -> u32 {
    match gen(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn gen(ctx: &XdpContext) -> Option<()> {
    let cfg = bench_gen_cfg.get_ptr(0)?;
    let seq = bench_gen_seq.get_ptr_mut(0)?;
    // SAFETY: `cfg` points to a map value whose `frame` has FRAME_LEN bytes.
    let template = unsafe { core::ptr::addr_of!((*cfg).frame) };
    // Live frames are recycled with whatever the receiver left in them (a
    // forwarded frame comes back with new MACs and TTL): restore first.
    // SAFETY: `template` is readable for FRAME_LEN bytes.
    if unsafe { bpf_xdp_store_bytes(ctx.as_ptr() as _, 0, template as *mut _, FRAME_LEN as u32) } != 0 {
        return None;
    }
    // SAFETY: per-CPU slot, only this CPU writes it.
    let n = unsafe {
        *seq = (*seq).wrapping_add(1);
        *seq
    };
    // SAFETY: helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    // SAFETY: a map value, read only.
    let flow = unsafe { &*cfg }.flow(n, cpu)?;
    let p = frame::<FRAME_LEN>(ctx.data(), ctx.data_end())?;
    // SAFETY: `frame` checked that FRAME_LEN bytes are inside the packet.
    write_flow(unsafe { &mut *p }, &flow);
    Some(())
}

/// The first `N` bytes of the packet, if it has that many.
#[inline(always)]
fn frame<const N: usize>(data: usize, end: usize) -> Option<*mut [u8; N]> {
    if data + N > end {
        return None;
    }
    Some(data as *mut [u8; N])
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path; this is never executed.
    loop {}
}
