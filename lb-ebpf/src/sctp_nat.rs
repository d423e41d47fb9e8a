//! SCTP's CRC32c after a NAT rewrite (the math is `lb_ebpf::sctp`).
//!
//! `nat.rs` rewrites an SCTP packet's addresses and ports as for UDP, minus
//! the Internet checksum (SCTP has none and no pseudo header: a rewrite of
//! the addresses alone, DNAT to a backend on the service's port, needs no
//! checksum work). When a port changed, the hook calls here, after the
//! ports were written, to update the CRC field from the old ports and the
//! new ones in place.
//!
//! Checksum state:
//! - XDP sees frames as they came off a wire: their CRC is complete and is
//!   always updated (as for TCP and UDP, XDP expects complete checksums).
//! - tc sees socket buffers, whose state (`ip_summed`) a program cannot
//!   read. An SCTP socket sending through a device with SCTP CRC offload
//!   (`NETIF_F_SCTP_CRC`: veth, so every pod) leaves the field zero and
//!   marks the buffer `CHECKSUM_PARTIAL` + `csum_not_inet`, with
//!   `csum_start` at the SCTP header (`sctp_packet_pack`). The CRC is then
//!   computed at the last moment over the bytes as they are: by the egress
//!   NIC, or by `skb_crc32c_csum_help` when the egress device lacks the
//!   offload (`validate_xmit_skb` → `skb_csum_hwoffload_help`); a local
//!   receiver of a partial buffer (veth to a pod) trusts it unchecked
//!   (`skb_csum_unnecessary` in `sctp_rcv`). That computation covers the
//!   field as it stands, so it must stay zero: a zero field is left alone
//!   (`SCTP_CRC_OFFLOADED`), any other is updated (`SCTP_CRC_UPDATED`). A
//!   complete CRC that happens to be zero (one packet in 2^32) is left
//!   unchanged too, so that packet arrives with a wrong CRC and is dropped
//!   by its receiver, as a corrupt packet would be, and retransmitted.
//!
//! A CRC that was wrong before stays exactly as wrong after the update:
//! nothing here validates it; the receiving endpoint does.
//!
//! The arithmetic is out of line ([`crc_update`], a BPF-to-BPF call taking
//! and returning plain numbers): its 16 multiplications would otherwise be
//! inlined at every rewrite site, and `tc_ingress` / `xdp_lb` have no stack
//! to spare; it needs no stack of its own. The packet accesses stay inline:
//! a packet pointer passed to a subprogram lost its type on the way (LLVM
//! passed `data` as a 32-bit number; "R1 invalid mem access 'scalar'").
use aya_ebpf::programs::{TcContext, XdpContext};
use lb_common::counter;
use lb_ebpf::sctp::CHECKSUM_OFF;

use crate::{
    parse::{Packet, ETH_LEN},
    stats::count,
};

/// Length of the SCTP packet (common header and chunks).
#[inline(always)]
fn sctp_len<A>(p: &Packet<A>) -> u16 {
    p.ip_len.wrapping_sub((p.l4 - ETH_LEN) as u16)
}

/// The ports as they were before the rewrite, in wire order.
#[inline(always)]
fn old_ports<A>(p: &Packet<A>) -> [u8; 4] {
    [p.sport[0], p.sport[1], p.dport[0], p.dport[1]]
}

/// The CRC field (as a little-endian number) after the ports changed from
/// `old` to `new` (wire order, as little-endian numbers) in an SCTP packet
/// of `len` bytes. Scalars in, scalar out: see the module doc.
#[inline(never)]
fn crc_update(field: u32, old: u32, new: u32, len: u32) -> u32 {
    lb_ebpf::sctp::crc_after_ports(field, old.to_le_bytes(), new.to_le_bytes(), len as u16)
}

#[inline(always)]
fn updated(field: [u8; 4], old: [u8; 4], new: [u8; 4], len: u16) -> [u8; 4] {
    crc_update(
        u32::from_le_bytes(field),
        u32::from_le_bytes(old),
        u32::from_le_bytes(new),
        len as u32,
    )
    .to_le_bytes()
}

/// XDP: updates the CRC of the packet whose ports were just rewritten.
/// `false` if the header is not inside the frame (parse made sure it is).
#[inline(always)]
pub fn xdp_crc<A>(ctx: &XdpContext, p: &Packet<A>) -> bool {
    let (l4, end) = (ctx.data() + p.l4, ctx.data_end());
    if l4 + CHECKSUM_OFF + 4 > end {
        return false;
    }
    // SAFETY: the common header (ports .. checksum) was bounds-checked above.
    unsafe {
        let new = *(l4 as *const [u8; 4]);
        let field = (l4 + CHECKSUM_OFF) as *mut [u8; 4];
        *field = updated(*field, old_ports(p), new, sctp_len(p));
    }
    count(counter::SCTP_CRC_UPDATED);
    true
}

/// tc: the same in a socket buffer, where a zero field means the CRC is
/// still to be computed (see the module doc) and is left alone.
#[inline(always)]
pub fn tc_crc<A>(ctx: &TcContext, p: &Packet<A>) -> bool {
    let (Ok(new), Ok(field)) = (
        ctx.load::<[u8; 4]>(p.l4),
        ctx.load::<[u8; 4]>(p.l4 + CHECKSUM_OFF),
    ) else {
        return false;
    };
    if field == [0; 4] {
        count(counter::SCTP_CRC_OFFLOADED);
        return true;
    }
    let crc = updated(field, old_ports(p), new, sctp_len(p));
    if ctx.store(p.l4 + CHECKSUM_OFF, &crc, 0).is_err() {
        return false;
    }
    count(counter::SCTP_CRC_UPDATED);
    true
}
