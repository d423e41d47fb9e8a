//! LoadBalancer address pools: where the addresses of `type: LoadBalancer`
//! Services come from. A pool is a list of CIDRs and ranges (IPv4, IPv6 or
//! both), an `autoAssign` switch and a service selector; it comes from the
//! `LoadBalancerPool` custom resource (`xdplb.io/v1alpha1`) or from the
//! agent's `--lb-pool NAME=ADDRS` option. Everything is validated here, once,
//! with errors that name the pool and the entry: syntax, host bits set in a
//! CIDR, a range whose ends are of different families or reversed,
//! addresses no host may use (unspecified, loopback, multicast, broadcast),
//! and overlaps inside a pool or between pools. A CIDR's IPv4 network and
//! broadcast addresses are never handed out (prefixes up to /30).
use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use serde::{Deserialize, Serialize};

/// API group and version of the `LoadBalancerPool` custom resource.
pub const GROUP: &str = "xdplb.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "LoadBalancerPool";
pub const PLURAL: &str = "loadbalancerpools";

/// An address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(a: IpAddr) -> Self {
        if a.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
    /// As Kubernetes spells it in `spec.ipFamilies`.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }
}

/// An inclusive range of addresses of one family, as integers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Range {
    pub family: Family,
    pub first: u128,
    pub last: u128,
}

impl Range {
    pub fn contains(&self, a: IpAddr) -> bool {
        let (f, n) = to_int(a);
        f == self.family && (self.first..=self.last).contains(&n)
    }
    /// Addresses in the range (saturating for a whole IPv6 space).
    pub fn len(&self) -> u128 {
        (self.last - self.first).saturating_add(1)
    }
    /// Never: a range holds at least its first address (for clippy's
    /// `len_without_is_empty`).
    pub fn is_empty(&self) -> bool {
        false
    }
    fn overlaps(&self, o: &Range) -> bool {
        self.family == o.family && self.first <= o.last && o.first <= self.last
    }
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{}",
            from_int(self.family, self.first),
            from_int(self.family, self.last)
        )
    }
}

/// An address as (family, integer).
pub fn to_int(a: IpAddr) -> (Family, u128) {
    match a {
        IpAddr::V4(a) => (Family::V4, u32::from(a) as u128),
        IpAddr::V6(a) => (Family::V6, u128::from(a)),
    }
}

/// The address of `n` in `family` (`n` must fit the family).
pub fn from_int(family: Family, n: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from(n as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from(n)),
    }
}

/// Where a pool was defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Origin {
    /// `--lb-pool` (or `lb-pool:` in the `--config` file).
    Config,
    /// A `LoadBalancerPool` object.
    Resource,
}

/// A validated pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pool {
    pub name: String,
    /// Sorted, disjoint.
    pub ranges: Vec<Range>,
    /// Services without a requested address or pool annotation get an
    /// address from this pool (when the selector matches).
    pub auto_assign: bool,
    /// `serviceSelector.matchLabels`: only Services with all these labels
    /// may get an address from this pool. Empty: every Service.
    pub selector: BTreeMap<String, String>,
    pub origin: Origin,
}

impl Pool {
    pub fn contains(&self, a: IpAddr) -> bool {
        self.ranges.iter().any(|r| r.contains(a))
    }
    /// Addresses of `family` in the pool.
    pub fn size(&self, family: Family) -> u128 {
        self.ranges
            .iter()
            .filter(|r| r.family == family)
            .map(Range::len)
            .fold(0, u128::saturating_add)
    }
    /// Whether a Service with `labels` may use the pool.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    }
}

/// The `spec` of a `LoadBalancerPool`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolSpec {
    /// CIDRs (`192.168.10.0/24`, `fd00:10::/120`) and ranges
    /// (`192.168.10.20-192.168.10.30`), of either family.
    pub addresses: Vec<String>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_assign: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_selector: Option<Selector>,
}

