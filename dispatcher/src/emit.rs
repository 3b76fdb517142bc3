//! Pass 2 of a job: read the items again, give each its final tier from the job's cut,
//! store them a chunk at a time, and publish each chunk once it is stored.
//!
//! Each item row is written once, with its tier (no update of the whole job after the plan,
//! no read-back to publish): that is most of what makes dispatch run near the speed of the
//! raw insert-and-publish (README, performance). Storing chunk `k + 1` overlaps publishing
//! chunk `k`; an item is never published before its row is committed, so a worker always
//! finds the row it answers.
//!
//! Resuming (the job was `dispatching` when a dispatcher died): the same items are read and
//! routed again, inserted where missing (`ON CONFLICT DO NOTHING`), and the items of the chunk
//! whose first attempt is still unanswered are published again
//! ([`items::unanswered_between`]): never one that has an answer, a recorded failure or a
//! later attempt. JetStream drops re-publishes within its duplicate window (`Nats-Msg-Id`);
//! past it, the workers' claim makes one that slips through (answered meanwhile) call
//! nothing.

use std::collections::BTreeMap;

use bytes::Bytes;
use switchyard_core::policy::{Cut, Route};
use switchyard_core::route::ItemRoute;
use switchyard_proto::{Item, JobSpec, WorkItem, codec, work};
use switchyard_store::items::{self, NewItem, StoredItem};
use switchyard_store::jobs::{self, status};

use crate::Dispatcher;
use crate::ingest::{self, job_router};
use crate::pilot::Stage;
use crate::publisher::WindowedPublisher;
use crate::source::ItemSource;
use switchyard_core::route::TierPrices;

/// What pass 2 did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Emitted {
    /// Work messages published (shadow calls not counted).
    pub published: u64,
    /// Per tier, items published.
    pub per_tier: BTreeMap<String, u64>,
    /// Audit calls published (a quality job's pilot and audit sample).
    pub audits: u64,
    /// The job stopped being `dispatching` (cancelled) before every item was stored.
    pub stopped: bool,
}

/// An item stored and ready to publish.
struct Ready {
    item_id: String,
    text: String,
    local_only: bool,
    tier: String,
    /// The router's raw score (a quality job's rule uses it).
    score: f32,
    /// Which of the item's messages to publish: its first message (with its shadow call),
    /// its audit call (if the stage audits it). Both, but when a lost pilot call is
    /// published again ([`republish_lost_pilot`]).
    first: bool,
    audit: bool,
}

impl From<NewItem> for Ready {
    fn from(i: NewItem) -> Self {
        Ready {
            local_only: i.sensitivity.as_deref() == Some("local_only"),
            item_id: i.item_id,
            text: i.text,
            tier: i.routed_tier,
            score: i.router_score,
            first: true,
            audit: true,
        }
    }
}

/// The tier of an item: the one a pin or rule forced, else the job's cut decides.
fn tier_of(route: &ItemRoute, seq: i64, cut: &Cut, weak: &str, strong: &str) -> String {
    if let Some(t) = &route.tier {
        return t.clone();
    }
    match cut.route(route.key, seq) {
        Route::Strong => strong.to_owned(),
        // A cut only chooses between weak and strong (`local` comes from a pin).
        Route::Weak | Route::Local => weak.to_owned(),
    }
}

/// The cut as stored with the job (see [`Cut::as_pair`]) turned back into a [`Cut`].
pub fn cut_from_pair(pair: Option<(f32, i64)>) -> Cut {
    match pair {
        Some((score_cut, last_seq)) => Cut::Rank {
            score_cut,
            last_seq,
        },
        None => Cut::Nothing,
    }
}

