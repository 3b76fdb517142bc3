//! The routing-data format read whole, as a replay needs it: every row's prompt, choices,
//! reference and each model's score, recorded response and token counts. The simulator
//! replays these records; [`crate::data`] reads the same files for training and evaluation
//! but keeps nothing a router could learn the answer from (no responses, no references).
//!
//! The files are JSONL in the format of `data/demo/*.jsonl` (see the routing data README):
//! `{"id", "task", "prompt", "choices"?, "reference"?, "models": {"<model>": {"score",
//! "response"?, "prompt_tokens", "completion_tokens", ..}}, ..}`. Unknown fields are ignored and
//! numbers are also accepted as numeric strings, since the files come from many sources.
//!
//! Two things are derived per file, because they only make sense against the rest of the file:
//! the strong model (highest mean score) and whether scores are graded (not all 0/1), which
//! decides what "correct" means for a row.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One prompt with the results real models got on it.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub task: String,
    pub prompt: String,
    /// The options of a multiple-choice item, in letter order (A, B, C, ...).
    pub choices: Option<Vec<String>>,
    /// The gold answer where the benchmark has one.
    pub reference: Option<String>,
    pub models: BTreeMap<String, ModelRecord>,
    /// The model with the highest mean score in the file this row came from.
    pub strong_model: String,
    /// Whether the file this row came from has graded scores (not all 0 or 1). Then "correct"
    /// means "at least as good as the strong model on this item" instead of `score >= 0.5`.
    pub graded: bool,
}

/// What one model did on one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelRecord {
    /// Quality in `[0, 1]`: 0/1 correctness, or a graded score.
    pub score: f64,
    /// The model's recorded answer; `None` when the source has none (e.g. MMLU).
    pub response: Option<String>,
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
}

/// At most this many choices get letters (A to Z).
const MAX_LETTERS: usize = 26;

/// A line of a records file that could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct RecordError {
    /// 1-based line number.
    pub line: usize,
    pub message: String,
}

impl Record {
    /// Whether this is a multiple-choice item, answered with a letter.
    pub fn is_multiple_choice(&self) -> bool {
        self.choices.as_ref().is_some_and(|c| !c.is_empty())
    }

    /// The answer letters of a multiple-choice item (`["A", "B", ...]`), empty otherwise.
    pub fn letters(&self) -> Vec<String> {
        let n = self.choices.as_ref().map_or(0, Vec::len).min(MAX_LETTERS);
        (b'A'..)
            .take(n)
            .map(|b| char::from(b).to_string())
            .collect()
    }

    /// Whether `model`'s replayed answer counts as correct; `None` if the record has no result
    /// for it. Binary files: `score >= 0.5`. Graded files: `score >=` the strong model's score
    /// on this item (or the best score on the item if the strong model is absent).
    pub fn is_correct(&self, model: &str) -> Option<bool> {
        let score = self.models.get(model)?.score;
        if !self.graded {
            return Some(score >= 0.5);
        }
        let bar = match self.models.get(&self.strong_model) {
            Some(strong) => strong.score,
            None => self
                .models
                .values()
                .map(|m| m.score)
                .fold(f64::MIN, f64::max),
        };
        Some(score >= bar)
    }
}

/// Parses one file's text and fills in the per-file fields (`strong_model`, `graded`).
///
/// # Errors
/// The first line that is not a valid record, by number.
pub fn parse_records(text: &str) -> Result<Vec<Record>, RecordError> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = parse_line(line).map_err(|message| RecordError {
            line: i + 1,
            message,
        })?;
        records.push(record);
    }

    let graded = records
        .iter()
        .flat_map(|r| r.models.values())
        .any(|m| m.score != 0.0 && m.score != 1.0);
    let strong_model = strongest_model(&records);
    for record in &mut records {
        record.graded = graded;
        record.strong_model.clone_from(&strong_model);
    }
    Ok(records)
}

