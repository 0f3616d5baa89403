//! Results: a human summary and exactly one JSON line.

use std::fmt::Write as _;

use serde_json::Value;

use crate::stats::{Accounting, LatencySummary};

/// Result of a fanin, fanout or pairs run.
#[derive(Debug, Clone, PartialEq)]
pub struct ThroughputReport {
    pub scenario: String,
    pub broker: String,
    pub qos: u8,
    pub publishers: u32,
    pub subscribers: u32,
    pub count: u64,
    pub payload: usize,
    pub inflight: u32,
    pub rate: Option<f64>,
    /// Publishes written by all publishers.
    pub sent: u64,
    /// Every delivery received, duplicates included.
    pub delivered: u64,
    pub accounting: Accounting,
    /// Seconds from the first publish to the last delivery.
    pub elapsed_s: f64,
    pub latency: LatencySummary,
    pub timed_out: bool,
}

impl ThroughputReport {
    pub fn msgs_per_sec(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.delivered as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    /// Everything expected arrived, nothing unexpected did, and the run was not cut short.
    pub fn complete(&self) -> bool {
        !self.timed_out && self.accounting.lost == 0 && self.sent == self.expected_sent()
    }

    fn expected_sent(&self) -> u64 {
        u64::from(self.publishers) * self.count
    }

    pub fn json(&self) -> String {
        let a = &self.accounting;
        json_line(&[
            ("scenario", self.scenario.as_str().into()),
            ("broker", self.broker.as_str().into()),
            ("qos", self.qos.into()),
            ("publishers", self.publishers.into()),
            ("subscribers", self.subscribers.into()),
            ("count", self.count.into()),
            ("payload", self.payload.into()),
            ("inflight", self.inflight.into()),
            ("rate", self.rate.map_or(Value::Null, num)),
            ("sent", self.sent.into()),
            ("expected", a.expected.into()),
            ("delivered", self.delivered.into()),
            ("msgs_per_sec", num(round(self.msgs_per_sec(), 1))),
            ("p50_us", num(round(self.latency.p50_us, 1))),
            ("p99_us", num(round(self.latency.p99_us, 1))),
            ("p999_us", num(round(self.latency.p999_us, 1))),
            ("max_us", num(round(self.latency.max_us, 1))),
            ("lost", a.lost.into()),
            ("duplicates", a.duplicates.into()),
            ("unexpected", a.unexpected.into()),
            ("elapsed_s", num(round(self.elapsed_s, 3))),
            ("complete", self.complete().into()),
            ("timed_out", self.timed_out.into()),
        ])
    }

    pub fn human(&self) -> String {
        let a = &self.accounting;
        let mut s = String::new();
        let shape = match self.scenario.as_str() {
            "fanin" => format!("{} publishers -> 1 subscriber", self.publishers),
            "fanout" => format!("1 publisher -> {} subscribers", self.subscribers),
            _ => format!("{} publisher/subscriber pairs", self.publishers),
        };
        let _ = writeln!(
            s,
            "{} against {}: {shape}, QoS {}, {} msgs/publisher, {} B payload, window {}",
            self.scenario, self.broker, self.qos, self.count, self.payload, self.inflight
        );
        if let Some(rate) = self.rate {
            let _ = writeln!(
                s,
                "  offered rate   {rate:.0} msgs/s (latency from scheduled send time)"
            );
        }
        let _ = writeln!(
            s,
            "  delivered      {} of {} expected ({} sent) in {:.3} s: {:.0} msgs/s",
            self.delivered,
            a.expected,
            self.sent,
            self.elapsed_s,
            self.msgs_per_sec()
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "  latency (us)   p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.p50_us, l.p99_us, l.p999_us, l.max_us
        );
        let _ = writeln!(
            s,
            "  lost {}  duplicates {}  unexpected {}",
            a.lost, a.duplicates, a.unexpected
        );
        let verdict = if self.timed_out {
            "INCOMPLETE: timed out"
        } else if self.complete() {
            "complete"
        } else {
            "INCOMPLETE: messages lost"
        };
        let _ = writeln!(s, "  {verdict}");
        s
    }
}

/// Result of a connect run.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectReport {
    pub broker: String,
    pub connections: u32,
    pub concurrency: u32,
    pub connected: u32,
    pub failed: u32,
    /// Seconds from the first connection attempt to the last CONNACK.
    pub elapsed_s: f64,
    /// CONNECT -> CONNACK, including the TCP handshake.
    pub latency: LatencySummary,
    pub rss_before_kib: Option<u64>,
    pub rss_after_kib: Option<u64>,
    pub timed_out: bool,
}

