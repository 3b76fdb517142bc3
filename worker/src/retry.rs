//! The pause between tries of a step that waits for a service to come back (Postgres for a
//! commit, a claim or a budget hold; JetStream for an escalation's publish): 100 ms doubling
//! up to 1.6 s. The messages that wait meanwhile are kept alive by their lane's keeper, so
//! waiting here spends none of their deliveries, where handing them back would.

use std::time::Duration;

/// Backoff between tries of one step.
#[derive(Debug, Default)]
pub(crate) struct Retry {
    attempt: u32,
}

impl Retry {
    /// The pause before the next try (and counts it).
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = Duration::from_millis(100 << self.attempt.min(4));
        self.attempt += 1;
        delay
    }

    /// Waits [`Retry::next_delay`].
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// Pauses taken so far.
    pub(crate) fn attempts(&self) -> u32 {
        self.attempt
    }

    /// No try has waited yet (the first failure: the one worth a log line).
    pub(crate) fn first(&self) -> bool {
        self.attempt == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_a_tenth_of_a_second_and_stop_growing() {
        let mut r = Retry::default();
        assert!(r.first());
        let delays: Vec<u64> = (0..7).map(|_| r.next_delay().as_millis() as u64).collect();
        assert_eq!(delays, vec![100, 200, 400, 800, 1600, 1600, 1600]);
        assert!(!r.first());
    }
}
