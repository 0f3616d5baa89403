//! `scripts/cluster.sh` end to end, with the debug `skein` the suite builds (`SKEIN_BIN`)
//! and a temporary working directory for its `.cluster`: it refuses taken ports, `up 3`
//! forms a cluster on the fixed ports, `status`, `kill`/`start`, `restart`, `logs` and
//! `down` do what they say. The script's ports are fixed (MQTT 1883.., HTTP 8080.., gRPC
//! 7070..): when one is taken on this machine the test says `skipped:` and passes.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use skein_tests::node::skein_bin;
use skein_tests::{http_get, wait_until};

const NODES: u16 = 3;
/// A script command's bound: `up` waits for a cluster of debug builds on a busy machine.
const COMMAND_DEADLINE: Duration = Duration::from_secs(240);
/// How long a cluster may take to elect a leader again after a node is killed.
const REELECTION: Duration = Duration::from_secs(30);

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is inside the workspace")
        .join("scripts/cluster.sh")
}

/// Every port the script's nodes listen on: (what, port).
fn ports() -> Vec<(String, u16)> {
    (1..=NODES)
        .flat_map(|i| {
            [
                (format!("node {i} MQTT"), 1882 + i),
                (format!("node {i} HTTP"), 8079 + i),
                (format!("node {i} gRPC"), 7069 + i),
            ]
        })
        .collect()
}

fn http(i: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8079 + i))
}

/// A working directory for the script; stops whatever it started when dropped.
struct Cluster {
    dir: tempfile::TempDir,
}

impl Cluster {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = std::process::Command::new("bash");
        c.arg(script()).args(args).current_dir(self.dir.path());
        // The nodes' settings come from the test only (the script hands SKEIN_* on to
        // them), as for the harness's nodes: not from the developer's shell.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("SKEIN_") {
                c.env_remove(&k);
            }
        }
        c.env("SKEIN_BIN", skein_bin())
            .env("SKEIN_CLUSTER_WAIT_SECS", "180")
            .env("NO_COLOR", "1");
        if let Some(ms) = std::env::var_os("SKEIN_TEST_PARK_IDLE_MS") {
            c.env("SKEIN_PARK_IDLE_MS", ms);
        }
        let mut c = tokio::process::Command::from(c);
        c.kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        let output = self.command(args).output();
        tokio::time::timeout(COMMAND_DEADLINE, output)
            .await
            .unwrap_or_else(|_| {
                panic!("cluster.sh {args:?} still running after {COMMAND_DEADLINE:?}")
            })
            .expect("run bash")
    }

    /// Runs the script, which must succeed; its stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let (stdout, stderr) = texts(&out);
        assert!(
            out.status.success(),
            "cluster.sh {args:?} failed ({}):\n{stdout}\n{stderr}",
            out.status
        );
        stdout
    }

    /// Runs the script, which must fail; its stderr.
    async fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        let (stdout, stderr) = texts(&out);
        assert!(
            !out.status.success(),
            "cluster.sh {args:?} succeeded:\n{stdout}"
        );
        stderr
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(".cluster").join(rel)
    }

    /// `status`'s line of node `i`.
    async fn status_line(&self, i: u16) -> String {
        let status = self.ok(&["status"]).await;
        status
            .lines()
            .find(|l| l.split_whitespace().next() == Some(&i.to_string()))
            .unwrap_or_else(|| panic!("no line for node {i} in status:\n{status}"))
            .to_owned()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.path("size").exists() {
            let _ = self.command(&["down"]).as_std_mut().status();
        }
    }
}

