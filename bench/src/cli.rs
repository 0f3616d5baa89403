//! Command line: one scenario and the options that shape it.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};

use crate::stats::HEADER_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// P publishers -> 1 subscriber, all on one topic.
    Fanin,
    /// 1 publisher -> S subscribers on one topic.
    Fanout,
    /// N pairs, each publisher to its own subscriber's topic (the IoT shape).
    Pairs,
    /// Open C connections at bounded concurrency, hold them idle, measure the broker's RSS.
    Connect,
    /// A client id connects on --port, then again on --sub-port: time until the first
    /// connection is closed (a takeover across nodes when the ports are two nodes').
    Takeover,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fanin => "fanin",
            Scenario::Fanout => "fanout",
            Scenario::Pairs => "pairs",
            Scenario::Connect => "connect",
            Scenario::Takeover => "takeover",
        }
    }
}

/// Skein's MQTT load generator (loopback only). Prints a human summary and one JSON line.
#[derive(Debug, Parser)]
#[command(name = "skein-bench", version)]
pub struct Cli {
    /// Scenario to run.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Broker host; must be a loopback address (127.0.0.0/8, ::1, localhost).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// Where subscribers connect (fanin, fanout, pairs), or the second connection of each
    /// takeover, when not --port: another node of a cluster.
    #[arg(long)]
    pub sub_port: Option<u16>,
    /// connect: spread the connections round-robin over --port and these ports (the nodes
    /// of a cluster); the broker's RSS is then not measured.
    #[arg(long, value_delimiter = ',', value_name = "PORT,...")]
    pub spread_ports: Vec<u16>,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    pub qos: u8,
    /// Payload size in bytes (at least 20: send time, publisher index, sequence number).
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Unacknowledged QoS 1/2 publishes allowed per publisher.
    #[arg(long, default_value_t = 100)]
    pub inflight: u32,
    /// Messages per publisher.
    #[arg(long, default_value_t = 10_000)]
    pub count: u64,
    /// Publishers (fanin; default 4).
    #[arg(long)]
    pub publishers: Option<u32>,
    /// Subscribers (fanout; default 10).
    #[arg(long)]
    pub subscribers: Option<u32>,
    /// Publisher/subscriber pairs (pairs; default 100).
    #[arg(long)]
    pub pairs: Option<u32>,
    /// Connections to open (connect; default 1000).
    #[arg(long)]
    pub connections: Option<u32>,
    /// Connections being opened at once (connect; default 100).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Offered load: total messages per second over all publishers, on a fixed schedule;
    /// latency is measured from each message's scheduled send time.
    #[arg(long, value_name = "MSGS_PER_SEC")]
    pub rate: Option<f64>,
    /// Hard bound on the whole run, in seconds: stop, report what was measured, exit 1.
    #[arg(long, default_value_t = 120.0)]
    pub timeout: f64,
    /// Print only the JSON line.
    #[arg(long)]
    pub json: bool,
    /// The broker's pid, for the connect scenario's RSS measurement (/proc/PID/status).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Broker name put in the report (default: the --broker-pid process name, or "unknown").
    #[arg(long)]
    pub broker: Option<String>,
    /// Keep alive of every connection, in seconds; idle connections send PINGREQ at half.
    #[arg(long, default_value_t = 60)]
    pub keepalive: u16,
    /// How long to hold the connect scenario's connections idle before measuring RSS, in
    /// seconds.
    #[arg(long, default_value_t = 2.0)]
    pub hold: f64,
    /// Connect over TLS, trusting the CA certificates in this PEM file; the broker's
    /// certificate must name `localhost`.
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Validated settings of a run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub scenario: Scenario,
    pub addr: SocketAddr,
    /// Subscribers' (or a takeover's second connection's) address: `addr` unless
    /// --sub-port.
    pub sub_addr: SocketAddr,
    /// connect: the addresses connections go to, round-robin.
    pub connect_addrs: Vec<SocketAddr>,
    pub qos: u8,
    pub payload: usize,
    pub inflight: u32,
    pub count: u64,
    pub publishers: u32,
    pub subscribers: u32,
    pub connections: u32,
    pub concurrency: u32,
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub json: bool,
    pub broker_pid: Option<u32>,
    pub broker: String,
    pub keepalive: u16,
    pub hold: Duration,
}

