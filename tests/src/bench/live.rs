//! Live forwarding rate: our live-frames generator (`bench_gen` run by
//! BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES, one pinned thread per
//! CPU) sends 64-byte UDP frames over 2-queue veth pairs into a node
//! namespace, where the program under test runs on the uplink:
//!
//! ```text
//! gen ns eth0 ──veth── up0 node ns (ip_forward) bk0 ──veth── sink ns eth0 (bench_drop counts)
//!  192.168.1.2          192.168.1.1    172.31.0.1             172.31.0.2
//! ```
//! The node routes only the backends (10.128.0.0/12) to the sink, so a frame
//! reaches it only if it was NATed. On veth the receiver runs on the
//! sender's CPU, so a rate is generator + node together: figures are also
//! given as CPU-ns per packet over a drop-only baseline of the same run.
//! Each configuration gets a fresh topology. Two traffic mixes per service
//! count: a fixed set of flows, established by a warm-up (conntrack hits for
//! both xdplb and iptables), and a new 5-tuple every frame (conntrack
//! inserts; for iptables, the walk of KUBE-SERVICES).
use std::{net::Ipv4Addr, sync::Barrier, time::Instant};

use anyhow::{ensure, Context as _, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions, XdpMode};
use lb_common::{counter, IPPROTO_UDP};
use serde_json::json;

use super::{
    dataplane::{backend, vip, BenchLb},
    in_ns, iptables,
    progs::{BenchProgs, GenConfig},
    report::Report,
};
use crate::{
    netns::Netns,
    packet::{Frame, L4},
    topology::{addr_up, veth},
};

#[derive(Clone, Debug)]
pub struct Opts {
    /// Frames per thread for floors (drop, XDP_TX, redirect).
    pub repeat_floor: u32,
    /// At most this many frames per thread through the stack (forwarding,
    /// xdplb, iptables); fewer when `target_s` is reached sooner.
    pub repeat_fwd: u32,
    /// Seconds each timed blast through the stack should take.
    pub target_s: f64,
    pub threads: &'static [usize],
    pub services: &'static [u32],
    pub backends_per_service: u32,
    /// Distinct (destination, source port) pairs per thread.
    pub flows: u32,
    /// Also measure kube-proxy-style iptables rules.
    pub iptables: bool,
    /// Timed blasts per configuration and thread count (median reported).
    pub rounds: usize,
}

struct Topo {
    gen: Netns,
    node: Netns,
    sink: Netns,
    gen_ifindex: u32,
    bk0_ifindex: u32,
    up0_mac: [u8; 6],
    gen_mac: [u8; 6],
}

fn mac(ns: &Netns, iface: &str) -> [u8; 6] {
    let out = ns.cmd("cat").arg(format!("/sys/class/net/{iface}/address")).output().expect("cat");
    let s = String::from_utf8_lossy(&out.stdout);
    let v: Vec<u8> = s.trim().split(':').map(|h| u8::from_str_radix(h, 16).expect("mac")).collect();
    v.try_into().expect("6 bytes")
}

fn ifindex(ns: &Netns, iface: &str) -> u32 {
    let out = ns.cmd("cat").arg(format!("/sys/class/net/{iface}/ifindex")).output().expect("cat");
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("ifindex")
}

