//! The `live` and `skb` sections: forwarding rate through the node of
//! [`super::topo`], 64-byte frames, 1 and 2 pinned sender threads, for
//! every traffic [`Mix`] and service count.
//!
//! - `live` ([`Sender::LiveFrames`]): xdplb (DNAT + XDP_PASS to the kernel's
//!   forwarding, and DNAT + XDP redirect) against the floors of this
//!   machine: drop-only, a bare XDP_TX, a bare XDP redirect, and the
//!   kernel forwarding frames that need no NAT.
//! - `skb` ([`Sender::Skb`]): both xdplb nodes against kube-proxy-style iptables rules
//!   ([`super::iptables`]), both fed skbs by the same AF_PACKET sender,
//!   measured in alternation; ratios per round.
//!
//! Each service count gets fresh nodes per protocol; the mixes of that
//! protocol then run on them in turn (established flows first).
use anyhow::{ensure, Context as _, Result};
use aya::programs::XdpMode;
use lb_common::{counter, IPPROTO_TCP, IPPROTO_UDP};
use serde_json::{json, Value};

use super::{
    dataplane::{backend, vip, BenchLb},
    in_ns, inprog, iptables,
    measure::{measure, How, Measured, Side},
    progs::BenchProgs,
    report::Report,
    sender::{blast, Sender},
    topo::Topo,
};
use xdplb_tests::netns::Netns;

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
    /// Established flows per thread (at least one per service).
    pub flows: u32,
    pub mixes: &'static [Mix],
    /// Timed blasts per configuration and thread count (median reported).
    pub rounds: usize,
    /// Conntrack entries of the xdplb nodes.
    pub conntrack: u32,
}

impl Opts {
    /// One dimension varied at a time, for profiling (docs/benchmarks.md):
    /// `XDPLB_BENCH_SERVICES=1,10000`, `XDPLB_BENCH_FLOWS=N` (per thread),
    /// `XDPLB_BENCH_MIXES=udp,tcp_ack` (`udp`, or a mix's suffix without
    /// its `_`), `XDPLB_BENCH_CONNTRACK=N`; unset, the mode's own.
    pub fn from_env(self) -> Result<Self> {
        let num = |var: &str| -> Result<Option<Vec<u32>>> {
            let Ok(v) = std::env::var(var) else { return Ok(None) };
            let parsed = v.split(',').map(|x| x.trim().parse::<u32>().ok().filter(|n| *n > 0)).collect::<Option<Vec<u32>>>();
            parsed.map(Some).with_context(|| format!("{var}={v:?}: expected positive numbers, comma-separated"))
        };
        let mut o = self;
        if let Some(s) = num("XDPLB_BENCH_SERVICES")? {
            o.services = Vec::leak(s);
        }
        if let Some(f) = num("XDPLB_BENCH_FLOWS")? {
            o.flows = f[0];
        }
        if let Some(c) = num("XDPLB_BENCH_CONNTRACK")? {
            o.conntrack = c[0];
        }
        if let Ok(v) = std::env::var("XDPLB_BENCH_MIXES") {
            let pick = |name: &str| MIXES.iter().copied().find(|m| m.suffix.trim_start_matches('_') == name || (name == "udp" && m.suffix.is_empty()));
            let mixes = v.split(',').map(|n| pick(n.trim()).with_context(|| format!("XDPLB_BENCH_MIXES: no mix {n:?} (udp, new_flows, tcp_ack, tcp_syn_ack)"))).collect::<Result<Vec<Mix>>>()?;
            o.mixes = Vec::leak(mixes);
        }
        Ok(o)
    }
}

/// What the senders' frames look like.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// Appended to figure names (`live/xdplb_1000_services<suffix>`).
    pub suffix: &'static str,
    pub proto: u8,
    /// 0: established flows only; N: every Nth frame opens a new flow.
    pub new_every: u32,
    pub what: &'static str,
}

pub const UDP: Mix = Mix { suffix: "", proto: IPPROTO_UDP, new_every: 0, what: "UDP, established flows (warmed up)" };
pub const UDP_NEW_FLOWS: Mix = Mix { suffix: "_new_flows", proto: IPPROTO_UDP, new_every: 1, what: "UDP, a new flow every packet" };
pub const TCP_ACK: Mix = Mix { suffix: "_tcp_ack", proto: IPPROTO_TCP, new_every: 0, what: "TCP ACKs of established flows (warmed up)" };
pub const TCP_SYN_ACK: Mix = Mix {
    suffix: "_tcp_syn_ack",
    proto: IPPROTO_TCP,
    new_every: 4,
    what: "TCP, every 4th packet a SYN opening a new connection, the rest ACKs of established flows",
};
/// Every mix, in the order they run.
pub const MIXES: &[Mix] = &[UDP, UDP_NEW_FLOWS, TCP_ACK, TCP_SYN_ACK];

