//! Provider quota, per model, as this process applies it: requests per minute and tokens per
//! minute paced one call at a time, and a pause that a 429 sets for every call to the model.
//!
//! The configured `rpm`/`tpm` are the provider's quota for the whole fleet (with
//! `[worker] fleet_quota`, the default). [`crate::quota`] decides what share of it this
//! process may use and for how long ([`ModelLimiter::grant`]); without a grant that is still
//! valid, a limited model is not called at all, so a process that lost touch with the fleet
//! (or has not seen it yet) cannot overshoot the quota. Standalone (`fleet_quota = false`) a
//! process uses the whole quota, with no lease.
//!
//! Pacing is a generic cell rate algorithm with no burst of requests (tokens may run one
//! second of the rate ahead, so one long prompt does not hold back the calls behind it), at
//! the quota times `[worker] quota_headroom` times the share: a call may leave when both the
//! request and the token schedule have caught up with the clock, and then pushes them ahead
//! by one request and by the call's estimated tokens, from the slot it waited for (a call
//! woken a little late keeps the grid, so a loaded machine does not lose its lateness on
//! every call; after a longer idle time the schedule restarts from now). Waiting calls queue
//! in arrival order and only the head of the queue watches the clock. When the share changes,
//! the part of the schedule still ahead is rescaled to the new rate, so what was sent under
//! the old share is paid off under the new one: over any window a process sends at most its
//! share's worth plus a call or two, however often the share moves. Providers enforce windows
//! shorter than a minute, and a burst on top of the steady rate is what earns 429s.
//!
//! Tokens are counted before the call is sent (the prompt's bytes / 4 and four tokens per
//! message, plus the completion budget: [`estimate_tokens`]) and corrected by what the provider reports after
//! ([`ModelLimiter::settle`]).
//!
//! A 429 pauses the model for its `Retry-After` (or a doubling default without one) in this
//! process and, through the coordinator, in every other one ([`ModelLimiter::throttled`]).
//! It is one episode however many calls hear it: a 429 answering a call that left before the
//! current episode began is part of that episode and neither restarts nor extends the pause.

use std::num::NonZeroU32;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::llm::CompletionRequest;

/// How late a waiting call may wake up and still keep the schedule, at least (see
/// `try_take`): a loaded machine wakes a sleeping task tens, sometimes hundreds of
/// milliseconds late.
const LATE: Duration = Duration::from_millis(100);

/// How far ahead of the clock the token schedule may run (see `try_take`): a second of the
/// share, as a provider's token bucket would allow.
const TOKEN_BURST: Duration = Duration::from_secs(1);

/// A pause to tell the rest of the fleet about.
#[derive(Debug, Clone)]
pub struct PauseNotice {
    pub model: String,
    pub retry_after: Duration,
    /// When the pause began here: the notice is relayed (and recorded for processes that
    /// join later) a moment after, and must end when this process's pause ends, not later.
    pub began: Instant,
}

impl PauseNotice {
    /// What is left of the pause now.
    pub fn remaining(&self) -> Duration {
        self.retry_after.saturating_sub(self.began.elapsed())
    }
}

/// Pause of a 429 without `Retry-After`: one second, doubling with each episode that follows
/// the previous one within a minute, at most a minute (a provider's window is a minute: by
/// then it has forgotten everything).
fn default_pause(consecutive: u32) -> Duration {
    Duration::from_secs(1u64 << consecutive.min(6)).min(Duration::from_secs(60))
}

/// Tokens a request will use at most: its messages' bytes / 4 (rounded up, a common estimate
/// of English text that errs high elsewhere), four tokens of framing per message, and the
/// whole completion budget.
pub fn estimate_tokens(request: &CompletionRequest) -> u32 {
    let prompt: usize = request
        .messages
        .iter()
        .map(|m| m.content.len().div_ceil(4) + 4)
        .sum::<usize>()
        .saturating_mul(request.requests() as usize);
    u32::try_from(prompt)
        .unwrap_or(u32::MAX)
        .saturating_add(3)
        .saturating_add(request.completion_bound())
}

