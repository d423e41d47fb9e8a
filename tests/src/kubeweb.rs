//! `shop/web` (TCP and UDP port 80 → 8080) served to a real agent through
//! the API server double: the setup the API-driven tests share (backends
//! with servers, the double with node-0, the agent following it), the
//! EndpointSlices they publish, and the check that both frontends hold
//! exactly the backends they expect.
use std::net::Ipv4Addr;

use lb_agent::dataplane::Dataplane;
use serde_json::Value;

use crate::{
    agent::{programmed_at, Agent, WEB_CLUSTER_IP},
    apiserver::{
        objects::{self, Cond},
        ApiServer,
    },
    servers::Server,
    topology::{backend_addr, Topology, NODE_ADDR},
};

/// The node the agent runs as.
pub const NODE: &str = "node-0";

/// `web`'s EndpointSlice: backend `i` of the topology in each condition.
pub fn slice(eps: &[(usize, Cond)]) -> Value {
    objects::web_slice(&eps.iter().map(|&(i, c)| (backend_addr(i), c)).collect::<Vec<_>>(), NODE)
}

/// `web`'s EndpointSlice with backends `ids`, all ready.
pub fn ready(ids: &[usize]) -> Value {
    slice(&ids.iter().map(|&i| (i, Cond::Ready)).collect::<Vec<_>>())
}

/// Whether both frontends of `web` have exactly `ids` in their slots.
pub fn holds(dp: &Dataplane, ids: &[usize]) -> bool {
    let mut want: Vec<Ipv4Addr> = ids.iter().map(|&i| backend_addr(i)).collect();
    want.sort();
    [6, 17].iter().all(|&proto| {
        programmed_at(dp, WEB_CLUSTER_IP, 80, proto).is_some_and(|(_, mut got)| {
            got.sort();
            got == want
        })
    })
}

/// `n` backends with servers, the double with node-0, `web` and `first`,
/// and the agent (`run` with `args` more) following it.
pub fn setup(n: usize, first: Value, args: &[&str]) -> (Topology, Vec<Option<Server>>, ApiServer, Agent, Dataplane) {
    let t = Topology::new(n);
    let servers = (0..n).map(|i| Some(Server::start(&t.backends[i], 8080, &format!("backend-{i}")))).collect();
    let api = ApiServer::start_in(&t.node);
    api.apply(objects::node(NODE, NODE_ADDR));
    api.apply(objects::web_tcp_udp(WEB_CLUSTER_IP));
    api.apply(first);
    let mut agent = Agent::start_kube(&t.node, &api, args);
    let dp = agent.maps();
    (t, servers, api, agent, dp)
}
