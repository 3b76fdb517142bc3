//! `switchyard router …`: train, score, evaluate and cross-validate routers from the command
//! line. The `switchyard` binary mounts [`RouterCommand`] as its `router` subcommand; this
//! crate's own `switchyard-router` binary runs the same commands standalone.
//!
//! Data files are JSONL rows of the routing data format (see [`crate::data`]). Which models
//! are compared is chosen per file:
//! - `--pair FILE=WEAK,STRONG` names the pair for one file (and adds it to the data);
//! - otherwise `--weak M --strong M` apply to every `--data` file;
//! - otherwise each file's natural pair is inferred ([`crate::data::Dataset::infer_pair`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};

use crate::crossval::{CvSet, Split, calibration_table, crossval, markdown_table};
use crate::data::{Dataset, Filter, Pair, Slice};
use crate::eval::{EvalOptions, evaluate_routers};
use crate::plot::plot_report;
use crate::train::{Recipe, train_recipe};
use switchyard_router::artifact::{Provenance, RouterArtifact, TrainingSet};
use switchyard_router::{TaskKind, configured_router};

/// The router subcommands.
#[derive(Debug, Subcommand)]
pub enum RouterCommand {
    /// Train a router artifact from routing data.
    Train(TrainArgs),
    /// Score every row of a file: one `{"id","score"}` JSON line per row.
    Score(ScoreArgs),
    /// Evaluate a router on a file beside the random, oracle, length and TF-IDF baselines.
    Eval(EvalArgs),
    /// Cross-validate the training recipe on data files (k folds of whole subjects by
    /// default; or whole files, or rows by id).
    Crossval(CrossvalArgs),
}

/// Which data files, which model pairs, which rows.
#[derive(Debug, Clone, Args)]
pub struct DataArgs {
    /// Routing data files (JSONL).
    #[arg(long = "data", value_name = "FILE", num_args = 1..)]
    pub data: Vec<PathBuf>,
    /// A file with its own weak and strong model, as FILE=WEAK,STRONG (repeatable).
    #[arg(long = "pair", value_name = "FILE=WEAK,STRONG")]
    pub pairs: Vec<String>,
    /// The weak model, for every --data file (with --strong).
    #[arg(long, requires = "strong")]
    pub weak: Option<String>,
    /// The strong model, for every --data file (with --weak).
    #[arg(long, requires = "weak")]
    pub strong: Option<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
}

/// Which rows of the data count.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Keep rows flagged `contaminated` (dropped by default, like RouteLLM's numbers).
    #[arg(long)]
    pub keep_contaminated: bool,
    /// Drop the project's demo rows (the `is_demo` rule of scripts/make-demo-data.py).
    #[arg(long)]
    pub exclude_demo: bool,
    /// Drop rows lacking one of the two models instead of failing on them.
    #[arg(long)]
    pub skip_missing: bool,
    /// Which rows relative to the untouched slice (`dev` for development and training,
    /// `untouched` once, for the final evaluation).
    #[arg(long, value_enum, default_value = "all")]
    pub slice: Slice,
}

impl FilterArgs {
    /// The filter these flags describe.
    pub fn filter(&self) -> Filter {
        Filter {
            keep_contaminated: self.keep_contaminated,
            exclude_demo: self.exclude_demo,
            skip_missing: self.skip_missing,
            slice: self.slice,
        }
    }
}

/// Knobs of the training recipe (defaults: the default router's).
#[derive(Debug, Clone, Args)]
pub struct RecipeArgs {
    /// Set weighting: a set of n rows weighs n^balance (1 = per row, 0 = per set).
    #[arg(long)]
    pub balance: Option<f64>,
    /// Dimensions of the static token embedding used (0 = lexical and structure only).
    #[arg(long)]
    pub embed_dims: Option<u16>,
    /// L2 penalty of the embedding weights.
    #[arg(long)]
    pub l2_embed: Option<f64>,
    /// L2 penalty of the n-gram weights.
    #[arg(long)]
    pub l2: Option<f64>,
    /// Without word n-grams (embedding and structure only).
    #[arg(long)]
    pub no_words: bool,
    /// Structure weights per task kind only (none shared between kinds).
    #[arg(long)]
    pub per_kind_structure: bool,
    /// Embedding dimensions the nearest-neighbour index compares (default 0 = no index;
    /// 32 is the `learned-v3` recipe).
    #[arg(long)]
    pub knn_dims: Option<usize>,
    /// Neighbours averaged.
    #[arg(long)]
    pub knn_k: Option<usize>,
    /// Inverted lists (clusters) of the neighbour index.
    #[arg(long)]
    pub knn_lists: Option<usize>,
    /// Lists scanned per item.
    #[arg(long)]
    pub knn_probe: Option<usize>,
    /// The neighbours' share of the score, in [0, 1].
    #[arg(long)]
    pub knn_weight: Option<f32>,
}