#[derive(Debug)]
struct State {
    /// Share of the fleet's quota this process may use, in [0, 1].
    share: f64,
    /// Processes sharing the quota (this one included), as last counted.
    members: u32,
    /// The share is valid until then (a fleet grant); `None`: no lease (standalone).
    lease_until: Option<Instant>,
    /// The share the schedules below were computed with.
    paced_share: f64,
    /// When the next request may leave.
    request_at: Instant,
    /// When the tokens sent so far are paid off.
    tokens_at: Instant,
    paused_until: Option<Instant>,
    /// When the current (or last) 429 episode began here.
    episode_began: Option<Instant>,
    /// Episodes that followed the previous one within a minute (for the default pause).
    consecutive: u32,
    episodes: u64,
}

/// Why a call cannot leave yet.
enum Wait {
    Until(Instant),
    /// No valid share: until the coordinator grants one.
    ForGrant,
}

/// The quota of one model, as this process applies it.
#[derive(Debug)]
pub struct ModelLimiter {
    model: String,
    /// Seconds per request at the whole fleet quota (after headroom); `None`: unlimited.
    request_period: Option<f64>,
    /// Seconds per token at the whole fleet quota (after headroom); `None`: unlimited.
    token_period: Option<f64>,
    state: Mutex<State>,
    /// Wakes the head of the queue when the share or a pause changes.
    changed: tokio::sync::Notify,
    /// Waiting calls, in arrival order: only the holder watches the clock.
    queue: tokio::sync::Mutex<()>,
    broadcast: OnceLock<tokio::sync::mpsc::UnboundedSender<PauseNotice>>,
}

fn period(per_minute: Option<NonZeroU32>, headroom: f64) -> Option<f64> {
    per_minute.map(|q| 60.0 / (f64::from(q.get()) * headroom))
}

/// `at` pushed ahead of `now` by `ratio` times the part of it still ahead.
fn rescaled(at: Instant, now: Instant, ratio: f64) -> Instant {
    match at.checked_duration_since(now) {
        Some(ahead) if !ahead.is_zero() => now + ahead.mul_f64(ratio.clamp(0.0, 1e6)),
        _ => at,
    }
}