/// Stores and publishes the items of `spec` that `stage` includes (every item but in a
/// quality job's two stages, see [`crate::pilot`]), read from `source` (from its start),
/// routed by the stage's cut with `prices`. `scores`: pass 1's raw scores by position, when this
/// process just made them; `None` scores again (a resumed dispatch).
///
/// # Errors
/// Database or NATS failures, or an input that changed between the passes; the job message
/// is redelivered and the dispatch resumes.
pub async fn emit(
    d: &Dispatcher,
    spec: &JobSpec,
    source: &mut ItemSource,
    prices: &TierPrices,
    scores: Option<&[f32]>,
    stage: &Stage,
    progress: &mut impl FnMut(),
) -> anyhow::Result<Emitted> {
    source.rewind().await?;
    let cut = &stage.cut();
    let ds = &d.settings.dispatcher;
    let router = job_router(d, spec, prices);
    // Pass 1 planned already; this accumulator is only what `route` writes to.
    let mut scratch = router.inputs();
    let mut out = Emitted::default();
    let mut sender = Sender::new(d, spec, stage, job_deadline(d, spec).await?);
    let mut stored: Vec<Ready> = Vec::new();
    let mut seq: i64 = 0;
    loop {
        let mut rows: Vec<NewItem> = Vec::with_capacity(ds.chunk_size.get());
        while rows.len() < ds.chunk_size.get() {
            let Some(next) = source.next().await else {
                break;
            };
            let (_, item) = next.map_err(|e| {
                anyhow::anyhow!(
                    "input of job {} changed since it was checked: {e}",
                    spec.job_id
                )
            })?;
            let score = match scores.and_then(|s| s.get(seq as usize)) {
                Some(&score) => score,
                None => ingest::score(d, spec, &item),
            };
            let (route, raw) = router.route(&item, seq, score, &mut scratch);
            if stage.includes(spec.sample_key(), &item.item_id, route.tier.is_some()) {
                rows.push(new_item(item, seq, raw, route, cut, ds));
            }
            seq += 1;
        }
        // Store this chunk while the previous one is published.
        let to_publish = std::mem::take(&mut stored);
        let (inserted, sent) = tokio::join!(
            async {
                if rows.is_empty() {
                    return Ok(0);
                }
                items::insert_chunk(&d.pool, &spec.job_id, &rows).await
            },
            sender.send_all(to_publish, &mut out),
        );
        sent?;
        let inserted = inserted?;
        if rows.is_empty() {
            break;
        }
        if inserted as usize == rows.len() {
            stored = rows.into_iter().map(Ready::from).collect();
        } else {
            // Stored before (a resumed dispatch), or the job is no longer dispatching.
            let still = jobs::get(&d.pool, &spec.job_id)
                .await?
                .is_some_and(|j| j.status == status::DISPATCHING);
            if !still {
                out.stopped = true;
                break;
            }
            let (first, last) = (rows[0].seq, rows[rows.len() - 1].seq);
            stored = items::unanswered_between(&d.pool, &spec.job_id, first, last)
                .await?
                .into_iter()
                .filter(|i| stage.includes(spec.sample_key(), &i.item_id, i.route_tier.is_some()))
                .map(|i| sender.ready_from_stored(i))
                .collect();
        }
        progress();
    }
    sender.send_all(stored, &mut out).await?;
    sender.publisher.flush().await?;
    Ok(out)
}

