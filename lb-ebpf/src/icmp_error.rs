//! ICMP errors about NATed flows, at the hooks, for both families: the
//! flow is found from the quoted packet, and the error is rewritten
//! (`lb_ebpf::icmp`) to what its receiver sent and sent on. Errors about
//! anything else pass untouched. IPv6 extension headers are stepped over:
//! the outer packet's were walked by the parser, the quote's are walked
//! here by the same walker (`parse6::walk`), within the quote.
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
    icmp::{self, End, Error, Translation, TCP_CHECK},
    ip::Ip,
};

use crate::{
    family::Family,
    parse::{Packet, ETH_LEN},
    parse6,
    verdict::Verdict,
};

/// The IP header of family `F`.
type Hdr<F> = <<F as Family>::Addr as Ip>::Hdr;

/// What [`translate`] did.
pub const UNTOUCHED: u32 = 0;
pub const TRANSLATED: u32 = 1;
/// Translated, for a SNAT flow: XDP must forward it (see `forward::route`).
pub const TRANSLATED_SNAT: u32 = 2;
/// Untouched: an ICMPv6 error whose quoted extension headers could not be
/// walked (more than `parse6::EXT_MAX`, cut short by the quote, or a
/// fragment other than an atomic one).
pub const UNWALKABLE: u32 = 3;

/// The pass reason of what [`translate`] left untouched.
#[inline(always)]
pub fn untouched_reason(how: u32) -> u32 {
    if how == UNWALKABLE {
        counter::PASS_ICMP6_QUOTE
    } else {
        counter::PASS_OTHER_L4
    }
}

/// Translates the ICMP error in `[data, end)` (an IP packet of `ip_len`
/// bytes whose ICMP header is at `l4`, past any extension headers) in
/// place, if it is one `lb_ebpf::icmp::quote` takes, about a flow of ours:
/// see the module doc for where it then goes. In place in both hooks (tc
/// made the headers linear before parsing, `tc::run`).
#[inline(always)]
pub fn translate<F: Family>(data: usize, end: usize, l4: usize, ip_len: u16) -> u32 {
    if F::SPLIT {
        translate_call::<F>(data, end, l4, ip_len)
    } else {
        translate_inline::<F>(data, end, l4, ip_len)
    }
}

/// [`translate`] with a frame of its own (see `Family::SPLIT`).
#[inline(never)]
fn translate_call<F: Family>(data: usize, end: usize, l4: usize, ip_len: u16) -> u32 {
    translate_inline::<F>(data, end, l4, ip_len)
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

/// A pointer to the `T` at `off` in the packet, if it lies inside both the
/// frame's readable part (`end`) and the IP packet (`ip_end`, from the
/// frame's start: not Ethernet padding after it).
#[inline(always)]
fn at<T>(data: usize, end: usize, off: usize, ip_end: usize) -> Option<&'static mut T> {
    if off + size_of::<T>() > ip_end || data + off + size_of::<T>() > end {
        return None;
    }
    // SAFETY: bounds-checked above; the hook refers to these bytes through
    // this one reference while it rewrites them.
    Some(unsafe { &mut *((data + off) as *mut T) })
}

/// An ICMP header and the IP header it quotes, as they lie in the packet.
#[repr(C)]
struct Quoted<H> {
    icmp: [u8; 8],
    inner: H,
}

/// The same, with the quote's first 8 L4 bytes right after (IPv4).
#[repr(C)]
struct QuotedL4<H> {
    quoted: Quoted<H>,
    l4: [u8; 8],
}

#[inline(always)]
fn translate_inline<F: Family>(data: usize, end: usize, l4: usize, ip_len: u16) -> u32 {
    let ip_end = ETH_LEN + ip_len as usize;
    let inner = l4 + 8;
    let outer = at::<Hdr<F>>(data, end, ETH_LEN, ip_end);
    // IPv4: the ICMP header, the quoted header and its L4 bytes through one
    // pointer (checked apart, their checks were merged and the verifier
    // lost one). IPv6: the L4 bytes are found past the quote's extension
    // headers, below.
    let (quoted, fixed_l4) = if <F::Addr as Ip>::EXT_HEADERS {
        (at::<Quoted<Hdr<F>>>(data, end, l4, ip_end), None)
    } else {
        match at::<QuotedL4<Hdr<F>>>(data, end, l4, ip_end) {
            Some(QuotedL4 { quoted, l4 }) => (Some(quoted), Some(l4)),
            None => (None, None),
        }
    };
    let (Some(outer), Some(Quoted { icmp: icmp_hdr, inner: inner_hdr })) = (outer, quoted) else {
        return UNTOUCHED;
    };
    if !icmp::is_error::<F::Addr>(icmp_hdr[0]) {
        return UNTOUCHED;
    }
    // The quote's extension headers, walked as a packet's are; it may end
    // anywhere (a truncated quote).
    let next = inner_hdr.as_ref()[<F::Addr as Ip>::PROTO];
    let (quote_l4, proto) = if <F::Addr as Ip>::EXT_HEADERS {
        match parse6::walk(data, end, inner + F::IP_HDR, next, ip_end) {
            Ok(w) => w,
            Err(_) => return UNWALKABLE,
        }
    } else {
        (inner + F::IP_HDR, next)
    };
    let quote_l4_hdr = match fixed_l4 {
        Some(h) => h,
        None => match at::<[u8; 8]>(data, end, quote_l4, ip_end) {
            Some(h) => h,
            None => return UNTOUCHED,
        },
    };
    let mut err = Error { outer, icmp: icmp_hdr, inner: inner_hdr, l4: quote_l4_hdr, proto };
    let Some(q) = icmp::quote::<F::Addr>(&err) else { return UNTOUCHED };
    // The quote reversed is the key of one half of the flow.
    let (src, dst, sport, dport) = icmp::ends::<F::Addr>(&err);
    // SAFETY: a program-written map value, read while this program runs.
    let Some(e) = (unsafe { F::conntrack().get(F::flow_key(dst, src, dport, sport, q.proto)) }) else {
        return UNTOUCHED;
    };
    let t = if e.direction == direction::REPLY {
        Translation {
            src: End { addr: &e.peer_addr, port: &e.peer_port },
            dst: End { addr: &e.nat_addr, port: &e.nat_port },
            // An error from the backend itself reads as from the service.
            from_dst: icmp::from_quoted_dst::<F::Addr>(&err),
        }
    } else {
        Translation { src: End { addr: &e.nat_addr, port: &e.nat_port }, dst: End { addr: &e.peer_addr, port: &e.peer_port }, from_dst: false }
    };
    // Checked against the frame's end only: with the IP packet's too, the
    // checks were merged and the verifier lost this one (an ICMP error is
    // never short enough for Ethernet padding).
    let check = data + quote_l4 + TCP_CHECK;
    let tcp = if q.proto == lb_common::IPPROTO_TCP && check + 2 <= end {
        // SAFETY: bounds-checked just above.
        Some(unsafe { &mut *(check as *mut [u8; 2]) })
    } else {
        None
    };
    icmp::rewrite::<F::Addr>(&mut err, &q, &t, tcp, addr_diff);
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
    match translate::<F>(ctx.data(), ctx.data_end(), p.l4, p.ip_len) {
        TRANSLATED | TRANSLATED_SNAT => Verdict::Pass(counter::ICMP_NAT),
        how => Verdict::Pass(untouched_reason(how)),
    }
}
