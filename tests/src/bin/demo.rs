//! `cargo xtask demo`: the real `lb-agent`, fed Kubernetes YAML, balances a
//! Service in network namespaces: a client sends HTTP to the ClusterIP and
//! to the NodePort, a process on the node itself sends HTTP to the ClusterIP
//! (balanced at connect() by the socket programs), and this prints which
//! backend answered each request; then an EndpointSlice edit removes a
//! backend, live. Last, two nodes with an agent each: requests reach a pod
//! on the other node through a NodePort and through a ClusterIP; then a
//! LoadBalancer Service gets its address from a pool, and a client on the
//! segment reaches it by ARP alone. Needs root.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    time::Duration,
};

use lb_common::counter;
use xdplb_tests::{
    agent::{objects_dir, programmed, slice, write, Agent, WEB_CLUSTER_IP},
    cgroup::TestCgroup,
    cluster::{node_addr, tcp_requests, Cluster, ServiceDef, Source, Tally, TCP},
    servers::{http_get, Server},
    topology::{backend_addr, Topology, NODE_ADDR, UPLINK},
    wait_for,
};

fn requests(t: &Topology, label: &str, to: SocketAddr, n: usize) {
    let mut tally = BTreeMap::<String, u32>::new();
    for i in 1..=n {
        let body = t.client.run(move || http_get(to)).unwrap_or_else(|e| format!("ERROR {e}"));
        println!("  {label:9} request {i}: GET http://{to}/ -> answered by {body}");
        *tally.entry(body).or_default() += 1;
    }
    println!("  {label}: {tally:?}\n");
}

/// HTTP from a process of the node's namespace (bash's /dev/tcp: a plain
/// connect()), in the cgroup the socket programs are attached to.
fn node_requests(t: &Topology, cgroup: &TestCgroup, n: usize) {
    let script = format!("exec 3<>/dev/tcp/{WEB_CLUSTER_IP}/80 && printf 'GET / HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3");
    for i in 1..=n {
        let out = cgroup.run(&t.node, std::path::Path::new("bash"), &["-c", &script]);
        let reply = String::from_utf8_lossy(&out.stdout);
        let body = reply.split("\r\n\r\n").nth(1).map_or_else(|| format!("ERROR {}", String::from_utf8_lossy(&out.stderr).trim()), str::to_string);
        println!("  node      request {i}: GET http://{WEB_CLUSTER_IP}:80/ from a node process -> answered by {body}");
    }
    println!();
}

fn main() {
    println!("xdplb demo: client ns --> node ns (lb-agent, XDP on {UPLINK}) --> 3 backend namespaces\n");
    let t = Topology::new(3);
    let _servers: Vec<_> =
        (0..3).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i} ({})", backend_addr(i)))).collect();
    let dir = objects_dir(&[0, 1, 2]);
    println!("objects in {} (as `kubectl get svc,endpointslices,nodes -A -o yaml` prints them):", dir.display());
    println!("  Service shop/web: ClusterIP {WEB_CLUSTER_IP}:80 -> 8080, NodePort {NODE_ADDR}:30080, xdplb.io/algorithm: round-robin");
    println!("  EndpointSlice shop/web-abc12: 3 ready endpoints\n");
    // The node's own processes are balanced by socket programs on a cgroup:
    // here a demo cgroup, so nothing else on this machine is touched.
    let cgroup = TestCgroup::new();
    let mut agent = Agent::start_with(&t.node, &dir, &[&format!("--socket-lb={}", cgroup.path.display())]);
    let dp = agent.maps();
    assert!(wait_for(Duration::from_secs(10), || programmed(&dp).is_some_and(|(n, _)| n == 3)), "{}", agent.log());
    println!("lb-agent programmed the service:");
    for line in agent.log().lines().filter(|l| l.contains("attached") || l.contains("balanced at connect") || l.contains("synced")) {
        println!("  {}", line.split_once("  ").map_or(line, |(_, r)| r.trim_start()));
    }
    println!();

    requests(&t, "ClusterIP", SocketAddr::from((WEB_CLUSTER_IP, 80)), 6);
    requests(&t, "NodePort", SocketAddr::from((NODE_ADDR, 30080)), 6);
    node_requests(&t, &cgroup, 3);

    println!("editing the EndpointSlice: backend-2 leaves the service");
    write(&dir, "slice.yaml", &slice(&[0, 1]));
    assert!(wait_for(Duration::from_secs(10), || programmed(&dp).is_some_and(|(n, _)| n == 2)));
    requests(&t, "ClusterIP", SocketAddr::from((WEB_CLUSTER_IP, 80)), 6);

    let c = dp.counters().expect("counters");
    println!(
        "dataplane counters: {}",
        counter::LABELS.iter().zip(&c).filter(|(_, v)| **v > 0).map(|(l, v)| format!("{l}={v}")).collect::<Vec<_>>().join(" ")
    );
    println!("conntrack entries: {} (two per flow)", dp.flows().map(|f| f.len()).unwrap_or(0));
    drop(agent);
    multi_node();
    load_balancer();
    println!("\nthe agents, their pinned maps and the namespaces are removed on exit");
}

