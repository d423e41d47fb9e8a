//! The Prometheus families of LoadBalancer addresses, read from [`Status`]
//! at each scrape (a prometheus-client collector the agent registers).
use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::DescriptorEncoder,
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};

use super::Status;
use crate::ops::families::{family, one};

impl Collector for Status {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let v = self.view();
        family(
            &mut enc,
            "xdplb_lb_pool_addresses",
            "LoadBalancer pool addresses by state (allocated: in some Service's status.loadBalancer.ingress).",
            v.pools.iter().flat_map(|p| {
                [("allocated", p.allocated), ("free", p.free)]
                    .map(|(state, n)| ([("pool", p.pool.as_str()), ("family", p.family.as_str()), ("state", state)], ConstGauge::new(n)))
            }),
        )?;
        one(&mut enc, "xdplb_lb_address_failovers_total", "LoadBalancer addresses this node took over from another node.", ConstCounter::new(v.failovers))?;
        family(
            &mut enc,
            "xdplb_lb_address_owner",
            "The node answering ARP/NDP for each LoadBalancer address (value 1; owner=\"\" when none may).",
            v.addresses.iter().map(|a| {
                let mine = a.owner.as_deref() == Some(v.node.as_str());
                let labels = [("address", a.address.as_str()), ("pool", a.pool.as_str()), ("owner", a.owner.as_deref().unwrap_or("")), ("mine", if mine { "true" } else { "false" })];
                (labels, ConstGauge::new(1))
            }),
        )?;
        one(&mut enc, "xdplb_lb_arp_replies_total", "ARP replies this node sent for LoadBalancer addresses.", ConstCounter::new(v.arp_replies))?;
        one(
            &mut enc,
            "xdplb_lb_ndp_replies_total",
            "Neighbour Advertisements this node sent in answer to solicitations for LoadBalancer addresses.",
            ConstCounter::new(v.ndp_replies),
        )?;
        one(&mut enc, "xdplb_lb_allocator_leader", "1 while this agent holds the allocator lease.", ConstGauge::new(i64::from(v.leader)))
    }
}