/// Publishes again the calls of a quality job's pilot that nothing works on (see
/// [`switchyard_store::quality::lost_pilot_calls`]): each lost weak call with its
/// record-only rule, each lost audit call alone, as they were first published (same
/// `Nats-Msg-Id`, so JetStream drops a copy still in its duplicate window; past it, the
/// workers' claim makes a copy of a call already made call nothing). `waiting(tier)`: that
/// tier's workers still have messages to be handed out, among which the call may be; its
/// calls wait for the next look. `done`: when each call (item, audit?) was last published
/// again; one is published again only once JetStream's duplicate window has passed since
/// (within it, a copy of a message lost from the stream may be dropped as a duplicate; past
/// it, at most one copy a window piles up). Returns the messages published.
///
/// # Errors
/// Database or NATS failures.
pub(crate) async fn republish_lost_pilot(
    d: &Dispatcher,
    spec: &JobSpec,
    stage: &Stage,
    lost: Vec<switchyard_store::quality::LostPilotCall>,
    waiting: &mut crate::sweeper::Backlogs<'_>,
    done: &mut Republished,
) -> anyhow::Result<u64> {
    let window = d.settings.nats.duplicate_window;
    let now = tokio::time::Instant::now();
    // Due (and marked published now) unless published again within the window.
    let mut due = |item: &str, audit: bool| {
        let key = (item.to_owned(), audit);
        let due = done.get(&key).is_none_or(|at| now - *at >= window);
        if due {
            done.insert(key, now);
        }
        due
    };
    let strong = d.settings.dispatcher.strong_tier.clone();
    let mut sender = Sender::new(d, spec, stage, job_deadline(d, spec).await?);
    let mut ready = Vec::with_capacity(lost.len());
    for call in lost {
        let mut item = sender.ready_from_stored(call.item);
        item.first =
            call.first_lost && !waiting.waiting(&item.tier).await && due(&item.item_id, false);
        item.audit = call.audit_lost && !waiting.waiting(&strong).await && due(&item.item_id, true);
        if item.first || item.audit {
            ready.push(item);
        }
    }
    let mut out = Emitted::default();
    sender.send_all(ready, &mut out).await?;
    sender.publisher.flush().await?;
    Ok(out.published + out.audits)
}

/// When each pilot call (item, audit?) was last published again
/// ([`republish_lost_pilot`]).
pub(crate) type Republished = std::collections::HashMap<(String, bool), tokio::time::Instant>;

/// The job's deadline as its messages carry it (fixed when the job was admitted).
async fn job_deadline(d: &Dispatcher, spec: &JobSpec) -> anyhow::Result<Option<u64>> {
    Ok(match spec.deadline {
        Some(_) => unix_deadline(jobs::deadline_unix(&d.pool, &spec.job_id).await?),
        None => None,
    })
}

fn new_item(
    item: Item,
    seq: i64,
    raw_score: f32,
    route: ItemRoute,
    cut: &Cut,
    ds: &switchyard_runtime::settings::DispatcherSettings,
) -> NewItem {
    let metadata = if item.metadata.is_empty() {
        None
    } else {
        serde_json::to_string(&item.metadata).ok()
    };
    NewItem {
        input_hash: switchyard_store::sha256_hex(item.text.as_bytes()),
        routed_tier: tier_of(&route, seq, cut, &ds.weak_tier, &ds.strong_tier),
        item_id: item.item_id,
        seq,
        text: item.text,
        sensitivity: item.sensitivity,
        metadata,
        router_score: raw_score,
        route,
    }
}

/// A job's deadline as its messages carry it: Unix seconds.
pub fn unix_deadline(secs: Option<i64>) -> Option<u64> {
    secs.and_then(|t| u64::try_from(t).ok())
}

/// Publishes stored items as work messages (and their shadow calls).
struct Sender<'a> {
    d: &'a Dispatcher,
    spec: &'a JobSpec,
    stage: &'a Stage,
    publisher: WindowedPublisher,
    team: String,
    project: String,
    threshold: f64,
    escalations: u8,
    /// The job's deadline in Unix seconds, carried by every message.
    deadline: Option<u64>,
}

impl<'a> Sender<'a> {
    fn new(d: &'a Dispatcher, spec: &'a JobSpec, stage: &'a Stage, deadline: Option<u64>) -> Self {
        let ds = &d.settings.dispatcher;
        Sender {
            d,
            spec,
            stage,
            deadline,
            publisher: WindowedPublisher::new(d.js.clone(), ds.publish_window.get()),
            team: spec.team.clone().unwrap_or_else(|| "default".to_owned()),
            project: spec.project.clone().unwrap_or_else(|| "default".to_owned()),
            threshold: spec
                .policy
                .cascade
                .confidence_threshold
                .unwrap_or(ds.confidence_threshold.get()),
            escalations: spec
                .policy
                .cascade
                .max_escalations
                .unwrap_or(ds.max_escalations),
        }
    }

