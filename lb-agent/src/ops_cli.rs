//! `lb-agent services | backends | conntrack | stats | doctor`: the
//! operator's commands. The first four read the pinned maps directly (an
//! agent may be running or not); `doctor` runs the start-up checks.

use anyhow::{Context as _, Result};
use lb_agent::{
    dataplane::Dataplane,
    ops::{checks, inspect, names},
};
use serde::Serialize;

use crate::cli::{ConntrackArgs, DoctorArgs, MapsArgs, XdpModeArg};

fn open(a: &MapsArgs) -> Result<Dataplane> {
    Dataplane::open(&a.pin_path).with_context(|| {
        format!(
            "no xdplb maps pinned under {} (pass --pin-path as given to `lb-agent run`)",
            a.pin_path.display()
        )
    })
}

fn print<T: Serialize + ?Sized>(
    json: bool,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<()> {
    let text = if json {
        serde_json::to_string_pretty(value)? + "\n"
    } else {
        table(value)
    };
    // `lb-agent conntrack | head` closes the pipe early: not an error.
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub fn services(a: MapsArgs) -> Result<()> {
    let rows = inspect::services(&open(&a)?, &names::read(&a.pin_path))?;
    print(a.json, &rows[..], inspect::services_table)
}

pub fn backends(a: MapsArgs) -> Result<()> {
    let rows = inspect::backends(&open(&a)?)?;
    print(a.json, &rows[..], inspect::backends_table)
}

pub fn conntrack(a: ConntrackArgs) -> Result<()> {
    let filter = inspect::FlowFilter {
        service: a.service,
        client: a.client,
    };
    let rows = inspect::conntrack(&open(&a.maps)?, &filter)?;
    print(a.maps.json, &rows[..], inspect::conntrack_table)
}

pub fn stats(a: MapsArgs) -> Result<()> {
    let st = inspect::stats(&open(&a)?, &names::read(&a.pin_path))?;
    print(a.json, &st, inspect::stats_table)
}

/// Exits non-zero when a check fails.
pub fn doctor(a: DoctorArgs) -> Result<()> {
    let inputs = checks::Inputs {
        pin_dir: &a.pin_path,
        ifaces: &a.ifaces,
        native_xdp: a.xdp_mode == XdpModeArg::Native,
        sizes: lb_agent::pins::MapSizes::from(&a.sizes),
        tc_forced: a.tc_attach.forced(),
        socket_lb: &a.socket_lb,
    };
    let mut results = checks::all(&inputs);
    // Only with the privileges to load programs (else that line says why).
    if results.iter().any(|c| c.name == "privileges" && c.ok) {
        results.push(checks::programs());
    }
    print(a.json, &results[..], checks::report)?;
    if results.iter().any(|c| !c.ok) {
        std::process::exit(1);
    }
    Ok(())
}
