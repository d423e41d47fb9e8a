//! Building and checking Ethernet/IPv4/TCP/UDP/SCTP frames byte by byte.
//! Checksums are computed from scratch here (SCTP's CRC32c by the `crc`
//! crate), so a frame the programs rewrote incrementally can be checked
//! against an independent full computation.
use std::net::Ipv4Addr;

use lb_ebpf::csum::{checksum, l4_checksum_v4};

pub use crate::segment::*;

/// A frame description; [`Frame::bytes`] renders it.
#[derive(Clone, Debug)]
pub struct Frame {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub l4: L4,
    pub payload: Vec<u8>,
    pub ip_options: Vec<u8>,
    pub vlan: Option<u16>,
    /// Raw flags + fragment offset field.
    pub frag: u16,
    pub ttl: u8,
    pub ip_id: u16,
    pub window: u16,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
}

impl Frame {
    pub fn tcp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, flags: u8) -> Self {
        Self::new(src, sport, dst, dport, L4::Tcp { flags, seq: 1000, ack: if flags & TCP_ACK != 0 { 2000 } else { 0 } })
    }

    pub fn udp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Self {
        Self::new(src, sport, dst, dport, L4::Udp { zero_checksum: false })
    }

    /// An SCTP packet with one chunk of type `chunk` (value: the payload)
    /// and a valid CRC32c.
    pub fn sctp(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, vtag: u32, chunk: u8) -> Self {
        Self::new(src, sport, dst, dport, L4::Sctp { vtag, chunk, crc: SctpCrc::Valid })
    }

    fn new(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, l4: L4) -> Self {
        Self {
            src,
            dst,
            sport,
            dport,
            l4,
            payload: Vec::new(),
            ip_options: Vec::new(),
            vlan: None,
            frag: 0x4000,
            ttl: 64,
            ip_id: 0x1234,
            window: 0xffff,
            src_mac: CLIENT_MAC,
            dst_mac: NODE_MAC,
        }
    }

    pub fn payload(mut self, p: &[u8]) -> Self {
        self.payload = p.to_vec();
        self
    }

    /// Renders the frame with correct checksums.
    pub fn bytes(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&self.dst_mac);
        f.extend_from_slice(&self.src_mac);
        if let Some(tag) = self.vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&tag.to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00]);
        let l4 = self.l4_bytes();
        let ihl = 20 + self.ip_options.len();
        assert!(ihl.is_multiple_of(4) && ihl <= 60, "IP options must pad to 4 bytes");
        let mut ip = vec![0x40 | (ihl / 4) as u8, 0];
        ip.extend_from_slice(&((ihl + l4.len()) as u16).to_be_bytes());
        ip.extend_from_slice(&self.ip_id.to_be_bytes());
        ip.extend_from_slice(&self.frag.to_be_bytes());
        ip.push(self.ttl);
        ip.push(self.proto());
        ip.extend_from_slice(&[0, 0]);
        ip.extend_from_slice(&self.src.octets());
        ip.extend_from_slice(&self.dst.octets());
        ip.extend_from_slice(&self.ip_options);
        let c = checksum(&ip);
        ip[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&ip);
        f.extend_from_slice(&l4);
        f
    }

    pub fn proto(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => 6,
            L4::Udp { .. } => 17,
            L4::Sctp { .. } => 132,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        l4_segment(self.sport, self.dport, &self.l4, self.window, &self.payload, |seg| {
            l4_checksum_v4(self.src.octets(), self.dst.octets(), self.proto(), seg)
        })
    }
}


