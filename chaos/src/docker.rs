//! Partition mode on Docker: the node's image built here from the node binary with
//! `scripts/docker-image.sh` (no registry), and every node a container with an IP of its
//! own on two private networks the run creates. The *clients* network carries what the
//! harness sends (MQTT, HTTP), from the host straight to each container's IP, with
//! container-to-container traffic switched off; the *peers* network carries Raft and
//! forwards (gRPC). A cut is `docker network disconnect` of a node's peers network: the node
//! runs on and its clients still reach it, as with a node cut off from its peers only; the
//! heal connects it again with the same IP. `docker pause` / `unpause` and `docker kill` /
//! `start` are the other faults. Everything is named `skein-chaos-<run>-...` (the image
//! `skein-chaos:<run>`), labelled with the run, and removed on drop.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// Where the password file is mounted in each container.
pub const PASSWORD_PATH: &str = "/etc/skein-chaos/passwd";
/// The image's data directory (a volume of the run per node).
pub const DATA_DIR: &str = "/var/lib/skein";
/// Label on everything a run makes, with the run's tag as value.
const LABEL: &str = "skein-chaos.run";
/// Subnets tried for the run's networks: 10.214.X.0/24 (clients), 10.215.X.0/24 (peers).
const SUBNET_ATTEMPTS: u32 = 40;

