//! Balancing: Maglev table build time and quality (in process, through the
//! agent's own `control::maglev`), and the spread of new flows that the
//! dataplane's random / round-robin / least-conn / Maglev choices really give,
//! measured through BPF_PROG_TEST_RUN (the rewritten destination of each
//! first packet names the backend).
use std::{net::Ipv4Addr, time::Instant};

use anyhow::{ensure, Result};
use lb_agent::control::maglev::{build, disruption, shares, MaglevBackend};
use lb_common::{algorithm, IPPROTO_TCP};
use serde_json::json;

use super::{report::Report, stats};
use xdplb_tests::{
    fixture::run_frame,
    lb::Lb,
    packet::{Frame, TCP_SYN},
    services::{contents, Svc},
};

pub struct Opts {
    /// (backends, table size) pairs to time `build` at.
    pub builds: &'static [(usize, u32)],
    /// Builds per pair; the median is reported.
    pub build_runs: usize,
    /// New flows sent through the dataplane per algorithm.
    pub flows: u32,
    /// Backends of the dataplane spread service (at most 200).
    pub backends: u8,
}

/// `n` weight-1 backends with address-style keys, ids 1..=n.
fn backends(n: usize) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| {
            MaglevBackend::new(
                i as u32 + 1,
                format!("10.{}.{}.{}:8080", 128 + (i >> 16), (i >> 8) & 255, i & 255),
                1,
            )
        })
        .collect()
}

pub fn run(o: &Opts, r: &mut Report) -> Result<()> {
    for &(n, m) in o.builds {
        let bs = backends(n);
        let mut ms = Vec::new();
        for _ in 0..o.build_runs {
            let t = Instant::now();
            let table = build(&bs, m)?;
            ms.push(t.elapsed().as_secs_f64() * 1e3);
            ensure!(
                table.len() == m as usize && !table.contains(&0),
                "maglev table not full"
            );
        }
        r.add(
            "maglev",
            &format!("maglev/build_{n}_backends_m{m}"),
            stats::median(&ms),
            Some(stats::min(&ms)),
            "ms",
            json!({"backends": n, "table_size": m, "runs": o.build_runs, "weights": "equal", "method": "control::maglev::build in process, median"}),
        );
    }
    for n in [10usize, 100] {
        let m = lb_agent::control::maglev::DEFAULT_TABLE_SIZE;
        let table = build(&backends(n), m)?;
        let sh = shares(&table);
        let ideal = 1.0 / n as f64;
        let max = sh.values().copied().fold(0.0, f64::max) / ideal;
        let min = sh.values().copied().fold(f64::INFINITY, f64::min) / ideal;
        let cond = json!({"backends": n, "table_size": m, "ideal_share": ideal});
        r.add(
            "maglev",
            &format!("maglev/max_share_over_ideal_n{n}"),
            max,
            None,
            "x",
            cond.clone(),
        );
        r.add(
            "maglev",
            &format!("maglev/min_share_over_ideal_n{n}"),
            min,
            None,
            "x",
            cond,
        );
        let mut fewer = backends(n);
        fewer.remove(n / 2);
        let changed = disruption(&table, &build(&fewer, m)?);
        r.add(
            "maglev",
            &format!("maglev/table_changed_removing_1_of_{n}"),
            changed * 100.0,
            None,
            "%",
            json!({"backends": n, "table_size": m, "minimum_pct": 100.0 / n as f64, "removed": "one backend (key order middle)"}),
        );
    }
    spread(o, r)
}

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn svc(algo: u8, n: u8) -> Svc {
    (0..n).fold(Svc::new(1, IPPROTO_TCP, algo).frontend(VIP, 80), |s, i| {
        s.backend(i as u32 + 1, backend(i), 8080)
    })
}

fn backend(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, 2, 11 + i)
}

/// Sends `flows` first packets of distinct flows; returns new flows per backend (index = id - 1).
fn send(lb: &Lb, n: u8, flows: u32, base: u32) -> Result<Vec<u64>> {
    let mut counts = vec![0u64; n as usize];
    for i in 0..flows {
        let k = base + i;
        let src = Ipv4Addr::from(0xac10_0000 + (k / 50_000)); // 172.16.x.y
        let sport = 1024 + (k % 50_000) as u16;
        let (rc, out) = run_frame(
            &lb.ebpf,
            "xdp_lb",
            &Frame::tcp(src, sport, VIP, 80, TCP_SYN).bytes(),
        )
        .map_err(anyhow::Error::msg)?;
        ensure!(rc == 2, "XDP_PASS expected for a service packet, got {rc}");
        let dst = Ipv4Addr::new(out[30], out[31], out[32], out[33]);
        let idx = (0..n)
            .find(|&i| backend(i) == dst)
            .ok_or_else(|| anyhow::anyhow!("rewritten to {dst}, not a backend"))?;
        counts[idx as usize] += 1;
    }
    Ok(counts)
}

fn spread(o: &Opts, r: &mut Report) -> Result<()> {
    let n = o.backends;
    let ideal = o.flows as f64 / n as f64;
    for (name, algo) in [
        ("random", algorithm::RANDOM),
        ("round_robin", algorithm::ROUND_ROBIN),
        ("least_conn", algorithm::LEAST_CONN),
        ("maglev", algorithm::MAGLEV),
    ] {
        let mut lb = Lb::load();
        let mut s = svc(algo, n);
        if algo == algorithm::MAGLEV {
            let bs: Vec<_> = (0..n)
                .map(|i| MaglevBackend::new(i as u32 + 1, format!("{}:8080", backend(i)), 1))
                .collect();
            s = s.table(build(&bs, lb_agent::control::maglev::DEFAULT_TABLE_SIZE)?);
        }
        lb.program(&contents(&[s]));
        let t = Instant::now();
        let counts = send(&lb, n, o.flows, 0)?;
        let secs = t.elapsed().as_secs_f64();
        let (max, min) = (
            *counts.iter().max().unwrap() as f64,
            *counts.iter().min().unwrap() as f64,
        );
        let cond = json!({"flows": o.flows, "backends": n, "ideal_per_backend": ideal, "counts": counts, "method": "BPF_PROG_TEST_RUN xdp_lb, one SYN per distinct 5-tuple", "run_s": (secs * 100.0).round() / 100.0});
        r.add(
            "balance",
            &format!("spread/{name}_max_over_ideal"),
            max / ideal,
            None,
            "x",
            cond.clone(),
        );
        r.add(
            "balance",
            &format!("spread/{name}_min_over_ideal"),
            (min / ideal).max(1e-9),
            None,
            "x",
            cond,
        );
    }
    // least-conn under skew: backend 1 already holds `preload` live flows.
    let preload = (o.flows as u64) / n as u64;
    let mut lb = Lb::load();
    lb.program(&contents(&[svc(algorithm::LEAST_CONN, n)]));
    lb.maps.set_backend_load(1, preload)?;
    let counts = send(&lb, n, o.flows, 0)?;
    let exact =
        ((o.flows as f64 + preload as f64) / n as f64 - preload as f64).max(0.0) / o.flows as f64;
    r.add(
        "balance",
        "spread/least_conn_preloaded_backend_share",
        (counts[0] as f64 / o.flows as f64 * 100.0).max(1e-9),
        None,
        "%",
        json!({"flows": o.flows, "backends": n, "preloaded_flows": preload, "uniform_pct": 100.0 / n as f64,
               "exact_least_conn_pct": exact * 100.0, "counts": counts}),
    );
    Ok(())
}
