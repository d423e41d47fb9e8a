//! The shipped rules and dashboard against a real Prometheus scraping a
//! real `lb-agent run` while real traffic flows: UDP datagrams at a known
//! rate, each a new flow, into a conntrack map made small on purpose, plus
//! a trickle to a service without endpoints. Prometheus's rates match what
//! was sent; the "map nearly full" alert fires for conntrack_v4 (the rules'
//! `for:` shortened to a second); every recording rule and every PromQL
//! expression and variable of the dashboard returns data. Needs root and
//! Debian's prometheus.
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::{Duration, SystemTime},
};

use serde_json::Value;
use xdplb_tests::{
    agent::{objects_dir_with, programmed_at, slice_for, web_service, write, Agent, WEB_CLUSTER_IP},
    prometheus::{value, Prometheus},
    topology::Topology,
    traffic::UdpFlows,
    wait_for,
};

const METRICS: &str = "127.0.0.1:9464";
const NODE: &str = "node-0";
/// Conntrack entries (two per flow): full after 4-10 s of new flows.
const MAX_FLOWS: &str = "4096";
/// New flows/s asked of the sender (on a busy machine it sends fewer; the
/// checks compare with what its log says it sent).
const RATE: u32 = 500;
/// `shop/api`: a UDP service without endpoints (its packets are dropped).
const API_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
const API: &str = "apiVersion: v1
kind: Service
metadata:
  name: api
  namespace: shop
spec:
  type: ClusterIP
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  ports:
  - name: dns
    port: 53
    protocol: UDP
    targetPort: 53
  selector:
    app: api
