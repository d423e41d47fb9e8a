//! The IP header of either family as the answers and translations build
//! and read it (`rst`, `unreach`, `icmp`): one trait over the address type,
//! so each of those is written once and monomorphised per family.
//!
//! What differs: the header's length and field offsets, IPv4's header
//! checksum (IPv6 has none), ICMP's numbers (ICMPv6 renumbered the error
//! types and codes) and ICMPv6's checksum, which covers a pseudo header
//! (RFC 4443 2.3) where ICMPv4's covers the message alone.
use lb_common::Addr;

use crate::csum;

/// An address family's IP header and ICMP (see the module doc).
pub trait Ip: Addr {
    /// The Ethernet type, wire order.
    const ETHERTYPE: [u8; 2];
    /// Length of the header without options or extension headers.
    const HDR_LEN: usize;
    /// The first byte of such a header, under a mask: (mask, value). For
    /// IPv4 the header length is part of it (no options).
    const FIRST: (u8, u8);
    /// Offsets of the protocol (next header) and the addresses.
    const PROTO: usize;
    const SRC: usize;
    const DST: usize;
    /// Offset of the header checksum; IPv6 has none.
    const CHECK: Option<usize>;
    /// The header, as bytes.
    type Hdr: Copy + AsRef<[u8]> + AsMut<[u8]>;
    /// A zeroed header.
    const ZERO_HDR: Self::Hdr;

    /// ICMP's protocol number (1, 58).
    const ICMP: u8;
    /// Destination unreachable (3, 1), and its code for an unreachable port (3, 4).
    const DEST_UNREACH: u8;
    const PORT_UNREACH: u8;
    /// Time exceeded (11, 3).
    const TIME_EXCEEDED: u8;
    /// Packet too big: IPv6's path MTU message (2); IPv4's is a code of
    /// destination unreachable, so it has none of its own.
    const TOO_BIG: Option<u8>;
    /// Whether the ICMP checksum covers a pseudo header (ICMPv6).
    const ICMP_PSEUDO: bool;
    /// Whether extension headers may follow the header (IPv6; IPv4's
    /// options are inside it).
    const EXT_HEADERS: bool;

    /// Writes over `h` a header from `src` to `dst` carrying `len` bytes of
    /// `proto`: TTL (hop limit) 64, type of service (traffic class) `tos`,
    /// IPv4's don't-fragment bit `df`, checksum complete. In place (`h` may
    /// be a packet's): built on the stack and copied, IPv6's answers did
    /// not fit their programs' frames.
    fn write_header(h: &mut Self::Hdr, src: &Self, dst: &Self, proto: u8, len: u16, tos: u8, df: bool);
}

impl Ip for [u8; 4] {
    const ETHERTYPE: [u8; 2] = [0x08, 0x00];
    const HDR_LEN: usize = 20;
    const FIRST: (u8, u8) = (0xff, 0x45);
    const PROTO: usize = 9;
    const SRC: usize = 12;
    const DST: usize = 16;
    const CHECK: Option<usize> = Some(10);
    type Hdr = [u8; 20];
    const ZERO_HDR: [u8; 20] = [0; 20];
    const ICMP: u8 = 1;
    const DEST_UNREACH: u8 = 3;
    const PORT_UNREACH: u8 = 3;
    const TIME_EXCEEDED: u8 = 11;
    const TOO_BIG: Option<u8> = None;
    const ICMP_PSEUDO: bool = false;
    const EXT_HEADERS: bool = false;

