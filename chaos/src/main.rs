//! `skein-chaos`: the chaos suite of issue 14 (see chaos/README.md). Starts its own
//! cluster of real `skein` processes, breaks it for `--rounds` rounds under QoS 1 traffic
//! to persistent sessions, checks the invariants, prints one line per invariant and a
//! JSON line last. Exit 0 only when every invariant holds; 1 when one does not; 2 when
//! the run itself could not be made (the cluster did not start, bad options).

mod admin;
mod cluster;
mod conns;
mod events;
mod faults;
mod findings;
mod http;
mod ledger;
mod mqtt;
mod netns;
mod options;
mod publisher;
mod report;
mod rng;
mod run;
mod shared;
mod subscriber;
mod watcher;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

use options::Options;

fn main() -> ExitCode {
    let opts = Options::parse();
    if opts.partition {
        if let Some(why) = netns::unavailable() {
            println!("SKIP partition: {why}; nothing was run");
            return ExitCode::from(3);
        }
    }
    let binary = match binary(&opts) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("skein-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("skein-chaos: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(interruptible(run::run(&opts, binary))) {
        Ok(outcome) => {
            for line in &outcome.verdict.lines {
                println!("{line}");
            }
            if let Some(dir) = &outcome.kept {
                eprintln!(
                    "run directory kept (node logs, report.txt): {}",
                    dir.display()
                );
            }
            println!("{}", outcome.verdict.json);
            if outcome.verdict.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("skein-chaos: the run failed: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs `run` unless SIGINT or SIGTERM comes first: then the run is dropped, which stops
/// its nodes and removes its network namespaces (a default signal death would leave them).
async fn interruptible(
    run: impl std::future::Future<Output = anyhow::Result<run::Outcome>>,
) -> anyhow::Result<run::Outcome> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        outcome = run => outcome,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted (SIGINT)")),
        _ = term.recv() => Err(anyhow::anyhow!("interrupted (SIGTERM)")),
    }
}

/// `--binary`, else `$SKEIN_BIN`, else `skein` beside this executable (cargo puts both in
/// the same `target/<profile>/`).
fn binary(opts: &Options) -> Result<PathBuf, String> {
    let path = match (&opts.binary, std::env::var_os("SKEIN_BIN")) {
        (Some(p), _) => p.clone(),
        (None, Some(p)) => PathBuf::from(p),
        (None, None) => {
            let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
            exe.with_file_name(format!("skein{}", std::env::consts::EXE_SUFFIX))
        }
    };
    if !path.is_file() {
        return Err(format!(
            "no skein binary at {} (build it: cargo build --release -p skein-broker --bin skein; or pass --binary PATH)",
            path.display()
        ));
    }
    Ok(path)
}
