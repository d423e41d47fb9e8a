//! The flow hash Maglev tables are indexed with. Fixed and seedless, so
//! every node (and the agent, in tests) computes the same value for the same
//! flow. The destination address is left out: a NodePort flow then picks the
//! same backend whichever node's address it was sent to.

/// murmur3's 32-bit finalizer: full avalanche in a few instructions.
#[inline(always)]
fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// A client address as the 4 bytes [`flow_hash`] takes: an IPv4 address
/// as it is, an IPv6 address's four words XORed together.
#[inline(always)]
pub fn fold(addr: &[u8]) -> [u8; 4] {
    let mut word = 0u32;
    let mut i = 0;
    while i + 4 <= addr.len() {
        word ^= u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
        i += 4;
    }
    word.to_ne_bytes()
}

/// Hash of (client address, client port, service port, protocol), all as on
/// the wire (an IPv6 client [`fold`]ed first).
#[inline(always)]
pub fn flow_hash(src: [u8; 4], sport: [u8; 2], dport: [u8; 2], proto: u8) -> u32 {
    let a = u32::from_be_bytes(src);
    let b = (u16::from_be_bytes(sport) as u32) << 16 | u16::from_be_bytes(dport) as u32;
    fmix32(
        fmix32(a ^ 0x9e37_79b9)
            .wrapping_add(b)
            .wrapping_mul(31)
            .wrapping_add(proto as u32),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_fixed() {
        // A golden value: changing the hash would move every Maglev flow.
        let golden = flow_hash([10, 0, 0, 1], 1234u16.to_be_bytes(), 80u16.to_be_bytes(), 6);
        assert_eq!(golden, GOLDEN);
    }

    const GOLDEN: u32 = 2_272_125_426;

    #[test]
    fn an_ipv4_address_folds_to_itself_an_ipv6_one_to_its_words_xored() {
        assert_eq!(fold(&[10, 0, 0, 1]), [10, 0, 0, 1]);
        let v6 = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        assert_eq!(fold(&v6), [0x20, 0x01, 0x0d, 0xb8 ^ 7]);
    }

    #[test]
    fn ports_spread_evenly_over_a_table() {
        let m = 251u32;
        let mut hits = vec![0u32; m as usize];
        for port in 1024..(1024 + 251 * 200) {
            hits[(flow_hash(
                [10, 1, 2, 3],
                (port as u16).to_be_bytes(),
                80u16.to_be_bytes(),
                6,
            ) % m) as usize] += 1;
        }
        let (min, max) = (*hits.iter().min().unwrap(), *hits.iter().max().unwrap());
        // 200 per bucket on average; a good hash stays within ±40% here.
        assert!(min > 120 && max < 280, "uneven: {min}..{max}");
    }
}
