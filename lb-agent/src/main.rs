//! The `lb-agent` binary: parses the command line, sets up logging and
//! dispatches; each command lives in its own module.
mod agent;
mod cli;
mod config;
mod explain_cli;
mod install;
mod ops_cli;
mod print;
mod top;

use std::io::IsTerminal as _;

use anyhow::{Context as _, Result};
use clap::Parser as _;
use lb_agent::control::{
    ids::Ids,
    model::Model,
    plan::plan,
    source::{kube, SourceSpec},
};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, LogFormat, PlanArgs};

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse_from(config::expand(std::env::args_os().collect())?);
    init_logging(cli.log_format);
    match cli.command {
        Command::Plan(args) => plan_command(args).await,
        Command::Run(args) => Ok(agent::run(*args).await?),
        Command::Services(a) => ops_cli::services(a),
        Command::Backends(a) => ops_cli::backends(a),
        Command::Conntrack(a) => ops_cli::conntrack(a),
        Command::Stats(a) => ops_cli::stats(a),
        Command::Top(a) => top::run(a),
        Command::Doctor(a) => ops_cli::doctor(a),
        Command::LbAddresses(a) => lb_addresses(a),
        Command::Explain(a) => explain_cli::run(a),
        Command::Install(a) => install::install(a),
        Command::Uninstall(a) => install::uninstall(a),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only on a terminal: logs in files and collectors stay plain.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn plan_command(args: PlanArgs) -> Result<()> {
    let model = match &args.inputs.source {
        SourceSpec::File(path) => Model::load(path)
            .with_context(|| format!("reading --source file:{}", path.display()))?,
        // One complete list of the cluster; the watchers end with the process.
        SourceSpec::Kube => {
            let health = std::sync::Arc::new(kube::SourceHealth::default());
            let models = kube::start(
                args.inputs.kubeconfig.as_deref(),
                &args.inputs.node_name,
                health,
            )
            .await?;
            let model = Model::clone(&models.borrow());
            model
        }
    };
    // A fresh allocator: ids here are what an agent starting on empty maps
    // would use; a running agent's may differ.
    let sizes = lb_agent::pins::MapSizes::default();
    // Backend ids index backends_v4, so they stay within its size.
    let mut ids = Ids::new(sizes.services, sizes.backends);
    let p = plan(&model, &agent::plan_config(&args.inputs), &mut ids);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&p)?);
    } else {
        print!("{}", print::table(&p));
    }
    Ok(())
}

/// `lb-agent lb-addresses`: the status file of the agent with these maps.
fn lb_addresses(a: cli::MapsArgs) -> Result<()> {
    let path = lb_agent::lbip::status_path(&a.pin_path);
    let view = lb_agent::lbip::read_status(&a.pin_path)
        .with_context(|| format!("reading {} (is `lb-agent run` running with --lb-addresses or --lb-pool, and --pin-path as given to it?)", path.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&view)?);
    } else {
        print!("{}", lb_agent::lbip::print::table(&view));
    }
    Ok(())
}
