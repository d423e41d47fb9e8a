//! What the LoadBalancer-address tests read from a cluster, for either
//! family: who a node says owns an address, a node's MAC, and the client's
//! neighbour entry (ARP or NDP) for an address.
use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_agent::lbip::read_status;
use serde_json::Value;

use crate::{
    cluster::{Cluster, UPLINK},
    netns::Netns,
    wait_for,
};

/// The owner of `addr` as node `i`'s agent reports it.
pub fn owner_seen_by(c: &Cluster, i: usize, addr: impl Into<IpAddr>) -> Option<String> {
    let addr = addr.into().to_string();
    let v = read_status(&c.node(i).pin_dir).ok()?;
    v.addresses.iter().find(|a| a.address == addr)?.owner.clone()
}

/// The MAC of `ns`'s uplink.
pub fn uplink_mac(ns: &Netns) -> String {
    let out: Value = serde_json::from_str(&ns.ip(&["-j", "link", "show", UPLINK])).expect("ip -j link");
    out[0]["address"].as_str().unwrap_or_default().to_string()
}

/// The client's neighbour entry for `addr`: its MAC, if resolved.
pub fn neighbour(c: &Cluster, addr: impl Into<IpAddr>) -> Option<String> {
    let addr = addr.into();
    let family = if addr.is_ipv6() { "-6" } else { "-4" };
    let out: Value = serde_json::from_str(&c.client.ip(&["-j", family, "neigh", "show", &addr.to_string(), "dev", UPLINK])).ok()?;
    out[0]["lladdr"].as_str().map(String::from)
}

/// Node `owner` fails (uplink down, agent killed); waits up to 15 s for the
/// client's neighbour entry for `addr` to name `next_mac`. Returns whether
/// it did, and how long after the failure.
pub fn fail_owner(c: &mut Cluster, owner: usize, addr: impl Into<IpAddr>, next_mac: &str) -> (bool, Duration) {
    let addr = addr.into();
    c.uplink_down(owner);
    c.node_mut(owner).kill_agent();
    let down = Instant::now();
    let moved = wait_for(Duration::from_secs(15), || neighbour(c, addr).as_deref() == Some(next_mac));
    (moved, down.elapsed())
}
