//! A lock-free "N events per second" limiter for log lines the guest can
//! trigger, usable in `static`s.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Allows at most `per_second` events in each wall-clock second.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: u32,
    second: AtomicU64,
    count: AtomicU32,
}

impl RateLimiter {
    /// A limiter that lets `per_second` events through each second.
    pub const fn new(per_second: u32) -> Self {
        RateLimiter {
            per_second,
            second: AtomicU64::new(0),
            count: AtomicU32::new(0),
        }
    }

    /// True when the caller may log now.
    pub fn allow(&self) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.allow_at(now)
    }

    fn allow_at(&self, now: u64) -> bool {
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < self.per_second
    }
}

/// Log with `tracing` through a per-call-site limiter.
#[macro_export]
macro_rules! limited {
    ($level:ident, $($arg:tt)+) => {{
        static LIMITER: $crate::rate_limit::RateLimiter = $crate::rate_limit::RateLimiter::new(10);
        if LIMITER.allow() {
            tracing::$level!($($arg)+);
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_second() {
        let l = RateLimiter::new(3);
        let allowed = (0..10).filter(|_| l.allow_at(100)).count();
        assert_eq!(allowed, 3);
        assert!(l.allow_at(101));
    }
}
