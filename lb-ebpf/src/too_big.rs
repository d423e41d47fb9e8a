//! The ICMP error a node answers a packet with when the packet no longer
//! fits its way on (a DSR option or extension header makes it longer):
//! over IPv4 "fragmentation needed" (for a DF packet), over IPv6 "packet
//! too big" (IPv6 routers never fragment). The frame is the packet's own
//! Ethernet addresses swapped, a new IP + ICMP header, and the quote (the
//! packet's IP header and first 8 L4 bytes: the ports and, for TCP, the
//! sequence number the sender checks), which the program leaves in place
//! behind the new headers. One builder over [`Ip`].

use crate::{
    csum,
    ip::{pseudo_sum, Ip},
    unreach::{headers_len, quote_len, Headers},
};

/// What the error quotes: the packet's IP header (no options or extension
/// headers) and its first 8 L4 bytes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Quote<A: Ip> {
    pub ip: A::Hdr,
    pub l4: [u8; 8],
}

/// What is built here: Ethernet, IP and ICMP headers.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Head<A: Ip> {
    pub eth: [u8; 14],
    pub h: Headers<A>,
}

/// Length of what is built here.
pub const fn head_len<A: Ip>() -> usize {
    14 + headers_len::<A>()
}

/// Length of the whole frame.
pub const fn frame_len<A: Ip>() -> usize {
    head_len::<A>() + quote_len::<A>()
}

/// Writes over `f` the headers of the error about `quote` (what the sender
/// sent; `quote_sum` its one's complement sum, which the hook has the
/// kernel compute: summed here, its bytes would not fit IPv6's frame),
/// `macs` being the packet's Ethernet destination then source, telling the
/// sender to send at most `mtu` bytes. From the packet's destination (the
/// service address it dialed) back to its source.
#[inline(always)]
pub fn head_for<A: Ip>(f: &mut Head<A>, macs: &[u8; 12], quote: &Quote<A>, quote_sum: u32, mtu: u16) {
    f.eth[0..6].copy_from_slice(&macs[6..12]);
    f.eth[6..12].copy_from_slice(&macs[0..6]);
    f.eth[12..14].copy_from_slice(&A::ETHERTYPE);
    // Where they lie in the quote (copies would not fit IPv6's frame).
    let q = quote.ip.as_ref();
    let service: &A = bytemuck::from_bytes(&q[A::DST..A::DST + A::LEN]);
    let client: &A = bytemuck::from_bytes(&q[A::SRC..A::SRC + A::LEN]);
    let len = (8 + quote_len::<A>()) as u16;
    // Precedence "internetwork control" (as the kernel's own ICMP), no DF.
    A::write_header(&mut f.h.ip, service, client, A::ICMP, len, 0xc0, false);
    // IPv6's own message; IPv4's is destination unreachable, code 4. The
    // MTU is the low half of the last word in both (IPv4: next-hop MTU
    // after 16 unused bits; IPv6: a 32-bit MTU).
    let (typ, code) = match A::TOO_BIG {
        Some(t) => (t, 0),
        None => (A::DEST_UNREACH, 4),
    };
    let icmp = &mut f.h.icmp;
    *icmp = [typ, code, 0, 0, 0, 0, 0, 0];
    icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
    let mut sum = quote_sum;
    if A::ICMP_PSEUDO {
        sum += pseudo_sum(service, client, A::ICMP, len);
    }
    let c = !csum::fold(csum::add_bytes(sum, icmp));
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<A: Ip>(client: A, service: A, mtu: u16) {
        let mut ip = A::ZERO_HDR;
        A::write_header(&mut ip, &client, &service, 6, 1480, 0, true);
        let mut l4 = [0u8; 8];
        l4[0..2].copy_from_slice(&40000u16.to_be_bytes());
        l4[2..4].copy_from_slice(&80u16.to_be_bytes());
        let quote = Quote::<A> { ip, l4 };
        let macs = [2, 0, 0, 0, 0, 11, 2, 0, 0, 0, 0, 2];
        let mut f = Head::<A> { eth: [0xee; 14], h: Headers { ip: A::ZERO_HDR, icmp: [0xee; 8] } };
        let sum = csum::add_bytes(csum::add_bytes(0, quote.ip.as_ref()), &quote.l4);
        head_for(&mut f, &macs, &quote, sum, mtu);
        assert_eq!(&f.eth[0..6], &macs[6..12], "back to the sender's MAC");
        let h = f.h.ip.as_ref();
        assert_eq!((&h[A::SRC..A::SRC + A::LEN], &h[A::DST..A::DST + A::LEN]), (service.octets(), client.octets()), "from the service, back");
        if A::CHECK.is_some() {
            assert_eq!(csum::checksum(h), 0, "IPv4 checksum verifies");
        }
        let mut icmp = f.h.icmp.to_vec();
        icmp.extend_from_slice(quote.ip.as_ref());
        icmp.extend_from_slice(&quote.l4);
        assert_eq!(icmp.len(), 8 + quote_len::<A>());
        let start = if A::ICMP_PSEUDO { pseudo_sum(&service, &client, A::ICMP, icmp.len() as u16) } else { 0 };
        assert_eq!(!csum::fold(csum::add_bytes(start, &icmp)), 0, "ICMP checksum verifies over header and quote");
        assert_eq!(u16::from_be_bytes([icmp[6], icmp[7]]), mtu);
        assert_eq!(14 + h.len() + icmp.len(), frame_len::<A>());
    }

    #[test]
    fn the_error_goes_back_to_the_sender_with_valid_checksums() {
        check::<[u8; 4]>([192, 168, 50, 2], [10, 96, 0, 10], 1492);
        check::<[u8; 16]>([0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], [0xfd, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 1476);
        assert_eq!((frame_len::<[u8; 4]>(), frame_len::<[u8; 16]>()), (14 + 20 + 8 + 28, 14 + 40 + 8 + 48));
    }
}
