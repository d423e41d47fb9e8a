//! `--source kube` against the API server double (tests/src/apiserver):
//! first the kube source in process (no root: first complete list, bursts,
//! cuts, 410, bookmarks), then the real `lb-agent run` binary in a node
//! namespace, checked with real traffic and the pinned maps (root).
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::Arc,
    time::{Duration, Instant},
};

use lb_agent::{
    control::{
        model::{Model, ObjectRef},
        source::kube::{self, SourceHealth},
    },
    dataplane::Dataplane,
};
use xdplb_tests::{
    agent::{agent_binary, programmed, WEB_CLUSTER_IP},
    apiserver::{objects, ApiServer, Resource},
    netns::Netns,
    servers::{http_get, tally, Server},
    topology::{backend_addr, Topology, NODE_ADDR},
    wait_for,
};

const NODE: &str = "node-a";

/// A fresh path under the temp dir, unique per test and process.
fn temp_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("xlbt-{}-kube-{tag}", std::process::id()))
}

/// The objects every test starts from: node-a, and `shop/web`
/// (10.96.0.10:80 → named port `http` = 8080) with `backends` ready.
fn web(api: &ApiServer, backends: &[usize]) {
    api.apply(objects::service("shop", "web", WEB_CLUSTER_IP, 80));
    web_slice(api, backends);
}

fn web_slice(api: &ApiServer, backends: &[usize]) {
    let addrs: Vec<Ipv4Addr> = backends.iter().map(|&i| backend_addr(i)).collect();
    api.apply(objects::slice("shop", "web-1", "web", 8080, &addrs, NODE));
}

/// The calls the double saw, all within what the RBAC role grants.
fn assert_calls_within_rbac(api: &ApiServer) {
    let allowed = lb_agent::control::source::kube::kube_api_call_set();
    let seen = api.calls();
    assert!(
        seen.is_subset(&allowed),
        "calls outside KUBE_API_CALLS: {:?}",
        seen.difference(&allowed).collect::<Vec<_>>()
    );
}

// ---- The kube source in process -------------------------------------------

