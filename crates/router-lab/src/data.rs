//! Reading routing data: JSONL rows with a prompt and the quality each model reached on it
//! (the format of `shared/data/routing`, RouterBench and RouteLLM style).
//!
//! Bad input is reported precisely, naming the file and the line, because these files are
//! edited by hand and assembled from several sources: an empty file, a line that is not
//! JSON, a row without the named models, a score outside [0, 1], a model name no row has.
//!
//! This is also where a benchmark's task name (`mmlu/anatomy`, `gsm8k`) becomes the task kind
//! the dispatcher would see (`classify`, `summarize`, `generate`): the only thing about the
//! task a router may know.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use switchyard_router::TaskKind;

/// Why a data file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the file has no rows")]
    Empty { path: String },
    #[error("{path}:{line}: not a JSON object: {source}")]
    Json {
        path: String,
        line: usize,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
    #[error("{path}:{line}: model `{model}` has score {score}, outside [0, 1]")]
    ScoreOutOfRange {
        path: String,
        line: usize,
        model: String,
        score: f64,
    },
    #[error("{path}: no row has model `{model}` (models in this file: {known})")]
    UnknownModel {
        path: String,
        model: String,
        known: String,
    },
    #[error(
        "{path}:{line}: row `{id}` has no result for model `{model}` \
         (pass --skip-missing to drop such rows, as RouteLLM does)"
    )]
    MissingModel {
        path: String,
        line: usize,
        id: String,
        model: String,
    },
    #[error("{path}: no rows left after filtering ({reason})")]
    NothingLeft { path: String, reason: String },
    #[error(
        "{path}: cannot tell which model is weak and which strong (models: {known}); \
         name them with --weak/--strong or --pair {path}=WEAK,STRONG"
    )]
    NoPair { path: String, known: String },
}

/// What one model achieved on one row.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Outcome {
    /// Quality in [0, 1] (1 = correct / best).
    pub score: f64,
    #[serde(default)]
    pub prompt_tokens: Option<f64>,
    #[serde(default)]
    pub completion_tokens: Option<f64>,
    /// The real price of the call, where the source recorded it.
    #[serde(default)]
    pub cost_usd: Option<f64>,
}

/// The JSON shape of a line. Unknown fields (responses, references, sources) are ignored:
/// nothing a router could learn the answer from is even kept in memory.
#[derive(Debug, Deserialize)]
struct RawRow {
    id: serde_json::Value,
    #[serde(default)]
    task: Option<String>,
    #[serde(default)]
    prompt: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    choices: Option<serde_json::Value>,
    #[serde(default)]
    models: BTreeMap<String, Outcome>,
    #[serde(default)]
    contaminated: Option<bool>,
}

/// One row of a routing data file.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// 1-based line number in its file (for error messages).
    pub line: usize,
    pub id: String,
    /// The task kind a router sees.
    pub kind: TaskKind,
    /// The file's task name (`mmlu/anatomy`, `gsm8k`; the kind when the row has none). Never
    /// a feature: evaluation uses it only to hold out whole subjects and task families.
    pub task: String,
    /// The prompt (`prompt`, or `text` for plain item files).
    pub text: String,
    /// Per model, what it achieved.
    pub models: BTreeMap<String, Outcome>,
    /// RouteLLM's flag for rows that leaked into its routers' training data.
    pub contaminated: bool,
}

/// A data file, read and checked.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// The path as given (for messages).
    pub path: String,
    pub rows: Vec<Row>,
}

/// Multiple-choice style sub-benchmarks of RouterArena (everything else there is free-form).
const CHOICE_BENCHMARKS: &[&str] = &[
    "mmlu",
    "arc",
    "pubmedqa",
    "geobench",
    "musictheory",
    "medmcqa",
    "opentdb",
    "socialiqa",
    "ethics",
    "mathqa",
    "superglue",
    "hellaswag",
    "winogrande",
    "piqa",
    "boolq",
    "truthfulqa",
    "commonsenseqa",
    "openbookqa",
    "mcq",
    "multiple_choice",
    "multiple-choice",
];

