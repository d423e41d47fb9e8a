//! The XDP hook on uplinks: parse, balance, rewrite, pass to the stack.
//! One path for both families ([`run`] over a [`Family`]); `xdp_lb` runs
//! the IPv4 instance and tail-calls `xdp_lb_v6` for IPv6 frames.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::counter;
use lb_ebpf::ip::Ip;

use crate::{
    conntrack::{self, Origin, Rewrite},
    dsr::{self, Carrier},
    events,
    family::{l4, Family, V4, V6},
    forward, gate, icmp_error,
    maps::{dsr_xdp, family_xdp, sctp_xdp},
    nat::{self, Side},
    parse::{ptr_at, Packet, ETH_LEN, ETH_P_IPV6},
    reset, service, stage,
    stats::count,
    verdict::Verdict,
};

/// `xdp_lb`: IPv6 frames go to `xdp_lb_v6` (if the agent has not filled
/// the program array, they are passed as not IPv4); the rest is IPv4's.
/// A packet that is no service's by its port (`gate.rs`) is passed here,
/// IPv6 before its tail call.
#[inline(always)]
pub fn dispatch(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    // `black_box`: from the frame's length LLVM would prove bounds checks
    // of the gate redundant, which the verifier cannot follow.
    let len = core::hint::black_box(end - data);
    // SAFETY: bounds-checked in the condition.
    if data + ETH_LEN <= end && unsafe { *((data + 12) as *const [u8; 2]) } == ETH_P_IPV6 {
        if gate::skip::<V6>(data, end, len) {
            count(counter::IPV6);
            return gated();
        }
        // SAFETY: a tail call to a program of the same type; returns only on failure.
        unsafe { family_xdp.tail_call(ctx, 0) };
    } else if gate::skip::<V4>(data, end, len) {
        return gated();
    }
    run::<V4>(ctx)
}

/// The verdict of a packet the gate passed, counted as `run` counts a
/// packet that is no service's (nothing was raised for `events::report`).
#[inline(always)]
fn gated() -> u32 {
    count(counter::PACKETS);
    count(counter::PASS_NOT_SERVICE);
    xdp_action::XDP_PASS
}

#[inline(always)]
pub fn run<F: Carrier>(ctx: &XdpContext) -> u32 {
    // `xdp_sctp_v6` runs for a packet `xdp_lb_v6` counted and handed over.
    let handed_over = F::L4 == l4::SCTP_ONLY;
    if !handed_over {
        count(counter::PACKETS);
    }
    // A DSR packet for a backend of this node, recognised from its fixed
    // offsets before parsing: every path through the parser would verify
    // the test again, and the IPv6 program has no room left.
    if F::OWN_PROGRAM && !handed_over && F::marked(ctx) {
        return finish(ctx, dsr_program(ctx));
    }
    finish(ctx, either(try_run::<F>(ctx)))
}

/// The verdict of a `try_*` step, whichever way it came.
#[inline(always)]
fn either(r: Result<Verdict, Verdict>) -> Verdict {
    match r {
        Ok(v) | Err(v) => v,
    }
}

