//! IPv6 header parsing: Ethernet → IPv6 → extension headers → TCP/UDP
//! (or ICMPv6) and SCTP, as far as the instance balances them (`L4`, see
//! `family::l4`: `xdp_lb_v6` hands SCTP to `xdp_sctp_v6`, which takes
//! nothing else), with the same rules as `parse.rs` (which checks the L4
//! header for both families).
//!
//! Extension headers (hop-by-hop, routing, destination options, fragment)
//! are walked to the transport header, at most [`EXT_MAX`] of them (a
//! bounded loop the verifier unrolls); a longer chain is passed untouched
//! and counted (`PASS_V6_EXT_CHAIN`). A fragment header with a non-zero
//! offset or more-fragments set is a fragment (`PASS_FRAGMENT`): only the
//! first carries ports; an atomic fragment (offset 0, last) is parsed on.
//! ICMPv6 router and neighbour discovery (133-137) is passed untouched
//! before anything else is checked. UDP with checksum 0 is invalid over
//! IPv6 (RFC 8200 8.1) and never balanced (`DROP_UDP6_NO_CHECKSUM`).
//!
//! There is no IPv6 header checksum; the L4 checksums cover the 128-bit
//! pseudo-header (see `nat.rs`). The payload length must fit the frame;
//! a jumbogram (payload length 0 with a hop-by-hop jumbo option) does not
//! and is malformed.
use lb_common::{counter, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use lb_ebpf::sctp;
use network_types::ip::Ipv6Hdr;

use crate::{
    parse::{ethertype, ports, ptr_at, read_halves, Packet, ETH_LEN, ETH_P_IPV6},
    verdict::{Verdict, MALFORMED},
};

/// The fixed IPv6 header's length.
pub const IP6_LEN: usize = 40;
/// Offsets inside it.
pub const IP6_HOP_LIMIT: usize = 7;
pub const IP6_SRC: usize = 8;
pub const IP6_DST: usize = 24;

pub const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_DSTOPTS: u8 = 60;

/// Which transport protocols an instance balances (`family::Family::L4`),
/// so which ones its parser yields.
pub mod l4 {
    /// TCP, UDP and SCTP (and ICMP errors): IPv4, IPv6 at tc and sockets.
    pub const ALL: u8 = 0;
    /// All but SCTP, which the parser hands over
    /// (`counter::PASS_SCTP6_PROGRAM`): `xdp_lb_v6`.
    pub const NO_SCTP: u8 = 1;
    /// SCTP alone (anything else is passed): `xdp_sctp_v6`.
    pub const SCTP_ONLY: u8 = 2;
}

/// Extension headers walked before a chain counts as too long (every
/// header kind doubles the paths the verifier explores after the walk).
pub const EXT_MAX: usize = 4;

/// ICMPv6 router solicitation .. redirect: router and neighbour discovery.
const NDP_FIRST: u8 = 133;
const NDP_LAST: u8 = 137;

/// Parses an IPv6 frame (see `parse::parse` for `data`, `end`, `frame_len`)
/// of the protocols `L4` names (`family::l4`); SCTP that is not this
/// instance's is passed as `PASS_SCTP6_PROGRAM` (its program takes it),
/// other protocols as `PASS_OTHER_L4`.
#[inline(always)]
pub fn parse<const L4: u8>(data: usize, end: usize, frame_len: usize) -> Result<Packet<[u8; 16]>, Verdict> {
    ethertype(data, end, ETH_P_IPV6)?;
    // Version, traffic class and flow label; payload length; next header;
    // hop limit.
    let ip: *const Ipv6Hdr = ptr_at(data, end, ETH_LEN)?;
    // SAFETY: `ptr_at` checked the header is inside the frame.
    let (vtc, plen, next) = unsafe { ((*ip).vcf[0], read_halves(&raw const (*ip).payload_len), (*ip).next_hdr) };
    let plen = u16::from_be_bytes(plen) as usize;
    // Against `frame_len`, not `end`: in tc `end` is only the linear part.
    if vtc >> 4 != 6 || ETH_LEN + IP6_LEN + plen > frame_len {
        return Err(MALFORMED);
    }
    // End of the IPv6 packet, from the start of the frame.
    let ip_end = ETH_LEN + IP6_LEN + plen;
    let (l4, next) = walk(data, end, ETH_LEN + IP6_LEN, next, ip_end)?;
    let only_sctp = L4 == l4::SCTP_ONLY;
    // TCP and UDP tested first, as before SCTP came to XDP: the common path.
    let min_l4 = match next {
        IPPROTO_TCP if !only_sctp => 20,
        IPPROTO_UDP if !only_sctp => 8,
        IPPROTO_SCTP if L4 == l4::NO_SCTP => return Err(Verdict::Pass(counter::PASS_SCTP6_PROGRAM)),
        IPPROTO_SCTP => sctp::COMMON_LEN + sctp::CHUNK_HDR_LEN,
        IPPROTO_ICMPV6 if !only_sctp => {
            // Router and neighbour discovery: untouched, whatever follows.
            if l4 + 2 <= ip_end {
                // Type and code: two bytes, as LLVM turns a one-byte bounds
                // check into `ptr >= end`, from which the verifier learns nothing.
                let t: *const [u8; 2] = ptr_at(data, end, l4)?;
                // SAFETY: `ptr_at` checked the bytes are inside the frame.
                if (NDP_FIRST..=NDP_LAST).contains(&unsafe { (*t)[0] }) {
                    return Err(Verdict::Pass(counter::PASS_NDP));
                }
            }
            8
        }
        _ => return Err(Verdict::Pass(counter::PASS_OTHER_L4)),
    };
    if l4 + min_l4 > ip_end {
        return Err(MALFORMED);
    }
    let (sport, dport, tcp_flags) = ports(data, end, l4, next, ip_end - l4)?;
    if next == IPPROTO_UDP {
        let check: *const [u8; 2] = ptr_at(data, end, l4 + 6)?;
        // SAFETY: `ptr_at` checked the field is inside the frame.
        if unsafe { *check } == [0, 0] {
            return Err(Verdict::Drop(counter::DROP_UDP6_NO_CHECKSUM));
        }
    }
    // The addresses last: read early, their 32 bytes would be carried
    // through every path of the walk.
    // SAFETY: `ptr_at` checked the header is inside the frame.
    let (src, dst) = unsafe { (read_halves(&raw const (*ip).src_addr), read_halves(&raw const (*ip).dst_addr)) };
    Ok(Packet { l4, proto: next, src, dst, sport, dport, tcp_flags, ip_len: (IP6_LEN + plen) as u16 })
}

/// [`parse`]'s checks of the fixed header: its next header and payload
/// length, or `None` (see `Family::fixed`; an extension header is then
/// returned as the protocol, which the caller does not take).
#[inline(always)]
pub fn fixed(data: usize, end: usize, frame_len: usize) -> Option<(u8, usize)> {
    let ip: *const Ipv6Hdr = ptr_at(data, end, ETH_LEN).ok()?;
    // SAFETY: `ptr_at` checked the header is inside the frame.
    let (vtc, plen, next) = unsafe { ((*ip).vcf[0], read_halves(&raw const (*ip).payload_len), (*ip).next_hdr) };
    let plen = u16::from_be_bytes(plen) as usize;
    if vtc >> 4 != 6 || ETH_LEN + IP6_LEN + plen > frame_len {
        return None;
    }
    Some((next, plen))
}

/// Walks the extension headers from offset `at` (the first header's type:
/// `next`) to the header after them: its offset and type. `ip_end`: where
/// the IPv6 packet (or an ICMPv6 error's quote of one) ends, from the start
/// of the frame. Errors: a header past `ip_end` (malformed), a fragment,
/// a chain longer than [`EXT_MAX`] (see the module doc).
#[inline(always)]
pub fn walk(data: usize, end: usize, mut at: usize, mut next: u8, ip_end: usize) -> Result<(usize, u8), Verdict> {
    let mut walked = 0;
    while walked < EXT_MAX {
        if !is_ext(next) {
            break;
        }
        // Every extension header starts with (next header, length) and is
        // at least 8 bytes long.
        if at + 8 > ip_end {
            return Err(MALFORMED);
        }
        let ext: *const [u8; 4] = ptr_at(data, end, at)?;
        // SAFETY: `ptr_at` checked the 4 bytes are inside the frame.
        let [nh, len, frag_hi, frag_lo] = unsafe { *ext };
        let ext_len = if next == IPPROTO_FRAGMENT {
            // Offset (13 bits) and M: anything but an atomic fragment.
            if u16::from_be_bytes([frag_hi, frag_lo]) & 0xfff9 != 0 {
                return Err(Verdict::Pass(counter::PASS_FRAGMENT));
            }
            8
        } else {
            (len as usize + 1) * 8
        };
        next = nh;
        at += ext_len;
        walked += 1;
    }
    if is_ext(next) {
        return Err(Verdict::Pass(counter::PASS_V6_EXT_CHAIN));
    }
    Ok((at, next))
}

/// Whether next header `next` is an extension header the walk steps over.
#[inline(always)]
fn is_ext(next: u8) -> bool {
    next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING || next == IPPROTO_DSTOPTS || next == IPPROTO_FRAGMENT
}
