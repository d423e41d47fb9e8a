//! Building and checking Ethernet/IPv6 frames byte by byte, with extension
//! headers: the IPv6 counterpart of `packet.rs` (whose TCP/UDP segments it
//! shares). Checksums are computed from scratch over the IPv6 pseudo header,
//! so a frame the programs rewrote incrementally is checked against an
//! independent full computation.
use std::net::Ipv6Addr;

use lb_ebpf::csum::l4_checksum;

use crate::segment::{l4_segment, L4, CLIENT_MAC, NODE_MAC, TCP_ACK};

pub const IPPROTO_ICMPV6: u8 = 58;

/// An extension header, 8 bytes each (the chain's order is the frame's).
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    HopByHop,
    /// Routing type 253 (experimental), no segments left.
    Routing,
    DestOpts,
    /// Offset in 8-byte units, more-fragments flag.
    Fragment { offset: u16, more: bool },
}

impl Ext {
    fn code(self) -> u8 {
        match self {
            Ext::HopByHop => 0,
            Ext::Routing => 43,
            Ext::Fragment { .. } => 44,
            Ext::DestOpts => 60,
        }
    }

    fn bytes(self, next: u8) -> [u8; 8] {
        match self {
            // A PadN option filling the header.
            Ext::HopByHop | Ext::DestOpts => [next, 0, 1, 4, 0, 0, 0, 0],
            Ext::Routing => [next, 0, 253, 0, 0, 0, 0, 0],
            Ext::Fragment { offset, more } => {
                let w = (offset << 3) | more as u16;
                [next, 0, (w >> 8) as u8, w as u8, 0, 0, 0x12, 0x34]
            }
        }
    }
}

/// An IPv6 frame description; [`Frame6::bytes`] renders it.
#[derive(Clone, Debug)]
pub struct Frame6 {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    pub payload: Vec<u8>,
    pub ext: Vec<Ext>,
    pub hop_limit: u8,
    /// TCP window.
    pub window: u16,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Frame6 {
    pub fn tcp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, flags: u8) -> Self {
        Self::new(src, sport, dst, dport, L4::Tcp { flags, seq: 1000, ack: if flags & TCP_ACK != 0 { 2000 } else { 0 } })
    }

    pub fn udp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Self {
        Self::new(src, sport, dst, dport, L4::Udp { zero_checksum: false })
    }

    /// One SCTP chunk of type `chunk` (its value: the payload), verification
    /// tag `vtag`, a valid CRC32c (computed by the `crc` crate).
    pub fn sctp(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, vtag: u32, chunk: u8) -> Self {
        Self::new(src, sport, dst, dport, L4::Sctp { vtag, chunk, crc: crate::segment::SctpCrc::Valid })
    }

    fn new(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16, l4: L4) -> Self {
        Self { src, dst, sport, dport, l4, payload: Vec::new(), ext: Vec::new(), hop_limit: 64, window: 0xffff, src_mac: CLIENT_MAC, dst_mac: NODE_MAC }
    }

    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    pub fn ext(mut self, e: Ext) -> Self {
        self.ext.push(e);
        self
    }

    pub fn with_dst(mut self, addr: Ipv6Addr, port: u16) -> Self {
        (self.dst, self.dport) = (addr, port);
        self
    }

    pub fn with_src(mut self, addr: Ipv6Addr, port: u16) -> Self {
        (self.src, self.sport) = (addr, port);
        self
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Sctp { .. } => 132,
        }
    }

    /// Renders the frame with correct checksums.
    pub fn bytes(&self) -> Vec<u8> {
        let seg = l4_segment(self.sport, self.dport, &self.l4, self.window, &self.payload, |s| {
            l4_checksum(&self.src.octets(), &self.dst.octets(), self.proto(), s)
        });
        frame(self, self.proto(), &seg)
    }
}

/// Ethernet + IPv6 + extension headers of `h` (its MACs, addresses, hop
/// limit, `ext`), then `l4` (protocol `proto`, checksum already in).
pub fn frame(h: &Frame6, proto: u8, l4: &[u8]) -> Vec<u8> {
    let (src, dst, ext) = (h.src, h.dst, &h.ext);
    let mut f = h.dst_mac.to_vec();
    f.extend_from_slice(&h.src_mac);
    f.extend_from_slice(&[0x86, 0xdd]);
    let payload_len = ext.len() * 8 + l4.len();
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(payload_len as u16).to_be_bytes());
    f.push(ext.first().map_or(proto, |e| e.code()));
    f.push(h.hop_limit);
    f.extend_from_slice(&src.octets());
    f.extend_from_slice(&dst.octets());
    for (i, e) in ext.iter().enumerate() {
        let next = ext.get(i + 1).map_or(proto, |n| n.code());
        f.extend_from_slice(&e.bytes(next));
    }
    f.extend_from_slice(l4);
    f
}

