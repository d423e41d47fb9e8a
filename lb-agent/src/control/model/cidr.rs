//! Service CIDRs (`--service-cidr`, `networking.k8s.io/v1` ServiceCIDR
//! objects): the address ranges ClusterIPs are allocated from. A packet
//! from a pod or the node to an address inside one that no Service has is
//! dropped, as kube-proxy's nftables mode does.
use std::net::{IpAddr, Ipv4Addr};

/// An IPv4 CIDR as (network address, prefix length), host bits cleared.
pub type Cidr = (Ipv4Addr, u8);

/// Parses `a.b.c.d/n` or `x::/n`: `Ok(Some(..))` for IPv4, `Ok(None)` for
/// IPv6 (dual-stack clusters list both; the dataplane is IPv4), `Err` with
/// the reason otherwise.
pub fn parse(s: &str) -> Result<Option<Cidr>, String> {
    let (addr, len) = s.trim().split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (expected ADDRESS/LENGTH)"))?;
    let len: u8 = len.parse().map_err(|_| format!("{s:?}: bad prefix length"))?;
    match addr.parse::<IpAddr>().map_err(|_| format!("{s:?}: bad address"))? {
        IpAddr::V4(a) if len <= 32 => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            Ok(Some((Ipv4Addr::from(u32::from(a) & mask), len)))
        }
        IpAddr::V6(_) if len <= 128 => Ok(None),
        _ => Err(format!("{s:?}: prefix length out of range")),
    }
}

/// The IPv4 CIDRs of a ServiceCIDR object's `spec.cidrs`; invalid entries
/// are warned about, naming the object, and left out.
pub fn of_object(name: &str, cidrs: &[String]) -> Vec<Cidr> {
    cidrs
        .iter()
        .filter_map(|c| match parse(c) {
            Ok(v4) => v4,
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

    #[test]
    fn cidrs_parse_with_host_bits_cleared_and_ipv6_set_aside() {
        assert_eq!(parse("10.96.0.0/12"), Ok(Some((Ipv4Addr::new(10, 96, 0, 0), 12))));
        assert_eq!(parse(" 10.96.7.9/16 "), Ok(Some((Ipv4Addr::new(10, 96, 0, 0), 16))));
        assert_eq!(parse("fd00:10:96::/108"), Ok(None));
        for bad in ["10.96.0.0", "10.96.0.0/33", "banana/12", "10.96.0.0/x", "::/129"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
        assert_eq!(of_object("kubernetes", &["10.96.0.0/12".into(), "bogus".into(), "fd00::/108".into()]), [(Ipv4Addr::new(10, 96, 0, 0), 12)]);
    }
}
