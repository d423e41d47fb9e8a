//! ICMP errors of NATed flows, the pure part (host-tested), for both
//! families (over [`Ip`]).
//!
//! A destination-unreachable, time-exceeded or (IPv6) packet-too-big
//! message quotes the packet that caused it: the receiving stack finds the
//! socket by the quote. When that packet was rewritten by NAT, the quote
//! names addresses and ports the other end never saw, so the quote (and the
//! outer header) are rewritten the same way as the flow's packets; without
//! it path MTU discovery ("fragmentation needed", "packet too big") and
//! UDP's "port unreachable" stop at the balancer.
//!
//! The hooks find the pieces of the error in the packet — outer IP header,
//! ICMP header, quoted IP header, the quote's first 8 L4 bytes (ports; the
//! UDP checksum) — past any IPv6 extension headers of the outer packet and
//! of the quote (walked by the hooks), and the pieces are rewritten here in
//! place ([`Error`]) with incremental checksum updates. Every field the
//! rewrite touches is 16-bit aligned from the start of the ICMP message
//! (extension headers are multiples of 8 bytes), so its checksum follows
//! the same RFC 1624 updates; ICMPv6's also covers the outer addresses (its
//! pseudo header). The quoted TCP checksum sits past the 8 L4 bytes; the
//! hooks pass it in when the quote holds it.
use crate::{
    csum::{self, apply, replace2, udp_mangled},
    ip::{same, Ip},
};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;

/// Offsets of the ICMP header's checksum, the quoted L4 header's UDP checksum.
const ICMP_CHECK: usize = 2;
const UDP_CHECK: usize = 6;

/// An ICMP error of family `A`, as the pieces a translation reads and
/// rewrites, each in place (the hooks' pointers into the packet; extension
/// headers between them are left as they are).
pub struct Error<'a, A: Ip> {
    /// The outer IP header (IPv4: without options).
    pub outer: &'a mut A::Hdr,
    /// The ICMP header: type, code, checksum, 4 bytes of the type's own.
    pub icmp: &'a mut [u8; 8],
    /// The quoted IP header.
    pub inner: &'a mut A::Hdr,
    /// The quote's first 8 L4 bytes, past its extension headers.
    pub l4: &'a mut [u8; 8],
    /// The quote's L4 protocol: the last next header of its chain.
    pub proto: u8,
}

/// The quoted TCP checksum, from the start of the quote's L4 header.
pub const TCP_CHECK: usize = 16;

/// One end of a quoted packet after translation: address and port,
/// network order, referring to where they are kept (a conntrack entry).
#[derive(Clone, Copy, Debug)]
pub struct End<'a, A> {
    pub addr: &'a A,
    pub port: &'a [u8; 2],
}

/// The quoted packet of an ICMP error, as it was sent: its ends are read
/// from the packet when needed ([`ends`]), not copied (IPv6's four
/// addresses would not fit the hooks' stack frames beside the rest).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    pub proto: u8,
}

#[inline(always)]
fn addr<A: Ip>(b: &[u8], off: usize) -> A {
    let mut a = A::ZERO;
    bytemuck::bytes_of_mut(&mut a).copy_from_slice(&b[off..off + A::LEN]);
    a
}

#[inline(always)]
fn port(b: &[u8], off: usize) -> [u8; 2] {
    [b[off], b[off + 1]]
}

#[inline(always)]
fn set(b: &mut [u8], off: usize, v: &[u8]) {
    b[off..off + v.len()].copy_from_slice(v);
}

/// The quote of `e` if it is an ICMP error this module translates: outer
/// and quoted IP headers of the family (IPv4: without options), type
/// destination unreachable, time exceeded or packet too big, quoting TCP,
/// UDP or SCTP. The hooks checked the outer packet is ICMP (past its
/// extension headers). (A quoted SCTP packet's CRC32c, when the quote
/// reaches it, is left as sent: no receiver checks a quoted CRC; SCTP
/// matches an error to its association by addresses, ports and
/// verification tag, which are translated or kept.)
#[inline(always)]
pub fn quote<A: Ip>(e: &Error<A>) -> Option<Quote> {
    let (mask, first) = A::FIRST;
    let ok = e.outer.as_ref()[0] & mask == first
        && is_error::<A>(e.icmp[0])
        && e.inner.as_ref()[0] & mask == first
        && matches!(e.proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP);
    ok.then_some(Quote { proto: e.proto })
}

/// Whether ICMP type `t` is an error this module translates (the hooks
/// walk a quote's extension headers only then).
#[inline(always)]
pub fn is_error<A: Ip>(t: u8) -> bool {
    t == A::DEST_UNREACH || t == A::TIME_EXCEEDED || Some(t) == A::TOO_BIG
}

