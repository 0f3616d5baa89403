//! skein-bench: Skein's MQTT load generator. See the README's "Load generator" section.
//!
//! The crate's modules in layer order. Direction: each module imports only modules listed
//! below it (scenarios on top, the MQTT codec at the bottom).
//!
//! - `scenarios`: fanin, fanout and pairs (one engine) and connect.
//! - `cli`: the command line: one scenario and the options that shape it.
//! - `report`: results: a human summary and exactly one JSON line.
//! - `stats`: payload headers, loss and duplicate accounting, latency histograms.
//! - `conn`: one MQTT connection (TCP, or TLS with `--tls-ca`) with reusable read and write
//!   buffers.
//! - `mqtt`: a minimal MQTT 3.1.1 codec, just the packets the load generator uses.

mod cli;
mod conn;
mod mqtt;
mod report;
mod scenarios;
mod stats;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Scenario, Settings};

/// Exit code of a run that was cut short or lost messages; errors before any measurement
/// exit with 2.
const INCOMPLETE: u8 = 1;
const FAILED: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli.settings() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("skein-bench: {e:#}");
            return ExitCode::from(FAILED);
        }
    };
    if let Some(ca) = &cli.tls_ca {
        if let Err(e) = conn::use_tls(ca) {
            eprintln!("skein-bench: --tls-ca {}: {e:#}", ca.display());
            return ExitCode::from(FAILED);
        }
    }
    // Fix the timestamp epoch before any connection exists.
    let _ = stats::epoch();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skein-bench: starting the runtime: {e}");
            return ExitCode::from(FAILED);
        }
    };
    let outcome = runtime.block_on(run(&settings));
    // Idle holders and closing connections must not delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok((human, json, complete)) => {
            if !settings.json {
                print!("{human}");
            }
            println!("{json}");
            if complete {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(INCOMPLETE)
            }
        }
        Err(e) => {
            eprintln!("skein-bench: {e:#}");
            ExitCode::from(FAILED)
        }
    }
}

async fn run(s: &Settings) -> anyhow::Result<(String, String, bool)> {
    Ok(match s.scenario {
        Scenario::Connect => {
            let r = scenarios::connect::run(s).await?;
            (r.human(), r.json(), r.complete())
        }
        Scenario::Takeover => {
            let r = scenarios::takeover::run(s).await?;
            (r.human(), r.json(), r.complete())
        }
        Scenario::Fanin | Scenario::Fanout | Scenario::Pairs => {
            let r = scenarios::throughput::run(s).await?;
            (r.human(), r.json(), r.complete())
        }
    })
}
