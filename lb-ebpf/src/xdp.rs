//! The XDP hook on uplinks: parse, balance, rewrite, pass to the stack.
use aya_ebpf::{bindings::xdp_action, programs::XdpContext};
use lb_common::counter;

use crate::{
    events, forward,
    nat::{self, Side},
    parse, reset, service,
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
        Verdict::Bounce(_) => xdp_action::XDP_TX,
        Verdict::Action(action, _) => action,
    }
}

#[inline(always)]
fn try_run(ctx: &XdpContext) -> Result<Verdict, Verdict> {
    let p = parse::parse(ctx.data(), ctx.data_end(), ctx.data_end() - ctx.data())?;
    // XDP on an uplink never sees a backend of this node as a client.
    let balanced = match service::balance(&p, false) {
        Err(v) if v.reason() == counter::DROP_NO_BACKEND => {
            events::no_backend(ctx, &p);
            if reset::wants_reset(&p) {
                return reset::xdp(ctx, &p);
            }
            return Err(v);
        }
        other => other?,
    };
    match balanced {
        Some(rw) => {
            nat::xdp_rewrite(ctx, &p, Side::Dst, &rw)?;
            if let Some(action) = forward::redirect(ctx, &p, rw.addr) {
                count(counter::XDP_REDIRECTED);
                return Ok(Verdict::Action(action, counter::NAT_FORWARD));
            }
            // The stack routes the rewritten packet to its backend.
            Ok(Verdict::Pass(counter::NAT_FORWARD))
        }
        None => Ok(Verdict::Pass(counter::PASS_NOT_SERVICE)),
    }
}
