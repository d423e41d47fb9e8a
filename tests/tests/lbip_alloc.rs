//! LoadBalancer address allocation (issue #13) against the API server
//! double: the agent's own allocator (`lb_agent::lbip::controller`, kube-rs
//! unmodified) elects itself through a Lease, follows LoadBalancerPool
//! objects, and writes Services' status, conditions and Events. Two
//! allocators race for the Lease; the leader is killed and the other takes
//! over, and no address is ever held by two Services.
use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_agent::lbip::{alloc, controller, leader::Timings, pool::Pools, Status};
use serde_json::{json, Value};
use xdplb_tests::apiserver::{ApiServer, Resource};

const NS: &str = "shop";

fn lb_service(name: &str, extra: Value) -> Value {
    let mut s = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": NS, "name": name},
        "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    });
    merge(&mut s, &extra);
    s
}

fn merge(t: &mut Value, p: &Value) {
    match (t, p) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                merge(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, p) => *t = p.clone(),
    }
}

fn pool(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "xdplb.io/v1alpha1", "kind": "LoadBalancerPool", "metadata": {"name": name}, "spec": spec})
}

/// The IPs in a Service's status.
fn ingress(api: &ApiServer, name: &str) -> Vec<String> {
    let s = api
        .get(Resource::Services, NS, name)
        .unwrap_or_else(|| panic!("no Service {name}"));
    s["status"]["loadBalancer"]["ingress"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["ip"].as_str().map(String::from))
        .collect()
}

fn condition(api: &ApiServer, name: &str) -> Option<(String, String)> {
    let s = api.get(Resource::Services, NS, name)?;
    let c = s["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == alloc::CONDITION)?
        .clone();
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
    ))
}

fn wait(what: &str, api: &ApiServer, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let svcs: Vec<(String, Value)> = api
        .list(Resource::Services)
        .iter()
        .map(|s| {
            (
                s["metadata"]["name"].as_str().unwrap_or("").to_string(),
                s["status"].clone(),
            )
        })
        .collect();
    panic!(
        "{what}: not within 30 s; services: {svcs:#?}\nevents: {:#?}",
        api.list(Resource::Events)
            .iter()
            .map(|e| (e["reason"].clone(), e["message"].clone()))
            .collect::<Vec<_>>()
    );
}

/// Every address held by at most one Service, unless sharing is allowed.
fn assert_no_double(api: &ApiServer) {
    let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in api.list(Resource::Services) {
        let name = s["metadata"]["name"].as_str().unwrap_or("").to_string();
        let key = s["metadata"]["annotations"][alloc::SHARE_ANNOTATION]
            .as_str()
            .unwrap_or("")
            .to_string();
        for i in s["status"]["loadBalancer"]["ingress"]
            .as_array()
            .into_iter()
            .flatten()
        {
            by.entry(i["ip"].as_str().unwrap_or("").to_string())
                .or_default()
                .push(format!("{name}[{key}]"));
        }
    }
    for (a, holders) in by {
        let shared = holders.len() > 1 && holders.iter().all(|h| h.ends_with("[dns]"));
        assert!(holders.len() == 1 || shared, "{a} held by {holders:?}");
    }
}

/// One allocator on its own runtime (dropped = the agent is killed).
struct Allocator {
    rt: Option<tokio::runtime::Runtime>,
    status: Arc<Status>,
}

impl Allocator {
    fn start(api: &ApiServer, identity: &str, kubeconfig: &std::path::Path) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let status = Arc::new(Status::default());
        let (st, id, path) = (
            status.clone(),
            identity.to_string(),
            kubeconfig.to_path_buf(),
        );
        let _ = api;
        rt.spawn(async move {
            let client = lb_agent::control::source::kube::client(Some(&path), Arc::default())
                .await
                .expect("a client");
            let (tx, rx) = tokio::sync::watch::channel(Arc::new(Pools::default()));
            let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
            controller::follow_pools(client.clone(), Vec::new(), tx, ready_tx);
            let election = controller::Election {
                namespace: "xdplb-system".into(),
                name: "xdplb-lb-allocator".into(),
                identity: id,
                timings: Timings::for_duration(Duration::from_secs(2)),
            };
            controller::allocate(client, election, alloc::Config::default(), rx, ready_rx, st)
                .await;
        });
        Self {
            rt: Some(rt),
            status,
        }
    }

    fn leader(&self) -> bool {
        self.status.view().leader
    }

    fn kill(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        self.kill();
    }
}