/// The task kind for a task name in a data file. Plain kinds are taken as they are;
/// benchmark names are mapped by what the benchmark asks for: picking among options is
/// `classify`, condensing an article is `summarize`, everything else (maths, code, chat,
/// translation, open QA) is `generate`.
pub fn kind_of_task(task: &str, has_choices: bool) -> TaskKind {
    if let Ok(kind) = task.parse::<TaskKind>() {
        return kind;
    }
    let t = task.to_ascii_lowercase();
    // `routerarena/MMLUPro_math`: the part after the collection names the benchmark.
    let bench = t.rsplit('/').next().unwrap_or(&t);
    let name = if t.starts_with("routerarena/") {
        bench
    } else {
        t.as_str()
    };
    if name.contains("summar") || name.contains("cnndm") || name.contains("xsum") {
        TaskKind::Summarize
    } else if has_choices || CHOICE_BENCHMARKS.iter().any(|b| name.starts_with(b)) {
        TaskKind::Classify
    } else {
        TaskKind::Generate
    }
}

/// Whether a shared row belongs to the project's demo data and so must not train the default
/// router. The rule of `is_demo()` in `scripts/make-demo-data.py`: a quarter of MMLU, all
/// Goyal news rows, half of the ROSE rows, chosen by a hash of the id.
pub fn is_demo(id: &str) -> bool {
    if id.starts_with("routellm-mmlu-") {
        id_bucket(id, 4) == 0
    } else if id.starts_with("goyal-") {
        true
    } else if id.starts_with("rose-") {
        id_bucket(id, 2) == 0
    } else {
        false
    }
}

/// The unit that grouped evaluation holds out together: in a file of several tasks (MMLU's
/// subjects, RouterArena's benchmarks) the task, so a held-out subject is unseen as a whole;
/// in a file of one task (GSM8K, arena, news) the row itself.
pub fn group_key<'a>(task: &'a str, id: &'a str, multi_task: bool) -> &'a str {
    if multi_task { task } else { id }
}

/// The group key of every row of one data set (see [`group_key`]).
pub fn group_keys(rows: &[PairedRow]) -> Vec<String> {
    let multi = rows.iter().any(|r| r.task != rows[0].task);
    rows.iter()
        .map(|r| group_key(&r.task, &r.id, multi).to_string())
        .collect()
}

/// How many parts the untouched-slice hash splits groups into; one part is untouched.
pub const UNTOUCHED_PARTS: u32 = 6;

/// Whether a group belongs to the untouched slice: the sixth of every data set (whole
/// subjects and benchmarks where a file has several, rows elsewhere) that no router of this
/// crate is developed, tuned or trained on, kept for one final evaluation of the routers.
/// Decided by a salted hash before any experiment, so it is independent of the demo split and
/// of the folds. (The quality policy was replayed on it too, `policy eval --slice untouched`,
/// and its margin changed after that: for the policy it is no longer a blind test.)
pub fn is_untouched(group: &str) -> bool {
    id_bucket(&format!("untouched:{group}"), UNTOUCHED_PARTS) == 0
}

/// Which rows of a file to use, relative to the untouched slice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Slice {
    /// Every row.
    #[default]
    All,
    /// The development rows: everything but the untouched slice.
    Dev,
    /// Only the untouched slice (for the one final evaluation).
    Untouched,
}

/// `int(sha256(id).hexdigest()[:8], 16) % n`: a stable bucket for an id (demo split, folds).
pub fn id_bucket(id: &str, n: u32) -> u32 {
    let digest = Sha256::digest(id.as_bytes());
    let first = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    first % n.max(1)
}

/// Every model named in some row's results, sorted, once each.
pub fn model_names<'a, V: 'a>(
    rows: impl IntoIterator<Item = &'a BTreeMap<String, V>>,
) -> Vec<String> {
    let mut names: Vec<String> = rows
        .into_iter()
        .flat_map(|models| models.keys().cloned())
        .collect();
    names.sort();
    names.dedup();
    names
}