impl RecipeArgs {
    /// The recipe these flags describe.
    pub fn recipe(&self) -> Recipe {
        let mut r = Recipe::default();
        if let Some(b) = self.balance {
            r.balance = b;
        }
        if let Some(d) = self.embed_dims {
            r.config.features.embed_dims = d;
        }
        if let Some(l) = self.l2_embed {
            r.config.l2_embed = l;
        }
        if let Some(l) = self.l2 {
            r.config.l2 = l;
        }
        if self.no_words {
            r.config.features.word_ngrams = 0;
        }
        if self.per_kind_structure {
            r.config.shared_dense = false;
        }
        if r.config.features.embed_dims == 0 {
            r.knn.dims = 0;
        }
        if let Some(d) = self.knn_dims {
            r.knn.dims = d;
        }
        if r.knn.dims > 0 && self.knn_dims.is_none() && r.config.features.embed_dims == 0 {
            r.knn.dims = 0;
        }
        if let Some(k) = self.knn_k {
            r.knn.k = k;
        }
        if let Some(l) = self.knn_lists {
            r.knn.lists = l;
        }
        if let Some(p) = self.knn_probe {
            r.knn.probe = p;
        }
        if let Some(w) = self.knn_weight {
            r.knn.weight = w;
        }
        r
    }
}

/// `router train`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Where to write the router artifact (JSON).
    #[arg(long, value_name = "ROUTER")]
    pub out: PathBuf,
    /// The router's name in reports.
    #[arg(long, default_value = "learned-v2")]
    pub name: String,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Learn from the fleet's own outcomes in Postgres instead of data files: items with both
    /// a weak and a strong answer (shadow calls, escalations), labelled by their agreement,
    /// adapt a base router (the `switchyard` binary only: it reads the database).
    #[arg(long, conflicts_with_all = ["data", "pairs"])]
    pub from_db: bool,
    /// With --from-db: only this team's jobs.
    #[arg(long, requires = "from_db")]
    pub team: Option<String>,
    /// With --from-db: only jobs of this task kind.
    #[arg(long, requires = "from_db")]
    pub task: Option<TaskKind>,
    /// With --from-db: the router to adapt (default: the configured router, else the
    /// committed default).
    #[arg(long, requires = "from_db", value_name = "ROUTER")]
    pub base: Option<PathBuf>,
    /// With --from-db: use at most this many items (oldest jobs first).
    #[arg(long, requires = "from_db", default_value_t = 1_000_000)]
    pub limit: i64,
}

/// `router score`.
#[derive(Debug, Args)]
pub struct ScoreArgs {
    /// A router artifact (default: the committed default router).
    #[arg(long, value_name = "ROUTER")]
    pub router: Option<PathBuf>,
    /// Rows to score: JSONL with `id`, `prompt` (or `text`) and `task`.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// The task kind of rows that have no `task`.
    #[arg(long, value_name = "KIND")]
    pub task: Option<TaskKind>,
}

/// `router eval`.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// A router artifact (default: the committed default router).
    #[arg(long, value_name = "ROUTER")]
    pub router: Option<PathBuf>,
    /// The data file.
    #[arg(long, value_name = "FILE")]
    pub data: PathBuf,
    /// The weak model (inferred from the file when absent, with --strong).
    #[arg(long, requires = "strong")]
    pub weak: Option<String>,
    /// The strong model.
    #[arg(long, requires = "weak")]
    pub strong: Option<String>,
    /// Print one JSON object keyed by router name instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Draw the cost-quality curves into FILE.svg or FILE.png.
    #[arg(long, value_name = "FILE")]
    pub plot: Option<PathBuf>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Folds of the cross-fitted TF-IDF baseline.
    #[arg(long, default_value_t = 5)]
    pub folds: u32,
}