#[test]
fn the_leader_allocates_from_pools_and_reports_conflicts_and_exhaustion() {
    let api = ApiServer::start();
    let kubeconfig =
        std::env::temp_dir().join(format!("xlbt-{}-lbip-alloc.kubeconfig", std::process::id()));
    api.write_kubeconfig(&kubeconfig);
    api.apply(pool(
        "lan",
        json!({"addresses": ["192.0.2.0/29", "fd00:2::/126"]}),
    ));
    api.apply(pool(
        "edge",
        json!({"addresses": ["198.51.100.10-198.51.100.11"], "autoAssign": false}),
    ));
    // Invalid: overlaps lan. Refused by name, the others are used.
    api.apply(pool("bad", json!({"addresses": ["192.0.2.4/30"]})));

    let a = Allocator::start(&api, "node-a", &kubeconfig);
    wait("node-a leads", &api, || a.leader());

    api.apply(lb_service("web", json!({})));
    api.apply(lb_service(
        "asked",
        json!({"spec": {"loadBalancerIP": "192.0.2.5"}}),
    ));
    api.apply(lb_service(
        "dual",
        json!({"spec": {"ipFamilies": ["IPv4", "IPv6"], "ipFamilyPolicy": "RequireDualStack"}}),
    ));
    api.apply(lb_service(
        "theirs",
        json!({"spec": {"loadBalancerClass": "metallb.io/metallb"}}),
    ));
    api.apply(lb_service(
        "pinned",
        json!({"metadata": {"annotations": {alloc::POOL_ANNOTATION: "edge"}}}),
    ));
    api.apply(lb_service("dns-tcp", json!({"metadata": {"annotations": {alloc::SHARE_ANNOTATION: "dns"}}, "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "TCP"}]}})));
    api.apply(lb_service("dns-udp", json!({"metadata": {"annotations": {alloc::SHARE_ANNOTATION: "dns"}}, "spec": {"ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]}})));
    api.apply(lb_service(
        "clash",
        json!({"metadata": {"annotations": {alloc::IPS_ANNOTATION: "192.0.2.5"}}}),
    ));

    wait("every served Service has its addresses", &api, || {
        ingress(&api, "web").len() == 1
            && ingress(&api, "dual").len() == 2
            && ingress(&api, "dns-udp").len() == 1
            && condition(&api, "clash").is_some()
            && ingress(&api, "pinned").len() == 1
            && ingress(&api, "asked").len() == 1
    });
    assert_eq!(
        ingress(&api, "asked"),
        ["192.0.2.5"],
        "spec.loadBalancerIP honoured"
    );
    assert_eq!(
        ingress(&api, "pinned"),
        ["198.51.100.10"],
        "the annotated pool, though not auto-assign"
    );
    let dual = ingress(&api, "dual");
    assert!(
        dual[0].starts_with("192.0.2.") && dual[1].starts_with("fd00:2::"),
        "one per family, in ipFamilies order: {dual:?}"
    );
    assert_eq!(
        ingress(&api, "dns-tcp"),
        ingress(&api, "dns-udp"),
        "shared: same key, disjoint ports"
    );
    assert!(
        ingress(&api, "theirs").is_empty() && condition(&api, "theirs").is_none(),
        "another class: untouched"
    );
    assert!(ingress(&api, "clash").is_empty());
    assert_eq!(
        condition(&api, "clash"),
        Some(("False".into(), "AddressInUse".into()))
    );
    assert_eq!(
        condition(&api, "web"),
        Some(("True".into(), "Allocated".into()))
    );
    assert_no_double(&api);

    // lan has 6 IPv4 addresses: web, asked, dual, dns = 4 held; two more fit, the third does not.
    for n in ["more-1", "more-2", "more-3"] {
        api.apply(lb_service(n, json!({})));
    }
    // The end state, not only its last step: more-3's condition can be
    // written before more-2's address reaches the API server.
    wait("exhaustion reported", &api, || {
        condition(&api, "more-3").is_some_and(|c| c.1 == "PoolExhausted")
            && ["more-1", "more-2"].iter().all(|n| !ingress(&api, n).is_empty())
    });
    assert_eq!(
        (
            ingress(&api, "more-1").len(),
            ingress(&api, "more-2").len(),
            ingress(&api, "more-3").len()
        ),
        (1, 1, 0)
    );
    let events = api.list(Resource::Events);
    let reasons: Vec<(&str, &str)> = events
        .iter()
        .map(|e| {
            (
                e["involvedObject"]["name"].as_str().unwrap_or(""),
                e["reason"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert!(reasons.contains(&("clash", "AddressInUse")), "{reasons:?}");
    assert!(
        reasons.contains(&("more-3", "PoolExhausted")),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&("web", "AddressAllocated")),
        "{reasons:?}"
    );
    assert!(events
        .iter()
        .all(|e| e["type"] == "Warning" || e["type"] == "Normal"));

    // Release: web becomes a ClusterIP Service; its address goes to more-3.
    let web_ip = ingress(&api, "web");
    let mut web = api.get(Resource::Services, NS, "web").unwrap();
    web["spec"]["type"] = json!("ClusterIP");
    api.apply(web);
    wait("web released, more-3 served", &api, || {
        ingress(&api, "web").is_empty() && ingress(&api, "more-3") == web_ip
    });
    // Delete: its address is free again for the next.
    let more1 = ingress(&api, "more-1");
    assert!(api.delete(Resource::Services, NS, "more-1"));
    api.apply(lb_service("late", json!({})));
    wait("late gets more-1's address", &api, || {
        ingress(&api, "late") == more1
    });
    assert_no_double(&api);

    let allowed: std::collections::BTreeSet<_> =
        lb_agent::control::source::kube::kube_api_call_set()
            .into_iter()
            .chain(
                lb_agent::control::source::kube::LEASE_API_CALLS
                    .iter()
                    .flat_map(|(g, r, vs)| {
                        vs.iter()
                            .map(move |v| (g.to_string(), r.to_string(), v.to_string()))
                    }),
            )
            .collect();
    let seen: std::collections::BTreeSet<_> = api
        .calls()
        .into_iter()
        .filter(|(_, r, _)| !r.starts_with('/'))
        .collect();
    assert!(
        seen.is_subset(&allowed),
        "calls outside RBAC: {:?}",
        seen.difference(&allowed).collect::<Vec<_>>()
    );
    let _ = std::fs::remove_file(&kubeconfig);
}

#[test]
fn a_new_leader_takes_over_and_never_hands_out_an_address_twice() {
    let api = ApiServer::start();
    let kubeconfig = std::env::temp_dir().join(format!(
        "xlbt-{}-lbip-leader.kubeconfig",
        std::process::id()
    ));
    api.write_kubeconfig(&kubeconfig);
    api.apply(pool("lan", json!({"addresses": ["192.0.2.0/28"]})));
    // Allocated before this agent ever ran (its status is the record): kept,
    // even though the pools arrive only after the agent starts.
    let mut early = lb_service("early", json!({}));
    early["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.9"}]}});
    api.apply(early);
    let mut a = Allocator::start(&api, "node-a", &kubeconfig);
    wait("node-a leads", &api, || a.leader());
    let b = Allocator::start(&api, "node-b", &kubeconfig);
    for i in 0..5 {
        api.apply(lb_service(&format!("s{i}"), json!({})));
    }
    wait("five allocated", &api, || {
        (0..5).all(|i| ingress(&api, &format!("s{i}")).len() == 1)
    });
    assert!(a.leader() && !b.leader(), "one leader at a time");
    assert_eq!(
        ingress(&api, "early"),
        ["192.0.2.9"],
        "an address from the record is kept"
    );
    assert_no_double(&api);

    // The leader dies (its Lease is left as it was); services keep coming.
    a.kill();
    let killed = Instant::now();
    for i in 5..10 {
        api.apply(lb_service(&format!("s{i}"), json!({})));
        assert!(api.delete(Resource::Services, NS, &format!("s{}", i - 5)) || i - 5 >= 5);
    }
    wait("node-b leads", &api, || b.leader());
    let took = killed.elapsed();
    wait("node-b allocated the new ones", &api, || {
        (5..10).all(|i| ingress(&api, &format!("s{i}")).len() == 1)
    });
    assert_no_double(&api);
    let lease = api
        .get(Resource::Leases, "xdplb-system", "xdplb-lb-allocator")
        .expect("the Lease");
    assert_eq!(lease["spec"]["holderIdentity"], "node-b");
    assert!(lease["spec"]["leaseTransitions"].as_i64() >= Some(1));
    // Took over after the 2 s lease expired, not before.
    assert!(
        took >= Duration::from_millis(1900),
        "took over after {took:?}, before the lease expired"
    );
    println!("allocator lease: node-b took over {took:?} after node-a was killed (lease 2 s)");
    let _ = std::fs::remove_file(&kubeconfig);
}
