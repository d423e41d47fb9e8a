//! `cargo xtask bench [--quick|--smoke]`: xdplb against its baselines, in one
//! run, on this machine. Prints a table and writes JSON under `target/bench/`
//! (or `--out DIR`). Needs root.
use std::path::PathBuf;

use anyhow::{bail, Result};
use xdplb_bench::{chart, cost, live, progs::BenchProgs, report::{Figure, Report}, sender::Sender, Sections};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// Structure check for tests: tiny counts, seconds.
    Smoke,
    /// About a minute.
    Quick,
    /// Under ten minutes.
    Full,
}

fn main() -> Result<()> {
    let mut mode = Mode::Full;
    let mut out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let mut pktgen_vm = false;
    let mut sections = Sections::default();
    let mut configs: Option<&'static [(u32, u32)]> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => mode = Mode::Quick,
            "--smoke" => mode = Mode::Smoke,
            // The pktgen-in-a-VM workflow check alone (opt-in; see bench::vm).
            "--pktgen-vm" => pktgen_vm = true,
            "--only" => sections = Sections::parse(&args.next().unwrap_or_default())?,
            // prog_cost at these (services x backends) only, e.g. `--configs 1x10,1000x10`.
            "--configs" => configs = Some(parse_configs(&args.next().unwrap_or_default())?),
            "--out" => out = args.next().map(PathBuf::from).unwrap_or(out),
            // Redraws the chart of an earlier run: `--chart target/bench/bench-<t>.json`.
            "--chart" => return redraw(&PathBuf::from(args.next().unwrap_or_default())),
            // Prints an earlier run as a Markdown table (docs/benchmarks.md).
            "--markdown" => return print_markdown(&PathBuf::from(args.next().unwrap_or_default())),
            other => bail!("unknown argument {other}; usage: xdplb-bench [--quick|--smoke] [--only SECTION,...] [--configs SxB,...] [--out DIR] | --chart RUN.json | --markdown RUN.json"),
        }
    }
    xdplb_tests::require_root();
    let start = std::time::Instant::now();
    let mut report = Report::default();
    if pktgen_vm {
        xdplb_bench::vm::run(&out, 500_000, &mut report)?;
        println!("\n{}", report.table());
        let path = report.write(&out.join("vm"), "pktgen-vm", start.elapsed().as_secs_f64())?;
        println!("wrote {}", path.display());
        return Ok(());
    }
    let mut progs = BenchProgs::load()?;

    let copts = match mode {
        Mode::Smoke => cost::Opts { repeat: 10_000, repeat_new: 5_000, rounds: 3, configs: &[(1, 10), (1000, 10)], conntrack: 1 << 16 },
        Mode::Quick => cost::Opts { repeat: 100_000, repeat_new: 20_000, rounds: 5, configs: &[(1, 10), (1000, 10), (10_000, 10)], conntrack: 1 << 18 },
        Mode::Full => cost::Opts {
            repeat: 200_000,
            repeat_new: 50_000,
            rounds: 7,
            configs: &[(1, 10), (1000, 10), (10_000, 10), (100_000, 10), (1, 1000), (1000, 1000)],
            conntrack: 1 << 20,
        },
    };
    // More rounds, e.g. to profile one case (`XDPLB_BENCH_CASES`, cost.rs).
    let rounds = std::env::var("XDPLB_BENCH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(copts.rounds);
    let copts = cost::Opts { configs: configs.unwrap_or(copts.configs), rounds, ..copts };
    if sections.wants("prog_cost") {
        println!("== per-packet cost (BPF_PROG_TEST_RUN, {:?} mode)", mode);
        // One CPU for the whole section: the wrapper's flow counter is not per-CPU.
        xdplb_bench::pin(Some(0));
        let t = std::time::Instant::now();
        cost::floors(&progs, &copts, &mut report)?;
        for &(services, per) in copts.configs {
            cost::config(&mut progs, services, per, &copts, &mut report)?;
        }
        cost::snat(&mut progs, 10, &copts, &mut report)?;
        xdplb_bench::pin(None);
        println!("(prog_cost section: {:.0} s)", t.elapsed().as_secs_f64());
    }
    if sections.wants("dsr_cost") {
        println!("== per-packet cost of DSR (BPF_PROG_TEST_RUN, {:?} mode)", mode);
        xdplb_bench::pin(Some(0));
        let t = std::time::Instant::now();
        cost::dsr(&mut progs, 10, &copts, &mut report)?;
        xdplb_bench::pin(None);
        println!("(dsr_cost section: {:.0} s)", t.elapsed().as_secs_f64());
    }

    let lopts = match mode {
        Mode::Smoke => live::Opts { repeat_floor: 1 << 16, repeat_fwd: 1 << 15, target_s: 0.03, threads: &[1, 2], services: &[10], backends_per_service: 10, flows: 1024, mixes: live::MIXES, rounds: 1, conntrack: 1 << 20 },
        Mode::Quick => live::Opts { repeat_floor: 1 << 19, repeat_fwd: 1 << 20, target_s: 0.1, threads: &[1, 2], services: &[1000], backends_per_service: 10, flows: 4096, mixes: live::MIXES, rounds: 2, conntrack: 1 << 20 },
        Mode::Full => live::Opts { repeat_floor: 1 << 22, repeat_fwd: 1 << 21, target_s: 0.4, threads: &[1, 2], services: &[1, 1000, 10_000], backends_per_service: 10, flows: 16_384, mixes: live::MIXES, rounds: 3, conntrack: 1 << 20 },
    };
    let lopts = lopts.from_env()?;
    for (sender, what) in [
        (Sender::LiveFrames, "live forwarding: live-frames generator over veth, 64-byte UDP and TCP SYN/ACK mixes, against this machine's XDP floors"),
        (Sender::Skb, "kube-proxy comparison on the skb path: AF_PACKET sender, xdplb vs iptables rules, same mixes"),
    ] {
        if sections.wants(sender.section()) {
            println!("\n== {what}");
            if sender == Sender::LiveFrames {
                if let Err(why) = live::frames_allowed(&progs) {
                    report.skip(sender.section(), &why);
                    continue;
                }
            }
            let t = std::time::Instant::now();
            live::run(&mut progs, &lopts, sender, &mut report)?;
            println!("({} section: {:.0} s)", sender.section(), t.elapsed().as_secs_f64());
        }
    }

    xdplb_bench::extra::run(&format!("{mode:?}"), &sections, &mut report)?;

    let elapsed = start.elapsed().as_secs_f64();
    println!("\n{}", report.table());
    let mode_name = format!("{mode:?}").to_lowercase();
    let path = report.write(&out, &mode_name, elapsed)?;
    println!("wrote {} ({elapsed:.0} s)", path.display());
    Ok(())
}