/// The quoted packet's source and destination address and port.
#[inline(always)]
pub fn ends<A: Ip>(e: &Error<A>) -> (A, A, [u8; 2], [u8; 2]) {
    let inner = e.inner.as_ref();
    (addr(inner, A::SRC), addr(inner, A::DST), port(e.l4, 0), port(e.l4, 2))
}

/// Whether the error comes from the quoted packet's destination itself
/// (e.g. a backend's port unreachable), not from a router on the way.
#[inline(always)]
pub fn from_quoted_dst<A: Ip>(e: &Error<A>) -> bool {
    same(&addr::<A>(e.outer.as_ref(), A::SRC), &addr::<A>(e.inner.as_ref(), A::DST))
}

/// The checksums a rewrite updates: outer and quoted IPv4 headers (0 over
/// IPv6), the ICMP message, the quoted L4 header's (if present).
struct Sums {
    outer: u16,
    inner: u16,
    icmp: u16,
    l4: Option<u16>,
}

impl Sums {
    /// The outer address at `off` of header `b` to `new`; `diff` as in [`rewrite`].
    #[inline(always)]
    fn outer_addr<A: Ip>(&mut self, b: &mut [u8], off: usize, new: &A, diff: &impl Fn(&[u8], &[u8]) -> u32) {
        let d = diff(&b[off..off + A::LEN], new.octets());
        if A::CHECK.is_some() {
            self.outer = apply(self.outer, d);
        }
        // ICMPv6's pseudo header holds the outer addresses.
        if A::ICMP_PSEUDO {
            self.icmp = apply(self.icmp, d);
        }
        set(b, off, new.octets());
    }

    /// A quoted end (address at `a_off` of header `h`, port at `p_off` of
    /// L4 bytes `l4`) to `new`.
    #[inline(always)]
    fn end<A: Ip>(&mut self, h: &mut [u8], a_off: usize, l4: &mut [u8], p_off: usize, new: &End<A>, diff: &impl Fn(&[u8], &[u8]) -> u32) {
        let d = diff(&h[a_off..a_off + A::LEN], new.addr.octets());
        if A::CHECK.is_some() {
            self.inner = apply(self.inner, d);
        }
        self.icmp = apply(self.icmp, d);
        self.l4 = self.l4.map(|c| apply(c, d));
        set(h, a_off, new.addr.octets());
        let old = port(l4, p_off);
        let d = csum::diff(&old, new.port);
        self.icmp = apply(self.icmp, d);
        self.l4 = self.l4.map(|c| apply(c, d));
        set(l4, p_off, new.port);
    }
}

/// What the translated error looks like: the quote's new ends. The error
/// goes to the quote's new source (the quoted packet's sender); its outer
/// source stays, unless `from_dst`: an error from the quoted packet's
/// destination itself then reads as from the quote's new destination.
#[derive(Clone, Copy, Debug)]
pub struct Translation<'a, A> {
    pub src: End<'a, A>,
    pub dst: End<'a, A>,
    pub from_dst: bool,
}

