//! `lb-agent install` / `uninstall` on a plain node, into a temporary root:
//! the binary, the systemd unit (its ExecStart is `run` with the options
//! given; `systemd-analyze verify` accepts it where systemd is installed) and
//! the objects directory appear, and uninstall takes them away again — with
//! the pinned maps and links of a real agent, which detaches its programs.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use xdplb_tests::{
    agent::{agent_binary, objects_dir, programmed, Agent, WEB_CLUSTER_IP},
    servers::{http_get, tally, Server},
    topology::{Topology, UPLINK},
    wait_for,
};

/// A fresh temporary directory to install into, removed on drop.
struct Root(PathBuf);

impl Root {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("xlbt-{}-root-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp root");
        Self(p)
    }
    fn join(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    /// Every regular file under the root, relative to it.
    fn files(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(p.strip_prefix(base).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.0, &self.0, &mut out);
        out.sort();
        out
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn lb_agent(args: &[&str]) -> Output {
    Command::new(agent_binary())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running lb-agent")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The value of `key=` in a unit's text (the last one, as systemd reads it).
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .rev()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in\n{unit}"))
}

#[test]
fn install_writes_binary_unit_and_objects_dir_and_uninstall_removes_them() {
    let root = Root::new("install");
    let r = root.0.to_str().unwrap();
    let run = [
        "--iface",
        "eth0",
        "--pod-iface",
        "veth*",
        "--node-address",
        "10.0.0.1",
        "--default-algorithm",
        "maglev",
    ];
    let out = lb_agent(&[&["install", "--root", r][..], &run[..]].concat());
    assert!(out.status.success(), "install failed:\n{}", text(&out));
    assert!(
        text(&out).contains("systemctl daemon-reload && systemctl enable --now xdplb"),
        "next steps printed:\n{}",
        text(&out)
    );
    assert_eq!(
        root.files(),
        ["etc/systemd/system/xdplb.service", "usr/local/bin/lb-agent"]
    );
    assert!(
        root.join("etc/xdplb/objects").is_dir(),
        "the file source's directory exists"
    );

    // The installed binary is this build, and runs.
    let installed = root.join("usr/local/bin/lb-agent");
    assert_eq!(
        std::fs::read(&installed).unwrap(),
        std::fs::read(agent_binary()).unwrap()
    );
    let v = Command::new(&installed).arg("--version").output().unwrap();
    assert!(
        v.status.success() && String::from_utf8_lossy(&v.stdout).starts_with("lb-agent "),
        "{}",
        text(&v)
    );

    // ExecStart is `run` with exactly the options given, plus the default source.
    let unit = std::fs::read_to_string(root.join("etc/systemd/system/xdplb.service")).unwrap();
    let exec: Vec<&str> = unit_value(&unit, "ExecStart").split_whitespace().collect();
    let mut want = vec!["/usr/local/bin/lb-agent", "run"];
    want.extend(run);
    want.push("--source=file:/etc/xdplb/objects");
    assert_eq!(exec, want, "{unit}");
    assert_eq!(unit_value(&unit, "Restart"), "always");
    assert_eq!(unit_value(&unit, "After"), "network-online.target");
    assert_eq!(unit_value(&unit, "WantedBy"), "multi-user.target");
    // The capabilities are the ones `lb-agent doctor` checks for, no more.
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        assert_eq!(
            unit_value(&unit, key),
            "CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN",
            "{unit}"
        );
    }
    verify_unit(&root);

    // A second install (an upgrade) over the first works.
    let again = lb_agent(&[&["install", "--root", r][..], &run[..]].concat());
    assert!(again.status.success(), "{}", text(&again));

    // Uninstall: nothing of ours is left (no maps pinned here: the pin path
    // does not exist, which is fine).
    let pins = format!("/sys/fs/bpf/xlbt-{}-none", std::process::id());
    let out = lb_agent(&["uninstall", "--root", r, "--pin-path", &pins]);
    assert!(out.status.success(), "uninstall failed:\n{}", text(&out));
    assert_eq!(root.files(), Vec::<String>::new());
    assert!(!root.join("etc/xdplb").exists(), "/etc/xdplb removed");
    let out = lb_agent(&["uninstall", "--root", r, "--pin-path", &pins]);
    assert!(
        out.status.success() && text(&out).contains("nothing to remove"),
        "{}",
        text(&out)
    );
}

/// `systemd-analyze verify` (Debian's systemd package) on the installed unit.
/// `--recursive-errors=no`: a bare root has no sysinit.target to depend on.
fn verify_unit(root: &Root) {
    let probe = Command::new("systemd-analyze").arg("--version").output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("systemd-analyze not installed: unit syntax not verified");
        return;
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no", "--recursive-errors=no"])
        .arg(format!("--root={}", root.0.display()))
        .arg("xdplb.service")
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify:\n{}",
        text(&out)
    );
}