impl Dataset {
    /// Reads a JSONL file. `default_kind` is used for rows without a `task`; without it such
    /// rows are an error.
    pub fn read(path: &Path, default_kind: Option<TaskKind>) -> Result<Self, DataError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| DataError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&shown, &text, default_kind)
    }

    /// Parses JSONL text; `path` is only used in messages.
    pub fn parse(
        path: &str,
        text: &str,
        default_kind: Option<TaskKind>,
    ) -> Result<Self, DataError> {
        let mut rows = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line_no = i + 1;
            if line.trim().is_empty() {
                continue;
            }
            let invalid = |message: String| DataError::Invalid {
                path: path.to_string(),
                line: line_no,
                message,
            };
            let raw: RawRow = serde_json::from_str(line).map_err(|source| DataError::Json {
                path: path.to_string(),
                line: line_no,
                source,
            })?;
            let id = match raw.id {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                other => return Err(invalid(format!("`id` must be a string, found {other}"))),
            };
            let text = raw
                .prompt
                .or(raw.text)
                .ok_or_else(|| invalid(format!("row `{id}` has no `prompt` (or `text`)")))?;
            let kind = match (&raw.task, default_kind) {
                (Some(task), _) => kind_of_task(task, raw.choices.is_some()),
                (None, Some(kind)) => kind,
                (None, None) => {
                    return Err(invalid(format!(
                        "row `{id}` has no `task` (give one, or pass --task KIND)"
                    )));
                }
            };
            for (model, o) in &raw.models {
                if !(0.0..=1.0).contains(&o.score) {
                    return Err(DataError::ScoreOutOfRange {
                        path: path.to_string(),
                        line: line_no,
                        model: model.clone(),
                        score: o.score,
                    });
                }
            }
            rows.push(Row {
                line: line_no,
                id,
                kind,
                task: raw.task.unwrap_or_else(|| kind.as_str().to_string()),
                text,
                models: raw.models,
                contaminated: raw.contaminated.unwrap_or(false),
            });
        }
        if rows.is_empty() {
            return Err(DataError::Empty {
                path: path.to_string(),
            });
        }
        Ok(Self {
            path: path.to_string(),
            rows,
        })
    }

    /// Every model named in some row, sorted.
    pub fn models(&self) -> Vec<String> {
        model_names(self.rows.iter().map(|r| &r.models))
    }

    /// The file's natural weak/strong pair: a known pair whose models both occur, or, when
    /// the file has exactly two models, the one with the lower mean score as the weak one.
    pub fn infer_pair(&self) -> Result<Pair, DataError> {
        let models = self.models();
        let has = |m: &str| models.iter().any(|x| x == m);
        for (weak, strong) in KNOWN_PAIRS {
            if has(weak) && has(strong) {
                return Ok(Pair::new(*weak, *strong));
            }
        }
        if let [a, b] = models.as_slice() {
            let mean = |m: &str| {
                let s: Vec<f64> = self
                    .rows
                    .iter()
                    .filter_map(|r| r.models.get(m).map(|o| o.score))
                    .collect();
                s.iter().sum::<f64>() / s.len().max(1) as f64
            };
            return Ok(if mean(a) <= mean(b) {
                Pair::new(a.clone(), b.clone())
            } else {
                Pair::new(b.clone(), a.clone())
            });
        }
        Err(DataError::NoPair {
            path: self.path.clone(),
            known: models.join(", "),
        })
    }

    /// The rows usable for comparing `pair`, after the filters, in file order.
    pub fn paired(&self, pair: &Pair, filter: &Filter) -> Result<Vec<PairedRow>, DataError> {
        let models = self.models();
        for model in [&pair.weak, &pair.strong] {
            if !models.contains(model) {
                return Err(DataError::UnknownModel {
                    path: self.path.clone(),
                    model: model.clone(),
                    known: models.join(", "),
                });
            }
        }
        let multi_task = self.rows.iter().any(|r| r.task != self.rows[0].task);
        let mut out = Vec::new();
        for row in &self.rows {
            if row.contaminated && !filter.keep_contaminated {
                continue;
            }
            let untouched = is_untouched(group_key(&row.task, &row.id, multi_task));
            match filter.slice {
                Slice::All => {}
                Slice::Dev if untouched => continue,
                Slice::Untouched if !untouched => continue,
                _ => {}
            }
            if filter.exclude_demo && is_demo(&row.id) {
                continue;
            }
            let (weak, strong) = match (row.models.get(&pair.weak), row.models.get(&pair.strong)) {
                (Some(w), Some(s)) => (*w, *s),
                (w, _) => {
                    if filter.skip_missing {
                        continue;
                    }
                    let model = if w.is_none() {
                        &pair.weak
                    } else {
                        &pair.strong
                    };
                    return Err(DataError::MissingModel {
                        path: self.path.clone(),
                        line: row.line,
                        id: row.id.clone(),
                        model: model.clone(),
                    });
                }
            };
            out.push(PairedRow {
                line: row.line,
                id: row.id.clone(),
                kind: row.kind,
                task: row.task.clone(),
                text: row.text.clone(),
                weak,
                strong,
            });
        }
        if out.is_empty() {
            return Err(DataError::NothingLeft {
                path: self.path.clone(),
                reason: format!("{filter}"),
            });
        }
        Ok(out)
    }
}

