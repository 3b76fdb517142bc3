//! The routing data the simulator replays: the records of
//! [`switchyard_router_lab::record`] (one per prompt, with what each real model scored on
//! it, read by the router lab's reader), indexed by prompt and id, and what the simulator
//! answers for a model on one ([`Replayed`]).

use std::collections::HashMap;
use std::path::Path;

use switchyard_router_lab::record::parse_records;
pub use switchyard_router_lab::record::{ModelRecord, Record};

use crate::error::SimError;
use crate::hashing::{pick, stable_hash};
use crate::synthetic;

/// What the simulator makes of a record: the gold letter of a multiple-choice item and the
/// answer it replays for a model.
pub trait Replayed {
    /// The correct letter of a multiple-choice item; `None` for other items.
    fn gold_label(&self) -> Option<String>;

    /// The answer the simulator gives for `model`; `None` if the record has no result for it.
    fn answer_of(&self, model: &str) -> Option<String>;
}

impl Replayed for Record {
    /// The correct letter of a multiple-choice item; `None` for other items.
    ///
    /// Taken from `reference` when it is a letter in range or equals one of the choices.
    /// Otherwise (MMLU rows carry no gold label) a stable pseudo-gold letter is derived from
    /// the record id, so that every model that got the item right answers the same letter.
    fn gold_label(&self) -> Option<String> {
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

    /// The answer the simulator gives for `model`; `None` if the record has no result for it.
    ///
    /// Multiple choice: the gold letter when the model was correct, otherwise a wrong letter
    /// chosen stably per (record, model), so correct answers agree across models and wrong ones
    /// scatter. Other items: the recorded response, or an extractive summary of the prompt when
    /// the source recorded none.
    fn answer_of(&self, model: &str) -> Option<String> {
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
            let name = path.display().to_string();
            dataset.extend(parse_file(&name, &text)?, &name);
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
        switchyard_router_lab::data::model_names(self.records.iter().map(|r| &r.models))
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

/// [`parse_records`] with errors naming the file.
fn parse_file(name: &str, text: &str) -> Result<Vec<Record>, SimError> {
    parse_records(text).map_err(|e| SimError::Parse {
        file: name.to_owned(),
        line: e.line,
        message: e.message,
    })
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
