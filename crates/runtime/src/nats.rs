//! NATS connection and the JetStream topology, created idempotently by whichever process
//! starts first (every service calls [`ensure_streams`] at start-up).
//!
//! - `<P>_JOBS` (work queue): job submissions; one durable pull consumer, `dispatcher`,
//!   shared by every dispatcher process.
//! - `<P>_WORK` (work queue): routed items on `<p>.work.<tier>`; one durable pull consumer
//!   per tier (`worker_<tier>`) shared by every worker process of that tier.
//! - `<P>_DLQ` (limits, 30 days): dead letters, kept for inspection.
//! - `<P>_ADVISORIES` (limits, 7 days): JetStream's max-deliveries advisories for the work
//!   stream, so an item whose worker died on its last delivery is still recorded as dead.
//!
//! Consumer settings that bite when left at their defaults (see docs/architecture.md):
//! `max_deliver` is finite, `max_ack_pending` matches what a process can work on, and
//! `ack_wait` exceeds a model call's timeout (workers also send in-progress acks).

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use secrecy::ExposeSecret as _;

use crate::settings::{Settings, StorageKind};

/// Connects to NATS with a client name that shows up in server monitoring.
///
/// # Errors
/// When the server cannot be reached (the message names the URL).
pub async fn connect(settings: &Settings, client_name: &str) -> anyhow::Result<async_nats::Client> {
    // Credentials may be in the URL: messages show it redacted.
    let shown = crate::settings::redact::redact_nats_url(&settings.nats.url);
    let (bare, _) = crate::settings::redact::split_url_credentials(&settings.nats.url);
    // async-nats logs server addresses (at debug level): hand it URLs without credentials and
    // pass those as options instead.
    let servers = server_list(&bare).with_context(|| format!("invalid NATS URL `{shown}`"))?;
    // A process that starts while its server restarts (a rolling upgrade, a node failing
    // over) waits for it rather than exiting; refused credentials or a bad TLS setup fail at
    // once, and so does a server still unreachable after `INITIAL_CONNECT_PATIENCE`.
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        let options = connect_options(settings, client_name).await?;
        match options.connect(servers.clone()).await {
            Ok(client) => return Ok(client),
            Err(e)
                if matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::Io | async_nats::ConnectErrorKind::TimedOut
                ) && started.elapsed() < INITIAL_CONNECT_PATIENCE =>
            {
                tracing::warn!(url = %shown, error = %e, "NATS not reachable yet, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot connect to NATS at `{shown}`"));
            }
        }
    }
}

/// How long a starting process keeps trying to reach a NATS server that refuses connections.
const INITIAL_CONNECT_PATIENCE: Duration = Duration::from_secs(20);

/// The connection options from the settings (credentials from the URL or the `[nats.auth]`
/// section, TLS).
async fn connect_options(
    settings: &Settings,
    client_name: &str,
) -> anyhow::Result<async_nats::ConnectOptions> {
    let (_, in_url) = crate::settings::redact::split_url_credentials(&settings.nats.url);
    let mut options = async_nats::ConnectOptions::new();
    match in_url {
        Some((user, Some(password))) => {
            options = options.user_and_password(user, password.expose_secret().to_owned());
        }
        Some((token, None)) => options = options.token(token),
        None => {}
    }
    let options = options
        .name(client_name)
        .connection_timeout(Duration::from_secs(5))
        // Keep trying other cluster nodes (and this one) forever: a restarted or failed-over
        // server is the normal case, not an error.
        .max_reconnects(None);
    settings
        .nats
        .auth
        .apply(settings.nats.tls.apply(options))
        .await
        .map_err(anyhow::Error::msg)
}

/// Parses `nats://a:4222,nats://b:4222` (a cluster's nodes) into server addresses.
///
/// # Errors
/// When one of them is not a valid NATS URL (named with its credentials redacted).
pub fn server_list(url: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    url.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>().map_err(|e| {
                anyhow::anyhow!("`{}`: {e}", crate::settings::redact::redact_nats_url(u))
            })
        })
        .collect()
}

/// A JetStream context with a request timeout long enough for a loaded server.
pub fn jetstream(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(10))
        .build(client)
}

fn storage(settings: &Settings) -> stream::StorageType {
    match settings.nats.storage {
        StorageKind::File => stream::StorageType::File,
        StorageKind::Memory => stream::StorageType::Memory,
    }
}

/// Creates (or updates) the deployment's streams and the inputs object store bucket.
///
/// # Errors
/// When JetStream refuses a stream (e.g. a subject overlaps another stream's).
pub async fn ensure_streams(js: &jetstream::Context, settings: &Settings) -> anyhow::Result<()> {
    waiting_for_jetstream(|| ensure_streams_once(js, settings)).await
}