impl Topo {
    fn new() -> Self {
        let (gen, node, sink) = (Netns::new(), Netns::new(), Netns::new());
        node.sysctl("net.ipv4.ip_forward", "1");
        node.sysctl("net.ipv4.conf.all.rp_filter", "0");
        veth(&node, "up0", &gen, "eth0");
        addr_up(&node, "up0", "192.168.1.1/24");
        addr_up(&gen, "eth0", "192.168.1.2/24");
        veth(&node, "bk0", &sink, "eth0");
        addr_up(&node, "bk0", "172.31.0.1/24");
        addr_up(&sink, "eth0", "172.31.0.2/24");
        let sink_mac = mac(&sink, "eth0");
        let m = sink_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        // No ARP on the measured path.
        node.ip(&["neigh", "replace", "172.31.0.2", "lladdr", &m, "dev", "bk0", "nud", "permanent"]);
        node.ip(&["route", "add", "10.128.0.0/12", "via", "172.31.0.2", "dev", "bk0"]);
        let t = Topo {
            gen_ifindex: ifindex(&gen, "eth0"),
            bk0_ifindex: ifindex(&node, "bk0"),
            up0_mac: mac(&node, "up0"),
            gen_mac: mac(&gen, "eth0"),
            gen,
            node,
            sink,
        };
        // Generator sources, so replies the node might send (ICMP) need no ARP.
        t.node.ip(&["neigh", "replace", "192.168.1.10", "lladdr", &fmt_mac(&t.gen_mac), "dev", "up0", "nud", "permanent"]);
        t.node.ip(&["neigh", "replace", "192.168.1.11", "lladdr", &fmt_mac(&t.gen_mac), "dev", "up0", "nud", "permanent"]);
        t
    }

    /// The generator's template: UDP, checksum 0, to `dst:80`, 64 bytes.
    fn frame(&self, dst: Ipv4Addr) -> Vec<u8> {
        let mut f = Frame::udp(Ipv4Addr::new(192, 168, 1, 10), 10_000, dst, 80).payload(&[0; 22]);
        // No UDP checksum: the generator rewrites ports and addresses per frame.
        f.l4 = L4::Udp { zero_checksum: true };
        let mut b = f.bytes();
        b[0..6].copy_from_slice(&self.up0_mac);
        b[6..12].copy_from_slice(&self.gen_mac);
        assert_eq!(b.len(), 64);
        b
    }
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it for live frames.
fn xdp_md(ifindex: u32, queue: u32) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[4..8].copy_from_slice(&64u32.to_ne_bytes()); // data_end = frame length
    b[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    b[16..20].copy_from_slice(&queue.to_ne_bytes());
    b
}

/// Sends `repeat` frames per thread from `threads` pinned threads; returns
/// (frames counted by bench_drop, seconds).
fn blast(progs: &mut BenchProgs, t: &Topo, frame: &[u8], threads: usize, repeat: u32) -> Result<(u64, f64)> {
    progs.reset_drops()?;
    let gen_file = std::fs::File::open(format!("/run/netns/{}", t.gen.name()))?;
    let barrier = Barrier::new(threads + 1);
    let p = progs.xdp("bench_gen");
    let secs = std::thread::scope(|s| -> Result<f64> {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (gen_file, barrier) = (&gen_file, &barrier);
                s.spawn(move || -> Result<()> {
                    crate::netns::enter(gen_file);
                    super::pin(Some(i));
                    let ctx = xdp_md(t.gen_ifindex, i as u32);
                    barrier.wait();
                    let r = p.test_run(TestRunOptions {
                        data_in: Some(frame),
                        ctx_in: Some(&ctx),
                        repeat,
                        attrs: TestRunAttrs::new().xdp_live_frames(64),
                        ..Default::default()
                    });
                    r.context("live-frames BPF_PROG_TEST_RUN")?;
                    Ok(())
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))?;
        }
        Ok(start.elapsed().as_secs_f64())
    })?;
    Ok((progs.drops()?, secs))
}

fn attach(progs: &mut BenchProgs, ns: &Netns, prog: &'static str, iface: &str) -> Result<()> {
    in_ns(ns, || progs.attach(prog, iface)).with_context(|| format!("attaching {prog} to {iface}"))
}

