//! The pause between tries of a step that waits for a service to come back: doubling from a
//! first pause up to a cap. One type for every such wait of the fleet (a worker's commit,
//! claim, budget hold or escalation publish waiting for Postgres or JetStream; the
//! dispatcher's last delivery of a job waiting for Postgres; a process starting while
//! JetStream is not ready), each with its own pace.

use std::time::Duration;

/// Backoff between tries of one step.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// Pauses of `first`, doubling each time, never longer than `cap`.
    pub fn new(first: Duration, cap: Duration) -> Self {
        Self {
            first,
            cap,
            attempt: 0,
        }
    }

    /// The pause before the next try (and counts it).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self
            .first
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.cap);
        self.attempt += 1;
        delay
    }

    /// Waits [`Backoff::next_delay`].
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Pauses taken so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// No try has waited yet (the first failure: the one worth a log line).
    pub fn first(&self) -> bool {
        self.attempt == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_the_first_and_stop_at_the_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1600));
        assert!(b.first());
        let delays: Vec<u64> = (0..7).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 1600, 1600]);
        assert!(!b.first());
        assert_eq!(b.attempts(), 7);
        // Many failures later the pause is still the cap (no overflow).
        let mut long = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let last = (0..100).map(|_| long.next_delay()).last().unwrap();
        assert_eq!(last, Duration::from_secs(5));
    }
}
