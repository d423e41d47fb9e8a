//! `xdplb-bench --smoke` runs end to end and writes JSON of the documented
//! shape: machine, kernel, commit, and every headline figure with a unit,
//! conditions and a positive value (gross, for a figure net of a floor).
//! Checks structure, never speed.
//! Needs root.
use std::process::Command;

use serde_json::Value;

const UNITS: &[&str] = &["ns/packet", "Mpps", "x", "ms", "s", "us", "%", "MiB", "conn/s"];

/// Figures every run must report (at the smoke run's 1 and 10 services).
const REQUIRED: &[&str] = &[
    "floor/xdp_pass",
    "floor/xdp_tx_swap_macs",
    "floor/tc_ok",
    "xdp_lb/non_service",
    "xdp_lb/established",
    "xdp_lb/new_flow",
    "tc_egress/reply",
    "tc_egress/not_reply",
    "live/drop_baseline",
    "live/xdp_tx_floor",
    "live/xdp_redirect_floor",
    "live/stack_forward_no_nat",
    "live/xdplb_10_services",
    "live/xdplb_redirect_10_services",
    "live/xdplb_10_services_new_flows",
    "live/xdplb_10_services_tcp_ack",
    "live/xdplb_10_services_tcp_syn_ack",
    // The kube-proxy comparison, both sides fed skbs by the AF_PACKET sender.
    "skb/drop_baseline",
    "skb/stack_forward_no_nat",
    "skb/xdplb_10_services",
    "skb/iptables_10_services",
    "ratio/xdplb_over_iptables_10_services",
    "ratio/xdplb_redirect_over_iptables_10_services",
    "skb/iptables_10_services_new_flows",
    "ratio/xdplb_over_iptables_10_services_new_flows",
    "skb/iptables_10_services_tcp_ack",
    "ratio/xdplb_over_iptables_10_services_tcp_ack",
    "skb/iptables_10_services_tcp_syn_ack",
    "ratio/xdplb_over_iptables_10_services_tcp_syn_ack",
    // Agent, Maglev, balancing spread, TCP connections (at the smoke run's sizes).
    "agent/cold_program_100_services",
    "agent/rss_100_services",
    "agent/endpoint_change_to_map_p50",
    "agent/endpoint_change_to_map_p99",
    "maglev/build_100_backends_m16381",
    "maglev/max_share_over_ideal_n10",
    "maglev/table_changed_removing_1_of_100",
    "spread/random_max_over_ideal",
    "spread/round_robin_max_over_ideal",
    "spread/least_conn_max_over_ideal",
    "spread/least_conn_preloaded_backend_share",
    "conn/via_cluster_ip_rate",
    "conn/direct_to_backend_p99",
    "ratio/conn_rate_cluster_ip_over_direct",
];

#[test]
fn bench_smoke_writes_well_formed_json() {
    xdplb_tests::require_root();
    let dir = std::env::temp_dir().join(format!("xdplb-bench-smoke-{}", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_xdplb-bench"))
        .args(["--smoke", "--out"])
        .arg(&dir)
        .output()
        .expect("running xdplb-bench");
    assert!(out.status.success(), "xdplb-bench --smoke failed:\n{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));

    let text = std::fs::read_to_string(dir.join("latest.json")).expect("latest.json written");
    let _ = std::fs::remove_dir_all(&dir);
    let doc: Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(doc["schema"], "xdplb-bench/1");
    assert_eq!(doc["mode"], "smoke");
    assert!(doc["kernel"].as_str().is_some_and(|k| !k.is_empty()), "kernel: {}", doc["kernel"]);
    assert!(doc["commit"].is_string(), "commit: {}", doc["commit"]);
    assert!(doc["machine"]["cpus"].as_u64().is_some_and(|n| n > 0), "machine: {}", doc["machine"]);

    let figures = doc["figures"].as_array().expect("figures array");
    for f in figures {
        let name = f["name"].as_str().expect("figure name");
        assert!(f["section"].is_string(), "{name}: section");
        let unit = f["unit"].as_str().expect("unit");
        assert!(UNITS.contains(&unit), "{name}: unit {unit}");
        let v = f["value"].as_f64().expect("numeric value");
        // A figure net of a floor measured beside it (`floor_ns`) can round
        // to 0 or below for a path of a few ns on a busy machine: its gross
        // (floor + net) must be positive.
        let floor = f["conditions"]["floor_ns"].as_f64().unwrap_or(0.0);
        assert!(v.is_finite() && v + floor > 0.0, "{name}: value {v} (net of floor {floor}) must be positive");
        assert!(f["conditions"].is_object(), "{name}: conditions object");
    }
    // A section the machine cannot run is skipped with its reason (live
    // frames need a capability some sandboxes withhold); every other
    // figure must be there.
    let skipped: Vec<&str> = doc["skipped"].as_array().expect("skipped array").iter().map(|s| {
        assert!(s["reason"].as_str().is_some_and(|r| !r.is_empty()), "a skip without a reason: {s}");
        s["section"].as_str().expect("skipped section")
    }).collect();
    assert!(skipped.iter().all(|s| *s == "live"), "only the live-frames section may be skipped: {skipped:?}");
    for want in REQUIRED.iter().filter(|w| !skipped.iter().any(|s| w.starts_with(&format!("{s}/")))) {
        assert!(figures.iter().any(|f| f["name"] == *want), "figure {want} missing");
    }
    // The newer sections state their sizes too.
    for (section, keys) in [
        ("agent", &["services", "agent_build"][..]),
        ("maglev", &["backends", "table_size"][..]),
        ("balance", &["flows", "backends", "counts"][..]),
        ("conn", &["backends", "threads", "rounds"][..]),
    ] {
        let fs: Vec<_> = figures.iter().filter(|f| f["section"] == section).collect();
        assert!(!fs.is_empty(), "no {section} figures");
        for f in fs {
            for key in keys {
                assert!(!f["conditions"][*key].is_null(), "{}: condition {key}", f["name"]);
            }
        }
    }
    // Forwarding rates state their sender, thread count and traffic.
    for f in figures.iter().filter(|f| f["unit"] == "Mpps") {
        for key in ["threads", "sender", "frame_bytes", "delivered_ratio", "proto"] {
            assert!(!f["conditions"][key].is_null(), "{}: condition {key}", f["name"]);
        }
        if f["name"].as_str().unwrap().contains("_services") {
            assert!(f["conditions"]["traffic"].is_string(), "{}: condition traffic", f["name"]);
        }
    }
    // Per-packet figures state what they were measured at.
    for f in figures.iter().filter(|f| f["section"] == "prog_cost" && f["name"].as_str().unwrap().starts_with("xdp_lb")) {
        for key in ["services", "backends_per_service", "repeat", "rounds", "floor_ns"] {
            assert!(f["conditions"][key].is_number(), "{}: condition {key}", f["name"]);
        }
    }
}
