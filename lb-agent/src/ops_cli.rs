//! `lb-agent services | backends | conntrack | stats | doctor`: the
//! operator's commands. The first four read the pinned maps directly (an
//! agent may be running or not); `doctor` runs the start-up checks.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::Args;
use lb_agent::{
    dataplane::Dataplane,
    ops::{checks, inspect, names},
};
use serde::Serialize;

/// Where the maps are, and how to print them.
#[derive(Debug, Args)]
pub struct MapsArgs {
    /// Directory of the pinned maps (as given to `lb-agent run`).
    #[arg(long, default_value = lb_agent::loader::DEFAULT_PIN_DIR)]
    pub pin_path: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConntrackArgs {
    #[command(flatten)]
    pub maps: MapsArgs,
    /// Only flows of this service id (see `lb-agent services`).
    #[arg(long, value_name = "ID")]
    pub service: Option<u32>,
    /// Only flows of this client address (both directions).
    #[arg(long, value_name = "IP")]
    pub client: Option<Ipv4Addr>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Directory the maps are (to be) pinned in.
    #[arg(long, default_value = lb_agent::loader::DEFAULT_PIN_DIR)]
    pub pin_path: PathBuf,
    /// Uplink interface to check (repeat for several).
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// The XDP mode `run` will use: with generic, native XDP is not probed.
    #[arg(long, value_enum, default_value_t = crate::cli::XdpModeArg::Native)]
    pub xdp_mode: crate::cli::XdpModeArg,
    /// Print JSON instead of ✓/✗ lines.
    #[arg(long)]
    pub json: bool,
    /// The map sizes `run` will be given (pinned maps of other sizes are
    /// resized, which the report says).
    #[command(flatten)]
    pub sizes: crate::cli::SizeArgs,
}

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
        native_xdp: a.xdp_mode == crate::cli::XdpModeArg::Native,
        sizes: lb_agent::loader::MapSizes::from(&a.sizes),
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
