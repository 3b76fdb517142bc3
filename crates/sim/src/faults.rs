//! Fault injection: the failures a real provider throws at a client, on demand.
//!
//! [`Faults`] is the knob set (also the JSON body of `PUT /sim/faults`); [`Fault`] is what
//! happened to one call. Scripted faults (`fail_next`, `rate_limit_next`) let a test provoke an
//! exact failure; the rates give a soak test a steady, seeded trickle of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often and how the simulator misbehaves. Missing JSON fields take their defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Faults {
    /// Fraction of calls that answer a random one of 500, 502 and 503.
    pub error_rate: f64,
    /// Fraction of calls that hang for [`Faults::hang`] before answering.
    pub timeout_rate: f64,
    /// How long a "timeout" call hangs; the client is expected to give up first. Written as a
    /// humantime string (`"60s"`, `"1m 30s"`) or a number of seconds.
    #[serde(with = "duration_serde")]
    pub hang: Duration,
    /// The next N calls answer 500.
    pub fail_next: u32,
    /// The next N calls answer 429 with `Retry-After: retry_after_secs`.
    pub rate_limit_next: u32,
    pub retry_after_secs: u32,
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            timeout_rate: 0.0,
            hang: Duration::from_secs(60),
            fail_next: 0,
            rate_limit_next: 0,
            retry_after_secs: 1,
        }
    }
}

/// What went wrong with one call, on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// `fail_next`: 500.
    FailNext,
    /// `rate_limit_next`: 429.
    RateLimitNext { retry_after_secs: u32 },
    /// The rpm limit was reached: 429.
    RequestLimit { retry_after_secs: u32 },
    /// The tpm limit was reached: 429.
    TokenLimit { retry_after_secs: u32 },
    /// `error_rate`: 500, 502 or 503.
    RandomError { status: u16 },
    /// `timeout_rate`: hangs, then answers normally.
    Timeout,
}

impl Fault {
    /// The name written in the call log's `fault` field.
    pub fn name(&self) -> &'static str {
        match self {
            Fault::FailNext => "fail_next",
            Fault::RateLimitNext { .. } => "rate_limit_next",
            Fault::RequestLimit { .. } => "rpm_limit",
            Fault::TokenLimit { .. } => "tpm_limit",
            Fault::RandomError { .. } => "error_rate",
            Fault::Timeout => "timeout",
        }
    }

    /// The HTTP status the call answers with.
    pub fn status(&self) -> u16 {
        match self {
            Fault::FailNext => 500,
            Fault::RateLimitNext { .. } | Fault::RequestLimit { .. } | Fault::TokenLimit { .. } => {
                429
            }
            Fault::RandomError { status } => *status,
            Fault::Timeout => 200,
        }
    }

    /// The `Retry-After` seconds of a 429.
    pub fn retry_after_secs(&self) -> Option<u32> {
        match self {
            Fault::RateLimitNext { retry_after_secs }
            | Fault::RequestLimit { retry_after_secs }
            | Fault::TokenLimit { retry_after_secs } => Some(*retry_after_secs),
            _ => None,
        }
    }

    /// The OpenAI-style error `(message, type, code)` of a failed call.
    pub fn error(&self) -> Option<(String, &'static str, &'static str)> {
        Some(match self {
            Fault::FailNext | Fault::RandomError { .. } => (
                "The server had an error while processing your request (simulated).".into(),
                "server_error",
                "server_error",
            ),
            Fault::RateLimitNext { retry_after_secs } => (
                format!("Rate limit reached (simulated). Please try again in {retry_after_secs}s."),
                "requests",
                "rate_limit_exceeded",
            ),
            Fault::RequestLimit { retry_after_secs } => (
                format!(
                    "Rate limit reached for requests per minute. Please try again in {retry_after_secs}s."
                ),
                "requests",
                "rate_limit_exceeded",
            ),
            Fault::TokenLimit { retry_after_secs } => (
                format!(
                    "Rate limit reached for tokens per minute. Please try again in {retry_after_secs}s."
                ),
                "tokens",
                "rate_limit_exceeded",
            ),
            Fault::Timeout => return None,
        })
    }
}

impl Faults {
    /// Takes one scripted fault, if any is pending (`fail_next` before `rate_limit_next`).
    pub fn take_scripted(&mut self) -> Option<Fault> {
        if self.fail_next > 0 {
            self.fail_next -= 1;
            return Some(Fault::FailNext);
        }
        if self.rate_limit_next > 0 {
            self.rate_limit_next -= 1;
            return Some(Fault::RateLimitNext {
                retry_after_secs: self.retry_after_secs,
            });
        }
        None
    }

    /// The random fault for a call, given two uniform rolls in `[0, 1)`.
    pub fn roll(&self, error_roll: f64, timeout_roll: f64) -> Option<Fault> {
        if error_roll < self.error_rate {
            // Reuse the roll to pick the status: it is uniform within [0, error_rate).
            let statuses = [500, 502, 503];
            let index = ((error_roll / self.error_rate) * 3.0) as usize;
            return Some(Fault::RandomError {
                status: statuses[index.min(2)],
            });
        }
        (timeout_roll < self.timeout_rate).then_some(Fault::Timeout)
    }
}

/// Serializes a `Duration` as a humantime string; accepts that or a number of seconds.
mod duration_serde {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(duration: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&humantime::format_duration(*duration).to_string())
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Seconds(f64),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(deserializer)? {
            Raw::Seconds(secs) => Duration::try_from_secs_f64(secs).map_err(D::Error::custom),
            Raw::Text(text) => humantime::parse_duration(&text).map_err(D::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripted_faults_count_down() {
        let mut faults = Faults {
            fail_next: 1,
            rate_limit_next: 1,
            retry_after_secs: 7,
            ..Faults::default()
        };
        assert_eq!(faults.take_scripted(), Some(Fault::FailNext));
        assert_eq!(
            faults.take_scripted(),
            Some(Fault::RateLimitNext {
                retry_after_secs: 7
            })
        );
        assert_eq!(faults.take_scripted(), None);
    }

    #[test]
    fn rolls_pick_statuses() {
        let faults = Faults {
            error_rate: 0.3,
            timeout_rate: 0.5,
            ..Faults::default()
        };
        assert_eq!(
            faults.roll(0.05, 0.9),
            Some(Fault::RandomError { status: 500 })
        );
        assert_eq!(
            faults.roll(0.15, 0.9),
            Some(Fault::RandomError { status: 502 })
        );
        assert_eq!(
            faults.roll(0.25, 0.9),
            Some(Fault::RandomError { status: 503 })
        );
        assert_eq!(faults.roll(0.5, 0.2), Some(Fault::Timeout));
        assert_eq!(faults.roll(0.5, 0.7), None);
        assert_eq!(Faults::default().roll(0.0, 0.0), None);
    }

    #[test]
    fn json_is_partial_and_durations_are_readable() {
        let faults: Faults = serde_json::from_str(r#"{"fail_next": 2, "hang": "150ms"}"#).unwrap();
        assert_eq!(faults.fail_next, 2);
        assert_eq!(faults.hang, Duration::from_millis(150));
        assert_eq!(faults.retry_after_secs, 1);
        let faults: Faults = serde_json::from_str(r#"{"hang": 2.5}"#).unwrap();
        assert_eq!(faults.hang, Duration::from_millis(2500));
        let json = serde_json::to_value(Faults::default()).unwrap();
        assert_eq!(json["hang"], "1m");
        assert!(serde_json::from_str::<Faults>(r#"{"hang": "soon"}"#).is_err());
    }
}
