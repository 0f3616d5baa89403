//! The command line of `chaos/run` (see chaos/README.md).

use std::path::PathBuf;

use clap::{Parser, ValueEnum};

/// What a fault round does to its target node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FaultKind {
    /// SIGKILL (Docker: `docker kill`), then a restart with the same data (`docker start`).
    Kill,
    /// SIGSTOP then SIGCONT (Docker: `docker pause` then `docker unpause`).
    #[value(alias = "pause")]
    Stop,
    /// Partition mode only: the node cut off the other nodes, then healed (Docker: `docker
    /// network disconnect` / `connect` of its peer network; namespaces: an nftables table).
    Cut,
}

/// Where partition mode runs its nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PartitionNet {
    /// Docker when an engine answers, else network namespaces (root), else skip.
    Auto,
    /// Containers of an image built here, on private Docker networks made for the run.
    Docker,
    /// Network namespaces joined by a bridge, cuts by nftables (needs root).
    Netns,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "skein-chaos",
    about = "Starts a skein cluster, breaks it for --rounds rounds under QoS 1 traffic to persistent sessions, then checks the invariants"
)]
pub struct Options {
    /// Fault rounds (each SIGKILLs or SIGSTOPs one node).
    #[arg(long, default_value_t = 10)]
    pub rounds: u32,
    /// Seed of every random decision (fault kind, target, client moves).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Cluster size.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub nodes: u32,
    /// First port: node i (1-based) listens MQTT on P+3(i-1), HTTP on P+3(i-1)+1 and gRPC on
    /// P+3(i-1)+2 on 127.0.0.1. Without it, ports are picked free. In partition mode every
    /// node uses P, P+1, P+2 on its own IP (default 1883, 8080, 7070).
    #[arg(long)]
    pub base_port: Option<u16>,
    /// The skein binary (default: target/release/skein of the workspace, or $SKEIN_BIN).
    #[arg(long)]
    pub binary: Option<PathBuf>,
    /// Cut one node (a minority) off the other nodes and heal it, instead of signals: every
    /// node with its own IP, as a Docker container on private networks made for the run
    /// (the image built here, no registry), else in a network namespace with nftables cuts
    /// (root); skipped with exit 3 when neither can run.
    #[arg(long)]
    pub partition: bool,
    /// Partition mode's network: docker, netns, or auto (docker when an engine answers).
    #[arg(long, value_enum, default_value_t = PartitionNet::Auto)]
    pub partition_net: PartitionNet,
    /// Fault kinds the rounds pick from (comma-separated: kill, stop or pause, cut); default
    /// kill,stop, and cut in partition mode. `cut` needs --partition.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub faults: Vec<FaultKind>,
    /// Persistent subscribers (each subscribes to every publisher's topic).
    #[arg(long, default_value_t = 6)]
    pub subscribers: u32,
    /// QoS 1 publishers.
    #[arg(long, default_value_t = 3)]
    pub publishers: u32,
    /// Messages per second per publisher (each waits for its PUBACK before the next).
    #[arg(long, default_value_t = 20)]
    pub rate: u32,
    /// Keep the run directory (node data and logs) even when every invariant holds.
    #[arg(long)]
    pub keep: bool,
    /// Where the run directory is made (default: the system temp dir).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// The nodes' raft_election_timeout_ms; a SIGSTOP lasts longer than twice this.
    #[arg(long, default_value_t = 1000)]
    pub election_timeout_ms: u64,
}

impl Options {
    /// The fault kinds the rounds pick from, in a fixed order (the seed's draws depend on
    /// it); an error for `cut` without `--partition`.
    pub fn fault_kinds(&self) -> Result<Vec<FaultKind>, String> {
        let mut kinds = if self.faults.is_empty() {
            if self.partition {
                vec![FaultKind::Cut]
            } else {
                vec![FaultKind::Kill, FaultKind::Stop]
            }
        } else {
            self.faults.clone()
        };
        kinds.sort_by_key(|k| *k as u8);
        kinds.dedup();
        if kinds.contains(&FaultKind::Cut) && !self.partition {
            return Err("--faults cut needs --partition (a network of the run's own)".into());
        }
        Ok(kinds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(args: &[&str]) -> Result<Vec<FaultKind>, String> {
        let mut all = vec!["skein-chaos"];
        all.extend_from_slice(args);
        Options::try_parse_from(all).unwrap().fault_kinds()
    }

    #[test]
    fn fault_kinds_default_by_mode_and_cut_needs_partition() {
        use FaultKind::*;
        assert_eq!(kinds(&[]), Ok(vec![Kill, Stop]));
        assert_eq!(kinds(&["--partition"]), Ok(vec![Cut]));
        assert_eq!(
            kinds(&["--partition", "--faults", "cut,pause,kill,cut"]),
            Ok(vec![Kill, Stop, Cut])
        );
        assert_eq!(kinds(&["--faults", "stop"]), Ok(vec![Stop]));
        assert!(kinds(&["--faults", "cut"]).is_err());
        assert!(Options::try_parse_from(["skein-chaos", "--faults", "nap"]).is_err());
    }
}
