//! Port bitmaps (`reply_ports`, `service_ports`: one bit per port, see
//! `lb_common::reply_ports`) and the first look a hook takes with one:
//! whether a frame is a plain packet the full parser would accept whose
//! port has no bit, so the lookups of the full path can be skipped.
//!
//! The look reads the port where it lies behind the fixed IP header (a
//! marked port ends it before any header check), then the full parser's
//! checks (`Family::fixed`, `parse::ports`): anything else (IP options,
//! extension headers, fragments, other protocols, malformed packets, IPv6
//! UDP without checksum) is not skipped and takes the full path, which
//! counts it as before.
use core::intrinsics::{atomic_or, AtomicOrdering};

use lb_common::{reply_ports::slot, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP};
use lb_ebpf::sctp;

use crate::{
    family::Family,
    maps::PortBits,
    parse::{ethertype, ports, ptr_at, read_halves, ETH_LEN, UDP_CHECK},
};

/// Whether `port` (network order) has its bit in `bits` (a word the map
/// does not have counts as marked: the full path runs).
#[inline(always)]
pub fn marked(bits: &PortBits, port: [u8; 2]) -> bool {
    let (word, bit) = slot(port);
    match bits.get(word) {
        Some(w) => *w & bit != 0,
        None => true,
    }
}

/// Sets `port`'s bit in `bits`.
#[inline(always)]
pub fn mark(bits: &PortBits, port: [u8; 2]) {
    let (word, bit) = slot(port);
    let Some(w) = bits.get_ptr_mut(word) else { return };
    // Read first: the word is shared by every CPU; it is written once.
    // SAFETY: a live, 8-byte aligned map value; the OR is atomic, as the
    // agent's are (the map is memory-mapped there).
    unsafe {
        if *w & bit == 0 {
            atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(w, bit);
        }
    }
}

/// The port at `port_at` (`parse::L4_SPORT` or `L4_DPORT`) of the frame
/// `[data, end)` (`frame_len` bytes long) when the frame is a TCP or UDP
/// packet (SCTP too when `SCTP`) of family `F` with the fixed IP header
/// alone, which the full parser would accept, and the port has no bit in
/// `bits`; else `None` (see the module doc).
#[inline(always)]
pub fn unmarked<F: Family, const SCTP: bool>(data: usize, end: usize, frame_len: usize, bits: &PortBits, port_at: usize) -> Option<[u8; 2]> {
    let l4 = ETH_LEN + F::IP_HDR;
    ethertype(data, end, F::ETHERTYPE).ok()?;
    // SAFETY: `ptr_at` checked the field is inside the frame.
    let port = unsafe { read_halves(ptr_at::<[u8; 2]>(data, end, l4 + port_at).ok()?) };
    if marked(bits, port) {
        return None;
    }
    let (proto, room) = F::fixed(data, end, frame_len)?;
    let min_l4 = match proto {
        IPPROTO_TCP => 20,
        IPPROTO_UDP => 8,
        IPPROTO_SCTP if SCTP => sctp::COMMON_LEN + sctp::CHUNK_HDR_LEN,
        _ => return None,
    };
    if room < min_l4 || ports(data, end, l4, proto, room).is_err() {
        return None;
    }
    if F::UDP_CHECKSUM_REQUIRED && proto == IPPROTO_UDP {
        // SAFETY: `ptr_at` checked the field is inside the frame.
        if unsafe { *ptr_at::<[u8; 2]>(data, end, l4 + UDP_CHECK).ok()? } == [0, 0] {
            return None;
        }
    }
    Some(port)
}
