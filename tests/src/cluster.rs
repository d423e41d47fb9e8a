//! A cluster in network namespaces (issue #12): N nodes on one L2 segment,
//! each with its own pod CIDR, k pods behind host-side veths routed as a
//! direct-routing CNI does, the real `lb-agent` on every node, one API
//! server double (or one YAML directory) for all, and an outside client that
//! knows only the node subnet, so a reply that bypasses the balancing node
//! fails as it does in life.
//!
//! ```text
//!                 switch ns: bridge br0 192.168.50.1/24 (API server double)
//!        ┌──────────────────┬─────────┴────────┬──────────────────┐
//!        c0                 n1                 n2                 n3    switch-side ports:
//!        │                  │                  │                  │     tx off, XDP pass
//!  client ns eth0     node-1 ns eth0     node-2 ns eth0     node-3 ns eth0
//!  192.168.50.2       192.168.50.11      192.168.50.12      192.168.50.13
//!  no pod routes      lb-agent           lb-agent           lb-agent
//!                     pod0 ── pod ns eth0 10.244.1.10/32    (10.244.2.0/24) ...
//!                     pod1 ── pod ns eth0 10.244.1.11/32
//! ```
//! - Node i: uplink `eth0` 192.168.50.(10+i)/24, ip_forward=1, pod CIDR
//!   10.244.i.0/24, a /32 route per local pod (`dev pod<j>`), and
//!   `10.244.k.0/24 via 192.168.50.(10+k)` for every other node k.
//! - Pod j of node i: 10.244.i.(10+j)/32, default route via its node's
//!   uplink address (onlink): the node answers ARP for it on `pod<j>`, so
//!   the host side needs no address.
//! - Every pod runs the test servers ([`crate::servers`]) on [`POD_PORT`],
//!   TCP and UDP, answering `node-i/pod-j`.
//! - The client has no pod routes; [`Cluster::route_service`] points a
//!   service address at a node, as an upstream router (or ECMP) would.
//! - Checksums: the client and the switch-side ports complete checksums in
//!   software, so XDP on every uplink sees complete ones (README "Limits").
//! - XDP_TX on an uplink (resets, SNAT replies) needs an XDP program on the
//!   veth peer: every switch-side port runs the bench object's `bench_pass`.
//!
//! - Dual-stack ([`Cluster::dual_stack`]): the same over IPv6 too — the
//!   client fd00:50::2, node i fd00:50::1i (hex), pod j of node i
//!   fd00:244:i::1j behind the link-local gateway fe80::1 on its host-side
//!   veth, `fd00:244:k::/64 via` node k, IPv6 forwarding on, pods serving
//!   on both families, each agent given its node's IPv6 `--node-address`.
//!
//! Nodes are numbered from 1 (`node-1`); pods from 0. Everything (agents,
//! pins, namespaces, kubeconfig, YAML, logs) goes on drop, also on panic.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket},
    path::PathBuf,
    process::Child,
    sync::{
        atomic::{AtomicU32, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use aya::{
    programs::{Xdp, XdpMode},
    Ebpf,
};
use lb_agent::dataplane::Dataplane;
use serde_json::{json, Value};

use crate::{
    agent::{attached_count, programmed_ip, spawn_run_on, sync_writes, wait_running},
    apiserver::{objects, ApiServer, Resource},
    netns::Netns,
    servers::{http_request_within, Server, PEER_PATH},
    topology::{addr_up, veth},
    wait_for,
};

/// Every node's uplink.
pub const UPLINK: &str = "eth0";
/// The switch's own address on the bridge (the API server double's).
pub const BRIDGE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 2);
/// The port every pod's servers listen on (TCP and UDP).
pub const POD_PORT: u16 = 8080;
/// The Kubernetes namespace of the services the helpers create.
pub const NAMESPACE: &str = "demo";
pub const TCP: u8 = 6;
pub const UDP: u8 = 17;
/// Connect, read and UDP answer timeout of the client helpers: short, so a
/// blackholed connection counts as a failure fast, but past TCP's first SYN
/// retransmission (1 s): at 1 s, one request in 200 failed on a machine
/// loaded by the whole suite.
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(2500);
/// Requests in flight at once in the client helpers.
const WORKERS: usize = 16;

pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

/// Node `i`'s uplink address, 192.168.50.(10+i).
pub fn node_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, 10 + i as u8)
}

/// The segment's IPv6 prefix (/64), given by [`Cluster::enable_ipv6`]:
/// the bridge is ::1, the client ::2, node `i` [`node_addr6`].
pub const PREFIX6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0);
pub const CLIENT_ADDR6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 2);

/// Node `i`'s IPv6 uplink address, fd00:50::1i (hex, as the IPv4 one reads).
pub fn node_addr6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x10 + i as u16)
}

