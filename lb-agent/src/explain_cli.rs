//! `lb-agent explain`: the command line over `lb_agent::explain`.
use std::{net::Ipv4Addr, path::PathBuf};

use anyhow::{Context as _, Result};
use clap::{Args, ValueEnum};
use lb_agent::{
    dataplane::Dataplane,
    explain::{explain, parse_destination, parse_source, Origin, Query, Snapshot},
    ops::names,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OriginArg {
    /// A pod on this node (tc on its interface).
    Pod,
    /// A client outside the node (XDP on the uplink).
    External,
    /// A process of the node (the socket balancer).
    Node,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Where the packet comes from.
    #[arg(long = "from", value_enum)]
    pub origin: OriginArg,
    /// Source: IPv4[:PORT] (the port is needed for conntrack and Maglev).
    #[arg(value_name = "SRC", value_parser = parse_source)]
    pub src: (Ipv4Addr, Option<u16>),
    /// Destination: IPv4:PORT[/tcp|udp] (TCP by default).
    #[arg(value_name = "DST:PORT[/PROTO]", value_parser = parse_destination)]
    pub dst: (Ipv4Addr, u16, u8),
    /// Directory of the pinned maps (as given to `lb-agent run`).
    #[arg(long, default_value = lb_agent::loader::DEFAULT_PIN_DIR)]
    pub pin_path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: ExplainArgs) -> Result<()> {
    let dp = Dataplane::open(&a.pin_path).with_context(|| {
        format!("no xdplb maps pinned under {} (pass --pin-path as given to `lb-agent run`)", a.pin_path.display())
    })?;
    let origin = match a.origin {
        OriginArg::Pod => Origin::Pod,
        OriginArg::External => Origin::External,
        OriginArg::Node => Origin::Node,
    };
    let q = Query { origin, src: a.src.0, sport: a.src.1, dst: a.dst.0, dport: a.dst.1, proto: a.dst.2 };
    let e = explain(&q, &Snapshot::read(&dp, &q)?, &names::read(&a.pin_path));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{e}");
    }
    Ok(())
}