/// Runs a start-up request until JetStream answers it. A process that starts while
/// nats-server restarts (or a cluster elects its leaders) waits for JetStream, bounded by
/// [`STARTUP_PATIENCE`], as it waits for Postgres; a refusal fails at once.
async fn waiting_for_jetstream<T, F, Fut>(mut request: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let started = std::time::Instant::now();
    let mut pause =
        crate::backoff::Backoff::new(Duration::from_millis(200), Duration::from_secs(2));
    loop {
        match request().await {
            Err(e) if jetstream_not_ready(&e) && started.elapsed() < STARTUP_PATIENCE => {
                tracing::warn!(error = %format!("{e:#}"), "JetStream not ready yet, retrying");
                pause.wait().await;
            }
            other => return other,
        }
    }
}

/// How long a starting process waits for JetStream to answer.
pub const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// JetStream did not answer (a request timed out, no responders, not available yet): worth
/// another try while the server comes back, unlike a refusal of the request.
fn jetstream_not_ready(e: &anyhow::Error) -> bool {
    use jetstream::context::{CreateObjectStoreError, CreateObjectStoreErrorKind};
    use jetstream::context::{CreateStreamError, CreateStreamErrorKind, GetStreamError};
    use jetstream::context::{GetStreamErrorKind, RequestError, RequestErrorKind};
    use jetstream::stream::{ConsumerError, ConsumerErrorKind};
    e.chain().any(|cause| {
        let consumer = cause.downcast_ref::<ConsumerError>().map(|e| e.kind());
        if matches!(
            consumer,
            Some(ConsumerErrorKind::TimedOut | ConsumerErrorKind::Request)
        ) {
            return true;
        }
        let store = cause
            .downcast_ref::<CreateObjectStoreError>()
            .map(|e| e.kind());
        if store == Some(CreateObjectStoreErrorKind::TimedOut) {
            return true;
        }
        let create = cause.downcast_ref::<CreateStreamError>().map(|e| e.kind());
        let get = cause.downcast_ref::<GetStreamError>().map(|e| e.kind());
        let request = cause.downcast_ref::<RequestError>().map(|e| e.kind());
        matches!(
            create,
            Some(CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable)
        ) || matches!(get, Some(GetStreamErrorKind::Request))
            || matches!(
                request,
                Some(RequestErrorKind::TimedOut | RequestErrorKind::NoResponders)
            )
    })
}