/// Resolves `host` and refuses anything that is not loopback: the load generator must
/// never send traffic off this machine.
pub fn loopback_addr(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    let refuse = |what: &str| {
        anyhow::anyhow!(
            "refusing host {host:?} ({what}): skein-bench only targets loopback addresses \
             (127.0.0.0/8, ::1, localhost)"
        )
    };
    let host_trimmed = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host_trimmed.parse::<IpAddr>() {
        if !ip.is_loopback() {
            return Err(refuse("not a loopback address"));
        }
        return Ok(SocketAddr::new(ip, port));
    }
    let addrs: Vec<SocketAddr> = (host_trimmed, port)
        .to_socket_addrs()
        .with_context(|| format!("resolving host {host:?}"))?
        .collect();
    if addrs.is_empty() {
        bail!("host {host:?} resolves to no address");
    }
    if let Some(bad) = addrs.iter().find(|a| !a.ip().is_loopback()) {
        return Err(refuse(&format!("resolves to non-loopback {}", bad.ip())));
    }
    // Prefer IPv4 loopback: brokers here listen on 127.0.0.1.
    Ok(*addrs.iter().find(|a| a.is_ipv4()).unwrap_or(&addrs[0]))
}

fn broker_name(cli: &Cli) -> String {
    if let Some(name) = &cli.broker {
        return name.clone();
    }
    cli.broker_pid
        .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}

