//! Genuine load balancing with the real agent and real clients: Maglev picks
//! the same backend for a flow on every node and across restarts,
//! least-connections steers new connections away from a busy backend, and
//! ClientIP affinity keeps a client on its backend. Needs root.
use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use xdplb_tests::{
    agent::{objects_dir_with, programmed, slice, slice_for, web_service, write, Agent, WEB_CLUSTER_IP},
    servers::{tally, udp_ask, Conn, Server},
    topology::Topology,
    wait_for,
};

const TO: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(WEB_CLUSTER_IP), 80);

/// A topology with three backends and the agent running on `service` + `slice`.
fn node(service: &str, slice: &str) -> (Topology, Vec<Server>, Agent) {
    let t = Topology::new(3);
    let servers = (0..3).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    let mut agent = Agent::start(&t.node, &objects_dir_with(service, slice));
    let dp = agent.maps();
    // Generous: loading and verifying both families' programs takes seconds on a busy machine.
    let ready = wait_for(Duration::from_secs(60), || dp.contents().is_ok_and(|c| !c.services.is_empty()));
    assert!(ready, "{}", agent.log());
    (t, servers, agent)
}

/// The backend that answers a UDP datagram from each of `ports`.
fn answers(t: &Topology, ports: std::ops::Range<u16>) -> Vec<String> {
    t.client.run(move || {
        ports
            .map(|p| {
                let s = UdpSocket::bind(("0.0.0.0", p)).unwrap();
                udp_ask(&s, TO, b"who", Duration::from_secs(2)).expect("UDP answer").0
            })
            .collect()
    })
}

#[test]
fn maglev_picks_the_same_backend_on_two_nodes_and_across_restarts() {
    let svc = web_service(&[("xdplb.io/algorithm", "maglev"), ("xdplb.io/maglev-table-size", "1021")], "UDP", "");
    let (a, _sa, mut agent_a) = node(&svc, &slice_for(&[0, 1, 2], "UDP"));
    let (b, _sb, _agent_b) = node(&svc, &slice_for(&[0, 1, 2], "UDP"));
    // Two independent nodes, the same objects: every flow agrees.
    let on_a = answers(&a, 40000..40060);
    assert_eq!(on_a, answers(&b, 40000..40060), "node A and node B pick alike");
    let spread: BTreeMap<&String, usize> = on_a.iter().fold(BTreeMap::new(), |mut m, id| {
        *m.entry(id).or_default() += 1;
        m
    });
    assert_eq!(spread.len(), 3, "all backends used: {spread:?}");
    // A crash and restart of node A's agent: new flows (fresh ports, so
    // conntrack cannot decide) still agree with node B.
    let table = agent_a.maps().contents().unwrap().slots;
    agent_a.kill9();
    agent_a.start_again(&a.node, &[]);
    agent_a.maps(); // running again: the deadline below is the sync's, not the verifier's
    assert!(wait_for(Duration::from_secs(10), || agent_a.sync_writes().len() >= 2), "{}", agent_a.log());
    assert_eq!(agent_a.maps().contents().unwrap().slots, table, "the same table after the restart");
    assert_eq!(answers(&a, 41000..41060), answers(&b, 41000..41060));
}

#[test]
fn least_conn_sends_new_connections_away_from_a_backend_holding_long_lived_ones() {
    let svc = web_service(&[("xdplb.io/algorithm", "least-conn")], "TCP", "");
    let (t, _s, agent) = node(&svc, &slice(&[0]));
    // 20 long-lived connections while backend-0 is alone.
    let mut held: Vec<Conn> = (0..20).map(|_| Conn::new(t.client.run(|| TcpStream::connect(TO)).unwrap())).collect();
    assert!(held.iter_mut().all(|c| c.ask().unwrap() == "backend-0"));
    write(&agent.source_dir, "slice.yaml", &slice(&[0, 1, 2]));
    let dp = Agent::maps_of(&agent);
    assert!(wait_for(Duration::from_secs(10), || programmed(&dp).is_some_and(|(n, _)| n == 3)));
    // Short connections come and go; backend-0 stays the busiest.
    let got = tally(&t.client, TO, 30);
    assert_eq!(got.values().sum::<usize>(), 30);
    assert_eq!(got.get("backend-0"), None, "the busy backend got no new connection: {got:?}");
    // Each short connection ends before the next starts: the two idle
    // backends tie every time and the tie is broken at random.
    assert_eq!(got.len(), 2, "the idle two share: {got:?}");
    // Closed connections count down whichever end closed first (the
    // backend's FIN marks the forward half too): only the 20 held remain,
    // long before the agent's 30 s recount.
    let ids: Vec<u32> = dp.contents().unwrap().backends.keys().copied().collect();
    let live = || ids.iter().map(|id| dp.backend_load(*id).unwrap_or(0)).collect::<Vec<u64>>();
    assert!(wait_for(Duration::from_secs(10), || live().iter().sum::<u64>() == 20), "live flows per backend {:?}, want only the 20 held", live());
    drop(held);
}