pub fn run(progs: &mut BenchProgs, opts: &Opts, report: &mut Report) -> Result<()> {
    let mut drop_ns: Vec<f64> = Vec::new();
    let cond = |extra: serde_json::Value, repeat: u32, threads: usize, m: &Measured, i: usize| {
        let mut c = json!({"threads": threads, "frames_per_thread": repeat, "frame_bytes": 64, "proto": "udp", "flows_per_thread": opts.flows,
            "delivered_ratio": (m.delivered[i] * 1000.0).round() / 1000.0, "rounds": opts.rounds, "max_over_min": (m.spread[i] * 100.0).round() / 100.0});
        if let (Some(m), serde_json::Value::Object(e)) = (c.as_object_mut(), extra) {
            m.extend(e);
        }
        c
    };

    // (label, program on up0, program on gen eth0 (for XDP_TX back), repeat)
    let floors: [(&str, &str, Option<&str>, u32); 3] = [
        ("live/drop_baseline", "bench_drop", None, opts.repeat_floor),
        ("live/xdp_tx_floor", "bench_tx", Some("bench_drop"), opts.repeat_floor),
        ("live/xdp_redirect_floor", "bench_redirect", None, opts.repeat_floor),
    ];
    for (label, up_prog, gen_prog, repeat) in floors {
        let t = Topo::new();
        attach(progs, &t.node, up_prog, "up0")?;
        if let Some(g) = gen_prog {
            attach(progs, &t.gen, g, "eth0")?;
        } else {
            attach(progs, &t.sink, "bench_drop", "eth0")?;
        }
        progs.set_redirect(t.bk0_ifindex)?;
        let frame = t.frame(backend(1));
        progs.set_gen(gen_cfg(opts.flows, 1, backend(1), &frame))?;
        let m = measure_fixed(progs, &t, &frame, opts, repeat, |_, _| Ok(()))?;
        for (i, &threads) in opts.threads.iter().enumerate() {
            let ns = threads as f64 * 1e9 / m.pps[i];
            if label == "live/drop_baseline" {
                drop_ns.push(ns);
            }
            report.add("live", label, m.pps[i] / 1e6, None, "Mpps", cond(json!({"ns_per_packet_per_cpu": round1(ns)}), repeat, threads, &m, i));
        }
        progs.detach_all();
        drop(t);
    }

    // Plain stack forwarding of frames addressed to a backend: no NAT at all.
    let mut fwd_ns = Vec::new();
    {
        let t = Topo::new();
        attach(progs, &t.node, "bench_pass", "up0")?;
        attach(progs, &t.sink, "bench_drop", "eth0")?;
        let frame = t.frame(backend(1));
        progs.set_gen(gen_cfg(opts.flows, 10, backend(1), &frame))?;
        let m = measure(progs, &t, &frame, opts, true, |_, _| Ok(()))?;
        for (i, &threads) in opts.threads.iter().enumerate() {
            let ns = threads as f64 * 1e9 / m.pps[i];
            fwd_ns.push(ns);
            report.add("live", "live/stack_forward_no_nat", m.pps[i] / 1e6, None, "Mpps",
                cond(json!({"ns_per_packet_per_cpu": round1(ns), "ns_over_drop": round1(ns - drop_ns[i])}), m.repeat, threads, &m, i));
        }
        progs.detach_all();
    }

    let restore = if which("iptables-legacy-restore") { "iptables-legacy-restore" } else { "iptables-restore" };
    let per = opts.backends_per_service;
    for &n in opts.services {
        for mix in [Mix::Established, Mix::NewFlows] {
            let (flows, suffix, what) = match mix {
                Mix::Established => (opts.flows.max(n), "", "established flows (warmed up)"),
                Mix::NewFlows => (u32::MAX, "_new_flows", "a new flow every packet"),
            };
            let flows_json = if mix == Mix::NewFlows { json!("all distinct") } else { json!(flows) };
            // The nodes exist at once and are measured round by round in turn,
            // so a noisy neighbour slows them alike.
            let plain = Topo::new();
            attach(progs, &plain.node, "bench_pass", "up0")?;
            attach(progs, &plain.sink, "bench_drop", "eth0")?;
            // As many distinct destinations as the balanced nodes forward to.
            let plain_cfg = gen_cfg(flows, n * per, backend(1), &plain.frame(backend(1)));

            let xt = Topo::new();
            let mut lb = BenchLb::new(n, per, IPPROTO_UDP, 1 << 20)?;
            let x = lb.xdp_mut();
            in_ns(&xt.node, || x.attach("up0", XdpMode::Driver)).context("attaching xdp_lb to up0")?;
            attach(progs, &xt.sink, "bench_drop", "eth0")?;
            let x_cfg = gen_cfg(flows, n, vip(1), &xt.frame(vip(1)));

            // The same, forwarding with XDP itself (FIB lookup + redirect to
            // bk0, whose peer runs XDP) instead of the kernel's IP forwarding.
            let rt = Topo::new();
            let mut rlb = BenchLb::new(n, per, IPPROTO_UDP, 1 << 20)?;
            let r = rlb.xdp_mut();
            in_ns(&rt.node, || r.attach("up0", XdpMode::Driver)).context("attaching xdp_lb to up0")?;
            in_ns(&rt.node, || rlb.enable_redirect(rt.bk0_ifindex)).context("enabling XDP redirect")?;
            attach(progs, &rt.sink, "bench_drop", "eth0")?;
            let r_cfg = gen_cfg(flows, n, vip(1), &rt.frame(vip(1)));

            // Only DNATed frames are routed to the sink (VIPs have no route).
            let kt = if opts.iptables { Some(Topo::new()) } else { None };
            let mut load_s = 0.0;
            if let Some(kt) = &kt {
                load_s = iptables::load(&kt.node, restore, &iptables::rules(n, per))?;
                attach(progs, &kt.node, "bench_pass", "up0")?;
                attach(progs, &kt.sink, "bench_drop", "eth0")?;
            }
            let m = {
                let lb = &lb;
                let mut sides = vec![
                    Side { t: &plain, cfg: plain_cfg, check: Box::new(|_| Ok(())) },
                    Side {
                        t: &xt,
                        cfg: x_cfg,
                        check: Box::new(move |delivered| {
                            let fwd = lb.counters()?[counter::NAT_FORWARD as usize];
                            ensure!(fwd >= delivered, "xdp_lb forwarded {fwd} frames but the sink saw {delivered}: frames took another path");
                            Ok(())
                        }),
                    },
                ];
                let rlb = &rlb;
                sides.push(Side {
                    t: &rt,
                    cfg: r_cfg,
                    check: Box::new(move |delivered| {
                        let redirected = rlb.counters()?[counter::XDP_REDIRECTED as usize];
                        ensure!(redirected >= delivered, "xdp_lb redirected {redirected} frames but the sink saw {delivered}: frames took another path");
                        Ok(())
                    }),
                });
                if let Some(kt) = &kt {
                    sides.push(Side { t: kt, cfg: gen_cfg(flows, n, vip(1), &kt.frame(vip(1))), check: Box::new(|_| Ok(())) });
                }
                measure_interleaved(progs, &sides, opts, mix == Mix::Established)
            };
            progs.detach_all();
            let m = m?;
            let (f, x, rd, k) = (&m[0], &m[1], &m[2], m.get(3));
            for (i, &threads) in opts.threads.iter().enumerate() {
                let per_cpu = |pps: f64| threads as f64 * 1e9 / pps;
                let base = |pps: f64| {
                    json!({"services": n, "backends_per_service": per, "traffic": what, "flows_per_thread": flows_json,
                        "ns_per_packet_per_cpu": round1(per_cpu(pps)), "ns_over_drop": round1(per_cpu(pps) - drop_ns[i]),
                        "ns_over_stack_forward": round1(per_cpu(pps) - per_cpu(f.pps[i])), "stack_forward_mpps": (f.pps[i] / 1e4).round() / 100.0})
                };
                let mut c = base(x.pps[i]);
                c["path"] = json!("xdp_lb DNAT + XDP_PASS, kernel forwarding");
                report.add("live", &format!("live/xdplb_{n}_services{suffix}"), x.pps[i] / 1e6, None, "Mpps", cond(c, x.repeat, threads, x, i));
                let mut c = base(rd.pps[i]);
                c["path"] = json!("xdp_lb DNAT + FIB lookup + XDP redirect (--redirect-iface)");
                report.add("live", &format!("live/xdplb_redirect_{n}_services{suffix}"), rd.pps[i] / 1e6, None, "Mpps", cond(c, rd.repeat, threads, rd, i));
                let Some(k) = k else { continue };
                let mut c = base(k.pps[i]);
                c["path"] = json!("XDP_PASS, kube-proxy nat rules (conntrack), kernel forwarding");
                c["rules_load_s"] = json!(round1(load_s));
                c["tool"] = json!(restore);
                report.add("live", &format!("live/iptables_{n}_services{suffix}"), k.pps[i] / 1e6, None, "Mpps", cond(c, k.repeat, threads, k, i));
                for (side, name, what_path) in [(x, "xdplb", "same path (kernel forwarding)"), (rd, "xdplb_redirect", "xdplb forwarding with XDP redirect")] {
                    let ratios: Vec<f64> = side.rounds[i].iter().zip(&k.rounds[i]).map(|(a, b)| a / b).collect();
                    report.add("live", &format!("ratio/{name}_over_iptables_{n}_services{suffix}"), super::stats::median(&ratios), Some(super::stats::min(&ratios)), "x",
                        json!({"services": n, "threads": threads, "traffic": what, "rounds": ratios.len(), "what": format!("forwarded pps, {name} / kube-proxy iptables, {what_path}, same traffic, measured in alternation; median (min) of per-round ratios")}));
                }
            }
        }
    }
    Ok(())
}

