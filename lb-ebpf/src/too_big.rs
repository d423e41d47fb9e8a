//! The ICMP "fragmentation needed" a node answers a DF packet with when the
//! packet no longer fits its way on (a DSR option makes it longer): the
//! frame is the packet's own Ethernet addresses swapped, a new IPv4 + ICMP
//! header, and the quote (the packet's IPv4 header and first 8 L4 bytes),
//! which the program leaves in place behind the new headers.

use crate::csum;

/// Length of the quote: an IPv4 header without options + 8 bytes of L4.
pub const QUOTE_LEN: usize = 28;
/// Length of what is built here: Ethernet + IPv4 + ICMP headers.
pub const HEAD_LEN: usize = 14 + 20 + 8;
/// Length of the whole frame.
pub const FRAME_LEN: usize = HEAD_LEN + QUOTE_LEN;

/// The headers of the error about `quote` (what the sender sent), `macs`
/// being the packet's Ethernet destination then source, telling the sender
/// to send at most `mtu` bytes. From the packet's destination (the service
/// address it dialed) back to its source.
#[inline(always)]
pub fn head_for(macs: &[u8; 12], quote: &[u8; QUOTE_LEN], mtu: u16) -> [u8; HEAD_LEN] {
    let mut f = [0u8; HEAD_LEN];
    f[0..6].copy_from_slice(&macs[6..12]);
    f[6..12].copy_from_slice(&macs[0..6]);
    f[12] = 0x08; // IPv4
    // IPv4: version 4, IHL 5, precedence "internetwork control" (as the
    // kernel's own ICMP), total length, TTL 64, ICMP.
    f[14] = 0x45;
    f[15] = 0xc0;
    f[16..18].copy_from_slice(&((20 + 8 + QUOTE_LEN) as u16).to_be_bytes());
    f[22] = 64;
    f[23] = 1;
    f[26..30].copy_from_slice(&quote[16..20]);
    f[30..34].copy_from_slice(&quote[12..16]);
    let ipc = csum::checksum(&f[14..34]);
    f[24..26].copy_from_slice(&ipc.to_be_bytes());
    // ICMP: destination unreachable, fragmentation needed, next-hop MTU.
    f[34] = 3;
    f[35] = 4;
    f[40..42].copy_from_slice(&mtu.to_be_bytes());
    let c = !csum::fold(csum::add_bytes(csum::add_bytes(0, &f[34..42]), quote));
    f[36..38].copy_from_slice(&c.to_be_bytes());
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_goes_back_to_the_sender_with_valid_checksums() {
        let mut quote = [0u8; QUOTE_LEN];
        quote[0] = 0x45;
        quote[12..16].copy_from_slice(&[192, 168, 50, 2]);
        quote[16..20].copy_from_slice(&[10, 96, 0, 10]);
        quote[20..22].copy_from_slice(&40000u16.to_be_bytes());
        let macs = [2, 0, 0, 0, 0, 11, 2, 0, 0, 0, 0, 2];
        let f = head_for(&macs, &quote, 1492);
        assert_eq!(&f[0..6], &macs[6..12], "back to the sender's MAC");
        assert_eq!(csum::checksum(&f[14..34]), 0, "IPv4 checksum verifies");
        let mut icmp = f[34..42].to_vec();
        icmp.extend_from_slice(&quote);
        assert_eq!(csum::checksum(&icmp), 0, "ICMP checksum verifies");
        assert_eq!((&f[26..30], &f[30..34]), (&[10, 96, 0, 10][..], &[192, 168, 50, 2][..]));
        assert_eq!(u16::from_be_bytes([f[40], f[41]]), 1492);
    }
}
