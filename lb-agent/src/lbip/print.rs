//! `lb-agent lb-addresses`: the pools, their usage and the owner of every
//! address, as the agent on this node last wrote them (its status file).
use std::fmt::Write as _;

use super::View;

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
    let _ = writeln!(
        out,
        "\n{:<20} {:<6} {:>10} {:>10}",
        "POOL", "FAMILY", "ALLOCATED", "FREE"
    );
    for p in &v.pools {
        let _ = writeln!(
            out,
            "{:<20} {:<6} {:>10} {:>10}",
            p.pool, p.family, p.allocated, p.free
        );
    }
    let _ = writeln!(
        out,
        "\n{:<18} {:<16} {:<14} SERVICES",
        "ADDRESS", "POOL", "OWNER"
    );
    for a in &v.addresses {
        let owner = match a.owner.as_deref() {
            Some(o) if o == v.node => format!("{o} (here)"),
            Some(o) => o.to_string(),
            None => "none".into(),
        };
        let _ = writeln!(
            out,
            "{:<18} {:<16} {:<14} {}",
            a.address,
            a.pool,
            owner,
            a.services.join(", ")
        );
    }
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
        let m = s.metrics();
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