pub fn pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// Node `i`'s IPv6 pod CIDR, fd00:244:i::/64 (dual-stack clusters).
pub fn pod_cidr6(i: usize) -> String {
    format!("fd00:244:{i:x}::/64")
}

/// Pod `j` of node `i`, 10.244.i.(10+j).
pub fn pod_addr(i: usize, j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i as u8, 10 + j as u8)
}

/// Pod `j` of node `i`'s IPv6 address, fd00:244:i::1j (dual-stack clusters).
pub fn pod_addr6(i: usize, j: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x244, i as u16, 0, 0, 0, 0, 0x10 + j as u16)
}

/// Pod `j` of node `i`'s address of `family`'s family.
pub fn pod_ip(family: IpAddr, i: usize, j: usize) -> IpAddr {
    match family {
        IpAddr::V4(_) => pod_addr(i, j).into(),
        IpAddr::V6(_) => pod_addr6(i, j).into(),
    }
}

/// Node `i`'s uplink address of `family`'s family.
pub fn node_ip(family: IpAddr, i: usize) -> IpAddr {
    match family {
        IpAddr::V4(_) => node_addr(i).into(),
        IpAddr::V6(_) => node_addr6(i).into(),
    }
}

/// What a pod's host-side veth is to the pod over IPv6: its gateway (a
/// link-local address, as IPv6 CNIs use; the node answers NDP for it there).
const POD_GW6: &str = "fe80::1";

/// What pod `j` of node `i` answers with.
pub fn pod_identity(i: usize, j: usize) -> String {
    format!("node-{i}/pod-{j}")
}

/// Where the agents get their objects from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `--source kube`: one API server double on the bridge for all nodes.
    Kube,
    /// `--source file:DIR`: one YAML directory shared by all nodes.
    File,
}

enum Objects {
    Kube { api: ApiServer, kubeconfig: PathBuf },
    File { dir: PathBuf },
}

/// One node: its namespace, pods, and agent.
pub struct Node {
    pub index: usize,
    agent: Option<Child>,
    /// Sync lines in the (appended) log when the current agent started.
    syncs_at_start: usize,
    /// Agents that had attached on this node's log before the current one.
    attached_before: usize,
    pub pin_dir: PathBuf,
    log: PathBuf,
    /// `lb-agent run` arguments after `--iface` and `--pin-path`.
    args: Vec<String>,
    pub pods: Vec<Netns>,
    pub ns: Netns,
}

pub struct Cluster {
    /// Dropped first: agents stop before their namespaces go.
    pub nodes: Vec<Node>,
    _servers: Vec<Server>,
    objects: Objects,
    pub client: Netns,
    /// Holds the switch ports' XDP links (they go with the namespace too).
    _peer_xdp: Ebpf,
    pub switch: Netns,
}

impl Cluster {
    /// `nodes` nodes (≥ 1) with `pods` pods each, agents running and synced.
    pub fn new(nodes: usize, pods: usize, source: Source) -> Self {
        Self::with_agent_args(nodes, pods, source, &[])
    }

    /// As [`Cluster::new`], every agent run with `extra` arguments too
    /// (e.g. `--lb-mode dsr`).
    pub fn with_agent_args(nodes: usize, pods: usize, source: Source, extra: &[&str]) -> Self {
        Self::build(nodes, pods, source, extra, false)
    }

    /// As [`Cluster::with_agent_args`], dual-stack: the segment, every node
    /// and every pod have an IPv6 address too ([`node_addr6`],
    /// [`pod_addr6`]), nodes forward IPv6 and route the other nodes' IPv6
    /// pod CIDRs ([`pod_cidr6`]), pods serve on both families, and each
    /// agent is given its node's IPv6 address (`--node-address`).
    pub fn dual_stack(nodes: usize, pods: usize, source: Source, extra: &[&str]) -> Self {
        Self::build(nodes, pods, source, extra, true)
    }

