//! Rewriting addresses and ports with correct checksums.
//!
//! A rewrite sets one end of the packet (the destination for DNAT, the source
//! for reverse NAT) to the `Rewrite`'s address and port, and the other end to
//! its peer address and port, which differ from the packet's own only for a
//! remapped client port or a hairpin flow.
//!
//! XDP sees frames from the wire, whose checksums are complete: the IPv4 and
//! L4 checksums are updated incrementally here (RFC 1624, `lb_ebpf::csum`).
//! tc sees socket buffers whose L4 checksum may be a partial one (checksum
//! offload, e.g. on a pod's veth): there the kernel helpers update it, as they
//! know the buffer's checksum state.
//!
//! SCTP has no Internet checksum and no pseudo header: its ports are
//! rewritten as UDP's are, and when they change its CRC32c is updated after
//! the store (`sctp_nat.rs`). A rewrite of the addresses alone needs none.
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR},
    programs::{TcContext, XdpContext},
};
use lb_common::{IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use lb_ebpf::csum;

use crate::{
    conntrack::Rewrite,
    parse::{Packet, ETH_LEN, IP_CHECK, IP_DST, IP_SRC, L4_DPORT, L4_SPORT, TCP_CHECK, UDP_CHECK},
    verdict::{Verdict, MALFORMED},
};

/// Which end of the packet gets the rewrite's address and port.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// Destination: DNAT of a packet to a service.
    Dst,
    /// Source: reverse NAT of a reply.
    Src,
}

/// One address + port end of a packet: offsets (from the IPv4 header and
/// from the L4 header) and current values.
#[derive(Clone, Copy)]
struct End {
    addr_off: usize,
    port_off: usize,
    addr: [u8; 4],
    port: [u8; 2],
}

/// (the end `side` names, the other end).
#[inline(always)]
fn ends(p: &Packet, side: Side) -> (End, End) {
    let src = End {
        addr_off: IP_SRC,
        port_off: L4_SPORT,
        addr: p.src,
        port: p.sport,
    };
    let dst = End {
        addr_off: IP_DST,
        port_off: L4_DPORT,
        addr: p.dst,
        port: p.dport,
    };
    match side {
        Side::Dst => (dst, src),
        Side::Src => (src, dst),
    }
}

/// Rewrites `side` of the frame in an XDP buffer, updating both checksums.
#[inline(always)]
pub fn xdp_rewrite(ctx: &XdpContext, p: &Packet, side: Side, rw: &Rewrite) -> Result<(), Verdict> {
    let (data, end) = (ctx.data(), ctx.data_end());
    // One bounds check per header, then constant offsets from its start: the
    // verifier loses track of separately checked fields at variable offsets.
    // `black_box`: LLVM sees that the L4 check implies the IPv4 one and drops
    // it, but the verifier cannot relate the two pointers.
    let ip = core::hint::black_box(data + ETH_LEN);
    let l4 = data + p.l4;
    // UDP's 8-byte header bounds SCTP's rewrite too (ports, no checksum).
    let udp = p.proto != IPPROTO_TCP;
    let check_off = if udp { UDP_CHECK } else { TCP_CHECK };
    // The L4 checksum is bounds-checked at the very address that is read
    // and written (`black_box` keeps it one value): 6.1's verifier loses the
    // link between `udp` and `check_off` and rejected a separate
    // `!udp && l4 + TCP_CHECK + 2 > end` check on its UDP path ("invalid
    // access to packet, off=17 size=1").
    let l4_check_at = core::hint::black_box(l4 + check_off);
    if ip + 20 > end || l4 + 8 > end || l4_check_at + 2 > end {
        return Err(MALFORMED);
    }
    let (this, peer) = ends(p, side);
    let a4 = |off: usize| (ip + off) as *mut [u8; 4];
    let a2 = |base: usize, off: usize| (base + off) as *mut [u8; 2];
    // SAFETY: the IPv4 header (20 bytes) and the L4 header up to its checksum
    // were bounds-checked against `data_end` above.
    unsafe {
        let ip_check = a2(ip, IP_CHECK);
        let l4_check = l4_check_at as *mut [u8; 2];
        let mut ipc = u16::from_be_bytes(*ip_check);
        let mut c = u16::from_be_bytes(*l4_check);
        // UDP checksum 0: the sender did not compute one; leave it absent.
        // SCTP has none (its CRC is updated below).
        let l4_sum = p.proto == IPPROTO_TCP || (p.proto == IPPROTO_UDP && c != 0);
        for (e, addr, port) in [(this, rw.addr, rw.port), (peer, rw.peer_addr, rw.peer_port)] {
            if e.addr != addr {
                *a4(e.addr_off) = addr;
                ipc = csum::replace4(ipc, e.addr, addr);
                c = csum::replace4(c, e.addr, addr);
            }
            if e.port != port {
                *a2(l4, e.port_off) = port;
                c = csum::replace2(c, e.port, port);
            }
        }
        *ip_check = ipc.to_be_bytes();
        if l4_sum {
            *l4_check = if udp { csum::udp_mangled(c) } else { c }.to_be_bytes();
        }
    }
    if p.proto == IPPROTO_SCTP && (this.port != rw.port || peer.port != rw.peer_port) && !crate::sctp_nat::xdp_crc(ctx, p) {
        return Err(MALFORMED);
    }
    Ok(())
}

