//! Socket-level balancing of the node's own connections (`--socket-lb`):
//! real processes in the node's namespace, put into a test cgroup the
//! agent's socket programs are attached to, reach service backends by the
//! ClusterIP while seeing the ClusterIP as their peer; other namespaces'
//! sockets are left to XDP/tc. Needs root (namespaces, cgroups, BPF).
use std::{collections::BTreeSet, path::Path, time::Duration};

use lb_common::counter;
use xdplb_tests::{
    agent::{default_service, objects_dir_with, slice, slice_for, web_service, Agent},
    cgroup::TestCgroup,
    servers::Server,
    topology::Topology,
    wait_for,
};

const CLIENT: &str = env!("CARGO_BIN_EXE_xdplb-sock-client");
const VIP: &str = "10.96.0.10:80";

struct Node {
    t: Topology,
    _servers: Vec<Server>,
    agent: Agent,
    cgroup: TestCgroup,
}

/// Three backends, the agent balancing node sockets of a fresh test cgroup.
fn node(service: &str, slice: &str) -> Node {
    let t = Topology::new(3);
    let servers = (0..3).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    let cgroup = TestCgroup::new();
    let flag = format!("--socket-lb={}", cgroup.path.display());
    let mut agent = Agent::start_with(&t.node, &objects_dir_with(service, slice), &[&flag]);
    let dp = agent.maps();
    assert!(wait_for(Duration::from_secs(60), || dp.contents().is_ok_and(|c| !c.services.is_empty())), "{}", agent.log());
    Node { t, _servers: servers, agent, cgroup }
}

impl Node {
    /// `xdplb-sock-client proto VIP` from the node's namespace in the cgroup:
    /// Ok((answer, address it came from)) or Err(stderr).
    fn ask(&self, proto: &str) -> Result<(String, String), String> {
        self.ask_at(proto, VIP)
    }

    /// As [`Node::ask`], to `to` (`addr:port`).
    fn ask_at(&self, proto: &str, to: &str) -> Result<(String, String), String> {
        let out = self.cgroup.run(&self.t.node, Path::new(CLIENT), &[proto, to]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (answer, from) = text.split_once(' ').unwrap_or_else(|| panic!("client printed {text:?}"));
        Ok((answer.to_string(), from.to_string()))
    }

    fn counter(&self, which: u32) -> u64 {
        Agent::maps_of(&self.agent).counters().unwrap()[which as usize]
    }
}

#[test]
fn node_tcp_connections_to_a_cluster_ip_reach_every_backend_and_see_the_cluster_ip() {
    let n = node(&default_service(), &slice(&[0, 1, 2]));
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let (backend, peer) = n.ask("tcp").unwrap_or_else(|e| panic!("connect failed: {e}\n{}", n.agent.log()));
        assert_eq!(peer, VIP, "getpeername() shows the service, not the backend");
        seen.insert(backend);
    }
    // Round-robin: three connections, three backends.
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(n.counter(counter::SOCK_BALANCED), 3);
    // Balanced at connect: no packet needed XDP's NAT.
    assert_eq!(n.counter(counter::NAT_FORWARD), 0);
}

#[test]
fn node_udp_datagrams_to_a_cluster_ip_are_answered_from_the_cluster_ip() {
    let svc = web_service(&[("xdplb.io/algorithm", "round-robin")], "UDP", "");
    let n = node(&svc, &slice_for(&[0, 1, 2], "UDP"));
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let (backend, from) = n.ask("udp").unwrap_or_else(|e| panic!("no answer: {e}\n{}", n.agent.log()));
        // recvmsg() reports the service as the source: resolvers accept the answer.
        assert_eq!(from, VIP);
        seen.insert(backend);
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

/// kube-proxy applies `externalTrafficPolicy: Local` to traffic from
/// outside only: the node's own connection to a NodePort whose endpoints
/// are all on other nodes is balanced over them, not refused.
#[test]
fn a_node_process_reaches_a_local_policy_node_port_with_endpoints_only_elsewhere() {
    let svc = web_service(&[("xdplb.io/algorithm", "round-robin")], "TCP", "  externalTrafficPolicy: Local\n");
    let n = node(&svc, &slice(&[0, 1, 2]).replace("nodeName: node-0", "nodeName: node-1"));
    let node_port = "192.168.1.1:30080";
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let (backend, peer) = n.ask_at("tcp", node_port).unwrap_or_else(|e| panic!("connect failed: {e}\n{}", n.agent.log()));
        assert_eq!(peer, node_port);
        seen.insert(backend);
    }
    assert_eq!(seen.len(), 3, "every endpoint, wherever it runs: {seen:?}");
    assert_eq!((n.counter(counter::SOCK_BALANCED), n.counter(counter::SOCK_NO_BACKEND)), (3, 0));
}

