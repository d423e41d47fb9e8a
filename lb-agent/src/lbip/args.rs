//! `lb-agent run`'s options for LoadBalancer addresses (flattened into
//! `RunArgs`), and the [`Settings`] they make.
use std::time::Duration;

use clap::Args;

use super::{alloc, controller::Election, leader, members, pool, Settings};

#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "LoadBalancer addresses (pools, allocation, ARP)")]
pub struct LbArgs {
    /// Hand out and announce LoadBalancer addresses: pools from
    /// `LoadBalancerPool` objects (and --lb-pool), one agent allocates
    /// (a Lease), the owner node of each address answers ARP for it.
    /// Implied by --lb-pool.
    #[arg(long)]
    pub lb_addresses: bool,
    /// An address pool: NAME=ADDRS, ADDRS a comma-separated list of CIDRs
    /// and ranges of either family (`lan=192.168.1.240/28,fd00::/120`);
    /// NAME:manual=ADDRS for a pool only used on request (repeat for several).
    #[arg(long = "lb-pool", value_name = "NAME=ADDRS", value_parser = parse_pool)]
    pub lb_pools: Vec<pool::Pool>,
    /// The `loadBalancerClass` served.
    #[arg(long, value_name = "CLASS", default_value = alloc::DEFAULT_CLASS)]
    pub lb_class: String,
    /// Leave Services without a `loadBalancerClass` alone (another load
    /// balancer is the cluster's default).
    #[arg(long)]
    pub lb_not_default: bool,
    /// Interface ARP for LoadBalancer addresses is answered on. Default:
    /// the first --iface.
    #[arg(long, value_name = "IFACE")]
    pub lb_announce_iface: Option<String>,
    /// Do not answer ARP (an upstream router or BGP speaker routes the
    /// addresses to the nodes).
    #[arg(long)]
    pub lb_no_announce: bool,
    /// UDP port of the heartbeats between agents (node addresses).
    #[arg(long, value_name = "PORT", default_value_t = members::DEFAULT_PORT)]
    pub lb_heartbeat_port: u16,
    /// Milliseconds between heartbeats; a node is dead after 5 missed.
    /// Failover takes up to 5 heartbeats plus 100 ms.
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(20..=10_000))]
    pub lb_heartbeat_ms: u64,
    /// Namespace of the allocator's Lease (default: the pod's, POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "xdplb-system")]
    pub lb_lease_namespace: String,
    /// Seconds a Lease not renewed stays its holder's: how long allocation
    /// pauses when the allocating agent dies (announcement does not pause).
    #[arg(long, value_name = "SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub lb_lease_duration: u64,
}

/// The name of the allocator's Lease.
pub const LEASE_NAME: &str = "xdplb-lb-allocator";

fn parse_pool(s: &str) -> Result<pool::Pool, String> {
    pool::parse_flag(s).map_err(|e| e.to_string())
}

impl LbArgs {
    /// Whether anything is asked.
    pub fn enabled(&self) -> bool {
        self.lb_addresses || !self.lb_pools.is_empty()
    }

    /// The settings for node `node_name` with uplinks `ifaces`; `kube`:
    /// whether the API is the source (the only way to allocate).
    pub fn settings(&self, node_name: &str, ifaces: &[String], kube: bool) -> Settings {
        let every = Duration::from_millis(self.lb_heartbeat_ms);
        Settings {
            node_name: node_name.to_string(),
            pools: self.lb_pools.clone(),
            alloc: alloc::Config {
                class: self.lb_class.clone(),
                default_class: !self.lb_not_default,
            },
            election: kube.then(|| Election {
                namespace: self.lb_lease_namespace.clone(),
                name: LEASE_NAME.into(),
                identity: node_name.to_string(),
                timings: leader::Timings::for_duration(Duration::from_secs(self.lb_lease_duration)),
            }),
            announce_iface: if self.lb_no_announce {
                None
            } else {
                self.lb_announce_iface
                    .clone()
                    .or_else(|| ifaces.first().cloned())
            },
            heartbeat_port: self.lb_heartbeat_port,
            heartbeat: members::Timings {
                every,
                dead_after: every * 5,
            },
        }
    }
}