/// An ICMPv6 message (`typ`, `code`, `body` after the checksum) from `src`
/// to `dst`, its checksum over the pseudo header.
pub fn icmpv6(src: Ipv6Addr, dst: Ipv6Addr, typ: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![typ, code, 0, 0];
    m.extend_from_slice(body);
    let c = l4_checksum(&src.octets(), &dst.octets(), IPPROTO_ICMPV6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut h = Frame6::udp(src, 0, dst, 0);
    (h.hop_limit, h.src_mac, h.dst_mac) = (255, CLIENT_MAC, NODE_MAC);
    frame(&h, IPPROTO_ICMPV6, &m)
}

/// Checks the TCP/UDP/ICMPv6 checksum (SCTP: its CRC32c, or zero for an
/// offloaded one) of an untagged IPv6 frame by full
/// recomputation over the pseudo header, after walking its extension
/// headers. Returns a description of what is wrong.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    verify(frame, false)
}

/// [`verify_checksums`]; `quoted`: the frame is an ICMPv6 error's quote,
/// whose SCTP CRC32c stays as the error's sender saw it (`lb_ebpf::icmp`:
/// no receiver checks it, SCTP matches an error by addresses, ports and
/// verification tag), so it is not checked.
fn verify(frame: &[u8], quoted: bool) -> Result<(), String> {
    let ip = frame.get(14..54).ok_or("no IPv6 header")?;
    let (src, dst) = (&ip[8..24], &ip[24..40]);
    let end = 54 + u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let (mut next, mut at) = (ip[6], 54);
    while matches!(next, 0 | 43 | 44 | 60) {
        let h = frame.get(at..at + 2).ok_or("extension header cut")?;
        at += if next == 44 { 8 } else { (h[1] as usize + 1) * 8 };
        next = h[0];
    }
    let seg = frame.get(at..end).ok_or("payload length beyond the frame")?;
    if next == 132 {
        if quoted {
            return Ok(());
        }
        // SCTP: a CRC32c without pseudo header, the same as over IPv4.
        let field = seg.get(8..12).ok_or("SCTP header cut short")?;
        let want = crate::segment::sctp_crc(seg);
        if field != [0; 4] && field != want {
            return Err(format!("bad SCTP CRC32c {field:02x?}, want {want:02x?}"));
        }
        return Ok(());
    }
    if next == 17 && seg.get(6..8) == Some(&[0, 0][..]) {
        return Err("UDP over IPv6 without checksum".into());
    }
    if l4_checksum(src, dst, next, seg) != 0 {
        return Err(format!("bad L4 checksum (next header {next})"));
    }
    // An ICMPv6 error quoting a whole IPv6 packet: its checksums too.
    if next == IPPROTO_ICMPV6 && seg.first().is_some_and(|t| *t < 128) && seg.len() >= 8 + 40 {
        let q = &seg[8..];
        if 40 + u16::from_be_bytes([q[4], q[5]]) as usize == q.len() {
            let mut quoted = frame[..14].to_vec();
            quoted.extend_from_slice(q);
            return verify(&quoted, true).map_err(|e| format!("quoted packet: {e}"));
        }
    }
    Ok(())
}

/// An ICMPv6 error frame (`msg`: type, code, 4 bytes of rest, e.g. the MTU
/// of "packet too big") from `src` to `dst` quoting the IPv6 packet of
/// `quoted` whole (cut to `quote_len` bytes when given), its checksum over
/// the pseudo header computed from scratch; MACs, hop limit and extension
/// headers (between the IPv6 and the ICMPv6 header) are `like`'s.
pub fn icmpv6_error(like: &Frame6, src: Ipv6Addr, dst: Ipv6Addr, msg: (u8, u8, [u8; 4]), quoted: &Frame6, quote_len: Option<usize>) -> Vec<u8> {
    let (typ, code, rest) = msg;
    let q = quoted.bytes();
    let q = &q[14..14 + quote_len.unwrap_or(q.len() - 14)];
    let mut m = vec![typ, code, 0, 0];
    m.extend_from_slice(&rest);
    m.extend_from_slice(q);
    let c = l4_checksum(&src.octets(), &dst.octets(), IPPROTO_ICMPV6, &m);
    m[2..4].copy_from_slice(&c.to_be_bytes());
    let mut h = like.clone();
    (h.src, h.dst) = (src, dst);
    frame(&h, IPPROTO_ICMPV6, &m)
}