async fn ensure_streams_once(js: &jetstream::Context, settings: &Settings) -> anyhow::Result<()> {
    let t = settings.topology();
    let base = stream::Config {
        storage: storage(settings),
        num_replicas: settings.nats.replicas.get(),
        duplicate_window: settings.nats.duplicate_window,
        ..Default::default()
    };
    let streams = [
        stream::Config {
            name: t.jobs_stream(),
            subjects: vec![
                t.jobs_submit_subject(),
                switchyard_proto::teams::submit_wildcard(&t),
            ],
            retention: stream::RetentionPolicy::WorkQueue,
            ..base.clone()
        },
        stream::Config {
            name: t.work_stream(),
            subjects: vec![t.work_subjects_wildcard()],
            retention: stream::RetentionPolicy::WorkQueue,
            ..base.clone()
        },
        stream::Config {
            name: t.dlq_stream(),
            subjects: vec![t.dlq_wildcard()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(30 * 24 * 3600),
            ..base.clone()
        },
        stream::Config {
            name: t.advisories_stream(),
            subjects: vec![t.max_deliveries_advisory_subject()],
            retention: stream::RetentionPolicy::Limits,
            max_age: Duration::from_secs(7 * 24 * 3600),
            ..base.clone()
        },
    ];
    for config in streams {
        let name = config.name.clone();
        ensure_stream(js, config)
            .await
            .with_context(|| format!("cannot create stream `{name}`"))?;
    }
    for bucket in [t.inputs_bucket(), t.files_bucket()] {
        if js.get_object_store(&bucket).await.is_err() {
            js.create_object_store(jetstream::object_store::Config {
                bucket: bucket.clone(),
                storage: storage(settings),
                num_replicas: settings.nats.replicas.get(),
                ..Default::default()
            })
            .await
            .with_context(|| format!("cannot create object store bucket `{bucket}`"))?;
        }
    }
    Ok(())
}

/// Creates a stream, or updates it when it exists; two processes racing is fine.
async fn ensure_stream(js: &jetstream::Context, config: stream::Config) -> anyhow::Result<()> {
    match js.get_stream(&config.name).await {
        Ok(_) => {
            js.update_stream(config).await?;
        }
        Err(_) => {
            if let Err(e) = js.create_stream(config.clone()).await {
                // Another process may have created it in between.
                if js.get_stream(&config.name).await.is_err() {
                    return Err(e.into());
                }
            }
        }
    }
    Ok(())
}

/// Parameters of a durable pull consumer.
#[derive(Debug, Clone)]
pub struct ConsumerSpec {
    pub stream: String,
    pub durable: String,
    pub filter_subject: String,
    pub ack_wait: Duration,
    pub max_deliver: i64,
    pub max_ack_pending: i64,
}

/// Creates the durable pull consumer, or returns the existing one (updating its settings).
/// Waits, as [`ensure_streams`] does, for a JetStream that does not answer yet: a lane or
/// the dispatcher starts right after the streams are made, and a restarting server can go
/// away in between.
///
/// # Errors
/// When the stream does not exist or JetStream refuses the consumer.
pub async fn ensure_consumer(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> anyhow::Result<consumer::PullConsumer> {
    waiting_for_jetstream(|| ensure_consumer_once(js, spec)).await
}

async fn ensure_consumer_once(
    js: &jetstream::Context,
    spec: &ConsumerSpec,
) -> anyhow::Result<consumer::PullConsumer> {
    let stream = js
        .get_stream(&spec.stream)
        .await
        .with_context(|| format!("cannot find stream `{}`", spec.stream))?;
    let config = consumer::pull::Config {
        durable_name: Some(spec.durable.clone()),
        filter_subject: spec.filter_subject.clone(),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver,
        max_ack_pending: spec.max_ack_pending,
        deliver_policy: consumer::DeliverPolicy::All,
        ..Default::default()
    };
    match stream.create_consumer(config.clone()).await {
        Ok(c) => Ok(c),
        Err(create_err)
            if spec.filter_subject.is_empty()
                && stream
                    .get_consumer::<consumer::pull::Config>(&spec.durable)
                    .await
                    .is_ok_and(|c| !c.cached_info().config.filter_subject.is_empty()) =>
        {
            // A consumer from before team subjects, filtered on the bare submit subject (a
            // 2.9 server cannot change a filter). On a work-queue stream recreating it loses
            // nothing: unacked messages stay in the stream for the new consumer.
            tracing::warn!(consumer = %spec.durable, error = %create_err, "recreating consumer without its old subject filter");
            let _ = stream.delete_consumer(&spec.durable).await;
            stream
                .create_consumer(config)
                .await
                .with_context(|| format!("cannot recreate consumer `{}`", spec.durable))
        }
        Err(create_err) => {
            // Exists with other settings (e.g. created by an older version): use it as it is.
            // Updating a consumer needs a 2.10+ server; the log says what differs.
            tracing::warn!(
                consumer = %spec.durable, error = %create_err,
                "consumer exists with different settings, using it unchanged"
            );
            stream.get_consumer(&spec.durable).await.map_err(|_| {
                anyhow::anyhow!(create_err).context(format!(
                    "cannot create consumer `{}` on `{}`",
                    spec.durable, spec.stream
                ))
            })
        }
    }
}

/// The dispatcher's consumer on the jobs stream.
pub fn dispatcher_consumer_spec(settings: &Settings) -> ConsumerSpec {
    let t = settings.topology();
    ConsumerSpec {
        stream: t.jobs_stream(),
        durable: t.dispatcher_consumer(),
        // Every submit subject: the bare one and each team's.
        filter_subject: String::new(),
        // A large job takes a while; the dispatcher sends in-progress acks meanwhile.
        ack_wait: settings.dispatcher.ack_wait,
        max_deliver: settings.dispatcher.max_deliver,
        max_ack_pending: 64,
    }
}

/// A tier's worker consumer on the work stream.
pub fn worker_consumer_spec(settings: &Settings, tier: &str) -> ConsumerSpec {
    let t = settings.topology();
    let w = &settings.worker;
    ConsumerSpec {
        stream: t.work_stream(),
        durable: t.worker_consumer(tier),
        filter_subject: t.work_subject(tier),
        ack_wait: w.ack_wait,
        max_deliver: w.max_deliver,
        // Enough for every process's fetched-but-unfinished items; delivery silently stops
        // when this is reached, so it must not be lower than what workers hold.
        max_ack_pending: 20_000,
    }
}

/// The consumer that reads max-deliveries advisories (shared by all workers).
pub fn advisories_consumer_spec(settings: &Settings) -> ConsumerSpec {
    let t = settings.topology();
    ConsumerSpec {
        stream: t.advisories_stream(),
        durable: "reaper".to_owned(),
        filter_subject: String::new(),
        ack_wait: Duration::from_secs(30),
        max_deliver: 10,
        max_ack_pending: 1000,
    }
}

/// Deletes every stream and bucket of the deployment (tests and the demo clean up with it).
///
/// # Errors
/// Never for missing streams; only when the server refuses a deletion.
pub async fn delete_topology(js: &jetstream::Context, settings: &Settings) -> anyhow::Result<()> {
    let t = settings.topology();
    for name in [
        t.jobs_stream(),
        t.work_stream(),
        t.dlq_stream(),
        t.advisories_stream(),
    ] {
        let _ = js.delete_stream(&name).await;
    }
    let _ = js.delete_object_store(t.inputs_bucket()).await;
    let _ = js.delete_object_store(t.files_bucket()).await;
    Ok(())
}
