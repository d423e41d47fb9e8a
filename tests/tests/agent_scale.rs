//! Scale: 10,000 services with 100,000 endpoints, as one YAML file, through
//! the real agent into the maps; the time it takes is printed (the benchmark
//! reports it too). Needs root.
use std::{fmt::Write as _, time::{Duration, Instant}};

use xdplb_tests::{
    agent::{write, Agent, NODE},
    topology::Topology,
    wait_for,
};

const SERVICES: u32 = 10_000;
const PER_SERVICE: u32 = 10;

/// `kubectl get -o yaml`-style List of the services and their slices.
fn objects() -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for s in 0..SERVICES {
        let vip = std::net::Ipv4Addr::from(0x0a60_0000 + s);
        let _ = write!(
            y,
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: svc-{s}, namespace: scale}}\n  spec:\n    clusterIP: {vip}\n    ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]\n\
             - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: svc-{s}-1, namespace: scale, labels: {{kubernetes.io/service-name: svc-{s}}}}}\n  addressType: IPv4\n  ports: [{{name: http, port: 8080, protocol: TCP}}]\n  endpoints:\n"
        );
        for e in 0..PER_SERVICE {
            let addr = std::net::Ipv4Addr::from(0x0a80_0000 + s * PER_SERVICE + e);
            let _ = writeln!(y, "  - addresses: [{addr}]");
        }
    }
    y
}

#[test]
fn ten_thousand_services_with_a_hundred_thousand_endpoints_reach_the_maps() {
    let t = Topology::new(0);
    let dir = std::env::temp_dir().join(format!("xlbt-{}-scale", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, "node.yaml", NODE);
    write(&dir, "cluster.yaml", &objects());
    let start = Instant::now();
    let mut agent = Agent::start_with(&t.node, &dir, &["--max-services", "32768", "--max-backends", "131072", "--max-slots", "131072", "--max-flows", "65536"]);
    let dp = agent.maps();
    let done = wait_for(Duration::from_secs(300), || {
        agent.assert_alive();
        !agent.sync_writes().is_empty()
    });
    let elapsed = start.elapsed();
    assert!(done, "no sync within 300 s\n{}", agent.log());
    let c = dp.contents().unwrap();
    // One frontend and one ClusterIP address entry per service.
    assert_eq!(c.services.keys().filter(|k| !k.is_address()).count() as u32, SERVICES);
    assert_eq!(c.services.keys().filter(|k| k.is_address()).count() as u32, SERVICES);
    assert_eq!(c.backends.len() as u32, SERVICES * PER_SERVICE);
    assert_eq!(c.slots.len() as u32, SERVICES * PER_SERVICE);
    println!("agent scale: {SERVICES} services / {} endpoints programmed from cold in {elapsed:.2?} (debug build, file source)", SERVICES * PER_SERVICE);
}
