//! The sections added after the dataplane ones: the real agent at scale,
//! Maglev and the dataplane's balancing spread, and TCP connections through
//! a ClusterIP against direct. Sizes per mode (`Smoke`, `Quick`, `Full`).
use anyhow::Result;

use super::{agent, conn, maglev, report::Report, Sections};

pub fn run(mode: &str, sections: &Sections, report: &mut Report) -> Result<()> {
    let (aopts, mopts, copts) = match mode {
        "Smoke" => (
            agent::Opts {
                services: 100,
                per_service: 10,
                changes: 3,
            },
            maglev::Opts {
                builds: &[(100, 16381)],
                build_runs: 3,
                flows: 1000,
                backends: 10,
            },
            conn::Opts {
                seconds: 0.3,
                rounds: 1,
                threads: 2,
                backends: 3,
            },
        ),
        "Quick" => (
            agent::Opts {
                services: 1000,
                per_service: 10,
                changes: 10,
            },
            maglev::Opts {
                builds: &[(100, 16381), (1000, 16381), (100, 65537), (1000, 65537)],
                build_runs: 5,
                flows: 10_000,
                backends: 10,
            },
            conn::Opts {
                seconds: 1.0,
                rounds: 2,
                threads: 2,
                backends: 3,
            },
        ),
        _ => (
            agent::Opts {
                services: 10_000,
                per_service: 10,
                changes: 60,
            },
            maglev::Opts {
                builds: &[(100, 16381), (1000, 16381), (100, 65537), (1000, 65537)],
                build_runs: 9,
                flows: 10_000,
                backends: 10,
            },
            conn::Opts {
                seconds: 3.0,
                rounds: 3,
                threads: 2,
                backends: 3,
            },
        ),
    };
    let timed = |name: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let t = std::time::Instant::now();
        f()?;
        println!("({name} section: {:.0} s)", t.elapsed().as_secs_f64());
        Ok(())
    };
    if sections.wants("maglev") {
        println!("\n== Maglev tables and the dataplane's spread of new flows");
        timed("maglev", &mut || maglev::run(&mopts, report))?;
    }
    if sections.wants("conn") {
        println!("\n== TCP connections: ClusterIP vs direct (Rust client, fresh connection per request)");
        timed("conn", &mut || conn::run(&copts, report))?;
    }
    if sections.wants("agent") {
        println!("\n== the real lb-agent ({} services x {} endpoints, file source)", aopts.services, aopts.per_service);
        timed("agent", &mut || agent::run(&aopts, report))?;
        println!("\n== the real lb-agent ({} services x {} endpoints, kube source: the API server double)", aopts.services, aopts.per_service);
        timed("agent_kube", &mut || agent::run_kube(&aopts, report))?;
    }
    Ok(())
}