/// A label selector (only `matchLabels`: what pools need).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Why a pool is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("pool {pool:?}: no addresses")]
    Empty { pool: String },
    #[error("pool {pool:?}: {entry:?} is neither a CIDR (10.0.0.0/24) nor a range (10.0.0.10-10.0.0.20)")]
    Syntax { pool: String, entry: String },
    #[error("pool {pool:?}: {entry:?} has host bits set; the network is {network}")]
    HostBits {
        pool: String,
        entry: String,
        network: String,
    },
    #[error("pool {pool:?}: range {entry:?} mixes IPv4 and IPv6")]
    FamilyMismatch { pool: String, entry: String },
    #[error("pool {pool:?}: range {entry:?} ends before it starts")]
    Reversed { pool: String, entry: String },
    #[error("pool {pool:?}: {entry:?} holds no usable address (a /31 or /32, /127 or /128, without its network and broadcast address?)")]
    NoUsable { pool: String, entry: String },
    #[error("pool {pool:?}: {entry:?} contains {addr}, which no host may use ({why})")]
    Reserved {
        pool: String,
        entry: String,
        addr: IpAddr,
        why: &'static str,
    },
    #[error("pool {pool:?}: {entry:?} overlaps {other}")]
    Overlap {
        pool: String,
        entry: String,
        other: String,
    },
    #[error("pool {pool:?} is defined twice (the one from {other:?} is used)")]
    Duplicate { pool: String, other: Origin },
    #[error("pool name {0:?} is not a DNS label (lower-case letters, digits and '-', at most 63)")]
    Name(String),
    #[error("--lb-pool {0:?}: expected NAME=ADDRS (ADDRS a comma-separated list of CIDRs and ranges), optionally NAME:manual=ADDRS for a pool without auto-assign")]
    Flag(String),
}

/// Validates one pool's addresses.
pub fn pool(name: &str, spec: &PoolSpec, origin: Origin) -> Result<Pool, PoolError> {
    let dns_label = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if !dns_label {
        return Err(PoolError::Name(name.to_string()));
    }
    if spec.addresses.is_empty() {
        return Err(PoolError::Empty { pool: name.into() });
    }
    let mut ranges: Vec<(Range, String)> = Vec::new();
    for entry in &spec.addresses {
        let r = parse_entry(name, entry.trim())?;
        if let Some((_, other)) = ranges.iter().find(|(o, _)| o.overlaps(&r)) {
            return Err(PoolError::Overlap {
                pool: name.into(),
                entry: entry.clone(),
                other: format!("{other:?} of the same pool"),
            });
        }
        ranges.push((r, entry.clone()));
    }
    let mut ranges: Vec<Range> = ranges.into_iter().map(|(r, _)| r).collect();
    ranges.sort();
    Ok(Pool {
        name: name.to_string(),
        ranges,
        auto_assign: spec.auto_assign.unwrap_or(true),
        selector: spec
            .service_selector
            .clone()
            .unwrap_or_default()
            .match_labels,
        origin,
    })
}

/// One CIDR or range.
fn parse_entry(pool: &str, entry: &str) -> Result<Range, PoolError> {
    let syntax = || PoolError::Syntax {
        pool: pool.into(),
        entry: entry.into(),
    };
    let range = if let Some((net, len)) = entry.split_once('/') {
        let addr: IpAddr = net.trim().parse().map_err(|_| syntax())?;
        let (family, n) = to_int(addr);
        let bits = if family == Family::V4 { 32 } else { 128 };
        let len: u32 = len
            .trim()
            .parse()
            .ok()
            .filter(|l| *l <= bits)
            .ok_or_else(syntax)?;
        let host = if len == bits {
            0
        } else {
            (1u128 << (bits - len)) - 1
        };
        if n & host != 0 {
            let network = format!("{}/{len}", from_int(family, n & !host));
            return Err(PoolError::HostBits {
                pool: pool.into(),
                entry: entry.into(),
                network,
            });
        }
        let (mut first, mut last) = (n, n | host);
        // An IPv4 subnet's network and broadcast addresses answer for the
        // whole segment: never a Service's. (/31 and /32 have neither.)
        if family == Family::V4 && len <= 30 {
            first += 1;
            last -= 1;
        }
        // IPv6's subnet-router anycast address (the all-zero host).
        if family == Family::V6 && len <= 126 {
            first += 1;
        }
        if first > last {
            return Err(PoolError::NoUsable {
                pool: pool.into(),
                entry: entry.into(),
            });
        }
        Range {
            family,
            first,
            last,
        }
    } else if let Some((a, b)) = entry.split_once('-') {
        let a: IpAddr = a.trim().parse().map_err(|_| syntax())?;
        let b: IpAddr = b.trim().parse().map_err(|_| syntax())?;
        let ((fa, na), (fb, nb)) = (to_int(a), to_int(b));
        if fa != fb {
            return Err(PoolError::FamilyMismatch {
                pool: pool.into(),
                entry: entry.into(),
            });
        }
        if na > nb {
            return Err(PoolError::Reversed {
                pool: pool.into(),
                entry: entry.into(),
            });
        }
        Range {
            family: fa,
            first: na,
            last: nb,
        }
    } else {
        let a: IpAddr = entry.parse().map_err(|_| syntax())?;
        let (family, n) = to_int(a);
        Range {
            family,
            first: n,
            last: n,
        }
    };
    // Checking both ends and the special blocks' edges covers every
    // reserved address inside the range too.
    for (first, last, why) in reserved(range.family) {
        let special = Range {
            family: range.family,
            first,
            last,
        };
        if special.overlaps(&range) {
            let addr = from_int(range.family, range.first.max(first));
            return Err(PoolError::Reserved {
                pool: pool.into(),
                entry: entry.into(),
                addr,
                why,
            });
        }
    }
    Ok(range)
}

