//! SCTP's checksum after NAT, with bounded work per packet.
//!
//! SCTP has no pseudo header: its checksum is a CRC32c (Castagnoli,
//! reflected polynomial `0x82F63B78`, initial value and final xor `!0`)
//! over the whole SCTP packet with the checksum field zeroed, stored
//! little-endian at offset 8 (RFC 9260 appendix A; the kernel's
//! `sctp_compute_cksum`). So:
//! - a rewrite of the IPv4 addresses only (DNAT to a backend on the same
//!   port, reverse NAT of its replies) leaves the CRC as it is;
//! - a rewrite of the ports (the first 4 bytes) changes it, and the new one
//!   follows from the old without reading the packet: CRC32c is affine over
//!   GF(2), so for two messages of the same length `crc(M') = crc(M) ^
//!   crc0(M ^ M')`, where `crc0` is the CRC without initial value and final
//!   xor (they cancel). `M ^ M'` is the 4-byte port delta followed by
//!   `len - 4` zero bytes, whose `crc0` is the delta as a polynomial times
//!   `x^(8 * len)` modulo the polynomial. That power comes from tables built
//!   at compile time (8 KiB of `.rodata`): one look-up and one
//!   multiplication of 32 shift-and-xor steps for a packet up to 2 KiB, a
//!   second of each above (GSO buffers in tc, jumbo frames). Measured
//!   through `xdp_lb` (BPF_PROG_TEST_RUN, one call each, best of 15 × 20,000,
//!   against the same frame whose port does not change): a 1,450-byte DATA
//!   packet cost ~660 ns more with square-and-multiply over the bits of
//!   `len` (7 multiplications there, no table); with the tables the
//!   difference is below what that method resolves here (~100 ns).
//!
//! Polynomials are in the CRC's reflected bit order: bit 31 holds the
//! coefficient of `x^0` and bit 0 that of `x^31`, so multiplying by `x` is a
//! right shift (and a reduction when bit 0 falls off).

/// CRC32c's generator polynomial, reflected (without its `x^32` term).
pub const POLY: u32 = 0x82F6_3B78;
/// The polynomial `1`, reflected.
const ONE: u32 = 1 << 31;

/// Offset of the checksum in the SCTP common header (after the ports and
/// the verification tag).
pub const CHECKSUM_OFF: usize = 8;
/// The common header: ports, verification tag, checksum.
pub const COMMON_LEN: usize = 12;
/// A chunk's header: type, flags, length.
pub const CHUNK_HDR_LEN: usize = 4;

/// Chunk types that start and end an association (RFC 9260 section 3.2),
/// read from a packet's first chunk so SCTP flows open and close like TCP.
pub const CHUNK_INIT: u8 = 1;
pub const CHUNK_ABORT: u8 = 6;
pub const CHUNK_SHUTDOWN_COMPLETE: u8 = 14;

/// TCP's flags (FIN 1, SYN 2, RST 4) by chunk type, 4 bits per type 0..15:
/// INIT (1) is a SYN, ABORT (6) a RST, SHUTDOWN COMPLETE (14) a FIN.
const FLAGS_BY_CHUNK: u64 = (2 << (4 * CHUNK_INIT as u64))
    | (4 << (4 * CHUNK_ABORT as u64))
    | (1 << (4 * CHUNK_SHUTDOWN_COMPLETE as u64));

/// The TCP flags a packet whose first chunk is of type `chunk` stands for
/// (0 for every other type, including all above 15). Arithmetic, not a
/// `match`: per-type constants would split the verifier's walk of the
/// whole program into one path per value (a branch on a known constant
/// makes it precise), which took `xdp_lb` past a million instructions.
#[inline(always)]
pub fn chunk_flags(chunk: u8) -> u8 {
    let t = chunk as u64;
    // 1 for types 0..15, 0 above: (t >> 4) + 15 reaches 16 only when t >> 4 > 0.
    let low = 1 ^ (((t >> 4) + 15) >> 4);
    ((FLAGS_BY_CHUNK >> ((t & 15) * 4)) & 0xf & low.wrapping_neg()) as u8
}

/// `a * x mod P`.
#[inline(always)]
const fn times_x(a: u32) -> u32 {
    // Branch-free: the reduction is masked in when bit 0 (x^31) falls off.
    (a >> 1) ^ (POLY & 0u32.wrapping_sub(a & 1))
}

