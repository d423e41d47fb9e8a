//! The TCP reset a service without backends answers a SYN with, so clients
//! fail at once ("connection refused") instead of waiting for a timeout.
//! Built whole (Ethernet + IP + TCP without options: 54 bytes over IPv4, 74
//! over IPv6) from the SYN's fields, with checksums computed from scratch.
use crate::{csum, ip::Ip};

/// The reset frame of family `A`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Rst<A: Ip> {
    pub eth: [u8; 14],
    pub ip: A::Hdr,
    pub tcp: [u8; 20],
}

/// Length of the reset frame of family `A`.
pub const fn rst_len<A: Ip>() -> usize {
    core::mem::size_of::<Rst<A>>()
}

/// What the reset is built from: the SYN's Ethernet addresses
/// (destination, then source), addresses, ports and sequence number (all as
/// on the wire).
pub struct Syn<'a, A> {
    pub macs: [u8; 12],
    pub src: &'a A,
    pub dst: &'a A,
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
}

/// Writes over `f` the RST|ACK answering `syn` (RFC 9293 3.10.7.1: seq 0,
/// ack = SYN's seq + 1), addressed back to the sender. In place: `f` is
/// the SYN's own frame in the hooks (what `syn` holds was read out first).
#[inline(always)]
pub fn write_reset<A: Ip>(f: &mut Rst<A>, syn: &Syn<A>) {
    f.eth[0..6].copy_from_slice(&syn.macs[6..12]);
    f.eth[6..12].copy_from_slice(&syn.macs[0..6]);
    f.eth[12..14].copy_from_slice(&A::ETHERTYPE);
    // IP: TTL 64, TCP, 20 bytes; IPv4 with DF.
    A::write_header(&mut f.ip, syn.dst, syn.src, 6, 20, 0, true);
    // TCP: ports swapped, seq 0, ack = seq + 1, data offset 5, RST|ACK, window 0.
    let t = &mut f.tcp;
    *t = [0; 20];
    t[0..2].copy_from_slice(&syn.dport);
    t[2..4].copy_from_slice(&syn.sport);
    let ack = u32::from_be_bytes(syn.seq).wrapping_add(1);
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 0x50;
    t[13] = 0x14;
    let c = csum::l4_checksum(syn.dst.octets(), syn.src.octets(), 6, t);
    t[16..18].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<A: Ip>(src: A, dst: A) {
        let macs = [2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1];
        let syn = Syn { macs, src: &src, dst: &dst, sport: 40000u16.to_be_bytes(), dport: 80u16.to_be_bytes(), seq: 1000u32.to_be_bytes() };
        // Over a frame full of something else (the SYN, in the hooks).
        let mut f = Rst::<A> { eth: [0xaa; 14], ip: A::ZERO_HDR, tcp: [0xbb; 20] };
        f.ip.as_mut().fill(0xcc);
        write_reset(&mut f, &syn);
        assert_eq!(rst_len::<A>(), 14 + A::HDR_LEN + 20);
        assert_eq!((&f.eth[0..6], &f.eth[6..12]), (&macs[6..12], &macs[0..6]), "back to the sender");
        assert_eq!(&f.eth[12..14], &A::ETHERTYPE);
        if A::CHECK.is_some() {
            assert_eq!(csum::checksum(f.ip.as_ref()), 0, "IPv4 checksum verifies");
        }
        assert_eq!(csum::l4_checksum(dst.octets(), src.octets(), 6, &f.tcp), 0, "TCP checksum verifies");
        let ip = f.ip.as_ref();
        assert_eq!((&ip[A::SRC..A::DST], &ip[A::DST..A::DST + A::LEN]), (dst.octets(), src.octets()));
        assert_eq!(u32::from_be_bytes(f.tcp[8..12].try_into().unwrap()), 1001);
        assert_eq!(f.tcp[13], 0x14, "RST|ACK");
    }

    #[test]
    fn reset_answers_the_syn_with_valid_checksums() {
        check::<[u8; 4]>([192, 168, 1, 2], [10, 96, 0, 99]);
        check::<[u8; 16]>([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], [0xfd, 0, 0, 0x96, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x99]);
    }
}
