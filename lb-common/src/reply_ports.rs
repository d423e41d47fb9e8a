//! The `reply_ports` bitmap (see [`crate::maps::REPLY_PORTS`]): which
//! source ports may belong to a reply of ours, so tc egress skips the
//! conntrack lookups for every other packet leaving the node. The
//! `service_ports` bitmap ([`crate::maps::SERVICE_PORTS`]) has the same
//! layout, for the destination ports of service frontends.

/// Words of the bitmap: one bit for each of the 65,536 ports.
pub const WORDS: u32 = 1024;

/// Map flag `BPF_F_MMAPABLE`: the agent maps the array and sets bits with
/// atomic ORs, as the programs do, so neither side loses the other's bits.
pub const MAP_FLAGS: u32 = 1 << 10;

/// The word index and the bit within it of `port` (network order, as in
/// packets and map values).
#[inline(always)]
pub fn slot(port: [u8; 2]) -> (u32, u64) {
    let p = u16::from_be_bytes(port);
    ((p >> 6) as u32, 1u64 << (p & 63))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_port_has_its_own_bit() {
        let mut seen = [0u64; WORDS as usize];
        for p in 0..=u16::MAX {
            let (w, b) = slot(p.to_be_bytes());
            assert!(w < WORDS && b.count_ones() == 1, "port {p}: word {w}, bit {b:#x}");
            assert!(seen[w as usize] & b == 0, "port {p} shares its bit");
            seen[w as usize] |= b;
        }
        assert!(seen.iter().all(|&w| w == u64::MAX), "every bit belongs to a port");
        assert_eq!(slot(8080u16.to_be_bytes()), (126, 1 << 16));
    }
}
