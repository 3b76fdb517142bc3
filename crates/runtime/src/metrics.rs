//! Prometheus metrics, served on `/metrics` by the dispatcher, every worker process and the
//! Batch API.
//!
//! One [`Metrics`] per process holds every family; [`Metrics::dispatcher`] and
//! [`Metrics::worker`] register only those the role produces, so a scrape shows what the
//! process does. Recording is a few atomic adds, so the families exist (and are counted) even
//! when nothing serves them (the demo, tests).
//!
//! Cost is exported as an integer count of nano-dollars (`switchyard_cost_nanousd_total`):
//! exact for every price the ledger holds to nine decimals per token, and never a float that
//! drifts. The ledger in Postgres stays the book of record; these are for dashboards and
//! alerts.
//!
//! Consumer lag (`switchyard_consumer_pending`, `switchyard_consumer_ack_pending`) is read
//! from JetStream every few seconds by [`watch_consumer`], the same figure KEDA scales on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// A tier (`weak`, `strong`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TierLabel {
    pub tier: String,
}

/// A model, as named in the configuration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    pub model: String,
}

/// A model call and how it ended: `ok`, `failed` (retries used up), `refused` (the provider
/// rejected the request), `circuit_open` (not called: the provider is down), `shutdown`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub model: String,
    pub outcome: &'static str,
}

/// Tokens of a model, `input` or `output`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    pub kind: &'static str,
}

/// A job's fate at the dispatcher: `accepted`, `rejected`, `duplicate`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub outcome: &'static str,
}

/// An API request: the route's pattern (`/v1/batches/{id}`) and the answer's status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status: u16,
}

/// An API route's pattern.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: String,
}

/// How a batch of the API ended: `completed`, `cancelled`, `expired`, `failed`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BatchLabels {
    pub status: &'static str,
}

/// A provider batch line's state (`open`, `booked`, `returned`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LineState {
    pub state: &'static str,
}

/// A durable JetStream consumer.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConsumerLabels {
    pub stream: String,
    pub consumer: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s: local models answer in milliseconds, long summaries in tens of
    // seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every metric a Switchyard process can export.
pub struct Metrics {
    registry: Registry,
    /// Dispatcher: items published per tier (escalations are counted by workers).
    pub items_routed: Family<TierLabel, Counter>,
    /// Dispatcher: jobs by outcome.
    pub jobs: Family<JobLabels, Counter>,
    /// Worker: model calls by model and outcome (every attempt, retries inside a call not).
    pub calls: Family<CallLabels, Counter>,
    /// Worker: seconds from the request to the answer, waiting for quota excluded.
    pub call_seconds: HistogramFamily<ModelLabel>,
    /// Worker: tokens booked per model.
    pub tokens: Family<TokenLabels, Counter>,
    /// Worker: cost booked per model, in nano-dollars.
    pub cost_nanousd: Family<ModelLabel, Counter>,
    /// Worker: answers judged not confident enough and sent up, per tier they left.
    pub escalations: Family<TierLabel, Counter>,
    /// Worker: 429 answers per model.
    pub rate_limited: Family<ModelLabel, Counter>,
    /// Worker: seconds spent waiting in the model's rate limiter (quota or `Retry-After`).
    pub quota_wait_seconds: Family<ModelLabel, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// Worker: deliveries of attempts that already had an outcome (nothing was called).
    pub settled_before: Counter,
    /// Worker: deliveries whose attempt another live worker was calling (they waited).
    pub busy_deliveries: Counter,
    /// Worker: calls booked as duplicates (a second copy of an attempt; real spend).
    pub duplicate_calls: Counter,
    /// Worker: outcomes Postgres refused as they were, booked in a plainer form.
    pub refused_outcomes: Counter,
    /// Worker: calls this process booked in doubt (their worker died mid-call).
    pub in_doubt_booked: Counter,
    /// Fleet-wide, read from the ledger: in-doubt calls not settled yet.
    pub in_doubt_calls: Gauge,
    /// Fleet-wide, read from the ledger: their worst-case cost, in nano-dollars.
    pub in_doubt_nanousd: Gauge,
    /// The same, in USD (a float for Prometheus only: the ledger's exact figure is in
    /// `reporting.in_doubt_open` and `ledger report`'s `in_doubt_usd`).
    pub in_doubt_usd: Gauge<f64, AtomicU64>,
    /// Dispatcher: jobs found stuck (no live owner, no progress) and finished by a sweep.
    pub stuck_job_sweeps: Counter,
    /// API: requests by route and status code.
    pub api_requests: Family<RouteLabels, Counter>,
    /// API: seconds to answer a request, by route.
    pub api_request_seconds: HistogramFamily<RouteLabel>,
    /// API: requests refused because their key was over its per-minute limit.
    pub api_rate_limited: Counter,
    /// API: bytes of uploaded files stored.
    pub api_upload_bytes: Counter,
    /// API: batches ended, by final status.
    pub api_batches: Family<BatchLabels, Counter>,
    /// Worker, fleet-wide from Postgres: provider batches not ended, by status (`recorded`,
    /// `submitted`).
    pub provider_batches_open: Family<BatchLabels, Gauge>,
    /// Worker, fleet-wide: seconds since the oldest provider batch not ended was recorded.
    pub provider_batch_oldest_seconds: Gauge,
    /// Worker, fleet-wide: lines of provider batches still open.
    pub provider_batch_lines_open: Gauge,
    /// Worker: provider batch lines this process closed, by state (`booked`, `returned`).
    pub provider_batch_lines_closed: Family<LineState, Counter>,
    /// Messages in the consumer not yet delivered.
    pub consumer_pending: Family<ConsumerLabels, Gauge>,
    /// Messages delivered and not yet acknowledged.
    pub consumer_ack_pending: Family<ConsumerLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    fn empty() -> Self {
        Self {
            registry: Registry::with_prefix("switchyard"),
            items_routed: Family::default(),
            jobs: Family::default(),
            calls: Family::default(),
            call_seconds: Family::new_with_constructor(latency_histogram),
            tokens: Family::default(),
            cost_nanousd: Family::default(),
            escalations: Family::default(),
            rate_limited: Family::default(),
            quota_wait_seconds: Family::default(),
            settled_before: Counter::default(),
            busy_deliveries: Counter::default(),
            duplicate_calls: Counter::default(),
            refused_outcomes: Counter::default(),
            in_doubt_booked: Counter::default(),
            in_doubt_calls: Gauge::default(),
            in_doubt_nanousd: Gauge::default(),
            in_doubt_usd: Gauge::default(),
            stuck_job_sweeps: Counter::default(),
            api_requests: Family::default(),
            api_request_seconds: Family::new_with_constructor(latency_histogram),
            api_rate_limited: Counter::default(),
            api_upload_bytes: Counter::default(),
            api_batches: Family::default(),
            provider_batches_open: Family::default(),
            provider_batch_oldest_seconds: Gauge::default(),
            provider_batch_lines_open: Gauge::default(),
            provider_batch_lines_closed: Family::default(),
            consumer_pending: Family::default(),
            consumer_ack_pending: Family::default(),
        }
    }

