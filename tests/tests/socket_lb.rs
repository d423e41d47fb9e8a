//! Socket-level balancing of the node's own connections (`--socket-lb`):
//! real processes in the node's namespace, put into a test cgroup the
//! agent's socket programs are attached to, reach service backends by the
//! ClusterIP while seeing the ClusterIP as their peer; other namespaces'
//! sockets are left to XDP/tc. Over IPv4 and IPv6, and dual-stack IPv6
//! sockets to IPv4-mapped addresses. Needs root (namespaces, cgroups, BPF).
use std::{collections::BTreeSet, path::Path, time::Duration};

use lb_common::{counter, maps::programs};
use xdplb_tests::{
    agent::{default_service, objects_dir_with, slice, slice_for, slice_ports, web_service, Agent},
    cgroup::TestCgroup,
    servers::Server,
    topology::{backend_addr, backend_addr6, Topology},
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
    node_with(service, slice, false, &[])
}

/// As [`node`], the agent run with `flags`; `ipv6`: the topology and the
/// backends speak both families, and the agent waits for IPv6 services too.
fn node_with(service: &str, slice: &str, ipv6: bool, flags: &[&str]) -> Node {
    let t = Topology::new(3);
    if ipv6 {
        t.add_ipv6();
    }
    let start = if ipv6 { Server::start_dual } else { Server::start };
    let servers = (0..3).map(|i| start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    let cgroup = TestCgroup::new();
    let flag = format!("--socket-lb={}", cgroup.path.display());
    let args: Vec<&str> = [flag.as_str()].into_iter().chain(flags.iter().copied()).collect();
    let mut agent = Agent::start_with(&t.node, &objects_dir_with(service, slice), &args);
    let dp = agent.maps();
    let ready = wait_for(Duration::from_secs(90), || {
        dp.contents().is_ok_and(|c| !c.services.is_empty())
            && (!ipv6 || dp.family_contents::<lb_common::Addr6>().is_ok_and(|c| !c.services.is_empty()))
    });
    assert!(ready, "{}", agent.log());
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
    let n = node_with(&default_service(), &slice(&[0]), false, &["--service-cidr=10.96.0.0/12"]);
    assert!(n.ask_at("tcp", VIP).is_ok(), "the served port");
    for to in ["10.96.0.10:81", "10.96.0.99:80"] {
        let err = n.ask_at("tcp", to).expect_err(to);
        assert!(err.contains("refused"), "{to}: connect() is refused (ECONNREFUSED): {err}");
    }
    assert!(n.ask_at("tcp", "10.200.0.1:80").is_err_and(|e| !e.contains("not permitted")), "outside the service CIDR: routed as usual");
    assert_eq!(n.counter(counter::SOCK_NO_BACKEND), 2);
}

#[test]
fn a_node_connect_to_a_service_without_endpoints_fails_at_once() {
    let n = node(&default_service(), &slice(&[]));
    let started = std::time::Instant::now();
    let err = n.ask("tcp").expect_err("no backend to connect to");
    assert!(err.contains("refused"), "connect() is refused (ECONNREFUSED): {err}");
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
    let links: Vec<_> = programs::SOCK.iter().map(|p| n.agent.pin_dir.join(format!("links/cgroup@{p}"))).collect();
    assert_eq!(links.len(), 8, "four hooks per family");
    assert!(links.iter().all(|l| l.exists()), "every cgroup link is pinned");
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
    assert!(!links.iter().any(|l| l.exists()), "every cgroup link is removed");
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
    let synced = wait_for(Duration::from_secs(60), || text().contains("synced"));
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

const VIP6: &str = "[fd00:96::10]:80";
/// The IPv4 ClusterIP as a dual-stack IPv6 socket dials it.
const VIP_MAPPED: &str = "[::ffff:10.96.0.10]:80";

/// `shop/web`, dual-stack (IPv6 first), round-robin, serving TCP and UDP
/// on port 80; `shop/empty`, IPv6 only (fd00:96::20), without endpoints.
fn dual_stack_services() -> String {
    let ports = "  ports:\n  - name: http\n    port: 80\n    protocol: TCP\n    targetPort: 8080\n  \
                 - name: dns\n    port: 80\n    protocol: UDP\n    targetPort: 8080\n";
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n  annotations:\n    xdplb.io/algorithm: round-robin\n\
         spec:\n  ipFamilyPolicy: RequireDualStack\n  ipFamilies: [IPv6, IPv4]\n  clusterIP: 'fd00:96::10'\n  \
         clusterIPs: ['fd00:96::10', 10.96.0.10]\n{ports}---\n\
         apiVersion: v1\nkind: Service\nmetadata:\n  name: empty\n  namespace: shop\n\
         spec:\n  ipFamilyPolicy: SingleStack\n  ipFamilies: [IPv6]\n  clusterIP: 'fd00:96::20'\n  clusterIPs: ['fd00:96::20']\n{ports}"
    )
}

/// The EndpointSlices of `web`, one per family, over backends 0..3 on both ports.
fn dual_stack_slices() -> String {
    let ports = [("http", "TCP"), ("dns", "UDP")];
    let v4 = slice_ports(&[0, 1, 2], &ports);
    let v6 = (0..3).fold(v4.replace("name: web-abc12", "name: web-v6").replace("addressType: IPv4", "addressType: IPv6"), |s, i| {
        s.replace(&format!("[{}]", backend_addr(i)), &format!("['{}']", backend_addr6(i)))
    });
    format!("{v4}---\n{v6}")
}

/// Three requests of `proto` to `to`: each answered, by three backends,
/// and seen from `to` (getpeername() for TCP, recvfrom() for UDP).
fn three_from_every_backend(n: &Node, proto: &str, to: &str) {
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let (backend, from) = n.ask_at(proto, to).unwrap_or_else(|e| panic!("{proto} to {to}: {e}\n{}", n.agent.log()));
        assert_eq!(from, to, "{proto}: the application sees the service address");
        seen.insert(backend);
    }
    assert_eq!(seen.len(), 3, "{proto} to {to}, round-robin: {seen:?}");
}