impl ModelLimiter {
    /// A limiter for `rpm` requests and `tpm` tokens per minute (either may be unlimited),
    /// of which `headroom` (e.g. 0.98) is used. It starts with the whole quota and no lease
    /// (standalone); [`crate::quota`] takes it over with [`Self::grant`] in a fleet.
    pub fn new(
        model: &str,
        rpm: Option<NonZeroU32>,
        tpm: Option<NonZeroU32>,
        headroom: f64,
    ) -> Self {
        let now = Instant::now();
        Self {
            model: model.to_owned(),
            request_period: period(rpm, headroom),
            token_period: period(tpm, headroom),
            state: Mutex::new(State {
                share: 1.0,
                members: 1,
                lease_until: None,
                paced_share: 1.0,
                request_at: now,
                tokens_at: now,
                paused_until: None,
                episode_began: None,
                consecutive: 0,
                episodes: 0,
            }),
            changed: tokio::sync::Notify::new(),
            queue: tokio::sync::Mutex::new(()),
            broadcast: OnceLock::new(),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent: a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The model this limiter paces.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// True when the model has a request or token quota (an unlimited model needs no share).
    pub fn is_limited(&self) -> bool {
        self.request_period.is_some() || self.token_period.is_some()
    }

    /// Sets the share of the fleet's quota this process may use (0 to 1), how many processes
    /// share it, and until when (`None`: for good). A lower share applies to the next call at
    /// once, the schedule already ahead included; so a caller lowering its share may tell the
    /// fleet as soon as this returns.
    pub fn grant(&self, share: f64, members: u32, lease_until: Option<Instant>) {
        let share = if share.is_nan() {
            0.0
        } else {
            share.clamp(0.0, 1.0)
        };
        {
            let mut s = self.state();
            let now = Instant::now();
            if share > 0.0 && s.paced_share > 0.0 && share != s.paced_share {
                let ratio = s.paced_share / share;
                s.request_at = rescaled(s.request_at, now, ratio);
                s.tokens_at = rescaled(s.tokens_at, now, ratio);
            }
            if share > 0.0 {
                s.paced_share = share;
            }
            if s.share != share || s.members != members {
                tracing::debug!(model = %self.model, share, members, "quota share changed");
            }
            s.share = share;
            s.members = members.max(1);
            s.lease_until = lease_until;
        }
        self.changed.notify_waiters();
    }

    /// Lowers the share to `share` if it is higher, keeping the lease and the member count
    /// (the coordinator lowers a share before it tells the fleet).
    pub fn cut_to(&self, share: f64) {
        let (current, members, lease) = {
            let s = self.state();
            (s.share, s.members, s.lease_until)
        };
        if share < current {
            self.grant(share, members, lease);
        }
    }

    /// Extends the current share's lease (the coordinator renewed it).
    pub fn renew(&self, lease_until: Instant) {
        self.state().lease_until = Some(lease_until);
        self.changed.notify_waiters();
    }

    /// The share this process uses now (0 when its lease ran out).
    pub fn share(&self) -> f64 {
        let s = self.state();
        if s.lease_until.is_some_and(|l| l <= Instant::now()) {
            0.0
        } else {
            s.share
        }
    }

    /// How many processes share the quota, as last counted.
    pub fn peers(&self) -> u32 {
        self.state().members
    }

    /// 429 episodes seen (each pause of the model counts once, however many calls heard it).
    pub fn episodes(&self) -> u64 {
        self.state().episodes
    }

    /// Sends this limiter's pauses to the rest of the fleet through `tx`.
    pub fn broadcast_pauses_to(&self, tx: tokio::sync::mpsc::UnboundedSender<PauseNotice>) {
        let _ = self.broadcast.set(tx);
    }

    /// Why a call of `tokens` tokens cannot leave at `now`, or `None` after booking it.
    fn try_take(&self, s: &mut State, now: Instant, tokens: u32, requests: u32) -> Option<Wait> {
        if let Some(until) = s.paused_until.filter(|u| *u > now) {
            return Some(Wait::Until(until));
        }
        if !self.is_limited() {
            return None;
        }
        let leased = s.lease_until.is_none_or(|l| l > now);
        if !leased || s.share <= 0.0 {
            return Some(Wait::ForGrant);
        }
        // Tokens may run up to TOKEN_BURST ahead: one long prompt does not hold back the
        // calls behind it, while over any window the tokens sent stay within the share's
        // rate plus that second and one call.
        let tokens_due = s.tokens_at.checked_sub(TOKEN_BURST).unwrap_or(now);
        let next = s.request_at.max(tokens_due);
        if next > now {
            return Some(Wait::Until(next));
        }
        // The next slot is counted from this one's, not from when the waiting call woke up:
        // timers and a busy machine wake it a little late every time, and counting from the
        // wake-up would lose that lateness on every call (2-4% of the quota under load). A
        // call after a longer idle time starts from now (idle time is no credit). Calls stay on
        // the schedule's grid, so over any window a process sends at most one call more than
        // its share; catching up sends at most one slot's (or 100 ms') worth back to back.
        let next_slot = |at: Instant, slot: Duration| {
            let from = if now.saturating_duration_since(at) <= LATE.max(slot) {
                at
            } else {
                now
            };
            from + slot
        };
        if let Some(p) = self.request_period {
            let slots = f64::from(requests.max(1));
            s.request_at = next_slot(s.request_at, Duration::from_secs_f64(slots * p / s.share));
        }
        if let Some(p) = self.token_period {
            let slot = Duration::from_secs_f64(p * f64::from(tokens) / s.share);
            s.tokens_at = s.tokens_at.max(now) + slot;
        }
        None
    }

    /// Waits until a request of about `tokens` tokens may be sent, and books it. Returns how
    /// long it waited (zero when quota was free). Dropping the future gives up the place in
    /// the queue.
    pub async fn acquire(&self, tokens: u32) -> Duration {
        self.admit(tokens).await.0
    }

    /// [`Self::acquire`], also returning the instant the call was admitted at: taken under
    /// the same lock a pause begins under, so a call admitted before an episode began is
    /// known to be part of it ([`Self::throttled`]), however late its request then leaves (a
    /// busy machine can hold a task for milliseconds between admission and the request; a
    /// timestamp taken after admission would then count its 429 as a second episode).
    pub async fn admit(&self, tokens: u32) -> (Duration, Instant) {
        self.admit_requests(tokens, 1).await
    }

    /// [`Self::admit`] for a call of `requests` requests (a provider without `n` takes one
    /// per choice, see [`CompletionRequest::requests`]): it takes that many request slots.
    pub async fn admit_requests(&self, tokens: u32, requests: u32) -> (Duration, Instant) {
        let started = Instant::now();
        let _turn = self.queue.lock().await;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let (wait, at) = {
                let mut s = self.state();
                let now = Instant::now();
                (self.try_take(&mut s, now, tokens, requests), now)
            };
            match wait {
                None => return (started.elapsed(), at),
                Some(Wait::Until(at)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at.into()) => {}
                        () = &mut changed => {}
                    }
                }
                Some(Wait::ForGrant) => changed.await,
            }
        }
    }

    /// Corrects the tokens booked for a call: `reserved` were counted before it was sent,
    /// `used` is what the provider reported (0 when it did not count the call, as after a
    /// 429). Tokens returned shorten the wait of the calls behind it.
    pub fn settle(&self, reserved: u32, used: u32) {
        let Some(p) = self.token_period else {
            return;
        };
        if reserved == used {
            return;
        }
        {
            let mut s = self.state();
            if s.paced_share <= 0.0 {
                return;
            }
            let per_token = p / s.paced_share;
            let now = Instant::now();
            if used > reserved {
                let extra = Duration::from_secs_f64(per_token * f64::from(used - reserved));
                s.tokens_at = s.tokens_at.max(now) + extra;
            } else {
                let back = Duration::from_secs_f64(per_token * f64::from(reserved - used));
                // Never earlier than now: unused time is not credit for a burst later.
                s.tokens_at = s.tokens_at.checked_sub(back).unwrap_or(now).max(now);
            }
        }
        self.changed.notify_waiters();
    }

    /// A 429 answered a call admitted at `sent_at` (see [`Self::admit`]). Starts a pause of the model for
    /// `retry_after` (or the default), here and in the rest of the fleet, unless the call
    /// left before the current episode began: then the 429 belongs to that episode and
    /// changes nothing. Returns the pause started, if any.
    pub fn throttled(&self, sent_at: Instant, retry_after: Option<Duration>) -> Option<Duration> {
        let after = {
            let mut s = self.state();
            if s.episode_began.is_some_and(|began| sent_at <= began) {
                return None;
            }
            let after = retry_after.unwrap_or_else(|| default_pause(s.consecutive));
            begin_pause(&mut s, Instant::now(), after);
            after
        };
        self.changed.notify_waiters();
        tracing::warn!(model = %self.model, pause = ?after, "provider answered 429: pausing the model fleet-wide");
        if let Some(tx) = self.broadcast.get() {
            let _ = tx.send(PauseNotice {
                model: self.model.clone(),
                retry_after: after,
                began: Instant::now(),
            });
        }
        Some(after)
    }

    /// Stops every call to this model for `after` from now, here and in the rest of the
    /// fleet (a new episode, whatever the calls in flight answer).
    pub fn pause_for(&self, after: Duration) {
        begin_pause(&mut self.state(), Instant::now(), after);
        self.changed.notify_waiters();
        if let Some(tx) = self.broadcast.get() {
            let _ = tx.send(PauseNotice {
                model: self.model.clone(),
                retry_after: after,
                began: Instant::now(),
            });
        }
    }

    /// Applies a pause another process announced (not broadcast again). While this process
    /// is paused already it only extends the pause: the same episode, heard twice.
    pub fn pause_locally(&self, after: Duration) {
        {
            let mut s = self.state();
            let now = Instant::now();
            let until = now + after;
            match s.paused_until {
                Some(cur) if cur > now => s.paused_until = Some(cur.max(until)),
                _ => begin_pause(&mut s, now, after),
            }
        }
        self.changed.notify_waiters();
    }

    /// How long the model stays paused from now (zero when it is not).
    pub fn paused_for(&self) -> Duration {
        self.state().paused_until.map_or(Duration::ZERO, |u| {
            u.saturating_duration_since(Instant::now())
        })
    }
}