fn texts(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// GET /api/v1/cluster of node `i`, when it answers 200.
async fn overview(i: u16) -> Option<Value> {
    match http_get(http(i), "/api/v1/cluster").await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

async fn leader_seen_by(i: u16) -> Option<u64> {
    overview(i).await?["leader_id"].as_u64()
}

/// Waits until every node in `nodes` sees the same leader; that leader.
async fn agreed_leader(nodes: &[u16]) -> u64 {
    let deadline = tokio::time::Instant::now() + REELECTION;
    loop {
        let mut seen = Vec::new();
        for &i in nodes {
            seen.push(leader_seen_by(i).await);
        }
        if let Some(Some(first)) = seen.first() {
            if seen.iter().all(|s| *s == Some(*first)) {
                return *first;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nodes {nodes:?} do not agree on a leader within {REELECTION:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_script_starts_inspects_and_stops_a_local_cluster() {
    if let Some((what, port)) = ports()
        .into_iter()
        .find(|(_, port)| TcpListener::bind(("127.0.0.1", *port)).is_err())
    {
        println!("skipped: {what} port {port} is taken on this machine");
        return;
    }
    let cluster = Cluster {
        dir: tempfile::tempdir().unwrap(),
    };

    // A taken port is named, and nothing starts.
    let squatter = TcpListener::bind("127.0.0.1:7072").unwrap();
    let refused = cluster.fails(&["up", "3"]).await;
    assert!(
        refused.contains("node 3's ports are taken: gRPC 7072"),
        "{refused}"
    );
    assert!(!cluster.path("node-1.pid").exists());
    drop(squatter);

    let up = cluster.ok(&["up", "3"]).await;
    assert!(up.contains("the cluster is up: 3 member(s)"), "{up}");
    for i in 1..=NODES {
        let ports = format!(
            "node {i}: mqtt 127.0.0.1:{}  http 127.0.0.1:{}  grpc 127.0.0.1:{}",
            1882 + i,
            8079 + i,
            7069 + i
        );
        assert!(up.contains(&ports), "{ports:?} not in:\n{up}");
        for file in [
            format!("node-{i}/data"),
            format!("node-{i}.log"),
            format!("node-{i}.pid"),
        ] {
            assert!(cluster.path(&file).exists(), "no {file}");
        }
        let v = overview(i).await.expect("GET /api/v1/cluster after up");
        let members = v["members"].as_array().expect("members");
        assert_eq!(members.len(), 3, "node {i}: {v}");
        assert!(v["leader_id"].is_u64(), "node {i}: {v}");
    }
    let leader = agreed_leader(&[1, 2, 3]).await;

    let again = cluster.fails(&["up", "3"]).await;
    assert!(again.contains("node 1 is already running"), "{again}");

    let status = cluster.ok(&["status"]).await;
    for i in 1..=NODES {
        let line = cluster.status_line(i).await;
        assert!(line.contains("running"), "{line}");
        assert!(line.contains(&format!("127.0.0.1:{}", 1882 + i)), "{line}");
        assert!(line.contains(&format!("node {leader} (term")), "{line}");
        let member = format!(
            "  {i} skein-{i}: voter, reachable, grpc 127.0.0.1:{}",
            7069 + i
        );
        assert!(status.contains(&member), "{member:?} not in:\n{status}");
    }

    // Node 2 killed: the others keep (or elect) a leader; started again, it rejoins.
    let killed = cluster.ok(&["kill", "2"]).await;
    assert!(killed.contains("killed node 2"), "{killed}");
    assert!(cluster.status_line(2).await.contains("stopped"));
    agreed_leader(&[1, 3]).await;
    cluster.fails(&["kill", "2"]).await;
    let started = cluster.ok(&["start", "2"]).await;
    assert!(started.contains("node 2 is running"), "{started}");
    assert!(cluster.status_line(2).await.contains("running"));
    agreed_leader(&[1, 2, 3]).await;

    // A restart is a SIGTERM and a start.
    let restarted = cluster.ok(&["restart", "3"]).await;
    assert!(restarted.contains("node 3 is running"), "{restarted}");
    let log = cluster.ok(&["logs", "3"]).await;
    assert_eq!(
        log.matches("mqtt listening on 127.0.0.1:1885").count(),
        2,
        "two starts of node 3 in its log:\n{log}"
    );
    let errors = cluster.fails(&["logs", "4"]).await;
    assert!(errors.contains("no node 4"), "{errors}");

    let down = cluster.ok(&["down"]).await;
    assert!(down.contains("stopped node(s) 1 2 3"), "{down}");
    let freed = wait_until(Duration::from_secs(10), || {
        ports()
            .iter()
            .all(|(_, port)| TcpListener::bind(("127.0.0.1", *port)).is_ok())
    })
    .await;
    assert!(freed, "ports still taken after down");
    for i in 1..=NODES {
        assert!(cluster.status_line(i).await.contains("stopped"));
    }
    assert_eq!(cluster.ok(&["down"]).await.trim(), "no node is running");
}