impl ConnectReport {
    pub fn connects_per_sec(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            f64::from(self.connected) / self.elapsed_s
        } else {
            0.0
        }
    }

    pub fn rss_per_conn_bytes(&self) -> Option<f64> {
        let (before, after) = (self.rss_before_kib?, self.rss_after_kib?);
        if self.connected == 0 {
            return None;
        }
        Some((after as f64 - before as f64) * 1024.0 / f64::from(self.connected))
    }

    pub fn complete(&self) -> bool {
        !self.timed_out && self.connected == self.connections
    }

    pub fn json(&self) -> String {
        let opt = |v: Option<u64>| v.map_or(Value::Null, Value::from);
        json_line(&[
            ("scenario", "connect".into()),
            ("broker", self.broker.as_str().into()),
            ("qos", Value::Null),
            ("connections", self.connections.into()),
            ("concurrency", self.concurrency.into()),
            ("connected", self.connected.into()),
            ("failed", self.failed.into()),
            ("connects_per_sec", num(round(self.connects_per_sec(), 1))),
            ("p50_us", num(round(self.latency.p50_us, 1))),
            ("p99_us", num(round(self.latency.p99_us, 1))),
            ("p999_us", num(round(self.latency.p999_us, 1))),
            ("max_us", num(round(self.latency.max_us, 1))),
            ("rss_before_kib", opt(self.rss_before_kib)),
            ("rss_after_kib", opt(self.rss_after_kib)),
            (
                "rss_per_conn_bytes",
                self.rss_per_conn_bytes()
                    .map_or(Value::Null, |b| num(round(b, 0))),
            ),
            ("elapsed_s", num(round(self.elapsed_s, 3))),
            ("complete", self.complete().into()),
            ("timed_out", self.timed_out.into()),
        ])
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "connect against {}: {} connections, {} at a time",
            self.broker, self.connections, self.concurrency
        );
        let _ = writeln!(
            s,
            "  connected      {} ({} failed) in {:.3} s: {:.0} connects/s",
            self.connected,
            self.failed,
            self.elapsed_s,
            self.connects_per_sec()
        );
        let l = &self.latency;
        let _ = writeln!(
            s,
            "  connect (us)   p50 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
            l.p50_us, l.p99_us, l.p999_us, l.max_us
        );
        let kib = |v: Option<u64>| v.map_or("?".to_string(), |v| format!("{v} KiB"));
        let per = self
            .rss_per_conn_bytes()
            .map_or("?".to_string(), |b| format!("{b:.0} B"));
        let _ = writeln!(
            s,
            "  broker RSS     {} -> {}: {per} per idle connection",
            kib(self.rss_before_kib),
            kib(self.rss_after_kib)
        );
        let verdict = if self.timed_out {
            "INCOMPLETE: timed out"
        } else if self.complete() {
            "complete"
        } else {
            "INCOMPLETE: connections failed"
        };
        let _ = writeln!(s, "  {verdict}");
        s
    }
}

/// Result of a takeover run.
#[derive(Debug, Clone, PartialEq)]
pub struct TakeoverReport {
    pub broker: String,
    /// Takeovers asked for.
    pub count: u64,
    /// Takeovers attempted before the run ended.
    pub done: u64,
    pub failed: u64,
    /// Second CONNECT sent -> first connection closed by the broker.
    pub close_latency: LatencySummary,
    /// Second CONNECT sent -> its CONNACK (TCP handshake included).
    pub connack_latency: LatencySummary,
    pub timed_out: bool,
}

impl TakeoverReport {
    pub fn complete(&self) -> bool {
        !self.timed_out && self.failed == 0 && self.done == self.count
    }