    fn register_lag(&mut self) {
        self.registry.register(
            "consumer_pending",
            "Messages in the JetStream consumer not yet delivered",
            self.consumer_pending.clone(),
        );
        self.registry.register(
            "consumer_ack_pending",
            "Messages delivered by the JetStream consumer and not yet acknowledged",
            self.consumer_ack_pending.clone(),
        );
    }

    /// The dispatcher's metrics.
    pub fn dispatcher() -> Self {
        let mut m = Self::empty();
        m.registry.register(
            "items_routed",
            "Items published to a tier by the dispatcher",
            m.items_routed.clone(),
        );
        m.registry
            .register("jobs", "Jobs by outcome at the dispatcher", m.jobs.clone());
        m.registry.register(
            "stuck_job_sweeps",
            "Jobs found with no live owner and no progress, finished by a sweep",
            m.stuck_job_sweeps.clone(),
        );
        m.register_lag();
        m
    }

    /// The Batch API's metrics (`switchyard api`).
    pub fn api() -> Self {
        let mut m = Self::empty();
        m.registry.register(
            "api_requests",
            "Batch API requests by route and status code",
            m.api_requests.clone(),
        );
        m.registry.register(
            "api_request_seconds",
            "Seconds to answer a Batch API request, by route",
            m.api_request_seconds.clone(),
        );
        m.registry.register(
            "api_rate_limited",
            "Batch API requests refused because their key was over its limit",
            m.api_rate_limited.clone(),
        );
        m.registry.register(
            "api_upload_bytes",
            "Bytes of files uploaded to the Batch API",
            m.api_upload_bytes.clone(),
        );
        m.registry.register(
            "api_batches",
            "Batches of the Batch API ended, by final status",
            m.api_batches.clone(),
        );
        m
    }

