//! Header parsing: Ethernet → IPv4 → TCP/UDP (IPv6: `parse6.rs`, sharing
//! the L4 part here), every access bounds-checked
//! against `data_end` so the verifier accepts it and a short packet is a
//! counted drop, never an out-of-bounds read.
//!
//! TCP, UDP, SCTP and ICMP (whose errors of NATed flows are translated) are
//! parsed.
//! Handled explicitly: VLAN tags and non-IPv4 frames are passed untouched,
//! IP options are skipped (IHL), fragments are passed to the stack (only the
//! first carries ports, so they cannot be balanced per flow here).
//!
//! A packet is balanced only when its headers are consistent, checked before
//! any rewrite or state: the IPv4 total length fits in the frame (a padded
//! frame, total length < frame, is fine), and the whole L4 header is inside
//! the IPv4 packet — TCP: data offset ≥ 5 and header with options within the
//! total length; UDP: 8 bytes and a UDP length between 8 and what the IPv4
//! packet holds (what the kernel's own `udp_rcv` accepts); SCTP: the
//! 12-byte common header and one chunk header. Anything else is `MALFORMED`.
//!
//! SCTP has its ports where TCP and UDP have them. Its first chunk stands in
//! for TCP's flags, so conntrack opens and closes SCTP flows the same way:
//! INIT is a SYN, ABORT a RST, SHUTDOWN COMPLETE a FIN (INIT and SHUTDOWN
//! COMPLETE are never bundled; an ABORT bundled after other chunks is not
//! seen, and the flow then ends by its idle timeout).
//!
//! `frame_len` is the length of the whole packet and `end` the end of what is
//! directly readable. In XDP they are the same. In tc `frame_len` is
//! `skb->len` and `[data, end)` only the linear part: the length checks are
//! arithmetic on the header fields against `frame_len`, and only the bytes we
//! read or rewrite (ports, flags, checksums: the first 20 TCP / 8 UDP bytes)
//! must be linear, which tc makes sure of by pulling them (`tc.rs`). TCP
//! options are never read, so they need not be linear; nor is an SCTP
//! packet's first chunk always (only its common header is).
//!
//! Header layouts: Ethernet, IPv4 (here) and the fixed IPv6 header
//! (`parse6.rs`) are the `network-types` crate's `EthHdr`, `Ipv4Hdr`,
//! `Ipv6Hdr` (0.2.0), read field by field through the bounds-checked
//! `ptr_at`. Same bytes, same checks; the verifier's processed instructions
//! (6.18 host kernel) moved by -501 (xdp_dsr_v6), -187 (xdp_lb_v6), -106 /
//! -90 (tc v6), -3 (tc v4) and +162 of 527,480 (xdp_lb, the u16 ethertype
//! load). Not used for L4: one 4-byte ports read serves TCP, UDP, SCTP and
//! ICMP alike (`L4Ports`), which no single crate type does, and the rewrite
//! offsets (`IP_CHECK`, `L4_DPORT`, ...) stay plain constants.
use core::mem::size_of;

