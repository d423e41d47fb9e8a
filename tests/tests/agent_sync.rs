//! The real agent diffs each change against what it last wrote and reads
//! the maps only at start, after a failed write, and on its periodic
//! reconcile: what someone else changes is repaired, what a failed write
//! left half-done is cleaned up, and a restarted agent still adopts the
//! pinned maps. Needs root.
use std::time::Duration;

use lb_agent::dataplane::Dataplane;
use xdplb_tests::{
    agent::{objects_dir, programmed, slice, write, Agent},
    topology::{backend_addr, Topology},
    wait_for,
};

/// `web` with backends 0, 1, 2 programmed by an agent started with `extra`.
fn setup(extra: &[&str]) -> (Topology, Agent, Dataplane) {
    let t = Topology::new(3);
    let mut agent = Agent::start_with(&t.node, &objects_dir(&[0, 1, 2]), extra);
    let dp = agent.maps();
    let ok = wait_for(Duration::from_secs(10), || programmed(&dp).is_some_and(|(n, _)| n == 3));
    assert!(ok, "the service never reached the maps:\n{}", agent.log());
    // Its log line follows the write, through a reader thread.
    assert!(wait_for(Duration::from_secs(10), || !agent.sync_writes().is_empty()), "no sync logged:\n{}", agent.log());
    (t, agent, dp)
}

#[test]
fn the_periodic_reconcile_repairs_entries_changed_by_hand() {
    let (_t, mut agent, mut dp) = setup(&["--reconcile-interval", "1"]);
    let want = dp.contents().expect("maps");
    // Someone deletes a backend and points a slot elsewhere.
    let (&bid, _) = want.backends.iter().next().expect("a backend");
    let (&slot, _) = want.slots.iter().next().expect("a slot");
    dp.v4.backends.set(bid, lb_common::BackendV4::EMPTY, 0).expect("deleting a backend by hand");
    dp.slots.insert(slot, 999, 0).expect("changing a slot by hand");
    let repaired = wait_for(Duration::from_secs(10), || {
        agent.assert_alive();
        dp.contents().is_ok_and(|c| c == want)
    });
    assert!(repaired, "the maps were not repaired:\n{}", agent.log());
    // The log line follows the write and reaches us through a reader thread.
    let logged = wait_for(Duration::from_secs(10), || agent.log().contains("repaired"));
    assert!(logged, "the repair is logged:\n{}", agent.log());
}

#[test]
fn without_a_reconcile_edits_still_reach_the_maps_with_only_the_difference() {
    let (t, mut agent, dp) = setup(&["--reconcile-interval", "0"]);
    let synced = agent.sync_writes().len();
    write(&agent.source_dir, "slice.yaml", &slice(&[0, 1]));
    let ok = wait_for(Duration::from_secs(5), || programmed(&dp).is_some_and(|(n, b)| n == 2 && !b.contains(&backend_addr(2))));
    assert!(ok, "the edit never reached the maps:\n{}", agent.log());
    // The log line follows the write and reaches us through a reader thread.
    assert!(wait_for(Duration::from_secs(10), || agent.sync_writes().len() > synced), "{}", agent.log());
    // backend 2, its slot, the count of the two frontends.
    assert_eq!(agent.sync_writes().last(), Some(&4), "{}", agent.log());

    // A restarted agent reads the maps the first one left: nothing is
    // rewritten, and its first edit is again only the difference.
    let before = dp.contents().expect("maps");
    let syncs = agent.sync_writes().len();
    agent.restart(&t.node);
    agent.maps(); // running again: the deadline below is the sync's, not the verifier's
    assert!(wait_for(Duration::from_secs(30), || agent.sync_writes().len() > syncs), "{}", agent.log());
    assert_eq!(agent.sync_writes()[syncs..], [0], "adopted without a write:\n{}", agent.log());
    assert_eq!(dp.contents().expect("maps"), before);
    write(&agent.source_dir, "slice.yaml", &slice(&[0, 1, 2]));
    let ok = wait_for(Duration::from_secs(5), || programmed(&dp).is_some_and(|(n, _)| n == 3));
    assert!(ok, "the edit after the restart never reached the maps:\n{}", agent.log());
    assert_eq!(agent.sync_writes().last(), Some(&4), "{}", agent.log());
}

