//! The command line of `chaos/run` (see chaos/README.md).

use std::path::PathBuf;

use clap::Parser;

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
    /// node in a network namespace of its own with its own IP, the cut an nftables table in
    /// its namespace (needs root, iproute2 and nftables; skipped with exit 3 otherwise).
    #[arg(long)]
    pub partition: bool,
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