    /// A worker process's metrics.
    pub fn worker() -> Self {
        let mut m = Self::empty();
        m.registry.register(
            "model_calls",
            "Model calls by model and outcome",
            m.calls.clone(),
        );
        m.registry.register(
            "model_call_seconds",
            "Model call latency, waiting for quota excluded",
            m.call_seconds.clone(),
        );
        m.registry
            .register("tokens", "Tokens booked per model", m.tokens.clone());
        m.registry.register(
            "cost_nanousd",
            "Cost booked per model, in nano-dollars (exact; the ledger is the book of record)",
            m.cost_nanousd.clone(),
        );
        m.registry.register(
            "escalations",
            "Answers sent to a stronger tier, by the tier they left",
            m.escalations.clone(),
        );
        m.registry.register(
            "rate_limited",
            "429 answers per model",
            m.rate_limited.clone(),
        );
        m.registry.register(
            "quota_wait_seconds",
            "Seconds waited in the model's rate limiter",
            m.quota_wait_seconds.clone(),
        );
        m.registry.register(
            "deliveries_settled_before",
            "Deliveries of attempts that already had an outcome: nothing was called",
            m.settled_before.clone(),
        );
        m.registry.register(
            "deliveries_busy",
            "Deliveries whose attempt another live worker was calling: they waited",
            m.busy_deliveries.clone(),
        );
        m.registry.register(
            "duplicate_calls",
            "Calls booked as duplicates of an attempt another copy decided (real spend)",
            m.duplicate_calls.clone(),
        );
        m.registry.register(
            "refused_outcomes",
            "Outcomes Postgres refused as they were, booked in a plainer form",
            m.refused_outcomes.clone(),
        );
        m.registry.register(
            "in_doubt_booked",
            "Calls this process booked in doubt because their worker died mid-call",
            m.in_doubt_booked.clone(),
        );
        m.registry.register(
            "in_doubt_calls",
            "In-doubt ledger entries not settled yet, fleet-wide",
            m.in_doubt_calls.clone(),
        );
        m.registry.register(
            "in_doubt_nanousd",
            "Worst-case cost of the in-doubt entries not settled yet, in nano-dollars",
            m.in_doubt_nanousd.clone(),
        );
        m.registry.register(
            "in_doubt_usd",
            "Worst-case cost of the in-doubt entries not settled yet, in USD (for dashboards; \
             exact figures are in the ledger reports)",
            m.in_doubt_usd.clone(),
        );
        m.registry.register(
            "provider_batches_open",
            "Provider batches not ended yet, fleet-wide, by status",
            m.provider_batches_open.clone(),
        );
        m.registry.register(
            "provider_batch_oldest_seconds",
            "Age of the oldest provider batch not ended yet, fleet-wide",
            m.provider_batch_oldest_seconds.clone(),
        );
        m.registry.register(
            "provider_batch_lines_open",
            "Lines of provider batches still open, fleet-wide",
            m.provider_batch_lines_open.clone(),
        );
        m.registry.register(
            "provider_batch_lines_closed",
            "Provider batch lines this process booked or sent back to their tier",
            m.provider_batch_lines_closed.clone(),
        );
        m.register_lag();
        m
    }

    /// The Prometheus text exposition of the registered families.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Serves `GET /metrics` on `addr` until `shutdown`; returns the bound address (`addr` may
/// ask for port 0).
///
/// # Errors
/// When the address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for /metrics on {addr}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "metrics server stopped");
        }
    });
    tracing::info!(addr = %bound, "serving /metrics");
    Ok(bound)
}

/// How often consumer lag is read from JetStream.
pub const LAG_PERIOD: Duration = Duration::from_secs(5);

/// Reads the consumer's pending counts every `period` into the lag gauges until `shutdown`.
/// A failed read (the server restarting) keeps the last figures and tries again.
pub fn watch_consumer(
    js: async_nats::jetstream::Context,
    stream: String,
    consumer: String,
    metrics: Arc<Metrics>,
    period: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let labels = ConsumerLabels {
            stream: stream.clone(),
            consumer: consumer.clone(),
        };
        let mut tick = tokio::time::interval(period);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let info = async {
                let s = js.get_stream(&stream).await.ok()?;
                let mut c: async_nats::jetstream::consumer::PullConsumer =
                    s.get_consumer(&consumer).await.ok()?;
                c.info().await.ok().cloned()
            }
            .await;
            if let Some(info) = info {
                metrics
                    .consumer_pending
                    .get_or_create(&labels)
                    .set(i64::try_from(info.num_pending).unwrap_or(i64::MAX));
                metrics
                    .consumer_ack_pending
                    .get_or_create(&labels)
                    .set(i64::try_from(info.num_ack_pending).unwrap_or(i64::MAX));
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_exports_its_families_and_not_the_dispatchers() {
        let m = Metrics::worker();
        m.calls
            .get_or_create(&CallLabels {
                model: "m".into(),
                outcome: "ok",
            })
            .inc_by(3);
        m.cost_nanousd
            .get_or_create(&ModelLabel { model: "m".into() })
            .inc_by(150);
        let text = m.encode();
        assert!(
            text.contains(r#"switchyard_model_calls_total{model="m",outcome="ok"} 3"#),
            "{text}"
        );
        assert!(
            text.contains(r#"switchyard_cost_nanousd_total{model="m"} 150"#),
            "{text}"
        );
        assert!(!text.contains("items_routed"), "{text}");
    }

    #[test]
    fn a_dispatcher_exports_items_per_tier() {
        let m = Metrics::dispatcher();
        m.items_routed
            .get_or_create(&TierLabel {
                tier: "weak".into(),
            })
            .inc_by(7);
        let text = m.encode();
        assert!(
            text.contains(r#"switchyard_items_routed_total{tier="weak"} 7"#),
            "{text}"
        );
        assert!(!text.contains("model_calls"), "{text}");
    }
}
