//! Internet checksum arithmetic (RFC 1071) and incremental updates (RFC 1624).
//!
//! Every value is handled in wire order: a 16-bit word is `u16::from_be_bytes`
//! of two packet bytes, and the checksum field is read and written the same
//! way. The one's complement sum does not care about byte order as long as it
//! is consistent, so this is the only rule.

/// Folds a 32-bit one's complement accumulator to 16 bits.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Adds the 16-bit words of `bytes` (odd trailing byte padded with zero) to `sum`.
#[inline(always)]
pub fn add_bytes(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for w in &mut chunks {
        sum = sum.wrapping_add(u16::from_be_bytes([w[0], w[1]]) as u32);
        // Keep the carry bits from overflowing on long inputs.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u16::from_be_bytes([*last, 0]) as u32);
    }
    sum
}

/// The checksum of `bytes`: the complement of their one's complement sum.
/// Inlined: as a BPF subprogram its frame would lengthen the reset's call
/// chain past 6.1's 512-byte limit (frames rounded to 32 bytes).
#[inline(always)]
pub fn checksum(bytes: &[u8]) -> u16 {
    !fold(add_bytes(0, bytes))
}

/// The TCP/UDP checksum of a segment over the IPv4 pseudo header.
/// `segment` is the whole L4 header and payload with its checksum field zeroed.
#[inline(always)]
pub fn l4_checksum_v4(src: [u8; 4], dst: [u8; 4], proto: u8, segment: &[u8]) -> u16 {
    l4_checksum(&src, &dst, proto, segment)
}

/// The TCP/UDP (ICMPv6) checksum of a segment over the pseudo header of
/// either family: the addresses (4 or 16 bytes each), the protocol and the
/// segment's length (RFC 768, RFC 8200 8.1). `segment` as in [`l4_checksum_v4`].
#[inline(always)]
pub fn l4_checksum(src: &[u8], dst: &[u8], proto: u8, segment: &[u8]) -> u16 {
    let mut sum = add_bytes(0, src);
    sum = add_bytes(sum, dst);
    sum += proto as u32;
    sum += segment.len() as u32;
    sum = add_bytes(sum, segment);
    !fold(sum)
}

/// RFC 1624 eqn. 3: the checksum after a 32-bit field changed from `old` to `new`:
/// `HC' = ~(~HC + ~m + m')`.
#[inline(always)]
pub fn replace4(check: u16, old: [u8; 4], new: [u8; 4]) -> u16 {
    let mut sum = (!check) as u32;
    sum += (!u16::from_be_bytes([old[0], old[1]])) as u32;
    sum += (!u16::from_be_bytes([old[2], old[3]])) as u32;
    sum += u16::from_be_bytes([new[0], new[1]]) as u32;
    sum += u16::from_be_bytes([new[2], new[3]]) as u32;
    !fold(sum)
}

/// As [`replace4`], for an address of either family (`old` and `new` of
/// equal length, a multiple of 4): one 32-bit word at a time.
#[inline(always)]
pub fn replace_addr(mut check: u16, old: &[u8], new: &[u8]) -> u16 {
    let mut i = 0;
    while i + 4 <= old.len() && i + 4 <= new.len() {
        check = replace4(check, [old[i], old[i + 1], old[i + 2], old[i + 3]], [new[i], new[i + 1], new[i + 2], new[i + 3]]);
        i += 4;
    }
    check
}

/// The one's complement difference of a field of either length (a multiple
/// of 2) changing from `old` to `new`, for [`apply`]: computed once when
/// the same change enters several checksums.
#[inline(always)]
pub fn diff(old: &[u8], new: &[u8]) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i + 2 <= old.len() && i + 2 <= new.len() {
        sum += (!u16::from_be_bytes([old[i], old[i + 1]])) as u32 + u16::from_be_bytes([new[i], new[i + 1]]) as u32;
        i += 2;
    }
    sum
}

/// A checksum after a change whose [`diff`] is `d` (RFC 1624 eqn. 3).
#[inline(always)]
pub fn apply(check: u16, d: u32) -> u16 {
    !fold((!check) as u32 + fold(d) as u32)
}

