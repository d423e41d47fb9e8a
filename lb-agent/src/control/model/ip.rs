//! Reading one address of an object, as kube-proxy reads it.
//!
//! - An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) is the IPv4 address it
//!   maps: Go's `net.ParseIP(..).To4()`, through which kube-proxy sorts
//!   addresses by family, does the same. It is logged (newer API servers
//!   refuse such addresses in new objects).
//! - A link-local address (`169.254.0.0/16`, `fe80::/10`) is refused, as
//!   the API server's validation refuses it for endpoints and external IPs:
//!   it means something only with an interface, which no map key has.
use std::net::IpAddr;

use super::ObjectRef;

/// Why an address is not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Not an address at all: the object carrying it is broken.
    #[error("invalid IP address {0:?}")]
    Invalid(String),
    /// A valid address the agent does not balance: only it is left out.
    #[error("link-local address {0:?} (169.254.0.0/16, fe80::/10) is not balanced: it needs an interface")]
    LinkLocal(String),
}

/// Parses `s` (a field of `id` named `what`): the address, normalised, or
/// why it is refused.
pub fn parse(id: &ObjectRef, what: &str, s: &str) -> Result<IpAddr, AddrError> {
    let ip = read(s)?;
    if ip.to_string() != s.trim() && matches!(s.trim().parse::<IpAddr>(), Ok(IpAddr::V6(_))) && ip.is_ipv4() {
        tracing::info!(object = %id, address = %s, ipv4 = %ip, "{what}: IPv4-mapped IPv6 address read as IPv4, as kube-proxy reads it");
    }
    Ok(ip)
}

/// [`parse`] without an object to name (command-line flags).
pub fn read(s: &str) -> Result<IpAddr, AddrError> {
    let ip = s.trim().parse::<IpAddr>().map_err(|_| AddrError::Invalid(s.to_string()))?;
    let ip = match ip {
        IpAddr::V6(a) => a.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        IpAddr::V4(_) => ip,
    };
    if is_link_local(ip) {
        return Err(AddrError::LinkLocal(s.to_string()));
    }
    Ok(ip)
}

/// `169.254.0.0/16` or `fe80::/10`.
pub fn is_link_local(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => a.segments()[0] & 0xffc0 == 0xfe80,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_addresses_are_ipv4_and_link_local_ones_refused() {
        let id = ObjectRef::new("ns", "a");
        assert_eq!(parse(&id, "x", "::ffff:10.0.0.1"), Ok("10.0.0.1".parse().unwrap()));
        assert_eq!(parse(&id, "x", " fd00::1 "), Ok("fd00::1".parse().unwrap()));
        for bad in ["fe80::1", "febf::1", "169.254.1.1", "::ffff:169.254.1.1"] {
            assert_eq!(parse(&id, "x", bad), Err(AddrError::LinkLocal(bad.into())), "{bad}");
        }
        assert!(parse(&id, "x", "fec0::1").is_ok(), "site-local is not link-local");
        assert_eq!(parse(&id, "x", "10.0.0.300").unwrap_err().to_string(), "invalid IP address \"10.0.0.300\"");
    }
}
