//! The TCP reset a service without backends answers a SYN with, so clients
//! fail at once ("connection refused") instead of waiting for a timeout.
//! Built whole (54 bytes: Ethernet + IPv4 + TCP, no options) from the SYN's
//! fields, with checksums computed from scratch.
use crate::csum;

/// Length of the reset frame.
pub const RST_LEN: usize = 14 + 20 + 20;

/// What the reset is built from: the SYN's Ethernet addresses, addresses,
/// ports and sequence number (all as on the wire).
pub struct Syn {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: [u8; 2],
    pub dport: [u8; 2],
    pub seq: [u8; 4],
}

/// The RST|ACK answering `syn` (RFC 9293 3.10.7.1: seq 0, ack = SYN's seq + 1),
/// addressed back to the sender.
#[inline(always)]
pub fn reset_for(syn: &Syn) -> [u8; RST_LEN] {
    let mut f = [0u8; RST_LEN];
    f[0..6].copy_from_slice(&syn.src_mac);
    f[6..12].copy_from_slice(&syn.dst_mac);
    f[12] = 0x08; // IPv4
                  // IPv4: version 4, IHL 5, total length 40, DF, TTL 64, TCP.
    f[14] = 0x45;
    f[17] = 40;
    f[20] = 0x40;
    f[22] = 64;
    f[23] = 6;
    f[26..30].copy_from_slice(&syn.dst);
    f[30..34].copy_from_slice(&syn.src);
    let ipc = csum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&ipc.to_be_bytes());
    // TCP: ports swapped, seq 0, ack = seq + 1, data offset 5, RST|ACK, window 0.
    f[34..36].copy_from_slice(&syn.dport);
    f[36..38].copy_from_slice(&syn.sport);
    let ack = u32::from_be_bytes(syn.seq).wrapping_add(1);
    f[42..46].copy_from_slice(&ack.to_be_bytes());
    f[46] = 0x50;
    f[47] = 0x14;
    let c = csum::l4_checksum_v4(syn.dst, syn.src, 6, &f[34..54]);
    f[50..52].copy_from_slice(&c.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_answers_the_syn_with_valid_checksums() {
        let syn = Syn {
            dst_mac: [2, 0, 0, 0, 0, 2],
            src_mac: [2, 0, 0, 0, 0, 1],
            src: [192, 168, 1, 2],
            dst: [10, 96, 0, 99],
            sport: 40000u16.to_be_bytes(),
            dport: 80u16.to_be_bytes(),
            seq: 1000u32.to_be_bytes(),
        };
        let f = reset_for(&syn);
        assert_eq!(&f[0..6], &syn.src_mac, "back to the sender");
        assert_eq!(csum::checksum(&f[14..34]), 0, "IPv4 checksum verifies");
        assert_eq!(
            csum::l4_checksum_v4(syn.dst, syn.src, 6, &f[34..54]),
            0,
            "TCP checksum verifies"
        );
        assert_eq!((&f[26..30], &f[30..34]), (&syn.dst[..], &syn.src[..]));
        assert_eq!(u32::from_be_bytes(f[42..46].try_into().unwrap()), 1001);
        assert_eq!(f[47], 0x14, "RST|ACK");
    }
}