use lb_common::{counter, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use lb_ebpf::{ip::Ip, sctp};
use network_types::{eth::EthHdr, ip::Ipv4Hdr};

use crate::verdict::{Verdict, MALFORMED};

pub const ETH_LEN: usize = 14;
const IPPROTO_ICMP: u8 = <[u8; 4] as Ip>::ICMP;
pub const ETH_P_IP: [u8; 2] = [0x08, 0x00];
pub const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const ETH_P_8021Q: [u8; 2] = [0x81, 0x00];
const ETH_P_8021AD: [u8; 2] = [0x88, 0xa8];

/// Offsets inside the IPv4 header.
pub const IP_CHECK: usize = 10;
pub const IP_SRC: usize = 12;
pub const IP_DST: usize = 16;
/// Offsets inside the TCP/UDP header.
pub const L4_SPORT: usize = 0;
pub const L4_DPORT: usize = 2;
pub const TCP_CHECK: usize = 16;
pub const UDP_CHECK: usize = 6;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The part of TCP and UDP headers we read: ports, and (TCP) the flags byte.
#[repr(C)]
struct L4Ports {
    sport: [u8; 2],
    dport: [u8; 2],
}

/// A parsed TCP/UDP packet of either family (`A`: its address type): its
/// 5-tuple and where its headers are.
///
/// The addresses come first, at 8-byte aligned offsets, so the BPF backend
/// moves them in words rather than bytes.
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Packet<A = [u8; 4]> {
    pub src: A,
    pub dst: A,
    /// Offset of the L4 header from the start of the frame.
    pub l4: usize,
    pub proto: u8,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    /// TCP flags byte; for SCTP the flags its first chunk stands for (see
    /// the module doc); 0 for UDP.
    pub tcp_flags: u8,
    /// IPv4 total length; IPv6: the fixed header + payload length (bytes
    /// counted per flow and service).
    pub ip_len: u16,
}

impl<A> Packet<A> {
    /// Offset of the L4 checksum field from the start of the frame.
    #[inline(always)]
    pub fn l4_check(&self) -> usize {
        self.l4
            + if self.proto == IPPROTO_TCP {
                TCP_CHECK
            } else {
                UDP_CHECK
            }
    }
}

/// Reads the `N` bytes at `p`, a header field at an even offset of the
/// frame, as `N / 2` two-byte loads. A byte array is aligned to 1, and
/// the BPF backend reads it byte by byte (a load, a shift and an OR per
/// byte: ~40 instructions for the IPv4 addresses alone); wider loads of
/// unknown alignment it cannot emit. Frames start 2-byte aligned (the IP
/// header follows a 14-byte Ethernet header), so two-byte loads are
/// aligned; the verifier allows any packet load on the kernels with
/// efficient unaligned access, where XDP runs (x86-64, arm64).
///
/// # Safety
/// `p` points to `N` readable bytes of the frame (`ptr_at` checked), `N` even.
#[inline(always)]
pub unsafe fn read_halves<const N: usize>(p: *const [u8; N]) -> [u8; N] {
    let h = p as *const u16;
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N / 2 {
        // SAFETY: inside the `N` bytes the caller vouches for.
        let [a, b] = unsafe { h.add(i).read() }.to_ne_bytes();
        out[2 * i] = a;
        out[2 * i + 1] = b;
        i += 1;
    }
    out
}

#[inline(always)]
pub fn ptr_at<T>(data: usize, end: usize, off: usize) -> Result<*const T, Verdict> {
    if data + off + size_of::<T>() > end {
        return Err(MALFORMED);
    }
    Ok((data + off) as *const T)
}

/// The frame's ethertype if it is `want`; else the pass reason.
#[inline(always)]
pub fn ethertype(data: usize, end: usize, want: [u8; 2]) -> Result<(), Verdict> {
    // SAFETY: `ptr_at` checked the header is inside the frame.
    // `ether_type` holds the wire bytes as a u16: compared as one, not swapped.
    let proto = unsafe { (*ptr_at::<EthHdr>(data, end, 0)?).ether_type };
    if proto != u16::from_ne_bytes(want) {
        return Err(
            if proto == u16::from_ne_bytes(ETH_P_8021Q) || proto == u16::from_ne_bytes(ETH_P_8021AD) {
                Verdict::Pass(counter::PASS_VLAN)
            } else {
                Verdict::Pass(counter::PASS_NOT_IP)
            },
        );
    }
    Ok(())
}

/// Parses the frame starting at `data`, `frame_len` bytes long, of which
/// `[data, end)` is directly readable (see the module doc).
#[inline(always)]
pub fn parse(data: usize, end: usize, frame_len: usize) -> Result<Packet, Verdict> {
    ethertype(data, end, ETH_P_IP)?;
    // SAFETY (all derefs below): `ptr_at` checked the whole struct is inside the frame.
    let ip: *const Ipv4Hdr = ptr_at(data, end, ETH_LEN)?;
    let (vihl, tot_len, frag, l4proto, src, dst) = unsafe {
        (
            (*ip).vihl,
            read_halves(&raw const (*ip).tot_len),
            read_halves(&raw const (*ip).frags),
            (*ip).proto,
            read_halves(&raw const (*ip).src_addr),
            read_halves(&raw const (*ip).dst_addr),
        )
    };
    let ihl = ((vihl & 0x0f) as usize) * 4;
    let ip_len = u16::from_be_bytes(tot_len);
    // Against `frame_len`, not `end`: in tc `end` is only the linear part.
    if vihl >> 4 != 4 || ihl < 20 || (ip_len as usize) < ihl || ETH_LEN + ip_len as usize > frame_len {
        return Err(MALFORMED);
    }
    // More-fragments set or a non-zero offset.
    if u16::from_be_bytes(frag) & 0x3fff != 0 {
        return Err(Verdict::Pass(counter::PASS_FRAGMENT));
    }
    let l4 = ETH_LEN + ihl;
    let min_l4 = match l4proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        IPPROTO_SCTP => sctp::COMMON_LEN + sctp::CHUNK_HDR_LEN,
        // ICMP errors of NATed flows are translated (icmp_error.rs); the
        // "ports" read below are then its type, code and checksum, unused.
        IPPROTO_ICMP => 8,
        _ => return Err(Verdict::Pass(counter::PASS_OTHER_L4)),
    };
    if ihl + min_l4 > ip_len as usize {
        return Err(MALFORMED);
    }
    let (sport, dport, tcp_flags) = ports(data, end, l4, l4proto, ip_len as usize - ihl)?;
    Ok(Packet {
        l4,
        proto: l4proto,
        src,
        dst,
        sport,
        dport,
        tcp_flags,
        ip_len,
    })
}

