//! The cluster under test: real `skein` processes on 127.0.0.1 (or each in a network
//! namespace of its own), each with its own data directory and log file under the run
//! directory, or containers of the node's image on the run's Docker networks; started,
//! SIGKILLed, SIGSTOPped, SIGCONTed, cut off and restarted (same data, same addresses) by
//! the fault loop.

use std::fs::OpenOptions;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

use crate::docker::{self, Docker};
use crate::http::get_json;
use crate::netns::Netns;
use crate::options::FaultKind;

/// Where the nodes run.
pub enum Net {
    /// Processes on 127.0.0.1.
    Local,
    /// Processes, each in a network namespace of its own (partition mode as root).
    Netns(Netns),
    /// Containers on the run's Docker networks (partition mode).
    Docker(Docker),
}

impl Net {
    pub fn describe(&self) -> &'static str {
        match self {
            Net::Local => "processes on 127.0.0.1",
            Net::Netns(_) => "processes in network namespaces (nftables cuts)",
            Net::Docker(_) => "Docker containers on the run's private networks",
        }
    }
}

/// How long a started node may take to answer on HTTP.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// Partition mode: node `node` cut off the others at `from` and healed at `until`, in
/// seconds since the run started.
#[derive(Debug, Clone, Copy)]
pub struct Cut {
    pub node: usize,
    pub from: f64,
    pub until: Option<f64>,
}

/// What the fault loop did to a node last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NodeState {
    Running = 0,
    /// SIGSTOPped: its sockets stay open, it answers nothing.
    Stopped = 1,
    /// SIGKILLed and not restarted yet.
    Down = 2,
}

/// Where each node listens and what the fault loop did to it, shared with the clients:
/// they pick nodes to connect to from it, and a connection remembers the incarnation of its
/// node (a SIGKILL starts a new one) to tell a takeover from a crash.
#[derive(Debug)]
pub struct Topology {
    pub mqtt: Vec<SocketAddr>,
    pub http: Vec<SocketAddr>,
    pub grpc: Vec<SocketAddr>,
    states: Vec<AtomicU8>,
    incarnations: Vec<AtomicU64>,
}

impl Topology {
    pub fn len(&self) -> usize {
        self.mqtt.len()
    }

    pub fn state(&self, index: usize) -> NodeState {
        match self.states[index].load(Ordering::SeqCst) {
            0 => NodeState::Running,
            1 => NodeState::Stopped,
            _ => NodeState::Down,
        }
    }

    fn set_state(&self, index: usize, state: NodeState) {
        self.states[index].store(state as u8, Ordering::SeqCst);
    }

    pub fn incarnation(&self, index: usize) -> u64 {
        self.incarnations[index].load(Ordering::SeqCst)
    }

    pub fn running(&self) -> Vec<usize> {
        (0..self.len())
            .filter(|i| self.state(*i) == NodeState::Running)
            .collect()
    }
}

pub struct Cluster {
    binary: PathBuf,
    dir: PathBuf,
    topology: Arc<Topology>,
    children: Vec<Option<Child>>,
    envs: Vec<(String, String)>,
    /// Partition mode's network or containers (dropped after the nodes: see `Drop`).
    net: Net,
}

