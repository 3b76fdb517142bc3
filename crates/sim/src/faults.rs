//! Fault injection: the failures a real provider throws at a client, on demand.
//!
//! [`Faults`] is the knob set (also the JSON body of `PUT /sim/faults`); [`Fault`] is what
//! happened to one call. Scripted faults (`fail_next`, `rate_limit_next`, and the `script`
//! queue of any [`FaultKind`]) let a test provoke an exact failure; the rates give a soak test
//! a steady, seeded trickle of them.
//!
//! Besides HTTP errors, the simulator misbehaves the way real providers and proxies do at the
//! body level: the connection breaks mid-response (`reset`), the body dribbles in slowly
//! (`trickle`), is cut short (`malformed_json`), lacks `usage` (`no_usage`) or has an empty
//! `choices` list (`empty_choices`); it answers odd but complete bodies (`odd_answer`, see
//! [`OddAnswer`]); and it can number its response ids in a small range
//! (`response_id_pool`), as some OpenAI-compatible servers do.

use std::collections::VecDeque;
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
    /// A provider whose quota window is spent: every call for this long, counted from the
    /// first call after the faults were set, answers 429 with `Retry-After:
    /// retry_after_secs` (after `fail_next` and `rate_limit_next`). Unlike
    /// `rate_limit_next`, which refuses the next N calls whenever they come, this refuses
    /// by time, as a real provider does: however the calls are spread, one window.
    #[serde(with = "duration_serde")]
    pub rate_limit_window: Duration,
    /// When the window opened ends (set by the first call in it).
    #[serde(skip)]
    pub rate_limit_window_ends: Option<std::time::Instant>,
    /// The next calls fail with these faults, in order (after `fail_next` and
    /// `rate_limit_next`).
    pub script: VecDeque<FaultKind>,
    /// Fraction of calls whose connection breaks mid-response.
    pub reset_rate: f64,
    /// Fraction of calls answered 200 with a truncated (unparsable) JSON body.
    pub malformed_rate: f64,
    /// Fraction of calls answered without `usage`.
    pub no_usage_rate: f64,
    /// Fraction of calls answered with `choices: []`.
    pub empty_choices_rate: f64,
    /// Fraction of calls whose body trickles in over [`Faults::trickle`].
    pub trickle_rate: f64,
    /// How long a trickling body takes from first to last byte.
    #[serde(with = "duration_serde")]
    pub trickle: Duration,
    /// Fraction of calls answered with an odd but complete body (one of [`OddAnswer`], in
    /// turn): billed like any answer.
    pub odd_rate: f64,
    /// Size of the huge answer among the odd ones, in bytes.
    pub huge_answer_bytes: usize,
    /// Whether the huge answer is among the odd ones (when not, its share of `odd_rate` goes
    /// to the others). A huge answer is billed past the request's `max_tokens`, which no
    /// budget hold covers: a run that checks a budget to the cent pauses it meanwhile.
    pub odd_huge: bool,
    /// Response ids drawn from `chatcmpl-0` .. `chatcmpl-<pool-1>` (0: every id unique).
    pub response_id_pool: u32,
}

/// The odd answers (`odd_answer` faults), each a complete `200` body a provider may send.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OddAnswer {
    /// The answer holds NUL and other control characters (escaped in the JSON).
    ControlChars,
    /// The answer holds a lone UTF-16 surrogate escape (`\ud800`), which no UTF-8 text holds.
    LoneSurrogate,
    /// The answer is the empty string.
    Empty,
    /// `usage` with a negative prompt count, a string and a float.
    OddUsage,
    /// `id` is a number, `content` an array of text parts.
    OddShapes,
    /// An answer of [`Faults::huge_answer_bytes`].
    Huge,
}

