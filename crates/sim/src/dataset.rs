//! The routing data the simulator replays: one [`Record`] per prompt, with what each real
//! model scored on it.
//!
//! The files are JSONL in the format of `data/demo/*.jsonl` (see the routing data README):
//! `{"id", "task", "prompt", "choices"?, "reference"?, "models": {"<model>": {"score",
//! "response"?, "prompt_tokens", "completion_tokens", ..}}, ..}`. Unknown fields are ignored and
//! numbers are also accepted as numeric strings, since the files come from many sources.
//!
//! Two things are derived per file, because they only make sense against the rest of the file:
//! the strong model (highest mean score) and whether scores are graded (not all 0/1), which
//! decides what "correct" means for a row.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde_json::{Map, Value};

use crate::error::SimError;
use crate::hashing::{pick, stable_hash};
use crate::synthetic;

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

    /// The correct letter of a multiple-choice item; `None` for other items.
    ///
    /// Taken from `reference` when it is a letter in range or equals one of the choices.
    /// Otherwise (MMLU rows carry no gold label) a stable pseudo-gold letter is derived from
    /// the record id, so that every model that got the item right answers the same letter.
    pub fn gold_label(&self) -> Option<String> {
        let letters = self.letters();
        if letters.is_empty() {
            return None;
        }
        if let Some(reference) = self.reference.as_deref().map(str::trim) {
            if let Some(letter) = letters.iter().find(|l| l.eq_ignore_ascii_case(reference)) {
                return Some(letter.clone());
            }
            let choices = self.choices.as_deref().unwrap_or_default();
            let by_choice = choices
                .iter()
                .position(|c| c.trim() == reference)
                .and_then(|i| letters.get(i));
            if let Some(letter) = by_choice {
                return Some(letter.clone());
            }
        }
        let i = pick(stable_hash(&[b"gold", self.id.as_bytes()]), letters.len());
        letters.get(i).cloned()
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

    /// The answer the simulator gives for `model`; `None` if the record has no result for it.
    ///
    /// Multiple choice: the gold letter when the model was correct, otherwise a wrong letter
    /// chosen stably per (record, model), so correct answers agree across models and wrong ones
    /// scatter. Other items: the recorded response, or an extractive summary of the prompt when
    /// the source recorded none.
    pub fn answer_of(&self, model: &str) -> Option<String> {
        let result = self.models.get(model)?;
        if let Some(gold) = self.gold_label() {
            if self.is_correct(model)? {
                return Some(gold);
            }
            let wrong: Vec<String> = self.letters().into_iter().filter(|l| *l != gold).collect();
            if wrong.is_empty() {
                return Some(gold); // a one-choice item cannot be answered wrongly
            }
            let h = stable_hash(&[b"wrong", self.id.as_bytes(), model.as_bytes()]);
            return wrong.get(pick(h, wrong.len())).cloned();
        }
        Some(match &result.response {
            Some(response) => response.clone(),
            None => synthetic::summary(&self.prompt, None),
        })
    }
}

/// All loaded records, indexed by prompt text and by id.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    records: Vec<Record>,
    by_prompt: HashMap<String, usize>,
    by_id: HashMap<String, usize>,
}

impl Dataset {
    /// Loads JSONL files. Errors name the file and line. A record whose id or prompt was
    /// already loaded (e.g. the demo subset together with its source file) is skipped with a
    /// warning: the first one wins.
    pub fn load(paths: &[impl AsRef<Path>]) -> Result<Dataset, SimError> {
        let mut dataset = Dataset::default();
        for path in paths {
            let path = path.as_ref();
            let text = std::fs::read_to_string(path).map_err(|source| SimError::Read {
                path: path.to_owned(),
                source,
            })?;
            let records = parse_file(&path.display().to_string(), &text)?;
            dataset.extend(records, &path.display().to_string());
        }
        Ok(dataset)
    }

    /// Parses JSONL text as if it were a file called `name` (used in error messages).
    pub fn from_jsonl_str(name: &str, text: &str) -> Result<Dataset, SimError> {
        let mut dataset = Dataset::default();
        dataset.extend(parse_file(name, text)?, name);
        Ok(dataset)
    }

    /// Adds the records of `other` (loaded separately, so its per-file fields stay its own).
    /// Records whose id or prompt is already present are skipped, as in [`Dataset::load`].
    pub fn merge(&mut self, other: Dataset) {
        self.extend(other.records, "merged dataset");
    }

    /// The record whose prompt is exactly `prompt` once both are trimmed.
    pub fn lookup(&self, prompt: &str) -> Option<&Record> {
        let index = *self.by_prompt.get(prompt.trim())?;
        self.records.get(index)
    }

    /// The record with this id.
    pub fn get(&self, id: &str) -> Option<&Record> {
        let index = *self.by_id.get(id)?;
        self.records.get(index)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Records in load order.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.iter()
    }

    /// Every model name that appears in the data, sorted.
    pub fn models(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .records
            .iter()
            .flat_map(|r| r.models.keys().cloned())
            .collect();
        names.sort();
        names.dedup();
        names
    }

    fn extend(&mut self, records: Vec<Record>, source: &str) {
        let mut skipped = 0usize;
        for record in records {
            let prompt = record.prompt.trim().to_owned();
            if self.by_id.contains_key(&record.id) || self.by_prompt.contains_key(&prompt) {
                skipped += 1;
                continue;
            }
            let index = self.records.len();
            self.by_id.insert(record.id.clone(), index);
            self.by_prompt.insert(prompt, index);
            self.records.push(record);
        }
        if skipped > 0 {
            tracing::warn!(
                source,
                skipped,
                "skipped records whose id or prompt was already loaded"
            );
        }
    }
}