/// A ClusterIP's unserved port, and an unallocated address of the service
/// CIDR, are refused at connect() (kube-proxy rejects the first and drops
/// the second; a socket gets its answer at once either way).
#[test]
fn a_node_connect_to_an_unserved_cluster_ip_port_or_unallocated_service_address_is_refused() {
    let svc = web_service(&[("xdplb.io/algorithm", "round-robin")], "TCP", "");
    let t = Topology::new(1);
    let _server = Server::start(&t.backends[0], 8080, "backend-0");
    let cgroup = TestCgroup::new();
    let flag = format!("--socket-lb={}", cgroup.path.display());
    let mut agent = Agent::start_with(&t.node, &objects_dir_with(&svc, &slice(&[0])), &[&flag, "--service-cidr=10.96.0.0/12"]);
    let dp = agent.maps();
    assert!(wait_for(Duration::from_secs(60), || dp.contents().is_ok_and(|c| !c.services.is_empty())), "{}", agent.log());
    let n = Node { t, _servers: Vec::new(), agent, cgroup };
    assert!(n.ask_at("tcp", VIP).is_ok(), "the served port");
    for to in ["10.96.0.10:81", "10.96.0.99:80"] {
        let err = n.ask_at("tcp", to).expect_err(to);
        assert!(err.contains("not permitted"), "{to}: connect() is refused (EPERM): {err}");
    }
    assert!(n.ask_at("tcp", "10.200.0.1:80").is_err_and(|e| !e.contains("not permitted")), "outside the service CIDR: routed as usual");
    assert_eq!(n.counter(counter::SOCK_NO_BACKEND), 2);
}

#[test]
fn a_node_connect_to_a_service_without_endpoints_fails_at_once() {
    let n = node(&default_service(), &slice(&[]));
    let started = std::time::Instant::now();
    let err = n.ask("tcp").expect_err("no backend to connect to");
    assert!(err.contains("not permitted"), "connect() is refused (EPERM): {err}");
    assert!(started.elapsed() < Duration::from_secs(2), "refused, not timed out");
    assert_eq!(n.counter(counter::SOCK_NO_BACKEND), 1);
}

#[test]
fn sockets_of_other_namespaces_are_left_to_xdp_and_an_agent_restart_keeps_balancing() {
    let mut n = node(&default_service(), &slice(&[0, 1, 2]));
    // A process of the client's namespace in the same cgroup: its packets
    // reach the node and XDP balances them, the socket programs stay out.
    let out = n.cgroup.run(&n.t.client, Path::new(CLIENT), &["tcp", VIP]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(n.counter(counter::SOCK_BALANCED), 0);
    assert!(n.counter(counter::NAT_FORWARD) > 0, "XDP balanced it");

    // A restart replaces the pinned cgroup links; node sockets still balance.
    let links = n.agent.pin_dir.join("links/cgroup@sock_connect4");
    assert!(links.exists(), "the cgroup link is pinned");
    n.agent.restart(&n.t.node);
    n.agent.maps(); // running again: the deadline below is the sync's, not the verifier's
    assert!(wait_for(Duration::from_secs(10), || n.agent.log().matches("node sockets to services are balanced").count() >= 2), "{}", n.agent.log());
    assert_eq!(n.ask("tcp").map(|(_, peer)| peer), Ok(VIP.to_string()));

    // Turned off: the links are removed (so detached) and node sockets are not balanced.
    let flag = "--socket-lb=off";
    n.agent.kill9();
    n.agent.start_again(&n.t.node, &[flag]);
    n.agent.maps(); // running again: the deadline below is the sync's, not the verifier's
    assert!(wait_for(Duration::from_secs(10), || n.agent.log().contains("socket balancing off")), "{}", n.agent.log());
    assert!(!links.exists());
    let before = n.counter(counter::SOCK_BALANCED);
    let _ = n.ask("tcp");
    assert_eq!(n.counter(counter::SOCK_BALANCED), before);
}

#[test]
fn auto_on_a_host_without_cgroup2_warns_and_balances_packets_without_it() {
    let t = Topology::new(1);
    let dir = objects_dir_with(&default_service(), &slice(&[0]));
    let pin_dir = std::path::PathBuf::from(format!("/sys/fs/bpf/xlbt-{}-sockauto", std::process::id()));
    let log = std::env::temp_dir().join(format!("xlbt-{}-sockauto.log", std::process::id()));
    // A private mount namespace whose cgroup2 mounts are gone: a host
    // without cgroup v2, for this agent only.
    let hide = r#"awk '$3 == "cgroup2" { print $2 }' /proc/self/mounts | xargs -r -n1 umount -l && exec "$@""#;
    let mut child = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", hide, "sh", "nsenter"])
        .arg(format!("--net=/run/netns/{}", t.node.name()))
        .arg(xdplb_tests::agent::agent_binary())
        .args(["run", "--iface", "up0", "--node-name", "node-0", "--socket-lb", "auto", "--pin-path"])
        .arg(&pin_dir)
        .arg(format!("--source=file:{}", dir.display()))
        .env("RUST_LOG", "info")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("starting lb-agent in a mount namespace");
    let text = || std::fs::read_to_string(&log).unwrap_or_default();
    let synced = wait_for(Duration::from_secs(20), || text().contains("synced"));
    let still_running = child.try_wait().unwrap().is_none();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&pin_dir);
    lb_agent::ops::names::remove(&pin_dir);
    let _ = std::fs::remove_dir_all(&dir);
    let log_text = text();
    let _ = std::fs::remove_file(&log);
    assert!(synced && still_running, "the agent runs and programs the maps:\n{log_text}");
    assert!(log_text.contains("no cgroup2 file system is mounted") && log_text.contains("continuing without"), "{log_text}");
}
