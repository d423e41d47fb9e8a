//! The tc hooks. Ingress on host-side pod interfaces balances service traffic
//! (east-west); egress on every attached interface rewrites replies back to
//! the service address (reverse NAT). Malformed packets are counted and
//! passed: tc is not where the node drops other people's traffic. One path
//! for both families (over a [`Family`]); `tc_ingress` and `tc_egress` run
//! the IPv4 instance and tail-call their IPv6 one for IPv6 frames.
//!
//! Hairpin (a pod reaching its own service and chosen as the backend) is
//! handled at ingress: the packet gets the family's hairpin address as
//! source and goes straight back out of the pod's interface; the pod's
//! reply to that address is reverse-NATed at ingress too and sent back the
//! same way.
use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_OK, TC_ACT_SHOT},
    maps::ProgramArray,
    helpers::bpf_redirect,
    programs::TcContext,
};
use lb_common::{counter, IPPROTO_SCTP};
use lb_ebpf::ip::Ip;

use crate::{
    conntrack::{self, Origin},
    dsr::{self, Carrier},
    events,
    family::{same, Family, V4, V6},
    icmp_error,
    maps::{family_tc_egress, family_tc_ingress},
    nat::{self, Side},
    node_sctp,
    parse::{Packet, ETH_LEN, ETH_P_IPV6},
    refuse, replies, reset, service,
    stats::count,
    unserved::{self, Unserved},
    verdict::Verdict,
};


/// Tail-calls the IPv6 instance in `progs` for an IPv6 frame; returns (to
/// run the IPv4 one) for anything else or if the array is empty.
#[inline(always)]
pub fn dispatch(ctx: &TcContext, progs: &ProgramArray) {
    let (data, end) = (ctx.data(), ctx.data_end());
    // SAFETY: bounds-checked in the condition.
    if data + ETH_LEN <= end && unsafe { *((data + 12) as *const [u8; 2]) } == ETH_P_IPV6 {
        // SAFETY: a tail call to a program of the same type; returns only on failure.
        unsafe { progs.tail_call(ctx, 0) };
    }
}

/// `tc_ingress`: see [`dispatch`].
#[inline(always)]
pub fn ingress_v4(ctx: &TcContext) -> i32 {
    dispatch(ctx, &family_tc_ingress);
    ingress::<V4>(ctx)
}

/// `tc_egress`: a packet that cannot be a reply of ours is passed at once
/// (`replies`), before the IPv6 dispatch (see [`dispatch`]).
#[inline(always)]
pub fn egress_v4(ctx: &TcContext) -> i32 {
    let (data, end, len) = (ctx.data(), ctx.data_end(), ctx.len() as usize);
    if replies::skip::<V4>(data, end, len) {
        return not_reply(false);
    }
    if replies::skip::<V6>(data, end, len) {
        return not_reply(true);
    }
    dispatch(ctx, &family_tc_egress);
    egress::<V4>(ctx)
}

/// What `run` counts for a packet that is no reply (IPv6: `v6`).
#[inline(always)]
fn not_reply(v6: bool) -> i32 {
    count(counter::PACKETS);
    if v6 {
        count(counter::IPV6);
    }
    count(counter::PASS_NOT_SERVICE);
    TC_ACT_OK
}

#[inline(always)]
pub fn ingress<F: Carrier>(ctx: &TcContext) -> i32 {
    run::<F>(ctx, |ctx, p| {
        if p.proto == <F::Addr as Ip>::ICMP {
            return Ok(Verdict::Pass(counter::PASS_OTHER_L4));
        }
        if same(&p.dst, &F::hairpin()) {
            return match conntrack::reply::<F>(p) {
                Some(rw) => {
                    nat::tc_rewrite::<F>(ctx, p, Side::Src, &rw)?;
                    Ok(Verdict::Bounce(counter::NAT_REPLY))
                }
                None => Ok(Verdict::Pass(counter::PASS_NOT_SERVICE)),
            };
        }
        let balanced = match service::balance::<F>(p, Origin::Pod) {
            Err(v) if v.reason() == counter::DROP_NO_BACKEND => {
                events::no_backend(ctx, p);
                // Local policy with endpoints elsewhere: dropped, not refused.
                if reset::local_elsewhere::<F>(p, Origin::Pod) {
                    return Err(v);
                }
                return refuse::tc::<F>(ctx, p, counter::DROP_NO_BACKEND);
            }
            other => other?,
        };
        match balanced {
            Some(rw) => {
                nat::tc_rewrite::<F>(ctx, p, Side::Dst, &rw)?;
                if !same(&rw.peer_addr, &p.src) {
                    return Ok(Verdict::Bounce(counter::NAT_FORWARD));
                }
                Ok(Verdict::Pass(counter::NAT_FORWARD))
            }
            None => match unserved::check::<F>(p.dst) {
                Some(Unserved::Refused) => refuse::tc::<F>(ctx, p, counter::DROP_UNSERVED),
                Some(Unserved::Dropped) => Err(Verdict::Drop(counter::DROP_SERVICE_CIDR)),
                None => Ok(Verdict::Pass(counter::PASS_NOT_SERVICE)),
            },
        }
    })
}

