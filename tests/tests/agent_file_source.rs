//! The real `lb-agent run` binary, fed Kubernetes YAML from a directory,
//! programs the dataplane of a node namespace; an edit of the EndpointSlice
//! reaches the maps and the traffic. Needs root.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use lb_agent::dataplane::Dataplane;
use lb_common::ServiceKeyV4;
use xdplb_tests::{
    netns::Netns,
    servers::{http_get, Server},
    topology::{backend_addr, Topology, NODE_ADDR, UPLINK},
    wait_for,
};

const CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// The agent binary, built if needed. A test of another package has no
/// `CARGO_BIN_EXE_lb-agent`; the binary sits two levels above this test
/// executable (`target/<profile>/deps/<test>`).
fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("XDPLB_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let target_dir = profile_dir.parent().expect("target dir");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    // Cheap when the binary is fresh; `cargo test -p xdplb-tests` alone does
    // not build other packages' binaries.
    // target/debug belongs to the `dev` profile; others use their own name.
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(p) => p,
    };
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "lb-agent",
            "--bin",
            "lb-agent",
            "--profile",
            profile,
        ])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(workspace)
        .status()
        .expect("running cargo build for lb-agent");
    assert!(status.success(), "building lb-agent failed");
    let bin = profile_dir.join("lb-agent");
    assert!(bin.exists(), "{} missing after the build", bin.display());
    bin
}

/// The agent process and what it leaves behind, removed on drop (also when
/// an assertion fails).
struct Agent {
    child: Child,
    pin_dir: PathBuf,
    source_dir: PathBuf,
    log: PathBuf,
}

impl Agent {
    /// Starts `lb-agent run` inside `node`'s network namespace. `nsenter
    /// --net` rather than `ip netns exec`: the latter remounts /sys, which
    /// hides /sys/fs/bpf, and the test must see the agent's pinned maps.
    fn start(node: &Netns, source_dir: &Path) -> Self {
        // Named after the objects directory, which is unique per test.
        let tag = source_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("agent");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
        let _ = std::fs::remove_dir_all(&pin_dir);
        let log = source_dir.with_extension("log");
        let child = spawn(node, &pin_dir, source_dir, &log);
        Self {
            child,
            pin_dir,
            source_dir: source_dir.to_path_buf(),
            log,
        }
    }

