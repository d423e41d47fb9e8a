//! Rewriting addresses and ports with correct checksums.
//!
//! XDP sees frames from the wire, whose checksums are complete: the IPv4 and
//! L4 checksums are updated incrementally here (RFC 1624, `lb_ebpf::csum`).
//! tc sees socket buffers whose L4 checksum may be a partial one (checksum
//! offload, e.g. on a pod's veth): there the kernel helpers update it, as they
//! know the buffer's checksum state.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};
use lb_common::IPPROTO_UDP;
use lb_ebpf::csum;

use crate::{
    conntrack::Rewrite,
    parse::{Packet, ETH_LEN, IP_CHECK, IP_DST, IP_SRC, L4_DPORT, L4_SPORT},
    verdict::{Verdict, MALFORMED},
};

/// Which end of the packet a rewrite changes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Destination: DNAT of a packet to a service.
    Dst,
    /// Source: reverse NAT of a reply.
    Src,
}

impl Side {
    #[inline(always)]
    fn offsets(self, p: &Packet) -> (usize, usize, [u8; 4], [u8; 2]) {
        match self {
            Side::Dst => (ETH_LEN + IP_DST, p.l4 + L4_DPORT, p.dst, p.dport),
            Side::Src => (ETH_LEN + IP_SRC, p.l4 + L4_SPORT, p.src, p.sport),
        }
    }
}

#[inline(always)]
fn field<const N: usize>(data: usize, end: usize, off: usize) -> Result<*mut [u8; N], Verdict> {
    if data + off + N > end {
        return Err(MALFORMED);
    }
    Ok((data + off) as *mut [u8; N])
}

/// Rewrites `side` of the frame in an XDP buffer, updating both checksums.
#[inline(always)]
pub fn xdp_rewrite(ctx: &XdpContext, p: &Packet, side: Side, rw: &Rewrite) -> Result<(), Verdict> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let (addr_off, port_off, old_addr, old_port) = side.offsets(p);
    let addr = field::<4>(data, end, addr_off)?;
    let port = field::<2>(data, end, port_off)?;
    let ip_check = field::<2>(data, end, ETH_LEN + IP_CHECK)?;
    let l4_check = field::<2>(data, end, p.l4_check())?;
    // SAFETY: every pointer was bounds-checked against `data_end` above.
    unsafe {
        *addr = rw.addr;
        *port = rw.port;
        let ipc = csum::replace4(u16::from_be_bytes(*ip_check), old_addr, rw.addr);
        *ip_check = ipc.to_be_bytes();
        let old = u16::from_be_bytes(*l4_check);
        // UDP checksum 0: the sender did not compute one; leave it absent.
        if p.proto == IPPROTO_UDP && old == 0 {
            return Ok(());
        }
        let mut c = csum::replace4(old, old_addr, rw.addr);
        c = csum::replace2(c, old_port, rw.port);
        if p.proto == IPPROTO_UDP {
            c = csum::udp_mangled(c);
        }
        *l4_check = c.to_be_bytes();
    }
    Ok(())
}

/// Rewrites `side` of the packet in a socket buffer through the kernel's
/// store and checksum helpers (correct for full and partial checksums).
#[inline(always)]
pub fn tc_rewrite(ctx: &TcContext, p: &Packet, side: Side, rw: &Rewrite) -> Result<(), Verdict> {
    let (addr_off, port_off, old_addr, old_port) = side.offsets(p);
    let l4_check = p.l4_check();
    // For UDP, a zero checksum stays zero and a computed zero becomes 0xffff.
    let mangled = if p.proto == IPPROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    let (old_a, new_a) = (u32::from_ne_bytes(old_addr) as u64, u32::from_ne_bytes(rw.addr) as u64);
    let (old_p, new_p) = (u16::from_ne_bytes(old_port) as u64, u16::from_ne_bytes(rw.port) as u64);
    let failed = Verdict::Drop(lb_common::counter::DROP_CSUM);
    ctx.l4_csum_replace(l4_check, old_a, new_a, BPF_F_PSEUDO_HDR as u64 | mangled | 4)
        .map_err(|_| failed)?;
    ctx.l4_csum_replace(l4_check, old_p, new_p, mangled | 2).map_err(|_| failed)?;
    ctx.l3_csum_replace(ETH_LEN + IP_CHECK, old_a, new_a, 4).map_err(|_| failed)?;
    ctx.store(addr_off, &rw.addr, 0).map_err(|_| failed)?;
    ctx.store(port_off, &rw.port, 0).map_err(|_| failed)?;
    Ok(())
}
