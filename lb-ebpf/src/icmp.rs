//! ICMP errors of NATed flows, the pure part (host-tested).
//!
//! A destination-unreachable or time-exceeded message quotes the packet that
//! caused it: the receiving stack finds the socket by the quote. When that
//! packet was rewritten by NAT, the quote names addresses and ports the other
//! end never saw, so the quote (and the outer header) are rewritten the same
//! way as the flow's packets; without it path MTU discovery ("fragmentation
//! needed") and UDP's "port unreachable" stop at the balancer.
//!
//! The hooks copy a fixed block out of the packet — outer IPv4 header without
//! options, ICMP header, quoted IPv4 header without options, the quote's
//! first 8 L4 bytes (ports; the UDP checksum) — rewrite it here with
//! incremental checksum updates, and copy it back. Every field the rewrite
//! touches is 16-bit aligned from the start of the ICMP message, so its
//! checksum follows the same RFC 1624 updates. The quoted TCP checksum sits
//! past the block; the hooks pass it in when the quote holds it.
use crate::csum::{replace2, replace4, udp_mangled};

pub const IPPROTO_ICMP: u8 = 1;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_SCTP: u8 = 132;
pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_TIME_EXCEEDED: u8 = 11;

/// Length of the block the hooks read and write, from the outer IPv4 header.
pub const BLOCK: usize = 56;
const OUTER_CHECK: usize = 10;
const OUTER_SRC: usize = 12;
const OUTER_DST: usize = 16;
const ICMP: usize = 20;
const ICMP_CHECK: usize = ICMP + 2;
const INNER: usize = ICMP + 8;
const INNER_CHECK: usize = INNER + 10;
const INNER_SRC: usize = INNER + 12;
const INNER_DST: usize = INNER + 16;
/// The quote's L4 header, from the start of the block.
pub const INNER_L4: usize = INNER + 20;
const INNER_UDP_CHECK: usize = INNER_L4 + 6;
/// The quoted TCP checksum, from the start of the quote's L4 header.
pub const TCP_CHECK: usize = 16;

/// One end of a quoted packet: address and port, network order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct End {
    pub addr: [u8; 4],
    pub port: [u8; 2],
}

/// The quoted packet of an ICMP error, as it was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quote {
    pub src: End,
    pub dst: End,
    pub proto: u8,
    /// The outer header's addresses.
    pub outer_src: [u8; 4],
    pub outer_dst: [u8; 4],
}

fn addr(b: &[u8; BLOCK], off: usize) -> [u8; 4] {
    [b[off], b[off + 1], b[off + 2], b[off + 3]]
}

fn port(b: &[u8; BLOCK], off: usize) -> [u8; 2] {
    [b[off], b[off + 1]]
}

/// The quote of `block` if it is an ICMP error this module translates:
/// outer and quoted IPv4 headers without options, type destination
/// unreachable or time exceeded, quoting TCP, UDP or SCTP. (A quoted
/// SCTP packet's CRC32c, when the quote reaches it, is left as sent: no
/// receiver checks a quoted CRC; SCTP matches an error to its association
/// by addresses, ports and verification tag, which are translated or kept.)
#[inline(always)]
pub fn quote(block: &[u8; BLOCK]) -> Option<Quote> {
    let ok = block[0] == 0x45
        && block[9] == IPPROTO_ICMP
        && (block[ICMP] == ICMP_DEST_UNREACH || block[ICMP] == ICMP_TIME_EXCEEDED)
        && block[INNER] == 0x45
        && matches!(block[INNER + 9], IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP);
    if !ok {
        return None;
    }
    Some(Quote {
        src: End { addr: addr(block, INNER_SRC), port: port(block, INNER_L4) },
        dst: End { addr: addr(block, INNER_DST), port: port(block, INNER_L4 + 2) },
        proto: block[INNER + 9],
        outer_src: addr(block, OUTER_SRC),
        outer_dst: addr(block, OUTER_DST),
    })
}

/// What the translated error looks like: new outer addresses and the quote's new ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub outer_src: [u8; 4],
    pub outer_dst: [u8; 4],
    pub src: End,
    pub dst: End,
}

