//! Scale: 10,000 services with 100,000 endpoints, as one YAML file, through
//! the real agent into the maps; the time it takes is printed (the benchmark
//! reports it too). Then the same services balanced by Maglev, with the
//! default map sizes. Needs root.
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

/// 10,000 Maglev services of 10 backends fit the default map sizes: each
/// gets a table sized from its backend count (251 entries), and a few
/// tables read back from the maps are the ones Maglev builds for them.
#[test]
fn ten_thousand_maglev_services_fit_the_default_map_sizes() {
    use lb_agent::control::maglev::{auto_table_size, build, MaglevBackend};
    let t = Topology::new(0);
    let dir = std::env::temp_dir().join(format!("xlbt-{}-scale-maglev", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    write(&dir, "node.yaml", NODE);
    write(&dir, "cluster.yaml", &objects());
    let start = Instant::now();
    // No size flag: the defaults.
    let mut agent = Agent::start_with(&t.node, &dir, &["--default-algorithm", "maglev"]);
    let dp = agent.maps();
    let done = wait_for(Duration::from_secs(300), || {
        agent.assert_alive();
        !agent.sync_writes().is_empty()
    });
    assert!(done, "no sync within 300 s\n{}", agent.log());
    let elapsed = start.elapsed();
    assert!(!agent.log().contains("does not fit"), "a service was left out:\n{}", agent.log().lines().filter(|l| l.contains("does not fit")).take(3).collect::<Vec<_>>().join("\n"));
    let c = dp.contents().unwrap();
    let m = auto_table_size(PER_SERVICE as usize);
    assert_eq!(m, 251);
    assert_eq!(c.services.keys().filter(|k| !k.is_address()).count() as u32, SERVICES);
    assert_eq!(c.slots.len() as u32, SERVICES * m, "a table of {m} per service");
    for s in [0, 4_999, SERVICES - 1] {
        let vip = std::net::Ipv4Addr::from(0x0a60_0000 + s);
        let key = lb_common::ServiceKeyV4 { addr: vip.octets(), port: 80u16.to_be_bytes(), proto: 6, scope: 0 };
        let svc = c.services[&key];
        assert_eq!((svc.algorithm, svc.count), (lb_common::algorithm::MAGLEV, m), "service {s}");
        let table: Vec<u32> = (1..=m).map(|slot| c.slots[&lb_common::SlotKey { service_id: svc.id, slot }]).collect();
        let members: Vec<MaglevBackend> = table
            .iter()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .map(|id| {
                let b = c.backends[id];
                MaglevBackend::new(*id, format!("{}:{}", std::net::Ipv4Addr::from(b.addr), u16::from_be_bytes(b.port)), 1)
            })
            .collect();
        assert_eq!(members.len() as u32, PER_SERVICE, "service {s}: every backend has entries");
        assert_eq!(table, build(&members, m).unwrap(), "service {s}: the table Maglev builds for its backends");
        let first = 0x0a80_0000 + s * PER_SERVICE;
        assert!(members.iter().all(|b| c.backends[&b.id].addr >= first.to_be_bytes() && c.backends[&b.id].addr < (first + PER_SERVICE).to_be_bytes()), "service {s}: its own endpoints");
    }
    println!("agent scale: {SERVICES} Maglev services ({m} slots each, {} in all) programmed from cold in {elapsed:.2?} with the default map sizes", c.slots.len());
}