/// Pairs known from the shared data, weak first. Checked in this order.
pub const KNOWN_PAIRS: &[(&str, &str)] = &[
    ("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview"),
    ("T0pp", "text-davinci-002"),
    ("claude-3-haiku-20240307", "gemini-2.0-flash-001"),
];

/// A weak and a strong model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub weak: String,
    pub strong: String,
}

impl Pair {
    pub fn new(weak: impl Into<String>, strong: impl Into<String>) -> Self {
        Self {
            weak: weak.into(),
            strong: strong.into(),
        }
    }
}

impl std::fmt::Display for Pair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} -> {}", self.weak, self.strong)
    }
}

/// Which rows to use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Filter {
    /// Keep rows RouteLLM flags as contaminated (dropped by default, like the reference).
    pub keep_contaminated: bool,
    /// Drop the rows that the project's demo holds out.
    pub exclude_demo: bool,
    /// Drop rows that lack one of the two models instead of failing.
    pub skip_missing: bool,
    /// Which side of the untouched slice.
    pub slice: Slice,
}

impl std::fmt::Display for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "contaminated rows {}, demo rows {}, rows missing a model {}",
            if self.keep_contaminated {
                "kept"
            } else {
                "dropped"
            },
            if self.exclude_demo { "dropped" } else { "kept" },
            if self.skip_missing {
                "dropped"
            } else {
                "refused"
            },
        )?;
        match self.slice {
            Slice::All => Ok(()),
            Slice::Dev => write!(f, ", untouched slice dropped"),
            Slice::Untouched => write!(f, ", untouched slice only"),
        }
    }
}

/// A row reduced to what routing evaluation needs: the text, its kind, and the two models'
/// outcomes.
#[derive(Debug, Clone, PartialEq)]
pub struct PairedRow {
    pub line: usize,
    pub id: String,
    pub kind: TaskKind,
    /// The file's task name: for grouped evaluation only, never a feature.
    pub task: String,
    pub text: String,
    pub weak: Outcome,
    pub strong: Outcome,
}

impl PairedRow {
    /// How much the strong model gains over the weak one (in [-1, 1]).
    pub fn gain(&self) -> f64 {
        self.strong.score - self.weak.score
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"id":"a","task":"mmlu/anatomy","prompt":"Q1","models":{"w":{"score":1.0},"s":{"score":0.0}}}
{"id":"b","task":"gsm8k","prompt":"Q2","models":{"w":{"score":0.0},"s":{"score":1.0}},"contaminated":true}

{"id":3,"task":"summarize","prompt":"Q3","models":{"w":{"score":0.5},"s":{"score":0.75}}}
"#;

