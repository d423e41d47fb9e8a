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
    parse::{Packet, ETH_LEN, IP_CHECK, IP_DST, IP_SRC, L4_DPORT, L4_SPORT, TCP_CHECK, UDP_CHECK},
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

/// Where the fields a rewrite touches are, and what they hold now.
struct Fields {
    addr_off: usize,
    port_off: usize,
    peer_port_off: usize,
    addr: [u8; 4],
    port: [u8; 2],
    peer_port: [u8; 2],
}

impl Side {
    #[inline(always)]
    fn fields(self, p: &Packet) -> Fields {
        let (sport_off, dport_off) = (p.l4 + L4_SPORT, p.l4 + L4_DPORT);
        match self {
            Side::Dst => Fields {
                addr_off: ETH_LEN + IP_DST,
                port_off: dport_off,
                peer_port_off: sport_off,
                addr: p.dst,
                port: p.dport,
                peer_port: p.sport,
            },
            Side::Src => Fields {
                addr_off: ETH_LEN + IP_SRC,
                port_off: sport_off,
                peer_port_off: dport_off,
                addr: p.src,
                port: p.sport,
                peer_port: p.dport,
            },
        }
    }
}

/// Rewrites `side` of the frame in an XDP buffer, updating both checksums.
#[inline(always)]
pub fn xdp_rewrite(ctx: &XdpContext, p: &Packet, side: Side, rw: &Rewrite) -> Result<(), Verdict> {
    let (data, end) = (ctx.data(), ctx.data_end());
    let f = side.fields(p);
    // One bounds check per header, then constant offsets from its start: the
    // verifier loses track of separately checked fields at variable offsets.
    let ip = data + ETH_LEN;
    let l4 = data + p.l4;
    let check_off = if p.proto == IPPROTO_UDP { UDP_CHECK } else { TCP_CHECK };
    if ip + 20 > end || l4 + TCP_CHECK + 2 > end && p.proto != IPPROTO_UDP || l4 + 8 > end {
        return Err(MALFORMED);
    }
    let at = |base: usize, off: usize| (base + off) as *mut [u8; 2];
    let (addr_off, port_off, peer_off) = (f.addr_off - ETH_LEN, f.port_off - p.l4, f.peer_port_off - p.l4);
    // SAFETY: the IPv4 header (20 bytes) and the L4 header up to its checksum
    // were bounds-checked against `data_end` above.
    unsafe {
        *((ip + addr_off) as *mut [u8; 4]) = rw.addr;
        *at(l4, port_off) = rw.port;
        *at(l4, peer_off) = rw.peer_port;
        let ip_check = at(ip, IP_CHECK);
        *ip_check = csum::replace4(u16::from_be_bytes(*ip_check), f.addr, rw.addr).to_be_bytes();
        let l4_check = at(l4, check_off);
        let old = u16::from_be_bytes(*l4_check);
        // UDP checksum 0: the sender did not compute one; leave it absent.
        if p.proto == IPPROTO_UDP && old == 0 {
            return Ok(());
        }
        let mut c = csum::replace4(old, f.addr, rw.addr);
        c = csum::replace2(c, f.port, rw.port);
        if f.peer_port != rw.peer_port {
            c = csum::replace2(c, f.peer_port, rw.peer_port);
        }
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
    let f = side.fields(p);
    let l4_check = p.l4_check();
    // For UDP, a zero checksum stays zero and a computed zero becomes 0xffff.
    let mangled = if p.proto == IPPROTO_UDP { BPF_F_MARK_MANGLED_0 as u64 } else { 0 };
    let (old_a, new_a) = (u32::from_ne_bytes(f.addr) as u64, u32::from_ne_bytes(rw.addr) as u64);
    let port = |b: [u8; 2]| u16::from_ne_bytes(b) as u64;
    let failed = |_| Verdict::Drop(lb_common::counter::DROP_CSUM);
    ctx.l4_csum_replace(l4_check, old_a, new_a, BPF_F_PSEUDO_HDR as u64 | mangled | 4).map_err(failed)?;
    ctx.l4_csum_replace(l4_check, port(f.port), port(rw.port), mangled | 2).map_err(failed)?;
    ctx.l3_csum_replace(ETH_LEN + IP_CHECK, old_a, new_a, 4).map_err(failed)?;
    ctx.store(f.addr_off, &rw.addr, 0).map_err(failed)?;
    ctx.store(f.port_off, &rw.port, 0).map_err(failed)?;
    if f.peer_port != rw.peer_port {
        ctx.l4_csum_replace(l4_check, port(f.peer_port), port(rw.peer_port), mangled | 2).map_err(failed)?;
        ctx.store(f.peer_port_off, &rw.peer_port, 0).map_err(failed)?;
    }
    Ok(())
}
