//! The ICMP port unreachable a UDP datagram to a service port nobody serves
//! is answered with (kube-proxy's REJECT), so a connected UDP socket fails
//! at once (ECONNREFUSED) instead of waiting; over IPv6 an ICMPv6
//! destination unreachable, code 4. The answer frame is the datagram's
//! Ethernet header with the addresses swapped, a new IP + ICMP header
//! ([`headers`]), then the datagram's IP header and first 8 bytes (the
//! quote: RFC 792's; RFC 4443 allows it as short). Datagrams with IPv4
//! options or IPv6 extension headers are not answered. The hook moves the
//! quote into place (room made after the Ethernet header, the payload
//! cut), so nothing but the new headers is built on the stack.
use crate::{csum, ip::Ip};

/// The answer's IP + ICMP headers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Headers<A: Ip> {
    pub ip: A::Hdr,
    pub icmp: [u8; 8],
}

/// Length of the quote: the datagram's IP header (without options) and UDP header.
pub const fn quote_len<A: Ip>() -> usize {
    A::HDR_LEN + 8
}

/// Length of the answer's IP + ICMP headers.
pub const fn headers_len<A: Ip>() -> usize {
    core::mem::size_of::<Headers<A>>()
}

/// Length of the answer frame.
pub const fn unreach_len<A: Ip>() -> usize {
    14 + headers_len::<A>() + quote_len::<A>()
}

/// The one's complement sum of the quote, from what the hook already has:
/// `hdr_sum`, its IP header's sum (a valid IPv4 header sums to 0xffff by
/// construction: its checksum makes it so), and the UDP header's words:
/// the ports and the length + checksum as on the wire.
#[inline(always)]
pub fn quote_sum(hdr_sum: u32, sport: [u8; 2], dport: [u8; 2], len_check: [u8; 4]) -> u32 {
    let mut sum = hdr_sum + u16::from_be_bytes(sport) as u32 + u16::from_be_bytes(dport) as u32;
    sum += u16::from_be_bytes([len_check[0], len_check[1]]) as u32;
    sum += u16::from_be_bytes([len_check[2], len_check[3]]) as u32;
    sum
}

/// Writes over `h` the IP + ICMP headers of the port unreachable answering
/// a datagram from `client` to `service` whose quote sums to `quote_sum`:
/// from the address it was sent to, back. Checksums are complete (ICMPv6's
/// over its pseudo header, whose addresses sum to `addr_sum`: the hooks
/// have that sum already, the quote's header holds the same two). In
/// place (the hooks' `h` is the packet's).
#[inline(always)]
pub fn write_headers<A: Ip>(h: &mut Headers<A>, service: &A, client: &A, quote_sum: u32, addr_sum: u32) {
    let len = (8 + quote_len::<A>()) as u16;
    // TTL 64, no DF.
    A::write_header(&mut h.ip, service, client, A::ICMP, len, 0, false);
    let icmp = &mut h.icmp;
    *icmp = [0; 8];
    icmp[0] = A::DEST_UNREACH;
    icmp[1] = A::PORT_UNREACH;
    let mut sum = quote_sum;
    if A::ICMP_PSEUDO {
        sum += addr_sum + A::ICMP as u32 + len as u32;
    }
    // The checksum covers the ICMP header and the quote.
    let c = !csum::fold(csum::add_bytes(sum, icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::pseudo_sum;

    fn quote<A: Ip>(client: A, service: A) -> Vec<u8> {
        let mut h = A::ZERO_HDR;
        A::write_header(&mut h, &client, &service, 17, 13, 0, false);
        let mut q = h.as_ref().to_vec();
        q.extend_from_slice(&40000u16.to_be_bytes());
        q.extend_from_slice(&81u16.to_be_bytes());
        q.extend_from_slice(&13u16.to_be_bytes());
        q.extend_from_slice(&[0x12, 0x34]);
        q
    }

    fn check<A: Ip>(client: A, service: A) {
        let q = quote(client, service);
        assert_eq!(q.len(), quote_len::<A>());
        let n = A::HDR_LEN;
        let hdr_sum = if A::CHECK.is_some() { 0xffff } else { csum::add_bytes(0, &q[..n]) };
        let sum = quote_sum(hdr_sum, [q[n], q[n + 1]], [q[n + 2], q[n + 3]], [q[n + 4], q[n + 5], q[n + 6], q[n + 7]]);
        assert_eq!(csum::fold(sum), csum::fold(csum::add_bytes(0, &q)), "the quote's sum, from the header's and the UDP header's");
        let mut h = Headers::<A> { ip: A::ZERO_HDR, icmp: [0xee; 8] };
        let addr_sum = csum::add_bytes(csum::add_bytes(0, service.octets()), client.octets());
        write_headers(&mut h, &service, &client, sum, addr_sum);
        let ip = h.ip.as_ref();
        assert_eq!((&ip[A::SRC..A::DST], &ip[A::DST..A::DST + A::LEN]), (service.octets(), client.octets()), "from the address it was sent to, back");
        assert_eq!(14 + ip.len() + 8 + q.len(), unreach_len::<A>());
        if A::CHECK.is_some() {
            assert_eq!(csum::checksum(ip), 0, "IPv4 checksum verifies");
        }
        assert_eq!((h.icmp[0], h.icmp[1]), (A::DEST_UNREACH, A::PORT_UNREACH), "port unreachable");
        let icmp: Vec<u8> = h.icmp.iter().chain(&q).copied().collect();
        let start = if A::ICMP_PSEUDO { pseudo_sum(&service, &client, A::ICMP, icmp.len() as u16) } else { 0 };
        assert_eq!(!csum::fold(csum::add_bytes(start, &icmp)), 0, "ICMP checksum verifies over header and quote");
    }

    #[test]
    fn the_answer_quotes_the_datagram_with_valid_checksums() {
        check::<[u8; 4]>([10, 244, 1, 10], [10, 96, 0, 10]);
        check::<[u8; 16]>([0xfd, 0, 0x2, 0x44, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10], [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        assert_eq!((unreach_len::<[u8; 4]>(), unreach_len::<[u8; 16]>()), (70, 14 + 48 + 48));
    }
}