/// Blocks no Service address may come from: (first, last, why).
fn reserved(family: Family) -> Vec<(u128, u128, &'static str)> {
    let v4 = |a: [u8; 4]| u32::from(Ipv4Addr::from(a)) as u128;
    match family {
        Family::V4 => vec![
            (v4([0, 0, 0, 0]), v4([0, 255, 255, 255]), "\"this network\""),
            (v4([127, 0, 0, 0]), v4([127, 255, 255, 255]), "loopback"),
            (v4([224, 0, 0, 0]), v4([239, 255, 255, 255]), "multicast"),
            (
                v4([255, 255, 255, 255]),
                v4([255, 255, 255, 255]),
                "broadcast",
            ),
        ],
        Family::V6 => vec![
            (0, 0, "unspecified"),
            (1, 1, "loopback"),
            (
                u128::from(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)),
                u128::MAX,
                "multicast",
            ),
        ],
    }
}

/// A set of pools, validated together (names unique, no address in two).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pools {
    /// By name.
    pub pools: BTreeMap<String, Pool>,
}

impl Pools {
    /// Adds `p` unless its name is taken or it overlaps a pool already in;
    /// the first comer wins (config pools go first, then objects, oldest first).
    pub fn add(&mut self, p: Pool) -> Result<(), PoolError> {
        if let Some(o) = self.pools.get(&p.name) {
            return Err(PoolError::Duplicate {
                pool: p.name.clone(),
                other: o.origin,
            });
        }
        for o in self.pools.values() {
            for r in &p.ranges {
                if let Some(x) = o.ranges.iter().find(|x| x.overlaps(r)) {
                    return Err(PoolError::Overlap {
                        pool: p.name.clone(),
                        entry: r.to_string(),
                        other: format!("{x} of pool {:?}", o.name),
                    });
                }
            }
        }
        self.pools.insert(p.name.clone(), p);
        Ok(())
    }

    /// The pool holding `a`.
    pub fn pool_of(&self, a: IpAddr) -> Option<&Pool> {
        self.pools.values().find(|p| p.contains(a))
    }

    /// The pools of the configuration and of the objects `(name, spec)`, in
    /// that order (objects oldest first: a new pool that overlaps an
    /// existing one is the one refused): each invalid one is left out with
    /// its error, the rest are used.
    pub fn build(config: &[Pool], objects: &[(String, PoolSpec)]) -> (Self, Vec<PoolError>) {
        let mut pools = Pools::default();
        let mut errors = Vec::new();
        for p in config {
            if let Err(e) = pools.add(p.clone()) {
                errors.push(e);
            }
        }
        for (name, spec) in objects {
            if let Err(e) = pool(name, spec, Origin::Resource).and_then(|p| pools.add(p)) {
                errors.push(e);
            }
        }
        (pools, errors)
    }
}

