//! What happens to a packet, and why. Every early exit is a named reason that
//! is counted, so `lb-agent stats` can explain every packet.
use lb_common::counter;

/// Outcome of processing one packet, independent of the hook.
#[derive(Clone, Copy)]
pub enum Verdict {
    /// Hand the packet to the stack (possibly rewritten), counting `reason`.
    Pass(u32),
    /// Drop the packet, counting `reason`.
    Drop(u32),
    /// Send the (rewritten) packet back out of the interface it came in on,
    /// counting `reason`: XDP_TX, or a tc redirect to the same interface
    /// (hairpin flows, resets).
    Bounce(u32),
    /// The packet was rebuilt whole as an answer addressed back to its
    /// sender (a reset, an ICMP error): send it out of the interface it came
    /// in on as it is, counting `reason`.
    Reply(u32),
    /// The packet was rebuilt whole as an answer to one leaving the node
    /// (tc egress): hand it to the node's stack as if it had arrived on
    /// this interface, counting `reason` (tc only).
    Deliver(u32),
    /// Return this XDP action (a redirect), counting `reason` (XDP only).
    Action(u32, u32),
}

impl Verdict {
    pub const fn reason(self) -> u32 {
        match self {
            Verdict::Pass(r) | Verdict::Drop(r) | Verdict::Bounce(r) | Verdict::Reply(r) | Verdict::Deliver(r) | Verdict::Action(_, r) => r,
        }
    }

    /// `v` as one integer, 0 for `None`: what a subprogram returns (a
    /// returned enum puts a union the kernel's BTF check refuses, see
    /// `conntrack::create_call`). Kind in the top byte, an action in the
    /// next, the reason in the low 32 bits.
    #[inline(always)]
    pub fn pack(v: Option<Verdict>) -> u64 {
        let (kind, action, reason) = match v {
            None => return 0,
            Some(Verdict::Pass(r)) => (1u64, 0, r),
            Some(Verdict::Drop(r)) => (2, 0, r),
            Some(Verdict::Bounce(r)) => (3, 0, r),
            Some(Verdict::Reply(r)) => (4, 0, r),
            Some(Verdict::Deliver(r)) => (5, 0, r),
            Some(Verdict::Action(a, r)) => (6, a & 0xff, r),
        };
        kind << 56 | (action as u64) << 48 | reason as u64
    }

    /// The verdict [`Verdict::pack`] made `x` from.
    #[inline(always)]
    pub fn unpack(x: u64) -> Option<Verdict> {
        let reason = x as u32;
        Some(match x >> 56 {
            0 => return None,
            1 => Verdict::Pass(reason),
            2 => Verdict::Drop(reason),
            3 => Verdict::Bounce(reason),
            4 => Verdict::Reply(reason),
            5 => Verdict::Deliver(reason),
            _ => Verdict::Action((x >> 48) as u32 & 0xff, reason),
        })
    }
}

/// A malformed packet: truncated or inconsistent headers.
pub const MALFORMED: Verdict = Verdict::Drop(counter::DROP_MALFORMED);

/// Runs `f` inline, or with `split` (`Family::SPLIT`: a family whose frames
/// are tight) in a subprogram with a frame of its own.
#[inline(always)]
pub fn framed(split: bool, f: impl FnOnce() -> Option<Verdict>) -> Option<Verdict> {
    if split {
        Verdict::unpack(framed_call(f))
    } else {
        f()
    }
}

#[inline(never)]
fn framed_call(f: impl FnOnce() -> Option<Verdict>) -> u64 {
    Verdict::pack(f())
}