/// What the generator's flows look like.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// A fixed set of flows, established by a warm-up before timing.
    Established,
    /// Every frame a new 5-tuple: conntrack inserts, kube-proxy's rule walk.
    NewFlows,
}

/// A node under load: its topology, what the generator sends it, and a
/// check run after every timed blast with the frames delivered.
struct Side<'a> {
    t: &'a Topo,
    cfg: GenConfig,
    check: Box<dyn Fn(u64) -> Result<()> + 'a>,
}

/// As [`measure`], for several nodes measured in alternation, round by round.
fn measure_interleaved(progs: &mut BenchProgs, sides: &[Side], opts: &Opts, warm_up: bool) -> Result<Vec<Measured>> {
    let mut out = Vec::new();
    for s in sides {
        progs.set_gen(s.cfg)?;
        if warm_up {
            blast(progs, s.t, &s.cfg.frame, *opts.threads.iter().max().unwrap_or(&1), 1 << 16)?;
        }
        let repeat = probe(progs, s.t, &s.cfg.frame, opts)?;
        out.push(Measured { repeat, pps: Vec::new(), delivered: Vec::new(), spread: Vec::new(), rounds: Vec::new() });
    }
    for &n in opts.threads {
        let mut pps = vec![Vec::new(); sides.len()];
        let mut delivered = vec![Vec::new(); sides.len()];
        for _ in 0..opts.rounds.max(1) {
            for (i, s) in sides.iter().enumerate() {
                progs.set_gen(s.cfg)?;
                let (got, secs) = blast(progs, s.t, &s.cfg.frame, n, out[i].repeat)?;
                let sent = n as u64 * out[i].repeat as u64;
                ensure!(got > 0, "no frame arrived where it was counted ({n} threads, {sent} sent)");
                (s.check)(got)?;
                pps[i].push(got as f64 / secs);
                delivered[i].push(got as f64 / sent as f64);
            }
        }
        for (i, m) in out.iter_mut().enumerate() {
            m.push(&pps[i], &delivered[i]);
        }
    }
    Ok(out)
}

