//! Which node answers for each LoadBalancer address, and answering.
//!
//! The owner of an address is chosen by every agent independently, with no
//! API traffic: the candidates are the live nodes ([`super::members`]) —
//! with `externalTrafficPolicy: Local`, only those with a ready endpoint of
//! the Service — ranked by a hash of (node, address); the lowest wins. Every
//! agent sees the same Nodes, EndpointSlices and heartbeats, so they agree
//! (MetalLB's layer-2 mode ranks the same way); addresses spread over the
//! nodes. When the owner dies, the next in rank takes over within the
//! heartbeats' dead interval and announces it: a gratuitous ARP (IPv4) or
//! an unsolicited Neighbour Advertisement (IPv6).
//!
//! One announcer, two protocols ([`Proto`]): each has its packet socket
//! ([`super::link`]) and responder thread; the owned set is shared.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, RwLock,
    },
};

use serde::Serialize;

use super::{arp, link::LinkSocket, ndp, pool::Pools};
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
    pub address: IpAddr,
    pub pool: String,
    pub services: Vec<String>,
    /// None: no candidate (Local with no ready endpoint anywhere alive).
    pub owner: Option<String>,
}

/// The owner of every pool address in the model's LoadBalancer IPs.
pub fn owners(model: &Model, pools: &Pools, live: &[String]) -> BTreeMap<IpAddr, Announced> {
    // Per address: the Services, whether any is Cluster, the nodes with local endpoints.
    let mut per: BTreeMap<IpAddr, (String, Vec<String>, bool, BTreeSet<String>)> = BTreeMap::new();
    for (id, svc) in &model.services {
        for &a in &svc.lb_ingress {
            let Some(pool) = pools.pool_of(a) else {
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
            let owner = owner(a, candidates).cloned();
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
        .filter_map(|e| e.node_name.as_deref().map(str::to_string))
        .collect()
}

/// What the announcer did: takeovers (address, previous owner).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub taken: Vec<(IpAddr, Option<String>)>,
    pub released: Vec<IpAddr>,
}

/// The addresses this node answers for, shared with the responder threads.
pub type Owned = Arc<RwLock<BTreeSet<IpAddr>>>;

fn read(owned: &Owned) -> std::sync::RwLockReadGuard<'_, BTreeSet<IpAddr>> {
    owned.read().unwrap_or_else(|e| e.into_inner())
}

/// How an address family is resolved on the link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// ARP, IPv4.
    Arp,
    /// Neighbour Discovery, IPv6.
    Ndp,
}

impl Proto {
    pub fn name(self) -> &'static str {
        match self {
            Self::Arp => "ARP",
            Self::Ndp => "NDP",
        }
    }

    /// Its packet socket on `iface`.
    pub fn open(self, iface: &str) -> std::io::Result<LinkSocket> {
        match self {
            Self::Arp => LinkSocket::open(iface, arp::ETH_P_ARP, None),
            Self::Ndp => LinkSocket::open(iface, ndp::ETH_P_IPV6, Some(&ndp::filter())),
        }
    }

    /// The frame that answers `frame` from `mac`, if it asks for an address
    /// in `owned`: (the address, whether the question was a DAD probe, the
    /// answer).
    pub fn answer(
        self,
        mac: [u8; 6],
        frame: &[u8],
        owned: &BTreeSet<IpAddr>,
    ) -> Option<(IpAddr, bool, Vec<u8>)> {
        match self {
            Self::Arp => {
                let req = arp::parse_request(frame)?;
                // A gratuitous ARP (ours or another node's) is not a question.
                let ours =
                    req.sender_ip != req.target_ip && owned.contains(&IpAddr::V4(req.target_ip));
                ours.then(|| (req.target_ip.into(), false, arp::reply(mac, &req).to_vec()))
            }
            Self::Ndp => {
                let ns = ndp::parse_solicitation(frame)?;
                owned
                    .contains(&IpAddr::V6(ns.target))
                    .then(|| (ns.target.into(), ns.is_dad(), ndp::answer(mac, &ns)))
            }
        }
    }

    /// What announces `addr` at `mac` to the whole segment.
    pub fn announcement(mac: [u8; 6], addr: IpAddr) -> Vec<u8> {
        match addr {
            IpAddr::V4(a) => arp::gratuitous(mac, a).to_vec(),
            IpAddr::V6(a) => ndp::unsolicited(mac, a),
        }
    }
}

