//! Submitting jobs and following them: the library behind `submit`, `wait`, `status`,
//! `results`, `cancel` and `retry`.
//!
//! Submissions go over NATS (the dispatcher's stream); reading state goes to Postgres, the
//! source of truth. Jobs whose encoded spec would exceed [`INLINE_LIMIT`] upload their items
//! to the deployment's object store bucket as JSONL and reference it.
//!
//! Beside the client: [`input`] (reading a JSONL items file, errors naming the line),
//! [`policy_arg`] (`--policy` strings), [`report`] (rendering a status, exporting results)
//! and [`exit`] (the exit codes pipelines branch on). Before a job: [`quote`] (what it would
//! cost and deliver, routed by the dispatcher's own route planning, no NATS needed); after
//! one, or on paper: [`explain`] (why an item went where it went).

pub mod exit;
pub mod explain;
pub mod input;
pub mod policy_arg;
pub mod quote;
pub mod report;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt;
use sqlx::PgPool;
use switchyard_proto::topology::{HEADER_JOB_ID, HEADER_MSG_ID};
use switchyard_proto::{InputRef, Item, JobSpec, Policy, Task, WorkItem, codec};
use switchyard_runtime::Settings;
use switchyard_store::reports::{self, JobStatus};

/// Largest spec sent inline; larger jobs go through the object store (NATS's default
/// maximum message is 1 MiB).
pub const INLINE_LIMIT: usize = 512 * 1024;

/// How often [`Client::wait`] computes a full job status while the job runs.
pub const PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// A connection to a deployment.
#[derive(Clone)]
pub struct Client {
    pub settings: Arc<Settings>,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub pool: PgPool,
    /// Specs larger than this go through the object store ([`INLINE_LIMIT`] by default).
    pub inline_limit: usize,
}

/// How waiting for a job ended.
#[derive(Debug)]
pub enum WaitOutcome {
    /// The job reached a final state.
    Finished(Box<JobStatus>),
    /// The timeout passed first (the last status seen, if any).
    TimedOut(Option<Box<JobStatus>>),
    /// No job with this id appeared.
    NotFound,
}

impl Client {
    /// Connects to NATS and Postgres and makes sure the streams exist.
    ///
    /// # Errors
    /// Unreachable services.
    pub async fn connect(settings: Settings) -> anyhow::Result<Self> {
        let nats = switchyard_runtime::nats::connect(&settings, "switchyard-cli").await?;
        let js = switchyard_runtime::nats::jetstream(nats.clone());
        switchyard_runtime::nats::ensure_streams(&js, &settings).await?;
        let pool = switchyard_store::connect_and_migrate(settings.database_url(), 4).await?;
        Ok(Self {
            settings: Arc::new(settings),
            nats,
            js,
            pool,
            inline_limit: INLINE_LIMIT,
        })
    }

    /// Submits a job: inline if small, through the object store if not. Returns the job id,
    /// which is an earlier job's when the idempotency key was already used (nothing new is
    /// submitted then).
    ///
    /// # Errors
    /// When NATS does not acknowledge the submission.
    pub async fn submit(&self, mut spec: JobSpec) -> anyhow::Result<String> {
        if let Some(existing) =
            switchyard_store::jobs::by_idempotency_key(&self.pool, spec.effective_idempotency_key())
                .await?
        {
            return Ok(existing);
        }
        let mut payload = codec::encode(&spec)?;
        if payload.len() > self.inline_limit
            && let Some(items) = spec.items.take()
        {
            let mut jsonl = Vec::new();
            for item in &items {
                serde_json::to_writer(&mut jsonl, item)?;
                jsonl.push(b'\n');
            }
            let bucket = self.settings.topology().inputs_bucket();
            let store = self
                .js
                .get_object_store(&bucket)
                .await
                .context("inputs bucket missing")?;
            store
                .put(spec.job_id.as_str(), &mut &jsonl[..])
                .await
                .context("cannot upload the job's items to the object store")?;
            spec.input = Some(InputRef {
                bucket,
                name: spec.job_id.clone(),
            });
            payload = codec::encode(&spec)?;
        }
        self.publish_submission(&spec, payload).await
    }

