//! This node's SNAT settings: which address and ports flows to backends on
//! other nodes take as their source (see `lb_common::nat` for why), and
//! keeping the node's own sockets off those ports.
use std::{net::IpAddr, str::FromStr};

use lb_common::{NatConfig, DEFAULT_SNAT_PORTS};

use crate::family::Family;
/// A sysctl the SNAT set-up reads or writes that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `value` as the message shows it.
    #[error("writing {value} to {path}")]
    Write {
        value: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

fn write(path: &str, value: &str, shown: String) -> Result<(), Error> {
    std::fs::write(path, value).map_err(|source| Error::Write { value: shown, path: path.into(), source })
}

/// An inclusive port range, `MIN-MAX` on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl Default for PortRange {
    fn default() -> Self {
        Self { min: DEFAULT_SNAT_PORTS.0, max: DEFAULT_SNAT_PORTS.1 }
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').ok_or_else(|| format!("{s:?}: expected MIN-MAX, e.g. 61000-65535"))?;
        let port = |t: &str| t.trim().parse::<u16>().map_err(|_| format!("{t:?} is not a port (1-65535)"));
        let (min, max) = (port(a)?, port(b)?);
        if min == 0 || min > max {
            return Err(format!("{s:?}: expected 1 <= MIN <= MAX <= 65535"));
        }
        Ok(Self { min, max })
    }
}

/// What the operator asked for.
#[derive(Clone, Debug, Default)]
pub struct SnatSettings {
    /// At most one per family (`--snat-address`, repeatable); a family
    /// without one takes the node's first NodePort address of the family.
    pub addresses: Vec<IpAddr>,
    /// The same range for both families.
    pub ports: PortRange,
    /// SNAT off: remote backends see the client address (they must route
    /// replies back through the balancing node).
    pub off: bool,
}

impl SnatSettings {
    /// The settings, refused with the reason when `addresses` names two
    /// of one family.
    pub fn new(addresses: Vec<IpAddr>, ports: PortRange, off: bool) -> Result<Self, String> {
        if addresses.iter().filter(|a| a.is_ipv4()).count() > 1 || addresses.iter().filter(|a| a.is_ipv6()).count() > 1 {
            return Err(format!("--snat-address {addresses:?}: at most one address per family (one IPv4, one IPv6)"));
        }
        Ok(Self { addresses, ports, off })
    }

    /// The family's `nat_config` value (`nat_config`, `nat_config_v6`) for
    /// a node whose NodePort addresses are `node_addresses`: SNAT is off
    /// for a family without an address to use.
    pub fn config<A: Family>(&self, node_addresses: &[IpAddr]) -> NatConfig<A> {
        if self.off {
            return NatConfig::default();
        }
        let usable = |a: &IpAddr| if a.is_unspecified() { None } else { A::from_ip(*a) };
        match self.addresses.iter().find_map(usable).or_else(|| node_addresses.iter().find_map(usable)) {
            Some(addr) => NatConfig { addr, port_min: self.ports.min, port_max: self.ports.max },
            None => NatConfig::default(),
        }
    }
}

const RESERVED_PORTS: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";

/// Adds `range` to the node's reserved ports (`ip_local_reserved_ports`, of
/// the agent's network namespace), so that no socket of the node is given a
/// SNAT port as its ephemeral port, whatever `ip_local_port_range` says.
/// Existing reservations are kept.
pub fn reserve(range: PortRange) -> Result<(), Error> {
    let now = std::fs::read_to_string(RESERVED_PORTS).map_err(|source| Error::Read { path: RESERVED_PORTS.into(), source })?;
    let want = merged(now.trim(), range);
    if want != now.trim() {
        write(RESERVED_PORTS, &want, format!("{want:?}"))?;
    }
    Ok(())
}

/// The reserved-ports list `list` with `range` in it (unchanged if present).
fn merged(list: &str, range: PortRange) -> String {
    let ours = if range.min == range.max { range.min.to_string() } else { range.to_string() };
    let mut items: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    if items.contains(&ours.as_str()) {
        return items.join(",");
    }
    items.push(&ours);
    items.join(",")
}

/// Lets the kernel forward, from `iface`, a packet whose source is one of
/// the node's own addresses (`accept_local`): XDP forwards SNATed packets
/// itself, but hands one to the kernel when it cannot (no neighbour entry
/// yet for the next hop: the kernel's forwarding then resolves it, and the
/// flow's next packets go through XDP). Without this the kernel drops them
/// as martians.
pub fn accept_own_source(iface: &str) -> Result<(), Error> {
    write(&format!("/proc/sys/net/ipv4/conf/{iface}/accept_local"), "1", "1".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges_parse_and_reject_nonsense() {
        assert_eq!("61000-65535".parse::<PortRange>(), Ok(PortRange { min: 61000, max: 65535 }));
        assert_eq!("7-7".parse::<PortRange>(), Ok(PortRange { min: 7, max: 7 }));
        for bad in ["", "5", "0-10", "10-5", "1-70000", "a-b"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad:?} accepted");
        }
    }

    use lb_common::{Addr4, Addr6};

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn each_family_defaults_to_its_first_node_address_and_can_be_off() {
        let nodes = [ip("192.168.50.11"), ip("fd00:50::11"), ip("10.0.0.1"), ip("fd00:50::99")];
        let s = SnatSettings::default();
        let c = s.config::<Addr4>(&nodes);
        assert_eq!((c.addr, c.port_min, c.port_max), ([192, 168, 50, 11], 61000, 65535));
        let c6 = s.config::<Addr6>(&nodes);
        assert_eq!((c6.addr, c6.port_min, c6.port_max), (ip6("fd00:50::11"), 61000, 65535));
        let s = SnatSettings::new(vec![ip("fd00:9::9"), ip("10.9.9.9")], PortRange::default(), false).unwrap();
        assert_eq!(s.config::<Addr4>(&nodes).addr, [10, 9, 9, 9]);
        assert_eq!(s.config::<Addr6>(&nodes).addr, ip6("fd00:9::9"));
        // One family given: the other still defaults to the node's.
        let s = SnatSettings::new(vec![ip("10.9.9.9")], PortRange::default(), false).unwrap();
        assert_eq!(s.config::<Addr6>(&nodes).addr, ip6("fd00:50::11"));
        assert_eq!(SnatSettings { off: true, ..Default::default() }.config::<Addr6>(&nodes), NatConfig::default());
        assert_eq!(SnatSettings::default().config::<Addr4>(&[]), NatConfig::default());
        // An IPv4-only node: no IPv6 SNAT.
        assert_eq!(SnatSettings::default().config::<Addr6>(&nodes[..1]), NatConfig::default());
        let two = SnatSettings::new(vec![ip("10.0.0.1"), ip("10.0.0.2")], PortRange::default(), false).unwrap_err();
        assert!(two.contains("at most one address per family"), "{two}");
    }

    fn ip6(s: &str) -> Addr6 {
        s.parse::<std::net::Ipv6Addr>().unwrap().octets()
    }

    #[test]
    fn reserving_keeps_other_reservations_and_adds_ours_once() {
        let r = PortRange { min: 61000, max: 65535 };
        assert_eq!(merged("", r), "61000-65535");
        assert_eq!(merged("8080,9000-9100", r), "8080,9000-9100,61000-65535");
        assert_eq!(merged("61000-65535", r), "61000-65535");
        assert_eq!(merged("5", PortRange { min: 7, max: 7 }), "5,7");
    }
}
