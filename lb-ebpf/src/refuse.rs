//! What a refused packet from a pod gets back (kube-proxy's REJECT), in
//! either family: a TCP SYN a reset (`reset.rs`), a UDP datagram or an
//! SCTP packet an ICMP (ICMPv6) port unreachable (`lb_ebpf::unreach`; for
//! SCTP the quote's 8 bytes are the ports and the verification tag),
//! anything else nothing (dropped).
use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::{bpf_csum_diff, bpf_skb_adjust_room, bpf_skb_change_tail},
    programs::TcContext,
};
use lb_common::{counter, Addr as _, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use lb_ebpf::{
    csum,
    unreach::{headers_len, quote_sum, unreach_len, write_headers, Headers},
};

use crate::{
    family::Family,
    parse::{Packet, ETH_LEN, TCP_ACK, TCP_SYN},
    reset,
    stats::count,
    verdict::{Verdict, MALFORMED},
};

/// Answers `p` when it is a SYN, a UDP datagram or an SCTP packet; else drops it, counting
/// `reason` either way.
#[inline(always)]
pub fn tc<F: Family>(ctx: &TcContext, p: &Packet<F::Addr>, reason: u32) -> Result<Verdict, Verdict> {
    if p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return reset::tc::<F>(ctx, p, reason);
    }
    if p.proto == IPPROTO_UDP || p.proto == IPPROTO_SCTP {
        return unreachable::<F>(ctx, p, reason);
    }
    Err(Verdict::Drop(reason))
}

/// Turns the datagram in a socket buffer into its port unreachable: room
/// for the new headers is made after the Ethernet header, which moves the
/// datagram's headers into the quote's place, and the payload is cut.
/// Datagrams with IPv4 options or IPv6 extension headers are dropped. Out
/// of line, as `reset::tc`, so its few locals stay out of `tc_ingress`'s
/// frame.
#[inline(never)]
fn unreachable<F: Family>(ctx: &TcContext, p: &Packet<F::Addr>, reason: u32) -> Result<Verdict, Verdict> {
    if p.l4 != ETH_LEN + F::IP_HDR {
        return Err(Verdict::Drop(reason));
    }
    let (Ok(macs), Ok(len_check)) = (ctx.load::<[u8; 12]>(0), ctx.load::<[u8; 4]>(p.l4 + 4)) else {
        return Err(MALFORMED);
    };
    // The quoted header's sum: a valid IPv4 header's is 0xffff (its
    // checksum makes it so); IPv6's is its first 8 bytes' and the
    // addresses', which ICMPv6's pseudo header has too. The addresses' by
    // the kernel (`bpf_csum_diff`: in the CPU's byte order, turned around):
    // summed inline, their 32 bytes spill past the stack.
    let (hdr_sum, addr_sum) = if F::IP_CHECK.is_some() {
        (0xffff, 0)
    } else {
        let Ok(head) = ctx.load::<[u8; 8]>(ETH_LEN) else { return Err(MALFORMED) };
        // SAFETY: `Packet` starts with its two addresses (`repr(C)`), 2 *
        // LEN readable bytes, a multiple of 4; the helper only reads them.
        let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, p as *const Packet<F::Addr> as *mut u32, 2 * F::Addr::LEN as u32, 0) };
        if s < 0 {
            return Err(MALFORMED);
        }
        let addr_sum = csum::fold(s as u32).swap_bytes() as u32;
        (csum::add_bytes(addr_sum, &head), addr_sum)
    };
    let quote = quote_sum(hdr_sum, p.sport, p.dport, len_check);
    let len = unreach_len::<F::Addr>();
    // SAFETY: plain helper calls on this program's context.
    let resized = unsafe {
        bpf_skb_adjust_room(ctx.skb.skb, headers_len::<F::Addr>() as i32, BPF_ADJ_ROOM_MAC, 0) == 0
            && bpf_skb_change_tail(ctx.skb.skb, len as u32, 0) == 0
    };
    if !resized {
        return Err(MALFORMED);
    }
    // Built in place, in the linear part (see `Ip::write_header`).
    let _ = ctx.pull_data(len as u32);
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + len > end {
        return Err(MALFORMED);
    }
    // SAFETY: bounds-checked above; both are plain bytes.
    let (eth, h) = unsafe { (&mut *(data as *mut [u8; 12]), &mut *((data + ETH_LEN) as *mut Headers<F::Addr>)) };
    // Back to the sender: the Ethernet addresses swapped.
    eth[..6].copy_from_slice(&macs[6..]);
    eth[6..].copy_from_slice(&macs[..6]);
    write_headers(h, &p.dst, &p.src, quote, addr_sum);
    count(counter::UNREACH_SENT);
    Ok(Verdict::Reply(reason))
}
