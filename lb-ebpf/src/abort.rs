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
//! The answer: from the service address back to the client over the
//! INIT's family ([`header`], `Ip::write_header`), the common header with
//! the ports swapped and the INIT's initiate tag as verification tag (T bit
//! clear), one ABORT chunk without causes, and a complete CRC32c ([`sctp`],
//! [`crc32c`]; it covers the SCTP part alone, so it is the same over IPv4
//! and IPv6).
use crate::{ip::Ip, sctp::CHECKSUM_OFF};

/// SCTP common header and ABORT chunk header: the answer's SCTP part.
pub const SCTP_LEN: usize = 12 + 4;
/// Offset of the initiate tag in an INIT's packet: the common header, the
/// chunk header.
pub const INITIATE_TAG_OFF: usize = 12 + 4;
const ABORT_CHUNK: [u8; 4] = [crate::sctp::CHUNK_ABORT, 0, 0, 4];

/// The answer's length from its IP header on.
#[inline(always)]
pub fn len<A: Ip>() -> usize {
    A::HDR_LEN + SCTP_LEN
}

/// CRC32c (RFC 9260 appendix A) of the 16-byte SCTP packet `m` (common
/// header with the field zeroed, then the chunk header), bit by bit: 128
/// steps, no table.
#[inline(always)]
pub fn crc32c(m: &[u8; SCTP_LEN]) -> u32 {
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
pub fn sctp(service_port: [u8; 2], client_port: [u8; 2], tag: [u8; 4]) -> [u8; SCTP_LEN] {
    let mut s = [0u8; SCTP_LEN];
    s[..2].copy_from_slice(&service_port);
    s[2..4].copy_from_slice(&client_port);
    s[4..8].copy_from_slice(&tag);
    s[12..].copy_from_slice(&ABORT_CHUNK);
    s
}

/// `s` with its CRC `crc` (from [`crc32c`] over `s`) in place, stored
/// little-endian as the kernel's `sctp_compute_cksum` does.
#[inline(always)]
pub fn sealed(mut s: [u8; SCTP_LEN], crc: u32) -> [u8; SCTP_LEN] {
    s[CHECKSUM_OFF..CHECKSUM_OFF + 4].copy_from_slice(&crc.to_le_bytes());
    s
}

/// Writes over `h` the answer's IP header from `service` to `client`
/// (IPv4: DF set, as the kernel's SCTP sends).
#[inline(always)]
pub fn header<A: Ip>(h: &mut A::Hdr, service: &A, client: &A) {
    A::write_header(h, service, client, lb_common::IPPROTO_SCTP, SCTP_LEN as u16, 0, true);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csum;

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
    fn the_abort_answers_the_init_with_its_tag_and_a_valid_crc() {
        let s = sctp(3868u16.to_be_bytes(), 40000u16.to_be_bytes(), [0x0c, 0x11, 0xe4, 0xa7]);
        let p = sealed(s, crc32c(&s));
        assert_eq!((&p[..2], &p[2..4]), (&3868u16.to_be_bytes()[..], &40000u16.to_be_bytes()[..]), "ports swapped");
        assert_eq!(&p[4..8], &[0x0c, 0x11, 0xe4, 0xa7], "the INIT's initiate tag");
        assert_eq!(&p[12..], &[6, 0, 0, 4], "one ABORT chunk, T bit clear, no causes");
        assert_eq!(&p[8..12], &CASTAGNOLI.checksum(&s).to_le_bytes(), "CRC32c verifies");
    }

    #[test]
    fn its_header_goes_from_the_service_back_in_either_family() {
        let mut h = [0xaa; 20];
        header(&mut h, &[10, 96, 0, 30], &[192, 168, 1, 1]);
        assert_eq!(csum::checksum(&h), 0, "IPv4 checksum verifies");
        assert_eq!((&h[12..16], &h[16..20]), (&[10, 96, 0, 30][..], &[192, 168, 1, 1][..]), "from the service, back");
        assert_eq!((u16::from_be_bytes([h[2], h[3]]) as usize, h[6], h[9]), (len::<[u8; 4]>(), 0x40, 132));
        let (svc, client) = ([0xfd; 16], [0x20; 16]);
        let mut h = [0xaa; 40];
        header(&mut h, &svc, &client);
        assert_eq!((h[0], u16::from_be_bytes([h[4], h[5]]) as usize, h[6]), (0x60, SCTP_LEN, 132), "payload: the SCTP part");
        assert_eq!((&h[8..24], &h[24..40]), (&svc[..], &client[..]));
        assert_eq!(len::<[u8; 16]>(), 56);
    }
}