fn attach(progs: &mut BenchProgs, ns: &Netns, prog: &'static str, iface: &str) -> Result<()> {
    in_ns(ns, || progs.attach(prog, iface)).with_context(|| format!("attaching {prog} to {iface}"))
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The conditions every live/skb figure states.
fn conditions(sender: Sender, opts: &Opts, m: &Measured, i: usize, extra: Value) -> Value {
    let mut c = json!({"threads": opts.threads[i], "frames_per_thread": m.repeat, "frame_bytes": 64, "sender": sender.describe(),
        "delivered_ratio": (m.delivered[i] * 1000.0).round() / 1000.0, "rounds": opts.rounds, "max_over_min": (m.spread[i] * 100.0).round() / 100.0});
    if let (Some(c), Value::Object(e)) = (c.as_object_mut(), extra) {
        c.extend(e);
    }
    c
}

/// CPU-ns per packet at thread count index `i`.
fn ns_per_packet(opts: &Opts, m: &Measured, i: usize) -> f64 {
    opts.threads[i] as f64 * 1e9 / m.pps[i]
}

/// Whether this kernel lets this process send live frames
/// (`BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`): one frame of
/// `bench_drop` into a fresh topology's generator interface. `Err` says why
/// not (seen here: EPERM from a sandbox that withholds a capability), so the
/// section is skipped with that reason instead of failing the whole run.
pub fn frames_allowed(progs: &BenchProgs) -> std::result::Result<(), String> {
    use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
    let t = Topo::new();
    let ifindex = t.gen_ifindex;
    let file = std::fs::File::open(format!("/run/netns/{}", t.gen.name())).map_err(|e| e.to_string())?;
    let p = progs.xdp("bench_drop");
    std::thread::scope(|s| {
        s.spawn(|| {
            xdplb_tests::netns::enter(&file);
            let ctx = super::sender::xdp_md(ifindex, 0);
            let frame = [0u8; super::progs::FRAME_LEN];
            let opts = TestRunOptions { data_in: Some(&frame), ctx_in: Some(&ctx), repeat: 1, attrs: TestRunAttrs::new().xdp_live_frames(1), ..Default::default() };
            p.test_run(opts).map(|_| ()).map_err(|e| {
                let e: anyhow::Error = e.into();
                format!("the kernel refuses live frames (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: {:#})", e)
            })
        })
        .join()
        .unwrap_or_else(|_| Err("the live-frames probe panicked".into()))
    })
}

pub fn run(progs: &mut BenchProgs, opts: &Opts, sender: Sender, report: &mut Report) -> Result<()> {
    let section = sender.section();
    let how = |fixed_repeat: Option<u32>, warm_up: bool| How {
        sender,
        threads: opts.threads,
        rounds: opts.rounds,
        target_s: opts.target_s,
        max_repeat: opts.repeat_fwd,
        fixed_repeat,
        warm_up,
    };

    // Floors: (label, program on up0, program on gen eth0 for XDP_TX back).
    let floors: &[(&str, &str, Option<&str>)] = match sender {
        Sender::LiveFrames => &[("drop_baseline", "bench_drop", None), ("xdp_tx_floor", "bench_tx", Some("bench_drop")), ("xdp_redirect_floor", "bench_redirect", None)],
        // The redirect floor bounds what any XDP forwarder can reach with
        // this sender: the ratio to iptables it would have if its own work
        // were free (`bound/...` below).
        Sender::Skb => &[("drop_baseline", "bench_drop", None), ("xdp_redirect_floor", "bench_redirect", None)],
    };
    let (mut drop_ns, mut redirect_floor_ns) = (Vec::new(), Vec::new());
    let mut floor_own_ns = None;
    for &(label, up_prog, gen_prog) in floors {
        let t = Topo::new();
        attach(progs, &t.node, up_prog, "up0")?;
        match gen_prog {
            Some(g) => attach(progs, &t.gen, g, "eth0")?,
            None => attach(progs, &t.sink, "bench_drop", "eth0")?,
        }
        progs.set_redirect(t.bk0_ifindex)?;
        let traffic = t.traffic(IPPROTO_UDP, backend(1), opts.flows, 1, 0);
        let fixed = if sender == Sender::LiveFrames { Some(opts.repeat_floor) } else { None };
        let m = measure(progs, &[Side::plain(&t, traffic)], &how(fixed, false))?;
        if label == "xdp_redirect_floor" {
            let own = in_program(progs, sender, &Side::plain(&t, traffic), m[0].repeat, label, |p| inprog::read(p.xdp(up_prog)))?;
            if let Some((ns, runs)) = own {
                floor_own_ns = Some(ns);
                report.add(section, &format!("{section}/{label}_in_program"), round1(ns), None, "ns/packet",
                    json!({"program": up_prog, "threads": 1, "runs": runs, "proto": "udp", "what": IN_PROGRAM}));
            }
        }
        progs.detach_all();
        for i in 0..opts.threads.len() {
            let ns = ns_per_packet(opts, &m[0], i);
            match label {
                "drop_baseline" => drop_ns.push(ns),
                "xdp_redirect_floor" => redirect_floor_ns.push(ns),
                _ => {}
            }
            report.add(section, &format!("{section}/{label}"), m[0].pps[i] / 1e6, None, "Mpps", conditions(sender, opts, &m[0], i, json!({"proto": "udp", "ns_per_packet_per_cpu": round1(ns)})));
        }
    }

    // The kernel forwarding frames addressed to backends: no NAT at all.
    let mut forward_ns = Vec::new();
    {
        let t = Topo::new();
        attach(progs, &t.node, "bench_pass", "up0")?;
        attach(progs, &t.sink, "bench_drop", "eth0")?;
        let traffic = t.traffic(IPPROTO_UDP, backend(1), opts.flows, 1000, 0);
        let m = measure(progs, &[Side::plain(&t, traffic)], &how(None, true))?;
        progs.detach_all();
        for (i, drop) in drop_ns.iter().enumerate() {
            let ns = ns_per_packet(opts, &m[0], i);
            forward_ns.push(ns);
            report.add(section, &format!("{section}/stack_forward_no_nat"), m[0].pps[i] / 1e6, None, "Mpps",
                conditions(sender, opts, &m[0], i, json!({"proto": "udp", "destinations": 1000, "ns_per_packet_per_cpu": round1(ns), "ns_over_drop": round1(ns - drop)})));
        }
    }

    let per = opts.backends_per_service;
    for &n in opts.services {
        for proto in [IPPROTO_UDP, IPPROTO_TCP] {
            let mixes: Vec<Mix> = opts.mixes.iter().copied().filter(|m| m.proto == proto).collect();
            if mixes.is_empty() {
                continue;
            }
            let nodes = Nodes::new(progs, n, per, proto, sender, opts.conntrack)?;
            for mix in &mixes {
                let flows = opts.flows.max(n);
                let sides = nodes.sides(mix, flows, n);
                let m = measure(progs, &sides, &how(None, mix.new_every != 1));
                let m = m?;
                // xdplb's own time per packet on the redirect node, and how
                // much of its time over the floor that is.
                let label = format!("xdplb_redirect_{n}_services{}", mix.suffix);
                let lb = &nodes.redirect.1;
                if let Some((ns, runs)) = in_program(progs, sender, &sides[1], m[1].repeat, &label, |_| inprog::read(lb.xdp()))? {
                    let mut c = json!({"services": n, "traffic": mix.what, "flows_per_thread": flows, "threads": 1, "runs": runs, "what": IN_PROGRAM});
                    if let Some(floor_own) = floor_own_ns {
                        c["floor_in_program_ns"] = json!(round1(floor_own));
                    }
                    // Only where the timed rounds put xdplb above the floor
                    // (a loaded machine can invert them: the floor is
                    // measured once, before the nodes).
                    if let (Some(floor_own), Some(&floor)) = (floor_own_ns, redirect_floor_ns.first()) {
                        let over = ns_per_packet(opts, &m[1], 0) - floor;
                        c["over_floor_ns"] = json!(round1(over));
                        if over > 0.0 {
                            c["in_program_share_of_over_floor_pct"] = json!(round1(100.0 * (ns - floor_own) / over));
                        }
                    }
                    report.add(section, &format!("{section}/{label}_in_program"), round1(ns), None, "ns/packet", c);
                }
                drop(sides);
                for i in 0..opts.threads.len() {
                    let base = json!({"services": n, "backends_per_service": per, "proto": if proto == IPPROTO_TCP { "tcp" } else { "udp" },
                        "traffic": mix.what, "new_every": mix.new_every, "flows_per_thread": flows, "conntrack_entries": opts.conntrack});
                    for (k, (name, path)) in nodes.names().iter().enumerate() {
                        let ns = ns_per_packet(opts, &m[k], i);
                        let mut c = base.clone();
                        c["path"] = json!(path);
                        c["ns_per_packet_per_cpu"] = json!(round1(ns));
                        c["ns_over_drop"] = json!(round1(ns - drop_ns[i]));
                        c["ns_over_stack_forward"] = json!(round1(ns - forward_ns[i]));
                        if *name == "iptables" {
                            c["rules_load_s"] = json!(round1(nodes.rules_load_s));
                            c["tool"] = json!(nodes.restore);
                        }
                        report.add(section, &format!("{section}/{name}_{n}_services{}", mix.suffix), m[k].pps[i] / 1e6, None, "Mpps", conditions(sender, opts, &m[k], i, c));
                    }
                    let Some(ipt) = m.get(2) else { continue };
                    for (k, name, path) in [(0, "xdplb", "kernel forwarding after the NAT on both"), (1, "xdplb_redirect", "xdplb forwarding with XDP redirect")] {
                        let (median, min, rounds) = m[k].ratio(ipt, i);
                        report.add(section, &format!("ratio/{name}_over_iptables_{n}_services{}", mix.suffix), median, Some(min), "x",
                            json!({"services": n, "threads": opts.threads[i], "traffic": mix.what, "rounds": rounds, "sender": sender.describe(),
                                "what": format!("forwarded pps, {name} / kube-proxy iptables, both fed skbs by the same sender, {path}, same traffic, measured in alternation; median (min) of per-round ratios")}));
                    }
                    if let Some(&floor) = redirect_floor_ns.get(i) {
                        bound(report, section, &format!("{n}_services{}", mix.suffix), floor, ns_per_packet(opts, &m[1], i), ns_per_packet(opts, ipt, i), opts.threads[i]);
                    }
                }
            }
            progs.detach_all();
        }
    }
    Ok(())
}

const IN_PROGRAM: &str = "the XDP program's own run time per packet (kernel run-time stats, BPF_ENABLE_STATS) over one extra untimed blast at 1 thread; includes the stats' two clock reads per run";

/// One untimed blast of `side` at 1 thread with run-time stats on (and
/// `XDPLB_BENCH_PERF`'s profile, as `label`): the program's ns per run and
/// the runs, from `read` before and after (`None`: it did not run).
fn in_program(progs: &mut BenchProgs, sender: Sender, side: &Side, repeat: u32, label: &str, read: impl Fn(&BenchProgs) -> Result<(u64, u64)>) -> Result<Option<(f64, u64)>> {
    let on = inprog::Instrumented::start(label)?;
    let repeat = if on.profiling() { repeat.saturating_mul(5) } else { repeat };
    let before = read(progs)?;
    blast(sender, progs, side.t, &side.traffic, 1, repeat)?;
    Ok(inprog::per_run(before, read(progs)?))
}

/// Where the ratio to iptables is bounded, per CPU-ns per packet:
/// `bound/..._over_redirect_floor`: iptables over the bare redirect floor
/// (the best ratio an XDP forwarder fed by this sender could reach if its
/// own work were free); `ratio/xdplb_redirect_over_redirect_floor_...`:
/// xdplb's forwarding rate as a share of the bare redirect's with this
/// sender (#17's goal: >= 0.9; the live-frames section measures the same
/// where the kernel allows live frames), with the part of xdplb's
/// per-packet time that is its own (over the floor: the rest is the
/// sender, the veth receive and the redirect every forwarder pays).
fn bound(report: &mut Report, section: &str, what: &str, floor: f64, redirect: f64, iptables: f64, threads: usize) {
    let own_pct = round1(100.0 * (redirect - floor).max(0.0) / redirect);
    let c = json!({"threads": threads, "floor_ns": round1(floor), "xdplb_redirect_ns": round1(redirect), "iptables_ns": round1(iptables), "xdplb_own_pct": own_pct,
        "what": "CPU-ns per packet of the same sender's frames: bare XDP redirect floor, xdplb with redirect, kube-proxy iptables"});
    report.add(section, &format!("bound/iptables_over_redirect_floor_{what}"), iptables / floor, None, "x", c.clone());
    let mut c = c;
    c["goal"] = json!(0.9);
    report.add(section, &format!("ratio/xdplb_redirect_over_redirect_floor_{what}"), floor / redirect, None, "x", c);
}

/// The nodes under comparison at one service count and protocol: xdplb
/// passing rewritten frames to the kernel's forwarding, xdplb redirecting
/// them itself, and (`skb` section) kube-proxy's iptables rules. The nodes
/// exist at once and are measured round by round in turn.
struct Nodes {
    xdplb: (Topo, BenchLb),
    redirect: (Topo, BenchLb),
    iptables: Option<Topo>,
    rules_load_s: f64,
    restore: &'static str,
}

impl Nodes {
    fn new(progs: &mut BenchProgs, n: u32, per: u32, proto: u8, sender: Sender, conntrack: u32) -> Result<Self> {
        let xdplb = xdplb_node(progs, n, per, proto, conntrack)?;
        // FIB lookup + redirect to bk0 (whose peer runs XDP) instead of the
        // kernel's IP forwarding.
        let (t, mut lb) = xdplb_node(progs, n, per, proto, conntrack)?;
        in_ns(&t.node, || lb.enable_redirect(t.bk0_ifindex)).context("enabling XDP redirect")?;
        let redirect = (t, lb);
        let restore = if which("iptables-legacy-restore") { "iptables-legacy-restore" } else { "iptables-restore" };
        let (mut iptables, mut rules_load_s) = (None, 0.0);
        if sender == Sender::Skb {
            // Only DNATed frames are routed to the sink (VIPs have no route).
            let t = Topo::new();
            rules_load_s = iptables::load(&t.node, restore, &iptables::rules(n, per, proto))?;
            // The same veth receive path as xdplb's node: XDP runs, passes.
            attach(progs, &t.node, "bench_pass", "up0")?;
            attach(progs, &t.sink, "bench_drop", "eth0")?;
            iptables = Some(t);
        }
        Ok(Self { xdplb, redirect, iptables, rules_load_s, restore })
    }

    /// Figure names and paths, in the order of [`Nodes::sides`].
    fn names(&self) -> Vec<(&'static str, &'static str)> {
        let mut v = vec![("xdplb", "xdp_lb DNAT + XDP_PASS, kernel forwarding"), ("xdplb_redirect", "xdp_lb DNAT + FIB lookup + XDP redirect (--redirect-iface)")];
        if self.iptables.is_some() {
            v.push(("iptables", "XDP_PASS, kube-proxy nat rules (conntrack), kernel forwarding"));
        }
        v
    }

    fn sides(&self, mix: &Mix, flows: u32, services: u32) -> Vec<Side<'_>> {
        let traffic = |t: &Topo| t.traffic(mix.proto, vip(1), flows, services, mix.new_every);
        let (xt, xlb) = (&self.xdplb.0, &self.xdplb.1);
        let (rt, rlb) = (&self.redirect.0, &self.redirect.1);
        let mut sides = vec![
            Side { t: xt, traffic: traffic(xt), check: Box::new(move |delivered| forwarded_at_least(xlb, counter::NAT_FORWARD, delivered, "forwarded")) },
            Side { t: rt, traffic: traffic(rt), check: Box::new(move |delivered| forwarded_at_least(rlb, counter::XDP_REDIRECTED, delivered, "redirected")) },
        ];
        if let Some(kt) = &self.iptables {
            sides.push(Side::plain(kt, traffic(kt)));
        }
        sides
    }
}

/// A node with xdplb (`n` services of `per` backends) on its uplink and the
/// sink counting.
fn xdplb_node(progs: &mut BenchProgs, n: u32, per: u32, proto: u8, conntrack: u32) -> Result<(Topo, BenchLb)> {
    let t = Topo::new();
    let mut lb = BenchLb::new(n, per, proto, conntrack)?;
    let x = lb.xdp_mut();
    in_ns(&t.node, || x.attach("up0", XdpMode::Driver)).context("attaching xdp_lb to up0")?;
    attach(progs, &t.sink, "bench_drop", "eth0")?;
    Ok((t, lb))
}

/// A frame counted at the sink that xdplb's counter did not see took
/// another path: the figure would not be xdplb's.
fn forwarded_at_least(lb: &BenchLb, which: u32, delivered: u64, verb: &str) -> Result<()> {
    let n = lb.counters()?[which as usize];
    ensure!(n >= delivered, "xdp_lb {verb} {n} frames but the sink saw {delivered}: frames took another path");
    Ok(())
}

fn which(tool: &str) -> bool {
    std::process::Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}