/// Parses `--lb-pool NAME=ADDR,ADDR` (`NAME:manual=...`: no auto-assign).
pub fn parse_flag(s: &str) -> Result<Pool, PoolError> {
    let (name, addrs) = s.split_once('=').ok_or_else(|| PoolError::Flag(s.into()))?;
    let (name, auto) = match name.split_once(':') {
        None => (name, true),
        Some((n, "manual")) => (n, false),
        Some(_) => return Err(PoolError::Flag(s.into())),
    };
    let addresses: Vec<String> = addrs
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(String::from)
        .collect();
    let spec = PoolSpec {
        addresses,
        auto_assign: Some(auto),
        service_selector: None,
    };
    pool(name.trim(), &spec, Origin::Config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(a: &[&str]) -> PoolSpec {
        PoolSpec {
            addresses: a.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn cidrs_leave_out_network_and_broadcast() {
        let p = pool("a", &spec(&["192.168.50.200/29"]), Origin::Config).unwrap();
        assert_eq!(p.ranges[0].to_string(), "192.168.50.201-192.168.50.206");
        assert_eq!(p.size(Family::V4), 6);
        let p = pool("a", &spec(&["10.0.0.0/31", "10.0.0.9/32"]), Origin::Config).unwrap();
        assert_eq!(p.size(Family::V4), 3, "/31 and /32 keep every address");
        let p = pool("a", &spec(&["fd00::/120"]), Origin::Config).unwrap();
        assert_eq!(p.size(Family::V6), 255);
        assert_eq!(p.size(Family::V4), 0);
    }

    #[test]
    fn ranges_and_single_addresses_parse() {
        let p = pool(
            "a",
            &spec(&["10.1.0.30-10.1.0.39", "10.1.0.50", " fd00::5 - fd00::9 "]),
            Origin::Config,
        )
        .unwrap();
        assert_eq!(p.size(Family::V4), 11);
        assert_eq!(p.size(Family::V6), 5);
        assert!(p.contains("10.1.0.35".parse().unwrap()));
        assert!(!p.contains("10.1.0.40".parse().unwrap()));
        assert!(p.auto_assign);
    }

    #[test]
    fn bad_pools_get_errors_that_say_what_is_wrong() {
        let err = |a: &[&str]| pool("p", &spec(a), Origin::Config).unwrap_err().to_string();
        assert_eq!(
            err(&["10.0.0.5/24"]),
            "pool \"p\": \"10.0.0.5/24\" has host bits set; the network is 10.0.0.0/24"
        );
        assert_eq!(
            err(&["10.0.0.1-fd00::1"]),
            "pool \"p\": range \"10.0.0.1-fd00::1\" mixes IPv4 and IPv6"
        );
        assert!(err(&["10.0.0.9-10.0.0.1"]).contains("ends before it starts"));
        assert!(err(&["10.0.0.0/24", "10.0.0.128/25"]).contains("overlaps \"10.0.0.0/24\""));
        assert!(err(&["224.0.0.0/24"]).contains("multicast"));
        assert!(err(&["126.255.255.250-127.0.0.2"])
            .contains("contains 127.0.0.0, which no host may use (loopback)"));
        assert!(err(&["255.255.255.255"]).contains("broadcast"));
        assert!(err(&["10.0.0.0/33"]).contains("neither a CIDR"));
        assert!(err(&["banana"]).contains("neither a CIDR"));
        assert!(err(&[]).contains("no addresses"));
        assert!(pool("Bad_Name", &spec(&["10.0.0.1"]), Origin::Config)
            .unwrap_err()
            .to_string()
            .contains("DNS label"));
    }

    #[test]
    fn pools_that_overlap_each_other_are_refused_by_name() {
        let a = parse_flag("a=10.0.0.0/28").unwrap();
        let objects = vec![
            ("b".to_string(), spec(&["10.0.0.8-10.0.0.20"])),
            ("c".to_string(), spec(&["10.0.1.0/28"])),
        ];
        let (pools, errors) = Pools::build(&[a], &objects);
        assert_eq!(pools.pools.keys().collect::<Vec<_>>(), ["a", "c"]);
        assert_eq!(errors.len(), 1);
        let (_, dup) = Pools::build(
            &[
                parse_flag("a=10.9.0.1").unwrap(),
                parse_flag("a=10.9.0.2").unwrap(),
            ],
            &[],
        );
        assert_eq!(
            dup[0].to_string(),
            "pool \"a\" is defined twice (the one from Config is used)"
        );
        assert_eq!(
            errors[0].to_string(),
            "pool \"b\": \"10.0.0.8-10.0.0.20\" overlaps 10.0.0.1-10.0.0.14 of pool \"a\""
        );
    }

    #[test]
    fn the_flag_parses() {
        let p = parse_flag("edge:manual=192.168.1.10-192.168.1.20, fd00::/124").unwrap();
        assert_eq!(
            (p.name.as_str(), p.auto_assign, p.origin),
            ("edge", false, Origin::Config)
        );
        assert_eq!(p.ranges.len(), 2);
        assert!(parse_flag("nopool").is_err());
        assert!(parse_flag("x:auto=10.0.0.1").is_err());
    }

    #[test]
    fn the_resource_spec_reads_camel_case_and_refuses_unknown_fields() {
        let s: PoolSpec = serde_json::from_value(serde_json::json!({
            "addresses": ["10.0.0.0/30"], "autoAssign": false,
            "serviceSelector": {"matchLabels": {"tier": "edge"}}}))
        .unwrap();
        let p = pool("x", &s, Origin::Resource).unwrap();
        assert!(!p.auto_assign);
        assert!(p.selects(&[("tier".to_string(), "edge".to_string())].into()));
        assert!(!p.selects(&BTreeMap::new()));
        assert!(serde_json::from_value::<PoolSpec>(
            serde_json::json!({"addresses": [], "cidrs": []})
        )
        .is_err());
    }
}
