//! The real `lb-agent` binary in a node namespace, fed Kubernetes YAML from
//! a directory of its own; everything it leaves behind is removed on drop.
//! Also the YAML of the standard test service (`shop/web`).
use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use std::net::Ipv4Addr;

use lb_agent::dataplane::Dataplane;

use crate::{
    netns::Netns,
    topology::{backend_addr, NODE_ADDR, UPLINK},
    wait_for,
};

/// The agent binary, built if needed. A test of another package has no
/// `CARGO_BIN_EXE_lb-agent`; the binary sits two levels above this test
/// executable (`target/<profile>/deps/<test>`).
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("XDPLB_AGENT_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("current_exe");
    // Test executables live in target/<profile>/deps, binaries in target/<profile>.
    let mut profile_dir = exe.parent().expect("target/<profile>");
    if profile_dir.file_name().is_some_and(|n| n == "deps") {
        profile_dir = profile_dir.parent().expect("target/<profile>");
    }
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
    let mut build = Command::new(env!("CARGO"));
    // Without the variables cargo set for this test crate: a dependency's
    // build script that watches one (ring: CARGO_MANIFEST_DIR) would see it
    // change between this build and a plain `cargo build`, and rebuild
    // half the dependency tree (~50 s) every time either runs.
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        let set_for_crate = k.starts_with("CARGO_PKG_")
            || k.starts_with("CARGO_BIN_")
            || ["CARGO_MANIFEST_DIR", "CARGO_MANIFEST_PATH", "CARGO_CRATE_NAME", "CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR"].contains(&&*k);
        if set_for_crate {
            build.env_remove(&key);
        }
    }
    let status = build
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
pub struct Agent {
    child: Child,
    pub pin_dir: PathBuf,
    pub source_dir: PathBuf,
    log: PathBuf,
    /// Arguments after `run` (interfaces, node, ...), kept for restarts.
    args: Vec<String>,
    /// Agents that had attached on this log before the current one started.
    attached_before: usize,
}

/// What every agent logs once its programs are loaded and attached (one
/// line per uplink; the harness gives it one).
const ATTACHED: &str = "attached XDP and tc egress to uplink";

/// How long loading may take: the verifier's work on our programs grows
/// with the CPU others take (seconds when idle, over 10 s under
/// `cargo xtask test --under-load`). A bound for a hung agent, not a figure.
pub const LOAD_WAIT: Duration = Duration::from_secs(240);

/// How many agents logging to `log` have attached their programs so far.
pub fn attached_count(log: &Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches(ATTACHED).count()
}

/// Waits until an agent logging to `log` has pinned its maps under
/// `pin_dir` and attached its programs (more than `attached_before` agents
/// on that log have), and opens the maps: a test's own deadlines (a sync,
/// a packet) then start from a running agent, not from a verifier still at
/// work. `alive` panics if the agent exited.
pub fn wait_running(pin_dir: &Path, log: &Path, attached_before: usize, mut alive: impl FnMut()) -> Dataplane {
    let text = || std::fs::read_to_string(log).unwrap_or_default();
    let pinned = wait_for(Duration::from_secs(60), || {
        alive();
        Dataplane::open(pin_dir).is_ok()
    });
    assert!(pinned, "the agent pinned no maps within 60 s ({:?}):\n{}", Dataplane::open(pin_dir).err(), text());
    let attached = wait_for(LOAD_WAIT, || {
        alive();
        attached_count(log) > attached_before
    });
    assert!(attached, "the agent attached nothing within {LOAD_WAIT:?}:\n{}", text());
    Dataplane::open(pin_dir).expect("opening the agent's maps")
}

impl Agent {
    /// Starts `lb-agent run` inside `node`'s network namespace. `nsenter
    /// --net` rather than `ip netns exec`: the latter remounts /sys, which
    /// hides /sys/fs/bpf, and the test must see the agent's pinned maps.
    pub fn start(node: &Netns, source_dir: &Path) -> Self {
        Self::start_with(node, source_dir, &[])
    }

