//! Which node answers for each LoadBalancer address, and answering.
//!
//! The owner of an address is chosen by every agent independently, with no
//! API traffic: the candidates are the live nodes ([`super::members`]) —
//! with `externalTrafficPolicy: Local`, only those with a ready endpoint of
//! the Service — ranked by a hash of (node, address); the lowest wins. Every
//! agent sees the same Nodes, EndpointSlices and heartbeats, so they agree
//! (MetalLB's layer-2 mode ranks the same way); addresses spread over the
//! nodes. When the owner dies, the next in rank takes over within the
//! heartbeats' dead interval and sends a gratuitous ARP.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, RwLock},
};

use serde::Serialize;

use super::{
    arp::{self, ArpSocket},
    pool::Pools,
};
use crate::control::model::{Model, ObjectRef};

/// The rank of `node` for `addr`: FNV-1a over "node#addr", then a 64-bit
/// finaliser so that close names and addresses spread. Stable across
/// versions and architectures: every agent must compute the same.
pub fn rank(node: &str, addr: IpAddr) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node
        .bytes()
        .chain(*b"#")
        .chain(addr.to_string().into_bytes())
    {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finaliser.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The owner among `candidates` (ties by name, for determinism).
pub fn owner<'a>(
    addr: IpAddr,
    candidates: impl IntoIterator<Item = &'a String>,
) -> Option<&'a String> {
    candidates
        .into_iter()
        .min_by_key(|n| (rank(n, addr), n.as_str()))
}

/// One announced address: the Services on it and who answers for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Announced {
    pub address: Ipv4Addr,
    pub pool: String,
    pub services: Vec<String>,
    /// None: no candidate (Local with no ready endpoint anywhere alive).
    pub owner: Option<String>,
}

/// The owner of every pool address in the model's LoadBalancer IPs.
pub fn owners(model: &Model, pools: &Pools, live: &[String]) -> BTreeMap<Ipv4Addr, Announced> {
    // Per address: the Services, whether any is Cluster, the nodes with local endpoints.
    let mut per: BTreeMap<Ipv4Addr, (String, Vec<String>, bool, BTreeSet<String>)> =
        BTreeMap::new();
    for (id, svc) in &model.services {
        // ARP announces IPv4 addresses only.
        for a in svc.lb_ips.iter().filter_map(|a| match a {
            IpAddr::V4(a) => Some(*a),
            IpAddr::V6(_) => None,
        }) {
            let Some(pool) = pools.pool_of(IpAddr::V4(a)) else {
                continue;
            };
            let e = per
                .entry(a)
                .or_insert_with(|| (pool.name.clone(), Vec::new(), false, BTreeSet::new()));
            e.1.push(id.to_string());
            if svc.external_local {
                e.3.extend(local_nodes(model, id, svc.publish_not_ready));
            } else {
                e.2 = true;
            }
        }
    }
    per.into_iter()
        .map(|(a, (pool, services, any_cluster, local))| {
            let candidates = live.iter().filter(|n| any_cluster || local.contains(*n));
            let owner = owner(IpAddr::V4(a), candidates).cloned();
            (
                a,
                Announced {
                    address: a,
                    pool,
                    services,
                    owner,
                },
            )
        })
        .collect()
}

/// Nodes with a ready endpoint of the Service `id`.
fn local_nodes(model: &Model, id: &ObjectRef, all_ready: bool) -> BTreeSet<String> {
    model
        .slices
        .iter()
        .filter(|(sid, s)| sid.namespace == id.namespace && s.service == id.name)
        .flat_map(|(_, s)| s.endpoints.iter())
        .filter(|e| e.ready || all_ready)
        .filter_map(|e| e.node_name.clone())
        .collect()
}

/// What the announcer did: takeovers (address, previous owner).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub taken: Vec<(Ipv4Addr, Option<String>)>,
    pub released: Vec<Ipv4Addr>,
}

/// The addresses this node answers for, shared with the responder thread.
pub type Owned = Arc<RwLock<BTreeSet<Ipv4Addr>>>;

/// Keeps the owned set in step with the owners, and announces takeovers.
pub struct Announcer {
    me: String,
    owned: Owned,
    sock: Option<ArpSocket>,
    /// Every address's owner at the last step (on every node, to count failovers).
    last: BTreeMap<Ipv4Addr, Option<String>>,
}

impl Announcer {
    /// `sock`: None to compute owners without answering (no interface).
    pub fn new(me: &str, sock: Option<ArpSocket>) -> Self {
        Self {
            me: me.into(),
            owned: Owned::default(),
            sock,
            last: BTreeMap::new(),
        }
    }

    pub fn owned(&self) -> Owned {
        self.owned.clone()
    }

    /// Applies new owners: the addresses this node gains are announced with
    /// a gratuitous ARP (sent twice, 300 ms apart, by the caller's next
    /// [`Announcer::repeat`]); returns what changed here.
    pub fn update(&mut self, owners: &BTreeMap<Ipv4Addr, Announced>) -> Step {
        let mut step = Step::default();
        let mine: BTreeSet<Ipv4Addr> = owners
            .values()
            .filter(|a| a.owner.as_deref() == Some(self.me.as_str()))
            .map(|a| a.address)
            .collect();
        let before = self.owned.read().unwrap_or_else(|e| e.into_inner()).clone();
        for &a in mine.difference(&before) {
            let previous = self.last.get(&a).cloned().flatten();
            step.taken.push((a, previous));
        }
        step.released = before.difference(&mine).copied().collect();
        *self.owned.write().unwrap_or_else(|e| e.into_inner()) = mine;
        self.last = owners.iter().map(|(a, x)| (*a, x.owner.clone())).collect();
        for (a, _) in &step.taken {
            self.garp(*a);
        }
        step
    }