/// The uplink's two packet sockets, and the IPv6 groups joined on it.
#[derive(Debug)]
pub struct Link {
    pub arp: LinkSocket,
    pub ndp: LinkSocket,
    groups: ndp::Groups,
}

impl Link {
    pub fn open(iface: &str) -> std::io::Result<Self> {
        Ok(Self {
            arp: Proto::Arp.open(iface)?,
            ndp: Proto::Ndp.open(iface)?,
            groups: ndp::Groups::new(),
        })
    }
}

/// Keeps the owned set in step with the owners, and announces takeovers.
pub struct Announcer {
    me: String,
    owned: Owned,
    link: Option<Link>,
    /// Every address's owner at the last step (on every node, to count failovers).
    last: BTreeMap<IpAddr, Option<String>>,
}

impl Announcer {
    /// `link`: None to compute owners without answering (no interface).
    pub fn new(me: &str, link: Option<Link>, owned: Owned) -> Self {
        Self {
            me: me.into(),
            owned,
            link,
            last: BTreeMap::new(),
        }
    }

    pub fn owned(&self) -> Owned {
        self.owned.clone()
    }

    /// Applies new owners: the addresses this node gains are announced (and
    /// once more by the caller's later [`Announcer::announce`]); the IPv6
    /// ones' solicited-node groups are joined first, so the solicitations
    /// that follow the announcement arrive. Returns what changed here.
    pub fn update(&mut self, owners: &BTreeMap<IpAddr, Announced>) -> Step {
        let mut step = Step::default();
        let mine: BTreeSet<IpAddr> = owners
            .values()
            .filter(|a| a.owner.as_deref() == Some(self.me.as_str()))
            .map(|a| a.address)
            .collect();
        let before = read(&self.owned).clone();
        for &a in mine.difference(&before) {
            let previous = self.last.get(&a).cloned().flatten();
            step.taken.push((a, previous));
        }
        step.released = before.difference(&mine).copied().collect();
        if let Some(link) = &mut self.link {
            let v6 = mine.iter().filter_map(|a| match a {
                IpAddr::V6(a) => Some(*a),
                IpAddr::V4(_) => None,
            });
            link.groups.set(&link.ndp, v6);
        }
        *self.owned.write().unwrap_or_else(|e| e.into_inner()) = mine;
        self.last = owners.iter().map(|(a, x)| (*a, x.owner.clone())).collect();
        for (a, _) in &step.taken {
            self.announce(*a);
        }
        step
    }

    /// Announces `a` to the segment (failures logged: a link that is down).
    pub fn announce(&self, a: IpAddr) {
        let Some(link) = &self.link else { return };
        let sock = if a.is_ipv4() { &link.arp } else { &link.ndp };
        if let Err(e) = sock.send(&Proto::announcement(sock.mac, a)) {
            tracing::debug!(address = %a, error = %e, "sending an announcement failed");
        }
    }
}

