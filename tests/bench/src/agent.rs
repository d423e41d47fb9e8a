//! The real `lb-agent` binary (built in the bench's own profile: release
//! under `cargo xtask bench`) fed through its file source: time to program
//! N services from cold, time from one EndpointSlice edit to the map write
//! with N services present (inotify), and the agent's memory. Then the same
//! agent fed by the API server double (`--source kube`): cold, and one
//! EndpointSlice change arriving as a watch event to the map write, with
//! the agent's own plan/diff/write split read from its log.
use std::{
    fmt::Write as _,
    net::Ipv4Addr,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use lb_common::{ServiceKeyV4, SlotKey};
use serde_json::json;

use super::report::Report;
use xdplb_tests::{
    agent::{agent_binary, write, Agent, NODE},
    apiserver::{objects, ApiServer},
    topology::{Topology, NODE_ADDR},
    wait_for,
};

pub struct Opts {
    pub services: u32,
    pub per_service: u32,
    /// EndpointSlice edits timed, one after another.
    pub changes: usize,
}

/// `kubectl get -o yaml`-style List of `services` services with their slices.
fn objects(services: u32, per: u32) -> String {
    let mut y = String::from("apiVersion: v1\nkind: List\nitems:\n");
    for s in 0..services {
        let vip = Ipv4Addr::from(0x0a60_0000 + s);
        let _ = write!(
            y,
            "- apiVersion: v1\n  kind: Service\n  metadata: {{name: svc-{s}, namespace: scale}}\n  spec:\n    clusterIP: {vip}\n    ports: [{{name: http, port: 80, protocol: TCP, targetPort: 8080}}]\n\
             - apiVersion: discovery.k8s.io/v1\n  kind: EndpointSlice\n  metadata: {{name: svc-{s}-1, namespace: scale, labels: {{kubernetes.io/service-name: svc-{s}}}}}\n  addressType: IPv4\n  ports: [{{name: http, port: 8080, protocol: TCP}}]\n  endpoints:\n"
        );
        for e in 0..per {
            let _ = writeln!(
                y,
                "  - addresses: [{}]",
                Ipv4Addr::from(0x0a80_0000 + s * per + e)
            );
        }
    }
    y
}

/// The probe service, edited during the run, in files of its own.
const PROBE_VIP: Ipv4Addr = Ipv4Addr::new(10, 95, 0, 1);
const PROBE_SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: probe, namespace: bench}\nspec:\n  clusterIP: 10.95.0.1\n  ports: [{name: http, port: 80, protocol: TCP, targetPort: 8080}]\n";

fn probe_slice(addr: Ipv4Addr) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: probe-1, namespace: bench, labels: {{kubernetes.io/service-name: probe}}}}\naddressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n- addresses: [{addr}]\n"
    )
}

/// The address of change `i` (distinct for every change).
fn probe_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 200, (i / 250) as u8, (i % 250) as u8 + 1)
}

/// The probe service's first backend address in the maps (a few lookups).
fn probe_backend(dp: &lb_agent::dataplane::Dataplane) -> Option<Ipv4Addr> {
    let key = ServiceKeyV4 {
        addr: PROBE_VIP.octets(),
        port: 80u16.to_be_bytes(),
        proto: 6,
        scope: 0,
    };
    let svc = dp.v4.services.get(&key, 0).ok()?;
    let id = dp
        .slots
        .get(
            &SlotKey {
                service_id: svc.id,
                slot: 1,
            },
            0,
        )
        .ok()?;
    dp.v4.backends.get(&id, 0).ok().map(|b| Ipv4Addr::from(b.addr))
}

/// The pid of the agent running with `pin_dir` (nsenter execs it).
fn agent_pid(pin_dir: &Path) -> Option<u32> {
    let needle = format!("--pin-path\0{}\0", pin_dir.display());
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        let exe = std::fs::read_link(e.path().join("exe")).ok()?;
        (exe.file_name()? == "lb-agent" && String::from_utf8_lossy(&cmd).contains(&needle))
            .then_some(pid)
    })
}

