//! Transport segments (TCP, UDP, SCTP) built byte by byte, shared by the
//! IPv4 ([`crate::packet`]) and IPv6 ([`crate::packet6`]) frame builders;
//! the family's pseudo-header checksum is the caller's.

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const NODE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

#[derive(Clone, Debug)]
pub enum L4 {
    Tcp { flags: u8, seq: u32, ack: u32 },
    Udp { zero_checksum: bool },
    /// One SCTP chunk of type `chunk` whose value is the frame's payload.
    Sctp { vtag: u32, chunk: u8, crc: SctpCrc },
}

/// What an SCTP frame carries in its checksum field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SctpCrc {
    /// The CRC32c of the packet.
    Valid,
    /// Zero: a sender with CRC offload left it to be computed
    /// (`CHECKSUM_PARTIAL`), as pods on a veth do.
    Offloaded,
    /// The CRC32c with these bits flipped (a corrupt packet).
    Corrupt(u32),
    /// This field, whatever the packet: the CRC32c another packet had (an
    /// ICMP error's quote keeps the one its sender saw, `lb_ebpf::icmp`).
    Field([u8; 4]),
}

/// SCTP chunk types the tests send.
pub const SCTP_DATA: u8 = 0;
pub const SCTP_INIT: u8 = 1;
pub const SCTP_INIT_ACK: u8 = 2;
pub const SCTP_ABORT: u8 = 6;

/// An INIT (INIT ACK) chunk's value: initiate tag `tag`, a_rwnd, streams
/// out/in, initial TSN.
pub fn sctp_init_value(tag: u32) -> Vec<u8> {
    [&tag.to_be_bytes()[..], &106_496u32.to_be_bytes(), &[0, 10, 0, 10], &0x1000_0000u32.to_be_bytes()].concat()
}

/// A DATA chunk's value: TSN `tsn`, stream 0, sequence 0, payload protocol
/// 46 (Diameter), user data `text`.
pub fn sctp_data_value(tsn: u32, text: &[u8]) -> Vec<u8> {
    [&tsn.to_be_bytes()[..], &[0, 0, 0, 0, 0, 0, 0, 46], text].concat()
}

/// The CRC32c of an SCTP packet (its checksum field taken as zero), as the
/// field's 4 bytes on the wire (little-endian, RFC 9260 appendix A).
pub fn sctp_crc(sctp: &[u8]) -> [u8; 4] {
    const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut d = CASTAGNOLI.digest();
    d.update(&sctp[..8]);
    d.update(&[0; 4]);
    d.update(&sctp[12..]);
    d.finalize().to_le_bytes()
}

/// A TCP or UDP segment (header + `payload`) with its checksum computed by
/// `sum` over the segment with the field zeroed (the family's pseudo header
/// is `sum`'s business); a UDP checksum of 0 is sent as 0xffff.
pub fn l4_segment(sport: u16, dport: u16, l4: &L4, window: u16, payload: &[u8], sum: impl Fn(&[u8]) -> u16) -> Vec<u8> {
    let mut s = Vec::new();
    s.extend_from_slice(&sport.to_be_bytes());
    s.extend_from_slice(&dport.to_be_bytes());
    let check_at = match *l4 {
        L4::Tcp { flags, seq, ack } => {
            s.extend_from_slice(&seq.to_be_bytes());
            s.extend_from_slice(&ack.to_be_bytes());
            s.extend_from_slice(&[0x50, flags]);
            s.extend_from_slice(&window.to_be_bytes());
            s.extend_from_slice(&[0, 0, 0, 0]);
            16
        }
        L4::Udp { .. } => {
            s.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            s.extend_from_slice(&[0, 0]);
            6
        }
        // Built below: no Internet checksum.
        L4::Sctp { .. } => 8,
    };
    if let L4::Sctp { vtag, chunk, crc } = *l4 {
        s.extend_from_slice(&vtag.to_be_bytes());
        s.extend_from_slice(&[0; 4]);
        s.extend_from_slice(&[chunk, 0]);
        s.extend_from_slice(&((4 + payload.len()) as u16).to_be_bytes());
        s.extend_from_slice(payload);
        // Chunks are padded to 4 bytes.
        s.resize(s.len().next_multiple_of(4), 0);
        let field = match crc {
            SctpCrc::Valid => sctp_crc(&s),
            SctpCrc::Offloaded => [0; 4],
            SctpCrc::Corrupt(bits) => (u32::from_le_bytes(sctp_crc(&s)) ^ bits).to_le_bytes(),
            SctpCrc::Field(f) => f,
        };
        s[8..12].copy_from_slice(&field);
        return s;
    }
    s.extend_from_slice(payload);
    if !matches!(l4, L4::Udp { zero_checksum: true }) {
        let c = sum(&s);
        let c = if c == 0 && matches!(l4, L4::Udp { .. }) { 0xffff } else { c };
        s[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());
    }
    s
}