#[test]
fn client_ip_affinity_keeps_a_client_until_its_backend_leaves_or_the_timeout() {
    let extra = "  sessionAffinity: ClientIP\n  sessionAffinityConfig:\n    clientIP:\n      timeoutSeconds: 2\n";
    let svc = web_service(&[("xdplb.io/algorithm", "round-robin")], "TCP", extra);
    let (t, _s, agent) = node(&svc, &slice(&[0, 1, 2]));
    let first = tally(&t.client, TO, 20);
    assert_eq!(first.len(), 1, "20 connections, one backend: {first:?}");
    let kept = first.keys().next().unwrap().clone();
    let gone: usize = kept.trim_start_matches("backend-").parse().unwrap();
    // Its backend leaves: the client moves, and sticks to the new one.
    write(&agent.source_dir, "slice.yaml", &slice(&(0..3).filter(|&i| i != gone).collect::<Vec<_>>()));
    let dp = Agent::maps_of(&agent);
    assert!(wait_for(Duration::from_secs(10), || programmed(&dp).is_some_and(|(n, _)| n == 2)));
    let moved = tally(&t.client, TO, 10);
    assert_eq!(moved.len(), 1, "{moved:?}");
    let now_on = moved.keys().next().unwrap().clone();
    assert_ne!(now_on, kept);
    // Idle past the 2 s timeout (time must pass): balanced anew
    // (round-robin underneath, so the next pick is the other backend).
    std::thread::sleep(Duration::from_millis(2200));
    let after = tally(&t.client, TO, 1);
    assert!(!after.contains_key(&now_on), "expired affinity: {after:?}");
}

/// `shop/web` as a LoadBalancer at 203.0.113.10 admitting `ranges`.
fn lb_service(ranges: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  type: LoadBalancer\n  \
         clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10]\n  loadBalancerSourceRanges: {ranges}\n  ports:\n  - name: http\n    port: 80\n    \
         nodePort: 30080\n    protocol: TCP\n    targetPort: 8080\n  selector:\n    app: web\nstatus:\n  loadBalancer:\n    ingress:\n    - ip: 203.0.113.10\n"
    )
}

#[test]
fn load_balancer_source_ranges_are_enforced_and_follow_edits() {
    let lb_ip = SocketAddr::from(([203, 0, 113, 10], 80));
    // The client is 192.168.1.2: outside 10.0.0.0/8.
    let (t, _s, agent) = node(&lb_service("[10.0.0.0/8]"), &slice(&[0]));
    let dial = |to: SocketAddr| t.client.run(move || TcpStream::connect_timeout(&to, Duration::from_millis(700)).map(drop));
    assert!(dial(lb_ip).is_err(), "a client outside the ranges cannot reach the LoadBalancer IP");
    assert!(dial(TO).is_ok(), "the ClusterIP is not guarded");
    let dropped = Agent::maps_of(&agent).counters().unwrap()[lb_common::counter::DROP_SOURCE_RANGE as usize];
    assert!(dropped >= 1, "counted as drop_source_range");
    // Admitting the client's network takes effect with the next sync.
    write(&agent.source_dir, "service.yaml", &lb_service("[10.0.0.0/8, 192.168.1.0/24]"));
    assert!(wait_for(Duration::from_secs(10), || dial(lb_ip).is_ok()), "{}", agent.log());
}
