//! One model call as the worker makes it: wait for quota, send, and on failure retry with
//! exponential backoff and full jitter, honouring `Retry-After`. The message stays alive the
//! whole time with in-progress acks, so waiting never uses up one of its deliveries.
//!
//! - 429: the model's limiter pauses every call to that model, in the whole fleet, for
//!   `Retry-After` (once per episode, see [`crate::limiter`]); this call then tries again,
//!   without limit (throttling is never a reason to fail an item).
//! - 5xx, timeouts while connecting, broken connections: up to `max_retries` retries, then
//!   the item is handed back to JetStream (nak with delay), which counts one delivery.
//! - An unusable `200` body, or a request sent and not answered in time: the call ends at
//!   once (it may be billed, so it is booked and never sent again under its call id); the
//!   item is handed back.
//! - Any other 4xx: no retry; the item fails with the provider's message.
//! - A model whose circuit breaker is open ([`crate::breaker`]) is not called at all: the
//!   call ends at once with [`CallFailure::CircuitOpen`] and the item is handed back for when
//!   the breaker lets a probe through. Unless handing back would be its last chance
//!   ([`Patience::breaker_hold`]): then the call waits here, kept alive, for the breaker.

use std::future::Future;
use std::time::Duration;

use async_nats::jetstream::AckKind;
use async_nats::jetstream::message::Acker;
use rand::Rng;
use tokio_util::sync::CancellationToken;

use crate::breaker::{Admission, CircuitBreaker};
use crate::limiter::ModelLimiter;
use crate::llm::error::Retry;
use crate::llm::{Completion, CompletionRequest, LlmClient, ProviderError};

/// How a call ended when it did not produce a completion.
#[derive(Debug)]
pub enum CallFailure {
    /// Retries used up on transient faults: try the item again later.
    Exhausted(ProviderError),
    /// The provider refused the request: the item fails.
    Refused(ProviderError),
    /// The process is shutting down: give the item back now. `sent`: the request may have
    /// reached the provider (the call is in doubt).
    ShuttingDown { sent: bool },
    /// The provider answered `200` with a body that holds no usable answer: the call may be
    /// billed and is booked; the item is tried again (or fails, for a body that is too big).
    Unusable(ProviderError),
    /// The request went out and no answer came in time ([`ProviderError::in_doubt`]): the
    /// provider may have made and billed it. Booked in doubt at its worst case, the item tried
    /// again under a new call id (never this one: a second request under it could be a
    /// second bill that the first's booking hides).
    InDoubt(ProviderError),
    /// The model's provider is considered down: no call was made; try again in `retry_in`.
    /// `no_room`: the call would have waited for the breaker ([`Patience::breaker_hold`])
    /// but as many calls of the model as may wait already do (`[worker.breaker]
    /// max_holding`).
    CircuitOpen {
        retry_in: Duration,
        last_error: String,
        no_room: bool,
    },
}

/// What the call cost in waiting, for counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallStats {
    pub throttled: u32,
    pub retries: u32,
    pub quota_wait: Duration,
    /// Times the call waited in the worker for an open breaker.
    pub breaker_waits: u32,
}

/// How long a call keeps trying before it ends.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    /// Retries on transient faults (5xx, broken connections, timeouts while connecting) before
    /// the item is handed back.
    pub max_retries: u32,
    /// How long the call may wait here for an open breaker instead of ending with
    /// [`CallFailure::CircuitOpen`]: zero but on an item's last delivery, where a hand-back
    /// would fail an item that was never tried (each hand-back spends a delivery).
    pub breaker_hold: Duration,
}

impl Patience {
    /// Retries only: an open breaker ends the call at once.
    pub fn retries(max_retries: u32) -> Self {
        Self {
            max_retries,
            breaker_hold: Duration::ZERO,
        }
    }
}

/// Something that keeps a message from being redelivered while it is worked on.
pub trait KeepAlive: Send + Sync {
    /// Tells JetStream the message is still being worked on.
    fn touch(&self) -> impl Future<Output = ()> + Send;
}

impl KeepAlive for Acker {
    async fn touch(&self) {
        let _ = self.ack_with(AckKind::Progress).await;
    }
}

/// No keep-alive (unit tests).
impl KeepAlive for () {
    async fn touch(&self) {}
}

/// Runs `fut`, touching `keepalive` every `period` until it finishes or `shutdown` fires.
pub async fn kept_alive<T>(
    keepalive: &impl KeepAlive,
    period: Duration,
    shutdown: &CancellationToken,
    fut: impl Future<Output = T>,
) -> Option<T> {
    tokio::pin!(fut);
    let mut tick = tokio::time::interval(period);
    tick.tick().await;
    loop {
        tokio::select! {
            out = &mut fut => return Some(out),
            _ = tick.tick() => keepalive.touch().await,
            _ = shutdown.cancelled() => return None,
        }
    }
}

