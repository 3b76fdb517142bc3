//! Reliability knobs that are not about one service: the per-model circuit breaker
//! (`[worker.breaker]`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// When a worker stops calling a failing model, and for how long (see the worker's
/// `breaker` module).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive transient failures (5xx, timeouts, broken connections, unusable bodies)
    /// of one model that open its breaker. 0 disables the breaker.
    pub failures: u32,
    /// How long an open breaker holds calls back before one probe call is let through.
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// A failed probe doubles the cooldown, up to this.
    #[serde(with = "humantime_serde")]
    pub max_cooldown: Duration,
    /// An item on its last JetStream delivery whose model's breaker is open waits in the
    /// worker (kept alive) for the breaker's probe, up to this long, instead of being handed
    /// back: a hand-back spends a delivery, and an outage longer than a few cooldowns would
    /// otherwise fail items that were never tried. 0 fails them at once, as before.
    #[serde(with = "humantime_serde")]
    pub max_hold: Duration,
    /// At most this many calls of one model wait for its breaker in a worker process (0: no
    /// limit). A waiting call holds its lane's slot; without a limit, a long outage of one
    /// model fills every slot of a lane whose other models are healthy. An item on its last
    /// delivery that finds no room goes back as a copy with its deliveries kept (the worker's
    /// `settle::Disposition::GiveBack`) and is offered again after the breaker's cooldown.
    pub max_holding: usize,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failures: 5,
            cooldown: Duration::from_secs(5),
            max_cooldown: Duration::from_secs(60),
            max_hold: Duration::from_secs(30 * 60),
            max_holding: 16,
        }
    }
}
