//! `lb-agent services | backends | conntrack | stats` against maps of known
//! contents (programmed through the agent's own diff/apply, plus flows,
//! loads and per-CPU counters written directly), as tables and as JSON; and
//! `bpftool map dump` of the same pinned maps showing named fields.
//! Needs root.
use std::{net::Ipv4Addr, process::Command};

use aya::maps::PerCpuValues;
use lb_agent::{dataplane::monotonic_ns, ops::names};
use lb_common::{
    algorithm, counter, direction, flow_flags, FlowKeyV4, FlowV4, ServiceStats, IPPROTO_TCP,
    IPPROTO_UDP,
};
use serde_json::Value;
use xdplb_tests::{
    lb::Lb,
    ops::{agent_cmd, text},
    services::{contents, Svc},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const NODE: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);
const DNS: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
const CLIENT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
const B1: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 11);
const B2: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 12);

/// Two services: web (id 7, round-robin, affinity 600 s, ClusterIP and
/// NodePort, backends 3 and 4) and dns (id 9, Maglev over a 7-slot table
/// of backends 5 and 6, UDP); one TCP flow client → web on backend 3 (both
/// directions); backend 3 carries 2 live flows; counters and web's stats
/// split over the CPUs.
fn populated() -> Lb {
    let mut lb = Lb::load();
    let web = Svc::new(7, IPPROTO_TCP, algorithm::ROUND_ROBIN)
        .frontend(VIP, 80)
        .frontend(NODE, 30080)
        .backend(3, B1, 8080)
        .backend(4, B2, 8080)
        .affinity(600);
    let dns = Svc::new(9, IPPROTO_UDP, algorithm::MAGLEV)
        .frontend(DNS, 53)
        .backend(5, B1, 53)
        .backend(6, B2, 53)
        .table(vec![5, 6, 5, 5, 6, 6, 5]);
    lb.program(&contents(&[web, dns]));

    let now = monotonic_ns();
    let fwd_key = FlowKeyV4 {
        src_addr: CLIENT.octets(),
        dst_addr: VIP.octets(),
        src_port: 40000u16.to_be_bytes(),
        dst_port: 80u16.to_be_bytes(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let rep_key = FlowKeyV4 {
        src_addr: B1.octets(),
        dst_addr: CLIENT.octets(),
        src_port: 8080u16.to_be_bytes(),
        dst_port: 40000u16.to_be_bytes(),
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    };
    let flow = |dir, nat: Ipv4Addr, nat_port: u16, packets, bytes| FlowV4 {
        backend_id: 3,
        service_id: 7,
        nat_addr: nat.octets(),
        nat_port: nat_port.to_be_bytes(),
        peer_port: 40000u16.to_be_bytes(),
        peer_addr: CLIENT.octets(),
        direction: dir,
        flags: flow_flags::SEEN_REPLY,
        created_ns: now - 5_000_000_000,
        last_seen_ns: now - 1_000_000_000,
        packets,
        bytes,
        ..Default::default()
    };
    lb.maps
        .v4
        .conntrack
        .insert(fwd_key, flow(direction::FORWARD, B1, 8080, 6, 420), 0)
        .unwrap();
    lb.maps
        .v4
        .conntrack
        .insert(rep_key, flow(direction::REPLY, VIP, 80, 4, 900), 0)
        .unwrap();
    lb.maps.set_backend_load(3, 2).unwrap();

    let cpus = aya::util::nr_cpus().unwrap();
    // Counter values split over the CPUs: the CLI must sum them.
    let split = |total: u64| -> Vec<u64> {
        (0..cpus)
            .map(|c| if c == 0 { total - (cpus as u64 - 1) } else { 1 })
            .collect()
    };
    for (idx, total) in [
        (counter::PACKETS, 100),
        (counter::NAT_FORWARD, 60),
        (counter::PASS_NOT_SERVICE, 30),
        (counter::DROP_NO_BACKEND, 10),
    ] {
        lb.maps
            .counters
            .set(idx, PerCpuValues::try_from(split(total)).unwrap(), 0)
            .unwrap();
    }
    let st: Vec<ServiceStats> = split(60)
        .into_iter()
        .map(|p| ServiceStats {
            packets: p,
            bytes: p * 100,
            new_flows: (p > 1) as u64 * 12,
            drops_no_backend: 0,
        })
        .collect();
    lb.maps
        .service_stats
        .set(7, PerCpuValues::try_from(st).unwrap(), 0)
        .unwrap();
    lb
}

fn run(args: &[&str], lb: &Lb) -> String {
    let mut a = args.to_vec();
    let dir = lb.pin_dir().to_str().unwrap().to_string();
    a.extend(["--pin-path", &dir]);
    let out = agent_cmd(&a);
    assert!(out.status.success(), "lb-agent {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn json(args: &[&str], lb: &Lb) -> Value {
    let mut a = args.to_vec();
    a.push("--json");
    let s = run(&a, lb);
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("{args:?} --json is not JSON ({e}):\n{s}"))
}

fn assert_lines(out: &str, want: &[&str]) {
    for w in want {
        assert!(
            out.lines().any(|l| l
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
                .contains(w)),
            "no line containing {w:?} in\n{out}"
        );
    }
}

#[test]
fn services_show_frontends_algorithm_affinity_and_backends() {
    let lb = populated();
    // Names come from the agent's names file when there is one.
    let mut n = names::Names::new();
    n.insert(
        7,
        names::ServiceName {
            namespace: "shop".into(),
            name: "web".into(),
            port: "http".into(),
        },
    );
    names::write(lb.pin_dir(), &n).unwrap();
    let table = run(&["services"], &lb);
    let _ = std::fs::remove_file(names::path(lb.pin_dir()));
    println!("{table}");
    assert_lines(
        &table,
        &[
            "7 shop/web:http round-robin 600s 10.96.0.10:80/TCP, 192.168.1.1:30080/TCP",
            "backend 3 10.0.2.11:8080 active",
            "backend 4 10.0.2.12:8080 active",
            "9 - maglev - 10.96.0.53:53/UDP",
            "backend 5 10.0.2.11:53 active 4 slots",
            "backend 6 10.0.2.12:53 active 3 slots",
        ],
    );

    let v = json(&["services"], &lb);
    let rows = v.as_array().expect("an array");
    assert_eq!(rows.len(), 2, "{v:#}");
    let web = &rows[0];
    assert_eq!(web["id"], 7);
    assert_eq!(web["name"], Value::Null, "no names file any more");
    assert_eq!(web["algorithm"], "round-robin");
    assert_eq!(web["affinity_timeout_s"], 600);
    assert_eq!(
        web["frontends"],
        serde_json::json!(["10.96.0.10:80/TCP", "192.168.1.1:30080/TCP"])
    );
    assert_eq!(
        web["backends"][0],
        serde_json::json!({"id": 3, "addr": "10.0.2.11:8080", "state": "active", "slots": 1})
    );
    assert_eq!(rows[1]["slots"], 7);
    assert_eq!(rows[1]["backends"][1]["slots"], 3);
}

#[test]
fn backends_show_state_weight_and_live_flows() {
    let lb = populated();
    let table = run(&["backends"], &lb);
    println!("{table}");
    assert_lines(
        &table,
        &[
            "ID ADDRESS STATE WEIGHT FLOWS",
            "3 10.0.2.11:8080 active 1 2",
            "4 10.0.2.12:8080 active 1 0",
            "6 10.0.2.12:53 active 1 0",
        ],
    );
    let v = json(&["backends"], &lb);
    assert_eq!(v.as_array().unwrap().len(), 4);
    assert_eq!(
        v[0],
        serde_json::json!({"id": 3, "addr": "10.0.2.11:8080", "state": "active", "weight": 1, "flows": 2})
    );
}

#[test]
fn conntrack_shows_both_directions_and_filters() {
    let lb = populated();
    let table = run(&["conntrack"], &lb);
    println!("{table}");
    assert_lines(
        &table,
        &[
            "forward TCP 192.168.1.2:40000 10.96.0.10:80 10.0.2.11:8080 7 3",
            "reply TCP 10.0.2.11:8080 192.168.1.2:40000 10.96.0.10:80 7 3",
            "2 entries (1 flows)",
        ],
    );
    let v = json(&["conntrack", "--client", "192.168.1.2"], &lb);
    let rows = v.as_array().unwrap();
    assert_eq!(
        rows.len(),
        2,
        "the client filter keeps both directions: {v:#}"
    );
    let fwd = &rows[0];
    assert_eq!(
        (
            fwd["direction"].as_str(),
            fwd["packets"].as_u64(),
            fwd["bytes"].as_u64()
        ),
        (Some("forward"), Some(6), Some(420))
    );
    assert_eq!(fwd["flags"], serde_json::json!(["seen-reply"]));
    let (age, idle) = (
        fwd["age_s"].as_f64().unwrap(),
        fwd["idle_s"].as_f64().unwrap(),
    );
    // Created 5 s and last seen 1 s before `populated()` returned; the CLI
    // may run much later (building the binary can wait for cargo's lock),
    // but the two stay 4 s apart.
    assert!(
        age >= 5.0 && idle >= 1.0 && (age - idle - 4.0).abs() < 0.15,
        "age {age}, idle {idle}"
    );
    assert_eq!(rows[1]["bytes"], 900);
    assert_eq!(
        json(&["conntrack", "--client", "192.168.1.3"], &lb),
        serde_json::json!([])
    );
    assert_eq!(
        json(&["conntrack", "--service", "9"], &lb),
        serde_json::json!([])
    );
    assert_eq!(
        json(&["conntrack", "--service", "7"], &lb)
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn stats_sum_the_cpus() {
    let lb = populated();
    let table = run(&["stats"], &lb);
    println!("{table}");
    assert_lines(
        &table,
        &[
            "packets 100",
            "nat_forward 60",
            "pass_not_service 30",
            "drop_no_backend 10",
            "hairpin 0",
            "7 - 60 6000",
        ],
    );
    let v = json(&["stats"], &lb);
    assert_eq!(v["counters"]["nat_forward"], 60);
    assert_eq!(
        v["counters"].as_object().unwrap().len(),
        counter::LABELS.iter().filter(|l| !l.is_empty()).count()
    );
    let web = &v["services"][0];
    assert_eq!(
        (
            web["id"].as_u64(),
            web["packets"].as_u64(),
            web["bytes"].as_u64()
        ),
        (Some(7), Some(60), Some(6000))
    );
    assert_eq!(v["services"][1]["packets"], 0);
}

#[test]
fn the_cli_says_where_the_maps_are_missing() {
    let out = agent_cmd(&["services", "--pin-path", "/sys/fs/bpf/xlbt-none"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("no xdplb maps pinned under /sys/fs/bpf/xlbt-none"),
        "{}",
        text(&out)
    );
}

/// `bpftool map dump pinned <map> -j`: the BTF of every map names its fields.
fn dump(lb: &Lb, map: &str) -> Vec<Value> {
    let out = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(lb.pin_dir().join(map))
        .arg("-j")
        .output()
        .expect("bpftool (cargo xtask provision installs it)");
    assert!(out.status.success(), "bpftool: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bpftool -j output is not JSON: {e}"));
    v.as_array().expect("an array of entries").clone()
}

fn fields(v: &Value) -> Vec<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn bpftool_dumps_show_named_fields() {
    let lb = populated();
    let services = dump(&lb, "services_v4");
    assert_eq!(services.len(), 3, "three frontends");
    let web = services
        .iter()
        .find(|e| e["formatted"]["key"]["addr"] == serde_json::json!([10, 96, 0, 10]))
        .expect("the ClusterIP entry");
    let f = &web["formatted"];
    for name in ["addr", "port", "proto", "scope"] {
        assert!(
            f["key"].get(name).is_some(),
            "key field {name} missing: {f}"
        );
    }
    for name in ["id", "count", "algorithm", "flags", "affinity_timeout_s"] {
        assert!(
            f["value"].get(name).is_some(),
            "value field {name} missing: {f}"
        );
    }
    assert_eq!(
        (
            f["key"]["port"].clone(),
            f["value"]["id"].clone(),
            f["value"]["count"].clone()
        ),
        (
            serde_json::json!([0, 80]),
            serde_json::json!(7),
            serde_json::json!(2)
        )
    );

    let backends = dump(&lb, "backends_v4");
    let b = &backends
        .iter()
        .find(|e| e["formatted"]["key"] == 3)
        .expect("backend 3")["formatted"]["value"];
    assert_eq!(
        fields(b),
        ["_pad", "addr", "flags", "port", "state", "weight"],
        "{b}"
    );
    assert_eq!(b["addr"], serde_json::json!([10, 0, 2, 11]));

    let ct = dump(&lb, "conntrack_v4");
    assert_eq!(ct.len(), 2);
    let v = &ct[0]["formatted"]["value"];
    for name in [
        "backend_id",
        "service_id",
        "nat_addr",
        "nat_port",
        "peer_port",
        "peer_addr",
        "direction",
        "flags",
        "created_ns",
        "last_seen_ns",
        "packets",
        "bytes",
    ] {
        assert!(
            v.get(name).is_some(),
            "conntrack value field {name} missing: {v}"
        );
    }
    assert_eq!(v["backend_id"], 3);
    let k = &ct[0]["formatted"]["key"];
    assert_eq!(
        fields(k),
        ["_pad", "dst_addr", "dst_port", "proto", "src_addr", "src_port"],
        "{k}"
    );

    let slots = dump(&lb, "service_slots");
    assert_eq!(slots.len(), 2 + 7);
    assert!(
        slots[0]["formatted"]["key"].get("service_id").is_some()
            && slots[0]["formatted"]["key"].get("slot").is_some(),
        "{}",
        slots[0]
    );
    // Per-CPU stats: one value per CPU, each with the struct's fields.
    let stats = dump(&lb, "service_stats");
    let web = stats
        .iter()
        .find(|e| e["formatted"]["key"] == 7)
        .expect("stats of 7");
    let per_cpu = web["formatted"]["values"]
        .as_array()
        .expect("per-CPU values");
    assert!(per_cpu[0]["value"].get("new_flows").is_some(), "{web}");
}