    pub fn json(&self) -> String {
        let (c, a) = (&self.close_latency, &self.connack_latency);
        json_line(&[
            ("scenario", "takeover".into()),
            ("broker", self.broker.as_str().into()),
            ("count", self.count.into()),
            ("done", self.done.into()),
            ("failed", self.failed.into()),
            ("p50_us", num(round(c.p50_us, 1))),
            ("p99_us", num(round(c.p99_us, 1))),
            ("max_us", num(round(c.max_us, 1))),
            ("connack_p50_us", num(round(a.p50_us, 1))),
            ("connack_p99_us", num(round(a.p99_us, 1))),
            ("complete", self.complete().into()),
            ("timed_out", self.timed_out.into()),
        ])
    }

    pub fn human(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "takeover against {}: {} of {} done, {} failed",
            self.broker, self.done, self.count, self.failed
        );
        for (what, l) in [
            ("old closed (us)", &self.close_latency),
            ("new CONNACK (us)", &self.connack_latency),
        ] {
            let _ = writeln!(
                s,
                "  {what:<17} p50 {:.1}  p99 {:.1}  max {:.1}",
                l.p50_us, l.p99_us, l.max_us
            );
        }
        let verdict = if self.complete() {
            "complete"
        } else {
            "INCOMPLETE"
        };
        let _ = writeln!(s, "  {verdict}");
        s
    }
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

/// A finite number as JSON (non-finite becomes null).
fn num(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// One JSON object on one line, keys in the given order.
fn json_line(fields: &[(&str, Value)]) -> String {
    let mut out = String::from("{");
    for (i, (k, v)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(*k).to_string());
        out.push(':');
        out.push_str(&v.to_string());
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throughput() -> ThroughputReport {
        ThroughputReport {
            scenario: "fanin".into(),
            broker: "mosquitto \"2\"".into(),
            qos: 1,
            publishers: 4,
            subscribers: 1,
            count: 100,
            payload: 64,
            inflight: 100,
            rate: None,
            sent: 400,
            delivered: 401,
            accounting: Accounting {
                expected: 400,
                unique: 398,
                lost: 2,
                duplicates: 3,
                unexpected: 0,
            },
            elapsed_s: 0.5,
            latency: LatencySummary {
                p50_us: 12.34,
                p99_us: 99.0,
                p999_us: 150.0,
                max_us: 200.0,
            },
            timed_out: false,
        }
    }

    #[test]
    fn throughput_json_is_one_parseable_line() {
        let r = throughput();
        let line = r.json();
        assert!(!line.contains('\n'));
        assert!(line.starts_with("{\"scenario\":\"fanin\",\"broker\":"));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["broker"], "mosquitto \"2\"");
        assert_eq!(v["qos"], 1);
        assert_eq!(v["msgs_per_sec"], 802.0);
        assert_eq!(v["p50_us"], 12.3);
        assert_eq!(v["lost"], 2);
        assert_eq!(v["duplicates"], 3);
        assert_eq!(v["rate"], Value::Null);
        assert_eq!(v["complete"], false);
        assert!(r.human().contains("INCOMPLETE: messages lost"));
    }

    #[test]
    fn complete_needs_everything_sent_and_nothing_lost() {
        let mut r = throughput();
        r.accounting.lost = 0;
        assert!(r.complete());
        r.sent = 399;
        assert!(!r.complete());
        r.sent = 400;
        r.timed_out = true;
        assert!(!r.complete());
        r.rate = Some(1000.0);
        let v: Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["rate"], 1000.0);
        assert_eq!(v["timed_out"], true);
    }

    #[test]
    fn connect_json_and_rss_per_connection() {
        let r = ConnectReport {
            broker: "skein".into(),
            connections: 1000,
            concurrency: 100,
            connected: 1000,
            failed: 0,
            elapsed_s: 0.25,
            latency: LatencySummary::default(),
            rss_before_kib: Some(10_000),
            rss_after_kib: Some(20_000),
            timed_out: false,
        };
        let v: Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["scenario"], "connect");
        assert_eq!(v["connects_per_sec"], 4000.0);
        assert_eq!(v["rss_per_conn_bytes"], 10240.0);
        assert_eq!(v["complete"], true);
        let none = ConnectReport {
            rss_after_kib: None,
            ..r
        };
        let v: Value = serde_json::from_str(&none.json()).unwrap();
        assert_eq!(v["rss_per_conn_bytes"], Value::Null);
    }
}
