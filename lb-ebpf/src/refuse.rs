//! What a refused packet from a pod gets back (kube-proxy's REJECT): a TCP
//! SYN a reset (`reset.rs`), a UDP datagram or an SCTP packet an ICMP port
//! unreachable (`lb_ebpf::unreach`; for SCTP the quote's 8 bytes are the
//! ports and the verification tag), anything else nothing (dropped).
use aya_ebpf::{
    bindings::bpf_adj_room_mode::BPF_ADJ_ROOM_MAC,
    helpers::{bpf_skb_adjust_room, bpf_skb_change_tail},
    programs::TcContext,
};
use lb_common::{counter, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use lb_ebpf::unreach::{headers, quote_sum, HEADERS_LEN, UNREACH_LEN};

use crate::{
    parse::{Packet, TCP_ACK, TCP_SYN},
    reset,
    stats::count,
    verdict::{Verdict, MALFORMED},
};

/// Answers `p` when it is a SYN, a UDP datagram or an SCTP packet; else drops it, counting
/// `reason` either way.
#[inline(always)]
pub fn tc(ctx: &TcContext, p: &Packet, reason: u32) -> Result<Verdict, Verdict> {
    if p.proto == IPPROTO_TCP && p.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        return reset::tc(ctx, p, reason);
    }
    if p.proto == IPPROTO_UDP || p.proto == IPPROTO_SCTP {
        return unreachable(ctx, p, reason);
    }
    Err(Verdict::Drop(reason))
}

/// Turns the datagram in a socket buffer into its port unreachable: room
/// for the new headers is made after the Ethernet header, which moves the
/// datagram's headers into the quote's place, and the payload is cut.
/// Datagrams with IPv4 options are dropped. Out of line, as `reset::tc`,
/// so its few locals stay out of `tc_ingress`'s frame.
#[inline(never)]
fn unreachable(ctx: &TcContext, p: &Packet, reason: u32) -> Result<Verdict, Verdict> {
    if p.l4 != 14 + 20 {
        return Err(Verdict::Drop(reason));
    }
    let (Ok(macs), Ok(len_check)) = (ctx.load::<[u8; 12]>(0), ctx.load::<[u8; 4]>(p.l4 + 4)) else {
        return Err(MALFORMED);
    };
    let h = headers(p.dst, p.src, quote_sum(p.sport, p.dport, len_check));
    // SAFETY: plain helper calls on this program's context.
    let resized = unsafe {
        bpf_skb_adjust_room(ctx.skb.skb, HEADERS_LEN as i32, BPF_ADJ_ROOM_MAC, 0) == 0
            && bpf_skb_change_tail(ctx.skb.skb, UNREACH_LEN as u32, 0) == 0
    };
    if !resized {
        return Err(MALFORMED);
    }
    // Back to the sender: the Ethernet addresses swapped.
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0).map_err(|_| MALFORMED)?;
    ctx.store(14, &h, 0).map_err(|_| MALFORMED)?;
    count(counter::UNREACH_SENT);
    Ok(Verdict::Reply(reason))
}
