//! Provider quota, per model: requests per minute and tokens per minute with `governor`,
//! plus a pause that a 429's `Retry-After` sets for every call to that model.
//!
//! The configured `rpm`/`tpm` are the provider's quota for the whole fleet (with
//! `[worker] fleet_quota`, the default): [`crate::quota`] counts the live worker processes
//! calling the model and each takes `quota × headroom / live` ([`ModelLimiter::set_peers`]).
//! A 429 pauses the model here and, through the coordinator, in every other process.
//!
//! Requests are evenly spaced (no burst) and tokens may burst by about a second of this
//! process's share: providers enforce sub-minute windows, and a burst on top of the steady
//! rate is what earns 429s.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use governor::{DefaultDirectRateLimiter as Limiter, Quota, RateLimiter};

/// A pause to tell the rest of the fleet about.
#[derive(Debug, Clone)]
pub struct PauseNotice {
    pub model: String,
    pub retry_after: Duration,
}

#[derive(Debug)]
struct Limiters {
    requests: Option<Limiter>,
    tokens: Option<Limiter>,
    token_burst: u32,
}

/// The quota of one model, as this process applies it.
#[derive(Debug)]
pub struct ModelLimiter {
    model: String,
    rpm: Option<NonZeroU32>,
    tpm: Option<NonZeroU32>,
    headroom: f64,
    peers: AtomicU32,
    limiters: RwLock<Arc<Limiters>>,
    paused_until: Mutex<Option<Instant>>,
    broadcast: OnceLock<tokio::sync::mpsc::UnboundedSender<PauseNotice>>,
}

/// A rate of `per_minute` with a burst of about one second of it (at least 1).
fn quota(per_minute: f64) -> Option<(Quota, u32)> {
    if per_minute.is_nan() || per_minute < 1e-6 {
        return None;
    }
    let period = Duration::from_secs_f64(60.0 / per_minute);
    let burst = ((per_minute / 60.0).ceil() as u32).max(1);
    let q = Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?);
    Some((q, burst))
}

fn build(rpm: Option<NonZeroU32>, tpm: Option<NonZeroU32>, fraction: f64) -> Limiters {
    // Requests are evenly spaced, no burst: a burst on top of the steady rate is exactly what
    // overflows a provider's sliding window (each process's burst is refilled by every pause,
    // so bursts after a 429 would earn the next 429).
    let requests = rpm
        .and_then(|r| quota(f64::from(r.get()) * fraction))
        .and_then(|(q, _)| Some(RateLimiter::direct(q.allow_burst(NonZeroU32::new(1)?))));
    let (tokens, token_burst) = match tpm.and_then(|t| quota(f64::from(t.get()) * fraction)) {
        Some((q, burst)) => (Some(RateLimiter::direct(q)), burst),
        None => (None, u32::MAX),
    };
    Limiters {
        requests,
        tokens,
        token_burst,
    }
}

impl ModelLimiter {
    /// A limiter for `rpm` requests and `tpm` tokens per minute (either may be unlimited),
    /// of which this process uses `headroom` (e.g. 0.985) divided among its peers.
    pub fn new(
        model: &str,
        rpm: Option<NonZeroU32>,
        tpm: Option<NonZeroU32>,
        headroom: f64,
    ) -> Self {
        Self {
            model: model.to_owned(),
            rpm,
            tpm,
            headroom,
            peers: AtomicU32::new(1),
            limiters: RwLock::new(Arc::new(build(rpm, tpm, headroom))),
            paused_until: Mutex::new(None),
            broadcast: OnceLock::new(),
        }
    }

    /// Sets how many live processes (this one included) share the quota, rebuilding the
    /// rate limiters when it changed.
    pub fn set_peers(&self, live: u32) {
        let live = live.max(1);
        if self.peers.swap(live, Ordering::Relaxed) == live {
            return;
        }
        let fresh = Arc::new(build(self.rpm, self.tpm, self.headroom / f64::from(live)));
        if let Ok(mut l) = self.limiters.write() {
            *l = fresh;
        }
        tracing::debug!(model = %self.model, live, "quota share changed");
    }

    /// How many processes share the quota now.
    pub fn peers(&self) -> u32 {
        self.peers.load(Ordering::Relaxed)
    }

    /// Sends this limiter's pauses to the rest of the fleet through `tx`.
    pub fn broadcast_pauses_to(&self, tx: tokio::sync::mpsc::UnboundedSender<PauseNotice>) {
        let _ = self.broadcast.set(tx);
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
        let limiters = self.limiters.read().map(|l| Arc::clone(&l)).ok();
        if let Some(l) = limiters {
            if let Some(r) = &l.requests {
                r.until_ready().await;
            }
            if let Some(t) = &l.tokens {
                // A request larger than the burst waits for the whole burst instead.
                let n = NonZeroU32::new(tokens.clamp(1, l.token_burst)).unwrap_or(NonZeroU32::MIN);
                let _ = t.until_n_ready(n).await;
            }
        }
        started.elapsed()
    }

    /// Stops every call to this model until `after` from now (a 429's `Retry-After`), here
    /// and, when coordinated, in every other worker process.
    pub fn pause_for(&self, after: Duration) {
        self.pause_locally(after);
        if let Some(tx) = self.broadcast.get() {
            let _ = tx.send(PauseNotice {
                model: self.model.clone(),
                retry_after: after,
            });
        }
    }

    /// Applies a pause another process asked for (not broadcast again).
    pub fn pause_locally(&self, after: Duration) {
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
        let l = ModelLimiter::new("m", None, None, 1.0);
        assert!(l.acquire(10).await < Duration::from_millis(5));
        l.pause_for(Duration::from_millis(30));
        assert!(l.acquire(1).await >= Duration::from_millis(25));
    }

    #[tokio::test]
    async fn request_quota_spaces_calls_evenly() {
        // 1200/min = one every 50 ms, no burst: 11 calls take at least 500 ms.
        let l = ModelLimiter::new("m", NonZeroU32::new(1200), None, 1.0);
        let started = Instant::now();
        for _ in 0..11 {
            l.acquire(1).await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(480),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn peers_divide_the_quota() {
        // 12000/min alone: one call every 5 ms, so 40 calls take about 200 ms. Shared by 4:
        // one every 20 ms, about 800 ms.
        let l = ModelLimiter::new("m", NonZeroU32::new(12_000), None, 1.0);
        let started = Instant::now();
        for _ in 0..40 {
            l.acquire(1).await;
        }
        let alone = started.elapsed();
        l.set_peers(4);
        assert_eq!(l.peers(), 4);
        let started = Instant::now();
        for _ in 0..40 {
            l.acquire(1).await;
        }
        let shared = started.elapsed();
        assert!(
            shared >= Duration::from_millis(700) && shared > alone * 2,
            "alone {alone:?}, shared {shared:?}"
        );
    }

    #[test]
    fn pauses_are_broadcast_once_and_remote_ones_not_again() {
        let l = ModelLimiter::new("m", None, None, 1.0);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        l.broadcast_pauses_to(tx);
        l.pause_for(Duration::from_secs(1));
        l.pause_locally(Duration::from_secs(2));
        assert_eq!(rx.try_recv().unwrap().retry_after, Duration::from_secs(1));
        assert!(rx.try_recv().is_err());
    }
}
