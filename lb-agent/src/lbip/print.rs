//! `lb-agent lb-addresses`: the pools, their usage and the owner of every
//! address, as the agent on this node last wrote them (its status file).
use std::fmt::Write as _;

use super::View;
use crate::table::{left, right, Table};

/// The view as a table.
pub fn table(v: &View) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {}  allocator: {}  live nodes: {}",
        v.node,
        if v.leader {
            "this agent (lease holder)".to_string()
        } else {
            format!(
                "{} (lease holder)",
                if v.lease_holder.is_empty() {
                    "none seen"
                } else {
                    &v.lease_holder
                }
            )
        },
        v.live_nodes.join(", ")
    );
    let _ = writeln!(
        out,
        "failovers taken by this node: {}  ARP replies sent: {}  NDP advertisements sent: {}",
        v.failovers, v.arp_replies, v.ndp_replies
    );
    let mut pools = Table::new(&[left("POOL", 20), left("FAMILY", 6), right("ALLOCATED", 10), right("FREE", 10)]);
    for p in &v.pools {
        pools.row([p.pool.clone(), p.family.clone(), p.allocated.to_string(), p.free.to_string()]);
    }
    let mut addresses = Table::new(&[left("ADDRESS", 18), left("POOL", 16), left("OWNER", 14), left("SERVICES", 0)]);
    for a in &v.addresses {
        let owner = match a.owner.as_deref() {
            Some(o) if o == v.node => format!("{o} (here)"),
            Some(o) => o.to_string(),
            None => "none".into(),
        };
        addresses.row([a.address.clone(), a.pool.clone(), owner, a.services.join(", ")]);
    }
    let _ = write!(out, "\n{pools}\n{addresses}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lbip::{AddressRow, PoolRow, Status};

    #[test]
    fn the_table_and_the_metrics_name_pools_owners_and_failovers() {
        let v = View {
            node: "node-2".into(),
            leader: false,
            lease_holder: "node-1".into(),
            pools: vec![PoolRow {
                pool: "lan".into(),
                family: "IPv4".into(),
                allocated: 2,
                free: 4,
            }],
            addresses: vec![AddressRow {
                address: "192.168.50.201".into(),
                pool: "lan".into(),
                services: vec!["demo/web".into()],
                owner: Some("node-2".into()),
            }],
            failovers: 1,
            arp_replies: 7,
            ndp_replies: 3,
            live_nodes: vec!["node-1".into(), "node-2".into()],
        };
        let t = table(&v);
        assert!(t.contains("node-1 (lease holder)"), "{t}");
        assert!(
            t.contains("ARP replies sent: 7  NDP advertisements sent: 3"),
            "{t}"
        );
        assert!(
            t.contains("lan                  IPv4            2          4"),
            "{t}"
        );
        assert!(
            t.contains("192.168.50.201     lan              node-2 (here)  demo/web"),
            "{t}"
        );
        let s = Status::default();
        *s.view.lock().unwrap() = v;
        s.failovers.store(1, std::sync::atomic::Ordering::Relaxed);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(s));
        let m = crate::ops::families::text(&registry);
        for line in [
            "xdplb_lb_pool_addresses{pool=\"lan\",family=\"IPv4\",state=\"allocated\"} 2",
            "xdplb_lb_pool_addresses{pool=\"lan\",family=\"IPv4\",state=\"free\"} 4",
            "xdplb_lb_address_failovers_total 1",
            "xdplb_lb_address_owner{address=\"192.168.50.201\",pool=\"lan\",owner=\"node-2\",mine=\"true\"} 1",
            "# TYPE xdplb_lb_pool_addresses gauge",
            "# TYPE xdplb_lb_address_failovers_total counter",
            "# TYPE xdplb_lb_ndp_replies_total counter",
        ] {
            assert!(m.lines().any(|l| l == line), "{line} not in\n{m}");
        }
    }
}
