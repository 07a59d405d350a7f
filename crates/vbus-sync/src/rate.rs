//! Bandwidth limits: a byte budget per second shared by every transfer that passes through one
//! limiter (an agent's uploads, or its downloads).
//!
//! Each transfer reserves the next `n / rate` seconds of the limiter's timeline and waits until
//! its reservation starts, so over any stretch the bytes let through never exceed the rate times
//! the time since the first reservation plus one transfer (no credit is saved up while idle).
//! Waiting for the start, not the end, lets limits in series (a peer's upload, this agent's
//! download) pace a transfer together rather than one after the other.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

/// A bytes-per-second limit.
#[derive(Debug)]
pub struct RateLimiter {
    bytes_per_second: u64,
    /// When the timeline is free again.
    free_at: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_second`; `None` for 0 (no limit).
    pub fn new(bytes_per_second: u64) -> Option<Self> {
        (bytes_per_second > 0).then(|| Self {
            bytes_per_second,
            free_at: Mutex::new(Instant::now()),
        })
    }

    /// The limit.
    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_second
    }

    /// Waits until `n_bytes` may pass.
    pub fn acquire(&self, n_bytes: u64) {
        let span = Duration::from_secs_f64(n_bytes as f64 / self.bytes_per_second as f64);
        let until = {
            let mut free_at = self.free_at.lock();
            let start = (*free_at).max(Instant::now());
            *free_at = start + span;
            start
        };
        let now = Instant::now();
        if until > now {
            std::thread::sleep(until - now);
        }
    }
}

/// Waits on `limiter` when there is one.
pub fn acquire(limiter: Option<&RateLimiter>, n_bytes: u64) {
    if let Some(limiter) = limiter {
        limiter.acquire(n_bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_for_zero() {
        assert!(RateLimiter::new(0).is_none());
    }

    #[test]
    fn concurrent_transfers_share_the_rate() {
        // 4 threads × 5 × 50 KB = 1 MB at 2 MB/s: the last 50 KB start at least 475 ms in,
        // whatever the threads.
        let limiter = RateLimiter::new(2_000_000).unwrap();
        let started = Instant::now();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    for _ in 0..5 {
                        limiter.acquire(50_000);
                    }
                });
            }
        });
        let elapsed = started.elapsed();
        assert!(
            elapsed >= Duration::from_millis(470),
            "1 MB passed a 2 MB/s limit in {elapsed:?}"
        );
    }
}
