//! Metrics and health of the real agent during real traffic: N requests
//! through the ClusterIP move the service's new-flows metric and the
//! nat_forward counter by at least N; the agent's JSON log lines parse.
//! Needs root.
use std::{net::SocketAddr, time::Duration};

use xdplb_tests::{
    agent::{objects_dir, programmed, Agent, WEB_CLUSTER_IP},
    ops::{http_get, sample},
    servers::{tally, Server},
    topology::Topology,
    wait_for,
};

/// Inside the node namespace, so every test has the port to itself.
const METRICS: &str = "127.0.0.1:9464";

#[test]
fn metrics_follow_the_traffic_sent_and_readyz_turns_200() {
    let t = Topology::new(2);
    let _servers: Vec<Server> = (0..2)
        .map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}")))
        .collect();
    let mut agent = Agent::start_with(
        &t.node,
        &objects_dir(&[0, 1]),
        &["--metrics-addr", METRICS, "--log-format", "json"],
    );
    let dp = agent.maps();
    let addr: SocketAddr = METRICS.parse().unwrap();
    let ok = wait_for(Duration::from_secs(10), || {
        programmed(&dp).is_some_and(|(c, _)| c == 2)
    });
    assert!(ok, "the service never reached the maps:\n{}", agent.log());
    let ready = wait_for(Duration::from_secs(10), || {
        http_get(&t.node, addr, "/readyz").is_ok_and(|(c, _)| c == 200)
    });
    assert!(
        ready,
        "/readyz never said 200: {:?}\n{}",
        http_get(&t.node, addr, "/readyz"),
        agent.log()
    );
    assert_eq!(http_get(&t.node, addr, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(&t.node, addr, "/nope").unwrap().0, 404);

    let scrape = || {
        let (code, body) = http_get(&t.node, addr, "/metrics").expect("scraping /metrics");
        assert_eq!(code, 200, "{body}");
        body
    };
    let web = ["namespace=\"shop\"", "name=\"web\"", "port=\"http\""];
    let before = scrape();
    let flows0 = sample(&before, "xdplb_service_new_flows_total", &web)
        .unwrap_or_else(|| panic!("no new-flows series for shop/web:\n{before}"));
    let fwd0 = sample(
        &before,
        "xdplb_dataplane_packets_total",
        &["reason=\"nat_forward\""],
    )
    .expect("nat_forward");

    const N: usize = 25;
    let got = tally(&t.client, SocketAddr::from((WEB_CLUSTER_IP, 80)), N);
    assert_eq!(got.values().sum::<usize>(), N, "{got:?}");

    let after = scrape();
    let flows = sample(&after, "xdplb_service_new_flows_total", &web).unwrap();
    let fwd = sample(
        &after,
        "xdplb_dataplane_packets_total",
        &["reason=\"nat_forward\""],
    )
    .unwrap();
    let pkts = sample(&after, "xdplb_service_packets_total", &web).unwrap();
    let bytes = sample(&after, "xdplb_service_bytes_total", &web).unwrap();
    println!("after {N} requests: new flows {flows0} -> {flows}, nat_forward {fwd0} -> {fwd}, packets {pkts}, bytes {bytes}");
    assert!(
        flows - flows0 >= N as f64,
        "new flows moved by {} < {N}:\n{after}",
        flows - flows0
    );
    // A request is at least SYN, ACK+data, FIN (plus ACKs).
    assert!(
        fwd - fwd0 >= 3.0 * N as f64,
        "nat_forward moved by {} < 3N:\n{after}",
        fwd - fwd0
    );
    assert!(
        pkts >= 3.0 * N as f64 && bytes >= 40.0 * pkts,
        "packets {pkts}, bytes {bytes}"
    );
    // Each flow has a forward and a reply entry until it is evicted.
    let ct = sample(&after, "xdplb_conntrack_entries", &[]).unwrap();
    assert!(ct >= 2.0 * N as f64, "conntrack entries {ct}:\n{after}");
    let fill = sample(&after, "xdplb_map_fill_ratio", &["map=\"conntrack_v4\""]).unwrap();
    let cap = sample(&after, "xdplb_map_max_entries", &["map=\"conntrack_v4\""]).unwrap();
    assert!(
        (fill - ct / cap).abs() < 1e-9 && fill > 0.0,
        "fill {fill}, entries {ct}, max {cap}"
    );
    assert_eq!(
        sample(&after, "xdplb_map_entries", &["map=\"backends_v4\""]),
        Some(2.0)
    );
    for b in ["10.0.2.11:8080", "10.0.2.12:8080"] {
        assert!(
            sample(
                &after,
                "xdplb_backend_flows",
                &[&format!("backend=\"{b}\"")]
            )
            .is_some(),
            "no flows series of {b}:\n{after}"
        );
    }
    assert_eq!(sample(&after, "xdplb_ready", &[]), Some(1.0));
    assert_eq!(sample(&after, "xdplb_source_up", &[]), Some(1.0));
    assert!(sample(&after, "xdplb_sync_total", &[]).unwrap() >= 1.0);
    assert_eq!(sample(&after, "xdplb_sync_errors_total", &[]), Some(0.0));
    assert!(
        sample(
            &after,
            "kubeproxy_network_programming_duration_seconds_count",
            &[]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        sample(
            &after,
            "xdplb_sync_duration_seconds_bucket",
            &["le=\"+Inf\""]
        )
        .unwrap()
            >= 1.0
    );
    assert!(sample(&after, "xdplb_build_info", &["version=\""]).is_some());
    for line in after.lines().filter(|l| l.starts_with("# TYPE")) {
        let kind = line.rsplit(' ').next().unwrap();
        assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
    }

    // --log-format json: every line the agent wrote is a JSON object; the
    // sync line carries its fields.
    agent.assert_alive();
    let log = agent.log();
    let mut synced = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["fields"]["message"] == "synced" {
            assert!(v["fields"]["writes"].is_u64(), "{line}");
            synced += 1;
        }
    }
    assert!(synced >= 1, "no JSON sync line:\n{log}");
}

