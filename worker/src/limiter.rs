//! Provider quota, per model and per process: requests per minute and tokens per minute with
//! `governor`, plus a pause that a 429's `Retry-After` sets for every call to that model in
//! this process (not just the call that saw it).
//!
//! Bursts are kept small (a twentieth of the minute's quota): providers enforce sub-minute
//! windows, and a full-minute burst at start-up is what earns 429s.

use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// The quota of one model.
#[derive(Debug)]
pub struct ModelLimiter {
    requests: Option<DefaultDirectRateLimiter>,
    tokens: Option<DefaultDirectRateLimiter>,
    token_burst: u32,
    paused_until: Mutex<Option<Instant>>,
}

fn burst(per_minute: NonZeroU32) -> NonZeroU32 {
    NonZeroU32::new((per_minute.get() / 20).max(1)).unwrap_or(NonZeroU32::MIN)
}

impl ModelLimiter {
    /// A limiter for `rpm` requests and `tpm` tokens per minute (either may be unlimited).
    pub fn new(rpm: Option<NonZeroU32>, tpm: Option<NonZeroU32>) -> Self {
        let requests = rpm.map(|r| RateLimiter::direct(Quota::per_minute(r).allow_burst(burst(r))));
        let token_burst = tpm.map(|t| burst(t).get()).unwrap_or(u32::MAX);
        let tokens = tpm.map(|t| RateLimiter::direct(Quota::per_minute(t).allow_burst(burst(t))));
        Self {
            requests,
            tokens,
            token_burst,
            paused_until: Mutex::new(None),
        }
    }

    /// Waits until a request of about `tokens` tokens may be sent. Returns how long it
    /// waited (zero when quota was free).
    pub async fn acquire(&self, tokens: u32) -> Duration {
        let started = Instant::now();
        loop {
            let pause = self.paused_until.lock().ok().and_then(|g| *g);
            match pause {
                Some(until) if until > Instant::now() => {
                    tokio::time::sleep_until(until.into()).await;
                }
                _ => break,
            }
        }
        if let Some(r) = &self.requests {
            r.until_ready().await;
        }
        if let Some(t) = &self.tokens {
            // A request larger than the burst waits for the whole burst instead.
            let n = NonZeroU32::new(tokens.clamp(1, self.token_burst)).unwrap_or(NonZeroU32::MIN);
            let _ = t.until_n_ready(n).await;
        }
        started.elapsed()
    }

    /// Stops every call to this model until `after` from now (a 429's `Retry-After`).
    pub fn pause_for(&self, after: Duration) {
        let until = Instant::now() + after;
        if let Ok(mut g) = self.paused_until.lock()
            && g.is_none_or(|cur| cur < until)
        {
            *g = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn unlimited_never_waits_and_pause_delays_everyone() {
        let l = ModelLimiter::new(None, None);
        assert!(l.acquire(10).await < Duration::from_millis(5));
        l.pause_for(Duration::from_millis(30));
        assert!(l.acquire(1).await >= Duration::from_millis(25));
    }

    #[tokio::test]
    async fn request_quota_spaces_calls() {
        // 1200/min = one every 50 ms, burst 60: the 61st call waits.
        let l = ModelLimiter::new(NonZeroU32::new(1200), None);
        let mut waited = Duration::ZERO;
        for _ in 0..61 {
            waited += l.acquire(1).await;
        }
        assert!(waited >= Duration::from_millis(30), "{waited:?}");
    }
}
