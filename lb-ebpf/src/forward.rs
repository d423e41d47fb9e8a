//! The XDP fast path: after DNAT, forward the packet ourselves instead of
//! handing it to the kernel's IP forwarding (which costs ~1 µs/packet and
//! caps a node well below line rate). A FIB lookup gives the egress
//! interface and next-hop MACs; if that interface is one the agent marked
//! as accepting XDP frames (`redirect_ifaces`), the frame is redirected with
//! the TTL decremented, as forwarding would. Anything else — no route, no
//! neighbour entry yet, TTL expiring, an egress that cannot take XDP frames —
//! goes to the kernel unchanged, which knows how to handle it.
//!
//! The FIB's answer is cached per (ingress interface, destination) in
//! `next_hop_v4` / `next_hop_v6` (the lookup was ~90 ns of a SNAT packet's
//! ~300, `prog_cost`), and copied into this CPU's slot of
//! `next_hop_slots_v4` / `_v6`, direct-mapped by the destination's low
//! bits, which is read first (an index instead of a hash lookup, ~14 ns
//! of a forwarded packet; checked the same way). An entry is used only while its generation is
//! `next_hop_gen[0]`, which the agent bumps on every route, neighbour,
//! link, address, rule or nexthop change netlink reports, and only for a
//! packet that fits the route MTU it recorded; anything else asks the FIB
//! again. A generation, not a lifetime: a lifetime would send to an old
//! MAC until it ran out, and would need the clock on every packet. While
//! the agent hears no changes it sets `NEXT_HOP_OFF` in the generation:
//! no entry matches it and none is written, so every packet asks the FIB
//! (a bit, not a flag in `config`: it costs the fast path no extra map
//! read, and the agent turns it on and off with the same single write). The
//! cache assumes the route does not depend on the packet's source or
//! ports: policy routing by those is not followed for these packets.
use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_fib_lookup, bpf_redirect},
    programs::XdpContext,
    EbpfContext as _,
};
use aya_ebpf::bindings::bpf_fib_lookup as FibParams;
use lb_common::{config_flags, counter, hop_slot, HopKey, HopSlot, NextHop, NEXT_HOP_OFF};
use lb_ebpf::csum;

use crate::{
    family::{same, Family},
    maps::{config, next_hop_gen, redirect_ifaces},
    parse::{Packet, ETH_LEN},
    stats::count,
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
    let mut hop = empty();
    match lookup_in::<F, true>(ctx, p, src, dst, 0, &mut hop) {
        Lookup::Found(hop) => apply::<F>(ctx, hop, must),
        _ => None,
    }
}

/// A zeroed `bpf_fib_lookup`, the valid input before it is filled, as
/// eight word stores: `mem::zeroed` compiles to a call of memset, a byte
/// loop (~20 ns per forwarded packet, `prog_cost`); `black_box` keeps LLVM
/// from making the stores that memset again.
#[inline(always)]
fn blank() -> FibParams {
    let zero = core::hint::black_box(0u64);
    // SAFETY: bpf_fib_lookup is 64 bytes of plain integers (the transmute
    // checks the size); all-zero bytes are a valid value.
    unsafe { core::mem::transmute::<[u64; 8], FibParams>([zero; 8]) }
}

/// A zeroed next hop, to fill: three words, not a memset call (see [`blank`]).
#[inline(always)]
pub fn empty() -> NextHop {
    let zero = core::hint::black_box(0u64);
    // SAFETY: NextHop is 24 bytes of plain integers (the transmute checks
    // the size); all-zero bytes are a valid value.
    unsafe { core::mem::transmute::<[u64; 3], NextHop>([zero; 3]) }
}

/// The outcome of a next-hop lookup for a packet.
pub enum Lookup<'a> {
    /// A route and a neighbour: the packet can be forwarded ([`apply`]).
    /// The cache's entry itself, or the FIB's answer: a copy of the entry
    /// compiled to a call of a byte-wise `memmove` (seen in `perf`).
    Found(&'a NextHop),
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
/// `extra` bytes longer (what an encapsulation will add): from the cache
/// when its entry is current and the packet fits the MTU it recorded,
/// else from the FIB (whose MTU check, against the egress route's MTU,
/// then answers) into `hop`, caching a success.
///
/// Without this CPU's slots (DSR's path): with them, the IPv6 DSR program
/// failed verification (LLVM spilled an unset register after a call, "R1
/// !read_ok"), so DSR reads the hash cache first.
#[inline(always)]
pub fn lookup<'a, F: Family>(ctx: &XdpContext, p: &Packet<F::Addr>, src: F::Addr, dst: F::Addr, extra: u16, hop: &'a mut NextHop) -> Lookup<'a> {
    lookup_in::<F, false>(ctx, p, src, dst, extra, hop)
}

