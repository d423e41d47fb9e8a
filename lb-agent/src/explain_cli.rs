//! `lb-agent explain`: the command line over `lb_agent::explain`.
use anyhow::{Context as _, Result};
use lb_agent::{
    dataplane::Dataplane,
    explain::{explain_pinned, Origin, Query},
    ops::names,
};

use crate::cli::{ExplainArgs, OriginArg};

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
    let e = explain_pinned(&dp, &q, &names::read(&a.pin_path))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&e)?);
    } else {
        print!("{e}");
    }
    Ok(())
}