    /// As [`Agent::start`], with more `run` arguments (e.g. map sizes).
    pub fn start_with(node: &Netns, source_dir: &Path, extra: &[&str]) -> Self {
        // Named after the objects directory, which is unique per test.
        let tag = source_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("agent");
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{tag}"));
        let _ = std::fs::remove_dir_all(&pin_dir);
        let log = source_dir.with_extension("log");
        let args = extra.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let attached_before = attached_count(&log);
        let child = spawn(node, &pin_dir, source_dir, &log, &args);
        Self { child, pin_dir, source_dir: source_dir.to_path_buf(), log, args, attached_before }
    }

    /// Starts `lb-agent run --source kube` inside `node`'s namespace,
    /// following the API server double `api` (its kubeconfig in a fresh
    /// directory, removed on drop like an objects directory).
    pub fn start_kube(node: &Netns, api: &crate::apiserver::ApiServer, extra: &[&str]) -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xlbt-{}-kubeagent{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let kubeconfig = dir.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        let kc = kubeconfig.display().to_string();
        let mut args = vec!["--source", "kube", "--kubeconfig", &kc];
        args.extend_from_slice(extra);
        Self::start_with(node, &dir, &args)
    }

    /// Stops the agent with SIGTERM (as systemd or the kubelet would) and
    /// starts a new one on the same pinned maps and objects.
    pub fn restart(&mut self, node: &Netns) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let status = self.child.wait().expect("waiting for lb-agent");
        assert!(
            status.success(),
            "lb-agent did not exit cleanly on SIGTERM ({status}):\n{}",
            self.log()
        );
        self.attached_before = attached_count(&self.log);
        self.child = spawn(node, &self.pin_dir, &self.source_dir, &self.log, &self.args);
    }

    /// Kills the agent with SIGKILL (a crash: nothing runs on the way out).
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Runs `lb-agent uninstall` on this agent's pins in `node`'s network
    /// namespace (nsenter: the host's bpffs stays visible), with a
    /// throwaway install root; returns what it printed and its status.
    pub fn uninstall(&self, node: &Netns) -> std::process::Output {
        let root = std::env::temp_dir().join(format!("xlbt-{}-uninstall-root", std::process::id()));
        let out = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", node.name()))
            .arg(agent_binary())
            .args(["uninstall", "--root"])
            .arg(&root)
            .arg("--pin-path")
            .arg(&self.pin_dir)
            .output()
            .expect("running lb-agent uninstall");
        let _ = std::fs::remove_dir_all(&root);
        out
    }

    /// Starts a new agent on the same pinned maps and objects, with `extra`
    /// replacing the extra arguments (e.g. an upgrade with new map sizes).
    pub fn start_again(&mut self, node: &Netns, extra: &[&str]) {
        self.assert_dead();
        self.args = extra.iter().map(|s| s.to_string()).collect();
        self.attached_before = attached_count(&self.log);
        self.child = spawn(node, &self.pin_dir, &self.source_dir, &self.log, &self.args);
    }

    fn assert_dead(&mut self) {
        assert!(matches!(self.child.try_wait(), Ok(Some(_))), "the previous agent still runs");
    }

    /// Opens the maps of an agent that has pinned them already.
    pub fn maps_of(agent: &Agent) -> Dataplane {
        Dataplane::open(&agent.pin_dir).expect("opening the agent's maps")
    }

    /// Waits until the agent has pinned its maps, and opens them.
    /// The agent's maps, once it has pinned them and attached its programs
    /// (see [`wait_running`]).
    pub fn maps(&mut self) -> Dataplane {
        let (pin_dir, log) = (self.pin_dir.clone(), self.log.clone());
        wait_running(&pin_dir, &log, self.attached_before, || self.assert_alive())
    }

    /// The agent's process id (`nsenter` execs the agent: the same process).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `writes=N` figure of every "synced" line so far.
    pub fn sync_writes(&self) -> Vec<usize> {
        sync_writes(&self.log())
    }

    pub fn assert_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("lb-agent exited ({status}):\n{}", self.log());
        }
    }
}