/// An ICMP error frame (`typ`, `code`, 4 bytes of `rest`, e.g. the MTU of
/// "fragmentation needed") from `src` to `dst` quoting the IPv4 packet of
/// `quoted` whole, with every checksum computed from scratch; the MACs and
/// TTL are `like`'s.
pub fn icmp_error(like: &Frame, src: Ipv4Addr, dst: Ipv4Addr, typ: u8, code: u8, rest: [u8; 4], quoted: &Frame) -> Vec<u8> {
    let mut icmp = vec![typ, code, 0, 0];
    icmp.extend_from_slice(&rest);
    icmp.extend_from_slice(&quoted.bytes()[14..]);
    let c = checksum(&icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    let mut f = like.dst_mac.to_vec();
    f.extend_from_slice(&like.src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + icmp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 0, 0, 0, like.ttl, 1, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&icmp);
    f
}

/// Checks the IPv4 header checksum and the TCP/UDP checksum (SCTP: CRC32c,
/// or zero for an offloaded one) of an untagged IPv4 frame by full
/// recomputation (for an ICMP error: the ICMP checksum and
/// the quoted packet's). Returns a description of what is wrong.
pub fn verify_checksums(frame: &[u8]) -> Result<(), String> {
    if frame.get(12..14) == Some(&[0x86, 0xdd][..]) {
        return crate::packet6::verify_checksums(frame);
    }
    let ip = frame.get(14..).ok_or("no IPv4 header")?;
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if checksum(&ip[..ihl]) != 0 {
        return Err(format!("bad IPv4 header checksum {:02x}{:02x}", ip[10], ip[11]));
    }
    let tot = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let seg = &ip[ihl..tot];
    let (src, dst) = (ip[12..16].try_into().unwrap(), ip[16..20].try_into().unwrap());
    let proto = ip[9];
    if proto == 1 {
        if checksum(seg) != 0 {
            return Err("bad ICMP checksum".into());
        }
        // The quote: an IPv4 packet behind the 8-byte ICMP header. A quote
        // cut short (RFC 792's header + 8 bytes) has only its header checked.
        let q = &seg[8..];
        let q_ihl = ((q.first().ok_or("empty quote")? & 0x0f) as usize) * 4;
        if q.len() < q_ihl || u16::from_be_bytes([q[2], q[3]]) as usize > q.len() {
            return match q.get(..q_ihl) {
                Some(h) if checksum(h) == 0 => Ok(()),
                _ => Err("quoted packet: bad or cut IPv4 header".into()),
            };
        }
        let mut quoted = frame[..14].to_vec();
        quoted.extend_from_slice(q);
        return verify_checksums(&quoted).map_err(|e| format!("quoted packet: {e}"));
    }
    if proto == 17 && seg[6..8] == [0, 0] {
        return Ok(()); // UDP without checksum
    }
    if proto == 132 {
        // SCTP: a CRC32c without pseudo header; zero means still to be
        // computed (checksum offload), which only the kernel can finish.
        let field = seg.get(8..12).ok_or("SCTP header cut short")?;
        if field != [0; 4] && field != sctp_crc(seg) {
            return Err(format!("bad SCTP CRC32c {field:02x?}, want {:02x?}", sctp_crc(seg)));
        }
        return Ok(());
    }
    if l4_checksum_v4(src, dst, proto, seg) != 0 {
        return Err(format!("bad L4 checksum (proto {proto})"));
    }
    Ok(())
}

/// Recomputes the IPv4 header checksum of an untagged IPv4 frame after its
/// header was edited by hand (so a test's frame has exactly one defect).
pub fn fix_ip_checksum(frame: &mut [u8]) {
    let ihl = ((frame[14] & 0x0f) as usize) * 4;
    frame[24..26].copy_from_slice(&[0, 0]);
    let c = checksum(&frame[14..14 + ihl]);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
}

/// A side-by-side hex diff of two frames, for failure messages.
pub fn hex_diff(got: &[u8], want: &[u8]) -> String {
    let mut out = String::from("offset  got                                              want\n");
    for i in (0..got.len().max(want.len())).step_by(16) {
        let row = |b: &[u8]| {
            (i..i + 16).map(|j| b.get(j).map_or("  ".into(), |x| format!("{x:02x}"))).collect::<Vec<_>>().join(" ")
        };
        let (g, w) = (row(got), row(want));
        let mark = if g != w { "  <<" } else { "" };
        out += &format!("{i:04x}    {g}  {w}{mark}\n");
    }
    out
}

pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn from_hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}
