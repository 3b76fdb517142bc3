//! A routing-data file as the twin replays it: each row's text, task kind, group, the two
//! models' replayed outcomes, and the simulator's record (what the fleet's simulator would
//! answer for it).

use std::path::Path;

use anyhow::{Context as _, bail};
use switchyard_proto::{Task, TaskKind};
use switchyard_router_lab::data::{self, Filter, Pair, PairedRow};
use switchyard_sim::Record;

/// One row of an evaluation set.
#[derive(Debug, Clone)]
pub struct EvalRow {
    /// The row as the router's tools read it (text, kind, both outcomes).
    pub paired: PairedRow,
    /// What the group folds hold out together: the row's benchmark task (an MMLU subject),
    /// or its id when the file has a single task.
    pub group: String,
}

/// A file's rows with the pair they are replayed for.
#[derive(Debug, Clone)]
pub struct EvalSet {
    pub name: String,
    pub pair: Pair,
    pub kind: TaskKind,
    pub rows: Vec<EvalRow>,
    /// The simulator's view of the same file.
    pub sim: switchyard_sim::Dataset,
}

impl EvalSet {
    /// Reads `path` for `pair` (inferred when `None`): one set for each task kind in the
    /// file, in the order the kinds first appear (a job has one task, so a mixed file, such
    /// as RouterArena's multiple choice, maths and generation, is one job per kind, named
    /// `file [kind]`).
    ///
    /// # Errors
    /// Unreadable or malformed files, unknown models.
    pub fn read(path: &Path, pair: Option<Pair>, filter: &Filter) -> anyhow::Result<Vec<Self>> {
        let data = data::Dataset::read(path, None)?;
        let pair = match pair {
            Some(p) => p,
            None => data.infer_pair()?,
        };
        let paired = data.paired(&pair, filter)?;
        let sim = switchyard_sim::Dataset::load(&[path])
            .with_context(|| format!("cannot replay {}", path.display()))?;
        let file = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let mut kinds: Vec<TaskKind> = Vec::new();
        for r in &paired {
            if !kinds.contains(&r.kind) {
                kinds.push(r.kind);
            }
        }
        let mixed = kinds.len() > 1;
        let mut by_kind: Vec<Vec<PairedRow>> = vec![Vec::new(); kinds.len()];
        for r in paired {
            let i = kinds.iter().position(|k| *k == r.kind).unwrap_or_default();
            by_kind[i].push(r);
        }
        let mut sets = Vec::with_capacity(kinds.len());
        for (kind, paired) in kinds.into_iter().zip(by_kind) {
            let name = if mixed {
                format!("{} [{kind}]", file.trim_end_matches(".jsonl"))
            } else {
                file.clone()
            };
            let rows = Self::rows(paired, &sim);
            if rows.is_empty() {
                continue;
            }
            sets.push(Self {
                name,
                pair: pair.clone(),
                kind,
                rows,
                sim: sim.clone(),
            });
        }
        if sets.is_empty() {
            bail!(
                "{}: no row to replay for {} → {}",
                path.display(),
                pair.weak,
                pair.strong
            );
        }
        Ok(sets)
    }

    /// The rows the simulator replays as the file has them, each with its group: its
    /// benchmark task when the rows span five tasks or more, else its id.
    fn rows(paired: Vec<PairedRow>, sim: &switchyard_sim::Dataset) -> Vec<EvalRow> {
        let tasks: std::collections::BTreeSet<&str> = paired
            .iter()
            .filter_map(|r| sim.get(&r.id).map(|rec| rec.task.as_str()))
            .collect();
        let by_task = tasks.len() >= 5;
        let mut rows = Vec::with_capacity(paired.len());
        for r in paired {
            let Some(record) = sim.get(&r.id) else {
                continue; // a duplicate prompt the simulator keeps only once
            };
            if record.prompt.trim() != r.text.trim() {
                continue;
            }
            let group = if by_task {
                record.task.clone()
            } else {
                r.id.clone()
            };
            rows.push(EvalRow { paired: r, group });
        }
        rows
    }

    /// The simulator's record of a row.
    pub fn record(&self, row: &EvalRow) -> Option<&Record> {
        self.sim.get(&row.paired.id)
    }

    /// The task a job of these rows carries: the letters of the largest multiple-choice item
    /// as labels (what a client classifying these questions would send), a 120-word summary,
    /// or free generation.
    pub fn task(&self) -> Task {
        match self.kind {
            TaskKind::Classify => {
                let labels = self
                    .rows
                    .iter()
                    .filter_map(|r| self.record(r))
                    .map(Record::letters)
                    .max_by_key(Vec::len)
                    .unwrap_or_default();
                Task::Classify {
                    labels,
                    instructions: None,
                }
            }
            TaskKind::Summarize => Task::Summarize {
                max_words: Some(120),
                instructions: None,
            },
            TaskKind::Generate => Task::Generate { instructions: None },
            TaskKind::Chat => Task::Chat {},
        }
    }
}
