//! What a measurement is made of: the header every payload carries, exact loss and
//! duplicate accounting from per-publisher sequence numbers, and latency histograms.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Bytes of the header at the front of every payload: send time (u64 nanoseconds since
/// the process epoch), publisher index (u32), sequence number (u64), all big-endian.
pub const HEADER_LEN: usize = 8 + 4 + 8;

/// The process-local monotonic epoch the timestamps count from. Publishers and
/// subscribers live in the same process, so their clocks agree.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds from the epoch to `at` (0 if `at` is earlier).
pub fn nanos_since_epoch(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_nanos() as u64
}

pub fn now_nanos() -> u64 {
    nanos_since_epoch(Instant::now())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadHeader {
    pub sent_ns: u64,
    pub publisher: u32,
    pub seq: u64,
}

impl PayloadHeader {
    pub fn write(&self, out: &mut [u8; HEADER_LEN]) {
        out[0..8].copy_from_slice(&self.sent_ns.to_be_bytes());
        out[8..12].copy_from_slice(&self.publisher.to_be_bytes());
        out[12..20].copy_from_slice(&self.seq.to_be_bytes());
    }

    pub fn read(payload: &[u8]) -> Option<PayloadHeader> {
        let b = payload.get(..HEADER_LEN)?;
        Some(PayloadHeader {
            sent_ns: u64::from_be_bytes(b[0..8].try_into().ok()?),
            publisher: u32::from_be_bytes(b[8..12].try_into().ok()?),
            seq: u64::from_be_bytes(b[12..20].try_into().ok()?),
        })
    }
}

/// Which of one publisher's `expected` sequence numbers (0..expected) arrived: a bitmap.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    bits: Vec<u64>,
    expected: u64,
    unique: u64,
    duplicates: u64,
}

impl SeqTracker {
    pub fn new(expected: u64) -> SeqTracker {
        SeqTracker {
            bits: vec![0; expected.div_ceil(64) as usize],
            expected,
            unique: 0,
            duplicates: 0,
        }
    }

    /// Marks `seq` received; false if it is out of range (the caller counts it apart).
    pub fn record(&mut self, seq: u64) -> bool {
        if seq >= self.expected {
            return false;
        }
        let word = &mut self.bits[(seq / 64) as usize];
        let mask = 1u64 << (seq % 64);
        if *word & mask != 0 {
            self.duplicates += 1;
        } else {
            *word |= mask;
            self.unique += 1;
        }
        true
    }

    pub fn unique(&self) -> u64 {
        self.unique
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub fn lost(&self) -> u64 {
        self.expected - self.unique
    }
}

/// One subscriber's accounting: a tracker for each publisher it should hear from.
#[derive(Debug, Clone)]
pub struct Deliveries {
    trackers: Vec<Option<SeqTracker>>,
    /// Deliveries whose header was unreadable, from a publisher not expected here, or with
    /// a sequence number beyond the count.
    pub unexpected: u64,
}

/// Totals over one or more subscribers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Accounting {
    pub expected: u64,
    pub unique: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub unexpected: u64,
}

impl Deliveries {
    /// Expects `count` messages from each publisher index in `publishers` (out of
    /// `total_publishers`).
    pub fn new(
        publishers: impl IntoIterator<Item = u32>,
        total_publishers: u32,
        count: u64,
    ) -> Self {
        let mut trackers = vec![None; total_publishers as usize];
        for p in publishers {
            trackers[p as usize] = Some(SeqTracker::new(count));
        }
        Deliveries {
            trackers,
            unexpected: 0,
        }
    }

    /// Records one delivery; true if it was a first copy of an expected message.
    pub fn record(&mut self, header: Option<PayloadHeader>) -> bool {
        let Some(h) = header else {
            self.unexpected += 1;
            return false;
        };
        match self.trackers.get_mut(h.publisher as usize) {
            Some(Some(t)) => {
                let before = t.unique();
                if !t.record(h.seq) {
                    self.unexpected += 1;
                }
                t.unique() > before
            }
            _ => {
                self.unexpected += 1;
                false
            }
        }
    }

    pub fn accounting(&self) -> Accounting {
        let mut a = Accounting {
            unexpected: self.unexpected,
            ..Accounting::default()
        };
        for t in self.trackers.iter().flatten() {
            a.expected += t.expected;
            a.unique += t.unique();
            a.lost += t.lost();
            a.duplicates += t.duplicates();
        }
        a
    }
}