/// [`lookup`], reading this CPU's slot first and filling it when `SLOTS`.
#[inline(always)]
fn lookup_in<'a, F: Family, const SLOTS: bool>(ctx: &XdpContext, p: &Packet<F::Addr>, src: F::Addr, dst: F::Addr, extra: u16, hop: &'a mut NextHop) -> Lookup<'a> {
    // SAFETY: reading the context's ingress interface.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let key = HopKey { ifindex: ingress, dst };
    // Read before the FIB is asked: a change after this read bumps it past
    // what the entry records.
    let generation = next_hop_gen.get(0).map_or(0, |g| *g);
    let len = p.ip_len + extra;
    // This CPU's slot for the destination first: an index, no hash.
    let slot = if SLOTS { F::hop_slots().get_ptr_mut(hop_slot(&dst)) } else { None };
    if let Some(s) = slot {
        // SAFETY: this CPU's slot, valid for this program run and written
        // by this CPU alone (a program run is not interrupted by another on it).
        let s: &'a HopSlot<F::Addr> = unsafe { &*s };
        if s.ifindex == ingress && same(&s.dst, &dst) && s.hop.generation == generation && len <= s.hop.mtu {
            return Lookup::Found(&s.hop);
        }
    }
    if let Some(cached) = F::next_hops().get_ptr(&key) {
        // SAFETY: a live entry of this map, valid for this program run. (A
        // CPU replacing it after a generation bump may recycle the element
        // while it is read, as for conntrack entries: a window of a few
        // instructions, once per change.)
        let cached: &'static NextHop = unsafe { &*cached };
        if cached.generation == generation && len <= cached.mtu {
            return Lookup::Found(remember::<F>(slot, ingress, &dst, cached));
        }
    }
    count(counter::FIB_LOOKUP);
    let mut fib = blank();
    F::fib_addrs(&mut fib, &src, &dst);
    fib.l4_protocol = p.proto;
    fib.sport = u16::from_ne_bytes(p.sport);
    fib.dport = u16::from_ne_bytes(p.dport);
    fib.__bindgen_anon_1.tot_len = len;
    fib.ifindex = ingress;
    // SAFETY: the helper reads and writes `fib` only.
    let rc = unsafe { bpf_fib_lookup(ctx.as_ptr(), &mut fib, core::mem::size_of::<FibParams>() as i32, 0) };
    match rc {
        FIB_SUCCESS => {
            hop.generation = generation;
            hop.ifindex = fib.ifindex;
            hop.smac = fib.smac;
            hop.dmac = fib.dmac;
            // SAFETY: on success the helper wrote the route's MTU over
            // `tot_len` (a union; since Linux 5.12).
            hop.mtu = unsafe { fib.__bindgen_anon_1.mtu_result };
            hop._pad = [0; 2];
            // Off (the agent hears no routing changes): nothing is cached.
            // A full cache evicts another destination; a failed write
            // only means the next packet asks the FIB too.
            if generation & NEXT_HOP_OFF == 0 {
                let _ = F::next_hops().insert(&key, &*hop, 0);
                return Lookup::Found(remember::<F>(slot, ingress, &dst, hop));
            }
            Lookup::Found(hop)
        }
        // SAFETY: on FRAG_NEEDED the helper wrote the MTU over `tot_len` (a union).
        FIB_FRAG_NEEDED => Lookup::FragNeeded(unsafe { fib.__bindgen_anon_1.mtu_result }),
        _ => Lookup::Kernel,
    }
}

/// Copies `hop` (for `ingress`, `dst`) into this CPU's slot, if there is
/// one, and returns what to use: the copy, or `hop` itself. Word by word:
/// a struct copy compiles to a byte-wise `memmove` call (see [`apply`]).
#[inline(always)]
fn remember<'a, F: Family>(slot: Option<*mut HopSlot<F::Addr>>, ingress: u32, dst: &F::Addr, hop: &'a NextHop) -> &'a NextHop {
    let Some(s) = slot else { return hop };
    // SAFETY: this CPU's slot (see `lookup`), valid for this program run.
    let s: &'a mut HopSlot<F::Addr> = unsafe { &mut *s };
    s.ifindex = ingress;
    s.dst = *dst;
    // SAFETY: both are 24-byte, 4-aligned `NextHop`s (the casts keep the
    // size); `s` is this CPU's slot, written by this program run alone.
    unsafe {
        let from = hop as *const NextHop as *const u32;
        let to = &mut s.hop as *mut NextHop as *mut u32;
        for i in 0..6 {
            core::ptr::write_volatile(to.add(i), *from.add(i));
        }
    }
    &s.hop
}

/// Sends the frame to the next hop `hop` names: decrements the TTL (hop
/// limit), sets the MACs and picks how it leaves (see [`route`] for
/// `must`). `None` before the frame is touched: pass it to the kernel.
#[inline(always)]
pub fn apply<F: Family>(ctx: &XdpContext, hop: &NextHop, must: bool) -> Option<u32> {
    // SAFETY: reading the context's ingress interface.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    // How it leaves, decided before the frame is touched (back out of the
    // uplink needs neither the config nor the devmap).
    let out = if hop.ifindex == ingress && must {
        Out::Tx
    } else if redirect_configured() && redirect_ifaces.get_ifindex(hop.ifindex).is_some() {
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
        // Both MACs (bytes 8..20 of the entry, in the header's order) as
        // three words: copied as 6-byte arrays they compiled to two calls
        // of a byte-wise memmove (with a copy of the entry, ~40 ns of a
        // SNAT packet, `prog_cost`).
        let words = *(hop as *const NextHop as *const [u32; 6]);
        for (i, w) in [words[2], words[3], words[4]].into_iter().enumerate() {
            ((data + 4 * i) as *mut u32).write_unaligned(w);
        }
    }
    match out {
        Out::Tx => Some(xdp_action::XDP_TX),
        Out::Devmap => redirect_ifaces.redirect(hop.ifindex, xdp_action::XDP_PASS as u64).ok(),
        // SAFETY: plain helper call; flags 0 = egress of `hop.ifindex`.
        Out::Redirect => Some(unsafe { bpf_redirect(hop.ifindex, 0) } as u32),
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
