//! The tc hooks. Ingress on host-side pod interfaces balances service traffic
//! (east-west); egress on every attached interface rewrites replies back to
//! the service address (reverse NAT). Malformed packets are counted and
//! passed: tc is not where the node drops other people's traffic.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use lb_common::counter;

use crate::{
    conntrack,
    nat::{self, Side},
    parse::{self, Packet},
    service,
    stats::count,
    verdict::Verdict,
};

/// Longest header chain we read: Ethernet + IPv4 with options + TCP.
const HEADERS_MAX: u32 = 14 + 60 + 20;

#[inline(always)]
pub fn ingress(ctx: &TcContext) -> i32 {
    run(ctx, |ctx, p| match service::balance(p)? {
        Some(rw) => {
            nat::tc_rewrite(ctx, p, Side::Dst, &rw)?;
            Ok(Verdict::Pass(counter::NAT_FORWARD))
        }
        None => Ok(Verdict::Pass(counter::PASS_NOT_SERVICE)),
    })
}

#[inline(always)]
pub fn egress(ctx: &TcContext) -> i32 {
    run(ctx, |ctx, p| match conntrack::reply(p) {
        Some(rw) => {
            nat::tc_rewrite(ctx, p, Side::Src, &rw)?;
            Ok(Verdict::Pass(counter::NAT_REPLY))
        }
        None => Ok(Verdict::Pass(counter::PASS_NOT_SERVICE)),
    })
}

#[inline(always)]
fn run(ctx: &TcContext, f: impl FnOnce(&TcContext, &Packet) -> Result<Verdict, Verdict>) -> i32 {
    count(counter::PACKETS);
    // Make the headers linear so direct packet access can see them; a shorter
    // packet is pulled whole.
    let want = if ctx.len() < HEADERS_MAX { ctx.len() } else { HEADERS_MAX };
    if (ctx.data_end() - ctx.data()) < want as usize {
        let _ = ctx.pull_data(want);
    }
    let verdict = match parse::parse(ctx.data(), ctx.data_end()) {
        Ok(p) => match f(ctx, &p) {
            Ok(v) | Err(v) => v,
        },
        Err(v) => Verdict::Pass(v.reason()),
    };
    count(verdict.reason());
    match verdict {
        Verdict::Pass(_) => TC_ACT_OK,
        Verdict::Drop(_) => TC_ACT_SHOT,
    }
}