/// Rewrites `block` (whose [`quote`] is `q`) to `t`, updating the outer
/// IPv4, ICMP, quoted IPv4 and quoted L4 checksums. `tcp_check`: the quoted
/// TCP checksum, when the quote is TCP and long enough to hold it.
#[inline(always)]
pub fn rewrite(block: &mut [u8; BLOCK], q: &Quote, t: &Translation, tcp_check: Option<&mut [u8; 2]>) {
    let mut outer = u16::from_be_bytes(port(block, OUTER_CHECK));
    let mut icmp = u16::from_be_bytes(port(block, ICMP_CHECK));
    let mut inner = u16::from_be_bytes(port(block, INNER_CHECK));
    let udp_off = INNER_UDP_CHECK;
    let udp_check = u16::from_be_bytes(port(block, udp_off));
    // The quoted L4 checksum (its pseudo header holds the addresses, its
    // header the ports); a UDP checksum of 0 is absent and stays so.
    let mut l4 = match (q.proto, &tcp_check) {
        (IPPROTO_UDP, _) if udp_check != 0 => Some(udp_check),
        (IPPROTO_TCP, Some(c)) => Some(u16::from_be_bytes(**c)),
        _ => None,
    };
    for (off, old, new) in [(OUTER_SRC, q.outer_src, t.outer_src), (OUTER_DST, q.outer_dst, t.outer_dst)] {
        if old != new {
            block[off..off + 4].copy_from_slice(&new);
            outer = replace4(outer, old, new);
        }
    }
    for (a_off, p_off, old, new) in [(INNER_SRC, INNER_L4, q.src, t.src), (INNER_DST, INNER_L4 + 2, q.dst, t.dst)] {
        if old.addr != new.addr {
            block[a_off..a_off + 4].copy_from_slice(&new.addr);
            inner = replace4(inner, old.addr, new.addr);
            icmp = replace4(icmp, old.addr, new.addr);
            l4 = l4.map(|c| replace4(c, old.addr, new.addr));
        }
        if old.port != new.port {
            block[p_off..p_off + 2].copy_from_slice(&new.port);
            icmp = replace2(icmp, old.port, new.port);
            l4 = l4.map(|c| replace2(c, old.port, new.port));
        }
    }
    let old_inner = port(block, INNER_CHECK);
    block[INNER_CHECK..INNER_CHECK + 2].copy_from_slice(&inner.to_be_bytes());
    icmp = replace2(icmp, old_inner, inner.to_be_bytes());
    if let Some(c) = l4 {
        let new = if q.proto == IPPROTO_UDP { udp_mangled(c) } else { c }.to_be_bytes();
        match tcp_check {
            Some(t) if q.proto == IPPROTO_TCP => {
                icmp = replace2(icmp, *t, new);
                *t = new;
            }
            _ => {
                icmp = replace2(icmp, port(block, udp_off), new);
                block[udp_off..udp_off + 2].copy_from_slice(&new);
            }
        }
    }
    block[ICMP_CHECK..ICMP_CHECK + 2].copy_from_slice(&icmp.to_be_bytes());
    block[OUTER_CHECK..OUTER_CHECK + 2].copy_from_slice(&outer.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum::{checksum, l4_checksum_v4};

    /// An ICMP error (type 3, code 4: fragmentation needed, MTU 1400)
    /// quoting a UDP or TCP packet `src → dst`, with every checksum computed
    /// from scratch.
    fn error(outer: ([u8; 4], [u8; 4]), src: End, dst: End, proto: u8) -> Vec<u8> {
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
            let c = l4_checksum_v4(src.addr, dst.addr, proto, &l4);
            let at = if proto == IPPROTO_TCP { TCP_CHECK } else { 6 };
            l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
        }
        let ip = |s: [u8; 4], d: [u8; 4], proto: u8, len: usize| {
            let mut h = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, proto, 0, 0];
            h[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            h.extend_from_slice(&s);
            h.extend_from_slice(&d);
            let c = checksum(&h);
            h[10..12].copy_from_slice(&c.to_be_bytes());
            h
        };
        let mut quoted = ip(src.addr, dst.addr, proto, 20 + l4.len());
        quoted.extend_from_slice(&l4);
        let mut icmp = vec![ICMP_DEST_UNREACH, 4, 0, 0, 0, 0, 0x05, 0x78];
        icmp.extend_from_slice(&quoted);
        let c = checksum(&icmp);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
        let mut out = ip(outer.0, outer.1, IPPROTO_ICMP, 20 + icmp.len());
        out.extend_from_slice(&icmp);
        out
    }

    fn end(a: [u8; 4], p: u16) -> End {
        End { addr: a, port: p.to_be_bytes() }
    }

    fn translate(mut pkt: Vec<u8>, t: &Translation) -> Vec<u8> {
        let mut block = [0u8; BLOCK];
        block.copy_from_slice(&pkt[..BLOCK]);
        let q = quote(&block).expect("a translatable error");
        let mut tcp = (pkt.len() >= BLOCK + 8 + 2).then(|| [pkt[INNER_L4 + TCP_CHECK], pkt[INNER_L4 + TCP_CHECK + 1]]);
        let tcp_ref = if q.proto == IPPROTO_TCP { tcp.as_mut() } else { None };
        rewrite(&mut block, &q, t, tcp_ref);
        pkt[..BLOCK].copy_from_slice(&block);
        if let (Some(c), IPPROTO_TCP) = (tcp, q.proto) {
            pkt[INNER_L4 + TCP_CHECK..INNER_L4 + TCP_CHECK + 2].copy_from_slice(&c);
        }
        pkt
    }

    const ROUTER: [u8; 4] = [192, 168, 1, 254];
    const NODE: [u8; 4] = [192, 168, 1, 1];
    const CLIENT: [u8; 4] = [192, 168, 1, 2];
    const POD: [u8; 4] = [10, 244, 2, 10];

    #[test]
    fn a_snat_flows_error_is_rewritten_to_what_the_client_sent_with_every_checksum_valid() {
        for proto in [IPPROTO_UDP, IPPROTO_TCP, IPPROTO_SCTP] {
            // The router between the nodes could not forward node:61000 → pod:8080.
            let got = error((ROUTER, NODE), end(NODE, 61000), end(POD, 8080), proto);
            let t = Translation { outer_src: ROUTER, outer_dst: CLIENT, src: end(CLIENT, 40000), dst: end(NODE, 30080) };
            let want = error((ROUTER, CLIENT), end(CLIENT, 40000), end(NODE, 30080), proto);
            assert_eq!(translate(got, &t), want, "proto {proto}");
        }
    }

    #[test]
    fn an_error_from_the_backend_itself_reads_as_from_the_service() {
        let got = error((POD, CLIENT), end(CLIENT, 5000), end(POD, 5353), IPPROTO_UDP);
        let vip = [10, 96, 0, 53];
        let t = Translation { outer_src: vip, outer_dst: CLIENT, src: end(CLIENT, 5000), dst: end(vip, 53) };
        assert_eq!(translate(got, &t), error((vip, CLIENT), end(CLIENT, 5000), end(vip, 53), IPPROTO_UDP));
    }

    #[test]
    fn only_unreachable_and_time_exceeded_errors_quoting_tcp_udp_or_sctp_are_translated() {
        let mut b = [0u8; BLOCK];
        b.copy_from_slice(&error((ROUTER, NODE), end(NODE, 1), end(POD, 2), IPPROTO_UDP)[..BLOCK]);
        assert!(quote(&b).is_some());
        let mut echo = b;
        echo[ICMP] = 8;
        assert!(quote(&echo).is_none(), "an echo request quotes nothing");
        let mut options = b;
        options[INNER] = 0x46;
        assert!(quote(&options).is_none(), "a quote with IP options is not read at fixed offsets");
        let mut icmp_in_icmp = b;
        icmp_in_icmp[INNER + 9] = IPPROTO_ICMP;
        assert!(quote(&icmp_in_icmp).is_none());
    }
}
