//! The pause between tries of a worker step that waits for a service to come back (Postgres
//! for a commit, a claim or a budget hold; JetStream for an escalation's publish): 100 ms
//! doubling up to 1.6 s ([`switchyard_runtime::backoff::Backoff`]). The messages that wait
//! meanwhile are kept alive by their lane's keeper, so waiting here spends none of their
//! deliveries, where handing them back would.

use std::time::Duration;

use switchyard_runtime::backoff::Backoff;

/// A worker step's backoff: 100 ms doubling up to 1.6 s.
pub(crate) fn service_wait() -> Backoff {
    Backoff::new(Duration::from_millis(100), Duration::from_millis(1600))
}
