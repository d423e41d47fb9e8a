//! The XDP hook on uplinks: parse, balance, rewrite, pass to the stack.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::counter;
use lb_ebpf::icmp::IPPROTO_ICMP;

use crate::{
    conntrack::{self, Origin},
    dsr, events, forward, icmp_error,
    nat::{self, Side},
    parse::{self, Packet},
    reset, service,
    stats::count,
    verdict::Verdict,
};

#[inline(always)]
pub fn run(ctx: &XdpContext) -> u32 {
    count(counter::PACKETS);
    let verdict = match try_run(ctx) {
        Ok(v) | Err(v) => v,
    };
    count(verdict.reason());
    events::report(ctx);
    match verdict {
        Verdict::Pass(_) => xdp_action::XDP_PASS,
        Verdict::Drop(_) => xdp_action::XDP_DROP,
        Verdict::Bounce(_) | Verdict::Reply(_) => xdp_action::XDP_TX,
        Verdict::Action(action, _) => action,
    }
}

#[inline(always)]
fn try_run(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let p = parse::parse(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data())?;
    if p.proto == IPPROTO_ICMP {
        return Ok(match icmp_error::xdp(ctx, &p)? {
            Some((t, snat)) => send(ctx, &p, t.outer_src, t.outer_dst, snat, counter::ICMP_NAT),
            None => Verdict::Pass(counter::PASS_OTHER_L4),
        });
    }
    // Sent here by a balancing node with DSR, for a backend of this node.
    if let Some(q) = dsr::xdp_decap(ctx, &p)? {
        return Ok(send(ctx, &q, q.src, q.dst, false, counter::DSR_DECAP));
    }
    // XDP on an uplink never sees a backend of this node as a client.
    let balanced = match service::balance(&p, Origin::External) {
        Err(v) if v.reason() == counter::DROP_NO_BACKEND => {
            events::no_backend(ctx, &p);
            if reset::wants_reset(&p, Origin::External) {
                return reset::xdp(ctx, &p);
            }
            return Err(v);
        }
        other => other?,
    };
    if let Some(rw) = balanced {
        if rw.dsr() {
            return dsr::xdp_forward(ctx, &p, &rw);
        }
        nat::xdp_rewrite(ctx, &p, Side::Dst, &rw)?;
        return Ok(send(ctx, &p, rw.peer_addr, rw.addr, rw.snat(), counter::NAT_FORWARD));
    }
    // The reply of a flow SNATed to a backend on another node comes back to
    // this node's address: rewrite it back to service → client, and send it
    // on (the client is on the uplink's side).
    if conntrack::maybe_snat_reply(&p) {
        if let Some(rw) = conntrack::reply(&p) {
            nat::xdp_rewrite(ctx, &p, Side::Src, &rw)?;
            return Ok(send(ctx, &p, rw.addr, rw.peer_addr, true, counter::NAT_REPLY));
        }
    }
    Ok(Verdict::Pass(counter::PASS_NOT_SERVICE))
}

/// The verdict for a rewritten packet from `src` to `dst`: forwarded by XDP
/// when it must be (`must`, see `forward::route`) or may be, else passed to
/// the kernel's forwarding.
#[inline(always)]
fn send(ctx: &XdpContext, p: &Packet, src: [u8; 4], dst: [u8; 4], must: bool, reason: u32) -> Verdict {
    match forward::route(ctx, p, src, dst, must) {
        Some(action) => {
            count(counter::XDP_REDIRECTED);
            Verdict::Action(action, reason)
        }
        None => {
            if must {
                count(counter::FORWARD_FALLBACK);
            }
            // The stack routes the rewritten packet.
            Verdict::Pass(reason)
        }
    }
}
