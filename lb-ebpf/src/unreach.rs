//! The ICMP port unreachable a UDP datagram to a service port nobody serves
//! is answered with (kube-proxy's REJECT), so a connected UDP socket fails
//! at once (ECONNREFUSED) instead of waiting. The answer frame is the
//! datagram's Ethernet header with the addresses swapped, a new IPv4 + ICMP
//! header ([`headers`]), then the datagram's IPv4 header and first 8 bytes
//! (RFC 792: the quote). Datagrams with IPv4 options are not answered.
//! The hook moves the quote into place (room made after the Ethernet
//! header, the payload cut), so nothing but the new headers is built on the
//! stack.
use crate::csum;

/// The quote: the datagram's IPv4 header (20 bytes, no options) and UDP header.
pub const QUOTE_LEN: usize = 20 + 8;
/// Length of the answer's IPv4 + ICMP headers.
pub const HEADERS_LEN: usize = 20 + 8;
/// Length of the answer frame.
pub const UNREACH_LEN: usize = 14 + HEADERS_LEN + QUOTE_LEN;

/// The one's complement sum of the quote, from what the hook already has:
/// a valid IPv4 header sums to 0xffff by construction (its checksum makes
/// it so), so only the UDP header's words are added: the ports and the
/// length + checksum as on the wire.
#[inline(always)]
pub fn quote_sum(sport: [u8; 2], dport: [u8; 2], len_check: [u8; 4]) -> u32 {
    let mut sum = 0xffff + u16::from_be_bytes(sport) as u32 + u16::from_be_bytes(dport) as u32;
    sum += u16::from_be_bytes([len_check[0], len_check[1]]) as u32;
    sum += u16::from_be_bytes([len_check[2], len_check[3]]) as u32;
    sum
}

/// The IPv4 + ICMP headers of the port unreachable answering a datagram
/// from `client` to `service` whose quote sums to `quote_sum`: from the
/// address it was sent to, back. Checksums are complete.
#[inline(always)]
pub fn headers(service: [u8; 4], client: [u8; 4], quote_sum: u32) -> [u8; HEADERS_LEN] {
    let mut h = [0u8; HEADERS_LEN];
    // IPv4: version 4, IHL 5, total length 56, TTL 64, ICMP.
    h[0] = 0x45;
    h[3] = (UNREACH_LEN - 14) as u8;
    h[8] = 64;
    h[9] = 1;
    h[12..16].copy_from_slice(&service);
    h[16..20].copy_from_slice(&client);
    let ipc = csum::checksum(&h[..20]);
    h[10..12].copy_from_slice(&ipc.to_be_bytes());
    // ICMP type 3 (destination unreachable), code 3 (port unreachable); the
    // checksum covers the ICMP header and the quote.
    h[20] = 3;
    h[21] = 3;
    let c = !csum::fold(csum::add_bytes(quote_sum, &h[20..]));
    h[22..24].copy_from_slice(&c.to_be_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quote() -> [u8; QUOTE_LEN] {
        let mut q = [0u8; QUOTE_LEN];
        q[0] = 0x45;
        q[3] = 28 + 5;
        q[8] = 64;
        q[9] = 17;
        q[12..16].copy_from_slice(&[10, 244, 1, 10]);
        q[16..20].copy_from_slice(&[10, 96, 0, 10]);
        let c = csum::checksum(&q[..20]);
        q[10..12].copy_from_slice(&c.to_be_bytes());
        q[20..22].copy_from_slice(&40000u16.to_be_bytes());
        q[22..24].copy_from_slice(&81u16.to_be_bytes());
        q[24..26].copy_from_slice(&13u16.to_be_bytes());
        q
    }

    #[test]
    fn the_answer_quotes_the_datagram_with_valid_checksums() {
        let q = quote();
        let sum = quote_sum([q[20], q[21]], [q[22], q[23]], [q[24], q[25], q[26], q[27]]);
        assert_eq!(csum::fold(sum), csum::fold(csum::add_bytes(0, &q)), "the quote's sum, from the UDP header alone");
        let h = headers([10, 96, 0, 10], [10, 244, 1, 10], sum);
        assert_eq!((&h[12..16], &h[16..20]), (&q[16..20], &q[12..16]), "from the address it was sent to, back");
        assert_eq!(u16::from_be_bytes([h[2], h[3]]) as usize, UNREACH_LEN - 14);
        assert_eq!(csum::checksum(&h[..20]), 0, "IPv4 checksum verifies");
        assert_eq!((h[20], h[21]), (3, 3), "port unreachable");
        let icmp: Vec<u8> = h[20..].iter().chain(&q).copied().collect();
        assert_eq!(csum::checksum(&icmp), 0, "ICMP checksum verifies over header and quote");
    }
}