/// Answers the `proto` questions for the owned addresses until the socket
/// fails; counts the answers in `replies`.
pub fn respond(sock: LinkSocket, proto: Proto, owned: Owned, replies: Arc<AtomicU64>) {
    let mut buf = [0u8; 1514];
    let mut dad_seen = BTreeSet::new();
    loop {
        let n = match sock.recv(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!(proto = proto.name(), error = %e, "the packet socket failed: LoadBalancer addresses are no longer answered by this node");
                return;
            }
        };
        let Some((addr, dad, answer)) = proto.answer(sock.mac, &buf[..n], &read(&owned)) else {
            continue;
        };
        if dad && dad_seen.insert(addr) {
            let from: Vec<String> = buf[6..12].iter().map(|b| format!("{b:02x}")).collect();
            tracing::warn!(address = %addr, from = %from.join(":"), "a host on the segment probes (DAD) for a LoadBalancer address this node owns: answered, so that it does not take it");
        }
        match sock.send(&answer) {
            Ok(()) => {
                replies.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                tracing::debug!(proto = proto.name(), address = %addr, error = %e, "sending an answer failed")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lbip::pool::parse_flag;

    fn ip4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::from([a, b, c, d])
    }

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
        let web = o[&ip4(192, 168, 50, 201)].owner.clone().unwrap();
        // The same answer from any order of the live list.
        let mut rev = all.clone();
        rev.reverse();
        assert_eq!(
            owners(&m, &pools, &rev)[&ip4(192, 168, 50, 201)]
                .owner
                .as_ref(),
            Some(&web)
        );
        // The owner dies: the next in rank, never the dead one.
        let rest: Vec<String> = all.iter().filter(|n| **n != web).cloned().collect();
        let next = owners(&m, &pools, &rest)[&ip4(192, 168, 50, 201)]
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
        assert_eq!(o[&ip4(192, 168, 50, 202)].owner.as_deref(), Some("node-2"));
        let o = owners(&m, &pools, &nodes(&["node-1", "node-3"]));
        assert_eq!(
            o[&ip4(192, 168, 50, 202)].owner,
            None,
            "node-3's endpoint is not ready"
        );
    }

    #[test]
    fn ranks_spread_addresses_over_nodes() {
        let all = nodes(&["node-1", "node-2", "node-3"]);
        let mut per: BTreeMap<String, usize> = BTreeMap::new();
        for i in 1..=240u8 {
            *per.entry(owner(ip4(10, 0, 0, i), &all).unwrap().clone())
                .or_default() += 1;
        }
        assert_eq!(per.len(), 3);
        assert!(per.values().all(|&n| n > 40), "{per:?}");
    }

    #[test]
    fn takeovers_name_the_previous_owner() {
        let mut a = Announcer::new("node-2", None, Owned::default());
        let ann = |owner: &str| {
            let x = Announced {
                address: ip4(10, 0, 0, 1),
                pool: "p".into(),
                services: vec![],
                owner: Some(owner.into()),
            };
            BTreeMap::from([(x.address, x)])
        };
        assert_eq!(a.update(&ann("node-1")), Step::default());
        let s = a.update(&ann("node-2"));
        assert_eq!(s.taken, [(ip4(10, 0, 0, 1), Some("node-1".to_string()))]);
        assert!(a.owned().read().unwrap().contains(&ip4(10, 0, 0, 1)));
        let s = a.update(&ann("node-3"));
        assert_eq!(s.released, [ip4(10, 0, 0, 1)]);
    }

    #[test]
    fn ipv6_addresses_get_owners_and_are_answered_by_ndp_alone() {
        let m = model(
            r#"
apiVersion: v1
kind: Service
metadata: {namespace: demo, name: dual}
spec:
  type: LoadBalancer
  clusterIP: 10.96.0.12
  ipFamilies: [IPv4, IPv6]
  ipFamilyPolicy: RequireDualStack
  ports: [{name: http, port: 80, protocol: TCP, nodePort: 30082}]
status: {loadBalancer: {ingress: [{ip: 192.168.50.201}, {ip: 'fd00:50::201'}]}}
"#,
        );
        let (pools, errors) = Pools::build(
            &[parse_flag("lan=192.168.50.200/29,fd00:50::200/125").unwrap()],
            &[],
        );
        assert!(errors.is_empty(), "{errors:?}");
        let all = nodes(&["node-1", "node-2", "node-3"]);
        let v6: IpAddr = "fd00:50::201".parse().unwrap();
        let o = owners(&m, &pools, &all);
        assert_eq!(o.len(), 2, "{o:?}");
        assert_eq!(o[&v6].owner.as_ref(), owner(v6, &all));
        assert_eq!(o[&v6].services, ["demo/dual"]);

        use crate::lbip::ndp::tests::{hex, DAD, DAD_NA, NA, NS};
        let mac = [2, 0, 0, 0, 0, 1];
        let owned = BTreeSet::from([v6]);
        assert_eq!(
            Proto::Ndp.answer(mac, &hex(NS), &owned),
            Some((v6, false, hex(NA)))
        );
        assert_eq!(
            Proto::Ndp.answer(mac, &hex(DAD), &owned),
            Some((v6, true, hex(DAD_NA)))
        );
        assert_eq!(
            Proto::Ndp.answer(mac, &hex(NS), &BTreeSet::new()),
            None,
            "not owned: not answered"
        );
        assert_eq!(
            Proto::Arp.answer(mac, &hex(NS), &owned),
            None,
            "each protocol its own frames"
        );
        // ARP: a question for an owned address is answered, a gratuitous one is not.
        let v4 = ip4(10, 0, 0, 7);
        let owned = BTreeSet::from([v4]);
        let g = arp::gratuitous([2, 0, 0, 0, 0, 9], "10.0.0.7".parse().unwrap());
        assert_eq!(Proto::Arp.answer(mac, &g, &owned), None);
        assert_eq!(
            Proto::announcement(mac, v4),
            arp::gratuitous(mac, "10.0.0.7".parse().unwrap()).to_vec()
        );
        assert_eq!(
            Proto::announcement(mac, v6),
            hex(DAD_NA),
            "the unsolicited NA"
        );
    }
}
