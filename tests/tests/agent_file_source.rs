//! The real `lb-agent run` binary, fed Kubernetes YAML from a directory,
//! programs the dataplane of a node namespace; an edit of the EndpointSlice
//! reaches the maps and the traffic. Needs root.
use std::{net::SocketAddr, time::Duration};

use lb_agent::dataplane::Dataplane;
use xdplb_tests::{
    agent::{objects_dir, programmed, slice, write, Agent, WEB_CLUSTER_IP},
    servers::{tally, Server},
    topology::{backend_addr, Topology, NODE_ADDR},
    wait_for,
};


/// A node with three backends serving on 8080, `web` written to a fresh
/// directory with `slice_ids` as endpoints, and the agent running on it with
/// the service programmed.
fn setup(slice_ids: &[usize]) -> (Topology, Vec<Server>, Agent, Dataplane) {
    let t = Topology::new(3);
    let servers: Vec<Server> = (0..3)
        .map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}")))
        .collect();
    let mut agent = Agent::start(&t.node, &objects_dir(slice_ids));
    let dp = agent.maps();
    let n = slice_ids.len() as u32;
    let ok = wait_for(Duration::from_secs(10), || {
        programmed(&dp).is_some_and(|(c, b)| c == n && b.len() == n as usize)
    });
    assert!(
        ok,
        "the service never reached the maps: {:?}\n{}",
        programmed(&dp),
        agent.log()
    );
    (t, servers, agent, dp)
}

#[test]
fn agent_programs_yaml_objects_and_follows_an_endpoint_slice_edit() {
    let (t, _servers, mut agent, dp) = setup(&[0, 1, 2]);
    let (_, mut got) = programmed(&dp).expect("programmed");
    got.sort();
    assert_eq!(got, (0..3).map(backend_addr).collect::<Vec<_>>());

    // 30 fresh connections to the ClusterIP reach all three backends
    // (round-robin: ten each).
    let to = SocketAddr::from((WEB_CLUSTER_IP, 80));
    let before = tally(&t.client, to, 30);
    assert_eq!(before.values().sum::<usize>(), 30, "{before:?}");
    for i in 0..3 {
        let n = before.get(&format!("backend-{i}")).copied().unwrap_or(0);
        assert!(n > 0, "backend-{i} got no request: {before:?}");
    }
    assert_eq!(
        before.values().copied().collect::<Vec<_>>(),
        [10, 10, 10],
        "round-robin from the annotation: {before:?}"
    );
    // NodePort on the node address works too.
    let np = tally(&t.client, SocketAddr::from((NODE_ADDR, 30080)), 6);
    assert_eq!(np.values().sum::<usize>(), 6, "{np:?}");

    // backend-2 leaves the slice.
    let syncs_before = agent.sync_writes().len();
    write(&agent.source_dir, "slice.yaml", &slice(&[0, 1]));
    let ok = wait_for(Duration::from_secs(30), || {
        programmed(&dp).is_some_and(|(n, b)| n == 2 && !b.contains(&backend_addr(2)))
    });
    assert!(
        ok,
        "the edit never reached the maps: {:?}\n{}",
        programmed(&dp),
        agent.log()
    );
    agent.assert_alive();
    let after = tally(&t.client, to, 30);
    assert_eq!(after.values().sum::<usize>(), 30, "{after:?}");
    assert_eq!(
        after.get("backend-2"),
        None,
        "the removed backend got new connections: {after:?}"
    );
    assert_eq!(
        after.values().copied().collect::<Vec<_>>(),
        [15, 15],
        "{after:?}"
    );

    // The edit cost a handful of writes: backend-2's entry, its slot, and the
    // count of the two frontends (ClusterIP, NodePort) — not a rewrite.
    let writes = agent.sync_writes();
    assert!(
        writes.len() > syncs_before,
        "no sync logged after the edit:\n{}",
        agent.log()
    );
    let last = *writes.last().expect("a sync");
    assert_eq!(last, 4, "writes per sync {writes:?}:\n{}", agent.log());
}

