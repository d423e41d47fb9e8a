//! The XDP fast path: after DNAT, forward the packet ourselves instead of
//! handing it to the kernel's IP forwarding (which costs ~1 µs/packet and
//! caps a node well below line rate). A FIB lookup gives the egress
//! interface and next-hop MACs; if that interface is one the agent marked
//! as accepting XDP frames (`redirect_ifaces`), the frame is redirected with
//! the TTL decremented, as forwarding would. Anything else — no route, no
//! neighbour entry yet, TTL expiring, an egress that cannot take XDP frames —
//! goes to the kernel unchanged, which knows how to handle it.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext as _,
};
pub use aya_ebpf::bindings::bpf_fib_lookup as FibParams;
use lb_common::config_flags;
use lb_ebpf::csum;

use crate::{
    family::Family,
    maps::{config, redirect_ifaces},
    parse::{Packet, ETH_LEN},
};

const FIB_SUCCESS: i64 = 0;
/// `BPF_FIB_LKUP_RET_FRAG_NEEDED`.
const FIB_FRAG_NEEDED: i64 = 8;

/// Forwards the (already rewritten) packet from `src` to `dst` to its next
/// hop ourselves when allowed; `None`: pass it to the kernel.
///
/// `must`: the packet carries one of this node's own addresses as source (a
/// SNAT flow, or a SNAT reply from a node-address service), which the
/// kernel's forwarding would drop as martian: it goes out of whatever
/// interface the route names (XDP_TX back out of the uplink, the devmap, or
/// a plain redirect). Otherwise the fast path is opt-in (`XDP_REDIRECT` and
/// an egress in `redirect_ifaces`).
#[inline(always)]
pub fn route<F: Family>(ctx: &XdpContext, p: &Packet<F::Addr>, src: F::Addr, dst: F::Addr, must: bool) -> Option<u32> {
    if !must && !redirect_configured() {
        return None;
    }
    if F::SPLIT {
        route_call::<F>(ctx, p, &[src, dst], must)
    } else {
        route_inline::<F>(ctx, p, src, dst, must)
    }
}

/// [`route`] with a frame of its own (see `Family::SPLIT`).
#[inline(never)]
fn route_call<F: Family>(ctx: &XdpContext, p: &Packet<F::Addr>, ends: &[F::Addr; 2], must: bool) -> Option<u32> {
    route_inline::<F>(ctx, p, ends[0], ends[1], must)
}

#[inline(always)]
fn route_inline<F: Family>(ctx: &XdpContext, p: &Packet<F::Addr>, src: F::Addr, dst: F::Addr, must: bool) -> Option<u32> {
    let mut fib = blank();
    match lookup::<F>(ctx, p, src, dst, 0, &mut fib) {
        Lookup::Found => apply::<F>(ctx, &fib, must),
        _ => None,
    }
}

/// A zeroed `bpf_fib_lookup`, the valid input before it is filled, as
/// eight word stores: `mem::zeroed` compiles to a call of memset, a byte
/// loop (~20 ns per forwarded packet, `prog_cost`); `black_box` keeps LLVM
/// from making the stores that memset again.
#[inline(always)]
pub fn blank() -> FibParams {
    let zero = core::hint::black_box(0u64);
    // SAFETY: bpf_fib_lookup is 64 bytes of plain integers (the transmute
    // checks the size); all-zero bytes are a valid value.
    unsafe { core::mem::transmute::<[u64; 8], FibParams>([zero; 8]) }
}

/// The outcome of a FIB lookup for a packet.
pub enum Lookup {
    /// A route and a neighbour: the packet can be forwarded ([`apply`]).
    Found,
    /// The egress MTU (carried) is smaller than the packet plus `extra`.
    FragNeeded(u16),
    /// No route, no neighbour entry yet, or the lookup failed: the kernel knows.
    Kernel,
}