/// Backoff before retry `n` (0-based): 200 ms × 2ⁿ capped at 10 s, full jitter, but never
/// shorter than what the provider asked for.
pub fn backoff(n: u32, retry_after: Option<Duration>) -> Duration {
    let cap = Duration::from_millis(200)
        .saturating_mul(1 << n.min(6))
        .min(Duration::from_secs(10));
    let jittered = cap.mul_f64(rand::rng().random_range(0.5..=1.0));
    retry_after.map_or(jittered, |ra| {
        ra.max(jittered.min(ra + Duration::from_millis(250)))
    })
}

/// Calls the model with quota, retries and keep-alive.
#[expect(
    clippy::too_many_arguments,
    reason = "the call's whole context, passed once"
)]
pub async fn call_model<C: LlmClient>(
    client: &C,
    limiter: &ModelLimiter,
    breaker: &CircuitBreaker,
    request: &CompletionRequest,
    estimated_tokens: u32,
    patience: Patience,
    keepalive: &impl KeepAlive,
    keepalive_period: Duration,
    shutdown: &CancellationToken,
) -> (Result<Completion, CallFailure>, CallStats) {
    let mut stats = CallStats::default();
    let mut transient_failures = 0u32;
    let max_retries = patience.max_retries;
    let hold_until = tokio::time::Instant::now().checked_add(patience.breaker_hold);
    // Tokens are booked before the call (the whole prompt and the completion budget) and
    // corrected by the provider's usage after.
    let reserved = estimated_tokens.max(crate::limiter::estimate_tokens(request));
    // This call's place among those waiting for the breaker, once it has one.
    let mut holding = None;
    loop {
        let Some((waited, admitted_at)) = kept_alive(
            keepalive,
            keepalive_period,
            shutdown,
            limiter.admit_requests(reserved, request.requests()),
        )
        .await
        else {
            return (Err(CallFailure::ShuttingDown { sent: false }), stats);
        };
        stats.quota_wait += waited;
        if let Admission::Open {
            retry_in,
            last_error,
        } = breaker.admit()
        {
            // Spread out so the waiting calls do not all come back at once.
            let wait = retry_in
                .max(Duration::from_millis(10))
                .mul_f64(rand::rng().random_range(1.0..1.5));
            let may_hold =
                hold_until.is_some_and(|until| tokio::time::Instant::now() + wait <= until);
            if may_hold && holding.is_none() {
                holding = breaker.try_hold();
            }
            if may_hold && holding.is_some() {
                // Not called: the quota it took goes back while it waits for the breaker.
                limiter.settle(reserved, 0);
                stats.breaker_waits += 1;
                let slept = kept_alive(
                    keepalive,
                    keepalive_period,
                    shutdown,
                    tokio::time::sleep(wait),
                )
                .await;
                if slept.is_none() {
                    return (Err(CallFailure::ShuttingDown { sent: false }), stats);
                }
                continue;
            }
            return (
                Err(CallFailure::CircuitOpen {
                    retry_in,
                    last_error,
                    no_room: may_hold,
                }),
                stats,
            );
        }
        // The episode a 429 belongs to is judged by when the call was admitted, not by when
        // this line ran (see `ModelLimiter::admit`).
        let sent_at = admitted_at;
        let Some(result) = kept_alive(
            keepalive,
            keepalive_period,
            shutdown,
            client.complete(request),
        )
        .await
        else {
            return (Err(CallFailure::ShuttingDown { sent: true }), stats);
        };
        let err = match result {
            Ok(c) => {
                breaker.record_success();
                if !c.usage_estimated {
                    limiter.settle(
                        reserved,
                        c.prompt_tokens.saturating_add(c.completion_tokens),
                    );
                }
                return (Ok(c), stats);
            }
            Err(e) => e,
        };
        if err.answered() {
            // The provider is alive and answered; its answer is what is wrong.
            breaker.record_success();
            return (Err(CallFailure::Unusable(err)), stats);
        }
        if err.in_doubt() {
            breaker.record_failure(&err.to_string());
            return (Err(CallFailure::InDoubt(err)), stats);
        }
        let delay = match err.retry() {
            Retry::Never => {
                // The provider answered: it is alive, the request is what is wrong.
                breaker.record_success();
                return (Err(CallFailure::Refused(err)), stats);
            }
            Retry::Throttled(after) => {
                stats.throttled += 1;
                // The provider did not count the call; the pause is the fleet's, once per
                // episode (a 429 to a call sent before the episode began is part of it).
                limiter.settle(reserved, 0);
                limiter.throttled(sent_at, after);
                tracing::debug!(model = %request.model, ?after, "rate limited, waiting");
                Duration::ZERO // the limiter's pause does the waiting
            }
            Retry::Transient(after) => {
                breaker.record_failure(&err.to_string());
                if breaker.is_open() {
                    // Not worth a retry: the loop's admission check ends the call.
                    continue;
                }
                if transient_failures >= max_retries {
                    return (Err(CallFailure::Exhausted(err)), stats);
                }
                let d = backoff(transient_failures, after);
                transient_failures += 1;
                stats.retries += 1;
                tracing::debug!(model = %request.model, error = %err, ?d, "transient failure, retrying");
                d
            }
        };
        if !delay.is_zero()
            && kept_alive(
                keepalive,
                keepalive_period,
                shutdown,
                tokio::time::sleep(delay),
            )
            .await
            .is_none()
        {
            return (Err(CallFailure::ShuttingDown { sent: false }), stats);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A provider that answers from a script of results.
    struct Scripted(Mutex<Vec<Result<Completion, ProviderError>>>);

    impl LlmClient for Scripted {
        async fn complete(&self, _r: &CompletionRequest) -> Result<Completion, ProviderError> {
            self.0.lock().unwrap().remove(0)
        }
    }

    fn ok() -> Result<Completion, ProviderError> {
        Ok(Completion {
            response_id: Some("r".into()),
            content: "A".into(),
            raw_content: None,
            logprobs: None,
            prompt_tokens: 1,
            completion_tokens: 1,
            cached_prompt_tokens: 0,
            cache_write_tokens: 0,
            cache_write_1h_tokens: 0,
            raw_usage: None,
            finish_reason: None,
            usage_estimated: false,
            latency: Duration::ZERO,
            samples: Vec::new(),
        })
    }

    fn request() -> CompletionRequest {
        CompletionRequest {
            model: "m".into(),
            messages: vec![],
            max_tokens: 4,
            logprobs: true,
            top_logprobs: 0,
            client_request_id: None,
            n: 1,
            temperature: 0.0,
            separate_choices: false,
            params: serde_json::Map::new(),
        }
    }

    fn limited() -> ProviderError {
        ProviderError::RateLimited {
            model: "m".into(),
            retry_after: Some(Duration::from_millis(1)),
        }
    }

    fn server_error() -> ProviderError {
        ProviderError::ServerError {
            model: "m".into(),
            status: 503,
            body: String::new(),
            retry_after: Some(Duration::from_millis(1)),
        }
    }

    async fn run(
        script: Vec<Result<Completion, ProviderError>>,
        max_retries: u32,
    ) -> (Result<Completion, CallFailure>, CallStats) {
        let client = Scripted(Mutex::new(script));
        let limiter = ModelLimiter::new("m", None, None, 1.0);
        call_model(
            &client,
            &limiter,
            &CircuitBreaker::new(Default::default()),
            &request(),
            1,
            Patience::retries(max_retries),
            &(),
            Duration::from_secs(1),
            &CancellationToken::new(),
        )
        .await
    }

    #[tokio::test]
    async fn throttling_is_retried_beyond_the_retry_budget() {
        let mut script: Vec<_> = (0..5).map(|_| Err(limited())).collect();
        script.push(ok());
        let (r, stats) = run(script, 1).await;
        assert!(r.is_ok());
        assert_eq!((stats.throttled, stats.retries), (5, 0));
    }

    #[tokio::test]
    async fn server_errors_use_the_retry_budget_then_give_back() {
        let (r, stats) = run(
            vec![
                Err(server_error()),
                Err(server_error()),
                Err(server_error()),
            ],
            2,
        )
        .await;
        assert!(matches!(r, Err(CallFailure::Exhausted(_))));
        assert_eq!(stats.retries, 2);
        let (r, _) = run(vec![Err(server_error()), ok()], 2).await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let refused = ProviderError::Refused {
            model: "m".into(),
            status: 400,
            body: "bad".into(),
        };
        let (r, stats) = run(vec![Err(refused), ok()], 3).await;
        assert!(matches!(r, Err(CallFailure::Refused(_))));
        assert_eq!(stats.retries, 0);
    }

    /// A breaker that opens after two failures, for `cooldown` (not growing).
    /// One call of `req` through `breaker` with `patience` (no keep-alive, never cancelled).
    async fn call_through(
        client: &Scripted,
        limiter: &ModelLimiter,
        breaker: &CircuitBreaker,
        patience: Patience,
    ) -> (Result<Completion, CallFailure>, CallStats) {
        let token = CancellationToken::new();
        call_model(
            client,
            limiter,
            breaker,
            &request(),
            1,
            patience,
            &(),
            Duration::from_secs(1),
            &token,
        )
        .await
    }

    fn opens_after_two(cooldown: Duration) -> CircuitBreaker {
        CircuitBreaker::new(switchyard_runtime::settings::BreakerSettings {
            failures: 2,
            cooldown,
            max_cooldown: cooldown,
            ..Default::default()
        })
    }

    #[tokio::test]
    async fn an_open_breaker_stops_the_retries() {
        let client = Scripted(Mutex::new((0..6).map(|_| Err(server_error())).collect()));
        let breaker = opens_after_two(Duration::from_secs(30));
        let limiter = ModelLimiter::new("m", None, None, 1.0);
        let (req, token) = (request(), CancellationToken::new());
        let call = || {
            call_model(
                &client,
                &limiter,
                &breaker,
                &req,
                1,
                Patience::retries(5),
                &(),
                Duration::from_secs(1),
                &token,
            )
        };
        let (r, stats) = call().await;
        match r {
            Err(CallFailure::CircuitOpen { last_error, .. }) => {
                assert!(last_error.contains("HTTP 503"), "{last_error}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(stats.retries, 1, "two calls, then the breaker opened");
        assert_eq!(client.0.lock().unwrap().len(), 4);
        let (r, _) = call().await;
        assert!(matches!(r, Err(CallFailure::CircuitOpen { .. })));
        assert_eq!(client.0.lock().unwrap().len(), 4, "no call while open");
    }

    #[tokio::test]
    async fn a_call_on_its_last_chance_waits_out_an_open_breaker() {
        let mut script: Vec<_> = (0..2).map(|_| Err(server_error())).collect();
        script.push(ok());
        let client = Scripted(Mutex::new(script));
        let breaker = opens_after_two(Duration::from_millis(50));
        let limiter = ModelLimiter::new("m", None, None, 1.0);
        let call = |patience| call_through(&client, &limiter, &breaker, patience);
        // Two failures open the breaker: a call that may not wait ends at once.
        let (r, _) = call(Patience::retries(5)).await;
        assert!(matches!(r, Err(CallFailure::CircuitOpen { .. })), "{r:?}");
        // A hold shorter than the cooldown does not wait either.
        let short = Patience {
            max_retries: 5,
            breaker_hold: Duration::from_millis(1),
        };
        let (r, stats) = call(short).await;
        assert!(matches!(r, Err(CallFailure::CircuitOpen { .. })), "{r:?}");
        assert_eq!(stats.breaker_waits, 0);
        // The last chance waits for the probe, which the provider answers.
        let last = Patience {
            max_retries: 5,
            breaker_hold: Duration::from_secs(30),
        };
        let (r, stats) = call(last).await;
        assert!(r.is_ok(), "{r:?}");
        assert!(stats.breaker_waits >= 1);
        assert!(!breaker.is_open());
        assert!(client.0.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn no_more_calls_wait_for_a_breaker_than_it_has_room_for() {
        let mut script: Vec<_> = (0..2).map(|_| Err(server_error())).collect();
        script.push(ok());
        let client = Scripted(Mutex::new(script));
        let breaker = CircuitBreaker::new(switchyard_runtime::settings::BreakerSettings {
            failures: 2,
            cooldown: Duration::from_millis(50),
            max_cooldown: Duration::from_millis(50),
            max_holding: 1,
            ..Default::default()
        });
        let limiter = ModelLimiter::new("m", None, None, 1.0);
        let last = Patience {
            max_retries: 5,
            breaker_hold: Duration::from_secs(30),
        };
        let call = |patience| call_through(&client, &limiter, &breaker, patience);
        // Two failures open the breaker (a call that may not wait).
        let (r, _) = call(Patience::retries(5)).await;
        assert!(
            matches!(r, Err(CallFailure::CircuitOpen { no_room: false, .. })),
            "{r:?}"
        );
        // Another call holds the only place: this last chance ends at once, told so.
        let other = breaker.try_hold().expect("the room's one place");
        assert!(breaker.try_hold().is_none());
        let (r, stats) = call(last).await;
        assert!(
            matches!(r, Err(CallFailure::CircuitOpen { no_room: true, .. })),
            "{r:?}"
        );
        assert_eq!(stats.breaker_waits, 0);
        // The place is free again: the call waits for the probe, which the provider answers.
        drop(other);
        let (r, stats) = call(last).await;
        assert!(r.is_ok(), "{r:?}");
        assert!(stats.breaker_waits >= 1);
        assert!(breaker.try_hold().is_some(), "the call gave its place up");
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        assert!(backoff(0, None) <= Duration::from_millis(200));
        assert!(backoff(20, None) <= Duration::from_secs(10));
        assert!(backoff(0, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
    }
}