/// `a * b mod P`: `b` times each power of `x` whose coefficient is set in
/// `a`, summed. 32 steps, each without a data-dependent branch, so the
/// verifier walks one path whatever the values.
#[inline(always)]
pub const fn mul(a: u32, mut b: u32) -> u32 {
    let mut r = 0;
    let mut i = 0;
    while i < 32 {
        // Coefficient of x^i in `a`: bit 31 - i.
        r ^= b & 0u32.wrapping_sub((a >> (31 - i)) & 1);
        b = times_x(b);
        i += 1;
    }
    r
}

/// `a * x^8 mod P`.
const fn times_x8(mut a: u32) -> u32 {
    let mut i = 0;
    while i < 8 {
        a = times_x(a);
        i += 1;
    }
    a
}

/// Packets up to this long take one look-up and one multiplication.
const SHORT: usize = 2048;

/// `x^(8 * n) mod P` for `n` in `0..SHORT`.
static X8N: [u32; SHORT] = {
    let mut t = [0u32; SHORT];
    let mut p = ONE;
    let mut n = 0;
    while n < SHORT {
        t[n] = p;
        p = times_x8(p);
        n += 1;
    }
    t
};

/// `x^(8 * SHORT * n) mod P` for `n` in 0..32 (up to 64 KiB).
static X8N_HI: [u32; 32] = {
    let mut t = [0u32; 32];
    let step = times_x8(X8N[SHORT - 1]);
    let mut p = ONE;
    let mut n = 0;
    while n < 32 {
        t[n] = p;
        p = mul(p, step);
        n += 1;
    }
    t
};

/// The CRC32c of an SCTP packet of `len` bytes whose first 4 bytes (the
/// ports) changed from `old` to `new`, from its CRC `crc` before (as a
/// number: the field read little-endian). Lengths above 65,535 do not
/// occur (an IPv4 total length is 16 bits); their higher bits are ignored.
#[inline(always)]
pub fn crc_after_ports(crc: u32, old: [u8; 4], new: [u8; 4], len: u16) -> u32 {
    // The delta as the CRC register sees it after its first 4 bytes: the
    // reflected CRC takes bytes little-end first.
    let delta = u32::from_le_bytes(old) ^ u32::from_le_bytes(new);
    if delta == 0 {
        return crc;
    }
    // crc0(delta . 0^(len-4)) = delta * x^32 * x^(8 * (len - 4)) = delta * x^(8 * len).
    let len = len as usize;
    let mut l = mul(delta, X8N[len % SHORT]);
    let hi = len / SHORT;
    if hi != 0 {
        l = mul(l, X8N_HI[hi % 32]);
    }
    crc ^ l
}