#[test]
fn install_refuses_bad_run_options_and_writes_nothing() {
    let root = Root::new("bad");
    let r = root.0.to_str().unwrap();
    let out = lb_agent(&[
        "install",
        "--root",
        r,
        "--iface",
        "eth0",
        "--xdp-mode",
        "fastest",
    ]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("--xdp-mode"),
        "the error names the option:\n{}",
        text(&out)
    );
    let out = lb_agent(&["install", "--root", r, "--node-address", "10.0.0.1"]);
    assert!(
        !out.status.success() && text(&out).contains("--iface"),
        "run needs --iface:\n{}",
        text(&out)
    );
    assert_eq!(root.files(), Vec::<String>::new());
}

#[test]
fn uninstall_refuses_a_pin_path_off_bpffs() {
    let root = Root::new("offbpffs");
    let precious = root.join("precious");
    std::fs::create_dir_all(&precious).unwrap();
    std::fs::write(precious.join("data"), "keep me").unwrap();
    let out = lb_agent(&[
        "uninstall",
        "--root",
        root.0.to_str().unwrap(),
        "--pin-path",
        precious.to_str().unwrap(),
    ]);
    assert!(
        !out.status.success() && text(&out).contains("not on a bpffs"),
        "{}",
        text(&out)
    );
    assert!(precious.join("data").exists());
}

/// The kernel ids of the links pinned under `pin_dir` (XDP and TCX).
fn pinned_link_ids(pin_dir: &Path) -> Vec<u64> {
    let mut ids: Vec<u64> = std::fs::read_dir(pin_dir.join("links"))
        .expect("links directory")
        .flatten()
        .map(|e| {
            let out = Command::new("bpftool")
                .args(["-j", "link", "show", "pinned"])
                .arg(e.path())
                .output()
                .expect("bpftool");
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)
                .unwrap_or_else(|_| panic!("bpftool link show: {}", text(&out)));
            v["id"].as_u64().expect("a link id")
        })
        .collect();
    ids.sort();
    ids
}

/// Whether the kernel still has link `id` (a link exists while it is attached).
fn link_exists(id: u64) -> bool {
    Command::new("bpftool")
        .args(["link", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn uninstall_unpins_the_maps_and_detaches_the_programs() {
    let t = Topology::new(1);
    let _server = Server::start(&t.backends[0], 8080, "backend-0");
    let mut agent = Agent::start(&t.node, &objects_dir(&[0]));
    let dp = agent.maps();
    assert!(
        wait_for(Duration::from_secs(10), || programmed(&dp)
            .is_some_and(|(n, _)| n == 1)),
        "{}",
        agent.log()
    );
    drop(dp);
    // A crash leaves everything attached and pinned: the node still balances.
    agent.kill9();
    let links = pinned_link_ids(&agent.pin_dir);
    assert_eq!(links.len(), 2, "XDP and tc egress on the uplink: {links:?}");
    assert!(
        t.node.ip(&["link", "show", UPLINK]).contains("xdp"),
        "XDP attached after the agent died"
    );
    let to = SocketAddr::from((WEB_CLUSTER_IP, 80));
    assert_eq!(tally(&t.client, to, 3).get("backend-0"), Some(&3));

    let root = Root::new("detach");
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.node.name()))
        .arg(agent_binary())
        .args([
            "uninstall",
            "--root",
            root.0.to_str().unwrap(),
            "--pin-path",
        ])
        .arg(&agent.pin_dir)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(out.status.success(), "uninstall failed:\n{}", text(&out));
    assert!(text(&out).contains("programs detached"), "{}", text(&out));
    assert!(!agent.pin_dir.exists(), "the pin directory is gone");
    assert!(
        !t.node.ip(&["link", "show", UPLINK]).contains("xdp"),
        "XDP detached"
    );
    for id in links {
        assert!(
            !link_exists(id),
            "link {id} still exists: the program is still attached"
        );
    }
    // The ClusterIP is no longer balanced: nothing answers for it.
    let err = t.client.run(move || http_get(to));
    assert!(err.is_err(), "the VIP still answers: {err:?}");
}