fn spawn(node: &Netns, pin_dir: &Path, source_dir: &Path, log: &Path, extra: &[String]) -> Child {
    let mut args: Vec<String> =
        ["--node-name", "node-0", "--node-address", &NODE_ADDR.to_string()].iter().map(|s| s.to_string()).collect();
    // A test may bring its own source (e.g. `--source kube` and a kubeconfig).
    if !extra.iter().any(|a| a.starts_with("--source")) {
        args.push(format!("--source=file:{}", source_dir.display()));
    }
    args.extend_from_slice(extra);
    spawn_run(node.name(), pin_dir, log, &args)
}

/// `lb-agent run --iface <UPLINK> --pin-path <pin_dir> <args>` in the
/// namespace `netns`, logging to `log`.
pub fn spawn_run(netns: &str, pin_dir: &Path, log: &Path, args: &[String]) -> Child {
    spawn_run_on(netns, UPLINK, pin_dir, log, args)
}

/// `lb-agent run --iface <iface> --pin-path <pin_dir> <args>` in the
/// namespace `netns`, logging to `log`. `nsenter --net` rather than `ip
/// netns exec`: the latter remounts /sys, which hides /sys/fs/bpf.
pub fn spawn_run_on(netns: &str, iface: &str, pin_dir: &Path, log: &Path, args: &[String]) -> Child {
    Command::new("nsenter")
        .arg(format!("--net=/run/netns/{netns}"))
        .arg(agent_binary())
        .args(["run", "--iface", iface])
        .arg("--pin-path")
        .arg(pin_dir)
        // Socket balancing only where a test asks for it (with its own cgroup):
        // the default (the host's cgroup2 root) would reach every process.
        .args(if args.iter().any(|a| a.starts_with("--socket-lb")) { None } else { Some("--socket-lb=off") })
        .args(args)
        // XDPLB_TEST_AGENT_LOG=lb_agent=debug for a failure's details.
        .env("RUST_LOG", std::env::var("XDPLB_TEST_AGENT_LOG").unwrap_or("info".into()))
        .stdout(Stdio::null())
        // Appended: a restarted agent's log follows the first one's.
        .stderr(std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file"))
        .spawn()
        .expect("starting lb-agent")
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        // The service names file the agent keeps next to (not in) bpffs.
        lb_agent::ops::names::remove(&self.pin_dir);
        let _ = std::fs::remove_dir_all(&self.source_dir);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `shop/web`: ClusterIP 10.96.0.10:80 → 8080, NodePort 30080, with
/// `annotations` (key, value) and extra `spec` lines (indented two spaces),
/// for `proto` (TCP or UDP).
pub fn web_service(annotations: &[(&str, &str)], proto: &str, spec_extra: &str) -> String {
    let ann: String = annotations.iter().map(|(k, v)| format!("    {k}: \"{v}\"\n")).collect();
    let ann = if ann.is_empty() { String::new() } else { format!("  annotations:\n{ann}") };
    format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n  namespace: shop\n{ann}spec:\n  type: NodePort\n  \
         clusterIP: 10.96.0.10\n  clusterIPs: [10.96.0.10]\n  ports:\n  - name: http\n    port: 80\n    nodePort: 30080\n    \
         protocol: {proto}\n    targetPort: 8080\n  selector:\n    app: web\n{spec_extra}"
    )
}

/// The default test service: TCP, round-robin.
pub fn default_service() -> String {
    web_service(&[("xdplb.io/algorithm", "round-robin")], "TCP", "")
}

/// The Node `node-0` at the node address.
pub const NODE: &str = "apiVersion: v1
kind: Node
metadata:
  name: node-0
status:
  addresses:
  - type: InternalIP
    address: 192.168.1.1
";

/// The EndpointSlice of `web` (TCP) with backends `ids`.
pub fn slice(ids: &[usize]) -> String {
    slice_for(ids, "TCP")
}

/// The EndpointSlice of `web` for `proto` with backends `ids`.
pub fn slice_for(ids: &[usize], proto: &str) -> String {
    slice_ports(ids, &[("http", proto)])
}

/// The EndpointSlice of `web` with backends `ids`, each on port 8080 of
/// every (name, protocol) in `ports`.
pub fn slice_ports(ids: &[usize], ports: &[(&str, &str)]) -> String {
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
",
    );
    for (name, proto) in ports {
        s += &format!("- name: {name}\n  port: 8080\n  protocol: {proto}\n");
    }
    s += "endpoints:\n";
    for &i in ids {
        s += &format!("- addresses: [{}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: node-0\n", backend_addr(i));
    }
    s
}