/// [`parse`]'s checks of an IPv4 frame with a 20-byte header (no options)
/// that is not a fragment: its protocol and the bytes left for L4, or
/// `None` (see `Family::fixed`).
#[inline(always)]
pub fn fixed(data: usize, end: usize, frame_len: usize) -> Option<(u8, usize)> {
    let ip: *const Ipv4Hdr = ptr_at(data, end, ETH_LEN).ok()?;
    // SAFETY: `ptr_at` checked the header is inside the frame.
    let (vihl, tot_len, frag, proto) = unsafe { ((*ip).vihl, read_halves(&raw const (*ip).tot_len), read_halves(&raw const (*ip).frags), (*ip).proto) };
    let ip_len = u16::from_be_bytes(tot_len) as usize;
    if vihl != 0x45 || ip_len < 20 || ETH_LEN + ip_len > frame_len || u16::from_be_bytes(frag) & 0x3fff != 0 {
        return None;
    }
    Some((proto, ip_len - 20))
}

/// The ports and TCP flags of the L4 header at `l4` (protocol `l4proto`,
/// its first `min_l4` bytes known to be inside the packet), checked to lie
/// whole inside the `l4_room` bytes the IP packet has left for it.
#[inline(always)]
pub fn ports(data: usize, end: usize, l4: usize, l4proto: u8, l4_room: usize) -> Result<([u8; 2], [u8; 2], u8), Verdict> {
    let ports: *const L4Ports = ptr_at(data, end, l4)?;
    // SAFETY (all derefs below): `ptr_at` checked the whole struct is inside the frame.
    let tcp_flags = if l4proto == IPPROTO_TCP {
        // Data offset (high nibble) and flags.
        let off_flags: *const [u8; 2] = ptr_at(data, end, l4 + 12)?;
        let [off, flags] = unsafe { read_halves(off_flags) };
        let doff = ((off >> 4) as usize) * 4;
        if doff < 20 || doff > l4_room {
            return Err(MALFORMED);
        }
        flags
    } else if l4proto == IPPROTO_UDP {
        let udp_len: *const [u8; 2] = ptr_at(data, end, l4 + 4)?;
        let udp_len = u16::from_be_bytes(unsafe { read_halves(udp_len) }) as usize;
        if udp_len < 8 || udp_len > l4_room {
            return Err(MALFORMED);
        }
        0
    } else if l4proto == IPPROTO_SCTP {
        // Inside the packet by the length check above, but in tc not
        // always linear: an SCTP GSO buffer's head ends with the common
        // header (see tc.rs). Its first chunk is then DATA: no flags.
        let chunk = data + l4 + sctp::COMMON_LEN;
        if chunk < end {
            // SAFETY: `chunk` was bounds-checked against `data_end` above.
            sctp::chunk_flags(unsafe { *(chunk as *const u8) })
        } else {
            0
        }
    } else {
        0
    };
    let (sport, dport) = unsafe { (read_halves(&raw const (*ports).sport), read_halves(&raw const (*ports).dport)) };
    Ok((sport, dport, tcp_flags))
}
