//! A token bucket for what a guest can trigger on the host (events, log
//! lines): bursts up to `burst`, then `per_sec` a second.

use std::time::Instant;

#[derive(Debug)]
pub struct RateLimit {
    burst: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
    /// Refused since the last allowed one.
    dropped: u64,
}

impl RateLimit {
    pub fn new(burst: u32, per_sec: u32) -> RateLimit {
        RateLimit {
            burst: burst as f64,
            per_sec: per_sec as f64,
            tokens: burst as f64,
            last: Instant::now(),
            dropped: 0,
        }
    }

    /// Takes a token at `now`. `Some(n)`: allowed, after `n` refused ones.
    pub fn allow_at(&mut self, now: Instant) -> Option<u64> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * self.per_sec).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.dropped))
        } else {
            self.dropped += 1;
            None
        }
    }

    pub fn allow(&mut self) -> Option<u64> {
        self.allow_at(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(3, 2);
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), Some(0));
        assert_eq!(r.allow_at(t0), None);
        assert_eq!(r.allow_at(t0), None);
        // Half a second later one token is back, and it says what was lost.
        assert_eq!(r.allow_at(t0 + Duration::from_millis(500)), Some(2));
        assert_eq!(r.allow_at(t0 + Duration::from_millis(500)), None);
        // A flood of 10 000 within one second lets through burst + rate.
        let mut r = RateLimit::new(10, 5);
        let allowed = (0..10_000)
            .filter(|i| r.allow_at(t0 + Duration::from_micros(*i * 100)).is_some())
            .count();
        assert!((10..=16).contains(&allowed), "{allowed}");
    }
}