/// Counts `verdict`'s outcome and returns its XDP action.
#[inline(always)]
fn finish(ctx: &XdpContext, verdict: Verdict) -> u32 {
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
fn try_run<F: Carrier>(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let p = match F::parse(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data()) {
        Ok(p) => p,
        // SCTP of an instance without it: to its program (see `family::l4`).
        Err(v) if !F::SCTP && v.reason() == counter::PASS_SCTP6_PROGRAM => return Err(sctp_program(ctx)),
        Err(v) => return Err(v),
    };
    let only_sctp = F::L4 == l4::SCTP_ONLY;
    // ICMP errors of NATed flows (neighbour discovery was passed by the parser).
    if !only_sctp && p.proto == <F::Addr as Ip>::ICMP {
        let (data, end) = (ctx.data(), ctx.data_end());
        return Ok(match icmp_error::translate::<F>(data, end, p.l4, p.ip_len) {
            how @ (icmp_error::UNTOUCHED | icmp_error::UNWALKABLE) => Verdict::Pass(icmp_error::untouched_reason(how)),
            how => {
                // Where the error goes now: its outer addresses.
                // SAFETY: `ptr_at` checked both addresses are inside the frame.
                let [src, dst] = unsafe { *ptr_at::<[F::Addr; 2]>(data, end, ETH_LEN + F::IP_SRC)? };
                send::<F>(ctx, &p, src, dst, how == icmp_error::TRANSLATED_SNAT, counter::ICMP_NAT)
            }
        });
    }
    // Sent here by a balancing node with DSR, for a backend of this node
    // (with a program of its own, handed over before parsing: see `run`).
    if !F::OWN_PROGRAM && dsr::may_carry::<F>(&p) {
        if let Some(v) = receive_dsr::<F>(ctx, &p) {
            return Ok(v);
        }
    }
    // XDP on an uplink never sees a backend of this node as a client.
    let balanced = match service::balance::<F>(&p, Origin::External) {
        Err(v) if v.reason() == counter::DROP_NO_BACKEND => {
            events::no_backend(ctx, &p);
            if !only_sctp && reset::wants_reset::<F>(&p, Origin::External) {
                return reset::xdp::<F>(ctx, &p);
            }
            return Err(v);
        }
        other => other?,
    };
    if let Some(rw) = balanced {
        if rw.dsr() {
            if F::OWN_PROGRAM {
                return Err(dsr_program(ctx));
            }
            return dsr::xdp_forward::<F>(ctx, &p, &rw);
        }
        return rewrite::<F>(ctx, &p, Side::Dst, &rw);
    }
    // The reply of a flow SNATed to a backend on another node comes back to
    // this node's address: rewrite it back to service → client, and send it
    // on (the client is on the uplink's side).
    if conntrack::maybe_snat_reply::<F>(&p) {
        if let Some(rw) = conntrack::reply::<F>(&p) {
            return rewrite::<F>(ctx, &p, Side::Src, &rw);
        }
    }
    Ok(Verdict::Pass(counter::PASS_NOT_SERVICE))
}

/// Rewrites `side` of `p` to `rw` (`Dst`: DNAT to a backend; `Src`: the
/// reply of a SNAT flow, back to service → client) and sends it on; in
/// the next program for IPv6 SCTP (see `stage.rs`).
#[inline(always)]
fn rewrite<F: Family>(ctx: &XdpContext, p: &Packet<F::Addr>, side: Side, rw: &Rewrite<F::Addr>) -> Result<Verdict, Verdict> {
    if F::L4 == l4::SCTP_ONLY {
        if !stage::put::<F>(side, rw) {
            return Err(Verdict::Drop(counter::DROP_SCTP6_STAGE));
        }
        // SAFETY: a tail call to a program of the same type; returns only on failure.
        unsafe { sctp_xdp.tail_call(ctx, NAT_STAGE) };
        return Err(Verdict::Drop(counter::DROP_SCTP6_PROGRAM));
    }
    rewrite_here::<F>(ctx, p, side, rw)
}

#[inline(always)]
fn rewrite_here<F: Family>(ctx: &XdpContext, p: &Packet<F::Addr>, side: Side, rw: &Rewrite<F::Addr>) -> Result<Verdict, Verdict> {
    nat::xdp_rewrite::<F>(ctx, p, side, rw)?;
    Ok(match side {
        Side::Dst => send::<F>(ctx, p, rw.peer_addr, rw.addr, rw.snat(), counter::NAT_FORWARD),
        // Its source is a service address of this node: the kernel would drop it.
        Side::Src => send::<F>(ctx, p, rw.addr, rw.peer_addr, true, counter::NAT_REPLY),
    })
}

/// `sctp_xdp`'s index of `xdp_sctp_v6_nat` (`xdp_sctp_v6`'s is 0).
const NAT_STAGE: u32 = 1;

/// `xdp_sctp_v6_nat`: the rewrite `xdp_sctp_v6` decided, done (`stage.rs`).
#[inline(always)]
pub fn run_nat<F: Carrier>(ctx: &XdpContext) -> u32 {
    finish(ctx, either(try_nat::<F>(ctx)))
}

#[inline(always)]
fn try_nat<F: Carrier>(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let p = F::parse(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data())?;
    let (side, rw) = stage::take::<F>().ok_or(Verdict::Drop(counter::DROP_SCTP6_STAGE))?;
    rewrite_here::<F>(ctx, &p, side, &rw)
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

/// A DSR packet for a backend of this node: its carrier off, sent on to
/// the pod; `None`: not one.
#[inline(always)]
fn receive_dsr<F: Carrier>(ctx: &XdpContext, p: &Packet<F::Addr>) -> Option<Verdict> {
    match dsr::xdp_decap::<F>(ctx, p) {
        Ok(Some(q)) => Some(send::<F>(ctx, &q, q.src, q.dst, false, counter::DSR_DECAP)),
        Ok(None) => None,
        Err(v) => Some(v),
    }
}

/// Tail-calls the family's DSR program (`Carrier::OWN_PROGRAM`); returns
/// only if it is not loaded: the packet is then dropped.
#[inline(always)]
fn dsr_program(ctx: &XdpContext) -> Verdict {
    // SAFETY: a tail call to a program of the same type; returns only on failure.
    unsafe { dsr_xdp.tail_call(ctx, 0) };
    Verdict::Drop(counter::DROP_DSR_PROGRAM)
}

/// Tail-calls `xdp_sctp_v6` (see `family::l4`); returns only if it is not
/// loaded: the packet is then passed, as IPv6 SCTP was before.
#[inline(always)]
fn sctp_program(ctx: &XdpContext) -> Verdict {
    // SAFETY: a tail call to a program of the same type; returns only on failure.
    unsafe { sctp_xdp.tail_call(ctx, 0) };
    Verdict::Pass(counter::PASS_SCTP6_PROGRAM)
}

/// `xdp_dsr_v6`: a DSR packet `run` handed over, received (carrier on) or
/// to send (its flow, just found or made by `run`, in conntrack).
#[inline(always)]
pub fn run_dsr<F: Carrier>(ctx: &XdpContext) -> u32 {
    finish(ctx, either(try_dsr::<F>(ctx)))
}

#[inline(always)]
fn try_dsr<F: Carrier>(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let p = F::parse(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data())?;
    if dsr::may_carry::<F>(&p) {
        if let Some(v) = receive_dsr::<F>(ctx, &p) {
            return Ok(v);
        }
    }
    let rw = conntrack::dsr_forward::<F>(&p).ok_or(Verdict::Drop(counter::DROP_DSR_FLOW_MISSING))?;
    dsr::xdp_forward::<F>(ctx, &p, &rw)
}