    /// Stops the agent with SIGTERM (as systemd or the kubelet would) and
    /// starts a new one on the same pinned maps and objects.
    fn restart(&mut self, node: &Netns) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().expect("waiting for lb-agent");
        assert!(
            status.success(),
            "lb-agent did not exit cleanly on SIGTERM ({status}):\n{}",
            self.log()
        );
        self.child = spawn(node, &self.pin_dir, &self.source_dir, &self.log);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `writes=N` figure of every "synced" line so far.
    fn sync_writes(&self) -> Vec<usize> {
        self.log()
            .lines()
            .filter(|l| l.contains("synced"))
            .filter_map(|l| {
                l.split("writes=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }

    fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("lb-agent exited ({status}):\n{}", self.log());
        }
    }
}

fn spawn(node: &Netns, pin_dir: &Path, source_dir: &Path, log: &Path) -> Child {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", node.name()))
        .arg(agent_binary())
        .args([
            "run",
            "--iface",
            UPLINK,
            "--node-name",
            "node-0",
            "--node-address",
            &NODE_ADDR.to_string(),
        ])
        .arg("--pin-path")
        .arg(pin_dir)
        .arg(format!("--source=file:{}", source_dir.display()))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("log file"))
        .spawn()
        .expect("starting lb-agent")
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.source_dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

const SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations:
    xdplb.io/algorithm: round-robin
spec:
  type: NodePort
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
  - name: http
    port: 80
    nodePort: 30080
    protocol: TCP
    targetPort: 8080
  selector:
    app: web
";

const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: node-0
status:
  addresses:
  - type: InternalIP
    address: 192.168.1.1
";

/// The EndpointSlice of `web` with backends `ids`.
fn slice(ids: &[usize]) -> String {
    let mut s = String::from(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abc12
  namespace: shop
  labels:
    kubernetes.io/service-name: web
addressType: IPv4
ports:
- name: http
  port: 8080
  protocol: TCP
endpoints:
",
    );
    for &i in ids {
        s += &format!("- addresses: [{}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: node-0\n", backend_addr(i));
    }
    s
}

/// Writes a file the way editors do: a temporary file renamed into place,
/// so the agent never reads half a file.
fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("writing YAML");
    std::fs::rename(&tmp, dir.join(name)).expect("renaming YAML into place");
}

/// Slot count and backend addresses the agent has programmed for the ClusterIP.
fn programmed(dp: &Dataplane) -> Option<(u32, Vec<Ipv4Addr>)> {
    let key = ServiceKeyV4 {
        addr: CLUSTER_IP.octets(),
        port: 80u16.to_be_bytes(),
        proto: 6,
        scope: 0,
    };
    let c = dp.contents().ok()?;
    let svc = c.services.get(&key)?;
    let backends = (1..=svc.count)
        .filter_map(|slot| {
            c.slots.get(&lb_common::SlotKey {
                service_id: svc.id,
                slot,
            })
        })
        .filter_map(|id| c.backends.get(id))
        .map(|b| Ipv4Addr::from(b.addr))
        .collect();
    Some((svc.count, backends))
}

/// `n` HTTP GETs over fresh connections from `ns`; tally of answering backends.
fn tally(ns: &Netns, to: SocketAddr, n: usize) -> BTreeMap<String, usize> {
    ns.run(move || {
        let mut t = BTreeMap::new();
        for i in 0..n {
            let body = http_get(to).unwrap_or_else(|e| panic!("request {i} to {to}: {e}"));
            *t.entry(body).or_default() += 1;
        }
        t
    })
}

/// A node with three backends serving on 8080, `web` written to a fresh
/// directory with `slice_ids` as endpoints, and the agent running on it with
/// the service programmed.
fn setup(slice_ids: &[usize]) -> (Topology, Vec<Server>, Agent, Dataplane) {
    let t = Topology::new(3);
    let servers: Vec<Server> = (0..3)
        .map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}")))
        .collect();
    // Tests run in parallel threads of one process: one directory each.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xlbt-{}-agent{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    write(&dir, "service.yaml", SERVICE);
    write(&dir, "node.yaml", NODE);
    write(&dir, "slice.yaml", &slice(slice_ids));

    let mut agent = Agent::start(&t.node, &dir);
    // The maps exist once the agent has loaded the programs.
    let pinned = wait_for(Duration::from_secs(60), || {
        agent.assert_alive();
        Dataplane::open(&agent.pin_dir).is_ok()
    });
    assert!(
        pinned,
        "the agent pinned no maps within 60 s:\n{}",
        agent.log()
    );
    let dp = Dataplane::open(&agent.pin_dir).expect("opening the agent's maps");
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
    let to = SocketAddr::from((CLUSTER_IP, 80));
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
    let ok = wait_for(Duration::from_secs(5), || {
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
    agent.restart(&t.node);
    let synced = wait_for(Duration::from_secs(30), || {
        agent.assert_alive();
        !agent.sync_writes().is_empty()
    });
    assert!(synced, "the restarted agent never synced:\n{}", agent.log());
    assert_eq!(
        agent.sync_writes(),
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
    let got = tally(&t.client, SocketAddr::from((CLUSTER_IP, 80)), 9);
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
    let ok = wait_for(Duration::from_secs(5), || agent.sync_writes().len() > syncs);
    assert!(ok, "no sync after the new files:\n{}", agent.log());
    agent.assert_alive();
    assert_eq!(agent.sync_writes().last(), Some(&0), "{}", agent.log());
    assert_eq!(dp.contents().expect("reading maps"), contents);
    let log = agent.log();
    assert!(
        log.contains("shop/evil") && log.contains("shop/web-evil"),
        "warnings name the objects:\n{log}"
    );
    let got = tally(&t.client, SocketAddr::from((CLUSTER_IP, 80)), 6);
    assert_eq!(got.values().sum::<usize>(), 6, "{got:?}");
}