/// Rewrites `e` (whose [`quote`] is `q`) to `t`, updating the outer
/// IPv4, ICMP, quoted IPv4 and quoted L4 checksums. `tcp_check`: the quoted
/// TCP checksum, when the quote is TCP and long enough to hold it.
/// `diff(old, new)`: an address's [`csum::diff`] (the hooks pass one that
/// asks the kernel, `bpf_csum_diff`: computed inline, IPv6's 16-byte
/// differences spill more registers than the programs have stack). Every
/// field is written, changed or not: an unchanged one adds nothing (a
/// computed checksum is never 0xffff, the one value -0 would change).
#[inline(always)]
pub fn rewrite<A: Ip>(e: &mut Error<A>, q: &Quote, t: &Translation<A>, tcp_check: Option<&mut [u8; 2]>, diff: impl Fn(&[u8], &[u8]) -> u32) {
    let (outer, icmp_hdr, inner, l4) = (e.outer.as_mut(), &mut e.icmp[..], e.inner.as_mut(), &mut e.l4[..]);
    let udp_check = u16::from_be_bytes(port(l4, UDP_CHECK));
    let mut sums = Sums {
        // IPv6 has no header checksums: these stay unused (0).
        outer: A::CHECK.map_or(0, |c| u16::from_be_bytes(port(outer, c))),
        inner: A::CHECK.map_or(0, |c| u16::from_be_bytes(port(inner, c))),
        icmp: u16::from_be_bytes(port(icmp_hdr, ICMP_CHECK)),
        // The quoted L4 checksum (its pseudo header holds the addresses, its
        // header the ports); a UDP checksum of 0 is absent and stays so.
        l4: match (q.proto, &tcp_check) {
            (IPPROTO_UDP, _) if udp_check != 0 => Some(udp_check),
            (IPPROTO_TCP, Some(c)) => Some(u16::from_be_bytes(**c)),
            _ => None,
        },
    };
    // Each field by a call of its own, not a loop over them: IPv6's loop
    // is not unrolled, and its variable offsets keep bounds checks (panic
    // paths the verifier refuses).
    if t.from_dst {
        sums.outer_addr::<A>(outer, A::SRC, t.dst.addr, &diff);
    }
    sums.outer_addr::<A>(outer, A::DST, t.src.addr, &diff);
    sums.end::<A>(inner, A::SRC, l4, 0, &t.src, &diff);
    sums.end::<A>(inner, A::DST, l4, 2, &t.dst, &diff);
    let Sums { outer: outer_ck, inner: inner_ck, mut icmp, l4: l4_ck } = sums;
    if let Some(c) = A::CHECK {
        let old_inner = port(inner, c);
        set(inner, c, &inner_ck.to_be_bytes());
        icmp = replace2(icmp, old_inner, inner_ck.to_be_bytes());
    }
    if let Some(c) = l4_ck {
        let new = if q.proto == IPPROTO_UDP { udp_mangled(c) } else { c }.to_be_bytes();
        match tcp_check {
            Some(t) if q.proto == IPPROTO_TCP => {
                icmp = replace2(icmp, *t, new);
                *t = new;
            }
            _ => {
                icmp = replace2(icmp, port(l4, UDP_CHECK), new);
                set(l4, UDP_CHECK, &new);
            }
        }
    }
    set(icmp_hdr, ICMP_CHECK, &icmp.to_be_bytes());
    if let Some(c) = A::CHECK {
        set(outer, c, &outer_ck.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::l4_checksum;
    use crate::ip::pseudo_sum;

    type V4 = [u8; 4];
    type V6 = [u8; 16];

    /// An IP header `s → d` of `len` payload bytes with every checksum computed.
    fn ip<A: Ip>(s: A, d: A, proto: u8, len: usize) -> Vec<u8> {
        let mut h = A::ZERO_HDR;
        A::write_header(&mut h, &s, &d, proto, len as u16, 0, true);
        h.as_ref().to_vec()
    }

    /// An ICMP error (IPv4: type 3 code 4, fragmentation needed, MTU 1400;
    /// IPv6: type 2, packet too big, MTU 1400) quoting a UDP, TCP or SCTP
    /// packet `src → dst`, with every checksum computed from scratch.
    fn error<A: Ip>(outer: (A, A), src: P<A>, dst: P<A>, proto: u8) -> Vec<u8> {
        error_ext(outer, src, dst, proto, (false, false))
    }

    /// An 8-byte IPv6 destination options header (PadN) before `next`.
    const DSTOPTS: u8 = 60;
    fn dstopts(next: u8) -> [u8; 8] {
        [next, 0, 1, 4, 0, 0, 0, 0]
    }

    /// [`error`] with a destination options header after the outer
    /// and/or the quoted IPv6 header (`ext`).
    fn error_ext<A: Ip>(outer: (A, A), src: P<A>, dst: P<A>, proto: u8, ext: (bool, bool)) -> Vec<u8> {
        let mut l4 = vec![0u8; if proto == IPPROTO_TCP { 20 } else { 8 }];
        l4[..2].copy_from_slice(&src.port);
        l4[2..4].copy_from_slice(&dst.port);
        if proto == IPPROTO_SCTP {
            // RFC 792's 8 bytes: ports and the verification tag.
            l4[4..8].copy_from_slice(&0x5e4e_7a90u32.to_be_bytes());
        } else {
            if proto == IPPROTO_UDP {
                l4[4..6].copy_from_slice(&8u16.to_be_bytes());
            } else {
                l4[12] = 0x50;
            }
            let c = l4_checksum(src.addr.octets(), dst.addr.octets(), proto, &l4);
            let at = if proto == IPPROTO_TCP { TCP_CHECK } else { 6 };
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        if ext.1 {
            l4.splice(0..0, dstopts(proto));
        }
        let mut quoted = ip(src.addr, dst.addr, if ext.1 { DSTOPTS } else { proto }, l4.len());
        quoted.extend_from_slice(&l4);
        let mut icmp = match A::TOO_BIG {
            Some(t) => vec![t, 0, 0, 0, 0, 0, 0x05, 0x78],
            None => vec![A::DEST_UNREACH, 4, 0, 0, 0, 0, 0x05, 0x78],
        };
        icmp.extend_from_slice(&quoted);
        let sum = if A::ICMP_PSEUDO { pseudo_sum(&outer.0, &outer.1, A::ICMP, icmp.len() as u16) } else { 0 };
        let c = !crate::csum::fold(crate::csum::add_bytes(sum, &icmp));
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        if ext.0 {
            icmp.splice(0..0, dstopts(A::ICMP));
        }
        let mut out = ip(outer.0, outer.1, if ext.0 { DSTOPTS } else { A::ICMP }, icmp.len());
        out.extend_from_slice(&icmp);
        out
    }

    /// An address and port, owned (the test's side of an [`End`]).
    #[derive(Clone, Copy)]
    struct P<A> {
        addr: A,
        port: [u8; 2],
    }

    fn end<A>(a: A, p: u16) -> P<A> {
        P { addr: a, port: p.to_be_bytes() }
    }

    fn r<A>(p: &P<A>) -> End<'_, A> {
        End { addr: &p.addr, port: &p.port }
    }

    /// The pieces of the error in `pkt`, whose outer and quoted headers
    /// are followed by `ext.0` and `ext.1` bytes of extension headers, the
    /// quote's L4 protocol `proto` (what the hooks find by walking).
    fn parts<A: Ip>(pkt: &mut [u8], ext: (usize, usize), proto: u8) -> Error<'_, A> {
        let h = A::HDR_LEN;
        let (outer, rest) = pkt.split_at_mut(h);
        let (icmp, rest) = rest[ext.0..].split_at_mut(8);
        let (inner, rest) = rest.split_at_mut(h);
        // SAFETY: each piece is a byte array of exactly the length split off.
        unsafe {
            Error {
                outer: &mut *(outer.as_mut_ptr() as *mut A::Hdr),
                icmp: &mut *(icmp.as_mut_ptr() as *mut [u8; 8]),
                inner: &mut *(inner.as_mut_ptr() as *mut A::Hdr),
                l4: &mut *(rest[ext.1..ext.1 + 8].as_mut_ptr() as *mut [u8; 8]),
                proto,
            }
        }
    }

    fn translate<A: Ip>(pkt: Vec<u8>, t: &Translation<A>) -> Vec<u8> {
        translate_ext(pkt, t, (0, 0))
    }

    fn translate_ext<A: Ip>(mut pkt: Vec<u8>, t: &Translation<A>, ext: (usize, usize)) -> Vec<u8> {
        let at = A::HDR_LEN + ext.0 + 8 + A::HDR_LEN + ext.1 + TCP_CHECK;
        let proto = pkt[at - TCP_CHECK - ext.1 - A::HDR_LEN + A::PROTO];
        let proto = if ext.1 > 0 { pkt[at - TCP_CHECK - ext.1] } else { proto };
        let mut tcp = (pkt.len() >= at + 2).then(|| [pkt[at], pkt[at + 1]]);
        {
            let mut e = parts::<A>(&mut pkt, ext, proto);
            let q = quote::<A>(&e).expect("a translatable error");
            let tcp_ref = if q.proto == IPPROTO_TCP { tcp.as_mut() } else { None };
            rewrite::<A>(&mut e, &q, t, tcp_ref, crate::csum::diff);
        }
        if let (Some(c), IPPROTO_TCP) = (tcp, proto) {
            pkt[at..at + 2].copy_from_slice(&c);
        }
        pkt
    }

    const ROUTER: V4 = [192, 168, 1, 254];
    const NODE: V4 = [192, 168, 1, 1];
    const CLIENT: V4 = [192, 168, 1, 2];
    const POD: V4 = [10, 244, 2, 10];

    fn v6(last: u8, net: u8) -> V6 {
        let mut a = [0u8; 16];
        a[..2].copy_from_slice(&[0xfd, 0]);
        a[2] = net;
        a[15] = last;
        a
    }

    /// Both families' story: the router between the nodes could not forward
    /// node:61000 → pod:8080, and the error must reach the client quoting
    /// client:40000 → node:30080.
    fn snat_story<A: Ip>(router: A, node: A, client: A, pod: A) {
        for proto in [IPPROTO_UDP, IPPROTO_TCP, IPPROTO_SCTP] {
            let got = error((router, node), end(node, 61000), end(pod, 8080), proto);
            let (s, d) = (end(client, 40000), end(node, 30080));
            let t = Translation { src: r(&s), dst: r(&d), from_dst: false };
            let want = error((router, client), end(client, 40000), end(node, 30080), proto);
            assert_eq!(translate(got, &t), want, "family {} proto {proto}", A::LEN);
        }
    }

    #[test]
    fn a_snat_flows_error_is_rewritten_to_what_the_client_sent_with_every_checksum_valid() {
        snat_story::<V4>(ROUTER, NODE, CLIENT, POD);
        snat_story::<V6>(v6(0xfe, 1), v6(1, 1), v6(2, 1), v6(10, 2));
    }

    #[test]
    fn an_icmpv6_error_with_extension_headers_outside_and_in_the_quote_is_rewritten_around_them() {
        let (router, node, client, pod) = (v6(0xfe, 1), v6(1, 1), v6(2, 1), v6(10, 2));
        for proto in [IPPROTO_UDP, IPPROTO_TCP] {
            for ext in [(true, false), (false, true), (true, true)] {
                let got = error_ext((router, node), end(node, 61000), end(pod, 8080), proto, ext);
                let (s, d) = (end(client, 40000), end(node, 30080));
                let t = Translation { src: r(&s), dst: r(&d), from_dst: false };
                let want = error_ext((router, client), s, d, proto, ext);
                let lens = (ext.0 as usize * 8, ext.1 as usize * 8);
                assert_eq!(translate_ext::<V6>(got, &t, lens), want, "proto {proto} ext {ext:?}");
            }
        }
    }

    fn from_backend<A: Ip>(client: A, pod: A, vip: A) {
        let mut got = error((pod, client), end(client, 5000), end(pod, 5353), IPPROTO_UDP);
        assert!(from_quoted_dst::<A>(&parts::<A>(&mut got, (0, 0), IPPROTO_UDP)));
        let (s, d) = (end(client, 5000), end(vip, 53));
        let t = Translation { src: r(&s), dst: r(&d), from_dst: true };
        assert_eq!(translate(got, &t), error((vip, client), end(client, 5000), end(vip, 53), IPPROTO_UDP));
    }

    #[test]
    fn an_error_from_the_backend_itself_reads_as_from_the_service() {
        from_backend::<V4>(CLIENT, POD, [10, 96, 0, 53]);
        from_backend::<V6>(v6(2, 1), v6(10, 2), v6(0x53, 0x96));
    }

    fn only_errors<A: Ip>(a: A, b: A) {
        let mut pkt = error((a, b), end(a, 1), end(b, 2), IPPROTO_UDP);
        let e = parts::<A>(&mut pkt, (0, 0), IPPROTO_UDP);
        assert_eq!(quote::<A>(&e), Some(Quote { proto: IPPROTO_UDP }));
        assert_eq!(ends::<A>(&e), (a, b, 1u16.to_be_bytes(), 2u16.to_be_bytes()));
        assert!(!from_quoted_dst::<A>(&e), "from a, about a packet to b");
        let (icmp, inner) = (A::HDR_LEN, A::HDR_LEN + 8);
        let edit = |f: &dyn Fn(&mut [u8]), proto: u8| {
            let mut e = pkt.clone();
            f(&mut e);
            quote::<A>(&parts::<A>(&mut e, (0, 0), proto))
        };
        let udp = IPPROTO_UDP;
        assert!(edit(&|e| e[icmp] = if A::ICMP_PSEUDO { 128 } else { 8 }, udp).is_none(), "an echo request quotes nothing");
        assert!(edit(&|e| e[inner] = if A::ICMP_PSEUDO { 0x40 } else { 0x46 }, udp).is_none(), "a quote with options or of another version");
        assert!(edit(&|e| e[0] = if A::ICMP_PSEUDO { 0x40 } else { 0x46 }, udp).is_none(), "an outer header with options or of another version");
        assert!(edit(&|_| (), A::ICMP).is_none(), "an error about an error");
        for t in [A::DEST_UNREACH, A::TIME_EXCEEDED] {
            assert!(edit(&|e| e[icmp] = t, udp).is_some(), "type {t}");
        }
    }

    #[test]
    fn only_unreachable_time_exceeded_and_too_big_errors_quoting_tcp_udp_or_sctp_are_translated() {
        only_errors::<V4>(ROUTER, NODE);
        only_errors::<V6>(v6(1, 1), v6(2, 2));
        // ICMPv6 neighbour solicitation (135) is no error.
        let mut pkt = error((v6(1, 1), v6(2, 2)), end(v6(1, 1), 1), end(v6(2, 2), 2), IPPROTO_UDP);
        pkt[40] = 135;
        assert!(quote::<V6>(&parts::<V6>(&mut pkt, (0, 0), IPPROTO_UDP)).is_none());
    }
}
