//! `lb-agent top` against a real agent forwarding real UDP traffic sent at
//! a known rate (each datagram a new flow): `--once --json` reports the
//! service's packets and new flows per second within 10 % of what was sent
//! in its window; the live view, run in tmux, shows the service with a
//! non-zero rate, re-ranks on n and quits on q. Needs root and tmux.
use std::{
    net::SocketAddr,
    process::Command,
    time::{Duration, SystemTime},
};

use xdplb_tests::{
    agent::{agent_binary, objects_dir_with, programmed_at, slice_for, web_service, Agent, WEB_CLUSTER_IP},
    ops::{agent_cmd, text},
    topology::Topology,
    traffic::UdpFlows,
    wait_for,
};

const RATE: u32 = 400;
const SERVICE: &str = "shop/web:http";

/// A udp `shop/web` with two backends, programmed; the agent's names file written.
fn udp_agent(t: &Topology) -> Agent {
    let svc = web_service(&[("xdplb.io/algorithm", "round-robin")], "UDP", "");
    let mut agent = Agent::start_with(&t.node, &objects_dir_with(&svc, &slice_for(&[0, 1], "UDP")), &[]);
    let dp = agent.maps();
    let ok = wait_for(Duration::from_secs(15), || {
        programmed_at(&dp, WEB_CLUSTER_IP, 80, 17).is_some_and(|(c, _)| c == 2)
            && lb_agent::ops::names::read(&agent.pin_dir).values().any(|n| n.to_string() == SERVICE)
    });
    assert!(ok, "the UDP service never reached the maps:\n{}", agent.log());
    agent
}

#[test]
fn top_once_json_reports_the_rates_sent_within_ten_percent() {
    let t = Topology::new(2);
    let agent = udp_agent(&t);
    let pin = agent.pin_dir.to_str().unwrap().to_string();
    let flows = UdpFlows::start(&t.client, SocketAddr::from((WEB_CLUSTER_IP, 80)), RATE);
    std::thread::sleep(Duration::from_millis(500));

    let out = agent_cmd(&["top", "--once", "--json", "--interval", "2", "--pin-path", &pin]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)));
    let (start, end) = (v["window_start_unix_ms"].as_u64().unwrap(), v["window_end_unix_ms"].as_u64().unwrap());
    let sent = flows.rate_between(start, end);
    let svc = v["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == SERVICE)
        .unwrap_or_else(|| panic!("{SERVICE} not in {v:#}"));
    let f = |k: &str| svc[k].as_f64().unwrap();
    let (pkts, new_flows, bytes) = (f("packets_per_s"), f("new_flows_per_s"), f("bytes_per_s"));
    println!(
        "sent {sent:.1}/s over {} ms; top: packets {pkts:.1}/s, new flows {new_flows:.1}/s, bytes {bytes:.0}/s; total forwarded {:.1}/s, all packets {:.1}/s",
        end - start,
        v["total"]["forwarded_per_s"],
        v["total"]["packets_per_s"]
    );
    assert!(sent > RATE as f64 * 0.5, "the sender fell far behind: {sent}/s");
    for (what, got) in [("packets", pkts), ("new flows", new_flows), ("forwarded", v["total"]["forwarded_per_s"].as_f64().unwrap())] {
        assert!((got - sent).abs() <= 0.10 * sent, "{what}: top says {got:.1}/s, {sent:.1}/s were sent:\n{v:#}");
    }
    // 64 bytes of payload: 92-byte IP packets, 106-byte frames.
    let per_packet = bytes / pkts;
    assert!((90.0..=110.0).contains(&per_packet), "bytes per packet {per_packet}");
    assert_eq!(v["services"].as_array().unwrap().len(), 1, "{v:#}");
    assert!(v["drops"].as_array().unwrap().is_empty(), "{v:#}");

    // A table too, for people.
    let out = agent_cmd(&["top", "--once", "--interval", "0.5", "--pin-path", &pin]);
    assert!(out.status.success() && text(&out).contains(SERVICE), "{}", text(&out));
    // Bad input: a clear error.
    let out = agent_cmd(&["top", "--once", "--interval", "0", "--pin-path", &pin]);
    assert!(!out.status.success() && text(&out).contains("between 0.1 and 3600"), "{}", text(&out));
    let out = agent_cmd(&["top", "--once", "--pin-path", "/sys/fs/bpf/no-such-xdplb"]);
    assert!(!out.status.success() && text(&out).contains("no xdplb maps pinned"), "{}", text(&out));
    drop(flows);
}

/// A tmux server of its own (`-L`), killed on drop.
struct Tmux(String);

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux").arg("-L").arg(&self.0).args(args).env("TERM", "xterm-256color").output().expect("running tmux")
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

#[test]
fn the_live_view_in_a_terminal_shows_the_service_and_its_rate_and_quits_on_q() {
    let t = Topology::new(2);
    let agent = udp_agent(&t);
    let flows = UdpFlows::start(&t.client, SocketAddr::from((WEB_CLUSTER_IP, 80)), RATE);
    let tmux = Tmux(format!("xdplb-top-{}", std::process::id()));
    let cmd = format!("{} top --pin-path {}", agent_binary().display(), agent.pin_dir.display());
    let out = tmux.cmd(&["new-session", "-d", "-s", "top", "-x", "120", "-y", "30", &cmd]);
    assert!(out.status.success(), "{}", text(&out));

    // The row of the service once a refresh has shown traffic.
    let mut screen = String::new();
    let row = |screen: &str| -> Option<f64> {
        let line = screen.lines().find(|l| l.contains(SERVICE))?;
        line.split_whitespace().nth(2)?.parse().ok()
    };
    let seen = wait_for(Duration::from_secs(15), || {
        screen = String::from_utf8_lossy(&tmux.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned();
        row(&screen).is_some_and(|r| r > 0.0)
    });
    assert!(seen, "no non-zero rate for {SERVICE} on the screen:\n{screen}");
    println!("{screen}");
    assert!(screen.contains("PKTS/S") && screen.contains("q quits"), "{screen}");
    // The screen's rate is over some second of the last two; loose bounds
    // around what was sent then.
    let pkts = row(&screen).unwrap();
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_millis() as u64;
    let sent = flows.rate_between(now - 1000, now);
    assert!(pkts > sent * 0.5 && pkts < sent * 1.5, "{pkts} packets/s on screen, {sent:.0}/s sent:\n{screen}");

    // n re-ranks by new flows at once.
    assert!(screen.contains("by packets"), "{screen}");
    assert!(tmux.cmd(&["send-keys", "-t", "top", "n"]).status.success());
    let capture = || String::from_utf8_lossy(&tmux.cmd(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned();
    let resorted = wait_for(Duration::from_secs(5), || capture().contains("by new flows"));
    assert!(resorted, "n did not re-rank:\n{}", capture());

    let out = tmux.cmd(&["send-keys", "-t", "top", "q"]);
    assert!(out.status.success(), "{}", text(&out));
    let quit = wait_for(Duration::from_secs(5), || !tmux.cmd(&["has-session", "-t", "top"]).status.success());
    assert!(quit, "top did not quit on q:\n{}", String::from_utf8_lossy(&tmux.cmd(&["capture-pane", "-p", "-t", "top"]).stdout));
}