    #[inline(always)]
    fn write_header(h: &mut [u8; 20], src: &Self, dst: &Self, proto: u8, len: u16, tos: u8, df: bool) {
        *h = [0; 20];
        h[0] = 0x45;
        h[1] = tos;
        h[2..4].copy_from_slice(&(20 + len).to_be_bytes());
        if df {
            h[6] = 0x40;
        }
        h[8] = 64;
        h[9] = proto;
        h[12..16].copy_from_slice(src);
        h[16..20].copy_from_slice(dst);
        let c = csum::checksum(h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
    }
}

impl Ip for [u8; 16] {
    const ETHERTYPE: [u8; 2] = [0x86, 0xdd];
    const HDR_LEN: usize = 40;
    const FIRST: (u8, u8) = (0xf0, 0x60);
    const PROTO: usize = 6;
    const SRC: usize = 8;
    const DST: usize = 24;
    const CHECK: Option<usize> = None;
    type Hdr = [u8; 40];
    const ZERO_HDR: [u8; 40] = [0; 40];
    const ICMP: u8 = 58;
    const DEST_UNREACH: u8 = 1;
    const PORT_UNREACH: u8 = 4;
    const TIME_EXCEEDED: u8 = 3;
    const TOO_BIG: Option<u8> = Some(2);
    const ICMP_PSEUDO: bool = true;
    const EXT_HEADERS: bool = true;

    #[inline(always)]
    fn write_header(h: &mut [u8; 40], src: &Self, dst: &Self, proto: u8, len: u16, tos: u8, _df: bool) {
        // Version 6, traffic class `tos`, flow label 0.
        h[0] = 0x60 | tos >> 4;
        h[1] = tos << 4;
        h[2..4].copy_from_slice(&[0, 0]);
        h[4..6].copy_from_slice(&len.to_be_bytes());
        h[6] = proto;
        h[7] = 64;
        h[8..24].copy_from_slice(src);
        h[24..40].copy_from_slice(dst);
    }
}

/// The one's complement sum of the pseudo header `src`, `dst`, `proto`,
/// `len` (RFC 768, RFC 8200 8.1), to start an L4 or ICMPv6 checksum with.
#[inline(always)]
pub fn pseudo_sum<A: Ip>(src: &A, dst: &A, proto: u8, len: u16) -> u32 {
    csum::add_bytes(csum::add_bytes(0, src.octets()), dst.octets()) + proto as u32 + len as u32
}

/// Whether two addresses are equal, compared 32 bits at a time: `==` on two
/// `[u8; 16]` values may become a 128-bit compare, on which LLVM's BPF
/// backend crashes ("Post-RA pseudo instruction expansion").
#[inline(always)]
pub fn same<A: Addr>(a: &A, b: &A) -> bool {
    same_bytes(a.octets(), b.octets())
}

/// [`same`] of two addresses as bytes (e.g. one in a packet).
#[inline(always)]
pub fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let mut i = 0;
    while i + 4 <= a.len() && i + 4 <= b.len() {
        if a[i..i + 4] != b[i..i + 4] {
            return false;
        }
        i += 4;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_the_length_and_addresses_and_ipv4s_checksum_verifies() {
        let mut h = [0xaa; 20];
        <[u8; 4]>::write_header(&mut h, &[10, 96, 0, 10], &[10, 0, 3, 2], 6, 20, 0, true);
        assert_eq!((h[0], &h[2..4], h[6], h[8], h[9]), (0x45, &[0, 40][..], 0x40, 64, 6));
        assert_eq!(csum::checksum(&h), 0);
        let (s, d) = ([0xfd; 16], [0x20; 16]);
        let mut h = [0xaa; 40];
        <[u8; 16]>::write_header(&mut h, &s, &d, 58, 56, 0xc0, false);
        assert_eq!((h[0], h[1], &h[4..6], h[6], h[7]), (0x6c, 0, &[0, 56][..], 58, 64));
        assert_eq!((&h[8..24], &h[24..40]), (&s[..], &d[..]));
    }

    #[test]
    fn same_compares_every_word() {
        let a = [1u8; 16];
        for i in 0..16 {
            let mut b = a;
            b[i] = 2;
            assert!(!same(&a, &b), "byte {i}");
        }
        assert!(same(&a, &a.clone()));
        assert!(same(&[1u8, 2, 3, 4], &[1, 2, 3, 4]));
    }
}