/// As [`replace4`], for a 16-bit field.
#[inline(always)]
pub fn replace2(check: u16, old: [u8; 2], new: [u8; 2]) -> u16 {
    let mut sum = (!check) as u32;
    sum += (!u16::from_be_bytes(old)) as u32;
    sum += u16::from_be_bytes(new) as u32;
    !fold(sum)
}

/// A UDP checksum after an update: 0 means "no checksum" on the wire, so a
/// computed 0 is sent as 0xffff (RFC 768).
#[inline(always)]
pub fn udp_mangled(check: u16) -> u16 {
    if check == 0 {
        0xffff
    } else {
        check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A real IPv4 header (from RFC 1071 examples / a capture) with a valid checksum.
    const HDR: [u8; 20] = [
        0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8, 0x00,
        0x01, 0xc0, 0xa8, 0x00, 0xc7,
    ];

    #[test]
    fn header_checksum_verifies_to_zero() {
        assert_eq!(checksum(&HDR), 0, "a valid header sums to 0xffff");
        let mut h = HDR;
        h[10] = 0;
        h[11] = 0;
        assert_eq!(checksum(&h), 0xb861);
    }

    #[test]
    fn replace4_matches_full_recompute() {
        let mut h = HDR;
        let old = [h[16], h[17], h[18], h[19]];
        let new = [10, 96, 7, 201];
        let updated = replace4(u16::from_be_bytes([h[10], h[11]]), old, new);
        h[16..20].copy_from_slice(&new);
        h[10] = 0;
        h[11] = 0;
        assert_eq!(updated, checksum(&h));
    }

    #[test]
    fn replace2_matches_full_recompute_over_many_values() {
        let seg_base: [u8; 8] = [0x30, 0x39, 0x00, 0x50, 0x00, 0x0c, 0x00, 0x00];
        let (src, dst) = ([10, 0, 0, 1], [10, 0, 0, 2]);
        let mut seg = seg_base.to_vec();
        seg.extend_from_slice(b"ping");
        let check = l4_checksum_v4(src, dst, 17, &seg);
        for port in [0u16, 1, 80, 8080, 0xfffe, 0xffff] {
            let mut s = seg.clone();
            s[2..4].copy_from_slice(&port.to_be_bytes());
            let expect = l4_checksum_v4(src, dst, 17, &s);
            assert_eq!(
                replace2(check, [0x00, 0x50], port.to_be_bytes()),
                expect,
                "port {port}"
            );
        }
    }

    #[test]
    fn l4_checksum_of_segment_with_checksum_verifies() {
        let (src, dst) = ([192, 168, 1, 1], [192, 168, 1, 2]);
        let mut seg = vec![0x12, 0x34, 0x00, 0x35, 0x00, 0x0b, 0, 0, b'a', b'b', b'c'];
        let c = l4_checksum_v4(src, dst, 17, &seg);
        seg[6..8].copy_from_slice(&c.to_be_bytes());
        assert_eq!(l4_checksum_v4(src, dst, 17, &seg), 0);
    }

    #[test]
    fn replace_addr_of_an_ipv6_address_matches_full_recompute() {
        let seg = [0x30u8, 0x39, 0x00, 0x50, 0x00, 0x0c, 0x00, 0x00, b'p', b'i', b'n', b'g'];
        let (src, dst) = ([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10]);
        let new = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x2, 0x11];
        let check = l4_checksum(&src, &dst, 17, &seg);
        assert_eq!(replace_addr(check, &dst, &new), l4_checksum(&src, &new, 17, &seg));
    }

    #[test]
    fn a_diff_applied_matches_replace() {
        let (old, new) = ([0xfd, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14], [0x20, 1, 0xd, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        for check in [0u16, 1, 0x1234, 0xfffe, 0xffff] {
            assert_eq!(apply(check, diff(&old, &new)), replace_addr(check, &old, &new), "{check:#x}");
            assert_eq!(apply(check, diff(&old[..2], &new[..2])), replace2(check, [old[0], old[1]], [new[0], new[1]]));
        }
    }

    #[test]
    fn udp_zero_is_mangled() {
        assert_eq!(udp_mangled(0), 0xffff);
        assert_eq!(udp_mangled(0x1234), 0x1234);
    }
}