#[test]
fn a_restarted_agent_adopts_the_pinned_maps_without_a_write() {
    let (t, _servers, mut agent, dp) = setup(&[0, 1, 2]);
    let contents = dp.contents().expect("reading maps");
    let syncs_before = agent.sync_writes().len();
    agent.restart(&t.node);
    agent.maps(); // running again: the deadline below is the sync's, not the verifier's
    let synced = wait_for(Duration::from_secs(30), || {
        agent.assert_alive();
        agent.sync_writes().len() > syncs_before
    });
    assert!(synced, "the restarted agent never synced:\n{}", agent.log());
    assert_eq!(
        agent.sync_writes()[syncs_before..],
        [0],
        "the first sync after a restart rewrites nothing:\n{}",
        agent.log()
    );
    assert_eq!(
        dp.contents().expect("reading maps"),
        contents,
        "same ids, same slots"
    );
    // The restarted agent has attached again: traffic flows.
    let got = tally(&t.client, SocketAddr::from((WEB_CLUSTER_IP, 80)), 9);
    assert_eq!(got.len(), 3, "{got:?}");
}

#[test]
fn hostile_and_broken_files_leave_the_programmed_service_alone() {
    let (t, _servers, mut agent, dp) = setup(&[0, 1]);
    let contents = dp.contents().expect("reading maps");
    let syncs = agent.sync_writes().len();
    write(
        &agent.source_dir,
        "zz-broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x\n  - [unclosed\n",
    );
    write(
        &agent.source_dir,
        "zz-hostile.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: evil, namespace: shop}\nspec: {clusterIP: 10.96.0.300, ports: [{port: 99999}]}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: web-evil, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080}]\nendpoints: [{addresses: ['fd00::1']}]\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: shop}\n",
    );
    // The agent re-reads the directory (one more sync) and writes nothing.
    let ok = wait_for(Duration::from_secs(30), || agent.sync_writes().len() > syncs);
    assert!(ok, "no sync after the new files:\n{}", agent.log());
    agent.assert_alive();
    assert_eq!(agent.sync_writes().last(), Some(&0), "{}", agent.log());
    assert_eq!(dp.contents().expect("reading maps"), contents);
    let log = agent.log();
    assert!(
        log.contains("shop/evil") && log.contains("shop/web-evil"),
        "warnings name the objects:\n{log}"
    );
    let got = tally(&t.client, SocketAddr::from((WEB_CLUSTER_IP, 80)), 6);
    assert_eq!(got.values().sum::<usize>(), 6, "{got:?}");
}

#[test]
fn kernel_events_reach_the_agent_log_rate_limited() {
    let t = Topology::new(1);
    let mut agent = xdplb_tests::agent::Agent::start(&t.node, &objects_dir(&[]));
    let dp = agent.maps();
    assert!(wait_for(Duration::from_secs(10), || programmed(&dp).is_some()), "{}", agent.log());
    // XDP_TX (the reset) reaches a veth peer only if it runs XDP too.
    let _peer = xdplb_tests::lb::Lb::attach(&t.client, "eth0", &[]);
    // Ten refused connections in a burst: every SYN counted, one log line.
    let to = SocketAddr::from((WEB_CLUSTER_IP, 80));
    for _ in 0..10 {
        let r = t.client.run(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(1)));
        assert!(r.is_err());
    }
    let line = "no backend for service 10.96.0.10:80 (proto 6): new flow dropped";
    assert!(wait_for(Duration::from_secs(30), || agent.log().contains(line)), "the kernel's event reached the log:\n{}", agent.log());
    let lines = agent.log().matches(line).count();
    assert!(lines <= 2, "rate-limited to one a second per CPU, got {lines}");
    assert!(dp.counters().unwrap()[lb_common::counter::DROP_NO_BACKEND as usize] >= 10);
}
