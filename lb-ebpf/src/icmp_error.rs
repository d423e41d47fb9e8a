//! ICMP errors about NATed flows, at the hooks: the flow is found from the
//! quoted packet, and the error is rewritten (`lb_ebpf::icmp`) to what its
//! receiver sent and sent on. Errors about anything else pass untouched.
//!
//! The quote reversed is the key of one half of the flow:
//! - a REPLY half: the quote is a packet we forwarded to a backend (after
//!   DNAT/SNAT); the error goes to the client, quoting what the client sent
//!   (a router between the nodes asking for a smaller MTU, a backend's UDP
//!   port unreachable);
//! - a FORWARD half: the quote is a reply we sent to a client (after reverse
//!   NAT); the error goes to the backend, quoting what the backend sent (the
//!   client's path asking for a smaller MTU on a download).
use aya_ebpf::programs::{TcContext, XdpContext};
use lb_common::{counter, direction, flow_flags, FlowV4};
use lb_ebpf::icmp::{self, End, Quote, Translation, BLOCK, INNER_L4, TCP_CHECK};

use crate::{
    conntrack,
    family::V4,
    parse::{Packet, ETH_LEN},
    verdict::Verdict,
};

const NOT_OURS: Verdict = Verdict::Pass(counter::PASS_OTHER_L4);

/// Where a translated error goes, and whether it carries a SNAT flow's
/// addresses (then XDP must forward it: see `forward::route`).
fn translation(q: &Quote) -> Option<(Translation, bool)> {
    let e: FlowV4 = conntrack::peek::<V4>(q.dst.addr, q.src.addr, q.dst.port, q.src.port, q.proto)?;
    let snat = e.flags & flow_flags::SNAT != 0;
    let t = if e.direction == direction::REPLY {
        Translation {
            // An error from the backend itself reads as from the service.
            outer_src: if q.outer_src == q.dst.addr { e.nat_addr } else { q.outer_src },
            outer_dst: e.peer_addr,
            src: End { addr: e.peer_addr, port: e.peer_port },
            dst: End { addr: e.nat_addr, port: e.nat_port },
        }
    } else {
        Translation {
            outer_src: q.outer_src,
            outer_dst: e.nat_addr,
            src: End { addr: e.nat_addr, port: e.nat_port },
            dst: End { addr: e.peer_addr, port: e.peer_port },
        }
    };
    Some((t, snat))
}

/// The verdict for an ICMP packet at XDP: `Ok(None)` to pass it as it is,
/// `Ok(Some((t, snat)))` after it was translated in place to `t`.
#[inline(always)]
pub fn xdp(ctx: &XdpContext, p: &Packet) -> Result<Option<(Translation, bool)>, Verdict> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let at = data + ETH_LEN;
    // The block must be the packet's, not Ethernet padding after it.
    if at + BLOCK > end || (p.ip_len as usize) < BLOCK {
        return Ok(None);
    }
    // Rewritten in place: a copy on the stack would not fit the XDP
    // program's 512 bytes beside everything inlined with it.
    // SAFETY: bounds-checked above; nothing else refers to these bytes.
    let block = unsafe { &mut *(at as *mut [u8; BLOCK]) };
    let Some(q) = icmp::quote(block) else { return Ok(None) };
    let Some((t, snat)) = translation(&q) else { return Ok(None) };
    let check = at + INNER_L4 + TCP_CHECK;
    let tcp = if q.proto == lb_common::IPPROTO_TCP && check + 2 <= end {
        // SAFETY: bounds-checked just above.
        Some(unsafe { &mut *(check as *mut [u8; 2]) })
    } else {
        None
    };
    icmp::rewrite(block, &q, &t, tcp);
    Ok(Some((t, snat)))
}

/// An ICMP packet leaving at tc egress: an error from a backend on this
/// node (or a router) to a client is translated; anything else passes.
#[inline(always)]
pub fn tc(ctx: &TcContext, p: &Packet) -> Result<Verdict, Verdict> {
    if (p.ip_len as usize) < BLOCK {
        return Ok(NOT_OURS);
    }
    let Ok(mut block) = ctx.load::<[u8; BLOCK]>(ETH_LEN) else { return Ok(NOT_OURS) };
    let Some(q) = icmp::quote(&block) else { return Ok(NOT_OURS) };
    let Some((t, _)) = translation(&q) else { return Ok(NOT_OURS) };
    let check = ETH_LEN + INNER_L4 + TCP_CHECK;
    let mut tcp = ctx.load::<[u8; 2]>(check).ok();
    icmp::rewrite(&mut block, &q, &t, if q.proto == lb_common::IPPROTO_TCP { tcp.as_mut() } else { None });
    let failed = |_| Verdict::Drop(counter::DROP_CSUM);
    ctx.store(ETH_LEN, &block, 0).map_err(failed)?;
    if let (Some(c), lb_common::IPPROTO_TCP) = (tcp, q.proto) {
        ctx.store(check, &c, 0).map_err(failed)?;
    }
    Ok(Verdict::Pass(counter::ICMP_NAT))
}
