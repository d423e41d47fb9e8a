//! The XDP hook on uplinks: parse, balance, rewrite, pass to the stack.
//! One path for both families ([`run`] over a [`Family`]); `xdp_lb` runs
//! the IPv4 instance and tail-calls `xdp_lb_v6` for IPv6 frames.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::counter;
use lb_ebpf::ip::Ip;

use crate::{
    conntrack::{self, Origin, Rewrite},
    dsr, events,
    family::{Family, V4, V6NoSctp},
    forward, icmp_error,
    maps::family_xdp,
    nat::{self, Side},
    parse::{ptr_at, Packet, ETH_LEN, ETH_P_IPV6},
    reset, service,
    stats::count,
    verdict::Verdict,
};

/// What a family's XDP path does besides balancing: IPv4 also receives
/// and sends DSR.
pub trait XdpFamily: Family {
    /// Before the service lookup: `Some` when the packet was handled.
    #[inline(always)]
    fn early(_ctx: &XdpContext, _p: &Packet<Self::Addr>) -> Result<Option<Verdict>, Verdict> {
        Ok(None)
    }
    /// A packet of a DSR flow (never made for a family without `DSR`).
    #[inline(always)]
    fn dsr_forward(_ctx: &XdpContext, _p: &Packet<Self::Addr>, _rw: &Rewrite<Self::Addr>) -> Result<Verdict, Verdict> {
        Err(crate::verdict::MALFORMED)
    }
}

impl XdpFamily for V4 {
    #[inline(always)]
    fn early(ctx: &XdpContext, p: &Packet) -> Result<Option<Verdict>, Verdict> {
        // Sent here by a balancing node with DSR, for a backend of this node.
        if let Some(q) = dsr::xdp_decap(ctx, p)? {
            return Ok(Some(send::<V4>(ctx, &q, q.src, q.dst, false, counter::DSR_DECAP)));
        }
        Ok(None)
    }

    #[inline(always)]
    fn dsr_forward(ctx: &XdpContext, p: &Packet, rw: &Rewrite) -> Result<Verdict, Verdict> {
        dsr::xdp_forward(ctx, p, rw)
    }
}

impl XdpFamily for V6NoSctp {}

/// `xdp_lb`: IPv6 frames go to `xdp_lb_v6` (if the agent has not filled
/// the program array, they are passed as not IPv4); the rest is IPv4's.
#[inline(always)]
pub fn dispatch(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    // SAFETY: bounds-checked in the condition.
    if data + ETH_LEN <= end && unsafe { *((data + 12) as *const [u8; 2]) } == ETH_P_IPV6 {
        // SAFETY: a tail call to a program of the same type; returns only on failure.
        unsafe { family_xdp.tail_call(ctx, 0) };
    }
    run::<V4>(ctx)
}

#[inline(always)]
pub fn run<F: XdpFamily>(ctx: &XdpContext) -> u32 {
    count(counter::PACKETS);
    let verdict = match try_run::<F>(ctx) {
        Ok(v) | Err(v) => v,
    };
    count(verdict.reason());
    events::report(ctx);
    match verdict {
        Verdict::Pass(_) => xdp_action::XDP_PASS,
        Verdict::Drop(_) => xdp_action::XDP_DROP,
        Verdict::Bounce(_) | Verdict::Reply(_) => xdp_action::XDP_TX,
        Verdict::Action(action, _) => action,
        // Only tc egress delivers; XDP never makes one.
        Verdict::Deliver(_) => xdp_action::XDP_DROP,
    }
}

#[inline(always)]
fn try_run<F: XdpFamily>(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let p = F::parse(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data())?;
    // ICMP errors of NATed flows (neighbour discovery was passed by the parser).
    if p.proto == <F::Addr as Ip>::ICMP {
        let (data, end) = (ctx.data(), ctx.data_end());
        return Ok(match icmp_error::translate::<F>(data, end, p.ip_len) {
            icmp_error::UNTOUCHED => Verdict::Pass(counter::PASS_OTHER_L4),
            how => {
                // Where the error goes now: its outer addresses.
                // SAFETY: `ptr_at` checked both addresses are inside the frame.
                let [src, dst] = unsafe { *ptr_at::<[F::Addr; 2]>(data, end, ETH_LEN + F::IP_SRC)? };
                send::<F>(ctx, &p, src, dst, how == icmp_error::TRANSLATED_SNAT, counter::ICMP_NAT)
            }
        });
    }
    if let Some(v) = F::early(ctx, &p)? {
        return Ok(v);
    }
    // XDP on an uplink never sees a backend of this node as a client.
    let balanced = match service::balance::<F>(&p, Origin::External) {
        Err(v) if v.reason() == counter::DROP_NO_BACKEND => {
            events::no_backend(ctx, &p);
            if reset::wants_reset::<F>(&p, Origin::External) {
                return reset::xdp::<F>(ctx, &p);
            }
            return Err(v);
        }
        other => other?,
    };
    if let Some(rw) = balanced {
        if rw.dsr() {
            return F::dsr_forward(ctx, &p, &rw);
        }
        nat::xdp_rewrite::<F>(ctx, &p, Side::Dst, &rw)?;
        return Ok(send::<F>(ctx, &p, rw.peer_addr, rw.addr, rw.snat(), counter::NAT_FORWARD));
    }
    // The reply of a flow SNATed to a backend on another node comes back to
    // this node's address: rewrite it back to service → client, and send it
    // on (the client is on the uplink's side).
    if conntrack::maybe_snat_reply::<F>(&p) {
        if let Some(rw) = conntrack::reply::<F>(&p) {
            nat::xdp_rewrite::<F>(ctx, &p, Side::Src, &rw)?;
            return Ok(send::<F>(ctx, &p, rw.addr, rw.peer_addr, true, counter::NAT_REPLY));
        }
    }
    Ok(Verdict::Pass(counter::PASS_NOT_SERVICE))
}

/// The verdict for a rewritten packet from `src` to `dst`: forwarded by XDP
/// when it must be (`must`, see `forward::route`) or may be, else passed to
/// the kernel's forwarding.
#[inline(always)]
fn send<F: Family>(ctx: &XdpContext, p: &Packet<F::Addr>, src: F::Addr, dst: F::Addr, must: bool, reason: u32) -> Verdict {
    match forward::route::<F>(ctx, p, src, dst, must) {
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