fn begin_pause(s: &mut State, now: Instant, after: Duration) {
    let recent = s
        .paused_until
        .is_some_and(|u| now.saturating_duration_since(u) < Duration::from_secs(60));
    s.consecutive = if recent { s.consecutive + 1 } else { 0 };
    s.episodes += 1;
    s.episode_began = Some(now);
    let until = now + after;
    s.paused_until = Some(s.paused_until.map_or(until, |u| u.max(until)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(rpm: Option<u32>, tpm: Option<u32>) -> ModelLimiter {
        ModelLimiter::new(
            "m",
            rpm.and_then(NonZeroU32::new),
            tpm.and_then(NonZeroU32::new),
            1.0,
        )
    }

    #[tokio::test]
    async fn unlimited_never_waits_and_pause_delays_everyone() {
        let l = limiter(None, None);
        assert!(l.acquire(10).await < Duration::from_millis(5));
        l.pause_for(Duration::from_millis(30));
        assert!(l.acquire(1).await >= Duration::from_millis(25));
    }

    #[tokio::test]
    async fn a_call_of_five_requests_takes_five_request_slots() {
        // 1200/min = one every 50 ms: after a call of five requests, the next waits for
        // the four slots its samples used as well.
        let l = limiter(Some(1200), None);
        l.admit_requests(1, 5).await;
        assert!(l.acquire(1).await >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn request_quota_spaces_calls_evenly() {
        // 1200/min = one every 50 ms, no burst: 11 calls take at least 500 ms.
        let l = limiter(Some(1200), None);
        let started = Instant::now();
        for _ in 0..11 {
            l.acquire(1).await;
        }
        assert!(
            started.elapsed() >= Duration::from_millis(490),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn shares_divide_the_quota() {
        // 12000/min alone: one call every 5 ms, so 40 calls take about 200 ms. A quarter
        // share: one every 20 ms, about 800 ms.
        let l = limiter(Some(12_000), None);
        let started = Instant::now();
        for _ in 0..40 {
            l.acquire(1).await;
        }
        let alone = started.elapsed();
        l.grant(0.25, 4, None);
        assert_eq!(l.peers(), 4);
        let started = Instant::now();
        for _ in 0..40 {
            l.acquire(1).await;
        }
        let shared = started.elapsed();
        assert!(
            shared >= Duration::from_millis(780) && shared > alone * 2,
            "alone {alone:?}, shared {shared:?}"
        );
    }

    #[tokio::test]
    async fn no_share_or_an_expired_lease_sends_nothing_until_granted() {
        let l = std::sync::Arc::new(limiter(Some(60_000), None));
        l.grant(0.0, 2, Some(Instant::now() + Duration::from_secs(5)));
        let waiting = tokio::spawn({
            let l = l.clone();
            async move { l.acquire(1).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "a call left without a share");
        l.grant(0.5, 2, Some(Instant::now() + Duration::from_secs(5)));
        let waited = tokio::time::timeout(Duration::from_secs(2), waiting)
            .await
            .expect("the grant did not wake the queue")
            .unwrap();
        assert!(waited >= Duration::from_millis(45), "{waited:?}");
        // A lease that ran out stops the calls, a renewal lets them go again.
        l.grant(1.0, 1, Some(Instant::now() + Duration::from_millis(1)));
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(l.share(), 0.0);
        let fenced = tokio::time::timeout(Duration::from_millis(50), l.acquire(1)).await;
        assert!(fenced.is_err(), "a call left on an expired lease");
        l.renew(Instant::now() + Duration::from_secs(5));
        assert!(l.acquire(1).await < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_lower_share_slows_the_schedule_already_ahead() {
        // 600/min alone: after one call, the next may leave in 100 ms. Cut to a tenth, the
        // 100 ms still ahead become a whole second.
        let l = limiter(Some(600), None);
        l.acquire(1).await;
        l.grant(0.1, 10, None);
        let waited = l.acquire(1).await;
        assert!(waited >= Duration::from_millis(900), "{waited:?}");
    }

    #[tokio::test]
    async fn tokens_are_booked_before_and_corrected_after() {
        // 60,000 tokens/min = one token per ms, a second (1,000 tokens) of burst. A call
        // reserving 3,000 tokens holds the next one back two seconds; settled at 1,500 used,
        // half a second.
        let l = limiter(None, Some(60_000));
        l.acquire(3_000).await;
        l.settle(3_000, 1_500);
        let waited = l.acquire(1).await;
        assert!(
            waited >= Duration::from_millis(450) && waited < Duration::from_millis(900),
            "{waited:?}"
        );
        // Used more than reserved: the difference is owed.
        l.acquire(10).await;
        l.settle(10, 2_300);
        let waited = l.acquire(1).await;
        assert!(waited >= Duration::from_millis(1_200), "{waited:?}");
    }

    #[tokio::test]
    async fn one_long_prompt_does_not_hold_back_the_calls_behind_it() {
        // 600,000 tokens/min = 10 tokens per ms: a 5,000-token call is half a second of the
        // quota, within the second of burst, so the next call leaves at once.
        let l = limiter(None, Some(600_000));
        l.acquire(5_000).await;
        assert!(l.acquire(100).await < Duration::from_millis(100));
    }

    #[test]
    fn estimates_count_every_message_and_the_completion_budget() {
        let request = CompletionRequest {
            model: "m".into(),
            messages: vec![
                switchyard_core::prompt::Message {
                    role: "system".into(),
                    content: "x".repeat(400),
                },
                switchyard_core::prompt::Message {
                    role: "user".into(),
                    content: "y".repeat(41),
                },
            ],
            max_tokens: 20,
            n: 1,
            temperature: 0.0,
            separate_choices: false,
            params: serde_json::Map::new(),
            logprobs: false,
            top_logprobs: 0,
            client_request_id: None,
        };
        assert_eq!(estimate_tokens(&request), 100 + 4 + 11 + 4 + 3 + 20);
    }

    #[test]
    fn a_429_is_one_episode_however_many_calls_hear_it() {
        let l = limiter(Some(600), None);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        l.broadcast_pauses_to(tx);
        let sent = Instant::now();
        // Three calls in flight hear the same 429: one pause, one broadcast.
        assert_eq!(
            l.throttled(sent, Some(Duration::from_secs(2))),
            Some(Duration::from_secs(2))
        );
        assert_eq!(l.throttled(sent, Some(Duration::from_secs(5))), None);
        assert_eq!(l.throttled(sent, None), None);
        assert_eq!(rx.try_recv().unwrap().retry_after, Duration::from_secs(2));
        assert!(rx.try_recv().is_err());
        assert_eq!(l.episodes(), 1);
        // Another process's notice of the same episode only extends it, and is not
        // broadcast again.
        l.pause_locally(Duration::from_secs(3));
        assert_eq!(l.episodes(), 1);
        assert!(rx.try_recv().is_err());
        assert!(l.paused_for() > Duration::from_millis(2_500));
        // A call that left after the episode began and is answered 429 again: a new one.
        assert!(l.throttled(Instant::now(), None).is_some());
        assert_eq!(l.episodes(), 2);
    }

    #[tokio::test]
    async fn a_call_admitted_before_the_pause_began_is_part_of_its_episode() {
        let l = limiter(Some(600), None);
        let (_, admitted) = l.admit(1).await;
        // After admission, before its request left, another call's 429 paused the model;
        // then its own request is answered 429 too: the same episode.
        assert!(
            l.throttled(Instant::now(), Some(Duration::from_secs(2)))
                .is_some()
        );
        assert_eq!(l.throttled(admitted, Some(Duration::from_secs(2))), None);
        assert_eq!(l.episodes(), 1);
    }

    #[test]
    fn without_retry_after_the_pause_doubles_up_to_a_minute() {
        assert_eq!(default_pause(0), Duration::from_secs(1));
        assert_eq!(default_pause(3), Duration::from_secs(8));
        assert_eq!(default_pause(10), Duration::from_secs(60));
    }
}