/// Each node's MQTT, HTTP and gRPC addresses. On 127.0.0.1: ports from `base` (three per
/// node), or picked free (bound and released; a process taking one meanwhile makes that
/// node's start fail, which says so). In partition mode every node has an address of its
/// own and the same ports (from `base`, default 1883, 8080, 7070); a container's gRPC
/// address is on the peers network, the others on the clients network.
pub fn addresses(n: usize, base: Option<u16>, net: &Net) -> Result<Vec<[SocketAddr; 3]>> {
    let own_ips = |ips: &dyn Fn(usize) -> (IpAddr, IpAddr)| -> Result<Vec<[SocketAddr; 3]>> {
        let [m, h, g] = match base {
            Some(b) if b <= u16::MAX - 2 => [b, b + 1, b + 2],
            Some(b) => bail!("--base-port {b} leaves no room for three ports"),
            None => [1883, 8080, 7070],
        };
        Ok((0..n)
            .map(|i| {
                let (ip, grpc_ip) = ips(i);
                [
                    SocketAddr::new(ip, m),
                    SocketAddr::new(ip, h),
                    SocketAddr::new(grpc_ip, g),
                ]
            })
            .collect())
    };
    match net {
        Net::Netns(ns) => {
            return own_ips(&|i| (IpAddr::V4(ns.node_ip(i)), IpAddr::V4(ns.node_ip(i))));
        }
        Net::Docker(d) => {
            return own_ips(&|i| (IpAddr::V4(d.node_ip(i)), IpAddr::V4(d.peer_ip(i))));
        }
        Net::Local => {}
    }
    let ports: Vec<[u16; 3]> = match base {
        Some(base) => (0..n)
            .map(|i| {
                let first = usize::from(base) + 3 * i;
                if first + 2 > usize::from(u16::MAX) {
                    bail!("--base-port {base} leaves no room for {n} nodes");
                }
                let first = first as u16;
                Ok([first, first + 1, first + 2])
            })
            .collect::<Result<_>>()?,
        None => {
            let listeners = (0..3 * n)
                .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
                .collect::<std::io::Result<Vec<_>>>()
                .context("picking free ports")?;
            let picked: Vec<u16> = listeners
                .iter()
                .map(|l| l.local_addr().map(|a| a.port()))
                .collect::<std::io::Result<_>>()?;
            picked.chunks(3).map(|c| [c[0], c[1], c[2]]).collect()
        }
    };
    let local = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
    Ok(ports
        .iter()
        .map(|p| [local(p[0]), local(p[1]), local(p[2])])
        .collect())
}

impl Cluster {
    pub fn new(
        binary: PathBuf,
        dir: &Path,
        addresses: &[[SocketAddr; 3]],
        envs: Vec<(String, String)>,
        net: Net,
    ) -> Cluster {
        let topology = Topology {
            mqtt: addresses.iter().map(|a| a[0]).collect(),
            http: addresses.iter().map(|a| a[1]).collect(),
            grpc: addresses.iter().map(|a| a[2]).collect(),
            states: addresses
                .iter()
                .map(|_| AtomicU8::new(NodeState::Down as u8))
                .collect(),
            incarnations: addresses.iter().map(|_| AtomicU64::new(0)).collect(),
        };
        Cluster {
            binary,
            dir: dir.to_path_buf(),
            children: addresses.iter().map(|_| None).collect(),
            topology: Arc::new(topology),
            envs,
            net,
        }
    }