    #[test]
    fn parses_rows_kinds_and_pairs() {
        let d = Dataset::parse("f.jsonl", GOOD, None).expect("parses");
        assert_eq!(d.rows.len(), 3);
        assert_eq!(d.rows[2].id, "3");
        assert_eq!(d.rows[2].line, 4);
        let kinds: Vec<_> = d.rows.iter().map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [TaskKind::Classify, TaskKind::Generate, TaskKind::Summarize]
        );
        let pair = d.infer_pair().expect("two models");
        assert_eq!(pair, Pair::new("w", "s"));
        let rows = d.paired(&pair, &Filter::default()).expect("pairs");
        assert_eq!(rows.len(), 2, "the contaminated row is dropped");
        assert_eq!(rows[1].gain(), 0.25);
        let keep = Filter {
            keep_contaminated: true,
            ..Filter::default()
        };
        assert_eq!(d.paired(&pair, &keep).expect("pairs").len(), 3);
    }

    #[test]
    fn bad_input_names_file_and_line() {
        let err = |text: &str| {
            Dataset::parse("bad.jsonl", text, None)
                .expect_err("must fail")
                .to_string()
        };
        assert!(err("").contains("bad.jsonl: the file has no rows"));
        assert!(err("\n  \n").contains("no rows"));
        let e = err("{\"id\":\"a\",\"task\":\"gsm8k\",\"prompt\":\"x\"}\nnot json\n");
        assert!(e.starts_with("bad.jsonl:2: not a JSON object"), "{e}");
        let e = err(r#"{"id":"a","task":"gsm8k","prompt":"x","models":{"m":{"score":1.5}}}"#);
        assert!(e.contains("bad.jsonl:1: model `m` has score 1.5"), "{e}");
        let e = err(r#"{"id":"a","prompt":"x"}"#);
        assert!(e.contains("bad.jsonl:1:") && e.contains("no `task`"), "{e}");
        let e = err(r#"{"id":"a","task":"gsm8k"}"#);
        assert!(e.contains("no `prompt`"), "{e}");
    }

    #[test]
    fn missing_and_unknown_models_are_errors() {
        let text = r#"{"id":"a","task":"gsm8k","prompt":"x","models":{"w":{"score":1},"s":{"score":0}}}
{"id":"b","task":"gsm8k","prompt":"y","models":{"w":{"score":1}}}"#;
        let d = Dataset::parse("m.jsonl", text, None).expect("parses");
        let e = d
            .paired(&Pair::new("w", "nope"), &Filter::default())
            .expect_err("unknown")
            .to_string();
        assert!(
            e.contains("no row has model `nope`") && e.contains("s, w"),
            "{e}"
        );
        let e = d
            .paired(&Pair::new("w", "s"), &Filter::default())
            .expect_err("missing")
            .to_string();
        assert!(
            e.starts_with("m.jsonl:2: row `b` has no result for model `s`"),
            "{e}"
        );
        let skip = Filter {
            skip_missing: true,
            ..Filter::default()
        };
        assert_eq!(d.paired(&Pair::new("w", "s"), &skip).expect("ok").len(), 1);
    }

    #[test]
    fn task_names_map_to_kinds() {
        use TaskKind::*;
        for (task, kind) in [
            ("classify", Classify),
            ("summarize", Summarize),
            ("generate", Generate),
            ("mmlu/abstract_algebra", Classify),
            ("gsm8k", Generate),
            ("arena_bench_v1/open_ended", Generate),
            ("routerarena/MMLUPro_math", Classify),
            ("routerarena/PubMedQA", Classify),
            ("routerarena/LiveCodeBench", Generate),
            ("routerarena/WMT19-de-en", Generate),
            ("routerarena/GSM8K", Generate),
            ("cnndm_summaries", Summarize),
            ("something_new", Generate),
        ] {
            assert_eq!(kind_of_task(task, false), kind, "{task}");
        }
        assert_eq!(kind_of_task("something_new", true), Classify);
    }

    #[test]
    fn demo_rule_matches_the_python_script() {
        // Values computed with scripts/make-demo-data.py's bucket().
        assert_eq!(id_bucket("routellm-mmlu-abstract_algebra-1", 4), 0);
        assert!(is_demo("routellm-mmlu-abstract_algebra-1"));
        assert!(is_demo("goyal-cnn-0"));
        assert!(!is_demo("routellm-gsm8k-1"));
        assert!(!is_demo("arenabench-v1-66c00ddde3dc4128a14d6afd5e899342"));
    }

    #[test]
    fn known_pairs_are_inferred() {
        let text = r#"{"id":"a","task":"gsm8k","prompt":"x","models":{"mistralai/Mixtral-8x7B-Instruct-v0.1":{"score":1},"gpt-4-1106-preview":{"score":0},"gpt-3.5-turbo":{"score":1}}}"#;
        let d = Dataset::parse("k.jsonl", text, None).expect("parses");
        assert_eq!(d.infer_pair().expect("known").strong, "gpt-4-1106-preview");
        let text = r#"{"id":"a","task":"gsm8k","prompt":"x","models":{"a":{"score":1},"b":{"score":0},"c":{"score":1}}}"#;
        let d = Dataset::parse("k.jsonl", text, None).expect("parses");
        assert!(
            d.infer_pair()
                .expect_err("ambiguous")
                .to_string()
                .contains("--pair")
        );
    }
}
