//! Reading a provider's usage evidence for `switchyard ledger reconcile --usage FILE`.
//!
//! Accepted formats (docs/finance.md, "Usage evidence"):
//!
//! - **The simulator's call log** (JSONL, `switchyard-sim --call-log`): a line with a
//!   `status` field is a call record. Its `client_request_id` is our call id; it is billed
//!   when the simulator sent the answer in full (`CallRecord::billed`).
//! - **A generic JSONL usage report**: one object a line with `call_id` (or
//!   `client_request_id`), `model`, `prompt_tokens`, `completion_tokens`, and optionally
//!   `cached_prompt_tokens`, `cost_usd` (a decimal string, or a number taken as written),
//!   `billed` (default true) and `at` (RFC 3339, when the call was served).
//! - **A generic CSV usage report** (a file ending in `.csv`): a header row naming the same
//!   columns, one call a row.
//!
//! Lines of one call id are summed (a provider may report a call in parts). A line with no
//! call id cannot be matched to the ledger: it is counted, never guessed at.

use std::path::Path;
use std::str::FromStr;

use anyhow::{Context as _, bail};
use chrono::{DateTime, TimeZone as _, Utc};
use rust_decimal::Decimal;
use serde_json::Value;
use switchyard_sim::CallRecord;
use switchyard_store::reconcile::{CallUsage, Evidence};

/// Evidence read from a file, and what could not be used.
#[derive(Debug, Default)]
pub struct UsageFile {
    pub evidence: Evidence,
    /// Lines (or rows) read.
    pub lines: u64,
    /// Lines with no call id (nothing to match them to).
    pub without_call_id: u64,
}

/// Reads `path` (CSV when it ends in `.csv`, JSONL otherwise).
///
/// # Errors
/// An unreadable file, or a line that is not usage evidence (the error names the line).
pub fn read(path: &Path) -> anyhow::Result<UsageFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read usage file `{}`", path.display()))?;
    let csv = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let parsed = if csv {
        parse_csv(&text)
    } else {
        parse_jsonl(&text)
    };
    parsed.with_context(|| format!("usage file `{}`", path.display()))
}

/// Evidence from the simulator's call records (what chaos hands over without a file).
pub fn from_call_log(calls: &[CallRecord]) -> UsageFile {
    let mut f = UsageFile::default();
    for c in calls {
        f.lines += 1;
        match sim_usage(c) {
            Some(u) => f.evidence.add(u),
            None => f.without_call_id += 1,
        }
    }
    f
}

fn sim_usage(c: &CallRecord) -> Option<CallUsage> {
    let call_id = c.client_request_id.clone()?;
    Some(CallUsage {
        call_id,
        model: Some(c.model.clone()),
        billed: c.billed(),
        prompt_tokens: i64::from(c.prompt_tokens),
        cached_prompt_tokens: 0,
        completion_tokens: i64::from(c.completion_tokens),
        cost_usd: None,
        at: i64::try_from(c.unix_ms)
            .ok()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
    })
}

/// Parses JSONL evidence (simulator call records or generic lines, mixed freely).
///
/// # Errors
/// A line that is neither, named by its number.
pub fn parse_jsonl(text: &str) -> anyhow::Result<UsageFile> {
    let mut f = UsageFile::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        f.lines += 1;
        let usage = jsonl_line(line).with_context(|| format!("line {}", n + 1))?;
        match usage {
            Some(u) => f.evidence.add(u),
            None => f.without_call_id += 1,
        }
    }
    Ok(f)
}

fn jsonl_line(line: &str) -> anyhow::Result<Option<CallUsage>> {
    let v: Value = serde_json::from_str(line).context("not JSON")?;
    let Value::Object(o) = &v else {
        bail!("not a JSON object");
    };
    if o.contains_key("status") && o.contains_key("seq") {
        let record: CallRecord =
            serde_json::from_value(v).context("not a simulator call record")?;
        return Ok(sim_usage(&record));
    }
    let field = |name: &str| o.get(name).filter(|v| !v.is_null());
    let text = |name: &str| -> anyhow::Result<Option<String>> {
        match field(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Bool(b)) => Ok(Some(b.to_string())),
            Some(other) => bail!("`{name}` must be a string or a number, not {other}"),
        }
    };
    generic(&text)
}

