//! Per-model request and token limits over a sliding one-minute window, like a provider's
//! rpm/tpm quotas, so that clients' back-off and retry logic can be exercised.
//!
//! The limiter is a plain data structure that is handed the current time, so it can be tested
//! without waiting.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::faults::Fault;

const WINDOW: Duration = Duration::from_secs(60);

/// Sliding-window rpm/tpm limiter. Only admitted calls count against the window.
#[derive(Debug, Default)]
pub struct RateLimiter {
    rpm: Option<u32>,
    tpm: Option<u32>,
    /// Per model: when each admitted call happened and how many tokens it used, oldest first.
    windows: HashMap<String, VecDeque<(Instant, u32)>>,
}

impl RateLimiter {
    pub fn new(rpm: Option<u32>, tpm: Option<u32>) -> Self {
        Self {
            rpm,
            tpm,
            windows: HashMap::new(),
        }
    }

    /// Admits a call of `tokens` tokens to `model` at `now`, or says which limit it hits and
    /// how many whole seconds (at least 1) until it would fit.
    pub fn admit(&mut self, model: &str, tokens: u32, now: Instant) -> Result<(), Fault> {
        if self.rpm.is_none() && self.tpm.is_none() {
            return Ok(());
        }
        let window = self.windows.entry(model.to_owned()).or_default();
        while window
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) >= WINDOW)
        {
            window.pop_front();
        }

        if let Some(rpm) = self.rpm.filter(|&rpm| window.len() >= rpm as usize) {
            // Enough of the oldest calls must expire to leave room for one more.
            let must_expire = window.len() + 1 - rpm as usize;
            let wait = wait_until_expired(window, must_expire, now);
            return Err(Fault::RequestLimit {
                retry_after_secs: wait,
            });
        }
        if let Some(tpm) = self.tpm {
            let used: u64 = window.iter().map(|(_, t)| u64::from(*t)).sum();
            let excess = (used + u64::from(tokens)).saturating_sub(u64::from(tpm));
            if excess > 0 {
                let wait = if u64::from(tokens) > u64::from(tpm) {
                    whole_seconds(WINDOW) // never fits: ask for a full window
                } else {
                    // The oldest calls whose tokens add up to the excess must expire.
                    let (mut freed, mut must_expire) = (0u64, 0usize);
                    for (_, used_by_call) in window.iter() {
                        if freed >= excess {
                            break;
                        }
                        freed += u64::from(*used_by_call);
                        must_expire += 1;
                    }
                    wait_until_expired(window, must_expire, now)
                };
                return Err(Fault::TokenLimit {
                    retry_after_secs: wait,
                });
            }
        }
        window.push_back((now, tokens));
        Ok(())
    }
}

/// Seconds until the `count` oldest entries of `window` have left it.
fn wait_until_expired(window: &VecDeque<(Instant, u32)>, count: usize, now: Instant) -> u32 {
    match count.checked_sub(1).and_then(|i| window.get(i)) {
        Some((at, _)) => whole_seconds((*at + WINDOW).saturating_duration_since(now)),
        None => 1,
    }
}

/// Rounds up to whole seconds, at least 1 (a `Retry-After` of 0 invites a hot loop).
fn whole_seconds(duration: Duration) -> u32 {
    let secs = duration.as_secs() + u64::from(duration.subsec_nanos() > 0);
    u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unlimited_admits_everything() {
        let mut limiter = RateLimiter::new(None, None);
        let now = Instant::now();
        assert!((0..1000).all(|_| limiter.admit("m", 1_000_000, now).is_ok()));
    }

    #[test]
    fn rpm_limits_per_model_and_slides() {
        let mut limiter = RateLimiter::new(Some(2), None);
        let t0 = Instant::now();
        assert!(limiter.admit("m", 10, t0).is_ok());
        assert!(limiter.admit("m", 10, t0 + Duration::from_secs(10)).is_ok());
        assert_eq!(
            limiter.admit("m", 10, t0 + Duration::from_millis(20_500)),
            Err(Fault::RequestLimit {
                retry_after_secs: 40
            })
        );
        assert!(limiter.admit("other", 10, t0).is_ok());
        // The first call leaves the window after 60 s.
        assert!(limiter.admit("m", 10, t0 + Duration::from_secs(60)).is_ok());
        assert_eq!(
            limiter.admit("m", 10, t0 + Duration::from_secs(60)),
            Err(Fault::RequestLimit {
                retry_after_secs: 10
            })
        );
    }

    #[test]
    fn tpm_counts_tokens() {
        let mut limiter = RateLimiter::new(None, Some(100));
        let t0 = Instant::now();
        assert!(limiter.admit("m", 40, t0).is_ok());
        assert!(limiter.admit("m", 40, t0 + Duration::from_secs(30)).is_ok());
        // 80 used, 30 more would be 110: the first call (40) must expire, at t0 + 60.
        assert_eq!(
            limiter.admit("m", 30, t0 + Duration::from_secs(45)),
            Err(Fault::TokenLimit {
                retry_after_secs: 15
            })
        );
        assert!(limiter.admit("m", 20, t0 + Duration::from_secs(45)).is_ok());
        // Larger than the whole quota: a full window.
        assert_eq!(
            limiter.admit("m", 500, t0 + Duration::from_secs(45)),
            Err(Fault::TokenLimit {
                retry_after_secs: 60
            })
        );
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        let mut limiter = RateLimiter::new(Some(1), None);
        let t0 = Instant::now();
        assert!(limiter.admit("m", 1, t0).is_ok());
        assert_eq!(
            limiter.admit("m", 1, t0 + Duration::from_millis(59_999)),
            Err(Fault::RequestLimit {
                retry_after_secs: 1
            })
        );
    }
}
