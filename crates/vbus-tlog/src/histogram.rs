//! Latency counts in power-of-two buckets of nanoseconds, updated with relaxed atomics from any
//! thread; percentiles are read as the upper bound of the bucket they fall in (at most 2x high).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Buckets: `[0, 1) ns`, then `[2^(i-1), 2^i)` ns up to about 9 minutes; longer goes in the last.
const N_BUCKETS: usize = 40;

/// A latency histogram.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; N_BUCKETS],
    count: AtomicU64,
    total_ns: AtomicU64,
    max_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            total_ns: AtomicU64::new(0),
            max_ns: AtomicU64::new(0),
        }
    }
}

/// Count, mean and percentiles of a [`Histogram`], in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LatencySummary {
    /// Samples recorded.
    pub count: u64,
    /// Mean.
    pub mean_ns: f64,
    /// Median (bucket upper bound).
    pub p50_ns: u64,
    /// 99th percentile (bucket upper bound).
    pub p99_ns: u64,
    /// 99.9th percentile (bucket upper bound).
    pub p999_ns: u64,
    /// The largest sample.
    pub max_ns: u64,
}

impl Histogram {
    /// Records one sample.
    pub fn record(&self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        let bucket = ((u64::BITS - ns.leading_zeros()) as usize).min(N_BUCKETS - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// The figures so far.
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|bucket| bucket.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        if count == 0 {
            return LatencySummary::default();
        }
        let max_ns = self.max_ns.load(Ordering::Relaxed);
        let percentile = |fraction: f64| {
            let rank = ((count as f64 * fraction).ceil() as u64).max(1);
            let mut seen = 0;
            for (bucket, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    let upper = if bucket == 0 { 0 } else { (1u64 << bucket) - 1 };
                    return upper.min(max_ns);
                }
            }
            max_ns
        };
        LatencySummary {
            count,
            mean_ns: self.total_ns.load(Ordering::Relaxed) as f64 / count as f64,
            p50_ns: percentile(0.50),
            p99_ns: percentile(0.99),
            p999_ns: percentile(0.999),
            max_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_fall_in_the_right_buckets() {
        let histogram = Histogram::default();
        for _ in 0..990 {
            histogram.record(Duration::from_nanos(100));
        }
        for _ in 0..10 {
            histogram.record(Duration::from_micros(50));
        }
        let summary = histogram.summary();
        assert_eq!(summary.count, 1000);
        // 100 ns lies in [64, 128): reported as 127.
        assert_eq!(summary.p50_ns, 127);
        assert_eq!(summary.p99_ns, 127);
        // 50 µs lies in [32768, 65536): capped by the max.
        assert_eq!(summary.p999_ns, 50_000);
        assert_eq!(summary.max_ns, 50_000);
        assert!((summary.mean_ns - (990.0 * 100.0 + 10.0 * 50_000.0) / 1000.0).abs() < 1e-6);
        assert_eq!(Histogram::default().summary(), LatencySummary::default());
    }
}