impl OddAnswer {
    /// Every odd answer, in the order the rate hands them out.
    pub const ALL: [OddAnswer; 6] = [
        OddAnswer::ControlChars,
        OddAnswer::LoneSurrogate,
        OddAnswer::Empty,
        OddAnswer::OddUsage,
        OddAnswer::OddShapes,
        OddAnswer::Huge,
    ];

    /// The name in the call log's `fault` field (`odd_<kind>`).
    pub fn name(self) -> &'static str {
        match self {
            OddAnswer::ControlChars => "odd_control_chars",
            OddAnswer::LoneSurrogate => "odd_lone_surrogate",
            OddAnswer::Empty => "odd_empty",
            OddAnswer::OddUsage => "odd_usage",
            OddAnswer::OddShapes => "odd_shapes",
            OddAnswer::Huge => "odd_huge",
        }
    }
}

/// A fault that can be scripted (`script`) by name: `http_500`, `http_502`, `http_503`,
/// `rate_limit` (429 with `Retry-After`), `rate_limit_no_retry_after`, `reset`, `timeout`,
/// `trickle`, `malformed_json`, `no_usage`, `empty_choices`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FaultKind {
    #[serde(rename = "http_500")]
    Http500,
    #[serde(rename = "http_502")]
    Http502,
    #[serde(rename = "http_503")]
    Http503,
    RateLimit,
    RateLimitNoRetryAfter,
    Reset,
    Timeout,
    Trickle,
    MalformedJson,
    NoUsage,
    EmptyChoices,
    /// An odd answer of the given kind.
    Odd(OddAnswer),
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
            rate_limit_window: Duration::ZERO,
            rate_limit_window_ends: None,
            script: VecDeque::new(),
            reset_rate: 0.0,
            malformed_rate: 0.0,
            no_usage_rate: 0.0,
            empty_choices_rate: 0.0,
            trickle_rate: 0.0,
            trickle: Duration::from_secs(2),
            odd_rate: 0.0,
            huge_answer_bytes: 2 * 1024 * 1024,
            odd_huge: true,
            response_id_pool: 0,
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
    /// `timeout_rate` or scripted: hangs, then answers normally.
    Timeout,
    /// Scripted HTTP error (500, 502, 503).
    Status { status: u16 },
    /// Scripted 429, with or without `Retry-After`.
    RateLimited { retry_after_secs: Option<u32> },
    /// The connection breaks after the status line and a few bytes of body.
    Reset,
    /// A correct body, sent in small pieces over [`Faults::trickle`].
    Trickle,
    /// 200 with a body cut in the middle of its JSON.
    MalformedJson,
    /// 200 with a correct answer but no `usage`.
    NoUsage,
    /// 200 with `choices: []`.
    EmptyChoices,
    /// 200 with an odd but complete body.
    Odd(OddAnswer),
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
            Fault::Status { .. } => "status",
            Fault::RateLimited { .. } => "rate_limit",
            Fault::Reset => "reset",
            Fault::Trickle => "trickle",
            Fault::MalformedJson => "malformed_json",
            Fault::NoUsage => "no_usage",
            Fault::EmptyChoices => "empty_choices",
            Fault::Odd(kind) => kind.name(),
        }
    }

    /// True when the client gets a usable answer (possibly slowly, or without `usage`): the
    /// call log keeps its response id, so it can be matched with the client's books.
    pub fn answers(&self) -> bool {
        matches!(
            self,
            Fault::Timeout | Fault::Trickle | Fault::NoUsage | Fault::Odd(_)
        )
    }

    /// The HTTP status the call answers with.
    pub fn status(&self) -> u16 {
        match self {
            Fault::FailNext => 500,
            Fault::RateLimitNext { .. } | Fault::RequestLimit { .. } | Fault::TokenLimit { .. } => {
                429
            }
            Fault::RandomError { status } | Fault::Status { status } => *status,
            Fault::RateLimited { .. } => 429,
            Fault::Timeout
            | Fault::Reset
            | Fault::Trickle
            | Fault::MalformedJson
            | Fault::NoUsage
            | Fault::EmptyChoices
            | Fault::Odd(_) => 200,
        }
    }

    /// The `Retry-After` seconds of a 429.
    pub fn retry_after_secs(&self) -> Option<u32> {
        match self {
            Fault::RateLimitNext { retry_after_secs }
            | Fault::RequestLimit { retry_after_secs }
            | Fault::TokenLimit { retry_after_secs } => Some(*retry_after_secs),
            Fault::RateLimited { retry_after_secs } => *retry_after_secs,
            _ => None,
        }
    }

    /// The OpenAI-style error `(message, type, code)` of a failed call.
    pub fn error(&self) -> Option<(String, &'static str, &'static str)> {
        Some(match self {
            Fault::FailNext | Fault::RandomError { .. } | Fault::Status { .. } => (
                "The server had an error while processing your request (simulated).".into(),
                "server_error",
                "server_error",
            ),
            Fault::RateLimited { .. } => (
                "Rate limit reached (simulated).".into(),
                "requests",
                "rate_limit_exceeded",
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
            Fault::Timeout
            | Fault::Reset
            | Fault::Trickle
            | Fault::MalformedJson
            | Fault::NoUsage
            | Fault::EmptyChoices
            | Fault::Odd(_) => return None,
        })
    }
}