#[test]
fn a_failed_write_is_retried_from_what_the_maps_really_hold() {
    // Room for four slots: web's three, and one more, which someone else
    // takes behind the agent's back (the agent diffs against what it wrote).
    let (_t, mut agent, mut dp) = setup(&["--max-slots", "4", "--reconcile-interval", "0"]);
    let before = dp.contents().expect("maps");
    let foreign = lb_common::SlotKey { service_id: 999, slot: 1 };
    dp.slots.insert(foreign, 1, 0).expect("the foreign slot");
    // `other` needs one slot: it fits the map's size, but the map is full.
    let other = "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop}\n\
                 spec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80}]}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: other-1, namespace: shop, labels: {kubernetes.io/service-name: other}}\n\
                 addressType: IPv4\nports: [{name: http, port: 8080}]\n\
                 endpoints: [{addresses: [10.0.9.1]}]\n";
    write(&agent.source_dir, "other.yaml", other);
    let failed = wait_for(Duration::from_secs(10), || agent.log().contains("service_slots is full"));
    assert!(failed, "the write did not fail as it should:\n{}", agent.log());
    assert!(agent.log().contains("raise --max-slots"), "the error names the flag:\n{}", agent.log());
    // The retry reads the maps: the foreign slot is removed first, making
    // room, and `other` is programmed.
    let other_key = lb_common::ServiceKeyV4 { addr: [10, 96, 0, 20], port: 80u16.to_be_bytes(), proto: 6, scope: 0 };
    let retried = wait_for(Duration::from_secs(10), || {
        dp.contents().is_ok_and(|c| c.services.contains_key(&other_key) && !c.slots.contains_key(&foreign) && c.slots.len() == 4)
    });
    assert!(retried, "the retry did not make room: {:?}\n{}", dp.contents().map(|c| c.slots), agent.log());
    assert_eq!(programmed(&dp).map(|(n, _)| n), Some(3), "web is untouched");

    // `other` goes again: the maps are back to web alone.
    std::fs::remove_file(agent.source_dir.join("other.yaml")).expect("removing other.yaml");
    let clean = wait_for(Duration::from_secs(10), || {
        agent.assert_alive();
        dp.contents().is_ok_and(|c| c == before)
    });
    assert!(clean, "not back to web alone: {:?}\n{}", dp.contents().map(|c| c.backends), agent.log());
}

#[test]
fn a_service_too_big_for_the_maps_is_left_out_and_does_not_wedge_later_syncs() {
    use xdplb_tests::ops::{http_get, sample};
    // 64 slots: web's three fit, a Maglev table of 251 slots never does.
    let (t, agent, dp) = setup(&["--max-slots", "64"]);
    let service = |name: &str, ip: &str, annotations: &str, backend: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: shop, annotations: {{{annotations}}}}}\n\
             spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata: {{name: {name}-1, namespace: shop, labels: {{kubernetes.io/service-name: {name}}}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080}}]\nendpoints: [{{addresses: [{backend}]}}]\n"
        )
    };
    let key = |ip: [u8; 4]| lb_common::ServiceKeyV4 { addr: ip, port: 80u16.to_be_bytes(), proto: 6, scope: 0 };
    write(&agent.source_dir, "big.yaml", &service("big", "10.96.0.30", "xdplb.io/algorithm: maglev, xdplb.io/maglev-table-size: '251'", "10.0.9.1"));
    write(&agent.source_dir, "plain.yaml", &service("plain", "10.96.0.31", "", "10.0.9.2"));
    let plain = wait_for(Duration::from_secs(15), || dp.contents().is_ok_and(|c| c.services.contains_key(&key([10, 96, 0, 31]))));
    assert!(plain, "the plain Service beside the big one was never programmed:\n{}", agent.log());
    let c = dp.contents().unwrap();
    assert!(!c.services.contains_key(&key([10, 96, 0, 30])), "the Maglev Service is left out");
    assert!(c.slots.len() <= 64);
    assert_eq!(programmed(&dp).map(|(n, _)| n), Some(3), "web is untouched");
    let log = agent.log();
    assert!(
        log.lines().any(|l| l.contains("ERROR") && l.contains("shop/big") && l.contains("does not fit in service_slots") && l.contains("raise --max-slots")),
        "no error naming the Service and the flag:\n{log}"
    );
    assert!(!log.contains("sync failed"), "no sync failed:\n{log}");
    let addr: std::net::SocketAddr = lb_agent::ops::http::DEFAULT_METRICS_ADDR.parse().unwrap();
    let metrics = http_get(&t.node, addr, "/metrics").expect("metrics").1;
    assert_eq!(sample(&metrics, "xdplb_services_rejected", &[]), Some(1.0), "{metrics}");
    assert_eq!(http_get(&t.node, addr, "/readyz").expect("readyz").0, 200, "the rest synced: ready");

    // Later changes go through, and the big one's removal clears the count.
    write(&agent.source_dir, "later.yaml", &service("later", "10.96.0.32", "", "10.0.9.3"));
    std::fs::remove_file(agent.source_dir.join("big.yaml")).expect("removing big.yaml");
    let later = wait_for(Duration::from_secs(15), || dp.contents().is_ok_and(|c| c.services.contains_key(&key([10, 96, 0, 32]))));
    assert!(later, "a Service added later was not programmed:\n{}", agent.log());
    let cleared = wait_for(Duration::from_secs(10), || {
        http_get(&t.node, addr, "/metrics").is_ok_and(|(_, m)| sample(&m, "xdplb_services_rejected", &[]) == Some(0.0))
    });
    assert!(cleared, "xdplb_services_rejected did not return to 0");
}