#[test]
fn a_service_too_big_for_a_map_is_left_out_counted_and_named_and_the_agent_stays_ready() {
    // Room for one frontend; shop/web has two (ClusterIP and NodePort): it
    // cannot be programmed. Rather than a sync failing on every retry (and
    // taking every other change with it), web is left out, counted and
    // named with the flag to raise; the sync of the rest succeeds.
    let t = Topology::new(1);
    let mut agent = Agent::start_with(
        &t.node,
        &objects_dir(&[0]),
        &["--metrics-addr", METRICS, "--max-services", "1"],
    );
    let _dp = agent.maps();
    let addr: SocketAddr = METRICS.parse().unwrap();
    let counted = wait_for(Duration::from_secs(15), || {
        http_get(&t.node, addr, "/metrics").is_ok_and(|(_, m)| {
            sample(&m, "xdplb_services_rejected", &[]) == Some(1.0)
        })
    });
    assert!(counted, "no rejected service counted:\n{}", agent.log());
    agent.assert_alive();
    let (code, body) = http_get(&t.node, addr, "/readyz").unwrap();
    assert_eq!(code, 200, "{body}");
    let (_, m) = http_get(&t.node, addr, "/metrics").unwrap();
    assert_eq!(sample(&m, "xdplb_ready", &[]), Some(1.0));
    assert_eq!(sample(&m, "xdplb_sync_errors_total", &[]), Some(0.0), "{m}");
    assert_eq!(
        sample(&m, "xdplb_map_fill_ratio", &["map=\"services_v4\""]),
        Some(0.0),
        "nothing half-written: {m}"
    );
    assert!(
        agent.log().lines().any(|l| l.contains("shop/web") && l.contains("does not fit in services_v4") && l.contains("raise --max-services")),
        "{}",
        agent.log()
    );
}