/// Rewrites `side` of the packet in a socket buffer. The L4 checksum goes
/// through the kernel's helper (correct for full and partial checksums); the
/// IPv4 checksum is always complete, so it is updated here and written with
/// the addresses it follows (check, src, dst are contiguous), and both ports
/// are written at once: two stores instead of one helper call per field.
/// (Direct packet writes would make the verifier un-clone every cloned skb
/// at tc egress, service reply or not: the store helper does so only here.)
#[inline(always)]
pub fn tc_rewrite(ctx: &TcContext, p: &Packet, side: Side, rw: &Rewrite) -> Result<(), Verdict> {
    let l4_check = p.l4_check();
    // For UDP, a zero checksum stays zero and a computed zero becomes 0xffff.
    let mangled = if p.proto == IPPROTO_UDP {
        BPF_F_MARK_MANGLED_0 as u64
    } else {
        0
    };
    let failed = |_| Verdict::Drop(lb_common::counter::DROP_CSUM);
    // SCTP: no L4 checksum helper (see the module doc).
    let inet = p.proto != IPPROTO_SCTP;
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_LEN + 20 > end {
        return Err(MALFORMED);
    }
    // SAFETY: the fixed IPv4 header was bounds-checked above (a read: no un-clone).
    let mut ipc = u16::from_be_bytes(unsafe { *((data + ETH_LEN + IP_CHECK) as *const [u8; 2]) });
    // IPv4 check, src, dst and L4 sport, dport as they will be.
    let mut addrs = [[0u8; 4]; 2];
    let mut ports = [[0u8; 2]; 2];
    let (mut addrs_changed, mut ports_changed) = (false, false);
    let (this, peer) = ends(p, side);
    for (e, addr, port) in [(this, rw.addr, rw.port), (peer, rw.peer_addr, rw.peer_port)] {
        let (ai, pi) = if e.addr_off == IP_SRC { (0, 0) } else { (1, 1) };
        addrs[ai] = addr;
        ports[pi] = port;
        if e.addr != addr {
            addrs_changed = true;
            ipc = csum::replace4(ipc, e.addr, addr);
            let (old, new) = (
                u32::from_ne_bytes(e.addr) as u64,
                u32::from_ne_bytes(addr) as u64,
            );
            if inet {
                ctx.l4_csum_replace(l4_check, old, new, BPF_F_PSEUDO_HDR as u64 | mangled | 4)
                    .map_err(failed)?;
            }
        }
        if e.port != port {
            ports_changed = true;
            let (old, new) = (
                u16::from_ne_bytes(e.port) as u64,
                u16::from_ne_bytes(port) as u64,
            );
            if inet {
                ctx.l4_csum_replace(l4_check, old, new, mangled | 2)
                    .map_err(failed)?;
            }
        }
    }
    if addrs_changed {
        let mut block = [0u8; 10];
        block[..2].copy_from_slice(&ipc.to_be_bytes());
        block[2..6].copy_from_slice(&addrs[0]);
        block[6..].copy_from_slice(&addrs[1]);
        ctx.store(ETH_LEN + IP_CHECK, &block, 0).map_err(failed)?;
    }
    if ports_changed {
        let block = [ports[0][0], ports[0][1], ports[1][0], ports[1][1]];
        ctx.store(p.l4 + L4_SPORT, &block, 0).map_err(failed)?;
        if !inet && !crate::sctp_nat::tc_crc(ctx, p) {
            return Err(Verdict::Drop(lb_common::counter::DROP_CSUM));
        }
    }
    Ok(())
}
