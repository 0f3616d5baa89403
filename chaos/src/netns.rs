//! Partition mode's network: every node in a network namespace of its own, all joined by a
//! bridge that lives in one more namespace (so that the host's own firewall, which may drop
//! forwarded traffic, never sees node-to-node packets), and the harness in the host
//! namespace on that bridge too. Cutting node i off is an nftables table in its namespace
//! that drops everything to and from the other nodes' addresses; clients (the host
//! address) still reach it, as they would a node cut off from its peers only. Everything is
//! created under names with this run's tag and removed on drop.

use std::net::Ipv4Addr;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// nftables table the cut lives in (inside the node's namespace only).
const TABLE: &str = "skein_chaos";

pub struct Netns {
    tag: String,
    subnet: [u8; 3],
    nodes: usize,
    namespaces: Vec<String>,
    host_link: Option<String>,
}

/// Why partition mode cannot run here, if it cannot.
pub fn unavailable() -> Option<String> {
    if !rustix::process::geteuid().is_root() {
        return Some("partition mode needs root (network namespaces, nftables)".into());
    }
    for (tool, arg, package) in [("ip", "-V", "iproute2"), ("nft", "--version", "nftables")] {
        let ok = Command::new(tool)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            return Some(format!(
                "partition mode needs `{tool}` (Debian package {package})"
            ));
        }
    }
    None
}

fn run(args: &[&str]) -> Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Netns {
    /// Creates the namespaces, the bridge and the links for `nodes` nodes.
    pub fn create(nodes: usize) -> Result<Netns> {
        let pid = std::process::id();
        let tag = format!("{:04x}", pid & 0xffff);
        // 10.213.X.0/24, X from the pid: concurrent runs get different subnets.
        let subnet = [10, 213, (pid % 200 + 20) as u8];
        let mut net = Netns {
            tag,
            subnet,
            nodes,
            namespaces: Vec::new(),
            host_link: None,
        };
        net.build().context("building the partition network")?;
        Ok(net)
    }

    fn switch(&self) -> String {
        format!("skein-chaos-{}-sw", self.tag)
    }

    pub fn namespace(&self, index: usize) -> String {
        format!("skein-chaos-{}-n{}", self.tag, index + 1)
    }

    pub fn node_ip(&self, index: usize) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, index as u8 + 1)
    }

    fn host_ip(&self) -> Ipv4Addr {
        let [a, b, c] = self.subnet;
        Ipv4Addr::new(a, b, c, 254)
    }

    fn build(&mut self) -> Result<()> {
        let sw = self.switch();
        run(&["ip", "netns", "add", &sw])?;
        self.namespaces.push(sw.clone());
        run(&["ip", "-n", &sw, "link", "add", "br0", "type", "bridge"])?;
        run(&["ip", "-n", &sw, "link", "set", "br0", "up"])?;
        for i in 0..self.nodes {
            let ns = self.namespace(i);
            run(&["ip", "netns", "add", &ns])?;
            self.namespaces.push(ns.clone());
            let (a, b) = (
                format!("skc{}a{}", self.tag, i + 1),
                format!("skc{}b{}", self.tag, i + 1),
            );
            run(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
            run(&["ip", "link", "set", &a, "netns", &sw])?;
            run(&["ip", "link", "set", &b, "netns", &ns])?;
            run(&["ip", "-n", &sw, "link", "set", &a, "master", "br0", "up"])?;
            let addr = format!("{}/24", self.node_ip(i));
            run(&["ip", "-n", &ns, "addr", "add", &addr, "dev", &b])?;
            run(&["ip", "-n", &ns, "link", "set", &b, "up"])?;
            run(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
        }
        let (h, s) = (format!("skc{}h", self.tag), format!("skc{}s", self.tag));
        run(&["ip", "link", "add", &h, "type", "veth", "peer", "name", &s])?;
        self.host_link = Some(h.clone());
        run(&["ip", "link", "set", &s, "netns", &sw])?;
        run(&["ip", "-n", &sw, "link", "set", &s, "master", "br0", "up"])?;
        let addr = format!("{}/24", self.host_ip());
        run(&["ip", "addr", "add", &addr, "dev", &h])?;
        run(&["ip", "link", "set", &h, "up"])?;
        Ok(())
    }

    /// Drops everything between node `index` and the other nodes, both ways.
    pub fn cut(&self, index: usize) -> Result<()> {
        let ns = self.namespace(index);
        let others: Vec<String> = (0..self.nodes)
            .filter(|j| *j != index)
            .map(|j| self.node_ip(j).to_string())
            .collect();
        let set = format!("{{ {} }}", others.join(", "));
        let script = format!(
            "table inet {TABLE} {{\n chain input {{ type filter hook input priority 0; policy accept; ip saddr {set} drop; }}\n chain output {{ type filter hook output priority 0; policy accept; ip daddr {set} drop; }}\n}}\n"
        );
        let path = std::env::temp_dir().join(format!("skein-chaos-{}-cut.nft", self.tag));
        std::fs::write(&path, script)?;
        let path = path.to_string_lossy().into_owned();
        run(&["ip", "netns", "exec", &ns, "nft", "-f", &path])
    }

    pub fn heal(&self, index: usize) -> Result<()> {
        let ns = self.namespace(index);
        run(&[
            "ip", "netns", "exec", &ns, "nft", "delete", "table", "inet", TABLE,
        ])
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting a namespace deletes the links in it, and with them their peers.
        for ns in self.namespaces.drain(..).rev() {
            let _ = run(&["ip", "netns", "del", &ns]);
        }
        if let Some(h) = self.host_link.take() {
            let _ = Command::new("ip").args(["link", "del", &h]).output();
        }
    }
}