impl Cli {
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let addr = loopback_addr(&self.host, self.port)?;
        let sub_addr = match self.sub_port {
            Some(port) => loopback_addr(&self.host, port)?,
            None => addr,
        };
        let mut connect_addrs = vec![addr];
        for &port in &self.spread_ports {
            connect_addrs.push(loopback_addr(&self.host, port)?);
        }
        if self.payload < HEADER_LEN {
            bail!(
                "--payload must be at least {HEADER_LEN} bytes (the header every message carries)"
            );
        }
        if self.payload > 64 * 1024 * 1024 {
            bail!("--payload is limited to 64 MiB");
        }
        if self.inflight == 0 || self.inflight > 65_535 {
            bail!("--inflight must be within 1..=65535");
        }
        if self.count == 0 {
            bail!("--count must be at least 1");
        }
        if !(self.timeout > 0.0 && self.timeout.is_finite()) {
            bail!("--timeout must be a positive number of seconds");
        }
        if let Some(rate) = self.rate {
            if !(rate > 0.0 && rate.is_finite()) {
                bail!("--rate must be a positive number of messages per second");
            }
        }
        let s = self.scenario;
        let only = |set: bool, flag: &str, scenarios: &str| {
            if set {
                bail!(
                    "{flag} does not apply to {} (only to {scenarios})",
                    s.name()
                );
            }
            Ok(())
        };
        let positive = |v: u32, flag: &str| {
            if v == 0 {
                bail!("{flag} must be at least 1");
            }
            Ok(v)
        };
        only(
            self.publishers.is_some() && s != Scenario::Fanin,
            "--publishers",
            "fanin",
        )?;
        only(
            self.subscribers.is_some() && s != Scenario::Fanout,
            "--subscribers",
            "fanout",
        )?;
        only(
            self.pairs.is_some() && s != Scenario::Pairs,
            "--pairs",
            "pairs",
        )?;
        let connect_only = self.connections.is_some() || self.concurrency.is_some();
        only(
            connect_only && s != Scenario::Connect,
            "--connections/--concurrency",
            "connect",
        )?;
        only(
            self.rate.is_some() && matches!(s, Scenario::Connect | Scenario::Takeover),
            "--rate",
            "fanin, fanout, pairs",
        )?;
        only(
            !self.spread_ports.is_empty() && s != Scenario::Connect,
            "--spread-ports",
            "connect",
        )?;
        only(
            self.sub_port.is_some() && s == Scenario::Connect,
            "--sub-port",
            "fanin, fanout, pairs, takeover",
        )?;
        let (publishers, subscribers) = match s {
            Scenario::Fanin => (positive(self.publishers.unwrap_or(4), "--publishers")?, 1),
            Scenario::Fanout => (
                1,
                positive(self.subscribers.unwrap_or(10), "--subscribers")?,
            ),
            Scenario::Pairs => {
                let n = positive(self.pairs.unwrap_or(100), "--pairs")?;
                (n, n)
            }
            Scenario::Connect | Scenario::Takeover => (0, 0),
        };
        let connections = positive(self.connections.unwrap_or(1000), "--connections")?;
        let concurrency = positive(self.concurrency.unwrap_or(100), "--concurrency")?;
        if s == Scenario::Connect && self.broker_pid.is_none() && self.spread_ports.is_empty() {
            bail!("connect needs --broker-pid PID to measure the broker's RSS");
        }
        Ok(Settings {
            scenario: s,
            addr,
            sub_addr,
            connect_addrs,
            qos: self.qos,
            payload: self.payload,
            inflight: self.inflight,
            count: self.count,
            publishers,
            subscribers,
            connections,
            concurrency,
            rate: self.rate,
            timeout: Duration::from_secs_f64(self.timeout),
            json: self.json,
            broker_pid: self.broker_pid,
            broker: broker_name(self),
            keepalive: self.keepalive,
            hold: Duration::from_secs_f64(self.hold.max(0.0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> anyhow::Result<Settings> {
        let mut all = vec!["skein-bench"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all)?.settings()
    }

    #[test]
    fn loopback_only() {
        assert!(loopback_addr("127.0.0.1", 1).is_ok());
        assert!(loopback_addr("127.3.2.1", 1).is_ok());
        assert!(loopback_addr("::1", 1).is_ok());
        assert!(loopback_addr("[::1]", 1).is_ok());
        assert!(loopback_addr("localhost", 1).unwrap().ip().is_loopback());
        for bad in ["10.0.0.1", "192.168.1.1", "8.8.8.8", "0.0.0.0", "::"] {
            let err = loopback_addr(bad, 1).unwrap_err().to_string();
            assert!(err.contains("only targets loopback"), "{bad}: {err}");
        }
    }

    #[test]
    fn scenario_defaults() {
        let s = parse(&["fanin"]).unwrap();
        assert_eq!(
            (s.publishers, s.subscribers, s.payload, s.inflight),
            (4, 1, 64, 100)
        );
        let s = parse(&["fanout", "--subscribers", "20"]).unwrap();
        assert_eq!((s.publishers, s.subscribers), (1, 20));
        let s = parse(&["pairs", "--pairs", "7", "--qos", "2"]).unwrap();
        assert_eq!((s.publishers, s.subscribers, s.qos), (7, 7, 2));
        let s = parse(&["connect", "--broker-pid", "1", "--broker", "x"]).unwrap();
        assert_eq!(
            (s.connections, s.concurrency, s.broker.as_str()),
            (1000, 100, "x")
        );
    }

    #[test]
    fn contradictions_are_refused() {
        assert!(parse(&["fanin", "--subscribers", "2"]).is_err());
        assert!(parse(&["fanout", "--publishers", "2"]).is_err());
        assert!(parse(&["pairs", "--connections", "2"]).is_err());
        assert!(parse(&["connect"]).is_err()); // no --broker-pid
        assert!(parse(&["fanin", "--payload", "19"]).is_err());
        assert!(parse(&["fanin", "--qos", "3"]).is_err());
        assert!(parse(&["fanin", "--inflight", "0"]).is_err());
        assert!(parse(&["fanin", "--rate", "0"]).is_err());
        assert!(parse(&["fanin", "--host", "10.1.1.1"]).is_err());
        assert!(parse(&["fanin", "--spread-ports", "1,2"]).is_err());
        assert!(parse(&["connect", "--broker-pid", "1", "--sub-port", "2"]).is_err());
        assert!(parse(&["takeover", "--rate", "5"]).is_err());
    }

    #[test]
    fn cluster_ports() {
        let s = parse(&["fanin", "--port", "1883", "--sub-port", "1884"]).unwrap();
        assert_eq!((s.addr.port(), s.sub_addr.port()), (1883, 1884));
        let s = parse(&["pairs"]).unwrap();
        assert_eq!(s.sub_addr, s.addr);
        // Spread over a cluster, a connect run needs no pid: RSS is not measured.
        let s = parse(&["connect", "--port", "1883", "--spread-ports", "1884,1885"]).unwrap();
        let ports: Vec<u16> = s.connect_addrs.iter().map(|a| a.port()).collect();
        assert_eq!(ports, [1883, 1884, 1885]);
        let s = parse(&[
            "takeover",
            "--port",
            "1883",
            "--sub-port",
            "1884",
            "--count",
            "9",
        ])
        .unwrap();
        assert_eq!((s.count, s.sub_addr.port()), (9, 1884));
    }
}
