//! ARP frames for the IPv4 LoadBalancer addresses this node owns: requests
//! parsed, replies with the uplink's MAC, and the gratuitous ARP that
//! announces an address taken over (sent and received through
//! [`super::link`]).
use std::net::Ipv4Addr;

pub const ETH_P_ARP: u16 = 0x0806;
const ARP_REQUEST: u16 = 1;
const ARP_REPLY: u16 = 2;
/// Ethernet header (14) + ARP for IPv4 over Ethernet (28).
pub const FRAME_LEN: usize = 42;
const BROADCAST: [u8; 6] = [0xff; 6];

/// An ARP request: who asks, for which address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub sender_mac: [u8; 6],
    pub sender_ip: Ipv4Addr,
    pub target_ip: Ipv4Addr,
}

/// The request in an Ethernet frame, if it is one (IPv4 over Ethernet).
pub fn parse_request(frame: &[u8]) -> Option<Request> {
    let f = frame.get(..FRAME_LEN)?;
    let be16 = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
    let ip = |i: usize| Ipv4Addr::new(f[i], f[i + 1], f[i + 2], f[i + 3]);
    let arp_ipv4 =
        be16(12) == ETH_P_ARP && be16(14) == 1 && be16(16) == 0x0800 && f[18] == 6 && f[19] == 4;
    if !arp_ipv4 || be16(20) != ARP_REQUEST {
        return None;
    }
    Some(Request {
        sender_mac: f[22..28].try_into().ok()?,
        sender_ip: ip(28),
        target_ip: ip(38),
    })
}

/// An ARP frame: Ethernet to `dst`, ARP `op` from (`sha`, `spa`) to (`tha`, `tpa`).
fn frame(
    dst: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: Ipv4Addr,
    tha: [u8; 6],
    tpa: Ipv4Addr,
) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&sha);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&op.to_be_bytes());
    f[22..28].copy_from_slice(&sha);
    f[28..32].copy_from_slice(&spa.octets());
    f[32..38].copy_from_slice(&tha);
    f[38..42].copy_from_slice(&tpa.octets());
    f
}

/// The reply to `req` saying `req.target_ip` is at `mac`.
pub fn reply(mac: [u8; 6], req: &Request) -> [u8; FRAME_LEN] {
    frame(
        req.sender_mac,
        ARP_REPLY,
        mac,
        req.target_ip,
        req.sender_mac,
        req.sender_ip,
    )
}

/// A gratuitous ARP (a broadcast request for `addr` from `addr`): every
/// host on the segment that has `addr` in its neighbour table moves it to
/// `mac` (Linux accepts it over the entry's locktime).
pub fn gratuitous(mac: [u8; 6], addr: Ipv4Addr) -> [u8; FRAME_LEN] {
    frame(BROADCAST, ARP_REQUEST, mac, addr, [0; 6], addr)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const CLIENT: [u8; 6] = [2, 0, 0, 0, 0, 9];

    #[test]
    fn a_request_is_parsed_and_answered() {
        let ask = frame(
            BROADCAST,
            ARP_REQUEST,
            CLIENT,
            Ipv4Addr::new(192, 168, 50, 2),
            [0; 6],
            Ipv4Addr::new(192, 168, 50, 201),
        );
        let req = parse_request(&ask).unwrap();
        assert_eq!(
            req,
            Request {
                sender_mac: CLIENT,
                sender_ip: Ipv4Addr::new(192, 168, 50, 2),
                target_ip: Ipv4Addr::new(192, 168, 50, 201)
            }
        );
        let r = reply(MAC, &req);
        assert_eq!(&r[0..6], &CLIENT, "unicast back");
        assert_eq!(&r[20..22], &[0, 2], "a reply");
        assert_eq!(&r[22..28], &MAC);
        assert_eq!(&r[28..32], &[192, 168, 50, 201]);
        assert_eq!(&r[38..42], &[192, 168, 50, 2]);
        assert!(parse_request(&r).is_none(), "replies are not requests");
        assert!(parse_request(&ask[..41]).is_none(), "truncated");
    }

    #[test]
    fn a_gratuitous_arp_names_the_address_twice() {
        let g = gratuitous(MAC, Ipv4Addr::new(10, 0, 0, 7));
        assert_eq!(&g[0..6], &BROADCAST);
        let req = parse_request(&g).unwrap();
        assert_eq!(
            (req.sender_ip, req.target_ip, req.sender_mac),
            (Ipv4Addr::new(10, 0, 0, 7), Ipv4Addr::new(10, 0, 0, 7), MAC)
        );
    }
}
