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
    (t, agent, dp)
}

#[test]
fn the_periodic_reconcile_repairs_entries_changed_by_hand() {
    let (_t, mut agent, mut dp) = setup(&["--reconcile-interval", "1"]);
    let want = dp.contents().expect("maps");
    // Someone deletes a backend and points a slot elsewhere.
    let (&bid, _) = want.backends.iter().next().expect("a backend");
    let (&slot, _) = want.slots.iter().next().expect("a slot");
    dp.backends.set(bid, lb_common::BackendV4::EMPTY, 0).expect("deleting a backend by hand");
    dp.slots.insert(slot, 999, 0).expect("changing a slot by hand");
    let repaired = wait_for(Duration::from_secs(10), || {
        agent.assert_alive();
        dp.contents().is_ok_and(|c| c == want)
    });
    assert!(repaired, "the maps were not repaired:\n{}", agent.log());
    assert!(agent.log().contains("repaired"), "the repair is logged:\n{}", agent.log());
}

#[test]
fn without_a_reconcile_edits_still_reach_the_maps_with_only_the_difference() {
    let (t, mut agent, dp) = setup(&["--reconcile-interval", "0"]);
    write(&agent.source_dir, "slice.yaml", &slice(&[0, 1]));
    let ok = wait_for(Duration::from_secs(5), || programmed(&dp).is_some_and(|(n, b)| n == 2 && !b.contains(&backend_addr(2))));
    assert!(ok, "the edit never reached the maps:\n{}", agent.log());
    // backend 2, its slot, the count of the two frontends.
    assert_eq!(agent.sync_writes().last(), Some(&4), "{}", agent.log());

    // A restarted agent reads the maps the first one left: nothing is
    // rewritten, and its first edit is again only the difference.
    let before = dp.contents().expect("maps");
    let syncs = agent.sync_writes().len();
    agent.restart(&t.node);
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
    // Room for four slots: web's three, and one more. (Backend ids are
    // indexes of backends_v4: the plan never hands out one that does not fit.)
    let (_t, mut agent, dp) = setup(&["--max-slots", "4", "--reconcile-interval", "0"]);
    let before = dp.contents().expect("maps");
    // Three more backends, three more slots: one slot fits, then the map is
    // full and the sync fails.
    let other = "apiVersion: v1\nkind: Service\nmetadata: {name: other, namespace: shop}\n\
                 spec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80}]}\n---\n\
                 apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
                 metadata: {name: other-1, namespace: shop, labels: {kubernetes.io/service-name: other}}\n\
                 addressType: IPv4\nports: [{name: http, port: 8080}]\n\
                 endpoints: [{addresses: [10.0.9.1]}, {addresses: [10.0.9.2]}, {addresses: [10.0.9.3]}]\n";
    write(&agent.source_dir, "other.yaml", other);
    let failed = wait_for(Duration::from_secs(10), || agent.log().contains("service_slots is full"));
    assert!(failed, "the write did not fail as it should:\n{}", agent.log());
    let half = dp.contents().expect("maps");
    assert_eq!((half.backends.len(), half.slots.len()), (6, 4), "`other`'s backends and one of its slots landed");
    assert_eq!(programmed(&dp).map(|(n, _)| n), Some(3), "web is untouched");

    // `other` goes again. What landed was never in a successful sync: only
    // a sync that reads the maps knows to remove it.
    std::fs::remove_file(agent.source_dir.join("other.yaml")).expect("removing other.yaml");
    let clean = wait_for(Duration::from_secs(10), || {
        agent.assert_alive();
        dp.contents().is_ok_and(|c| c == before)
    });
    assert!(clean, "the half-written backend stayed: {:?}\n{}", dp.contents().map(|c| c.backends), agent.log());
}
