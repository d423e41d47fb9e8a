//! tc egress: an SCTP INIT to a service address that no flow owns is the
//! node's own socket dialling it (the socket programs never see SCTP, and
//! the dataplane has rewritten every other sender's INIT before routing).
//! It is answered with an ABORT delivered back into the node
//! (`lb_ebpf::abort` says why an ABORT), so the caller fails at once. Over
//! either family: the answer's IP header is the family's, its SCTP part
//! (and so its CRC32c) the same.
use aya_ebpf::{helpers::bpf_skb_change_tail, programs::TcContext};
use lb_common::{counter, IPPROTO_SCTP};
use lb_ebpf::{
    abort::{self, crc32c, sctp, sealed, INITIATE_TAG_OFF, SCTP_LEN},
    ip::Ip,
};

use crate::{
    family::Family,
    parse::{Packet, ETH_LEN, TCP_SYN},
    service, unserved,
    verdict::{Verdict, MALFORMED},
};

/// Answers `p` when it is an SCTP INIT (its first chunk) to a service
/// address, served or not; passes anything else.
#[inline(always)]
pub fn tc<F: Family>(ctx: &TcContext, p: &Packet<F::Addr>) -> Result<Verdict, Verdict> {
    let pass = Ok(Verdict::Pass(counter::PASS_NOT_SERVICE));
    if p.proto != IPPROTO_SCTP || p.tcp_flags & TCP_SYN == 0 {
        return pass;
    }
    if service::lookup::<F>(p.dst, p.dport, IPPROTO_SCTP, true).is_none() && unserved::check::<F>(p.dst).is_none() {
        return pass;
    }
    abort::<F>(ctx, p)
}

/// Rebuilds the INIT's buffer as the ABORT: the Ethernet addresses swapped
/// (the answer arrives from where the INIT was going), the new packet after
/// them (any IPv6 extension headers dropped), the rest cut. Out of line, so
/// its locals stay out of the hook's frame.
#[inline(never)]
fn abort<F: Family>(ctx: &TcContext, p: &Packet<F::Addr>) -> Result<Verdict, Verdict> {
    let (Ok(macs), Ok(tag)) = (ctx.load::<[u8; 12]>(0), ctx.load::<[u8; 4]>(p.l4 + INITIATE_TAG_OFF)) else {
        return Err(MALFORMED);
    };
    let s = sctp(p.dport, p.sport, tag);
    let s = sealed(s, crc(&s));
    let mut ip = <F::Addr as Ip>::ZERO_HDR;
    abort::header(&mut ip, &p.dst, &p.src);
    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, (ETH_LEN + abort::len::<F::Addr>()) as u32, 0) } != 0 {
        return Err(MALFORMED);
    }
    let mut swapped = [0u8; 12];
    swapped[..6].copy_from_slice(&macs[6..]);
    swapped[6..].copy_from_slice(&macs[..6]);
    ctx.store(0, &swapped, 0).map_err(|_| MALFORMED)?;
    ctx.store(ETH_LEN, &ip, 0).map_err(|_| MALFORMED)?;
    ctx.store(ETH_LEN + F::IP_HDR, &s, 0).map_err(|_| MALFORMED)?;
    Ok(Verdict::Deliver(counter::SCTP_NODE_ABORTED))
}

/// The CRC32c of the 16-byte SCTP part, out of line: its 128 steps are
/// unrolled once, not at every caller.
#[inline(never)]
fn crc(s: &[u8; SCTP_LEN]) -> u32 {
    crc32c(s)
}