/// Polls `cond` every 20 ms (without blocking the runtime) until it holds or
/// `timeout` passes.
async fn until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while !cond() {
        if Instant::now() > end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// Endpoint addresses of `shop/web-1` in a model.
fn endpoints(m: &Model) -> Vec<Ipv4Addr> {
    m.slices
        .get(&ObjectRef::new("shop", "web-1"))
        .map(|s| s.endpoints.iter().filter_map(|e| match e.addr { std::net::IpAddr::V4(a) => Some(a), std::net::IpAddr::V6(_) => None }).collect())
        .unwrap_or_default()
}

/// Waits (up to `timeout`) for a model that satisfies `cond`; returns how
/// many models arrived until then.
async fn model_until(
    rx: &mut tokio::sync::watch::Receiver<Arc<Model>>,
    timeout: Duration,
    cond: impl Fn(&Model) -> bool,
) -> usize {
    let mut n = 0;
    let end = tokio::time::Instant::now() + timeout;
    while !cond(&rx.borrow_and_update()) {
        match tokio::time::timeout_at(end, rx.changed()).await {
            Ok(Ok(())) => n += 1,
            Ok(Err(_)) => panic!("the kube source stopped"),
            Err(_) => panic!("no such model within {timeout:?}; last: {:?}", *rx.borrow()),
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_sends_nothing_before_a_complete_list_and_one_model_per_burst() {
    let api = ApiServer::start();
    api.apply(objects::node(NODE, NODE_ADDR));
    web(&api, &[0, 1, 2]);
    let kubeconfig = temp_path("burst");
    api.write_kubeconfig(&kubeconfig);

    // The API server is down at start (503; kube-client retries those itself,
    // with backoff): the source sends nothing.
    api.set_available(false);
    let health = Arc::new(SourceHealth::default());
    let (h, kc) = (health.clone(), kubeconfig.clone());
    let started = tokio::spawn(async move { kube::start(Some(&kc), NODE, h).await });
    assert!(
        until(Duration::from_secs(10), || api.count("list", "services")
            >= 2)
        .await,
        "no retry"
    );
    assert!(
        !started.is_finished(),
        "the source returned without a complete list"
    );
    assert_eq!((health.models(), health.synced()), (0, false));

    api.set_available(true);
    let mut rx = tokio::time::timeout(Duration::from_secs(20), started)
        .await
        .expect("the first model within 20 s of the API coming back")
        .expect("the source task")
        .expect("the kube source");
    {
        let first = rx.borrow_and_update();
        assert_eq!(first.services.len(), 1);
        assert_eq!(
            endpoints(&first),
            [backend_addr(0), backend_addr(1), backend_addr(2)]
        );
        assert_eq!(first.nodes[NODE].addresses, [std::net::IpAddr::from(NODE_ADDR)]);
    }
    // The store is ready a moment before the watch task records InitDone.
    assert!(until(Duration::from_secs(5), || health.synced() && health.connected()).await);
    assert_eq!(health.models(), 1);

    // 1,000 new Services at once: the first goes out at once (a change
    // after a quiet spell), the rest in one model after the burst.
    let started = Instant::now();
    for i in 0..1000u32 {
        let ip = Ipv4Addr::new(10, 97, (i / 200) as u8, (i % 200 + 1) as u8);
        api.apply(objects::service("burst", &format!("s{i}"), ip, 80));
    }
    let models = model_until(&mut rx, Duration::from_secs(20), |m| {
        m.services.len() == 1001
    })
    .await;
    let took = started.elapsed();
    assert!(
        tokio::time::timeout(Duration::from_millis(600), rx.changed())
            .await
            .is_err(),
        "a model after the burst's"
    );
    assert!(models <= 2, "1,000 events became {models} models");
    // Sent (the receiver may see two as one): the first, and at most two.
    assert!((2..=3).contains(&health.models()), "{} models sent", health.models());
    println!("1,000 Service events → 1 model in {} ms", took.as_millis());
    assert_calls_within_rbac(&api);
    let _ = std::fs::remove_file(&kubeconfig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_resumes_after_cuts_uses_bookmarks_and_relists_after_410() {
    let api = ApiServer::start();
    let node_rv = api.apply(objects::node(NODE, NODE_ADDR));
    web(&api, &[0, 1, 2]);
    let kubeconfig = temp_path("resume");
    api.write_kubeconfig(&kubeconfig);
    let health = Arc::new(SourceHealth::default());
    let mut rx = kube::start(Some(&kubeconfig), NODE, health.clone())
        .await
        .expect("the kube source");
    let lists = api.count("list", "services");
    assert_eq!(lists, 1);
    assert!(until(Duration::from_secs(5), || api.open_watches() == 3).await);
    let node_watch = api
        .requests()
        .into_iter()
        .find(|r| r.verb == "watch" && r.resource == "nodes");
    assert_eq!(
        node_watch.and_then(|r| r.field_selector),
        Some(format!("metadata.name={NODE}")),
        "only this node is watched"
    );

    // Cut every watch: the watchers resume from their version, no relist,
    // and a change made meanwhile arrives.
    assert_eq!(api.drop_watches(), 3);
    web_slice(&api, &[0, 1]);
    model_until(&mut rx, Duration::from_secs(10), |m| {
        endpoints(m) == [backend_addr(0), backend_addr(1)]
    })
    .await;
    assert!(
        until(Duration::from_secs(10), || api.open_watches() == 3).await,
        "no reconnect"
    );
    assert_eq!(
        api.count("list", "services"),
        lists,
        "resumed, not relisted"
    );
    assert_eq!(health.relists(), 0);

    // Bookmarks move the watchers' version on: after a cut, the Nodes watch
    // (whose only object is older) resumes from a bookmark's version.
    let sent = api.bookmarks_sent();
    assert!(
        until(Duration::from_secs(5), || api.bookmarks_sent() >= sent + 3).await,
        "no bookmarks"
    );
    api.drop_watches();
    assert!(
        until(Duration::from_secs(10), || api.open_watches() == 3).await,
        "no reconnect"
    );
    let resumed = api
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.verb == "watch" && r.resource == "nodes")
        .and_then(|r| r.resource_version?.parse::<u64>().ok())
        .expect("a resumed Nodes watch");
    assert!(
        resumed > node_rv,
        "the Nodes watch resumed from {resumed}, not past the bookmark (node at {node_rv})"
    );
    assert_eq!(health.relists(), 0);

    // Down, a change, history compacted, up: every watch gets 410 Gone and
    // relists; the change made meanwhile is in the model.
    api.set_available(false);
    web_slice(&api, &[2]);
    api.compact();
    api.set_available(true);
    model_until(&mut rx, Duration::from_secs(20), |m| {
        endpoints(m) == [backend_addr(2)]
    })
    .await;
    assert!(
        until(Duration::from_secs(20), || [
            &health.services,
            &health.endpoint_slices,
            &health.nodes
        ]
        .iter()
        .all(|w| w.relists() >= 1))
        .await,
        "every resource relists (some may still be in kube-client's 503 retries): {}",
        health.relists()
    );
    // The watcher counts a relist (Event::Init) before it sends the list
    // request: wait for the request rather than assume it went out.
    assert!(
        until(Duration::from_secs(20), || api.count("list", "services") > lists).await,
        "no relist request for services"
    );
    assert!(until(Duration::from_secs(10), || health.connected()).await);
    assert!(health.services.last_event().is_some());
    assert_calls_within_rbac(&api);
    let _ = std::fs::remove_file(&kubeconfig);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_sends_nothing_while_one_resource_is_forbidden() {
    let api = ApiServer::start();
    api.apply(objects::node(NODE, NODE_ADDR));
    web(&api, &[0, 1]);
    let kubeconfig = temp_path("forbidden");
    api.write_kubeconfig(&kubeconfig);

    // Services and EndpointSlices list fine, Nodes are denied (a role
    // missing them): no model, rather than one without this node.
    api.set_forbidden(Resource::Nodes, true);
    let health = Arc::new(SourceHealth::default());
    let (h, kc) = (health.clone(), kubeconfig.clone());
    let started = tokio::spawn(async move { kube::start(Some(&kc), NODE, h).await });
    let denied = || api.requests().iter().filter(|r| r.status == 403).count();
    assert!(
        until(Duration::from_secs(10), || denied() >= 2).await,
        "no retry of the denied list"
    );
    assert!(
        until(Duration::from_secs(5), || health.services.synced()
            && health.endpoint_slices.synced())
        .await
    );
    assert!(!started.is_finished(), "a model without Nodes");
    assert_eq!((health.models(), health.nodes.synced()), (0, false));
    // The server counts a denial before the client has taken it in.
    assert!(
        until(Duration::from_secs(10), || health.nodes.errors() >= 2 && !health.nodes.connected()).await,
        "denials not counted as errors: {}",
        health.nodes.errors()
    );

    api.set_forbidden(Resource::Nodes, false);
    let rx = tokio::time::timeout(Duration::from_secs(30), started)
        .await
        .expect("the first model within 30 s of the Nodes being allowed")
        .expect("the source task")
        .expect("the kube source");
    let first = rx.borrow();
    assert_eq!(first.nodes[NODE].addresses, [std::net::IpAddr::from(NODE_ADDR)]);
    assert_eq!(endpoints(&first), [backend_addr(0), backend_addr(1)]);
    let _ = std::fs::remove_file(&kubeconfig);
}

/// 10,000 Services with 100,000 endpoints through the real kube-rs client:
/// the first model, then one endpoint change, with the times printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_source_lists_10k_services_and_100k_endpoints() {
    let api = ApiServer::start();
    api.apply(objects::node(NODE, NODE_ADDR));
    let addrs = |i: u32| -> Vec<Ipv4Addr> {
        (0..10u32)
            .map(|e| Ipv4Addr::from(0x0a40_0000 + i * 16 + e))
            .collect()
    };
    for i in 0..10_000u32 {
        let name = format!("s{i}");
        api.apply(objects::service(
            "scale",
            &name,
            Ipv4Addr::from(0x0a60_0000 + i + 1),
            80,
        ));
        api.apply(objects::slice(
            "scale",
            &format!("{name}-1"),
            &name,
            8080,
            &addrs(i),
            NODE,
        ));
    }
    let kubeconfig = temp_path("scale");
    api.write_kubeconfig(&kubeconfig);
    let started = Instant::now();
    let health = Arc::new(SourceHealth::default());
    let mut rx = kube::start(Some(&kubeconfig), NODE, health)
        .await
        .expect("the kube source");
    let listed = started.elapsed();
    {
        let m = rx.borrow_and_update();
        assert_eq!((m.services.len(), m.slices.len()), (10_000, 10_000));
        let endpoints: usize = m.slices.values().map(|s| s.endpoints.len()).sum();
        assert_eq!(endpoints, 100_000);
    }
    let changed = Instant::now();
    api.apply(objects::slice(
        "scale",
        "s0-1",
        "s0",
        8080,
        &addrs(0)[..9],
        NODE,
    ));
    let key = ObjectRef::new("scale", "s0-1");
    model_until(&mut rx, Duration::from_secs(30), |m| {
        m.slices[&key].endpoints.len() == 9
    })
    .await;
    println!(
        "kube source: 10,000 Services / 100,000 endpoints listed into a model in {} ms; one change → new model in {} ms",
        listed.as_millis(),
        changed.elapsed().as_millis()
    );
    let _ = std::fs::remove_file(&kubeconfig);
}

/// `lb-agent plan --source kube` lists the cluster once, prints the plan
/// and exits (no root: it does not touch the kernel).
#[test]
fn plan_with_source_kube_prints_the_listed_cluster() {
    let api = ApiServer::start();
    api.apply(objects::node(NODE, NODE_ADDR));
    web(&api, &[0, 1, 2]);
    let kubeconfig = temp_path("plan");
    api.write_kubeconfig(&kubeconfig);
    let out = Command::new(agent_binary())
        .args([
            "plan",
            "--source",
            "kube",
            "--node-name",
            NODE,
            "--json",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .output()
        .expect("running lb-agent plan");
    let _ = std::fs::remove_file(&kubeconfig);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).expect("JSON on stdout");
    for text in [
        WEB_CLUSTER_IP.to_string(),
        backend_addr(0).to_string(),
        backend_addr(2).to_string(),
    ] {
        assert!(
            stdout.contains(&text),
            "{text} missing from the plan: {plan:#}"
        );
    }
    assert_eq!(api.count("list", "services"), 1, "one list, then exit");
}

// ---- The real agent binary in a node namespace (root) ----------------------

/// `lb-agent run --source kube` inside a node namespace; killed and its pins,
/// kubeconfig and log removed on drop.
struct KubeAgent {
    child: Child,
    pin_dir: PathBuf,
    kubeconfig: PathBuf,
    log: PathBuf,
    ns: String,
    extra: Vec<String>,
    /// Agents that had attached on this log before the current one started.
    attached_before: usize,
}

impl KubeAgent {
    fn start(node: &Netns, api: &ApiServer, tag: &str) -> Self {
        Self::start_with(node, api, tag, &[])
    }

    /// As [`KubeAgent::start`], with more `run` arguments.
    fn start_with(node: &Netns, api: &ApiServer, tag: &str, extra: &[&str]) -> Self {
        let base = temp_path(tag);
        let (kubeconfig, log) = (
            base.with_extension("kubeconfig"),
            base.with_extension("log"),
        );
        api.write_kubeconfig(&kubeconfig);
        let pin_dir = PathBuf::from(format!(
            "/sys/fs/bpf/xlbt-{}-kube-{tag}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&pin_dir);
        let _ = std::fs::remove_file(&log);
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let child = spawn(node.name(), &kubeconfig, &pin_dir, &log, &extra);
        Self {
            child,
            pin_dir,
            kubeconfig,
            log,
            ns: node.name().to_string(),
            extra,
            attached_before: 0,
        }
    }

    /// SIGTERM, a clean exit, and a new agent on the same pins.
    fn restart_after(&mut self, between: impl FnOnce()) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let status = self.child.wait().expect("waiting for lb-agent");
        assert!(
            status.success(),
            "lb-agent did not exit cleanly ({status}):\n{}",
            self.log()
        );
        between();
        self.attached_before = xdplb_tests::agent::attached_count(&self.log);
        self.child = spawn(&self.ns, &self.kubeconfig, &self.pin_dir, &self.log, &self.extra);
    }

    /// Waits until the agent has pinned its maps (after its first complete
    /// list) and attached its programs, and opens the maps.
    fn maps(&mut self) -> Dataplane {
        let (pin_dir, log) = (self.pin_dir.clone(), self.log.clone());
        xdplb_tests::agent::wait_running(&pin_dir, &log, self.attached_before, || self.assert_alive())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `writes=N` figure of every "synced" line so far.
    fn sync_writes(&self) -> Vec<usize> {
        xdplb_tests::agent::sync_writes(&self.log())
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("lb-agent exited ({status}):\n{}", self.log());
        }
    }
}

fn spawn(ns: &str, kubeconfig: &Path, pin_dir: &Path, log: &Path, extra: &[String]) -> Child {
    let mut args = ["--source", "kube", "--node-name", NODE, "--kubeconfig", &kubeconfig.display().to_string()].map(String::from).to_vec();
    args.extend_from_slice(extra);
    xdplb_tests::agent::spawn_run(ns, pin_dir, log, &args)
}

impl Drop for KubeAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        lb_agent::ops::names::remove(&self.pin_dir);
        let _ = std::fs::remove_file(&self.kubeconfig);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Three backends answering on 8080 in a fresh topology.
fn topology() -> (Topology, Vec<Server>) {
    let t = Topology::new(3);
    let servers = (0..3)
        .map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}")))
        .collect();
    (t, servers)
}

/// Waits until the ClusterIP has exactly `backends` programmed.
fn wait_programmed(agent: &mut KubeAgent, dp: &Dataplane, backends: &[usize]) {
    let mut want: Vec<Ipv4Addr> = backends.iter().map(|&i| backend_addr(i)).collect();
    want.sort();
    let ok = wait_for(Duration::from_secs(20), || {
        agent.assert_alive();
        programmed(dp).is_some_and(|(n, mut got)| {
            got.sort();
            n as usize == want.len() && got == want
        })
    });
    assert!(
        ok,
        "the maps never held {want:?}: {:?}\n{}",
        programmed(dp),
        agent.log()
    );
}

/// Requests per backend identity, `n` fresh connections to the ClusterIP.
fn counts(t: &Topology, n: usize) -> Vec<(String, usize)> {
    tally(&t.client, SocketAddr::from((WEB_CLUSTER_IP, 80)), n)
        .into_iter()
        .collect()
}

fn per(backends: &[(usize, usize)]) -> Vec<(String, usize)> {
    backends
        .iter()
        .map(|&(i, n)| (format!("backend-{i}"), n))
        .collect()
}

#[test]
fn agent_follows_the_api_server_through_edits_cuts_410_and_deletion() {
    let (t, _servers) = topology();
    let api = ApiServer::start_in(&t.node);
    let node_rv = api.apply(objects::node(NODE, NODE_ADDR));
    let mut agent = KubeAgent::start(&t.node, &api, "follow");
    let dp = agent.maps();
    assert!(
        wait_for(Duration::from_secs(10), || !agent.sync_writes().is_empty()),
        "{}",
        agent.log()
    );
    assert!(dp.contents().expect("maps").services.is_empty());

    // Create: the ClusterIP reaches all three backends, round-robin.
    web(&api, &[0, 1, 2]);
    wait_programmed(&mut agent, &dp, &[0, 1, 2]);
    assert_eq!(counts(&t, 30), per(&[(0, 10), (1, 10), (2, 10)]));

    // As a NodePort: served on the address of the Node object (watched by
    // name; no --node-address given).
    let svc = objects::service("shop", "web", WEB_CLUSTER_IP, 80);
    api.apply(objects::with_node_port(svc, 30080));
    let node_port = SocketAddr::from((NODE_ADDR, 30080));
    let served = wait_for(Duration::from_secs(20), || {
        t.client.run(move || http_get(node_port).is_ok())
    });
    assert!(
        served,
        "NodePort never served on the Node's address:\n{}",
        agent.log()
    );
    let np = tally(&t.client, node_port, 9);
    assert_eq!(np.values().sum::<usize>(), 9, "{np:?}");
    assert_eq!(np.len(), 3, "{np:?}");

    // Update the slice: backend-2 gets no new connection.
    web_slice(&api, &[0, 1]);
    wait_programmed(&mut agent, &dp, &[0, 1]);
    assert_eq!(counts(&t, 30), per(&[(0, 15), (1, 15)]));

    // Bookmarks arrive, then every watch is cut: the agent reconnects from
    // the bookmark's version (no relist) and follows a later change.
    let sent = api.bookmarks_sent();
    assert!(
        wait_for(Duration::from_secs(5), || api.bookmarks_sent() >= sent + 3),
        "no bookmarks"
    );
    let lists = api.count("list", "services");
    assert_eq!(api.drop_watches(), 3);
    assert!(
        wait_for(Duration::from_secs(15), || api.open_watches() == 3),
        "no reconnect:\n{}",
        agent.log()
    );
    let resumed = api
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.verb == "watch" && r.resource == "nodes")
        .and_then(|r| r.resource_version?.parse::<u64>().ok());
    assert!(
        resumed.is_some_and(|v| v > node_rv),
        "Nodes watch resumed from {resumed:?}, node at {node_rv}"
    );
    assert_eq!(
        api.count("list", "services"),
        lists,
        "resumed, not relisted"
    );
    web_slice(&api, &[0, 1, 2]);
    wait_programmed(&mut agent, &dp, &[0, 1, 2]);
    assert_eq!(counts(&t, 30).iter().map(|(_, n)| n).sum::<usize>(), 30);

    // 410: the API goes down, the slice changes, history is compacted; back
    // up, every watch gets 410 Gone, relists, and the maps match.
    api.set_available(false);
    web_slice(&api, &[1]);
    api.compact();
    api.set_available(true);
    wait_programmed(&mut agent, &dp, &[1]);
    let relisted = wait_for(Duration::from_secs(20), || {
        ["services", "endpointslices", "nodes"]
            .iter()
            .all(|r| api.count("list", r) > 1)
    });
    assert!(
        relisted,
        "not every resource relisted: {:?}\n{}",
        api.calls(),
        agent.log()
    );
    assert!(agent.log().contains("relisting"), "{}", agent.log());
    assert_eq!(counts(&t, 6), per(&[(1, 6)]));

    // Delete the Service: its entries leave the maps.
    assert!(api.delete(Resource::Services, "shop", "web"));
    let gone = wait_for(Duration::from_secs(20), || {
        dp.contents()
            .is_ok_and(|c| c.services.is_empty() && c.slots.is_empty() && c.backends.is_empty())
    });
    assert!(
        gone,
        "entries left: {:?}\n{}",
        dp.contents()
            .map(|c| (c.services.len(), c.slots.len(), c.backends.len()))
            .ok(),
        agent.log()
    );
    agent.assert_alive();
    assert_calls_within_rbac(&api);
    println!(
        "calls: {:?}; bookmarks sent: {}",
        api.calls(),
        api.bookmarks_sent()
    );
}

#[test]
fn a_restarted_kube_agent_waits_for_the_api_and_rewrites_nothing() {
    let (t, _servers) = topology();
    let api = ApiServer::start_in(&t.node);
    api.apply(objects::node(NODE, NODE_ADDR));
    web(&api, &[0, 1, 2]);
    let mut agent = KubeAgent::start(&t.node, &api, "restart");
    let dp = agent.maps();
    wait_programmed(&mut agent, &dp, &[0, 1, 2]);
    let contents = dp.contents().expect("maps");
    let syncs = agent.sync_writes().len();

    // Restart while the API server is down: the new agent must not sync an
    // empty view (that would delete the service); traffic keeps flowing.
    agent.restart_after(|| api.set_available(false));
    let refused = || api.requests().iter().filter(|r| r.status == 503).count();
    assert!(
        wait_for(Duration::from_secs(20), || refused() >= 2),
        "the agent never retried:\n{}",
        agent.log()
    );
    agent.assert_alive();
    assert_eq!(
        agent.sync_writes().len(),
        syncs,
        "synced without the API:\n{}",
        agent.log()
    );
    assert_eq!(dp.contents().expect("maps"), contents);
    let during = counts(&t, 9);
    assert_eq!(
        (during.len(), during.iter().map(|(_, n)| n).sum::<usize>()),
        (3, 9),
        "{during:?}"
    );

    api.set_available(true);
    assert!(
        wait_for(Duration::from_secs(30), || agent.sync_writes().len()
            > syncs),
        "no sync after the API came back:\n{}",
        agent.log()
    );
    assert_eq!(
        agent.sync_writes()[syncs..],
        [0],
        "the first sync rewrites nothing:\n{}",
        agent.log()
    );
    assert_eq!(dp.contents().expect("maps"), contents);
    assert_calls_within_rbac(&api);
}

#[test]
fn readyz_turns_503_while_the_api_server_is_down_past_source_stale_after_and_traffic_flows() {
    use xdplb_tests::ops::{http_get, sample};
    let (t, _servers) = topology();
    let api = ApiServer::start_in(&t.node);
    api.apply(objects::node(NODE, NODE_ADDR));
    web(&api, &[0, 1, 2]);
    let mut agent = KubeAgent::start_with(&t.node, &api, "stale", &["--source-stale-after", "3"]);
    let dp = agent.maps();
    wait_programmed(&mut agent, &dp, &[0, 1, 2]);
    let addr: SocketAddr = lb_agent::ops::http::DEFAULT_METRICS_ADDR.parse().unwrap();
    let get = |path: &str| http_get(&t.node, addr, path).unwrap_or((0, String::new()));
    assert!(wait_for(Duration::from_secs(20), || get("/readyz").0 == 200), "never ready:\n{}", agent.log());
    let metrics = get("/metrics").1;
    assert_eq!(sample(&metrics, "xdplb_source_connected", &["resource=\"services\""]), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "xdplb_source_stale", &[]), Some(0.0));

    // Down: watches cut, every call answered 503. After 3 s without a
    // successful list/watch the agent says not ready; it still forwards.
    let down_at = Instant::now();
    api.set_available(false);
    let mut last = (0, String::new());
    let unready = wait_for(Duration::from_secs(60), || {
        agent.assert_alive();
        last = get("/readyz");
        last.0 == 503
    });
    assert!(unready, "still ready with the API down: {last:?}\n{}", agent.log());
    let took = down_at.elapsed();
    assert!(last.1.contains("--source-stale-after") && last.1.contains("no successful list or watch"), "{last:?}");
    let metrics = get("/metrics").1;
    assert_eq!(sample(&metrics, "xdplb_source_stale", &[]), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "xdplb_ready", &[]), Some(0.0));
    // kube-client retries 503s for minutes before the watcher sees an
    // error: the count may still be 0, the staleness above does not wait.
    let errors = sample(&metrics, "xdplb_source_watch_errors_total", &["resource=\"services\""]).expect("watch errors exported");
    assert_eq!(sample(&metrics, "xdplb_source_connected", &["resource=\"services\""]), Some(0.0), "{metrics}");
    let stale_since = sample(&metrics, "xdplb_source_last_success_timestamp_seconds", &["resource=\"services\""]).unwrap_or(0.0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(stale_since > 0.0 && now - stale_since >= 3.0, "last success {stale_since}, now {now}");
    let during = counts(&t, 9);
    assert_eq!(during.iter().map(|(_, n)| n).sum::<usize>(), 9, "forwarding goes on while not ready: {during:?}");

    // Back: the watches resume (no change, so no event); their successful
    // answers make the agent ready again.
    api.set_available(true);
    let ready = wait_for(Duration::from_secs(60), || {
        last = get("/readyz");
        last.0 == 200
    });
    assert!(ready, "not ready again after the API came back: {last:?}\n{}", agent.log());
    let metrics = get("/metrics").1;
    assert_eq!(sample(&metrics, "xdplb_source_stale", &[]), Some(0.0), "{metrics}");
    assert_eq!(sample(&metrics, "xdplb_source_connected", &["resource=\"nodes\""]), Some(1.0), "{metrics}");
    println!("readyz went 503 {:.1} s after the API server went down (--source-stale-after 3); {errors} services watch errors", took.as_secs_f64());
}