#[test]
fn node_ipv6_sockets_reach_every_backend_and_dual_stack_sockets_reach_an_ipv4_mapped_cluster_ip() {
    let n = node_with(&dual_stack_services(), &dual_stack_slices(), true, &[]);
    three_from_every_backend(&n, "tcp", VIP6);
    three_from_every_backend(&n, "udp", VIP6);
    assert_eq!((n.counter(counter::SOCK_BALANCED), n.counter(counter::SOCK_MAPPED)), (6, 0));
    // A dual-stack socket to ::ffff:10.96.0.10 is balanced over IPv4 (the
    // backends answer from their IPv4 addresses) and sees the mapped ClusterIP.
    three_from_every_backend(&n, "tcp", VIP_MAPPED);
    three_from_every_backend(&n, "udp", VIP_MAPPED);
    // TCP's connect() runs connect6 (counted as mapped); an unconnected
    // UDP send to a mapped address is IPv4's to the kernel (sendmsg4).
    assert_eq!((n.counter(counter::SOCK_BALANCED), n.counter(counter::SOCK_MAPPED)), (12, 3));
    assert_eq!(n.counter(counter::SOCK_NO_BACKEND), 0);
    // Balanced at connect: no packet needed XDP's NAT.
    assert_eq!(n.counter(counter::NAT_FORWARD), 0);

    // A restart replaces the pinned cgroup links of both families.
    let mut n = n;
    n.agent.restart(&n.t.node);
    assert!(wait_for(Duration::from_secs(30), || n.agent.log().matches("node sockets to services are balanced").count() >= 2), "{}", n.agent.log());
    for to in [VIP6, VIP_MAPPED] {
        assert_eq!(n.ask_at("tcp", to).map(|(_, peer)| peer), Ok(to.to_string()), "after the restart");
    }
}

/// Over IPv6 as over IPv4: a service without endpoints, a ClusterIP's
/// unserved port and an unallocated address of the service CIDR are
/// refused at connect() at once, also through an IPv4-mapped address.
#[test]
fn a_node_ipv6_connect_to_a_service_without_endpoints_an_unserved_port_or_an_unallocated_address_is_refused() {
    let n = node_with(&dual_stack_services(), &dual_stack_slices(), true, &["--service-cidr=fd00:96::/112", "--service-cidr=10.96.0.0/12"]);
    let refused = ["[fd00:96::20]:80", "[fd00:96::10]:81", "[fd00:96::99]:80", "[::ffff:10.96.0.10]:81", "[::ffff:10.96.0.99]:80"];
    for to in refused {
        let started = std::time::Instant::now();
        let err = n.ask_at("tcp", to).expect_err(to);
        assert!(err.contains("refused"), "{to}: connect() is refused (ECONNREFUSED): {err}");
        assert!(started.elapsed() < Duration::from_secs(2), "{to}: refused, not timed out");
    }
    // An unconnected UDP send is refused as a connect() is.
    let err = n.ask_at("udp", "[fd00:96::20]:80").expect_err("no backend to send to");
    assert!(err.contains("refused"), "sendto() is refused (ECONNREFUSED): {err}");
    assert_eq!((n.counter(counter::SOCK_NO_BACKEND), n.counter(counter::SOCK_MAPPED)), (refused.len() as u64 + 1, 2));
    assert_eq!(n.ask_at("tcp", VIP6).map(|(_, peer)| peer), Ok(VIP6.to_string()), "the served port");
    let outside = n.ask_at("tcp", "[fd00:97::1]:80").expect_err("nothing routes there");
    assert!(!outside.contains("refused"), "outside the service CIDR: routed as usual: {outside}");
}
