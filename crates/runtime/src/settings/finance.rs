//! The `[finance]` section: how workers keep prices and budgets current, how long a budget
//! hold lives without renewal, retention, and where the finance dashboard listens.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::at_least_duration;

/// Finance knobs (every key has a default).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinanceSettings {
    /// How often workers reload price versions and the set of budgeted teams. A new budget
    /// applies to calls started after the next reload; the ledger always books the price
    /// version in force at the call's time, whatever the cache holds.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// How long a budget hold lives without renewal. Workers renew their holds every third of
    /// it while calls are in flight; a dead worker's holds expire after it.
    #[serde(with = "humantime_serde")]
    pub reservation_lease: Duration,
    /// How often workers resume parked items whose budget has room again and announce soft
    /// limits that were reached.
    #[serde(with = "humantime_serde")]
    pub budget_poll: Duration,
    /// `switchyard purge` without `--older-than` purges prompts and answers of jobs that
    /// finished longer ago than this. Unset: the command needs `--older-than`.
    #[serde(default, with = "humantime_serde")]
    pub retention: Option<Duration>,
    /// Where `switchyard ledger serve` listens (read-only API and dashboard).
    pub serve_listen: String,
}

impl Default for FinanceSettings {
    fn default() -> Self {
        Self {
            refresh: Duration::from_secs(2),
            reservation_lease: Duration::from_secs(30),
            budget_poll: Duration::from_secs(1),
            retention: None,
            serve_listen: "127.0.0.1:8090".to_owned(),
        }
    }
}

impl FinanceSettings {
    /// Checks the values.
    ///
    /// # Errors
    /// A message naming the key and the value.
    pub fn validate(&self) -> Result<(), String> {
        at_least_duration("finance.refresh", self.refresh, Duration::from_millis(100))?;
        at_least_duration(
            "finance.budget_poll",
            self.budget_poll,
            Duration::from_millis(100),
        )?;
        at_least_duration(
            "finance.reservation_lease",
            self.reservation_lease,
            Duration::from_millis(300),
        )?;
        if self.serve_listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(format!(
                "finance.serve_listen = \"{}\": not an address like 127.0.0.1:8090",
                self.serve_listen
            ));
        }
        Ok(())
    }

    /// How often holds are renewed.
    pub fn renew_every(&self) -> Duration {
        self.reservation_lease / 3
    }
}