#[inline(always)]
pub fn egress<F: Carrier>(ctx: &TcContext) -> i32 {
    run::<F>(ctx, |ctx, p| {
        if p.proto == <F::Addr as Ip>::ICMP {
            return Ok(icmp_error::tc::<F>(ctx, p));
        }
        match conntrack::reply::<F>(p) {
            Some(rw) => {
                nat::tc_rewrite::<F>(ctx, p, Side::Src, &rw)?;
                if rw.dsr() {
                    dsr::tc_clamp_mss::<F>(ctx, p)?;
                }
                Ok(Verdict::Pass(counter::NAT_REPLY))
            }
            // Unowned: the node's own SCTP INIT to a service is answered.
            None => node_sctp::tc::<F>(ctx, p),
        }
    })
}

#[inline(always)]
fn run<F: Family>(ctx: &TcContext, f: impl FnOnce(&TcContext, &Packet<F::Addr>) -> Result<Verdict, Verdict>) -> i32 {
    count(counter::PACKETS);
    // Make the headers linear so direct packet access can see them; a shorter
    // packet is pulled whole. The buffer may be non-linear beyond: parse
    // checks lengths against `skb->len`, not the linear end. A failed pull
    // leaves the headers short of `data_end`: a counted malformed pass.
    let want = if ctx.len() < F::HEADERS_MAX {
        ctx.len()
    } else {
        F::HEADERS_MAX
    };
    if (ctx.data_end() - ctx.data()) < want as usize {
        pull_headers(ctx, want);
    }
    let verdict = match F::parse(ctx.data(), ctx.data_end(), ctx.len() as usize) {
        Ok(p) => match f(ctx, &p) {
            Ok(v) | Err(v) => v,
        },
        Err(v) => Verdict::Pass(v.reason()),
    };
    count(verdict.reason());
    events::report(ctx);
    match verdict {
        Verdict::Pass(_) | Verdict::Action(..) => TC_ACT_OK,
        Verdict::Drop(_) => TC_ACT_SHOT,
        Verdict::Bounce(_) => bounce(ctx, true),
        // An answer is built with its Ethernet addresses already swapped.
        Verdict::Reply(_) => bounce(ctx, false),
        Verdict::Deliver(_) => deliver(ctx),
    }
}

/// Pulls the first `want` bytes into the linear part, but never, for SCTP,
/// past the common header: an SCTP GSO buffer (a local socket's large
/// message) is a head holding only the Ethernet, IP and SCTP headers with
/// one packet's chunks per `frag_list` buffer, and `skb_segment` crashes the
/// kernel on a head that took in chunk bytes ("kernel BUG at
/// net/core/skbuff.c:4285", `sctp_gso_segment`, seen on 6.1 with a pulled
/// head). The protocol is read without pulling (`bpf_skb_load_bytes`):
/// IPv4's (IHL from the header), or IPv6's next header when it is SCTP
/// (a socket's SCTP over IPv6 carries no extension headers).
/// Out of line: its buffer stays out of the hooks' frames.
#[inline(never)]
fn pull_headers(ctx: &TcContext, want: u32) {
    // Ethertype, then the IP header up to IPv4's protocol (IPv6's next
    // header comes before it).
    let sctp_l4 = match ctx.load::<[u8; 12]>(ETH_LEN - 2) {
        Ok(h) if h[..2] == [0x08, 0x00] && h[11] == IPPROTO_SCTP => Some(ETH_LEN + ((h[2] & 0x0f) as usize) * 4),
        Ok(h) if h[..2] == ETH_P_IPV6 && h[2 + 6] == IPPROTO_SCTP => Some(ETH_LEN + <[u8; 16] as Ip>::HDR_LEN),
        _ => None,
    };
    let want = match sctp_l4 {
        Some(l4) if ((l4 + lb_ebpf::sctp::COMMON_LEN) as u32) < want => (l4 + lb_ebpf::sctp::COMMON_LEN) as u32,
        _ => want,
    };
    let _ = ctx.pull_data(want);
}

/// Sends the packet back out of the interface it arrived on, with the
/// Ethernet addresses swapped (it returns to the host it came from).
#[inline(always)]
fn bounce(ctx: &TcContext, swap_macs: bool) -> i32 {
    if swap_macs {
        count(counter::HAIRPIN);
        if swap(ctx).is_err() {
            return TC_ACT_SHOT;
        }
    }
    // SAFETY: reading the ifindex field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; flags 0 = egress of `ifindex`.
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Hands the packet to the stack as if it had arrived on the interface it
/// was leaving by.
#[inline(always)]
fn deliver(ctx: &TcContext) -> i32 {
    // SAFETY: reading the ifindex field of the context.
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    // SAFETY: plain helper call; BPF_F_INGRESS = the stack's receive path of `ifindex`.
    unsafe { bpf_redirect(ifindex, BPF_F_INGRESS as u64) as i32 }
}

#[inline(always)]
fn swap(ctx: &TcContext) -> Result<(), ()> {
    let Ok(macs) = ctx.load::<[u8; 12]>(0) else {
        return Err(());
    };
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0).map_err(|_| ())
}