/// `1x10,1000x10` → [(1, 10), (1000, 10)], kept for the run.
fn parse_configs(s: &str) -> Result<&'static [(u32, u32)]> {
    let parse = |c: &str| -> Option<(u32, u32)> {
        let (a, b) = c.split_once('x')?;
        Some((a.parse().ok().filter(|n| *n > 0)?, b.parse().ok().filter(|n| *n > 0)?))
    };
    let v = s.split(',').map(|c| parse(c).ok_or_else(|| anyhow::anyhow!("--configs: {c:?} is not SERVICESxBACKENDS (e.g. 1x10)"))).collect::<Result<Vec<_>>>()?;
    Ok(Vec::leak(v))
}

fn figures(json: &std::path::Path) -> Result<Vec<Figure>> {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json)?)?;
    Ok(serde_json::from_value(doc["figures"].clone())?)
}

fn print_markdown(json: &std::path::Path) -> Result<()> {
    print!("{}", xdplb_bench::report::markdown(&figures(json)?));
    Ok(())
}

fn redraw(json: &std::path::Path) -> Result<()> {
    let figures = figures(json)?;
    let svg = chart::svg(&figures, 1).ok_or_else(|| anyhow::anyhow!("{} has no skb service figures", json.display()))?;
    let path = json.with_extension("svg");
    std::fs::write(&path, svg)?;
    println!("wrote {}", path.display());
    Ok(())
}