/// Whether the agent turned on the XDP forwarding fast path.
#[inline(always)]
fn redirect_configured() -> bool {
    matches!(config.get(0), Some(c) if c.flags & config_flags::XDP_REDIRECT != 0)
}

/// Looks up how the packet from `src` to `dst` leaves, as if it were
/// `extra` bytes longer (what an encapsulation will add): the MTU check is
/// the helper's, against the egress route's MTU.
#[inline(always)]
pub fn lookup<F: Family>(ctx: &XdpContext, p: &Packet<F::Addr>, src: F::Addr, dst: F::Addr, extra: u16, fib: &mut FibParams) -> Lookup {
    F::fib_addrs(fib, &src, &dst);
    fib.l4_protocol = p.proto;
    fib.sport = u16::from_ne_bytes(p.sport);
    fib.dport = u16::from_ne_bytes(p.dport);
    fib.__bindgen_anon_1.tot_len = p.ip_len + extra;
    // SAFETY: reading the context's ingress interface.
    fib.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: the helper reads and writes `fib` only.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), fib, core::mem::size_of::<FibParams>() as i32, 0) };
    match rc {
        FIB_SUCCESS => Lookup::Found,
        // SAFETY: on FRAG_NEEDED the helper wrote the MTU over `tot_len` (a union).
        FIB_FRAG_NEEDED => Lookup::FragNeeded(unsafe { fib.__bindgen_anon_1.mtu_result }),
        _ => Lookup::Kernel,
    }
}

/// Sends the frame to the next hop `fib` names: decrements the TTL (hop
/// limit), sets the MACs and picks how it leaves (see [`route`] for
/// `must`). `None` before the frame is touched: pass it to the kernel.
#[inline(always)]
pub fn apply<F: Family>(ctx: &XdpContext, fib: &FibParams, must: bool) -> Option<u32> {
    let cfg_redirect = redirect_configured();
    // SAFETY: reading the context's ingress interface.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // How it leaves, decided before the frame is touched.
    let devmap = redirect_ifaces.get_ifindex(fib.ifindex).is_some();
    let out = if fib.ifindex == ingress && must {
        Out::Tx
    } else if devmap && cfg_redirect {
        Out::Devmap
    } else if must {
        Out::Redirect
    } else {
        return None;
    };
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_LEN + F::IP_HDR > end {
        return None;
    }
    // SAFETY: Ethernet and the fixed IP header were bounds-checked above.
    unsafe {
        // The 16-bit word holding the TTL (with the protocol) or the hop
        // limit (with the next header), for the IPv4 checksum update.
        let word = (data + ETH_LEN + (F::TTL & !1)) as *mut [u8; 2];
        let at = F::TTL & 1;
        if (*word)[at] <= 1 {
            return None; // the kernel sends the ICMP time exceeded
        }
        let old = *word;
        (*word)[at] -= 1;
        if let Some(off) = F::IP_CHECK {
            let check = (data + ETH_LEN + off) as *mut [u8; 2];
            *check = csum::replace2(u16::from_be_bytes(*check), old, *word).to_be_bytes();
        }
        *(data as *mut [u8; 6]) = fib.dmac;
        *((data + 6) as *mut [u8; 6]) = fib.smac;
    }
    match out {
        Out::Tx => Some(xdp_action::XDP_TX),
        Out::Devmap => redirect_ifaces.redirect(fib.ifindex, xdp_action::XDP_PASS as u64).ok(),
        // SAFETY: plain helper call; flags 0 = egress of `fib.ifindex`.
        Out::Redirect => Some(unsafe { bpf_redirect(fib.ifindex, 0) } as u32),
    }
}

/// How a forwarded frame leaves.
enum Out {
    /// Back out of the interface it came in on.
    Tx,
    /// Through `redirect_ifaces` (bulked, to an interface that takes XDP frames).
    Devmap,
    /// Through `bpf_redirect` (any interface whose driver takes XDP frames).
    Redirect,
}
