//! TCP connection rate and latency through a ClusterIP against the same
//! backends addressed directly: a Rust client in the client namespace opens
//! fresh connections (connect, HTTP GET, read the body, close) from a few
//! threads for a fixed time; the two targets alternate in rounds.
use std::{
    net::{Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use anyhow::{ensure, Result};
use lb_common::{algorithm, IPPROTO_TCP};
use serde_json::json;

use super::{report::Report, stats};
use xdplb_tests::{
    lb::Lb,
    netns::Netns,
    servers::{http_get, Server},
    services::{contents, Svc},
    topology::{backend_addr, Topology, POD_IFACE, UPLINK},
};

pub struct Opts {
    /// Seconds per target per round.
    pub seconds: f64,
    pub rounds: usize,
    /// Client threads (each one connection at a time).
    pub threads: usize,
    pub backends: usize,
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Connections from `threads` threads for `secs`, `targets` in turn;
/// returns (latencies in µs, errors, elapsed s).
fn load(ns: &Netns, targets: Vec<SocketAddr>, secs: f64, threads: usize) -> (Vec<f64>, usize, f64) {
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let targets = targets.clone();
            ns.spawn(move || {
                let (mut lat, mut errors, mut i) = (Vec::new(), 0usize, t);
                while Instant::now() < end {
                    let to = targets[i % targets.len()];
                    i += 1;
                    let t0 = Instant::now();
                    match http_get(to) {
                        Ok(_) => lat.push(t0.elapsed().as_secs_f64() * 1e6),
                        Err(_) => errors += 1,
                    }
                }
                (lat, errors)
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for h in handles {
        let (l, e) = h.join().expect("client thread");
        all.extend(l);
        errors += e;
    }
    (all, errors, start.elapsed().as_secs_f64())
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((p / 100.0) * (sorted.len() - 1) as f64).round() as usize]
}

/// Client port ranges of the two phases (via the ClusterIP, direct).
const PORTS: [&str; 2] = ["10000 37999", "38000 65535"];

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    let t = Topology::new(o.backends);
    let _servers: Vec<_> = (0..o.backends)
        .map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}")))
        .collect();
    let mut lb = Lb::attach(&t.node, UPLINK, &[POD_IFACE]);
    let svc = (0..o.backends).fold(
        Svc::new(1, IPPROTO_TCP, algorithm::ROUND_ROBIN).frontend(VIP, 80),
        |s, i| s.backend(i as u32 + 1, backend_addr(i), 8080),
    );
    lb.program(&contents(&[svc]));
    t.client.sysctl("net.ipv4.tcp_tw_reuse", "1");

    let via = vec![SocketAddr::from((VIP, 80))];
    let direct: Vec<SocketAddr> = (0..o.backends)
        .map(|i| SocketAddr::from((backend_addr(i), 8080)))
        .collect();
    // Both paths answer before anything is timed.
    let (v, d) = (via[0], direct.clone());
    t.client.run(move || -> Result<()> {
        http_get(v)?;
        for to in d {
            http_get(to)?;
        }
        Ok(())
    })?;

    let mut per: [(Vec<f64>, Vec<f64>, usize); 2] = Default::default(); // (rates, latencies, errors)
    for _ in 0..o.rounds {
        // Each path gets its own client ports. The backends keep TIME_WAIT
        // for 60 s, and a ClusterIP connection reaches them with the
        // client's own port (no SNAT): a direct connection reusing that
        // (port, backend) pair would meet the TIME_WAIT with unrelated TCP
        // timestamps and wait out a 1 s SYN retransmission — as it would
        // behind kube-proxy. (That closed flows' conntrack entries never
        // capture such a connection is tested in tests/tests/dataplane.rs.)
        for (k, targets) in [&via, &direct].into_iter().enumerate() {
            t.client.sysctl("net.ipv4.ip_local_port_range", PORTS[k]);
            let (lat, errors, secs) = load(&t.client, targets.clone(), o.seconds, o.threads);
            per[k].0.push(lat.len() as f64 / secs);
            per[k].1.extend(lat);
            per[k].2 += errors;
        }
    }
    let names = ["via_cluster_ip", "direct_to_backend"];
    let mut rate = [0.0; 2];
    let mut p50 = [0.0; 2];
    for (k, (rates, lat, errors)) in per.iter_mut().enumerate() {
        ensure!(!lat.is_empty(), "no connection completed {}", names[k]);
        lat.sort_by(f64::total_cmp);
        rate[k] = stats::median(rates);
        p50[k] = pct(lat, 50.0);
        let cond = json!({"backends": o.backends, "threads": o.threads, "seconds_per_round": o.seconds, "rounds": o.rounds,
                          "connections": lat.len(), "errors": errors, "request": "connect + HTTP/1.0 GET + read body + close",
                          "client_ports": PORTS[k], "lb": if k == 0 { "xdplb XDP (round-robin) + tc egress reverse NAT" } else { "xdplb attached, non-service path" }});
        r.add(
            "conn",
            &format!("conn/{}_rate", names[k]),
            rate[k],
            Some(stats::min(rates)),
            "conn/s",
            cond.clone(),
        );
        r.add(
            "conn",
            &format!("conn/{}_p50", names[k]),
            p50[k],
            None,
            "us",
            cond.clone(),
        );
        r.add(
            "conn",
            &format!("conn/{}_p99", names[k]),
            pct(lat, 99.0),
            None,
            "us",
            cond,
        );
    }
    let cond = json!({"backends": o.backends, "threads": o.threads, "rounds": o.rounds, "alternated": true});
    r.add(
        "conn",
        "ratio/conn_rate_cluster_ip_over_direct",
        rate[0] / rate[1],
        None,
        "x",
        cond.clone(),
    );
    r.add(
        "conn",
        "ratio/conn_p50_cluster_ip_over_direct",
        p50[0] / p50[1],
        None,
        "x",
        cond,
    );
    Ok(())
}