/// [`crc_after_ports`] on the checksum field's bytes as on the wire.
#[inline(always)]
pub fn field_after_ports(field: [u8; 4], old: [u8; 4], new: [u8; 4], len: u16) -> [u8; 4] {
    crc_after_ports(u32::from_le_bytes(field), old, new, len).to_le_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

    /// The checksum field of `pkt` as SCTP computes it (field zeroed).
    fn reference(pkt: &[u8]) -> [u8; 4] {
        let mut p = pkt.to_vec();
        p[CHECKSUM_OFF..CHECKSUM_OFF + 4].fill(0);
        CASTAGNOLI.checksum(&p).to_le_bytes()
    }

    /// `n` random bytes from a seeded generator.
    fn bytes(rng: &mut fastrand::Rng, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        rng.fill(&mut v);
        v
    }

    #[test]
    fn chunk_types_map_to_the_tcp_flags_they_stand_for() {
        for t in 0..=255u8 {
            let want = match t {
                CHUNK_INIT => 2,
                CHUNK_ABORT => 4,
                CHUNK_SHUTDOWN_COMPLETE => 1,
                _ => 0,
            };
            assert_eq!(chunk_flags(t), want, "chunk type {t}");
        }
    }

    #[test]
    fn the_tables_hold_the_powers_of_x() {
        // x^(8n) by repeated multiplication by x, independently of the tables.
        let mut p = ONE;
        for n in 0..70_000usize {
            let got = if n < SHORT {
                X8N[n]
            } else {
                mul(X8N[n % SHORT], X8N_HI[(n / SHORT) % 32])
            };
            if n < 65_536 {
                assert_eq!(got, p, "x^(8*{n})");
            }
            for _ in 0..8 {
                p = times_x(p);
            }
        }
    }

    #[test]
    fn multiplication_by_one_and_by_x() {
        for a in [1u32, 0x8000_0000, 0xdead_beef, 0x82f6_3b78] {
            assert_eq!(mul(a, ONE), a);
            assert_eq!(mul(ONE, a), a);
            assert_eq!(mul(a, ONE >> 1), times_x(a), "x is bit 30 reflected");
        }
        assert_eq!(
            mul(0x1234_5678, 0x9abc_def0),
            mul(0x9abc_def0, 0x1234_5678),
            "commutative"
        );
    }

    #[test]
    fn the_reference_crate_is_sctp_crc32c() {
        // RFC 3720 B.4 / the CRC catalogue's check value for "123456789".
        assert_eq!(CASTAGNOLI.checksum(b"123456789"), 0xe306_9283);
        // 32 bytes of zeros (RFC 3720 B.4): aa 36 91 8a.
        assert_eq!(
            CASTAGNOLI.checksum(&[0u8; 32]).to_le_bytes(),
            [0xaa, 0x36, 0x91, 0x8a]
        );
    }

    #[test]
    fn port_rewrite_matches_a_full_recompute_over_random_packets_and_lengths() {
        let mut rng = fastrand::Rng::with_seed(0x5c7b_0001);
        let mut lens: Vec<usize> = vec![
            12, 13, 15, 16, 17, 28, 64, 255, 256, 257, 1480, 1500, 4096, 9000, 32768, 65515,
        ];
        lens.extend((0..300).map(|_| 12 + (rng.u64(..) % 2000) as usize));
        lens.extend((0..40).map(|_| 12 + (rng.u64(..) % 65_503) as usize));
        for len in lens {
            let mut pkt = bytes(&mut rng, len);
            let field = reference(&pkt);
            pkt[CHECKSUM_OFF..CHECKSUM_OFF + 4].copy_from_slice(&field);
            let old = [pkt[0], pkt[1], pkt[2], pkt[3]];
            // One port, the other, both, or none changed.
            let new = match rng.u64(..) % 4 {
                0 => [old[0], old[1], rng.u64(..) as u8, rng.u64(..) as u8],
                1 => [rng.u64(..) as u8, rng.u64(..) as u8, old[2], old[3]],
                2 => (rng.u64(..) as u32).to_le_bytes(),
                _ => old,
            };
            pkt[..4].copy_from_slice(&new);
            let got = field_after_ports(field, old, new, len as u16);
            assert_eq!(got, reference(&pkt), "len {len}, ports {old:?} -> {new:?}");
        }
    }

    #[test]
    fn every_single_bit_of_the_ports_at_a_typical_length() {
        let mut rng = fastrand::Rng::with_seed(7);
        let pkt = bytes(&mut rng, 100);
        let field = reference(&pkt);
        for bit in 0..32 {
            let mut p = pkt.clone();
            p[bit / 8] ^= 1 << (bit % 8);
            let old = [pkt[0], pkt[1], pkt[2], pkt[3]];
            let new = [p[0], p[1], p[2], p[3]];
            assert_eq!(
                field_after_ports(field, old, new, 100),
                reference(&p),
                "bit {bit}"
            );
        }
    }

    #[test]
    fn a_wrong_crc_stays_exactly_as_wrong() {
        // The dataplane does not validate: a corrupt CRC is updated by the
        // same delta, so the receiver still sees it corrupt (and drops it).
        let mut rng = fastrand::Rng::with_seed(11);
        let mut pkt = bytes(&mut rng, 200);
        let good = u32::from_le_bytes(reference(&pkt));
        let bad = good ^ 0x0000_0100;
        let old = [pkt[0], pkt[1], pkt[2], pkt[3]];
        pkt[..4].copy_from_slice(&[0x9c, 0x40, 0x1f, 0x90]);
        let want = u32::from_le_bytes(reference(&pkt));
        let got = crc_after_ports(bad, old, [0x9c, 0x40, 0x1f, 0x90], 200);
        assert_eq!(got ^ want, 0x0000_0100);
    }
}