impl FaultKind {
    /// Every kind but the odd answers: the faults of a provider having trouble, which a
    /// client should retry (a test scripts them all to see that it does).
    pub const TRANSIENT: [FaultKind; 11] = [
        Self::Http500,
        Self::Http502,
        Self::Http503,
        Self::RateLimit,
        Self::RateLimitNoRetryAfter,
        Self::Reset,
        Self::Timeout,
        Self::Trickle,
        Self::MalformedJson,
        Self::NoUsage,
        Self::EmptyChoices,
    ];

    /// The fault this kind causes (`retry_after_secs` for a scripted `rate_limit`).
    pub fn fault(self, retry_after_secs: u32) -> Fault {
        match self {
            FaultKind::Http500 => Fault::Status { status: 500 },
            FaultKind::Http502 => Fault::Status { status: 502 },
            FaultKind::Http503 => Fault::Status { status: 503 },
            FaultKind::RateLimit => Fault::RateLimited {
                retry_after_secs: Some(retry_after_secs),
            },
            FaultKind::RateLimitNoRetryAfter => Fault::RateLimited {
                retry_after_secs: None,
            },
            FaultKind::Reset => Fault::Reset,
            FaultKind::Timeout => Fault::Timeout,
            FaultKind::Trickle => Fault::Trickle,
            FaultKind::MalformedJson => Fault::MalformedJson,
            FaultKind::NoUsage => Fault::NoUsage,
            FaultKind::EmptyChoices => Fault::EmptyChoices,
            FaultKind::Odd(kind) => Fault::Odd(kind),
        }
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
        if !self.rate_limit_window.is_zero() {
            let now = std::time::Instant::now();
            let ends = *self
                .rate_limit_window_ends
                .get_or_insert(now + self.rate_limit_window);
            if now < ends {
                return Some(Fault::RateLimitNext {
                    retry_after_secs: self.retry_after_secs,
                });
            }
            self.rate_limit_window = Duration::ZERO;
            self.rate_limit_window_ends = None;
        }
        let retry_after_secs = self.retry_after_secs;
        self.script
            .pop_front()
            .map(|kind| kind.fault(retry_after_secs))
    }

