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
}

/// A malformed packet: truncated or inconsistent headers.
pub const MALFORMED: Verdict = Verdict::Drop(counter::DROP_MALFORMED);