/// Parses one file's text and fills in the per-file fields (`strong_model`, `graded`).
fn parse_file(name: &str, text: &str) -> Result<Vec<Record>, SimError> {
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record = parse_line(line).map_err(|message| SimError::Parse {
            file: name.to_owned(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const MC: &str = r#"{"id":"q1","task":"mmlu/x","prompt":"  What is 2+2?\nA. 3\nB. 4\nAnswer:  ","choices":["3","4","5","6"],"extra":1,"models":{"weak":{"score":0.0,"prompt_tokens":20,"completion_tokens":1},"strong":{"score":"1","prompt_tokens":"20","completion_tokens":1}}}
{"id":"q2","task":"mmlu/x","prompt":"Q2","choices":["a","b"],"reference":"b","models":{"weak":{"score":1.0,"prompt_tokens":5,"completion_tokens":1},"strong":{"score":1.0,"prompt_tokens":5,"completion_tokens":1}}}
"#;

    const GRADED: &str = r#"{"id":"s1","task":"summarize","prompt":"Article one","models":{"a":{"score":0.5,"response":"sum a","prompt_tokens":9,"completion_tokens":2},"b":{"score":0.75,"response":"None","prompt_tokens":9,"completion_tokens":3}}}
{"id":"s2","task":"summarize","prompt":"Article two","models":{"a":{"score":0.25,"response":"x","prompt_tokens":9,"completion_tokens":1},"b":{"score":0.0,"response":"y","prompt_tokens":9,"completion_tokens":1}}}
"#;

    #[test]
    fn parses_and_indexes_records() {
        let data = Dataset::from_jsonl_str("mc.jsonl", MC).unwrap();
        assert_eq!(data.len(), 2);
        let q1 = data.lookup("What is 2+2?\nA. 3\nB. 4\nAnswer:").unwrap();
        assert_eq!(q1.id, "q1");
        assert_eq!(data.get("q2").unwrap().reference.as_deref(), Some("b"));
        assert_eq!(q1.models["strong"].prompt_tokens, 20);
        assert_eq!(q1.strong_model, "strong");
        assert!(!q1.graded);
        assert_eq!(data.models(), vec!["strong".to_owned(), "weak".to_owned()]);
    }

    #[test]
    fn reference_sets_the_gold_letter() {
        let data = Dataset::from_jsonl_str("mc.jsonl", MC).unwrap();
        let q2 = data.get("q2").unwrap();
        assert_eq!(q2.gold_label().as_deref(), Some("B"));
        assert_eq!(q2.answer_of("weak").as_deref(), Some("B"));
    }

    #[test]
    fn graded_files_compare_with_the_strong_model() {
        let data = Dataset::from_jsonl_str("news.jsonl", GRADED).unwrap();
        let s1 = data.get("s1").unwrap();
        assert!(s1.graded);
        assert_eq!(s1.strong_model, "a"); // mean 0.375 vs 0.375: tie goes to the first name
        assert_eq!(s1.is_correct("a"), Some(true));
        assert_eq!(s1.is_correct("b"), Some(true));
        let s2 = data.get("s2").unwrap();
        assert_eq!(s2.is_correct("b"), Some(false));
        assert_eq!(s1.is_correct("nobody"), None);
        assert_eq!(s1.answer_of("a").as_deref(), Some("sum a"));
        // "None" means no response: the answer is synthetic.
        assert_eq!(s1.models["b"].response, None);
        assert_eq!(s1.answer_of("b").as_deref(), Some("Article one"));
        assert_eq!(s1.gold_label(), None);
    }

    #[test]
    fn errors_name_file_and_line() {
        let text = format!(
            "{MC}\n{{\"id\":\"bad\",\"prompt\":\"p\",\"models\":{{\"m\":{{\"score\":2}}}}}}"
        );
        let err = Dataset::from_jsonl_str("bad.jsonl", &text).unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("bad.jsonl:4: "), "{message}");
        assert!(message.contains("score"), "{message}");

        let err = Dataset::from_jsonl_str("x.jsonl", "not json").unwrap_err();
        assert!(
            err.to_string().starts_with("x.jsonl:1: invalid JSON"),
            "{err}"
        );
    }

    #[test]
    fn duplicates_keep_the_first() {
        let text = format!("{MC}{MC}");
        let data = Dataset::from_jsonl_str("dup.jsonl", &text).unwrap();
        assert_eq!(data.len(), 2);
    }

    #[test]
    fn loads_the_bundled_demo_data() {
        let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/demo");
        let paths = [
            demo.join("classify_mmlu.jsonl"),
            demo.join("summarize_news.jsonl"),
        ];
        let data = Dataset::load(&paths).unwrap();
        assert!(data.len() > 2000, "{}", data.len());
        let mmlu = data.records().find(|r| r.is_multiple_choice()).unwrap();
        assert!(!mmlu.graded);
        assert_eq!(mmlu.strong_model, "gpt-4-1106-preview");
        let news = data.records().find(|r| r.task == "summarize").unwrap();
        assert!(news.graded);
    }

    #[test]
    fn load_reports_missing_files() {
        let err = Dataset::load(&["does/not/exist.jsonl"]).unwrap_err();
        assert!(err.to_string().contains("does/not/exist.jsonl"), "{err}");
    }
}