/// Writes a file the way editors do: a temporary file renamed into place,
/// so the agent never reads half a file.
pub fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).expect("writing YAML");
    std::fs::rename(&tmp, dir.join(name)).expect("renaming YAML into place");
}

/// A fresh, unique objects directory with `web` (endpoints `slice_ids`) and
/// its Node written into it.
pub fn objects_dir(slice_ids: &[usize]) -> PathBuf {
    objects_dir_with(&default_service(), &slice(slice_ids))
}

/// A fresh, unique objects directory with `service`, `slice` and the Node.
pub fn objects_dir_with(service: &str, slice: &str) -> PathBuf {
    // Tests run in parallel threads of one process: one directory each.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("xlbt-{}-agent{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    write(&dir, "service.yaml", service);
    write(&dir, "node.yaml", NODE);
    write(&dir, "slice.yaml", slice);
    dir
}

/// The ClusterIP of `shop/web`.
pub const WEB_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Slot count and backend addresses the agent has programmed for the ClusterIP.
pub fn programmed(dp: &Dataplane) -> Option<(u32, Vec<Ipv4Addr>)> {
    programmed_at(dp, WEB_CLUSTER_IP, 80, 6)
}

/// Slot count and backend addresses programmed for the frontend
/// `addr:port` of protocol `proto` (6 TCP, 17 UDP). Single lookups, not a
/// read of whole maps: tests poll this while agents work on the same CPUs.
pub fn programmed_at(dp: &Dataplane, addr: Ipv4Addr, port: u16, proto: u8) -> Option<(u32, Vec<Ipv4Addr>)> {
    let (n, backends) = programmed_in::<lb_common::Addr4>(dp, addr.octets(), port, proto)?;
    Some((n, backends.into_iter().map(Ipv4Addr::from).collect()))
}

/// As [`programmed_at`], for an address of either family.
pub fn programmed_ip(dp: &Dataplane, addr: std::net::IpAddr, port: u16, proto: u8) -> Option<(u32, Vec<std::net::IpAddr>)> {
    use lb_common::Addr as _;
    match addr {
        std::net::IpAddr::V4(a) => programmed_in::<lb_common::Addr4>(dp, a.octets(), port, proto).map(|(n, b)| (n, b.into_iter().map(|a| a.to_ip()).collect())),
        std::net::IpAddr::V6(a) => programmed_in::<lb_common::Addr6>(dp, a.octets(), port, proto).map(|(n, b)| (n, b.into_iter().map(|a| a.to_ip()).collect())),
    }
}

/// Slot count and backends of `addr:port`/`proto` in family `A`'s maps.
fn programmed_in<A: lb_agent::dataplane::MapFamily>(dp: &Dataplane, addr: A, port: u16, proto: u8) -> Option<(u32, Vec<A>)> {
    let maps = A::maps(dp)?;
    let key = lb_common::ServiceKey { addr, port: port.to_be_bytes(), proto, scope: 0 };
    let svc = maps.services.get(&key, 0).ok()?;
    let backends = (1..=svc.count)
        .filter_map(|slot| dp.slots.get(&lb_common::SlotKey { service_id: svc.id, slot }, 0).ok())
        .filter_map(|id| maps.backends.get(&id, 0).ok())
        .filter(|b| !b.is_empty())
        .map(|b| b.addr)
        .collect();
    Some((svc.count, backends))
}

/// The `writes=N` figure of every "synced" line of an agent's log.
pub fn sync_writes(log: &str) -> Vec<usize> {
    log.lines()
        .filter(|l| l.contains("synced"))
        .filter_map(|l| l.split("writes=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect()
}