/// Interface and IP counters of the topology, for `XDPLB_BENCH_DEBUG=1`.
fn dump(t: &Topo) {
    for (ns, i) in [(&t.node, "up0"), (&t.node, "bk0"), (&t.gen, "eth0")] {
        let out = ns.cmd("ethtool").args(["-S", i]).output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
        eprintln!("{i}: {}", out.lines().filter(|l| !l.ends_with(": 0")).collect::<Vec<_>>().join(" "));
    }
    let out = t.node.cmd("cat").arg("/proc/net/snmp").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    eprintln!("node: {}", out.lines().filter(|l| l.starts_with("Ip:")).collect::<Vec<_>>().join("\n"));
}

fn gen_cfg(flows: u32, dsts: u32, dst_base: Ipv4Addr, frame: &[u8]) -> GenConfig {
    let mut c = GenConfig { flows, dsts, dst_base: dst_base.octets(), frame: [0; 64] };
    c.frame.copy_from_slice(frame);
    c
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn which(tool: &str) -> bool {
    std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// Per thread count: median rate, worst delivered/sent ratio, max/min rate over rounds.
struct Measured {
    /// Frames per thread of each timed blast.
    repeat: u32,
    pps: Vec<f64>,
    delivered: Vec<f64>,
    spread: Vec<f64>,
    /// Every round's rate.
    rounds: Vec<Vec<f64>>,
}

impl Measured {
    /// Adds one thread count's rounds.
    fn push(&mut self, pps: &[f64], delivered: &[f64]) {
        self.pps.push(super::stats::median(pps));
        self.delivered.push(super::stats::min(delivered));
        self.spread.push(pps.iter().copied().fold(0.0, f64::max) / super::stats::min(pps));
        self.rounds.push(pps.to_vec());
    }
}

/// Optional warm-up (so the flows are established), a probe that sizes the
/// timed blasts, then `rounds` timed blasts per thread count.
fn measure(progs: &mut BenchProgs, t: &Topo, frame: &[u8], opts: &Opts, warm_up: bool, check: impl Fn(u64, u64) -> Result<()>) -> Result<Measured> {
    if warm_up {
        blast(progs, t, frame, *opts.threads.iter().max().unwrap_or(&1), 1 << 16)?;
    }
    let repeat = probe(progs, t, frame, opts)?;
    measure_fixed(progs, t, frame, opts, repeat, check)
}

/// Frames per thread for a timed blast of about `opts.target_s` (at most
/// `opts.repeat_fwd`). Two probes: their difference cancels the fixed cost
/// of a call (~20 ms here).
fn probe(progs: &mut BenchProgs, t: &Topo, frame: &[u8], opts: &Opts) -> Result<u32> {
    let (a, ta) = blast(progs, t, frame, 1, 1 << 12)?;
    let (b, tb) = blast(progs, t, frame, 1, 1 << 14)?;
    let rate = if tb > ta && b > a { (b - a) as f64 / (tb - ta) } else { b as f64 / tb };
    Ok(((rate * opts.target_s) as u32).clamp(1 << 12, opts.repeat_fwd))
}

/// `rounds` timed blasts of `repeat` frames per thread, per thread count.
fn measure_fixed(progs: &mut BenchProgs, t: &Topo, frame: &[u8], opts: &Opts, repeat: u32, check: impl Fn(u64, u64) -> Result<()>) -> Result<Measured> {
    let mut out = Measured { repeat, pps: Vec::new(), delivered: Vec::new(), spread: Vec::new(), rounds: Vec::new() };
    for &n in opts.threads {
        let (mut pps, mut delivered) = (Vec::new(), Vec::new());
        for _ in 0..opts.rounds.max(1) {
            let (got, secs) = blast(progs, t, frame, n, repeat)?;
            let sent = n as u64 * repeat as u64;
            if std::env::var_os("XDPLB_BENCH_DEBUG").is_some() {
                dump(t);
            }
            ensure!(got > 0, "no frame arrived where it was counted ({n} threads, {sent} sent)");
            check(got, sent)?;
            pps.push(got as f64 / secs);
            delivered.push(got as f64 / sent as f64);
        }
        out.push(&pps, &delivered);
    }
    Ok(out)
}