    /// Sends a gratuitous ARP for `a` (failures logged: a link that is down).
    pub fn garp(&self, a: Ipv4Addr) {
        if let Some(s) = &self.sock {
            if let Err(e) = s.send(&arp::gratuitous(s.mac, a)) {
                tracing::debug!(address = %a, error = %e, "sending a gratuitous ARP failed");
            }
        }
    }
}

/// Answers ARP requests for the owned addresses until the socket fails;
/// counts the replies in `replies`.
pub fn respond(sock: ArpSocket, owned: Owned, replies: Arc<std::sync::atomic::AtomicU64>) {
    let mut buf = [0u8; 1514];
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(error = %e, "the ARP socket failed: LoadBalancer addresses are no longer answered by this node");
                return;
            }
        };
        let Some(req) = arp::parse_request(&buf[..n]) else {
            continue;
        };
        // A gratuitous ARP (ours or another node's) is not a question.
        if req.sender_ip == req.target_ip
            || !owned
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&req.target_ip)
        {
            continue;
        }
        match sock.send(&arp::reply(sock.mac, &req)) {
            Ok(()) => {
                replies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(address = %req.target_ip, error = %e, "sending an ARP reply failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lbip::pool::parse_flag;

    fn model(yaml: &str) -> Model {
        let mut m = Model::default();
        m.add_yaml(yaml, "test");
        m
    }

    const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {namespace: demo, name: web}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, protocol: TCP, nodePort: 30080}]
status: {loadBalancer: {ingress: [{ip: 192.168.50.201}]}}
---
apiVersion: v1
kind: Service
metadata: {namespace: demo, name: local}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.11
  externalTrafficPolicy: Local
  ports: [{name: http, port: 80, protocol: TCP, nodePort: 30081}]
status: {loadBalancer: {ingress: [{ip: 192.168.50.202}, {ip: 203.0.113.9}]}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {namespace: demo, name: local-1, labels: {kubernetes.io/service-name: local}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.244.2.10], nodeName: node-2, conditions: {ready: true}}
- {addresses: [10.244.3.10], nodeName: node-3, conditions: {ready: false}}
"#;

    fn nodes(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn every_node_agrees_and_the_next_in_rank_takes_over() {
        let m = model(SERVICES);
        let (pools, _) = Pools::build(&[parse_flag("lan=192.168.50.200/29").unwrap()], &[]);
        let all = nodes(&["node-1", "node-2", "node-3"]);
        let o = owners(&m, &pools, &all);
        assert_eq!(o.len(), 2, "203.0.113.9 is in no pool: not announced");
        let web = o[&Ipv4Addr::new(192, 168, 50, 201)].owner.clone().unwrap();
        // The same answer from any order of the live list.
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(
            owners(&m, &pools, &rev)[&Ipv4Addr::new(192, 168, 50, 201)]
                .owner
                .as_ref(),
            Some(&web)
        );
        // The owner dies: the next in rank, never the dead one.
        let rest: Vec<String> = all.iter().filter(|n| **n != web).cloned().collect();
        let next = owners(&m, &pools, &rest)[&Ipv4Addr::new(192, 168, 50, 201)]
            .owner
            .clone()
            .unwrap();
        let mut ranked = all.clone();
        ranked.sort_by_key(|n| rank(n, "192.168.50.201".parse().unwrap()));
        assert_eq!((ranked[0].clone(), ranked[1].clone()), (web, next));
    }

    #[test]
    fn local_services_are_announced_only_where_a_ready_endpoint_runs() {
        let m = model(SERVICES);
        let (pools, _) = Pools::build(&[parse_flag("lan=192.168.50.200/29").unwrap()], &[]);
        let o = owners(&m, &pools, &nodes(&["node-1", "node-2", "node-3"]));
        assert_eq!(
            o[&Ipv4Addr::new(192, 168, 50, 202)].owner.as_deref(),
            Some("node-2")
        );
        let o = owners(&m, &pools, &nodes(&["node-1", "node-3"]));
        assert_eq!(
            o[&Ipv4Addr::new(192, 168, 50, 202)].owner,
            None,
            "node-3's endpoint is not ready"
        );
    }

    #[test]
    fn ranks_spread_addresses_over_nodes() {
        let all = nodes(&["node-1", "node-2", "node-3"]);
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for i in 1..=240u8 {
            *per.entry(
                owner(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i)), &all)
                    .unwrap()
                    .clone(),
            )
            .or_default() += 1;
        }
        assert_eq!(per.len(), 3);
        assert!(per.values().all(|&n| n > 40), "{per:?}");
    }

    #[test]
    fn takeovers_name_the_previous_owner() {
        let mut a = Announcer::new("node-2", None);
        let ann = |owner: &str| {
            let x = Announced {
                address: Ipv4Addr::new(10, 0, 0, 1),
                pool: "p".into(),
                services: vec![],
                owner: Some(owner.into()),
            };
            BTreeMap::from([(x.address, x)])
        };
        assert_eq!(a.update(&ann("node-1")), Step::default());
        let s = a.update(&ann("node-2"));
        assert_eq!(
            s.taken,
            [(Ipv4Addr::new(10, 0, 0, 1), Some("node-1".to_string()))]
        );
        assert!(a
            .owned()
            .read()
            .unwrap()
            .contains(&Ipv4Addr::new(10, 0, 0, 1)));
        let s = a.update(&ann("node-3"));
        assert_eq!(s.released, [Ipv4Addr::new(10, 0, 0, 1)]);
    }
}
