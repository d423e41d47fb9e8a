//! Answering a SYN to a service without backends with a TCP reset, from
//! either hook and in either family: the frame is rebuilt in place
//! (`lb_ebpf::rst`) and sent back where it came from.
use aya_ebpf::{
    helpers::{bpf_skb_change_tail, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
};
use lb_common::{counter, service_flags, IPPROTO_TCP};
use lb_ebpf::rst::{rst_len, write_reset, Rst, Syn};

use crate::{
    conntrack::Origin,
    family::Family,
    parse::{Packet, TCP_ACK, TCP_SYN},
    service,
    stats::count,
    verdict::{Verdict, MALFORMED},
};

/// Whether `p` opens a TCP connection (SYN without ACK): the only packet we
/// answer with a reset; anything else to a backendless service is dropped.
/// So is a SYN to a `Local`-policy frontend whose endpoints are all on other
/// nodes (`LOCAL_ELSEWHERE`): kube-proxy drops it, rejecting only when the
/// service has no usable endpoint anywhere.
#[inline(always)]
pub fn wants_reset<F: Family>(p: &Packet<F::Addr>, origin: Origin) -> bool {
    p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN && !local_elsewhere::<F>(p, origin)
}

#[inline(always)]
pub fn local_elsewhere<F: Family>(p: &Packet<F::Addr>, origin: Origin) -> bool {
    service::lookup::<F>(p.dst, p.dport, p.proto, origin == Origin::Pod)
        .is_some_and(|s| s.flags & service_flags::LOCAL_ELSEWHERE != 0)
}

#[inline(always)]
fn syn_of<A>(p: &Packet<A>, macs: [u8; 12], seq: [u8; 4]) -> Syn<'_, A> {
    Syn { macs, src: &p.src, dst: &p.dst, sport: p.sport, dport: p.dport, seq }
}

/// Turns the SYN in an XDP buffer into its reset (then XDP_TX).
#[inline(always)]
pub fn xdp<F: Family>(ctx: &XdpContext, p: &Packet<F::Addr>) -> Result<Verdict, Verdict> {
    // `black_box`: without it LLVM drops the first check as implied by the
    // second, which the verifier cannot follow (see nat.rs).
    let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
    let l4 = ctx.data() + p.l4;
    if data + 12 > end || l4 + 8 > end {
        return Err(MALFORMED);
    }
    // SAFETY: both reads were bounds-checked above.
    let (macs, seq) = unsafe { (*(data as *const [u8; 12]), *((l4 + 4) as *const [u8; 4])) };
    let len = rst_len::<F::Addr>();
    // A SYN is at least as long as its reset: the tail only shrinks
    // (options and extension headers dropped).
    let delta = len as i32 - (end - data) as i32;
    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(MALFORMED);
    }
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + len > end {
        return Err(MALFORMED);
    }
    // Built in place (see `Ip::write_header`).
    // SAFETY: bounds-checked above; `Rst` is plain bytes.
    write_reset(unsafe { &mut *(data as *mut Rst<F::Addr>) }, &syn_of(p, macs, seq));
    count(counter::RST_SENT);
    Ok(Verdict::Reply(counter::DROP_NO_BACKEND))
}

/// Turns the SYN in a socket buffer into its reset (then back out of the
/// interface). The checksums are complete; on a veth (pods) a partial
/// checksum state left on the buffer is trusted by the receiver as is.
///
/// Out of line (a BPF-to-BPF call): inlined into `tc_ingress`, 6.1's
/// verifier followed a path LLVM knows is impossible, on which a register
/// holding the SYN's MAC bytes held a map value pointer instead, and refused
/// the frame's construction ("invalid size of register spill"). As its own
/// function it is verified from its arguments alone.
#[inline(never)]
pub fn tc<F: Family>(ctx: &TcContext, p: &Packet<F::Addr>, reason: u32) -> Result<Verdict, Verdict> {
    let (Ok(macs), Ok(seq)) = (ctx.load::<[u8; 12]>(0), ctx.load::<[u8; 4]>(p.l4 + 4)) else {
        return Err(MALFORMED);
    };
    let len = rst_len::<F::Addr>();
    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) } != 0 {
        return Err(MALFORMED);
    }
    // Built in place, in the linear part (see `Ip::write_header`).
    let _ = ctx.pull_data(len as u32);
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + len > end {
        return Err(MALFORMED);
    }
    // SAFETY: bounds-checked above; `Rst` is plain bytes.
    write_reset(unsafe { &mut *(data as *mut Rst<F::Addr>) }, &syn_of(p, macs, seq));
    count(counter::RST_SENT);
    Ok(Verdict::Reply(reason))
}