    fn build(nodes: usize, pods: usize, source: Source, extra: &[&str], ipv6: bool) -> Self {
        crate::require_root();
        static STALE: std::sync::Once = std::sync::Once::new();
        STALE.call_once(remove_stale);
        assert!((1..=200).contains(&nodes) && pods <= 200, "nodes 1..=200, pods ≤ 200");
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let tag = format!("xlbt-{}-cluster{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));

        let switch = Netns::new();
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        addr_up(&switch, "br0", &format!("{BRIDGE_ADDR}/24"));
        let client = Netns::new();
        veth(&client, UPLINK, &switch, "c0");
        bridge_port(&switch, "c0");
        addr_up(&client, UPLINK, &format!("{CLIENT_ADDR}/24"));
        // A host across a wire sends complete checksums, as XDP expects.
        tx_off(&client, UPLINK);

        let mut built: Vec<(Netns, Vec<Netns>)> = (1..=nodes).map(|i| build_node(i, pods, &switch)).collect();
        for (i, (ns, pods)) in built.iter_mut().enumerate() {
            if ipv6 {
                node_ipv6(ns, i + 1, pods);
            }
            pod_routes(ns, i + 1, nodes);
        }
        if ipv6 {
            segment_ipv6(&switch, &client);
        }
        let ports: Vec<String> = std::iter::once("c0".to_string()).chain((1..=nodes).map(|i| format!("n{i}"))).collect();
        let peer_xdp = switch.run(move || attach_pass(&ports));

        let servers = built
            .iter()
            .enumerate()
            .flat_map(|(i, (_, pods))| {
                pods.iter().enumerate().map(move |(j, pod)| {
                    if ipv6 {
                        Server::start_dual(pod, POD_PORT, &pod_identity(i + 1, j))
                    } else {
                        Server::start(pod, POD_PORT, &pod_identity(i + 1, j))
                    }
                })
            })
            .collect();

        let base = std::env::temp_dir().join(&tag);
        let objects = match source {
            Source::Kube => {
                let api = ApiServer::start_on(&switch, BRIDGE_ADDR);
                let kubeconfig = base.with_extension("kubeconfig");
                api.write_kubeconfig(&kubeconfig);
                Objects::Kube { api, kubeconfig }
            }
            Source::File => {
                let dir = base.with_extension("objects");
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).expect("creating the objects directory");
                Objects::File { dir }
            }
        };
        let source_args: Vec<String> = match &objects {
            Objects::Kube { kubeconfig, .. } => {
                vec!["--source".into(), "kube".into(), "--kubeconfig".into(), kubeconfig.display().to_string()]
            }
            Objects::File { dir } => vec![format!("--source=file:{}", dir.display())],
        };

        let nodes = built
            .into_iter()
            .enumerate()
            .map(|(i, (ns, pods))| {
                let index = i + 1;
                let mut args: Vec<String> = ["--pod-iface", "pod*", "--node-name", &node_name(index), "--node-address", &node_addr(index).to_string()]
                    .map(String::from)
                    .to_vec();
                if ipv6 {
                    args.extend(["--node-address".to_string(), node_addr6(index).to_string()]);
                }
                args.extend(source_args.iter().cloned());
                args.extend(extra.iter().map(|a| a.to_string()));
                let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}-node{index}"));
                let _ = std::fs::remove_dir_all(&pin_dir);
                Node { index, agent: None, syncs_at_start: 0, attached_before: 0, pin_dir, log: base.with_extension(format!("node{index}.log")), args, pods, ns }
            })
            .collect();
        let mut c = Self { nodes, _servers: servers, objects, client, _peer_xdp: peer_xdp, switch };
        for i in 1..=c.nodes.len() {
            c.apply(objects::node(&node_name(i), node_addr(i)));
        }
        // Started together, then waited for: the agents load in parallel.
        for n in &mut c.nodes {
            n.start_agent();
        }
        for n in &mut c.nodes {
            n.wait_synced();
        }
        c
    }

    /// Node `i` (from 1).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i - 1]
    }

    pub fn node_mut(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i - 1]
    }

    /// Pod `j` of node `i`.
    pub fn pod(&self, i: usize, j: usize) -> &Netns {
        &self.nodes[i - 1].pods[j]
    }

    /// Every (node, pod) pair.
    pub fn all_pods(&self) -> Vec<(usize, usize)> {
        self.nodes.iter().flat_map(|n| (0..n.pods.len()).map(move |j| (n.index, j))).collect()
    }

    /// Creates or replaces an object (Service, EndpointSlice, Node) in the source.
    pub fn apply(&self, obj: Value) {
        match &self.objects {
            Objects::Kube { api, .. } => {
                api.apply(obj);
            }
            Objects::File { dir } => {
                let yaml = serde_norway::to_string(&obj).expect("an object as YAML");
                crate::agent::write(dir, &file_name(&obj), &yaml);
            }
        }
    }

    /// Deletes an object from the source; returns whether it existed.
    pub fn delete(&self, obj: &Value) -> bool {
        match &self.objects {
            Objects::Kube { api, .. } => {
                let r = Resource::of(obj).unwrap_or_else(|| panic!("not a served kind: {obj}"));
                let ns = obj["metadata"]["namespace"].as_str().unwrap_or("");
                api.delete(r, ns, obj["metadata"]["name"].as_str().unwrap_or(""))
            }
            Objects::File { dir } => std::fs::remove_file(dir.join(file_name(obj))).is_ok(),
        }
    }

    /// The API server double (None with the file source).
    pub fn api(&self) -> Option<&ApiServer> {
        match &self.objects {
            Objects::Kube { api, .. } => Some(api),
            Objects::File { .. } => None,
        }
    }

    /// Creates `svc` and its EndpointSlice with the pods `endpoints` (node, pod).
    pub fn publish(&self, svc: &ServiceDef, endpoints: &[(usize, usize)]) {
        self.apply(svc.object());
        self.apply(svc.slice(endpoints));
    }

    /// Waits (up to 30 s) until node `i`'s maps hold exactly the pods
    /// `endpoints` (their addresses of `addr`'s family) as backends of
    /// `addr:port`/`proto`.
    pub fn wait_backends(&mut self, i: usize, addr: impl Into<IpAddr>, port: u16, proto: u8, endpoints: &[(usize, usize)]) {
        let addr = addr.into();
        let mut want: Vec<IpAddr> = endpoints.iter().map(|&(n, p)| pod_ip(addr, n, p)).collect();
        want.sort();
        let node = self.node_mut(i);
        let dp = node.maps();
        let ok = wait_for(Duration::from_secs(30), || {
            node.assert_alive();
            programmed_ip(&dp, addr, port, proto).is_some_and(|(n, mut got)| {
                got.sort();
                n as usize == want.len() && got == want
            })
        });
        assert!(
            ok,
            "node-{i} never held {want:?} for {addr}:{port}/{proto}: {:?}\n{}",
            programmed_ip(&dp, addr, port, proto),
            node.log()
        );
    }

    /// Waits (up to 30 s each) until every node holds the distinct pods
    /// `eps` as the backends of each of `svc`'s frontends (its NodePort on
    /// every node's address of its family, its ExternalIPs, LoadBalancer IP
    /// and ClusterIP), TCP and UDP. The distinct backends, not the slots: a
    /// Maglev table has thousands.
    pub fn wait_frontends(&self, svc: &ServiceDef, eps: &[(usize, usize)]) {
        let mut want: Vec<IpAddr> = eps.iter().map(|&(n, p)| pod_ip(svc.cluster_ip, n, p)).collect();
        want.sort();
        for n in &self.nodes {
            let i = n.index;
            for proto in [TCP, UDP] {
                let vips = svc.external_ips.iter().chain(&svc.lb_ip).chain(std::iter::once(&svc.cluster_ip)).map(|a| (*a, svc.port));
                let node_port = svc.node_port.map(|p| (node_ip(svc.cluster_ip, i), p));
                for (addr, port) in node_port.into_iter().chain(vips) {
                    let held = || {
                        let mut got = n.programmed_ip(addr, port, proto).map(|(_, b)| b).unwrap_or_default();
                        got.sort();
                        got.dedup();
                        got
                    };
                    assert!(wait_for(Duration::from_secs(30), || held() == want), "node-{i} never held {want:?} for {addr}:{port}/{proto}: {:?}\n{}", held(), self.logs());
                }
            }
        }
    }

    /// Routes `addr` (a host route) on the client via node `i`'s address
    /// of its family (replacing any route to it): the upstream router
    /// sending a LoadBalancer IP or ExternalIP to a node, or moving it.
    pub fn route_service(&self, addr: impl Into<IpAddr>, i: usize) {
        let addr = addr.into();
        let len = if addr.is_ipv4() { 32 } else { 128 };
        self.client.ip(&["route", "replace", &format!("{addr}/{len}"), "via", &node_ip(addr, i).to_string()]);
    }

    /// Gives the bridge, the client and every node an address of
    /// [`PREFIX6`] (no DAD: usable at once), on a cluster built IPv4-only
    /// (the agents are not told; [`Cluster::dual_stack`] does it all).
    pub fn enable_ipv6(&self) {
        segment_ipv6(&self.switch, &self.client);
        for n in &self.nodes {
            add6(&n.ns, UPLINK, node_addr6(n.index), 64);
        }
    }

    /// Takes node `i`'s uplink down (the kernel drops its routes through it).
    pub fn uplink_down(&self, i: usize) {
        self.node(i).ns.ip(&["link", "set", UPLINK, "down"]);
    }

    /// Brings node `i`'s uplink back and restores its routes to the other
    /// nodes' pod CIDRs.
    pub fn uplink_up(&self, i: usize) {
        let ns = &self.node(i).ns;
        ns.ip(&["link", "set", UPLINK, "up"]);
        pod_routes(ns, i, self.nodes.len());
    }

    /// Every agent's log, for assertion messages.
    pub fn logs(&self) -> String {
        self.nodes.iter().map(|n| format!("---- node-{} ----\n{}", n.index, n.log())).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Agents first, so nothing writes or reads while the rest goes.
        for n in &mut self.nodes {
            n.kill_agent();
        }
        match &self.objects {
            Objects::Kube { kubeconfig, .. } => {
                let _ = std::fs::remove_file(kubeconfig);
            }
            Objects::File { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// Removes what clusters of test processes that are gone (SIGKILLed) left:
/// pins, the agents' service-name files, kubeconfigs, YAML dirs, logs.
/// (Their namespaces go with [`Netns`]'s own clean-up.)
fn remove_stale() {
    for root in [PathBuf::from("/sys/fs/bpf"), PathBuf::from("/run/xdplb"), std::env::temp_dir()] {
        let Ok(dir) = std::fs::read_dir(&root) else { continue };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.contains("-cluster") && crate::netns::owner_gone(&name, &["xlbt-"]) {
                let _ = std::fs::remove_dir_all(e.path());
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Node `i`'s namespace and pods, wired to the switch.
fn build_node(i: usize, pods: usize, switch: &Netns) -> (Netns, Vec<Netns>) {
    let ns = Netns::new();
    ns.sysctl("net.ipv4.ip_forward", "1");
    // Fixed here, whatever the host's defaults: no reverse-path filter, and
    // no ICMP redirects to the client when a NodePort packet leaves by the
    // uplink it came in on (for a remote backend).
    for (key, value) in [("rp_filter", "0"), ("send_redirects", "0")] {
        for scope in ["all", "default"] {
            ns.sysctl(&format!("net.ipv4.conf.{scope}.{key}"), value);
        }
    }
    let port = format!("n{i}");
    veth(&ns, UPLINK, switch, &port);
    bridge_port(switch, &port);
    addr_up(&ns, UPLINK, &format!("{}/24", node_addr(i)));
    let gw = node_addr(i).to_string();
    let pods = (0..pods)
        .map(|j| {
            let pod = Netns::new();
            let host = format!("pod{j}");
            veth(&ns, &host, &pod, "eth0");
            ns.ip(&["link", "set", &host, "up"]);
            ns.ip(&["route", "add", &format!("{}/32", pod_addr(i, j)), "dev", &host]);
            addr_up(&pod, "eth0", &format!("{}/32", pod_addr(i, j)));
            pod.ip(&["route", "add", &gw, "dev", "eth0", "scope", "link"]);
            pod.ip(&["route", "add", "default", "via", &gw, "dev", "eth0"]);
            pod
        })
        .collect();
    (ns, pods)
}

/// Routes on node `i` to every other node's pod CIDR via that node (and
/// to their IPv6 pod CIDRs when the node has IPv6).
fn pod_routes(ns: &Netns, i: usize, nodes: usize) {
    let ipv6 = ns.ip(&["-6", "addr", "show", "dev", UPLINK]).contains(&node_addr6(i).to_string());
    for k in (1..=nodes).filter(|&k| k != i) {
        ns.ip(&["route", "replace", &pod_cidr(k), "via", &node_addr(k).to_string()]);
        if ipv6 {
            ns.ip(&["-6", "route", "replace", &pod_cidr6(k), "via", &node_addr6(k).to_string()]);
        }
    }
}

/// `a/len` on `dev` of `ns`, without duplicate address detection (usable at once).
fn add6(ns: &Netns, dev: &str, a: impl std::fmt::Display, len: u8) {
    ns.ip(&["-6", "addr", "add", &format!("{a}/{len}"), "dev", dev, "nodad"]);
}

/// The bridge's and the client's addresses of [`PREFIX6`].
fn segment_ipv6(switch: &Netns, client: &Netns) {
    add6(switch, "br0", Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 1), 64);
    add6(client, UPLINK, CLIENT_ADDR6, 64);
}

/// Node `i`'s IPv6: its uplink address, forwarding, and per pod a /128
/// route, the pod's address, and the link-local gateway [`POD_GW6`].
fn node_ipv6(ns: &Netns, i: usize, pods: &[Netns]) {
    ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    add6(ns, UPLINK, node_addr6(i), 64);
    for (j, pod) in pods.iter().enumerate() {
        let host = format!("pod{j}");
        add6(ns, &host, POD_GW6, 64);
        ns.ip(&["-6", "route", "add", &format!("{}/128", pod_addr6(i, j)), "dev", &host]);
        add6(pod, "eth0", pod_addr6(i, j), 128);
        pod.ip(&["-6", "route", "add", "default", "via", POD_GW6, "dev", "eth0"]);
    }
}

/// Enslaves `port` to the bridge, brings it up, and has it complete
/// checksums in software (what reaches a node's XDP from the wire is
/// complete, including what other nodes forward with partial checksums).
fn bridge_port(switch: &Netns, port: &str) {
    switch.ip(&["link", "set", port, "master", "br0", "up"]);
    tx_off(switch, port);
}

fn tx_off(ns: &Netns, iface: &str) {
    crate::netns::run(ns.cmd("ethtool").args(["-K", iface, "tx", "off"]));
}

/// Loads the bench object's `bench_pass` (XDP_PASS) and attaches it to
/// `ports` of the calling thread's namespace, so the peers' XDP_TX works.
fn attach_pass(ports: &[String]) -> Ebpf {
    let mut ebpf = Ebpf::load(lb_agent::loader::BENCH_BYTECODE).expect("loading the bench object");
    let prog: &mut Xdp = ebpf
        .program_mut("bench_pass")
        .expect("bench_pass in the bench object")
        .try_into()
        .expect("bench_pass is XDP");
    prog.load().expect("loading bench_pass");
    for port in ports {
        prog.attach(port, XdpMode::Driver).unwrap_or_else(|e| panic!("attaching bench_pass to {port}: {e}"));
    }
    ebpf
}

/// `<kind>-<namespace>-<name>.yaml`.
fn file_name(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("object").to_lowercase();
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("cluster");
    let name = obj["metadata"]["name"].as_str().expect("an object needs metadata.name");
    format!("{kind}-{ns}-{name}.yaml")
}

impl Node {
    /// Starts this node's agent (none may run).
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "node-{}'s agent runs already", self.index);
        self.syncs_at_start = self.sync_writes().len();
        self.attached_before = attached_count(&self.log);
        self.agent = Some(spawn_run_on(self.ns.name(), UPLINK, &self.pin_dir, &self.log, &self.args));
    }

    /// Stops the agent (SIGKILL) and starts it again with `extra` arguments
    /// added to the node's own (e.g. `--snat-ports`).
    pub fn restart_agent_with(&mut self, extra: &[&str]) {
        self.kill_agent();
        self.args.extend(extra.iter().map(|s| s.to_string()));
        self.start_agent();
        self.wait_synced();
    }

    /// SIGKILL (a crash): the programs stay attached on their pinned links.
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and a clean exit asserted.
    pub fn stop_agent(&mut self) {
        let mut c = self.agent.take().expect("an agent to stop");
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
        let status = c.wait().expect("waiting for lb-agent");
        assert!(status.success(), "node-{}'s agent did not exit cleanly ({status}):\n{}", self.index, self.log());
    }

    /// Panics with the log if the agent exited.
    pub fn assert_alive(&mut self) {
        let Some(c) = &mut self.agent else { panic!("node-{} has no agent", self.index) };
        if let Ok(Some(status)) = c.try_wait() {
            panic!("node-{}'s agent exited ({status}):\n{}", self.index, self.log());
        }
    }

    /// Waits until the agent has pinned its maps and attached its programs,
    /// and opens the maps.
    pub fn maps(&mut self) -> Dataplane {
        let (pin_dir, log) = (self.pin_dir.clone(), self.log.clone());
        wait_running(&pin_dir, &log, self.attached_before, || self.assert_alive())
    }

    /// Waits until the agent has pinned its maps and synced them with the
    /// source since it started.
    pub fn wait_synced(&mut self) {
        self.maps();
        let ok = wait_for(Duration::from_secs(60), || {
            self.assert_alive();
            self.sync_writes().len() > self.syncs_at_start
        });
        assert!(ok, "node-{}'s agent did not sync within 60 s:\n{}", self.index, self.log());
    }

    /// The `writes=N` figure of every sync so far, of every agent this node ran.
    pub fn sync_writes(&self) -> Vec<usize> {
        sync_writes(&self.log())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Slot count and backends of `addr:port`/`proto` in this node's maps.
    pub fn programmed(&self, addr: Ipv4Addr, port: u16, proto: u8) -> Option<(u32, Vec<Ipv4Addr>)> {
        crate::agent::programmed_at(&Dataplane::open(&self.pin_dir).ok()?, addr, port, proto)
    }

    /// As [`Node::programmed`], for an address of either family.
    pub fn programmed_ip(&self, addr: IpAddr, port: u16, proto: u8) -> Option<(u32, Vec<IpAddr>)> {
        programmed_ip(&Dataplane::open(&self.pin_dir).ok()?, addr, port, proto)
    }

    /// XDP_TX frames and XDP_TX errors of the uplink (`ethtool -S`, summed
    /// over queues).
    pub fn xdp_tx(&self) -> (u64, u64) {
        let out = crate::netns::run(self.ns.cmd("ethtool").args(["-S", UPLINK]));
        let text = String::from_utf8_lossy(&out.stdout);
        let sum = |suffix: &str| -> u64 {
            text.lines()
                .filter_map(|l| l.trim().split_once(':'))
                .filter(|(k, _)| k.ends_with(suffix))
                .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
                .sum()
        };
        (sum("_xdp_tx"), sum("_xdp_tx_errors"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill_agent();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        lb_agent::ops::names::remove(&self.pin_dir);
        let _ = std::fs::remove_file(lb_agent::lbip::status_path(&self.pin_dir));
        let _ = std::fs::remove_file(&self.log);
    }
}

/// A Service with one TCP and one UDP port (`tcp`, `udp`) on the same
/// number, both to [`POD_PORT`], balanced round-robin unless told otherwise.
#[derive(Clone, Debug)]
pub struct ServiceDef {
    pub name: String,
    /// Its family is the Service's (single-stack): an IPv6 one's slice
    /// holds the pods' IPv6 addresses.
    pub cluster_ip: IpAddr,
    pub port: u16,
    pub node_port: Option<u16>,
    pub external_ips: Vec<IpAddr>,
    /// `type: LoadBalancer` with this ingress IP in its status.
    pub lb_ip: Option<IpAddr>,
    /// `externalTrafficPolicy: Local`.
    pub local: bool,
    /// `xdplb.io/algorithm`.
    pub algorithm: String,
    /// More annotations (e.g. `xdplb.io/lb-mode`).
    pub annotations: Vec<(String, String)>,
}

impl ServiceDef {
    /// A ClusterIP service on port 80.
    pub fn new(name: &str, cluster_ip: impl Into<IpAddr>) -> Self {
        Self {
            name: name.into(),
            cluster_ip: cluster_ip.into(),
            port: 80,
            node_port: None,
            external_ips: Vec::new(),
            lb_ip: None,
            local: false,
            algorithm: "round-robin".into(),
            annotations: Vec::new(),
        }
    }

    /// Balanced with `algorithm` (`xdplb.io/algorithm`) instead of round-robin.
    pub fn algorithm(mut self, algorithm: &str) -> Self {
        self.algorithm = algorithm.into();
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.annotations.push((key.into(), value.into()));
        self
    }

    /// As a NodePort service on `port` (TCP and UDP).
    pub fn node_port(mut self, port: u16) -> Self {
        self.node_port = Some(port);
        self
    }

    pub fn external_ip(mut self, addr: impl Into<IpAddr>) -> Self {
        self.external_ips.push(addr.into());
        self
    }

    /// As a LoadBalancer whose status names `addr` as its ingress IP (node
    /// ports are allocated as for a NodePort: set one with [`Self::node_port`]).
    pub fn load_balancer(mut self, addr: impl Into<IpAddr>) -> Self {
        self.lb_ip = Some(addr.into());
        self
    }

    /// `externalTrafficPolicy: Local`.
    pub fn local(mut self) -> Self {
        self.local = true;
        self
    }

    pub fn object(&self) -> Value {
        let ports: Vec<Value> = [("tcp", "TCP"), ("udp", "UDP")]
            .iter()
            .map(|(name, proto)| {
                let mut p = json!({"name": name, "port": self.port, "protocol": proto, "targetPort": POD_PORT});
                if let Some(np) = self.node_port {
                    p["nodePort"] = json!(np);
                }
                p
            })
            .collect();
        let mut spec = json!({
            "type": if self.lb_ip.is_some() { "LoadBalancer" } else if self.node_port.is_some() { "NodePort" } else { "ClusterIP" },
            "clusterIP": self.cluster_ip.to_string(), "clusterIPs": [self.cluster_ip.to_string()],
            "ports": ports, "selector": {"app": self.name},
        });
        if self.cluster_ip.is_ipv6() {
            spec["ipFamilies"] = json!(["IPv6"]);
            spec["ipFamilyPolicy"] = json!("SingleStack");
        }
        if !self.external_ips.is_empty() {
            spec["externalIPs"] = json!(self.external_ips.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        }
        if self.node_port.is_some() || !self.external_ips.is_empty() || self.lb_ip.is_some() {
            spec["externalTrafficPolicy"] = json!(if self.local { "Local" } else { "Cluster" });
        }
        let mut annotations = json!({"xdplb.io/algorithm": self.algorithm});
        for (k, v) in &self.annotations {
            annotations[k] = json!(v);
        }
        let mut svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": NAMESPACE, "name": self.name, "annotations": annotations},
            "spec": spec,
        });
        if let Some(ip) = self.lb_ip {
            svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": ip.to_string()}]}});
        }
        svc
    }

    /// The service's EndpointSlice: pods `endpoints` (node, pod), ready,
    /// with their `nodeName`.
    pub fn slice(&self, endpoints: &[(usize, usize)]) -> Value {
        let eps: Vec<Value> = endpoints
            .iter()
            .map(|&(i, j)| {
                json!({"addresses": [pod_ip(self.cluster_ip, i, j).to_string()], "nodeName": node_name(i),
                       "conditions": {"ready": true, "serving": true, "terminating": false}})
            })
            .collect();
        json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"namespace": NAMESPACE, "name": format!("{}-1", self.name),
                         "labels": {"kubernetes.io/service-name": self.name}},
            "addressType": if self.cluster_ip.is_ipv6() { "IPv6" } else { "IPv4" },
            "ports": [{"name": "tcp", "port": POD_PORT, "protocol": "TCP"},
                      {"name": "udp", "port": POD_PORT, "protocol": "UDP"}],
            "endpoints": eps,
        })
    }
}

/// What a batch of requests got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Answers per backend identity (`node-i/pod-j`).
    pub answers: BTreeMap<String, usize>,
    /// The client addresses the backends saw, with counts.
    pub sources: BTreeMap<Ipv4Addr, usize>,
    /// The same for IPv6 clients (an IPv4 one seen by a dual-stack
    /// server, `::ffff:a.b.c.d`, counts in `sources`).
    pub sources6: BTreeMap<Ipv6Addr, usize>,
    /// Failed requests per error kind (`TimedOut`, `ConnectionRefused`, ...).
    pub failures: BTreeMap<String, usize>,
}

impl Tally {
    pub fn ok(&self) -> usize {
        self.answers.values().sum()
    }

    pub fn failed(&self) -> usize {
        self.failures.values().sum()
    }

    /// Answers per node index.
    pub fn per_node(&self) -> BTreeMap<usize, usize> {
        let mut m = BTreeMap::new();
        for (id, n) in &self.answers {
            let node = id.strip_prefix("node-").and_then(|r| r.split('/').next()).and_then(|i| i.parse().ok());
            *m.entry(node.unwrap_or(0)).or_default() += n;
        }
        m
    }

    fn answered(&mut self, body: &str) {
        let (id, peer) = body.split_once(' ').unwrap_or((body, ""));
        *self.answers.entry(id.to_string()).or_default() += 1;
        if let Ok(peer) = peer.parse::<SocketAddr>() {
            match peer.ip().to_canonical() {
                IpAddr::V4(a) => *self.sources.entry(a).or_default() += 1,
                IpAddr::V6(a) => *self.sources6.entry(a).or_default() += 1,
            }
        }
    }

    fn failed_with(&mut self, e: &std::io::Error) {
        // A read timeout is EAGAIN on Linux: one name for both.
        let kind = match e.kind() {
            std::io::ErrorKind::WouldBlock => std::io::ErrorKind::TimedOut,
            k => k,
        };
        *self.failures.entry(format!("{kind:?}")).or_default() += 1;
    }
}

/// `n` HTTP GETs over fresh TCP connections from `from` (any namespace:
/// the client, a pod, a node) to `to`, [`WORKERS`] at a time.
pub fn tcp_requests(from: &Netns, to: SocketAddr, n: usize) -> Tally {
    requests(from, n, move |t| match http_request_within(to, &to.to_string(), PEER_PATH, REQUEST_TIMEOUT, REQUEST_TIMEOUT) {
        Ok((200, body)) => t.answered(&body),
        Ok((code, _)) => t.failed_with(&std::io::Error::other(format!("HTTP {code}"))),
        Err(e) => t.failed_with(&e),
    })
}

/// `n` UDP requests from `from` to `to`, each from a fresh socket (a new
/// flow); the socket is connected, so an answer from any other address
/// than `to` is not one (the kernel drops it) and the request times out.
pub fn udp_requests(from: &Netns, to: SocketAddr, n: usize) -> Tally {
    requests(from, n, move |t| {
        let ask = || -> std::io::Result<String> {
            let s = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
            s.connect(to)?;
            s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
            s.send(PEER_PATH.as_bytes())?;
            let mut buf = [0u8; 512];
            let n = s.recv(&mut buf)?;
            Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        match ask() {
            Ok(body) => t.answered(&body),
            Err(e) => t.failed_with(&e),
        }
    })
}

/// Runs `one` `n` times on [`WORKERS`] threads inside `from`, and merges
/// their tallies.
fn requests(from: &Netns, n: usize, one: impl Fn(&mut Tally) + Send + Sync + Clone + 'static) -> Tally {
    let left = Arc::new(AtomicUsize::new(n));
    let total = Arc::new(Mutex::new(Tally::default()));
    let workers: Vec<_> = (0..WORKERS.min(n))
        .map(|_| {
            let (left, total, one) = (left.clone(), total.clone(), one.clone());
            from.spawn(move || {
                let mut t = Tally::default();
                while left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |l| l.checked_sub(1)).is_ok() {
                    one(&mut t);
                }
                let mut all = total.lock().unwrap();
                for (k, v) in t.answers {
                    *all.answers.entry(k).or_default() += v;
                }
                for (k, v) in t.sources {
                    *all.sources.entry(k).or_default() += v;
                }
                for (k, v) in t.sources6 {
                    *all.sources6.entry(k).or_default() += v;
                }
                for (k, v) in t.failures {
                    *all.failures.entry(k).or_default() += v;
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
    }
    let t = total.lock().unwrap().clone();
    t
}