/// A generic line, given a lookup of its fields as text.
fn generic(
    get: &dyn Fn(&str) -> anyhow::Result<Option<String>>,
) -> anyhow::Result<Option<CallUsage>> {
    let call_id = match get("call_id")? {
        Some(id) if !id.trim().is_empty() => id,
        _ => match get("client_request_id")? {
            Some(id) if !id.trim().is_empty() => id,
            _ => return Ok(None),
        },
    };
    let count = |name: &str, required: bool| -> anyhow::Result<i64> {
        match get(name)? {
            Some(s) => s
                .trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .with_context(|| format!("`{name}` `{s}` is not a token count")),
            None if required => bail!("`{name}` is missing (call `{call_id}`)"),
            None => Ok(0),
        }
    };
    let billed = match get("billed")?.as_deref().map(str::trim) {
        None | Some("") => true,
        Some("true" | "1" | "yes") => true,
        Some("false" | "0" | "no") => false,
        Some(other) => bail!("`billed` `{other}` is not true or false"),
    };
    let cost_usd = match get("cost_usd")? {
        Some(s) if !s.trim().is_empty() => Some(
            Decimal::from_str(s.trim())
                .or_else(|_| Decimal::from_scientific(s.trim()))
                .with_context(|| format!("`cost_usd` `{s}` is not a decimal amount"))?,
        ),
        _ => None,
    };
    let at = match get("at")? {
        Some(s) if !s.trim().is_empty() => Some(
            DateTime::parse_from_rfc3339(s.trim())
                .with_context(|| format!("`at` `{s}` is not an RFC 3339 time"))?
                .with_timezone(&Utc),
        ),
        _ => None,
    };
    let model = get("model")?.filter(|m| !m.trim().is_empty());
    if billed && model.is_none() {
        bail!("`model` is missing (call `{call_id}`)");
    }
    let prompt_tokens = count("prompt_tokens", billed)?;
    let cached_prompt_tokens = count("cached_prompt_tokens", false)?;
    let completion_tokens = count("completion_tokens", billed)?;
    Ok(Some(CallUsage {
        call_id,
        model,
        billed,
        prompt_tokens,
        cached_prompt_tokens,
        completion_tokens,
        cost_usd,
        at,
    }))
}

/// Parses CSV evidence with a header row.
///
/// # Errors
/// A row that is not usage evidence, named by its line.
pub fn parse_csv(text: &str) -> anyhow::Result<UsageFile> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(text.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .context("no header row")?
        .iter()
        .map(str::to_owned)
        .collect();
    let mut f = UsageFile::default();
    for (n, row) in reader.records().enumerate() {
        let row = row.with_context(|| format!("row {}", n + 2))?;
        f.lines += 1;
        let get = |name: &str| -> anyhow::Result<Option<String>> {
            Ok(header
                .iter()
                .position(|h| h == name)
                .and_then(|i| row.get(i))
                .filter(|v| !v.is_empty())
                .map(str::to_owned))
        };
        match generic(&get).with_context(|| format!("row {}", n + 2))? {
            Some(u) => f.evidence.add(u),
            None => f.without_call_id += 1,
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_sim_records_generic_jsonl_and_csv() {
        let mut billed = CallRecord::new("m", 200);
        billed.client_request_id = Some("a".into());
        billed.prompt_tokens = 10;
        billed.completion_tokens = 5;
        let mut failed = CallRecord::new("m", 500);
        failed.client_request_id = Some("b".into());
        let anonymous = CallRecord::new("m", 200);
        let jsonl = [
            serde_json::to_string(&billed).unwrap(),
            serde_json::to_string(&failed).unwrap(),
            serde_json::to_string(&anonymous).unwrap(),
            r#"{"call_id":"c","model":"m","prompt_tokens":3,"completion_tokens":4,"cost_usd":"0.1"}"#
                .to_owned(),
            r#"{"client_request_id":"c","model":"m","prompt_tokens":1,"completion_tokens":1}"#
                .to_owned(),
        ]
        .join("\n");
        let f = parse_jsonl(&jsonl).unwrap();
        assert_eq!((f.lines, f.without_call_id), (5, 1));
        let calls: Vec<_> = f.evidence.calls().collect();
        assert_eq!(calls.len(), 3);
        assert!(calls[0].billed && calls[0].prompt_tokens == 10);
        assert!(!calls[1].billed);
        // Two lines of `c`, summed; the cost is unknown once one line has none.
        assert_eq!((calls[2].prompt_tokens, calls[2].completion_tokens), (4, 5));
        assert_eq!(calls[2].cost_usd, None);

        let csv = "call_id,model,prompt_tokens,completion_tokens,cost_usd,billed\n\
                   x,m,7,8,0.000023,true\ny,,,,,false\n";
        let f = parse_csv(csv).unwrap();
        let calls: Vec<_> = f.evidence.calls().collect();
        assert_eq!(
            calls[0].cost_usd,
            Some(Decimal::from_str("0.000023").unwrap())
        );
        assert!(!calls[1].billed);
    }

    #[test]
    fn bad_lines_are_named() {
        let e =
            parse_jsonl("{\"call_id\":\"a\",\"model\":\"m\",\"prompt_tokens\":-1}").unwrap_err();
        assert!(format!("{e:#}").contains("line 1"), "{e:#}");
        let e = parse_csv("call_id,prompt_tokens,completion_tokens\na,1,2\n").unwrap_err();
        assert!(format!("{e:#}").contains("`model` is missing"), "{e:#}");
    }
}