/// Two nodes on one L2 segment, each with its own agent and pods; the
/// service's pods are all on node-2, and requests arrive at node-1.
fn multi_node() {
    println!("\nmulti-node: client ns --> bridge --> node-1, node-2 (an lb-agent each) --> 2 pods each");
    let mut c = Cluster::new(2, 2, Source::File);
    let web = Ipv4Addr::new(10, 96, 0, 20);
    let on_node_2 = [(2, 0), (2, 1)];
    c.publish(&ServiceDef::new("web2", web).node_port(30090), &on_node_2);
    c.wait_backends(1, node_addr(1), 30090, TCP, &on_node_2);
    c.wait_backends(1, web, 80, TCP, &on_node_2);
    println!("  Service demo/web2: ClusterIP {web}:80, NodePort 30090, endpoints: 2 pods on node-2 only\n");
    let show = |label: &str, t: &Tally| {
        println!("  {label}: {} ok, {} failed; answered by {:?}; the pods saw the client as {:?}", t.ok(), t.failed(), t.answers, t.sources);
    };
    let np = tcp_requests(&c.client, SocketAddr::from((node_addr(1), 30090)), 6);
    show(&format!("NodePort  {}:30090 from the outside client", node_addr(1)), &np);
    let cip = tcp_requests(c.pod(1, 0), SocketAddr::from((web, 80)), 6);
    show(&format!("ClusterIP {web}:80 from pod-0 on node-1"), &cip);
    println!("  (the outside client's flows are SNATed to node-1's address so the replies come back through it; the pod's keep its own address)");
    // The same Service with DSR (`xdplb.io/lb-mode: dsr`; `--lb-mode dsr`
    // does it for every Service): node-1 keeps the client's address and
    // node-2 answers the client itself, from the NodePort address.
    c.publish(&ServiceDef::new("web2", web).node_port(30090).annotation("xdplb.io/lb-mode", "dsr"), &on_node_2);
    let dsr_on = || {
        lb_agent::dataplane::Dataplane::open(&c.node(1).pin_dir)
            .is_ok_and(|dp| dp.contents().is_ok_and(|m| m.services.values().any(|v| v.flags & lb_common::service_flags::DSR_TCP != 0)))
    };
    if !xdplb_tests::wait_for(std::time::Duration::from_secs(30), dsr_on) {
        println!("  (node-1 did not pick up the lb-mode annotation in 30 s)");
        return;
    }
    let np = tcp_requests(&c.client, SocketAddr::from((node_addr(1), 30090)), 6);
    show(&format!("NodePort  {}:30090 from the outside client, DSR", node_addr(1)), &np);
    println!("  (with DSR node-1 forwards the client's packets to node-2 with the NodePort in an IPv4 option; the pods see the client and their replies leave node-2 straight to it)");
}

/// Two nodes with `--lb-pool`: the elected agent gives a LoadBalancer
/// Service an address from the pool, its owner node answers ARP for it.
fn load_balancer() {
    println!("\nLoadBalancer: node-1, node-2 with `--lb-pool lan=192.168.50.200/29`, the API server double as the cluster");
    let c = Cluster::with_agent_args(2, 1, Source::Kube, &["--lb-pool", "lan=192.168.50.200/29"]);
    let def = ServiceDef::new("shop", Ipv4Addr::new(10, 96, 0, 30)).node_port(30100);
    let mut svc = def.object();
    svc["spec"]["type"] = serde_json::json!("LoadBalancer");
    c.apply(svc);
    c.apply(def.slice(&c.all_pods()));
    let api = c.api().expect("the API server double");
    let lb_ip = || -> Option<Ipv4Addr> {
        let s = api.get(xdplb_tests::apiserver::Resource::Services, xdplb_tests::cluster::NAMESPACE, "shop")?;
        s["status"]["loadBalancer"]["ingress"][0]["ip"].as_str()?.parse().ok()
    };
    assert!(wait_for(Duration::from_secs(30), || lb_ip().is_some()), "no address allocated:\n{}", c.logs());
    let addr = lb_ip().expect("an address");
    println!("  Service demo/shop (type LoadBalancer, no address asked): status.loadBalancer.ingress = {addr}, from pool lan");
    let owner = || (1..=2).find_map(|i| {
        let v = lb_agent::lbip::read_status(&c.node(i).pin_dir).ok()?;
        v.addresses.iter().find(|a| a.address == addr.to_string())?.owner.clone()
    });
    assert!(wait_for(Duration::from_secs(10), || owner().is_some()), "no owner:\n{}", c.logs());
    println!("  the node answering ARP for {addr}: {} (chosen by every agent alike: rank of hash(node, address) among live nodes)", owner().unwrap_or_default());
    let mut answered = false;
    for _ in 0..50 {
        let t = tcp_requests(&c.client, SocketAddr::from((addr, 80)), 6);
        if t.ok() == 6 {
            println!("  http://{addr}/ from the client, which has no route but its /24: {} ok; answered by {:?}", t.ok(), t.answers);
            answered = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(answered, "the client never reached {addr}:\n{}", c.logs());
    println!("  (`lb-agent lb-addresses` prints the pools and owners; see deploy/README.md to replace MetalLB)");
}