/// The model with the highest mean score over the rows it appears in (ties: the first name).
fn strongest_model(records: &[Record]) -> String {
    let mut totals: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for (model, result) in records.iter().flat_map(|r| r.models.iter()) {
        let entry = totals.entry(model).or_default();
        entry.0 += result.score;
        entry.1 += 1;
    }
    let mut best: Option<(&str, f64)> = None;
    for (model, (sum, count)) in totals {
        let mean = sum / count as f64;
        if best.is_none_or(|(_, best_mean)| mean > best_mean) {
            best = Some((model, mean));
        }
    }
    best.map(|(model, _)| model.to_owned()).unwrap_or_default()
}

/// Parses one JSONL line; the error is a message without location (the caller adds it).
fn parse_line(line: &str) -> Result<Record, String> {
    let value: Value = serde_json::from_str(line).map_err(|e| format!("invalid JSON: {e}"))?;
    let Value::Object(object) = value else {
        return Err("expected a JSON object".into());
    };
    let id = required_string(&object, "id")?;
    let prompt = required_string(&object, "prompt")?;
    if prompt.trim().is_empty() {
        return Err(format!("record {id:?}: empty prompt"));
    }
    let task = optional_string(&object, "task")?.unwrap_or_default();
    let reference = optional_string(&object, "reference")?.filter(|r| r != "None");
    let choices = match object.get("choices") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => Some(
            items
                .iter()
                .map(|item| scalar_to_string(item).ok_or("`choices` must hold strings"))
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Some(_) => return Err("`choices` must be an array".into()),
    };
    let Some(Value::Object(raw_models)) = object.get("models") else {
        return Err(format!("record {id:?}: `models` must be an object"));
    };
    if raw_models.is_empty() {
        return Err(format!("record {id:?}: `models` is empty"));
    }
    let mut models = BTreeMap::new();
    for (model, raw) in raw_models {
        let result =
            parse_model(raw).map_err(|e| format!("record {id:?}, model {model:?}: {e}"))?;
        models.insert(model.clone(), result);
    }
    Ok(Record {
        id,
        task,
        prompt,
        choices,
        reference,
        models,
        strong_model: String::new(),
        graded: false,
    })
}

fn parse_model(raw: &Value) -> Result<ModelRecord, String> {
    let Value::Object(fields) = raw else {
        return Err("expected an object".into());
    };
    let score = fields
        .get("score")
        .and_then(as_f64)
        .ok_or("`score` must be a number")?;
    if !(0.0..=1.0).contains(&score) {
        return Err(format!("`score` {score} is outside [0, 1]"));
    }
    let response = fields
        .get("response")
        .and_then(scalar_to_string)
        .filter(|r| r != "None");
    Ok(ModelRecord {
        score,
        response,
        prompt_tokens: token_count(fields, "prompt_tokens")?,
        completion_tokens: token_count(fields, "completion_tokens")?,
    })
}

fn token_count(fields: &Map<String, Value>, key: &str) -> Result<u32, String> {
    let n = fields
        .get(key)
        .and_then(as_f64)
        .ok_or_else(|| format!("`{key}` must be a number"))?;
    if !(0.0..=f64::from(u32::MAX)).contains(&n) {
        return Err(format!("`{key}` {n} is out of range"));
    }
    // In range and finite, so the cast cannot saturate.
    Ok(n.round() as u32)
}

fn required_string(object: &Map<String, Value>, key: &str) -> Result<String, String> {
    optional_string(object, key)?.ok_or_else(|| format!("missing `{key}`"))
}

fn optional_string(object: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => scalar_to_string(value)
            .map(Some)
            .ok_or_else(|| format!("`{key}` must be a string")),
    }
}

/// A string, or a number written as a string.
fn scalar_to_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A number, or a string holding one.
fn as_f64(value: &Value) -> Option<f64> {
    let n = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    n.is_finite().then_some(n)
}