/// `router crossval`.
#[derive(Debug, Args)]
pub struct CrossvalArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Number of folds (for `groups` and `ids`).
    #[arg(long, default_value_t = 5)]
    pub folds: u32,
    /// How rows are held out: whole subjects/benchmarks, whole files, or rows by id.
    #[arg(long, value_enum, default_value = "groups")]
    pub split: Split,
    /// Also cross-validate the lexical router without the embedding (the previous default)
    /// in the same run, as `lexical`.
    #[arg(long)]
    pub compare_lexical: bool,
    /// Print the Markdown tables (as in the crate README) instead of per-set tables.
    #[arg(long)]
    pub markdown: bool,
    /// Print one JSON object: set -> router -> metrics.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub recipe: RecipeArgs,
}

/// Runs a router subcommand.
pub fn run(cmd: RouterCommand) -> anyhow::Result<()> {
    match cmd {
        RouterCommand::Train(a) => train(a),
        RouterCommand::Score(a) => score(a),
        RouterCommand::Eval(a) => eval(a),
        RouterCommand::Crossval(a) => cross(a),
    }
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// Parses `FILE=WEAK,STRONG`.
fn parse_pair(spec: &str) -> anyhow::Result<(PathBuf, Pair)> {
    let (file, models) = spec
        .rsplit_once('=')
        .with_context(|| format!("--pair `{spec}`: expected FILE=WEAK,STRONG"))?;
    let (weak, strong) = models
        .split_once(',')
        .with_context(|| format!("--pair `{spec}`: expected FILE=WEAK,STRONG"))?;
    if file.is_empty() || weak.is_empty() || strong.is_empty() {
        bail!("--pair `{spec}`: expected FILE=WEAK,STRONG");
    }
    Ok((PathBuf::from(file), Pair::new(weak, strong)))
}

/// Reads every selected file and pairs its rows. With `allow_empty`, a file that the filters
/// empty entirely (all its rows are demo rows, say) is skipped with a warning.
fn load_sets(a: &DataArgs, allow_empty: bool) -> anyhow::Result<Vec<CvSet>> {
    let filter = a.filter.filter();
    let mut plan: Vec<(PathBuf, Option<Pair>)> = Vec::new();
    for spec in &a.pairs {
        let (file, pair) = parse_pair(spec)?;
        plan.push((file, Some(pair)));
    }
    let common = match (&a.weak, &a.strong) {
        (Some(w), Some(s)) => Some(Pair::new(w, s)),
        _ => None,
    };
    for file in &a.data {
        if !plan.iter().any(|(f, _)| f == file) {
            plan.push((file.clone(), common.clone()));
        }
    }
    if plan.is_empty() {
        bail!("no data: pass --data FILE... or --pair FILE=WEAK,STRONG");
    }
    let mut sets = Vec::new();
    for (file, pair) in plan {
        let data = Dataset::read(&file, None)?;
        let pair = match pair {
            Some(p) => p,
            None => data.infer_pair()?,
        };
        let rows = match data.paired(&pair, &filter) {
            Ok(rows) => rows,
            Err(crate::data::DataError::NothingLeft { path, reason }) if allow_empty => {
                eprintln!("warning: {path}: skipped, no rows left ({reason})");
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        sets.push(CvSet {
            name: file_name(&file),
            pair,
            rows,
        });
    }
    Ok(sets)
}

/// The command line that reproduces a run, without machine-specific directories.
fn command_line(a: &DataArgs, extra: &str) -> String {
    let mut cmd = String::from("switchyard router train");
    for spec in &a.pairs {
        match parse_pair(spec) {
            Ok((f, p)) => cmd.push_str(&format!(
                " --pair {}={},{}",
                file_name(&f),
                p.weak,
                p.strong
            )),
            Err(_) => cmd.push_str(&format!(" --pair {spec}")),
        }
    }
    if !a.data.is_empty() {
        cmd.push_str(" --data");
        for f in &a.data {
            cmd.push(' ');
            cmd.push_str(&file_name(f));
        }
    }
    if let (Some(w), Some(s)) = (&a.weak, &a.strong) {
        cmd.push_str(&format!(" --weak {w} --strong {s}"));
    }
    for (on, flag) in [
        (a.filter.keep_contaminated, " --keep-contaminated"),
        (a.filter.exclude_demo, " --exclude-demo"),
        (a.filter.skip_missing, " --skip-missing"),
    ] {
        if on {
            cmd.push_str(flag);
        }
    }
    match a.filter.slice {
        Slice::All => {}
        Slice::Dev => cmd.push_str(" --slice dev"),
        Slice::Untouched => cmd.push_str(" --slice untouched"),
    }
    cmd + extra
}

fn train(a: TrainArgs) -> anyhow::Result<()> {
    if a.from_db {
        bail!(
            "--from-db reads the fleet's database: run it as `switchyard router train --from-db`"
        );
    }
    let sets = load_sets(&a.data, true)?;
    if sets.is_empty() {
        bail!("no training rows left after filtering");
    }
    let recipe = a.recipe.recipe();
    let slices: Vec<&[crate::data::PairedRow]> = sets.iter().map(|s| s.rows.as_slice()).collect();
    let model = train_recipe(&slices, &recipe)?;
    let provenance = Provenance {
        command: command_line(
            &a.data,
            &format!(" --name {} --out {}", a.name, file_name(&a.out)),
        ),
        sets: sets
            .iter()
            .map(|s| TrainingSet {
                file: s.name.clone(),
                weak: s.pair.weak.clone(),
                strong: s.pair.strong.clone(),
                rows: s.rows.len(),
                weight: (s.rows.len() as f64).powf(recipe.balance),
            })
            .collect(),
        notes: vec![format!("recipe: {recipe:?}")],
    };
    let artifact = RouterArtifact::new(&a.name, provenance, &model)
        .with_quality(crate::prior::measure(&slices, recipe.balance));
    artifact
        .save(&a.out)
        .with_context(|| format!("cannot write {}", a.out.display()))?;
    let rows: usize = sets.iter().map(|s| s.rows.len()).sum();
    eprintln!(
        "trained `{}` on {rows} rows from {} files -> {}",
        a.name,
        sets.len(),
        a.out.display()
    );
    Ok(())
}

fn score(a: ScoreArgs) -> anyhow::Result<()> {
    let router = configured_router(a.router.as_deref())?;
    let data = Dataset::read(&a.data, a.task)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for row in &data.rows {
        let line = serde_json::json!({"id": row.id, "score": router.score(&row.text, row.kind)});
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

fn eval(a: EvalArgs) -> anyhow::Result<()> {
    let router = configured_router(a.router.as_deref())?;
    let data = Dataset::read(&a.data, None)?;
    let pair = match (a.weak, a.strong) {
        (Some(w), Some(s)) => Pair::new(w, s),
        _ => data.infer_pair()?,
    };
    let filter = a.filter.filter();
    let rows = data.paired(&pair, &filter)?;
    let opts = EvalOptions {
        tfidf_folds: a.folds,
        ..EvalOptions::default()
    };
    let report = evaluate_routers(&rows, &pair, &[router.as_ref()], &opts);
    if a.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.table());
    }
    if let Some(plot) = &a.plot {
        plot_report(&report, plot, &format!("{} ({pair})", file_name(&a.data)))?;
    }
    Ok(())
}

fn cross(a: CrossvalArgs) -> anyhow::Result<()> {
    if a.folds < 2 {
        bail!("--folds must be at least 2");
    }
    let sets = load_sets(&a.data, false)?;
    let mut recipes = vec![("learned".to_string(), a.recipe.recipe())];
    if a.compare_lexical {
        recipes.push(("lexical".to_string(), Recipe::lexical()));
    }
    let names: Vec<String> = recipes.iter().map(|(n, _)| n.clone()).collect();
    let results = crossval(&sets, &recipes, a.split, a.folds, &EvalOptions::default())?;
    if a.json {
        let obj: serde_json::Map<String, serde_json::Value> = results
            .iter()
            .map(|r| {
                let mut v = r.report.to_json();
                if let Some(o) = v.as_object_mut() {
                    o.insert(
                        "calibration".into(),
                        serde_json::to_value(&r.calibration).unwrap_or_default(),
                    );
                }
                (r.name.clone(), v)
            })
            .collect();
        println!("{}", serde_json::Value::Object(obj));
    } else if a.markdown {
        print!("{}", markdown_table(&results, &names));
        println!();
        print!("{}", calibration_table(&results));
    } else {
        for r in &results {
            println!("== {}\n{}", r.name, r.report.table());
        }
        print!("{}", calibration_table(&results));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_specs() {
        let (f, p) = parse_pair("dir/a.jsonl=w,s").expect("ok");
        assert_eq!(f, PathBuf::from("dir/a.jsonl"));
        assert_eq!(p, Pair::new("w", "s"));
        let (_, p) = parse_pair("a.jsonl=mistralai/Mixtral,gpt-4").expect("ok");
        assert_eq!(p.weak, "mistralai/Mixtral");
        assert!(parse_pair("a.jsonl").is_err());
        assert!(parse_pair("a.jsonl=w").is_err());
        assert!(parse_pair("=w,s").is_err());
    }
}