";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The shipped rules with every `for:` cut to one second (one evaluation).
fn test_rules() -> String {
    let text = std::fs::read_to_string(root().join("deploy/observability/rules.yaml")).unwrap();
    text.lines()
        .map(|l| match l.split_once("for: ") {
            Some((indent, _)) if indent.trim().is_empty() => format!("{indent}for: 1s"),
            _ => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A dashboard expression with Grafana's variables set to "All".
fn substitute(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m").replace("$node", ".*").replace("$namespace", ".*").replace("$service", ".*")
}

fn now() -> f64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64()
}

/// Polls `cond` every 250 ms for up to `secs` seconds: each poll runs curl,
/// which at wait_for's 20 ms would take the CPU from the traffic sender.
fn poll(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let mut first = true;
    wait_for(Duration::from_secs(secs), || {
        if !std::mem::take(&mut first) {
            std::thread::sleep(Duration::from_millis(250));
        }
        cond()
    })
}

/// Waits until `q` returns at least one sample with a finite value.
fn has_data(p: &Prometheus, q: &str) -> Option<Vec<Value>> {
    let mut last = Vec::new();
    let ok = poll(30, || {
        last = p.query(q);
        last.iter().any(|s| value(s).is_finite())
    });
    ok.then_some(last)
}

#[test]
fn a_real_prometheus_fires_map_full_and_every_rule_and_panel_has_data() {
    let t = Topology::new(2);
    let svc = web_service(&[("xdplb.io/algorithm", "least-conn")], "UDP", "");
    let dir = objects_dir_with(&svc, &slice_for(&[0, 1], "UDP"));
    let mut agent = Agent::start_with(&t.node, &dir, &["--metrics-addr", METRICS, "--max-flows", MAX_FLOWS]);
    let dp = agent.maps();
    let ok = wait_for(Duration::from_secs(15), || programmed_at(&dp, WEB_CLUSTER_IP, 80, 17).is_some_and(|(c, _)| c == 2));
    assert!(ok, "the service never reached the maps:\n{}", agent.log());

    let prom = Prometheus::start(&t.node, METRICS, NODE, &test_rules());
    let up = poll(30, || prom.query("up{job=\"xdplb\"} == 1").len() == 1);
    assert!(up, "the agent is not scraped: {:?}\n{}\nagent:\n{}", prom.query("up"), prom.log(), agent.log());

    let web = UdpFlows::start(&t.client, SocketAddr::from((WEB_CLUSTER_IP, 80)), RATE);
    let started = std::time::Instant::now();
    // A change the agent programs while Prometheus watches (network
    // programming latency, sync durations), then traffic it drops.
    std::thread::sleep(Duration::from_secs(2));
    write(&dir, "api.yaml", API);
    let ok = wait_for(Duration::from_secs(15), || programmed_at(&dp, API_IP, 53, 17).is_some());
    assert!(ok, "shop/api never reached the maps:\n{}", agent.log());
    let api = UdpFlows::start_at(&t.client, SocketAddr::from((API_IP, 53)), 20, 50_000);

    // The map fills; the alert fires.
    let mut alerts = Vec::new();
    let fired = poll(90, || {
        alerts = prom.alerts();
        alerts.iter().any(|a| a["labels"]["alertname"] == "XdplbMapNearlyFull" && a["labels"]["map"] == "conntrack_v4" && a["state"] == "firing")
    });
    let fill = prom.query("xdplb_map_fill_ratio{map=\"conntrack_v4\"}");
    assert!(fired, "XdplbMapNearlyFull never fired; fill {fill:?}; alerts {alerts:#?}\n{}", agent.log());
    let fill = value(&fill[0]);
    println!("conntrack_v4 {:.1} % full; firing: {:?}", fill * 100.0, names(&alerts, "firing"));
    assert!(fill > 0.9, "{fill}");
    let a = alerts.iter().find(|a| a["labels"]["alertname"] == "XdplbMapNearlyFull").unwrap();
    assert_eq!(a["labels"]["instance"], NODE);
    assert_eq!(a["labels"]["severity"], "warning");
    assert!(a["annotations"]["summary"].as_str().unwrap().contains("conntrack_v4 on node-0"), "{a:#}");
    // Nothing wrong with the agent itself.
    for quiet in ["XdplbAgentsAbsent", "XdplbAgentDown", "XdplbAgentNotReady", "XdplbMapsUnreadable", "XdplbSyncsFailing", "XdplbServicesRejected"] {
        assert!(!names(&alerts, "firing").contains(&quiet.to_string()), "{quiet} fires: {alerts:#?}");
    }

    // What Prometheus computes from the scrapes is what was sent: packets
    // and new flows of shop/web over the last 10 s, against the sender's log
    // (10 s that all had traffic).
    if let Some(wait) = Duration::from_secs(13).checked_sub(started.elapsed()) {
        std::thread::sleep(wait);
    }
    let at = now() - 1.5;
    let sent = web.rate_between(((at - 10.0) * 1000.0) as u64, (at * 1000.0) as u64);
    for m in ["xdplb_service_packets_total", "xdplb_service_new_flows_total"] {
        let r = prom.query_at(&format!("sum(rate({m}{{name=\"web\"}}[10s]))"), Some(at));
        let got = value(&r[0]);
        println!("{m}: Prometheus {got:.1}/s, sent {sent:.1}/s");
        assert!((got - sent).abs() <= 0.10 * sent, "{m}: Prometheus says {got}/s, {sent}/s were sent");
    }
    let drops = prom.query("sum(rate(xdplb_service_drops_total{name=\"api\"}[10s]))");
    assert!(value(&drops[0]) > 5.0, "shop/api's drops: {drops:?}");

    // Every recording rule returns data.
    let rules: serde_norway::Value = serde_norway::from_str(&test_rules()).unwrap();
    let mut recorded = 0;
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            let Some(record) = r["record"].as_str() else { continue };
            let got = has_data(&prom, record).unwrap_or_else(|| panic!("recording rule {record} has no data: {:?}", prom.query(record)));
            println!("{record}: {}", got.iter().map(|s| format!("{}={}", s["metric"], value(s))).collect::<Vec<_>>().join(" "));
            recorded += 1;
        }
    }
    assert!(recorded >= 10, "{recorded}");
    let per_service = prom.query("service:xdplb_service_packets:rate1m{name=\"web\"}");
    assert_eq!(per_service[0]["metric"]["instance"], NODE, "{per_service:?}");
    // rate() divides by the whole minute, of which only the last seconds had traffic.
    assert!(value(&per_service[0]) > 0.0, "{per_service:?}");
    let p99 = value(&prom.query("instance:kubeproxy_network_programming_duration_seconds:p99")[0]);
    assert!(p99 > 0.0 && p99 < 5.0, "network programming p99 {p99}");

    // Every dashboard expression and variable returns data.
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(root().join("deploy/observability/dashboard.json")).unwrap()).unwrap();
    let mut exprs = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let q = substitute(target["expr"].as_str().unwrap());
            assert!(!q.contains('$'), "a variable the test does not know in {q}");
            if has_data(&prom, &q).is_none() {
                panic!("panel {:?}: {q} returns no data: {:?}", panel["title"], prom.query(&q));
            }
            exprs += 1;
        }
    }
    assert!(exprs >= 15, "{exprs} expressions");
    for var in dash["templating"]["list"].as_array().unwrap() {
        let Some(q) = var["query"]["query"].as_str() else { continue };
        // label_values(<selector>, <label>): the selector's series carry the label.
        let inner = q.strip_prefix("label_values(").and_then(|s| s.strip_suffix(')')).unwrap_or_else(|| panic!("{q}"));
        let (selector, label) = inner.rsplit_once(',').unwrap();
        let got = prom.query(&substitute(selector.trim()));
        let values: Vec<&str> = got.iter().filter_map(|s| s["metric"][label.trim()].as_str()).collect();
        assert!(!values.is_empty(), "variable {}: {q} has no values", var["name"]);
        println!("variable {}: {values:?}", var["name"]);
    }
    println!("{exprs} dashboard expressions and every variable returned data");
    drop((api, web));
    agent.assert_alive();
}

fn names(alerts: &[Value], state: &str) -> Vec<String> {
    let mut n: Vec<String> = alerts.iter().filter(|a| a["state"] == state).map(|a| a["labels"]["alertname"].as_str().unwrap_or("").to_string()).collect();
    n.dedup();
    n
}
