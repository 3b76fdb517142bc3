//! Times, periods, amounts and ages as finance writes them on a command line or in a query
//! string, with errors that say what is accepted.

use std::str::FromStr;
use std::time::Duration;

use anyhow::bail;
use chrono::{DateTime, Datelike, NaiveDate, Utc};
use rust_decimal::Decimal;
use switchyard_store::ledger_reports;

/// Parses a decimal amount (no floats anywhere: the text goes straight to `Decimal`).
///
/// # Errors
/// A message naming the text.
pub fn parse_decimal(s: &str) -> Result<Decimal, String> {
    let t = s.trim().trim_start_matches('$');
    Decimal::from_str(t)
        .or_else(|_| Decimal::from_scientific(t))
        .map_err(|_| format!("`{s}` is not a decimal number (e.g. 2.5)"))
}

/// Parses a fraction: `0.5` or `50%`.
///
/// # Errors
/// A message naming the text.
pub fn parse_fraction(s: &str) -> Result<Decimal, String> {
    let t = s.trim();
    match t.strip_suffix('%') {
        Some(p) => parse_decimal(p).map(|d| d / Decimal::ONE_HUNDRED),
        None => parse_decimal(t),
    }
}

/// Parses a time: RFC 3339 (with a zone), a date (UTC midnight), a month (its first day),
/// or `now`.
///
/// # Errors
/// A message saying what is accepted.
pub fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("now") {
        return Ok(Utc::now());
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(t) {
        return Ok(dt.with_timezone(&Utc));
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Ok(ledger_reports::midnight(d));
    }
    if let Ok(d) = NaiveDate::parse_from_str(&format!("{t}-01"), "%Y-%m-%d") {
        return Ok(ledger_reports::midnight(d));
    }
    Err(format!(
        "`{s}` is not a time: use RFC 3339 with a zone (2026-12-01T09:30:00Z), a date \
         (2026-12-01, UTC midnight), a month (2026-12) or `now`"
    ))
}

/// Parses an age like `30d` or `12h`.
///
/// # Errors
/// A message naming the text.
pub fn parse_age(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not an age like 30d or 12h: {e}"))
}

/// The report period from `--from`/`--to` and their defaults.
///
/// # Errors
/// A period that is empty or reversed.
pub fn report_period(
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> anyhow::Result<(DateTime<Utc>, DateTime<Utc>)> {
    let to = to.unwrap_or_else(|| {
        let tomorrow = Utc::now().date_naive().succ_opt().unwrap_or(NaiveDate::MAX);
        ledger_reports::midnight(tomorrow)
    });
    let from = from.unwrap_or_else(|| {
        let last = (to - chrono::Duration::nanoseconds(1)).date_naive();
        ledger_reports::midnight(last.with_day(1).unwrap_or(last))
    });
    if from >= to {
        bail!("--from {from} is not before --to {to} (the period is [from, to), to exclusive)");
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_or_say_what_is_accepted() {
        assert_eq!(
            parse_instant("2026-12-01").unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_instant("2026-12").unwrap().to_rfc3339(),
            "2026-12-01T00:00:00+00:00"
        );
        assert_eq!(
            parse_instant("2026-12-01T10:00:00+01:00")
                .unwrap()
                .to_rfc3339(),
            "2026-12-01T09:00:00+00:00"
        );
        for bad in ["2026-13-01", "yesterday", "2026-12-01T10:00:00", ""] {
            let e = parse_instant(bad).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn amounts_and_fractions_stay_decimal() {
        assert_eq!(parse_decimal("2.5").unwrap().to_string(), "2.5");
        assert_eq!(parse_decimal("$10").unwrap().to_string(), "10");
        assert!(parse_decimal("ten").is_err());
        assert_eq!(parse_fraction("50%").unwrap(), Decimal::new(5, 1));
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert!(parse_age("thirty days").is_err());
    }

    #[test]
    fn default_period_is_this_month_to_the_end_of_today() {
        let (from, to) = report_period(None, None).unwrap();
        assert_eq!(from.day(), 1);
        assert!(to > Utc::now());
        assert!(report_period(Some(to), Some(from)).is_err());
    }
}
