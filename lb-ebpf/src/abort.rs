//! The ABORT that answers an SCTP INIT from the node's own socket to a
//! service address. The cgroup socket programs never see SCTP (its
//! connect(), sendmsg() and sctp_connectx() do not run them; see
//! `sock.rs`), so such an INIT leaves as a packet to the service address
//! itself, which nothing answers: connect() would wait out SCTP's INIT
//! retransmissions. Answered at tc egress with an ABORT (RFC 9260 8.4: what
//! an endpoint sends for an INIT it will not take), delivered back into the
//! node, the association fails at once: ECONNREFUSED on a one-to-one socket
//! (an ABORT in COOKIE-WAIT), as for a TCP node socket to a service it
//! cannot reach. ICMP would not do: SCTP keeps a port unreachable as a soft
//! error and retransmits.
//!
//! The answer ([`packet`]): IPv4 from the service address back to the
//! client, the common header with the ports swapped and the INIT's
//! initiate tag as verification tag (T bit clear), one ABORT chunk without
//! causes, and a complete CRC32c.
use crate::{csum, sctp::CHECKSUM_OFF};

/// IPv4 header, SCTP common header, ABORT chunk header.
pub const ABORT_LEN: usize = 20 + 12 + 4;
/// Offset of the initiate tag in an INIT's packet: the common header, the
/// chunk header.
pub const INITIATE_TAG_OFF: usize = 12 + 4;
const ABORT_CHUNK: [u8; 4] = [crate::sctp::CHUNK_ABORT, 0, 0, 4];

/// CRC32c (RFC 9260 appendix A) of the 16-byte SCTP packet `m` (common
/// header with the field zeroed, then the chunk header), bit by bit: 128
/// steps, no table.
#[inline(always)]
pub fn crc32c(m: &[u8; 16]) -> u32 {
    let mut crc = !0u32;
    for b in m {
        crc ^= *b as u32;
        for _ in 0..8 {
            crc = (crc >> 1) ^ (crate::sctp::POLY & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// The SCTP part of the ABORT from `service_port` to `client_port`
/// (wire order) with verification tag `tag`, its checksum field zero.
#[inline(always)]
pub fn sctp(service_port: [u8; 2], client_port: [u8; 2], tag: [u8; 4]) -> [u8; 16] {
    let mut s = [0u8; 16];
    s[..2].copy_from_slice(&service_port);
    s[2..4].copy_from_slice(&client_port);
    s[4..8].copy_from_slice(&tag);
    s[12..].copy_from_slice(&ABORT_CHUNK);
    s
}

/// The answer's IPv4 header and the SCTP part `s` with its CRC `crc`
/// (from [`crc32c`] over `s`) in place.
#[inline(always)]
pub fn packet(service: [u8; 4], client: [u8; 4], s: &[u8; 16], crc: u32) -> [u8; ABORT_LEN] {
    let mut h = [0u8; ABORT_LEN];
    // IPv4: version 4, IHL 5, total length 36, DF, TTL 64, SCTP.
    h[0] = 0x45;
    h[3] = ABORT_LEN as u8;
    h[6] = 0x40;
    h[8] = 64;
    h[9] = 132;
    h[12..16].copy_from_slice(&service);
    h[16..20].copy_from_slice(&client);
    let ipc = csum::checksum(&h[..20]);
    h[10..12].copy_from_slice(&ipc.to_be_bytes());
    h[20..].copy_from_slice(s);
    // Stored little-endian, as the kernel's sctp_compute_cksum does.
    h[20 + CHECKSUM_OFF..20 + CHECKSUM_OFF + 4].copy_from_slice(&crc.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

    #[test]
    fn crc32c_matches_the_reference() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..1000 {
            let mut m = [0u8; 16];
            rng.fill(&mut m);
            assert_eq!(crc32c(&m), CASTAGNOLI.checksum(&m), "{m:02x?}");
        }
    }

    #[test]
    fn the_abort_answers_the_init_with_its_tag_and_valid_checksums() {
        let s = sctp(3868u16.to_be_bytes(), 40000u16.to_be_bytes(), [0x0c, 0x11, 0xe4, 0xa7]);
        let p = packet([10, 96, 0, 30], [192, 168, 1, 1], &s, crc32c(&s));
        assert_eq!(csum::checksum(&p[..20]), 0, "IPv4 checksum verifies");
        assert_eq!((&p[12..16], &p[16..20]), (&[10, 96, 0, 30][..], &[192, 168, 1, 1][..]), "from the service, back");
        assert_eq!(u16::from_be_bytes([p[2], p[3]]) as usize, ABORT_LEN);
        assert_eq!((&p[20..22], &p[22..24]), (&3868u16.to_be_bytes()[..], &40000u16.to_be_bytes()[..]), "ports swapped");
        assert_eq!(&p[24..28], &[0x0c, 0x11, 0xe4, 0xa7], "the INIT's initiate tag");
        assert_eq!(&p[32..], &[6, 0, 0, 4], "one ABORT chunk, T bit clear, no causes");
        let mut zeroed = p[20..].to_vec();
        zeroed[CHECKSUM_OFF..CHECKSUM_OFF + 4].fill(0);
        assert_eq!(&p[28..32], &CASTAGNOLI.checksum(&zeroed).to_le_bytes(), "CRC32c verifies");
    }
}