    /// Submits a job whose items are already in the inputs bucket (`spec.input` set), so a
    /// caller that streams a large job's items there never holds them in memory. Returns the
    /// job id, an earlier job's when the idempotency key was already used.
    ///
    /// # Errors
    /// A spec without `input`, or when NATS does not acknowledge the submission.
    pub async fn submit_uploaded(&self, spec: JobSpec) -> anyhow::Result<String> {
        anyhow::ensure!(
            spec.input.is_some() && spec.items.is_none(),
            "submit_uploaded needs a spec whose items are in the inputs bucket (`input`)"
        );
        if let Some(existing) =
            switchyard_store::jobs::by_idempotency_key(&self.pool, spec.effective_idempotency_key())
                .await?
        {
            return Ok(existing);
        }
        let payload = codec::encode(&spec)?;
        self.publish_submission(&spec, payload).await
    }

    /// Publishes an encoded submission on the subject this deployment takes it on, and
    /// resolves a duplicate to the job that holds its key.
    async fn publish_submission(&self, spec: &JobSpec, payload: Vec<u8>) -> anyhow::Result<String> {
        let key = spec.effective_idempotency_key().to_owned();
        let t = self.settings.topology();
        // Where team identity is enforced, the team is the subject's (NATS permissions allow
        // this client's user only its own team's subject).
        let subject = match (&spec.team, self.settings.security.team_from_subject) {
            (Some(team), true) => switchyard_proto::teams::submit_subject(&t, team),
            (None, true) => anyhow::bail!(
                "this deployment bills jobs to the submitter's team: give --team (your NATS \
                 user's team)"
            ),
            (_, false) => t.jobs_submit_subject(),
        };
        let ack = self
            .publish_spec_on(subject, &spec.job_id, &format!("job:{key}"), payload)
            .await?;
        if ack.duplicate {
            // JetStream already holds a submission with this key (within its duplicate
            // window): that one is the job. Its row appears once a dispatcher admits it.
            for _ in 0..100 {
                if let Some(existing) =
                    switchyard_store::jobs::by_idempotency_key(&self.pool, &key).await?
                {
                    return Ok(existing);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            anyhow::bail!(
                "idempotency key `{key}` was just used by another submission; try `switchyard status` later"
            );
        }
        Ok(spec.job_id.clone())
    }

    /// Publishes an encoded job spec as is, with `Nats-Msg-Id: msg_id` (the client uses
    /// `job:<idempotency key>`; tests use it to send malformed jobs). Returns JetStream's
    /// acknowledgement, which says whether the message was a duplicate.
    ///
    /// # Errors
    /// When NATS does not acknowledge the submission.
    pub async fn publish_spec(
        &self,
        job_id: &str,
        msg_id: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<async_nats::jetstream::publish::PublishAck> {
        let subject = self.settings.topology().jobs_submit_subject();
        self.publish_spec_on(subject, job_id, msg_id, payload).await
    }

    /// [`Client::publish_spec`] on a given subject (a team's: `<prefix>.jobs.submit.<team>`).
    ///
    /// # Errors
    /// When NATS does not acknowledge the submission (a subject this user may not publish on
    /// is refused by the server).
    pub async fn publish_spec_on(
        &self,
        subject: String,
        job_id: &str,
        msg_id: &str,
        payload: Vec<u8>,
    ) -> anyhow::Result<async_nats::jetstream::publish::PublishAck> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_MSG_ID, msg_id);
        headers.insert(HEADER_JOB_ID, job_id);
        self.js
            .publish_with_headers(subject, headers, Bytes::from(payload))
            .await?
            .await
            .context("the jobs stream did not acknowledge the submission")
    }

    /// The job's status, `None` if unknown.
    ///
    /// # Errors
    /// Database errors.
    pub async fn status(&self, job_id: &str) -> anyhow::Result<Option<JobStatus>> {
        Ok(reports::job_status(&self.pool, job_id).await?)
    }

    /// Waits until the job reaches a final state, calling `on_progress` with its status at
    /// most every [`PROGRESS_EVERY`] and once more when it is final. `appear_within` bounds
    /// how long a job that does not exist yet is waited for.
    ///
    /// Every commit of every worker announces progress, and a full status counts the job's
    /// items and ledger rows: computing one per announcement would have one waiting client
    /// scan a large job hundreds of times a second. Between full statuses only the job's own
    /// row is read (is it final yet?).
    ///
    /// # Errors
    /// Database errors.
    pub async fn wait(
        &self,
        job_id: &str,
        timeout: Option<Duration>,
        appear_within: Duration,
        mut on_progress: impl FnMut(&JobStatus),
    ) -> anyhow::Result<WaitOutcome> {
        let t = self.settings.topology();
        let mut events = self.nats.subscribe(t.events_subject(job_id)).await?;
        let mut done = self.nats.subscribe(t.job_done_subject(job_id)).await?;
        let started = Instant::now();
        let mut last: Option<Box<JobStatus>> = None;
        let mut last_full: Option<Instant> = None;
        loop {
            let due = last_full.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY);
            // Between full statuses only the job's row is read: is it final yet?
            let full = due
                || switchyard_store::jobs::get(&self.pool, job_id)
                    .await?
                    .is_some_and(|j| switchyard_store::jobs::status::is_final(&j.status));
            if full {
                match self.status(job_id).await? {
                    Some(s) => {
                        last_full = Some(Instant::now());
                        on_progress(&s);
                        if switchyard_store::jobs::status::is_final(&s.job.status) {
                            return Ok(WaitOutcome::Finished(Box::new(s)));
                        }
                        last = Some(Box::new(s));
                    }
                    None if started.elapsed() > appear_within => {
                        return Ok(WaitOutcome::NotFound);
                    }
                    None => {}
                }
            }
            if timeout.is_some_and(|t| started.elapsed() > t) {
                return Ok(WaitOutcome::TimedOut(last));
            }
            // Wake on an event, or poll again after a short while (events are best effort).
            tokio::select! {
                _ = events.next() => {}
                _ = done.next() => {}
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
        }
    }

    /// Cancels a job: items not yet answered are not called. Returns how many were cancelled,
    /// `None` when the job is unknown or already finished.
    ///
    /// # Errors
    /// Database errors.
    pub async fn cancel(&self, job_id: &str) -> anyhow::Result<Option<u64>> {
        Ok(switchyard_store::jobs::cancel(&self.pool, job_id).await?)
    }

    /// Re-runs a job's failed items on the tier they were routed to. Returns how many.
    ///
    /// The items are committed `queued` at a new attempt before they are published (see
    /// `jobs::reopen_failed` for why); if this process dies in between, the job is `running`
    /// with attempts nothing works on, and a dispatcher's stuck-job sweep publishes them.
    ///
    /// # Errors
    /// Unknown job, or NATS/database errors.
    pub async fn retry_failed(&self, job_id: &str) -> anyhow::Result<usize> {
        let job = switchyard_store::jobs::get(&self.pool, job_id)
            .await?
            .with_context(|| format!("no job `{job_id}`"))?;
        let task: Task = serde_json::from_value(job.task.clone().unwrap_or_default())
            .context("the job has no task (was it rejected?)")?;
        let policy: Policy =
            serde_json::from_value(job.policy.clone().unwrap_or_default()).unwrap_or_default();
        let items = switchyard_store::jobs::reopen_failed(&self.pool, job_id).await?;
        let ds = &self.settings.dispatcher;
        for item in &items {
            let tier = item
                .routed_tier
                .clone()
                .unwrap_or_else(|| ds.weak_tier.clone());
            let attempt = u16::try_from(item.next_attempt).unwrap_or(u16::MAX);
            let msg = WorkItem {
                v: task.message_version(),
                job_id: job_id.to_owned(),
                item_id: item.item_id.clone(),
                attempt,
                tier,
                text: item.text.clone(),
                task: task.clone(),
                team: job.team.clone(),
                project: job.project.clone(),
                local_only: item.sensitivity.as_deref() == Some("local_only"),
                models: policy.models.clone(),
                confidence_threshold: policy
                    .cascade
                    .confidence_threshold
                    .unwrap_or(ds.confidence_threshold.get()),
                escalations_left: policy.cascade.max_escalations.unwrap_or(ds.max_escalations),
                escalation: None,
                router_score: None,
                cost_weight: None,
                deadline: None,
            };
            self.publish_work(&msg, &msg.attempt_key()).await?;
        }
        Ok(items.len())
    }

    /// Publishes `msg` on its tier's work subject under message id `msg_id` (JetStream drops
    /// a second message of an id within its duplicate window) and waits for the ack.
    ///
    /// # Errors
    /// NATS errors.
    pub async fn publish_work(&self, msg: &WorkItem, msg_id: &str) -> anyhow::Result<()> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_MSG_ID, msg_id);
        let subject = self.settings.topology().work_subject(&msg.tier);
        self.js
            .publish_with_headers(subject, headers, Bytes::from(codec::encode(msg)?))
            .await?
            .await?;
        Ok(())
    }
}

/// Builds a job spec for a task and items with a fresh ULID job id.
pub fn new_job(task: Task, items: Vec<Item>) -> JobSpec {
    let mut spec = JobSpec::new(ulid::Ulid::new().to_string(), task);
    spec.items = Some(items);
    spec
}
