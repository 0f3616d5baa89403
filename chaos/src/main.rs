//! `skein-chaos`: the chaos suite of issue 14 (see chaos/README.md). Starts its own
//! cluster of real `skein` processes, breaks it for `--rounds` rounds under QoS 1 traffic
//! to persistent sessions, checks the invariants, prints one line per invariant and a
//! JSON line last. Exit 0 only when every invariant holds; 1 when one does not; 2 when
//! the run itself could not be made (the cluster did not start, bad options); 3 when
//! partition mode can run neither on Docker nor in network namespaces (a `SKIP` line).
//!
//! The crate's modules in layer order. Direction: each module imports only modules listed
//! below it.
//!
//! - `run`: a whole run: cluster, watchers, subscribers, publishers, fault rounds, drain,
//!   checks, verdict.
//! - `report`: the verdict, one line per invariant and the JSON line last.
//! - `events`: the takeover events among the disconnect events the watchers saw.
//! - `node_ip`: the addresses events and registries name the nodes by.
//! - `faults`: one fault round (SIGKILL, SIGSTOP or a cut) and the clients moved meanwhile.
//! - `publisher`: a QoS 1 publisher, one message in flight.
//! - `subscriber`: a persistent subscriber moved between nodes by the fault loop.
//! - `watcher`: one watcher of the disconnect events per node.
//! - `shared`: what the clients, the watchers and the fault loop share.
//! - `conns`: every connection of the persistent subscribers, as the client side saw it.
//! - `admin`: the cluster as each node's admin API shows it.
//! - `cluster`: the nodes under test (processes or containers), their faults and restarts.
//! - `http`: a minimal HTTP/1.1 GET for the admin API.
//! - `docker`: partition mode on Docker: the image, the run's networks, the containers.
//! - `netns`: partition mode's network namespaces and nftables cuts (without Docker).
//! - `findings`: what the run found along the way, and its log.
//! - `ledger`: what was acknowledged and what was received: loss and duplicates.
//! - `mqtt`: one rumqttc v5 connection opened by hand.
//! - `rng`: the run's seeded random numbers.
//! - `options`: the command line.

mod admin;
mod cluster;
mod conns;
mod docker;
mod events;
mod faults;
mod findings;
mod http;
mod ledger;
mod mqtt;
mod netns;
mod node_ip;
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

use options::{Options, PartitionNet};

fn main() -> ExitCode {
    let opts = Options::parse();
    let kinds = match opts.fault_kinds() {
        Ok(k) => k,
        Err(e) => {
            eprintln!("skein-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    let partition = if opts.partition {
        match partition_net(opts.partition_net) {
            Ok(net) => Some(net),
            Err(why) => {
                println!("SKIP partition: {why}; nothing was run");
                return ExitCode::from(3);
            }
        }
    } else {
        None
    };
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
    match runtime.block_on(interruptible(run::run(&opts, binary, partition, &kinds))) {
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

/// Where partition mode runs: Docker first when an engine answers (`auto`), else network
/// namespaces; Err(why neither can) for the SKIP line.
fn partition_net(asked: PartitionNet) -> Result<PartitionNet, String> {
    let docker = || docker::unavailable().map(|why| format!("Docker: {why}"));
    let netns = || netns::unavailable().map(|why| format!("network namespaces: {why}"));
    match asked {
        PartitionNet::Docker => docker().map_or(Ok(PartitionNet::Docker), Err),
        PartitionNet::Netns => netns().map_or(Ok(PartitionNet::Netns), Err),
        PartitionNet::Auto => match docker() {
            None => Ok(PartitionNet::Docker),
            Some(no_docker) => match netns() {
                None => {
                    eprintln!("skein-chaos: {no_docker}; partition mode runs in network namespaces instead");
                    Ok(PartitionNet::Netns)
                }
                Some(no_netns) => Err(format!("{no_docker}; {no_netns}")),
            },
        },
    }
}

/// Runs `run` unless SIGINT or SIGTERM comes first: then the run is dropped, which stops
/// its nodes and removes its containers, networks, volumes, image tag and network
/// namespaces (a default signal death would leave them). Both handlers are installed
/// before the run starts, so a signal during a blocking step is not a default death.
async fn interruptible(
    run: impl std::future::Future<Output = anyhow::Result<run::Outcome>>,
) -> anyhow::Result<run::Outcome> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        outcome = run => outcome,
        _ = int.recv() => Err(anyhow::anyhow!("interrupted (SIGINT)")),
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