/// VmRSS and VmHWM of `pid`, in kB.
fn memory_kb(pid: u32) -> Result<(u64, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
    };
    Ok((
        field("VmRSS:").context("VmRSS")?,
        field("VmHWM:").context("VmHWM")?,
    ))
}

/// Map sizes for 10,000 services of 10 endpoints: a frontend and a
/// ClusterIP address entry per service.
const SIZES: [&str; 8] = ["--max-services", "32768", "--max-backends", "131072", "--max-slots", "131072", "--max-flows", "65536"];

/// The numeric `field=` of a log line.
fn log_field(line: &str, field: &str) -> Option<f64> {
    line.split(&format!(" {field}=")).nth(1)?.split_whitespace().next()?.parse().ok()
}

/// Makes `changes` changes of the probe's endpoint through `change`, one at
/// a time on a quiet source, each timed (ms) until the maps hold it.
fn time_changes(agent: &mut Agent, dp: &lb_agent::dataplane::Dataplane, changes: usize, mut change: impl FnMut(Ipv4Addr)) -> Result<Vec<f64>> {
    let mut ms = Vec::new();
    for i in 1..=changes {
        let want = probe_addr(i);
        // Apart from the last change: the sources debounce bursts.
        std::thread::sleep(Duration::from_millis(150 + (i as u64 * 37) % 100));
        let t0 = Instant::now();
        change(want);
        while probe_backend(dp) != Some(want) {
            if t0.elapsed() > Duration::from_secs(60) {
                agent.assert_alive();
                bail!("change {i} ({want}) not in the maps after 60 s:\n{}", agent.log());
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(ms)
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let bin = agent_binary();
    // Later starts must not run `cargo build` again inside the timed span.
    std::env::set_var("XDPLB_AGENT_BIN", &bin);
    let build = if bin.components().any(|c| c.as_os_str() == "release") {
        "release"
    } else {
        "debug"
    };
    let t = Topology::new(0);
    let dir = std::env::temp_dir().join(format!("xlbb-{}-agent", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    write(&dir, "node.yaml", NODE);
    write(&dir, "cluster.yaml", &objects(o.services, o.per_service));
    write(&dir, "probe-service.yaml", PROBE_SERVICE);
    write(&dir, "probe-slice.yaml", &probe_slice(probe_addr(0)));
    let endpoints = o.services * o.per_service;

    let start = Instant::now();
    let mut agent = Agent::start_with(&t.node, &dir, &SIZES);
    let dp = agent.maps();
    let synced = wait_for(Duration::from_secs(300), || {
        agent.assert_alive();
        !agent.sync_writes().is_empty()
    });
    let cold = start.elapsed().as_secs_f64();
    ensure!(synced, "no sync within 300 s:\n{}", agent.log());
    let c = dp.contents()?;
    // One frontend per service plus the API server's, and one address
    // entry per ClusterIP.
    let frontends = c.services.keys().filter(|k| !k.is_address()).count() as u32;
    ensure!(frontends == o.services + 1, "{frontends} service frontends in the maps");
    ensure!(
        c.backends.len() as u32 == endpoints + 1,
        "{} backends in the maps",
        c.backends.len()
    );
    let sync_us: f64 = agent
        .log()
        .lines()
        .find(|l| l.contains("synced"))
        .and_then(|l| {
            l.split("elapsed_us=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0.0);
    let cond = json!({"services": o.services, "endpoints": endpoints, "agent_build": build, "source": "file (one List YAML)",
                      "measured": "process start -> first synced log line, maps checked"});
    r.add(
        "agent",
        &format!("agent/cold_program_{}_services", o.services),
        cold,
        None,
        "s",
        cond,
    );
    r.add(
        "agent",
        &format!("agent/first_sync_{}_services", o.services),
        sync_us / 1e3,
        None,
        "ms",
        json!({"services": o.services, "endpoints": endpoints, "agent_build": build, "measured": "plan+diff+write of the first sync (elapsed_us of its log line)"}),
    );

    // The cold start's split, from the agent's log (agents that log it).
    let log = agent.log();
    let logged = |what: &str, field: &str| log.lines().find(|l| l.contains(what)).and_then(|l| log_field(l, field));
    let split = [
        ("source_ready", "source ready", "elapsed_ms", "process start -> the source's first model (the YAML parsed and validated)"),
        ("program_load", "programs loaded", "load_ms", "loading and verifying the eBPF programs (the kernel's verifier), before attaching"),
    ];
    for (name, what, field, measured) in split {
        if let Some(ms) = logged(what, field) {
            r.add(
                "agent",
                &format!("agent/cold_{name}_{}_services", o.services),
                ms,
                None,
                "ms",
                json!({"services": o.services, "endpoints": endpoints, "agent_build": build, "measured": measured}),
            );
        }
    }

    let pid = agent_pid(&agent.pin_dir).context("finding the agent's pid")?;
    let (rss, hwm) = memory_kb(pid)?;
    let mcond = json!({"services": o.services, "endpoints": endpoints, "agent_build": build, "pid_status": "/proc/<pid>/status"});
    r.add(
        "agent",
        &format!("agent/rss_{}_services", o.services),
        rss as f64 / 1024.0,
        None,
        "MiB",
        mcond.clone(),
    );
    r.add(
        "agent",
        &format!("agent/peak_rss_{}_services", o.services),
        hwm as f64 / 1024.0,
        None,
        "MiB",
        mcond,
    );

    // Endpoint change → map write, one change at a time.
    let mut ms = time_changes(&mut agent, &dp, o.changes, |want| write(&dir, "probe-slice.yaml", &probe_slice(want)))?;
    ms.sort_by(f64::total_cmp);
    let ccond = json!({"services": o.services + 1, "endpoints": endpoints + 1, "changes": o.changes, "agent_build": build,
                       "measured": "EndpointSlice file renamed into place -> new backend read back from the maps (100 us polls)",
                       "file_source": "inotify wake-up, then the files' stamps are compared"});
    r.add(
        "agent",
        "agent/endpoint_change_to_map_p50",
        pct(&ms, 50.0),
        None,
        "ms",
        ccond.clone(),
    );
    r.add(
        "agent",
        "agent/endpoint_change_to_map_p99",
        pct(&ms, 99.0),
        None,
        "ms",
        ccond,
    );
    let (rss, hwm) = memory_kb(pid)?;
    r.add(
        "agent",
        &format!("agent/peak_rss_{}_services_after_changes", o.services),
        hwm as f64 / 1024.0,
        None,
        "MiB",
        json!({"services": o.services, "changes": o.changes, "rss_mib": rss as f64 / 1024.0, "agent_build": build}),
    );
    drop(agent);
    Ok(())
}

/// The probe's slice as the API server double holds it.
fn probe_slice_object(addr: Ipv4Addr) -> serde_json::Value {
    objects::slice("bench", "probe-1", "probe", 8080, &[addr], "node-0")
}

/// The real agent following the API server double: cold start through the
/// kube source, then `o.changes` EndpointSlice changes, each applied to the
/// double (the agent sees a watch event) and timed until the maps hold it.
pub fn run_kube(o: &Opts, r: &mut Report) -> Result<()> {
    let bin = agent_binary();
    std::env::set_var("XDPLB_AGENT_BIN", &bin);
    let build = if bin.components().any(|c| c.as_os_str() == "release") { "release" } else { "debug" };
    let t = Topology::new(0);
    let api = ApiServer::start_in(&t.node);
    api.apply(objects::node("node-0", NODE_ADDR));
    for s in 0..o.services {
        let (name, vip) = (format!("svc-{s}"), Ipv4Addr::from(0x0a60_0000 + s));
        api.apply(objects::service("scale", &name, vip, 80));
        let addrs: Vec<Ipv4Addr> = (0..o.per_service).map(|e| Ipv4Addr::from(0x0a80_0000 + s * o.per_service + e)).collect();
        api.apply(objects::slice("scale", &format!("{name}-1"), &name, 8080, &addrs, "node-0"));
    }
    api.apply(objects::service("bench", "probe", PROBE_VIP, 80));
    api.apply(probe_slice_object(probe_addr(0)));
    let endpoints = o.services * o.per_service;

    let start = Instant::now();
    let mut agent = Agent::start_kube(&t.node, &api, &SIZES);
    let dp = agent.maps();
    let synced = wait_for(Duration::from_secs(300), || {
        agent.assert_alive();
        probe_backend(&dp) == Some(probe_addr(0))
    });
    let cold = start.elapsed().as_secs_f64();
    ensure!(synced, "no sync within 300 s:\n{}", agent.log());
    let c = dp.contents()?;
    let frontends = c.services.keys().filter(|k| !k.is_address()).count() as u32;
    ensure!(frontends == o.services + 1, "{frontends} service frontends in the maps");
    r.add(
        "agent",
        &format!("agent/kube_cold_program_{}_services", o.services),
        cold,
        None,
        "s",
        json!({"services": o.services, "endpoints": endpoints, "agent_build": build, "source": "kube (API server double, list + watch)",
               "measured": "process start -> the probe service's backend read back from the maps"}),
    );
    let pid = agent_pid(&agent.pin_dir).context("finding the agent's pid")?;
    let (rss, hwm) = memory_kb(pid)?;
    r.add(
        "agent",
        &format!("agent/kube_rss_{}_services", o.services),
        rss as f64 / 1024.0,
        None,
        "MiB",
        json!({"services": o.services, "endpoints": endpoints, "agent_build": build, "peak_mib": hwm as f64 / 1024.0}),
    );

    let syncs_before = agent.log().lines().filter(|l| l.contains(" synced")).count();
    let mut ms = time_changes(&mut agent, &dp, o.changes, |want| {
        api.apply(probe_slice_object(want));
    })?;
    ms.sort_by(f64::total_cmp);
    let cond = json!({"services": o.services + 1, "endpoints": endpoints + 1, "changes": o.changes, "agent_build": build,
                      "measured": "EndpointSlice applied to the API server double (a watch event to the agent) -> new backend read back from the maps (100 us polls)"});
    r.add("agent", "agent/kube_watch_event_to_map_p50", pct(&ms, 50.0), None, "ms", cond.clone());
    r.add("agent", "agent/kube_watch_event_to_map_p99", pct(&ms, 99.0), None, "ms", cond);
    // The agent's own split of those syncs (its "synced" log lines).
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" synced")).skip(syncs_before).collect();
    for field in ["elapsed_us", "plan_us", "diff_us", "apply_us"] {
        let mut v: Vec<f64> = lines.iter().filter_map(|l| log_field(l, field)).map(|us| us / 1e3).collect();
        v.sort_by(f64::total_cmp);
        // The per-Service re-plan diffs inside its plan step (logged as
        // diff_us 0): a step that did not run is no figure.
        if v.is_empty() || pct(&v, 50.0) == 0.0 {
            continue;
        }
        r.add(
            "agent",
            &format!("agent/kube_change_sync_{}_p50", field.trim_end_matches("_us")),
            pct(&v, 50.0),
            None,
            "ms",
            json!({"services": o.services + 1, "agent_build": build, "syncs": v.len(), "p99_ms": pct(&v, 99.0), "measured": format!("{field} of the agent's synced log lines for the changes")}),
        );
    }
    drop(agent);
    Ok(())
}
