//! The real agent serves the `healthCheckNodePort` of an
//! `externalTrafficPolicy: Local` LoadBalancer as kube-proxy does: the client
//! asks the node address, and the answer follows the EndpointSlice (200 with
//! this node's endpoints, 503 without), and the port closes when the service
//! goes or turns `Cluster`. A port already taken is a warning, not a crash.
//! Needs root.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use xdplb_tests::{
    agent::{objects_dir_with, programmed, slice, write, Agent},
    topology::{Topology, NODE_ADDR},
    wait_for,
};

/// `shop/web` as a LoadBalancer with `policy` and a health-check node port.
fn lb_service(policy: &str, hc_port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  type: LoadBalancer\n  \
         clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10]\n  externalTrafficPolicy: {policy}\n  healthCheckNodePort: {hc_port}\n  \
         ports:\n  - name: http\n    port: 80\n    nodePort: 30080\n    protocol: TCP\n    targetPort: 8080\n  selector:\n    app: web\n"
    )
}

/// The slice of `web` with endpoints `ids` on node `node`.
fn slice_on(ids: &[usize], node: &str) -> String {
    slice(ids).replace("nodeName: node-0", &format!("nodeName: {node}"))
}

/// One GET from the client to the node address at `port`: (status, head, body).
fn health(t: &Topology, port: u16) -> std::io::Result<(u16, String, String)> {
    let to = SocketAddr::from((NODE_ADDR, port));
    t.client.run(move || {
        let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: lb\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
        let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        Ok((code, head.to_string(), body.to_string()))
    })
}

/// Waits until the port answers `code` with `local` endpoints, and returns the answer.
fn wait_answer(t: &Topology, agent: &mut Agent, port: u16, code: u16, local: usize) -> (u16, String, String) {
    let want = format!(r#""localEndpoints":{local},"#);
    let mut last = None;
    let ok = wait_for(Duration::from_secs(10), || {
        agent.assert_alive();
        let r = health(t, port);
        let hit = matches!(&r, Ok((c, _, b)) if *c == code && b.contains(&want));
        last = Some(r);
        hit
    });
    assert!(ok, "port {port} never answered {code} with {local} local endpoints: {last:?}\n{}", agent.log());
    last.unwrap().unwrap()
}

/// Waits until nothing listens on the port any more.
fn wait_closed(t: &Topology, agent: &mut Agent, port: u16) {
    let mut last = None;
    let ok = wait_for(Duration::from_secs(10), || {
        agent.assert_alive();
        let r = health(t, port);
        let closed = matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused);
        last = Some(r);
        closed
    });
    assert!(ok, "port {port} still answers: {last:?}\n{}", agent.log());
}

#[test]
fn the_health_check_node_port_follows_this_nodes_endpoints() {
    const PORT: u16 = 32100;
    let t = Topology::new(2);
    let mut agent = Agent::start(&t.node, &objects_dir_with(&lb_service("Local", PORT), &slice(&[0, 1])));
    agent.maps(); // running: the deadlines below are the agent's, not the verifier's

    let (_, head, body) = wait_answer(&t, &mut agent, PORT, 200, 2);
    assert_eq!(body, r#"{"service":{"namespace":"shop","name":"web"},"localEndpoints":2,"serviceProxyHealthy":true}"#);
    assert!(head.contains("Content-Type: application/json\r\n"), "{head}");
    assert!(head.contains("X-Content-Type-Options: nosniff\r\n"), "{head}");

    // The endpoints move to another node: this one fails the check (the
    // load balancer stops sending here), still listening.
    write(&agent.source_dir, "slice.yaml", &slice_on(&[0, 1], "node-1"));
    wait_answer(&t, &mut agent, PORT, 503, 0);
    // One comes back.
    write(&agent.source_dir, "slice.yaml", &slice_on(&[1], "node-0"));
    wait_answer(&t, &mut agent, PORT, 200, 1);

    // externalTrafficPolicy: Cluster needs no health check: the port closes.
    write(&agent.source_dir, "service.yaml", &lb_service("Cluster", PORT));
    wait_closed(&t, &mut agent, PORT);
    write(&agent.source_dir, "service.yaml", &lb_service("Local", PORT));
    wait_answer(&t, &mut agent, PORT, 200, 1);

    // The service is deleted: the port closes; the agent keeps running.
    std::fs::remove_file(agent.source_dir.join("service.yaml")).expect("removing the service");
    wait_closed(&t, &mut agent, PORT);
    agent.assert_alive();
}

#[test]
fn a_health_check_port_in_use_is_a_warning_and_served_once_free() {
    const PORT: u16 = 32101;
    let t = Topology::new(1);
    // Something else on the node holds the port first.
    let blocker = t.node.run(|| std::net::TcpListener::bind(("0.0.0.0", PORT)).expect("binding the blocker"));
    let mut agent = Agent::start(&t.node, &objects_dir_with(&lb_service("Local", PORT), &slice(&[0])));
    let dp = agent.maps();
    let warned = wait_for(Duration::from_secs(10), || {
        agent.assert_alive();
        agent.log().lines().any(|l| l.contains("WARN") && l.contains("cannot serve healthCheckNodePort") && l.contains(&PORT.to_string()) && l.contains("shop/web"))
    });
    assert!(warned, "no warning naming the port and the service:\n{}", agent.log());
    // The service itself is programmed regardless.
    assert!(wait_for(Duration::from_secs(10), || programmed(&dp).is_some_and(|(n, _)| n == 1)), "{:?}\n{}", programmed(&dp), agent.log());
    agent.assert_alive();

    // The port frees up: the agent takes it without a new sync.
    drop(blocker);
    wait_answer(&t, &mut agent, PORT, 200, 1);
    let warnings = agent.log().matches("cannot serve healthCheckNodePort").count();
    assert_eq!(warnings, 1, "one warning, not one a second:\n{}", agent.log());
}
