//! CIDRs of either family: service CIDRs (`--service-cidr`,
//! `networking.k8s.io/v1` ServiceCIDR objects: a packet from a pod or the
//! node to an address inside one that no Service has is dropped, as
//! kube-proxy's nftables mode does) and `loadBalancerSourceRanges`.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::family::IpFamily;

/// A CIDR as (network address, prefix length), host bits cleared.
pub type Cidr = (IpAddr, u8);

/// `addr` with every bit past `len` cleared.
pub fn network(addr: IpAddr, len: u8) -> IpAddr {
    let keep = |bits: u32| if len == 0 { 0 } else { u128::MAX << (bits - len as u32) };
    match addr {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from((u128::from(u32::from(a)) & keep(32)) as u32)),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & keep(128))),
    }
}

/// Whether `ip` is inside `cidr` (never across families).
pub fn contains((net, len): Cidr, ip: IpAddr) -> bool {
    IpFamily::of(net) == IpFamily::of(ip) && network(ip, len) == net
}

/// Parses `a.b.c.d/n` or `x::/n` of either family; an IPv4-mapped IPv6
/// prefix (`::ffff:10.96.0.0/108`) is read as the IPv4 one it maps, as
/// addresses are ([`super::ip`]). `Err` with the reason otherwise.
pub fn parse(s: &str) -> Result<Cidr, String> {
    let (addr, len) = s.trim().split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (expected ADDRESS/LENGTH)"))?;
    let len: u8 = len.parse().map_err(|_| format!("{s:?}: bad prefix length"))?;
    let mut addr = addr.parse::<IpAddr>().map_err(|_| format!("{s:?}: bad address"))?;
    let mut len = len;
    if let IpAddr::V6(a) = addr {
        if let (Some(v4), true) = (a.to_ipv4_mapped(), len >= 96) {
            (addr, len) = (IpAddr::V4(v4), len - 96);
        }
    }
    if len > IpFamily::of(addr).bits() {
        return Err(format!("{s:?}: prefix length out of range"));
    }
    Ok((network(addr, len), len))
}

/// The CIDRs of a ServiceCIDR object's `spec.cidrs`; invalid entries
/// are warned about, naming the object, and left out.
pub fn of_object(name: &str, cidrs: &[String]) -> Vec<Cidr> {
    cidrs
        .iter()
        .filter_map(|c| match parse(c) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(object = %name, error = %e, "invalid ServiceCIDR entry; ignored");
                None
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidrs_of_both_families_parse_with_host_bits_cleared() {
        assert_eq!(parse("10.96.0.0/12"), Ok((ip("10.96.0.0"), 12)));
        assert_eq!(parse(" 10.96.7.9/16 "), Ok((ip("10.96.0.0"), 16)));
        assert_eq!(parse("fd00:10:96::7/108"), Ok((ip("fd00:10:96::"), 108)));
        assert_eq!(parse("::/0"), Ok((ip("::"), 0)));
        assert_eq!(parse("::ffff:10.96.1.1/112"), Ok((ip("10.96.0.0"), 16)), "IPv4-mapped: the IPv4 prefix");
        for bad in ["10.96.0.0", "10.96.0.0/33", "banana/12", "10.96.0.0/x", "::/129"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            of_object("kubernetes", &["10.96.0.0/12".into(), "bogus".into(), "fd00::/108".into()]),
            [(ip("10.96.0.0"), 12), (ip("fd00::"), 108)]
        );
    }

    #[test]
    fn containment_stays_within_a_family() {
        assert!(contains((ip("fd00::"), 64), ip("fd00::1:2")));
        assert!(!contains((ip("fd00::"), 64), ip("fd00:0:0:1::1")));
        assert!(contains((ip("0.0.0.0"), 0), ip("1.2.3.4")));
        assert!(!contains((ip("::"), 0), ip("1.2.3.4")), "::/0 holds no IPv4 address");
    }
}
