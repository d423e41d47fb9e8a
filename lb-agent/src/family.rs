//! Address families on the agent's side: [`IpFamily`] names one, and
//! [`Family`] lets one generic function plan, diff, write and read the maps
//! of either (`[u8; 4]` for IPv4, `[u8; 16]` for IPv6, as in lb-common), so
//! nothing is written twice.
use std::net::IpAddr;

use lb_common::{maps, Addr, Addr4, Addr6};
use serde::Serialize;

/// An address family, as Kubernetes names them (`ipFamilies`, `addressType`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum IpFamily {
    IPv4,
    IPv6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => IpFamily::IPv4,
            IpAddr::V6(_) => IpFamily::IPv6,
        }
    }

    /// Both families, IPv4 first.
    pub const ALL: [IpFamily; 2] = [IpFamily::IPv4, IpFamily::IPv6];

    pub fn as_str(self) -> &'static str {
        match self {
            IpFamily::IPv4 => "IPv4",
            IpFamily::IPv6 => "IPv6",
        }
    }

    /// Bits in an address of the family (the longest prefix).
    pub fn bits(self) -> u8 {
        match self {
            IpFamily::IPv4 => 32,
            IpFamily::IPv6 => 128,
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for IpFamily {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "IPv4" => Ok(IpFamily::IPv4),
            "IPv6" => Ok(IpFamily::IPv6),
            other => Err(format!("unknown IP family {other:?} (expected IPv4 or IPv6)")),
        }
    }
}

/// The names of one family's instances of the per-family maps.
#[derive(Clone, Copy, Debug)]
pub struct MapNames {
    pub services: &'static str,
    pub backends: &'static str,
    pub source_ranges: &'static str,
    pub conntrack: &'static str,
    pub affinity: &'static str,
    pub nat_config: &'static str,
}

/// A map address type the agent plans and writes for: the link between a
/// std address and the wire-order bytes of one family's maps.
pub trait Family: Addr + Send + Sync + 'static {
    const FAMILY: IpFamily;
    const MAPS: MapNames;

    /// The address in this family's wire order; `None` for the other family.
    fn from_ip(ip: IpAddr) -> Option<Self> {
        let v6 = match ip {
            IpAddr::V4(a) => a.to_ipv6_mapped(),
            IpAddr::V6(a) => a,
        }
        .octets();
        // An IPv4 address is the last 4 bytes of its mapped form.
        let bytes = if Self::FAMILY == IpFamily::IPv4 { &v6[12..] } else { &v6[..] };
        (IpFamily::of(ip) == Self::FAMILY).then(|| bytemuck::pod_read_unaligned(bytes))
    }
}

impl Family for Addr4 {
    const FAMILY: IpFamily = IpFamily::IPv4;
    const MAPS: MapNames = MapNames { services: maps::SERVICES_V4, backends: maps::BACKENDS_V4, source_ranges: maps::SOURCE_RANGES_V4, conntrack: maps::CONNTRACK_V4, affinity: maps::AFFINITY_V4, nat_config: maps::NAT_CONFIG };
}

impl Family for Addr6 {
    const FAMILY: IpFamily = IpFamily::IPv6;
    const MAPS: MapNames = MapNames { services: maps::SERVICES_V6, backends: maps::BACKENDS_V6, source_ranges: maps::SOURCE_RANGES_V6, conntrack: maps::CONNTRACK_V6, affinity: maps::AFFINITY_V6, nat_config: maps::NAT_CONFIG_V6 };
}

/// `addr:port` as people write it: `10.0.0.1:80`, `[fd00::1]:80`.
pub fn socket(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_convert_within_their_family_only() {
        let v4: IpAddr = "10.0.0.1".parse().unwrap();
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(Addr4::from_ip(v4), Some([10, 0, 0, 1]));
        assert_eq!(Addr4::from_ip(v6), None);
        assert_eq!(Addr6::from_ip(v6).map(|a| a.to_ip()), Some(v6));
        assert_eq!(Addr6::from_ip(v4), None);
        assert_eq!(socket(v6, 80), "[fd00::1]:80");
        assert_eq!(socket(v4, 80), "10.0.0.1:80");
    }
}