    /// How `fault` is done to a node here (for the run's log).
    pub fn fault_name(&self, fault: FaultKind) -> &'static str {
        match (&self.net, fault) {
            (Net::Docker(_), FaultKind::Kill) => "docker kill",
            (Net::Docker(_), FaultKind::Stop) => "docker pause",
            (Net::Docker(_), FaultKind::Cut) => "docker network disconnect (peers) of",
            (_, FaultKind::Kill) => "SIGKILL",
            (_, FaultKind::Stop) => "SIGSTOP",
            (_, FaultKind::Cut) => "cut off",
        }
    }

    pub fn topology(&self) -> Arc<Topology> {
        self.topology.clone()
    }

    pub fn len(&self) -> usize {
        self.topology.len()
    }

    pub fn log_path(&self, index: usize) -> PathBuf {
        self.dir.join(format!("node-{}.log", index + 1))
    }

    fn peers(&self) -> String {
        self.topology
            .grpc
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}@{a}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Starts every node and waits until the cluster has formed.
    pub async fn start_all(&mut self, deadline: Duration) -> Result<()> {
        for i in 0..self.len() {
            self.spawn(i)?;
        }
        for i in 0..self.len() {
            self.wait_serving(i).await?;
        }
        self.wait_formed(deadline).await.map(|_| ())
    }

    /// The node's command line after the binary (its data directory as the node sees it).
    fn args(&self, index: usize, data: &Path) -> Vec<String> {
        let t = &self.topology;
        vec![
            "--node-id".into(),
            (index + 1).to_string(),
            "--mqtt".into(),
            t.mqtt[index].to_string(),
            "--http".into(),
            t.http[index].to_string(),
            "--grpc".into(),
            t.grpc[index].to_string(),
            "--peers".into(),
            self.peers(),
            "--data-dir".into(),
            data.to_string_lossy().into_owned(),
        ]
    }

    fn spawn(&mut self, index: usize) -> Result<()> {
        let in_container = matches!(self.net, Net::Docker(_))
            .then(|| self.args(index, Path::new(docker::DATA_DIR)));
        if let (Net::Docker(d), Some(args)) = (&mut self.net, in_container) {
            d.start(index, &args, &self.envs)
                .with_context(|| format!("starting node {}'s container", index + 1))?;
            self.topology.set_state(index, NodeState::Running);
            return Ok(());
        }
        let data = self.dir.join(format!("node-{}", index + 1));
        std::fs::create_dir_all(&data)?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(index))?;
        let mut command = match &self.net {
            Net::Netns(net) => {
                // `ip netns exec` execs the binary: the child's pid is the node's.
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &net.namespace(index)])
                    .arg(&self.binary);
                c
            }
            _ => Command::new(&self.binary),
        };
        let t = &self.topology;
        let child = command
            .args(self.args(index, &data))
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        self.children[index] = Some(child);
        t.set_state(index, NodeState::Running);
        Ok(())
    }

    /// Waits until node `index` answers `GET /api/v1/cluster`; fails at once if it exited.
    async fn wait_serving(&mut self, index: usize) -> Result<()> {
        let end = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.exit_status(index) {
                bail!(
                    "node {} exited while starting ({status}); its log {}:\n{}",
                    index + 1,
                    self.log_where(index),
                    self.log_tail(index)
                );
            }
            if get_json(self.topology.http[index], "/api/v1/cluster")
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= end {
                bail!(
                    "node {} did not answer on HTTP within {START_DEADLINE:?}",
                    index + 1
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// How node `index` ended, if it did (None while it runs, is stopped, or was never
    /// started).
    fn exit_status(&mut self, index: usize) -> Option<String> {
        if let Net::Docker(d) = &self.net {
            return d.exited(index);
        }
        let child = self.children[index].as_mut()?;
        match child.try_wait() {
            Ok(status) => status.map(|s| s.to_string()),
            Err(e) => Some(format!("unknown ({e})")),
        }
    }

    fn log_where(&self, index: usize) -> String {
        match &self.net {
            Net::Docker(d) => format!("docker logs {}", d.container(index)),
            _ => self.log_path(index).display().to_string(),
        }
    }

    pub fn log_tail(&self, index: usize) -> String {
        if let Net::Docker(d) = &self.net {
            return d.logs(index, Some(15));
        }
        let text = std::fs::read_to_string(self.log_path(index)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits until every running node sees a leader, the same one, and every member as a
    /// voter with its record; returns the leader's index.
    pub async fn wait_formed(&self, deadline: Duration) -> Result<usize> {
        let end = Instant::now() + deadline;
        loop {
            let mut last = Vec::new();
            let mut leaders = Vec::new();
            for i in self.topology.running() {
                match get_json(self.topology.http[i], "/api/v1/cluster").await {
                    Ok(v) => {
                        if formed(&v, self.len()) {
                            leaders.push(v["leader_id"].as_u64());
                        } else {
                            leaders.push(None);
                        }
                        last.push(format!("node {}: {v}", i + 1));
                    }
                    Err(e) => {
                        leaders.push(None);
                        last.push(format!("node {}: {e:#}", i + 1));
                    }
                }
            }
            if let Some(Some(first)) = leaders.first() {
                if leaders.iter().all(|l| *l == Some(*first)) {
                    return Ok(*first as usize - 1);
                }
            }
            if Instant::now() >= end {
                return Err(anyhow!(
                    "the cluster did not form within {deadline:?}; last seen:\n{}",
                    last.join("\n")
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The leader's index as the running nodes see it (None without an agreed leader).
    pub async fn leader(&self) -> Option<usize> {
        for i in self.topology.running() {
            if let Ok(v) = get_json(self.topology.http[i], "/api/v1/cluster").await {
                if let Some(l) = v["leader_id"].as_u64() {
                    return Some(l as usize - 1);
                }
            }
        }
        None
    }

    /// SIGKILL. The incarnation moves on first, so a client that sees its connection end
    /// from now on knows its node crashed.
    pub fn kill(&mut self, index: usize) -> Result<()> {
        self.topology.incarnations[index].fetch_add(1, Ordering::SeqCst);
        self.topology.set_state(index, NodeState::Down);
        if let Net::Docker(d) = &self.net {
            // An already-exited container (a crash) refuses the kill: it is down either way.
            if d.exited(index).is_none() {
                d.kill(index)?;
            }
            return Ok(());
        }
        if let Some(mut child) = self.children[index].take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// SIGSTOP (Docker: `docker pause`, which freezes the container's processes).
    pub fn stop(&mut self, index: usize) -> Result<()> {
        match &self.net {
            Net::Docker(d) => d.pause(index)?,
            _ => self.signal(index, Signal::STOP)?,
        }
        self.topology.set_state(index, NodeState::Stopped);
        Ok(())
    }

    pub fn resume(&mut self, index: usize) -> Result<()> {
        match &self.net {
            Net::Docker(d) => d.unpause(index)?,
            _ => self.signal(index, Signal::CONT)?,
        }
        self.topology.set_state(index, NodeState::Running);
        Ok(())
    }

    fn signal(&self, index: usize, signal: Signal) -> Result<()> {
        let child = self.children[index]
            .as_ref()
            .ok_or_else(|| anyhow!("node {} is not running", index + 1))?;
        kill_process(Pid::from_child(child), signal)
            .with_context(|| format!("signalling node {}", index + 1))
    }

    /// Partition mode: drops all traffic between node `index` and the others.
    pub fn cut(&mut self, index: usize) -> Result<()> {
        match &self.net {
            Net::Netns(n) => n.cut(index),
            Net::Docker(d) => d.cut(index),
            Net::Local => bail!("no partition network"),
        }
    }

    pub fn heal(&mut self, index: usize) -> Result<()> {
        match &self.net {
            Net::Netns(n) => n.heal(index),
            Net::Docker(d) => d.heal(index),
            Net::Local => bail!("no partition network"),
        }
    }

    /// Starts a killed node again with its data and waits until it serves HTTP.
    pub async fn restart(&mut self, index: usize) -> Result<()> {
        self.spawn(index)?;
        self.wait_serving(index).await
    }

    /// Nodes that exited by themselves (a crash the harness did not cause).
    pub fn crashed(&mut self) -> Vec<(usize, String)> {
        let alive: Vec<usize> = (0..self.len())
            .filter(|i| self.topology.state(*i) != NodeState::Down)
            .collect();
        alive
            .into_iter()
            .filter_map(|i| self.exit_status(i).map(|status| (i, status)))
            .collect()
    }

    /// Ends every node (SIGCONT first for a stopped one, so it can die).
    /// Containers are removed, their output first copied to `node-I.log`.
    pub fn shutdown(&mut self) {
        if let Net::Docker(d) = &mut self.net {
            let dir = self.dir.clone();
            d.remove_nodes(|i| dir.join(format!("node-{}.log", i + 1)));
        }
        for i in 0..self.len() {
            if let Some(mut child) = self.children[i].take() {
                let _ = kill_process(Pid::from_child(&child), Signal::CONT);
                let _ = child.kill();
                let _ = child.wait();
            }
            self.topology.set_state(i, NodeState::Down);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn formed(v: &Value, members: usize) -> bool {
    let Some(list) = v["members"].as_array() else {
        return false;
    };
    !v["leader_id"].is_null()
        && list.len() == members
        && list.iter().all(|m| {
            m["name"].as_str().is_some_and(|s| !s.is_empty())
                && m["mqtt"].as_str().is_some_and(|s| !s.is_empty())
                && m["role"] == "voter"
        })
}

#[cfg(test)]
mod tests {
    use super::{addresses, Net};

    #[test]
    fn a_base_port_gives_each_node_three_consecutive_ports() {
        let a = addresses(2, Some(33000), &Net::Local).unwrap();
        let ports: Vec<[u16; 3]> = a
            .iter()
            .map(|n| [n[0].port(), n[1].port(), n[2].port()])
            .collect();
        assert_eq!(ports, vec![[33000, 33001, 33002], [33003, 33004, 33005]]);
        assert!(a.iter().flatten().all(|s| s.ip().is_loopback()));
        assert!(addresses(3, Some(65530), &Net::Local).is_err());
        let free = addresses(3, None, &Net::Local).unwrap();
        let mut all: Vec<u16> = free.iter().flatten().map(|s| s.port()).collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 9, "free ports are distinct");
    }
}
