//! ICMP errors about NATed flows, at the hooks, for both families: the
//! flow is found from the quoted packet, and the error is rewritten
//! (`lb_ebpf::icmp`) to what its receiver sent and sent on. Errors about
//! anything else pass untouched.
//!
//! The quote reversed is the key of one half of the flow:
//! - a REPLY half: the quote is a packet we forwarded to a backend (after
//!   DNAT/SNAT); the error goes to the client, quoting what the client sent
//!   (a router between the nodes asking for a smaller MTU, a backend's UDP
//!   port unreachable);
//! - a FORWARD half: the quote is a reply we sent to a client (after reverse
//!   NAT); the error goes to the backend, quoting what the backend sent (the
//!   client's path asking for a smaller MTU on a download: IPv4's
//!   "fragmentation needed", IPv6's "packet too big").
use core::mem::size_of;

use aya_ebpf::{helpers::bpf_csum_diff, programs::TcContext};
use lb_common::{counter, direction, flow_flags};
use lb_ebpf::{
    csum,
    icmp::{self, End, Translation, TCP_CHECK},
    ip::Ip,
};

use crate::{
    family::Family,
    parse::{Packet, ETH_LEN},
    verdict::Verdict,
};

const NOT_OURS: Verdict = Verdict::Pass(counter::PASS_OTHER_L4);

/// The block `lb_ebpf::icmp` rewrites, for family `F`.
type Block<F> = <<F as Family>::Addr as Ip>::Block;

/// What [`translate`] did.
pub const UNTOUCHED: u32 = 0;
pub const TRANSLATED: u32 = 1;
/// Translated, for a SNAT flow: XDP must forward it (see `forward::route`).
pub const TRANSLATED_SNAT: u32 = 2;

/// Translates the ICMP error in `[data, end)` (an IP packet of `ip_len`
/// bytes) in place, if it is one `lb_ebpf::icmp::quote` takes, about a
/// flow of ours: see the module doc for where it then goes. In place in
/// both hooks (tc made the headers linear before parsing, `tc::run`).
#[inline(always)]
pub fn translate<F: Family>(data: usize, end: usize, ip_len: u16) -> u32 {
    if F::SPLIT {
        translate_call::<F>(data, end, ip_len)
    } else {
        translate_inline::<F>(data, end, ip_len)
    }
}

/// [`translate`] with a frame of its own (see `Family::SPLIT`).
#[inline(never)]
fn translate_call<F: Family>(data: usize, end: usize, ip_len: u16) -> u32 {
    translate_inline::<F>(data, end, ip_len)
}

/// An address's checksum difference (`lb_ebpf::csum::diff`): an IPv4
/// one computed inline, an IPv6 one by the kernel (`bpf_csum_diff`), whose
/// sum is in the CPU's byte order (little-endian words) and is turned
/// around. On failure (it has none for these sizes) nothing is added.
#[inline(always)]
fn addr_diff(old: &[u8], new: &[u8]) -> u32 {
    if old.len() == 4 {
        return csum::diff(old, new);
    }
    let len = old.len() as u32;
    // SAFETY: both point at `len` readable bytes (16: a multiple of 4, the
    // packet's and a map value's); the helper only reads them.
    let d = unsafe { bpf_csum_diff(old.as_ptr() as *mut u32, len, new.as_ptr() as *mut u32, len, 0) };
    if d < 0 {
        return 0;
    }
    csum::fold(d as u32).swap_bytes() as u32
}

#[inline(always)]
fn translate_inline<F: Family>(data: usize, end: usize, ip_len: u16) -> u32 {
    let at = data + ETH_LEN;
    let len = size_of::<Block<F>>();
    // The block must be the packet's, not Ethernet padding after it.
    if at + len > end || (ip_len as usize) < len {
        return UNTOUCHED;
    }
    // SAFETY: bounds-checked above; nothing else refers to these bytes.
    let block = unsafe { &mut *(at as *mut Block<F>) };
    let Some(q) = icmp::quote::<F::Addr>(block) else { return UNTOUCHED };
    // The quote reversed is the key of one half of the flow.
    let (src, dst, sport, dport) = icmp::ends::<F::Addr>(block);
    // SAFETY: a program-written map value, read while this program runs.
    let Some(e) = (unsafe { F::conntrack().get(F::flow_key(dst, src, dport, sport, q.proto)) }) else {
        return UNTOUCHED;
    };
    let t = if e.direction == direction::REPLY {
        Translation {
            src: End { addr: &e.peer_addr, port: &e.peer_port },
            dst: End { addr: &e.nat_addr, port: &e.nat_port },
            // An error from the backend itself reads as from the service.
            from_dst: icmp::from_quoted_dst::<F::Addr>(block),
        }
    } else {
        Translation { src: End { addr: &e.nat_addr, port: &e.nat_port }, dst: End { addr: &e.peer_addr, port: &e.peer_port }, from_dst: false }
    };
    let check = at + icmp::inner_l4::<F::Addr>() + TCP_CHECK;
    let tcp = if q.proto == lb_common::IPPROTO_TCP && check + 2 <= end {
        // SAFETY: bounds-checked just above.
        Some(unsafe { &mut *(check as *mut [u8; 2]) })
    } else {
        None
    };
    icmp::rewrite::<F::Addr>(block, &q, &t, tcp, addr_diff);
    if e.flags & flow_flags::SNAT != 0 {
        TRANSLATED_SNAT
    } else {
        TRANSLATED
    }
}

/// An ICMP packet leaving at tc egress: an error from a backend on this
/// node (or a router) to a client is translated; anything else passes.
#[inline(always)]
pub fn tc<F: Family>(ctx: &TcContext, p: &Packet<F::Addr>) -> Verdict {
    match translate::<F>(ctx.data(), ctx.data_end(), p.ip_len) {
        UNTOUCHED => NOT_OURS,
        _ => Verdict::Pass(counter::ICMP_NAT),
    }
}
