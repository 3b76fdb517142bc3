//! A circuit breaker per model, so a dead provider does not burn every item's retries.
//!
//! Retries with backoff are right for a provider that hiccups; they are wrong for one that is
//! down: every item in flight would spend its retries (and the provider's recovery would be
//! met by a thundering herd). The breaker counts *consecutive* transient failures of a model
//! (5xx, timeouts, broken connections, unusable bodies) in this process:
//!
//! - **closed**: calls go through; `failures` consecutive failures open it;
//! - **open**: no call is made for `cooldown`; items are handed back to JetStream with a delay
//!   that matches the time left (see `lane`), so the lane keeps serving other models;
//! - **half-open**: after the cooldown one call at a time probes the provider. A success closes
//!   the breaker; a failure opens it again for twice the cooldown (up to `max_cooldown`).
//!
//! 429s count neither way (the provider is alive, just busy) and other 4xx count as alive.
//! Time is `tokio::time::Instant`, so tests run it on a paused clock.

use std::sync::Mutex;
use std::time::Duration;

use switchyard_runtime::settings::BreakerSettings;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// What the breaker says about the next call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Call (the breaker is closed, or this call is the half-open probe).
    Go,
    /// Do not call: the provider is considered down for about this long.
    Open {
        retry_in: Duration,
        /// The failure that opened it, for the item's error.
        last_error: String,
    },
}

#[derive(Debug)]
enum Phase {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out until `probe_until`; after that another call may probe.
    HalfOpen {
        probe_until: Instant,
    },
}

#[derive(Debug)]
struct State {
    phase: Phase,
    /// The cooldown the next opening uses (doubles on failed probes).
    cooldown: Duration,
    last_error: String,
}

/// One model's breaker (shared by every lane of the process).
#[derive(Debug)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: Mutex<State>,
    /// Places for calls waiting for this breaker in the worker (see
    /// [`CircuitBreaker::try_hold`]); `None`: no limit.
    holding: Option<Semaphore>,
}

/// A call's place among those waiting for a breaker; given up when dropped.
#[derive(Debug)]
pub struct Holding<'a> {
    _place: Option<SemaphorePermit<'a>>,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            state: Mutex::new(State {
                phase: Phase::Closed { failures: 0 },
                cooldown: settings.cooldown,
                last_error: String::new(),
            }),
            holding: (settings.max_holding > 0).then(|| Semaphore::new(settings.max_holding)),
            settings,
        }
    }

    /// A place for one call to wait for this breaker, if fewer than
    /// `[worker.breaker] max_holding` calls wait already (always, with no limit).
    pub fn try_hold(&self) -> Option<Holding<'_>> {
        match &self.holding {
            None => Some(Holding { _place: None }),
            Some(places) => places
                .try_acquire()
                .ok()
                .map(|p| Holding { _place: Some(p) }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        // Every update leaves the state consistent: a poisoned lock is still usable.
        let mut guard = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&mut guard)
    }

    /// Asks whether a call may go now.
    pub fn admit(&self) -> Admission {
        if self.settings.failures == 0 {
            return Admission::Go;
        }
        let now = Instant::now();
        self.with(|s| match s.phase {
            Phase::Closed { .. } => Admission::Go,
            Phase::Open { until } | Phase::HalfOpen { probe_until: until } if now < until => {
                Admission::Open {
                    retry_in: until - now,
                    last_error: s.last_error.clone(),
                }
            }
            Phase::Open { .. } | Phase::HalfOpen { .. } => {
                // This call is the probe; others wait until it answers (or takes too long).
                s.phase = Phase::HalfOpen {
                    probe_until: now + s.cooldown,
                };
                Admission::Go
            }
        })
    }

    /// The provider answered (or refused a bad request): it is alive.
    pub fn record_success(&self) {
        let base = self.settings.cooldown;
        self.with(|s| {
            if !matches!(s.phase, Phase::Closed { .. }) {
                tracing::info!("provider answers again, circuit breaker closed");
            }
            s.phase = Phase::Closed { failures: 0 };
            s.cooldown = base;
        });
    }

    /// A transient failure (5xx, timeout, broken connection, unusable body).
    pub fn record_failure(&self, error: &str) {
        if self.settings.failures == 0 {
            return;
        }
        let now = Instant::now();
        let (threshold, max) = (self.settings.failures, self.settings.max_cooldown);
        self.with(|s| {
            s.last_error = error.to_owned();
            match s.phase {
                Phase::Closed { failures } if failures + 1 < threshold => {
                    s.phase = Phase::Closed {
                        failures: failures + 1,
                    };
                }
                Phase::Closed { .. } => {
                    tracing::warn!(cooldown = ?s.cooldown, error, "provider failing, circuit breaker open");
                    s.phase = Phase::Open {
                        until: now + s.cooldown,
                    };
                }
                Phase::HalfOpen { .. } => {
                    s.cooldown = (s.cooldown * 2).min(max);
                    s.phase = Phase::Open {
                        until: now + s.cooldown,
                    };
                }
                // A call admitted before the breaker opened: already open, nothing changes.
                Phase::Open { .. } => {}
            }
        });
    }

    /// True while calls are held back.
    pub fn is_open(&self) -> bool {
        self.with(|s| !matches!(s.phase, Phase::Closed { .. }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerSettings {
            failures: 3,
            cooldown: Duration::from_secs(1),
            max_cooldown: Duration::from_secs(3),
            ..BreakerSettings::default()
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let b = breaker();
        b.record_failure("503");
        b.record_failure("503");
        b.record_success(); // not consecutive any more
        b.record_failure("503");
        b.record_failure("503");
        assert_eq!(b.admit(), Admission::Go);
        b.record_failure("HTTP 503");
        match b.admit() {
            Admission::Open {
                retry_in,
                last_error,
            } => {
                assert_eq!(retry_in, Duration::from_secs(1));
                assert_eq!(last_error, "HTTP 503");
            }
            Admission::Go => panic!("should be open"),
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.admit(), Admission::Go, "the probe");
        assert!(
            matches!(b.admit(), Admission::Open { .. }),
            "one probe at a time"
        );
        b.record_success();
        assert!(!b.is_open());
        assert_eq!(b.admit(), Admission::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_doubles_the_cooldown_up_to_the_cap() {
        let b = breaker();
        for _ in 0..3 {
            b.record_failure("down");
        }
        for expected in [2, 3, 3] {
            tokio::time::advance(Duration::from_secs(3)).await;
            assert_eq!(b.admit(), Admission::Go);
            b.record_failure("down");
            match b.admit() {
                Admission::Open { retry_in, .. } => {
                    assert_eq!(retry_in, Duration::from_secs(expected));
                }
                Admission::Go => panic!("should be open"),
            }
        }
        // A probe that never reports back does not hold the breaker forever.
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(b.admit(), Admission::Go);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(b.admit(), Admission::Go);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_failures_disables_it() {
        let b = CircuitBreaker::new(BreakerSettings {
            failures: 0,
            ..BreakerSettings::default()
        });
        for _ in 0..100 {
            b.record_failure("x");
        }
        assert_eq!(b.admit(), Admission::Go);
    }
}