/// Why the Docker path cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .output();
    match out {
        Err(e) => Some(format!("no `docker` command ({e})")),
        Ok(o) if !o.status.success() => Some(format!(
            "the Docker engine does not answer (`docker info`: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Runs `docker ARGS`; its stdout, or an error with its stderr.
fn docker(args: &[&str]) -> Result<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running docker {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "docker {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn quiet(args: &[&str]) {
    let _ = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

pub struct Docker {
    tag: String,
    image: Option<String>,
    nodes: usize,
    /// The third octet of both networks' subnets.
    subnet: u8,
    networks: Vec<String>,
    /// Containers created so far (by index), removed on drop.
    created: Vec<bool>,
    password_file: PathBuf,
}

impl Docker {
    /// Builds the image from `binary` and creates the two networks for `nodes` nodes.
    pub fn create(nodes: usize, binary: &Path, password_file: &Path) -> Result<Docker> {
        let pid = std::process::id();
        // The pid tells concurrent runs apart; the clock, this run from the leftovers of a
        // killed earlier one with the same pid.
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let tag = format!("{pid:x}{:04x}", secs & 0xffff);
        let mut d = Docker {
            tag,
            image: None,
            nodes,
            subnet: 0,
            networks: Vec::new(),
            created: vec![false; nodes],
            password_file: password_file.to_path_buf(),
        };
        d.build_image(binary).context("building the node image")?;
        d.create_networks(pid)
            .context("creating the run's Docker networks")?;
        Ok(d)
    }

    /// `skein-chaos-<run>`: the prefix of every name the run gives.
    pub fn prefix(&self) -> String {
        format!("skein-chaos-{}", self.tag)
    }

    pub fn image(&self) -> String {
        format!("skein-chaos:{}", self.tag)
    }

    pub fn container(&self, index: usize) -> String {
        format!("{}-node{}", self.prefix(), index + 1)
    }

    fn volume(&self, index: usize) -> String {
        format!("{}-node{}-data", self.prefix(), index + 1)
    }

    fn clients_net(&self) -> String {
        format!("{}-clients", self.prefix())
    }

    fn peers_net(&self) -> String {
        format!("{}-peers", self.prefix())
    }

    /// Node `index`'s address on the clients network: MQTT and HTTP listen here, and
    /// events name the node by it.
    pub fn node_ip(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 214, self.subnet, 11 + index as u8)
    }

    /// Node `index`'s address on the peers network: gRPC listens here.
    pub fn peer_ip(&self, index: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 215, self.subnet, 11 + index as u8)
    }

    fn build_image(&mut self, binary: &Path) -> Result<()> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/docker-image.sh");
        let image = self.image();
        let out = Command::new(&script)
            .arg(&image)
            .env("SKEIN_BIN", binary)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        // Whatever the script got to, the tag is the run's: removed on drop.
        self.image = Some(image);
        if !out.status.success() {
            bail!(
                "{} failed ({}): {}",
                script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    /// Both networks on the first third octet free in both ranges (another run, or
    /// another network of the engine, may hold a candidate).
    fn create_networks(&mut self, seed: u32) -> Result<()> {
        let label = format!("{LABEL}={}", self.tag);
        let mut last = String::new();
        for attempt in 0..SUBNET_ATTEMPTS {
            let x = ((seed + attempt * 7) % 240 + 10) as u8;
            let clients = self.clients_net();
            let made = docker(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--label",
                &label,
                "--subnet",
                &format!("10.214.{x}.0/24"),
                // The harness (host) reaches every node; nodes never reach each other here.
                "--opt",
                "com.docker.network.bridge.enable_icc=false",
                &clients,
            ]);
            if let Err(e) = made {
                last = format!("{e:#}");
                continue;
            }
            let peers = self.peers_net();
            let made = docker(&[
                "network",
                "create",
                "--driver",
                "bridge",
                "--label",
                &label,
                "--subnet",
                &format!("10.215.{x}.0/24"),
                &peers,
            ]);
            match made {
                Ok(_) => {
                    self.subnet = x;
                    self.networks = vec![peers, clients];
                    return Ok(());
                }
                Err(e) => {
                    last = format!("{e:#}");
                    quiet(&["network", "rm", &clients]);
                }
            }
        }
        bail!("no free subnet pair after {SUBNET_ATTEMPTS} attempts; last: {last}")
    }

    /// Starts node `index`: the first time a new container (`args` after the image's
    /// entry point, `envs` as its environment), on the clients network and then the peers
    /// network with fixed IPs, its data in a volume of its own; afterwards the same
    /// container again (after `kill`), with its data and IPs.
    pub fn start(
        &mut self,
        index: usize,
        args: &[String],
        envs: &[(String, String)],
    ) -> Result<()> {
        let name = self.container(index);
        if !self.created[index] {
            let label = format!("{LABEL}={}", self.tag);
            let ip = self.node_ip(index).to_string();
            let volume = format!("{}:{DATA_DIR}", self.volume(index));
            let password = format!(
                "{}:{PASSWORD_PATH}:ro",
                self.password_file.to_string_lossy()
            );
            let mut cmd: Vec<String> = [
                "create",
                "--name",
                &name,
                "--label",
                &label,
                "--hostname",
                &name,
                "--network",
                &self.clients_net(),
                "--ip",
                &ip,
                "--volume",
                &volume,
                "--volume",
                &password,
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            for (k, v) in envs {
                cmd.push("--env".into());
                cmd.push(format!("{k}={v}"));
            }
            cmd.push(self.image());
            cmd.extend(args.iter().cloned());
            let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
            self.created[index] = true;
            docker(&cmd)?;
            self.connect_peers(index)?;
        }
        docker(&["start", &name])?;
        Ok(())
    }

    /// `docker kill` (SIGKILL to the node, PID 1 of its container).
    pub fn kill(&self, index: usize) -> Result<()> {
        docker(&["kill", &self.container(index)]).map(|_| ())
    }

    pub fn pause(&self, index: usize) -> Result<()> {
        docker(&["pause", &self.container(index)]).map(|_| ())
    }

    pub fn unpause(&self, index: usize) -> Result<()> {
        docker(&["unpause", &self.container(index)]).map(|_| ())
    }

    /// Cuts node `index` off the other nodes: its peers network goes (clients still
    /// reach it on the clients network).
    pub fn cut(&self, index: usize) -> Result<()> {
        docker(&[
            "network",
            "disconnect",
            &self.peers_net(),
            &self.container(index),
        ])
        .map(|_| ())
    }

    /// Connects node `index` to the peers network again, with the same IP.
    pub fn heal(&self, index: usize) -> Result<()> {
        self.connect_peers(index)
    }

    fn connect_peers(&self, index: usize) -> Result<()> {
        let ip = self.peer_ip(index).to_string();
        docker(&[
            "network",
            "connect",
            "--ip",
            &ip,
            &self.peers_net(),
            &self.container(index),
        ])
        .map(|_| ())
    }

    /// The container's exit status, when it is not running (None while it runs or is
    /// paused, or was never made).
    pub fn exited(&self, index: usize) -> Option<String> {
        if !self.created[index] {
            return None;
        }
        let out = docker(&[
            "inspect",
            "--format",
            "{{.State.Running}} {{.State.ExitCode}} {{.State.OOMKilled}}",
            &self.container(index),
        ])
        .ok()?;
        let mut parts = out.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some("false"), Some(code), Some(oom)) => Some(if oom == "true" {
                format!("exit code {code}, out of memory")
            } else {
                format!("exit code {code}")
            }),
            _ => None,
        }
    }

    /// What node `index` printed (its last `tail` lines, or all).
    pub fn logs(&self, index: usize, tail: Option<usize>) -> String {
        let name = self.container(index);
        let tail = tail.map(|n| n.to_string());
        let mut args = vec!["logs"];
        if let Some(t) = &tail {
            args.extend(["--tail", t]);
        }
        args.push(&name);
        match Command::new("docker")
            .args(&args)
            .stdin(Stdio::null())
            .output()
        {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(docker logs {name} failed: {e})"),
        }
    }

    /// Removes every container and its volume (their logs first copied to `log(i)`).
    pub fn remove_nodes(&mut self, log: impl Fn(usize) -> PathBuf) {
        for index in 0..self.nodes {
            if !self.created[index] {
                continue;
            }
            let _ = std::fs::write(log(index), self.logs(index, None));
            // Paused containers are removed too (`rm --force` kills them first).
            quiet(&["rm", "--force", "--volumes", &self.container(index)]);
            quiet(&["volume", "rm", "--force", &self.volume(index)]);
            self.created[index] = false;
        }
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        for index in 0..self.nodes {
            if self.created[index] {
                quiet(&["rm", "--force", "--volumes", &self.container(index)]);
            }
            quiet(&["volume", "rm", "--force", &self.volume(index)]);
        }
        for net in self.networks.drain(..) {
            quiet(&["network", "rm", &net]);
        }
        if let Some(image) = self.image.take() {
            quiet(&["rmi", "--force", &image]);
        }
    }
}