    /// The body-level fault for a call, given one uniform roll in `[0, 1)`: the rates are
    /// stacked (`reset`, `malformed_json`, `no_usage`, `empty_choices`, `trickle`, then the
    /// odd answers, their kind taken from where the roll falls within `odd_rate`).
    pub fn roll_body(&self, roll: f64) -> Option<Fault> {
        let mut edge = 0.0;
        for (rate, fault) in [
            (self.reset_rate, Fault::Reset),
            (self.malformed_rate, Fault::MalformedJson),
            (self.no_usage_rate, Fault::NoUsage),
            (self.empty_choices_rate, Fault::EmptyChoices),
            (self.trickle_rate, Fault::Trickle),
        ] {
            edge += rate;
            if roll < edge {
                return Some(fault);
            }
        }
        if self.odd_rate > 0.0 && roll < edge + self.odd_rate {
            // `Huge` is the last kind: without it, the others share the rate.
            let kinds = if self.odd_huge {
                &OddAnswer::ALL[..]
            } else {
                &OddAnswer::ALL[..OddAnswer::ALL.len() - 1]
            };
            let n = kinds.len();
            let index = (((roll - edge) / self.odd_rate) * n as f64) as usize;
            return Some(Fault::Odd(kinds[index.min(n - 1)]));
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
    fn a_rate_limit_window_refuses_every_call_until_it_ends() {
        let mut faults = Faults {
            rate_limit_window: Duration::from_secs(3600),
            retry_after_secs: 2,
            ..Faults::default()
        };
        for _ in 0..50 {
            assert_eq!(
                faults.take_scripted(),
                Some(Fault::RateLimitNext {
                    retry_after_secs: 2
                })
            );
        }
        // A window that has ended is closed for good.
        faults.rate_limit_window_ends = Some(std::time::Instant::now());
        assert_eq!(faults.take_scripted(), None);
        assert_eq!(faults.rate_limit_window, Duration::ZERO);
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

    #[test]
    fn scripts_run_in_order_after_the_counters() {
        let mut faults: Faults = serde_json::from_str(
            r#"{"fail_next": 1, "script": ["reset", "rate_limit_no_retry_after", "http_502"]}"#,
        )
        .unwrap();
        assert_eq!(faults.take_scripted(), Some(Fault::FailNext));
        assert_eq!(faults.take_scripted(), Some(Fault::Reset));
        assert_eq!(
            faults.take_scripted(),
            Some(Fault::RateLimited {
                retry_after_secs: None
            })
        );
        assert_eq!(faults.take_scripted(), Some(Fault::Status { status: 502 }));
        assert_eq!(faults.take_scripted(), None);
    }

    #[test]
    fn body_rates_stack() {
        let faults = Faults {
            reset_rate: 0.1,
            malformed_rate: 0.1,
            no_usage_rate: 0.1,
            empty_choices_rate: 0.1,
            trickle_rate: 0.1,
            ..Faults::default()
        };
        assert_eq!(faults.roll_body(0.05), Some(Fault::Reset));
        assert_eq!(faults.roll_body(0.15), Some(Fault::MalformedJson));
        assert_eq!(faults.roll_body(0.25), Some(Fault::NoUsage));
        assert_eq!(faults.roll_body(0.35), Some(Fault::EmptyChoices));
        assert_eq!(faults.roll_body(0.45), Some(Fault::Trickle));
        assert_eq!(faults.roll_body(0.55), None);
        assert!(Fault::NoUsage.answers() && !Fault::MalformedJson.answers());
    }

    #[test]
    fn without_the_huge_answer_the_other_odd_ones_share_its_rate() {
        let with = Faults {
            odd_rate: 0.6,
            ..Faults::default()
        };
        let without = Faults {
            odd_huge: false,
            ..with.clone()
        };
        let kinds = |f: &Faults| -> Vec<Option<Fault>> {
            (0..60).map(|i| f.roll_body(f64::from(i) / 100.0)).collect()
        };
        let huge = Some(Fault::Odd(OddAnswer::Huge));
        assert!(kinds(&with).contains(&huge));
        assert!(!kinds(&without).contains(&huge));
        // Every roll within the rate is still an odd answer, and the last kind left is hit.
        assert!(kinds(&without).iter().all(Option::is_some));
        assert!(kinds(&without).contains(&Some(Fault::Odd(OddAnswer::OddShapes))));
    }
}