impl std::ops::AddAssign for Accounting {
    fn add_assign(&mut self, o: Accounting) {
        self.expected += o.expected;
        self.unique += o.unique;
        self.lost += o.lost;
        self.duplicates += o.duplicates;
        self.unexpected += o.unexpected;
    }
}

/// A latency histogram in nanoseconds, 3 significant digits, up to ~18 minutes; larger
/// values saturate.
pub struct Latency(Histogram<u64>);

const LATENCY_MAX_NS: u64 = 1 << 40;

impl Latency {
    pub fn new() -> Latency {
        Latency(Histogram::new_with_bounds(1, LATENCY_MAX_NS, 3).expect("valid histogram bounds"))
    }

    pub fn record_ns(&mut self, ns: u64) {
        self.0.saturating_record(ns.max(1));
    }

    pub fn record(&mut self, d: Duration) {
        self.record_ns(d.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail.
        let _ = self.0.add(&other.0);
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let us = |ns: u64| ns as f64 / 1000.0;
        if self.0.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            p50_us: us(self.0.value_at_quantile(0.5)),
            p99_us: us(self.0.value_at_quantile(0.99)),
            p999_us: us(self.0.value_at_quantile(0.999)),
            max_us: us(self.0.max()),
        }
    }
}

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct LatencySummary {
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let h = PayloadHeader {
            sent_ns: 0x0102_0304_0506_0708,
            publisher: 77,
            seq: 1 << 40,
        };
        let mut buf = [0u8; HEADER_LEN];
        h.write(&mut buf);
        let mut payload = buf.to_vec();
        payload.extend_from_slice(&[0; 44]);
        assert_eq!(PayloadHeader::read(&payload), Some(h));
        assert_eq!(PayloadHeader::read(&payload[..HEADER_LEN - 1]), None);
    }

    #[test]
    fn tracker_counts_loss_and_duplicates_exactly() {
        let mut t = SeqTracker::new(130);
        for seq in 0..130 {
            if seq % 10 != 3 {
                assert!(t.record(seq));
            }
        }
        // Duplicates, including across word boundaries.
        for seq in [0, 62, 64, 127, 128, 129, 129] {
            assert!(t.record(seq));
        }
        assert!(!t.record(130));
        assert_eq!(t.unique(), 130 - 13);
        assert_eq!(t.lost(), 13);
        assert_eq!(t.duplicates(), 7);
    }

    #[test]
    fn deliveries_are_kept_per_publisher() {
        // Subscriber hears publishers 0 and 2 of 3, 4 messages each.
        let mut d = Deliveries::new([0, 2], 3, 4);
        let h = |publisher, seq| {
            Some(PayloadHeader {
                sent_ns: 0,
                publisher,
                seq,
            })
        };
        assert!(d.record(h(0, 0)));
        assert!(d.record(h(0, 1)));
        assert!(!d.record(h(0, 1))); // duplicate
        assert!(d.record(h(2, 3)));
        assert!(!d.record(h(1, 0))); // publisher not expected here
        assert!(!d.record(h(7, 0))); // unknown publisher
        assert!(!d.record(h(2, 4))); // sequence beyond the count
        assert!(!d.record(None)); // unreadable payload
        let a = d.accounting();
        assert_eq!(
            a,
            Accounting {
                expected: 8,
                unique: 3,
                lost: 5,
                duplicates: 1,
                unexpected: 4
            }
        );
        let mut total = a;
        total += a;
        assert_eq!(total.lost, 10);
        assert_eq!(total.expected, 16);
    }

    #[test]
    fn latency_quantiles_and_merge() {
        let mut a = Latency::new();
        for us in 1..=1000u64 {
            a.record_ns(us * 1000);
        }
        let mut b = Latency::new();
        b.record(Duration::from_millis(50));
        a.merge(&b);
        assert_eq!(a.count(), 1001);
        let s = a.summary();
        assert!((s.p50_us - 500.0).abs() < 2.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 2.0, "{s:?}");
        assert!((s.max_us - 50_000.0).abs() < 50.0, "{s:?}");
        assert_eq!(Latency::new().summary(), LatencySummary::default());
    }
}