    fn ready_from_stored(&self, i: StoredItem) -> Ready {
        Ready {
            local_only: i.sensitivity.as_deref() == Some("local_only"),
            tier: i
                .routed_tier
                .unwrap_or_else(|| self.d.settings.dispatcher.weak_tier.clone()),
            item_id: i.item_id,
            text: i.text,
            score: i.router_score,
            first: true,
            audit: true,
        }
    }

    async fn send_all(&mut self, items: Vec<Ready>, out: &mut Emitted) -> anyhow::Result<()> {
        let t = self.d.settings.topology();
        for item in items {
            let (first, audit) = (item.first, item.audit);
            if first {
                if let Some(n) = out.per_tier.get_mut(&item.tier) {
                    *n += 1;
                } else {
                    out.per_tier.insert(item.tier.clone(), 1);
                }
            }
            let mut msg = WorkItem {
                v: switchyard_proto::version_for(&self.spec.task, self.deadline.is_some()),
                job_id: self.spec.job_id.clone(),
                item_id: item.item_id,
                attempt: 0,
                tier: item.tier,
                text: item.text,
                task: self.spec.task.clone(),
                team: self.team.clone(),
                project: self.project.clone(),
                local_only: item.local_only,
                models: self.spec.policy.models.clone(),
                confidence_threshold: self.threshold,
                escalations_left: self.escalations,
                escalation: None,
                router_score: None,
                cost_weight: None,
                deadline: self.deadline,
            };
            let ds = &self.d.settings.dispatcher;
            let audit_call = self.stage.decorate(
                &mut msg,
                self.spec.sample_key(),
                item.score,
                &ds.weak_tier,
                &ds.strong_tier,
            );
            let audit = audit_call.filter(|_| audit);
            let shadow = crate::dispatch::shadow_of(self.d, self.spec, &msg).filter(|_| first);
            if first {
                let payload = codec::encode(&msg)?;
                let id = work::attempt_key(&msg.job_id, &msg.item_id, 0);
                self.publisher
                    .publish(t.work_subject(&msg.tier), &id, Bytes::from(payload))
                    .await?;
                out.published += 1;
            }
            out.audits += u64::from(audit.is_some());
            for extra in shadow.into_iter().chain(audit) {
                let id = extra.attempt_key();
                self.publisher
                    .publish(
                        t.work_subject(&extra.tier),
                        &id,
                        Bytes::from(codec::encode(&extra)?),
                    )
                    .await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_tiers_win_and_the_cut_ranks_the_rest() {
        let route = |tier: Option<&str>, key: f32| ItemRoute {
            tier: tier.map(str::to_owned),
            key,
            ..ItemRoute::default()
        };
        let cut = cut_from_pair(Some((0.5, 3)));
        assert_eq!(
            tier_of(&route(Some("local"), 0.9), 0, &cut, "w", "s"),
            "local"
        );
        assert_eq!(tier_of(&route(None, 0.6), 9, &cut, "w", "s"), "s");
        assert_eq!(tier_of(&route(None, 0.5), 3, &cut, "w", "s"), "s");
        assert_eq!(tier_of(&route(None, 0.5), 4, &cut, "w", "s"), "w");
        assert_eq!(tier_of(&route(None, 0.4), 0, &cut, "w", "s"), "w");
        let none = cut_from_pair(None);
        assert_eq!(tier_of(&route(None, 9.0), 0, &none, "w", "s"), "w");
        // A threshold cut stored as a pair keeps its meaning: at or above goes strong.
        let at_least = cut_from_pair(Cut::AtLeast(0.5).as_pair());
        assert_eq!(
            tier_of(&route(None, 0.5), 1_000_000, &at_least, "w", "s"),
            "s"
        );
    }
}
