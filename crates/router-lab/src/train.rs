//! Training a linear scorer: weighted logistic regression with L2 regularization, fitted to
//! convergence by L-BFGS.
//!
//! Each head learns a probability from the two models' qualities on a row (see [`Target`]):
//! that the strong model beats the weak one (`(1 + strong − weak) / 2`), that the weak one
//! fails, or that the strong one succeeds. The heads share one design matrix (the features
//! are computed once) and are fitted one after the other.
//!
//! Why L-BFGS rather than SGD: the objective is convex and small (a few thousand rows), so a
//! full-batch quasi-Newton method reaches the optimum deterministically with no learning
//! rate to tune; regularization strength is then the only knob, and it means what it says.

use std::collections::VecDeque;

use crate::data::PairedRow;
use switchyard_router::TaskKind;
use switchyard_router::embedding::default_embedding;
use switchyard_router::features::{DENSE, FeatureConfig, GramCounts, dense};
use switchyard_router::knn::{KnnConfig, KnnIndex};
pub use switchyard_router::model::Target;
use switchyard_router::model::{EmbedSpec, Head, KINDS, LinearModel, idf, kind_index};

/// One training example.
#[derive(Debug, Clone, Copy)]
pub struct Example<'a> {
    /// The item's text, as the dispatcher would see it.
    pub text: &'a str,
    /// The job's task kind.
    pub kind: TaskKind,
    /// The weak and the strong model's quality on it, in [0, 1].
    pub weak: f64,
    pub strong: f64,
    /// How much this example counts (e.g. to balance data sets of different sizes).
    pub weight: f32,
}

impl<'a> Example<'a> {
    /// An example from a paired row, with weight 1.
    pub fn of(r: &'a PairedRow) -> Self {
        Self {
            text: &r.text,
            kind: r.kind,
            weak: r.weak.score,
            strong: r.strong.score,
            weight: 1.0,
        }
    }
}

/// How to train.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    /// The features.
    pub features: FeatureConfig,
    /// The heads and their shares of the averaged gain estimate: a [`Target::Gain`] head is
    /// one estimate, a [`Target::WeakFails`] + [`Target::StrongRight`] pair is another.
    pub heads: Vec<(Target, f32)>,
    /// L2 penalty on the n-gram weights (relative to the mean loss).
    pub l2: f64,
    /// L2 penalty on the structure weights.
    pub l2_dense: f64,
    /// L2 penalty on the embedding weights (shared and per-kind blocks alike).
    pub l2_embed: f64,
    /// Whether the structure measurements also get weights shared by every task kind (the
    /// penalty then prefers one weight for all kinds unless a kind's data disagrees), so a
    /// kind with few rows borrows what the others learned about length and structure.
    pub shared_dense: bool,
    /// L-BFGS iterations at most, per head.
    pub max_iter: usize,
}

impl Default for TrainConfig {
    /// The default router's setup: per-kind words and word pairs plus structure, and the
    /// average of two gain estimates (a gain head, and a weak-fails + strong-right pair).
    fn default() -> Self {
        Self {
            features: FeatureConfig::DEFAULT,
            heads: vec![
                (Target::Gain, 0.5),
                (Target::WeakFails, 0.5),
                (Target::StrongRight, 0.5),
            ],
            l2: 5e-4,
            l2_dense: 3e-3,
            l2_embed: 3e-2,
            shared_dense: true,
            max_iter: 300,
        }
    }
}

/// Why training could not run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("no training examples")]
    NoExamples,
    #[error(
        "example {index}: qualities {weak}/{strong} must be in [0, 1] and weight {weight} \
         a finite number >= 0"
    )]
    BadExample {
        index: usize,
        weak: f64,
        strong: f64,
        weight: f32,
    },
    #[error("the example weights sum to zero")]
    ZeroWeight,
    #[error("invalid setup: {0}")]
    Config(String),
}

/// The examples as a design matrix: TF-IDF rows (compressed sparse rows) and standardized
/// structure measurements.
struct Design {
    indptr: Vec<usize>,
    indices: Vec<u32>,
    values: Vec<f32>,
    dense: Vec<[f32; DENSE]>,
    /// Standardized mean token embeddings, `dims` per row (empty without embedding).
    embed: Vec<f32>,
    kinds: Vec<usize>,
    weights: Vec<f64>,
}

/// Where each kind of parameter sits in the optimizer's vector: the used n-gram buckets,
/// then per kind the structure weights, then per kind the intercepts.
struct Layout {
    buckets: usize,
    /// The structure weights: a shared block (zero-width unless `shared_dense`), then one
    /// per kind.
    dense_off: usize,
    dense_shared: usize,
    /// The embedding weights: a shared block, then one per kind, `embed_dims` each.
    embed_off: usize,
    embed_dims: usize,
    bias_off: usize,
    use_dense: bool,
    /// Where the L2 penalty pulls the weights: zero, or a base model's weights when
    /// fine-tuning (empty = zero).
    center: Vec<f64>,
}

impl Design {
    /// The regularized, weighted mean logistic loss at `theta`, and its gradient.
    fn loss_and_gradient(
        &self,
        at: &Layout,
        targets: &[f64],
        cfg: &TrainConfig,
        theta: &[f64],
        grad: &mut [f64],
    ) -> f64 {
        grad.iter_mut().for_each(|g| *g = 0.0);
        let mut loss = 0.0;
        for (i, (&k, &y)) in self.kinds.iter().zip(targets).enumerate() {
            let row = self.indptr[i]..self.indptr[i + 1];
            let dense_w = at.dense_off + at.dense_shared + k * DENSE;
            let dense_s = at.dense_off;
            let mut z = theta[at.bias_off + k];
            for (&j, &x) in self.indices[row.clone()]
                .iter()
                .zip(&self.values[row.clone()])
            {
                z += theta[j as usize] * f64::from(x);
            }
            if at.use_dense {
                for (t, &x) in theta[dense_w..dense_w + DENSE].iter().zip(&self.dense[i]) {
                    z += t * f64::from(x);
                }
                if at.dense_shared > 0 {
                    for (t, &x) in theta[dense_s..dense_s + DENSE].iter().zip(&self.dense[i]) {
                        z += t * f64::from(x);
                    }
                }
            }
            let e = at.embed_dims;
            let x_embed = &self.embed[i * e..(i + 1) * e];
            let (shared, own) = (at.embed_off, at.embed_off + (1 + k) * e);
            for (d, &x) in x_embed.iter().enumerate() {
                z += (theta[shared + d] + theta[own + d]) * f64::from(x);
            }
            let c = self.weights[i];
            // softplus(z) - y z is the logistic loss, computed stably.
            let softplus = if z > 0.0 {
                z + (-z).exp().ln_1p()
            } else {
                z.exp().ln_1p()
            };
            loss += c * (softplus - y * z);
            let r = c * (sigmoid(z) - y);
            grad[at.bias_off + k] += r;
            for (&j, &x) in self.indices[row.clone()].iter().zip(&self.values[row]) {
                grad[j as usize] += r * f64::from(x);
            }
            if at.use_dense {
                for (g, &x) in grad[dense_w..dense_w + DENSE]
                    .iter_mut()
                    .zip(&self.dense[i])
                {
                    *g += r * f64::from(x);
                }
                if at.dense_shared > 0 {
                    for (g, &x) in grad[dense_s..dense_s + DENSE]
                        .iter_mut()
                        .zip(&self.dense[i])
                    {
                        *g += r * f64::from(x);
                    }
                }
            }
            for (d, &x) in x_embed.iter().enumerate() {
                grad[shared + d] += r * f64::from(x);
                grad[own + d] += r * f64::from(x);
            }
        }
        let penalties = [
            (0..at.buckets, cfg.l2),
            (at.dense_off..at.embed_off, cfg.l2_dense),
            (at.embed_off..at.bias_off, cfg.l2_embed),
        ];
        for (range, l2) in penalties {
            for (i, (t, g)) in theta[range.clone()]
                .iter()
                .zip(&mut grad[range.clone()])
                .enumerate()
            {
                let d = t - at.center.get(range.start + i).copied().unwrap_or(0.0);
                loss += 0.5 * l2 * d * d;
                *g += l2 * d;
            }
        }
        loss
    }
}

/// Fits every head of `cfg` to the examples.
pub fn train_linear(
    examples: &[Example<'_>],
    cfg: &TrainConfig,
) -> Result<LinearModel, TrainError> {
    fit(examples, cfg, None)
}

/// Adapts a trained model to new examples (a team's own traffic): the same features,
/// document frequencies and standardization as `base`, and every weight pulled towards the
/// base's by the L2 penalty instead of towards zero. With few examples the result stays
/// close to the base; with many it follows the new traffic. Heads are those of `cfg`; a head
/// whose target the base lacks starts from zero.
///
/// Why a prior rather than training from scratch: a team's fleet yields hundreds of labelled
/// items, not the tens of thousands a router needs to learn language from nothing; what it
/// can teach is where this traffic differs from the benchmarks.
pub fn fine_tune(
    base: &LinearModel,
    examples: &[Example<'_>],
    cfg: &TrainConfig,
) -> Result<LinearModel, TrainError> {
    base.validate().map_err(TrainError::Config)?;
    let cfg = TrainConfig {
        features: base.features,
        ..cfg.clone()
    };
    fit(examples, &cfg, Some(base))
}

fn fit(
    examples: &[Example<'_>],
    cfg: &TrainConfig,
    base: Option<&LinearModel>,
) -> Result<LinearModel, TrainError> {
    cfg.features.validate().map_err(TrainError::Config)?;
    if cfg.heads.is_empty() || cfg.heads.len() > switchyard_router::model::MAX_HEADS {
        return Err(TrainError::Config(format!(
            "1 to {} heads, not {}",
            switchyard_router::model::MAX_HEADS,
            cfg.heads.len()
        )));
    }
    if examples.is_empty() {
        return Err(TrainError::NoExamples);
    }
    for (index, e) in examples.iter().enumerate() {
        let ok = (0.0..=1.0).contains(&e.weak)
            && (0.0..=1.0).contains(&e.strong)
            && e.weight.is_finite()
            && e.weight >= 0.0;
        if !ok {
            return Err(TrainError::BadExample {
                index,
                weak: e.weak,
                strong: e.strong,
                weight: e.weight,
            });
        }
    }
    let total: f64 = examples.iter().map(|e| f64::from(e.weight)).sum();
    if total <= 0.0 {
        return Err(TrainError::ZeroWeight);
    }

    let counts: Vec<GramCounts> = examples
        .iter()
        .map(|e| GramCounts::of(&cfg.features, e.text, e.kind))
        .collect();
    let mut present = vec![false; cfg.features.buckets()];
    for c in &counts {
        for b in c.distinct_buckets() {
            if let Some(p) = present.get_mut(b as usize) {
                *p = true;
            }
        }
    }
    let mut model = match base {
        // Fine-tuning keeps the base's vocabulary statistics, so its weights mean the same.
        Some(b) => LinearModel {
            heads: Vec::new(),
            ..b.clone()
        },
        None => {
            let mut m = LinearModel::empty(cfg.features);
            m.docs = u32::try_from(examples.len()).unwrap_or(u32::MAX);
            for c in &counts {
                let mut seen: Vec<u32> = c.distinct_buckets().collect();
                seen.sort_unstable();
                seen.dedup();
                for b in seen {
                    m.df[b as usize] += 1;
                }
            }
            m
        }
    };
    let idfs: Vec<f32> = model.df.iter().map(|&d| idf(model.docs, d)).collect();
    // Only buckets some training text has can move (the others see only the L2 term and
    // stay at its center), so the optimizer works on those alone: `slot[b]` is bucket b's
    // variable.
    let used: Vec<u32> = (0..model.df.len() as u32)
        .filter(|&b| present[b as usize])
        .collect();
    let mut slot = vec![u32::MAX; model.df.len()];
    for (i, &b) in used.iter().enumerate() {
        slot[b as usize] = i as u32;
    }

    let raw_dense: Vec<[f32; DENSE]> = examples.iter().map(|e| dense(e.text)).collect();
    if cfg.features.dense && base.is_none() {
        let n = raw_dense.len() as f64;
        for j in 0..DENSE {
            let mean = raw_dense.iter().map(|d| f64::from(d[j])).sum::<f64>() / n;
            let var = raw_dense
                .iter()
                .map(|d| (f64::from(d[j]) - mean).powi(2))
                .sum::<f64>()
                / n;
            model.dense_mean[j] = mean as f32;
            model.dense_scale[j] = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
        }
    }

    let embed_rows = embed_features(examples, cfg, base, &mut model)?;
    let embed_dims = model.embed.as_ref().map_or(0, |e| e.dims);

    let mut design = Design {
        indptr: vec![0],
        indices: Vec::new(),
        values: Vec::new(),
        dense: Vec::with_capacity(examples.len()),
        embed: embed_rows,
        kinds: examples.iter().map(|e| kind_index(e.kind)).collect(),
        weights: examples
            .iter()
            .map(|e| f64::from(e.weight) / total)
            .collect(),
    };
    for (c, d) in counts.iter().zip(&raw_dense) {
        for group in &c.groups {
            let norm: f32 = group
                .iter()
                .map(|&(b, n)| n as f32 * idfs[b as usize] * idfs[b as usize])
                .sum::<f32>()
                .sqrt();
            for &(b, n) in group {
                design.indices.push(slot[b as usize]);
                design.values.push(n as f32 * idfs[b as usize] / norm);
            }
        }
        design.indptr.push(design.indices.len());
        let mut z = [0.0f32; DENSE];
        if cfg.features.dense {
            for j in 0..DENSE {
                z[j] = (d[j] - model.dense_mean[j]) / model.dense_scale[j];
            }
        }
        design.dense.push(z);
    }

    let buckets = used.len();
    let dense_off = buckets;
    let dense_shared = if cfg.shared_dense && cfg.features.dense {
        DENSE
    } else {
        0
    };
    let embed_off = dense_off + dense_shared + KINDS * DENSE;
    let bias_off = embed_off + (1 + KINDS) * embed_dims;
    let dim = bias_off + KINDS;
    let use_dense = cfg.features.dense;

    for &(target, share) in &cfg.heads {
        let targets: Vec<f64> = examples
            .iter()
            .map(|e| f64::from(target.label(e.weak, e.strong)))
            .collect();
        let prior = base.and_then(|b| b.heads.iter().find(|h| h.target == target));
        let mut center = Vec::new();
        if let Some(p) = prior {
            center = vec![0.0; dim];
            for (c, &b) in center.iter_mut().zip(&used) {
                *c = f64::from(p.weights[b as usize]);
            }
            for k in 0..KINDS {
                center[bias_off + k] = f64::from(p.bias[k]);
                for j in 0..DENSE {
                    center[dense_off + dense_shared + k * DENSE + j] =
                        f64::from(p.dense_weights[k][j]);
                }
            }
            for (c, &w) in center[embed_off..bias_off].iter_mut().zip(&p.embed_weights) {
                *c = f64::from(w);
            }
        }
        let start = if center.is_empty() {
            vec![0.0; dim]
        } else {
            center.clone()
        };
        let layout = Layout {
            buckets,
            dense_off,
            dense_shared,
            embed_off,
            embed_dims,
            bias_off,
            use_dense,
            center,
        };
        let objective = |theta: &[f64], grad: &mut [f64]| {
            design.loss_and_gradient(&layout, &targets, cfg, theta, grad)
        };
        let theta = lbfgs(start, objective, cfg.max_iter);
        let mut head = Head::zeros(target, model.df.len());
        head.scale *= share;
        head.offset *= share;
        if let Some(p) = prior {
            // Buckets this data never saw keep the base's weights.
            head.weights.clone_from(&p.weights);
        }
        for (&b, t) in used.iter().zip(&theta[..buckets]) {
            head.weights[b as usize] = *t as f32;
        }
        for k in 0..KINDS {
            head.bias[k] = theta[bias_off + k] as f32;
            for j in 0..DENSE {
                let shared = if dense_shared > 0 {
                    theta[dense_off + j]
                } else {
                    0.0
                };
                head.dense_weights[k][j] =
                    (shared + theta[dense_off + dense_shared + k * DENSE + j]) as f32;
            }
        }
        head.embed_weights = theta[embed_off..bias_off]
            .iter()
            .map(|&t| t as f32)
            .collect();
        model.heads.push(head);
    }
    Ok(model)
}

/// The standardized mean token embedding of every example (row-major, empty when the
/// features use none), setting `model.embed` (its table and standardization; a fine-tuned
/// model keeps its base's).
fn embed_features(
    examples: &[Example<'_>],
    cfg: &TrainConfig,
    base: Option<&LinearModel>,
    model: &mut LinearModel,
) -> Result<Vec<f32>, TrainError> {
    let wanted = usize::from(cfg.features.embed_dims);
    let spec = match (base.and_then(|b| b.embed.clone()), wanted) {
        (Some(spec), _) => Some(spec),
        (None, 0) => None,
        (None, _) => {
            let table = default_embedding().ok_or_else(|| {
                TrainError::Config("the committed embedding table does not decode".into())
            })?;
            let dims = wanted.min(table.table.dims());
            Some(EmbedSpec {
                table,
                dims,
                mean: vec![0.0; dims],
                scale: vec![1.0; dims],
            })
        }
    };
    let Some(mut spec) = spec else {
        model.embed = None;
        return Ok(Vec::new());
    };
    let dims = spec.dims;
    let raw: Vec<(Vec<f32>, usize)> = examples
        .iter()
        .map(|e| spec.table.mean_vector(e.text, dims))
        .collect();
    if base.is_none() {
        let with_tokens: Vec<&Vec<f32>> =
            raw.iter().filter(|(_, n)| *n > 0).map(|(v, _)| v).collect();
        let n = with_tokens.len().max(1) as f64;
        for d in 0..dims {
            let mean = with_tokens.iter().map(|v| f64::from(v[d])).sum::<f64>() / n;
            let var = with_tokens
                .iter()
                .map(|v| (f64::from(v[d]) - mean).powi(2))
                .sum::<f64>()
                / n;
            spec.mean[d] = mean as f32;
            spec.scale[d] = if var > 1e-12 { var.sqrt() as f32 } else { 1.0 };
        }
    }
    let mut out = Vec::with_capacity(raw.len() * dims);
    for (v, n) in &raw {
        for ((x, m), sc) in v.iter().zip(&spec.mean).zip(&spec.scale) {
            // A text without tokens sits at the mean, as at scoring time.
            out.push(if *n > 0 { (x - m) / sc } else { 0.0 });
        }
    }
    model.embed = Some(spec);
    Ok(out)
}

/// How to build a router from several data sets: the training setup and how the sets are
/// weighted against each other.
#[derive(Debug, Clone, PartialEq)]
pub struct Recipe {
    pub config: TrainConfig,
    /// A set of `n` rows carries total weight `n^balance`: 1 counts every row the same (the
    /// biggest set dominates), 0 counts every set the same; in between keeps small sets
    /// (chat, summarization) from being drowned by MMLU without overfitting them.
    pub balance: f64,
    /// The nearest-training-prompts index stored with the model (`dims` 0 = none).
    pub knn: KnnConfig,
}

impl Default for Recipe {
    /// The default router's recipe: lexical and structure features plus the mean static
    /// token embedding.
    fn default() -> Self {
        let mut config = TrainConfig::default();
        config.features.embed_dims = DEFAULT_EMBED_DIMS;
        Self {
            config,
            balance: 0.5,
            // Off by default: the neighbour read-out (`--knn-dims 32`, the `learned-v3`
            // recipe) costs more scoring time than the 100,000 items/s budget allows.
            knn: KnnConfig {
                dims: 0,
                ..KnnConfig::default()
            },
        }
    }
}

/// Embedding dimensions the default recipe uses.
pub const DEFAULT_EMBED_DIMS: u16 = 32;

impl Recipe {
    /// The previous default: lexical and structure features only (kept to compare with).
    pub fn lexical() -> Self {
        Self {
            config: TrainConfig {
                shared_dense: false,
                ..TrainConfig::default()
            },
            balance: 0.5,
            knn: KnnConfig {
                dims: 0,
                ..KnnConfig::default()
            },
        }
    }
}

/// Trains `recipe` on the union of `sets` (each with the qualities of its own weak/strong
/// pair).
pub fn train_recipe(sets: &[&[PairedRow]], recipe: &Recipe) -> Result<LinearModel, TrainError> {
    let mut examples = Vec::new();
    for rows in sets {
        if rows.is_empty() {
            continue;
        }
        let n = rows.len() as f64;
        let weight = (n.powf(recipe.balance) / n) as f32;
        examples.extend(rows.iter().map(|r| Example {
            weight,
            ..Example::of(r)
        }));
    }
    let mut model = train_linear(&examples, &recipe.config)?;
    if recipe.knn.dims > 0 {
        let Some(spec) = &model.embed else {
            return Err(TrainError::Config(
                "nearest neighbours need the embedding (--embed-dims > 0)".into(),
            ));
        };
        let dims = recipe.knn.dims.min(spec.table.table.dims());
        let vectors: Vec<Vec<f32>> = examples
            .iter()
            .map(|e| spec.table.mean_vector(e.text, dims).0)
            .collect();
        let gains: Vec<f64> = examples.iter().map(|e| e.strong - e.weak).collect();
        model.knn = KnnIndex::build(&vectors, &gains, &recipe.knn);
    }
    Ok(model)
}

fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimizes a smooth function with limited-memory BFGS (10 pairs) and a backtracking
/// Armijo line search. `fg` writes the gradient and returns the value.
pub(crate) fn lbfgs(
    mut x: Vec<f64>,
    mut fg: impl FnMut(&[f64], &mut [f64]) -> f64,
    max_iter: usize,
) -> Vec<f64> {
    const MEMORY: usize = 10;
    let n = x.len();
    let mut g = vec![0.0; n];
    let mut f = fg(&x, &mut g);
    let mut history: VecDeque<(Vec<f64>, Vec<f64>, f64)> = VecDeque::new();
    let mut x_new = vec![0.0; n];
    let mut g_new = vec![0.0; n];
    let mut small_steps = 0;
    for _ in 0..max_iter {
        if g.iter().all(|v| v.abs() < 1e-9) {
            break;
        }
        // Two-loop recursion: d = -H g.
        let mut q = g.clone();
        let mut alphas = Vec::with_capacity(history.len());
        for (s, y, rho) in history.iter().rev() {
            let a = rho * dot(s, &q);
            q.iter_mut().zip(y).for_each(|(qi, yi)| *qi -= a * yi);
            alphas.push(a);
        }
        let gamma = match history.back() {
            Some((s, y, _)) => dot(s, y) / dot(y, y),
            None => 1.0 / dot(&g, &g).sqrt().max(1e-12),
        };
        q.iter_mut().for_each(|v| *v *= gamma);
        for ((s, y, rho), a) in history.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &q);
            q.iter_mut().zip(s).for_each(|(qi, si)| *qi += (a - b) * si);
        }
        let mut d: Vec<f64> = q.iter().map(|v| -v).collect();
        let mut gd = dot(&g, &d);
        if gd >= 0.0 {
            history.clear();
            let scale = 1.0 / dot(&g, &g).sqrt().max(1e-12);
            d = g.iter().map(|v| -v * scale).collect();
            gd = dot(&g, &d);
        }
        let mut step = 1.0;
        let mut f_new;
        loop {
            for i in 0..n {
                x_new[i] = x[i] + step * d[i];
            }
            f_new = fg(&x_new, &mut g_new);
            if f_new <= f + 1e-4 * step * gd || step < 1e-10 {
                break;
            }
            step *= 0.5;
        }
        if f_new >= f || f_new.is_nan() {
            break;
        }
        let s: Vec<f64> = x_new.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = g_new.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 {
            if history.len() == MEMORY {
                history.pop_front();
            }
            history.push_back((s, y, 1.0 / sy));
        }
        let rel = (f - f_new) / f.abs().max(1e-12);
        std::mem::swap(&mut x, &mut x_new);
        std::mem::swap(&mut g, &mut g_new);
        f = f_new;
        small_steps = if rel < 1e-9 { small_steps + 1 } else { 0 };
        if small_steps >= 3 {
            break;
        }
    }
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_router::Router;
    use switchyard_router::model::LearnedRouter;

    #[test]
    fn lbfgs_finds_a_quadratic_minimum() {
        let target = [3.0, -2.0, 0.5];
        let x = lbfgs(
            vec![0.0; 3],
            |x, g| {
                let mut f = 0.0;
                for i in 0..3 {
                    let w = (i + 1) as f64;
                    f += w * (x[i] - target[i]).powi(2);
                    g[i] = 2.0 * w * (x[i] - target[i]);
                }
                f
            },
            100,
        );
        for i in 0..3 {
            assert!((x[i] - target[i]).abs() < 1e-5, "{x:?}");
        }
    }

    #[test]
    fn learns_a_separable_signal_and_ranks_by_it() {
        // "proof" and "integral" items need the strong model; "capital" items do not.
        let hard = [
            "prove the integral converges",
            "a proof about the integral of x",
        ];
        let easy = [
            "what is the capital of france",
            "name the capital city of peru",
        ];
        let ex: Vec<Example<'_>> = hard
            .iter()
            .map(|t| (t, 0.0))
            .chain(easy.iter().map(|t| (t, 1.0)))
            .map(|(t, weak)| Example {
                text: t,
                kind: TaskKind::Generate,
                weak,
                strong: 1.0,
                weight: 1.0,
            })
            .collect();
        let mut cfg = TrainConfig::default();
        cfg.features.bits = 12;
        let model = train_linear(&ex, &cfg).expect("trains");
        assert!(model.validate().is_ok());
        assert_eq!(model.heads.len(), 3);
        let r = LearnedRouter::new("t", &model);
        let hard_new = r.score("is this integral a proof", TaskKind::Generate);
        let easy_new = r.score("the capital of spain", TaskKind::Generate);
        assert!(hard_new > easy_new, "{hard_new} <= {easy_new}");
        assert!((-1.0..=1.0).contains(&hard_new) && (-1.0..=1.0).contains(&easy_new));
    }

    #[test]
    fn fine_tuning_starts_from_the_base_and_keeps_what_it_does_not_see() {
        let ex = |texts: &[&'static str], weak: f64| -> Vec<Example<'static>> {
            texts
                .iter()
                .map(|t| Example {
                    text: t,
                    kind: TaskKind::Generate,
                    weak,
                    strong: 1.0,
                    weight: 1.0,
                })
                .collect()
        };
        let mut cfg = TrainConfig::default();
        cfg.features.bits = 12;
        let mut base_ex = ex(&["prove the integral converges", "a proof about sums"], 0.0);
        base_ex.extend(ex(&["the capital of france", "the capital of peru"], 1.0));
        let base = train_linear(&base_ex, &cfg).expect("base");
        // New traffic: "invoice" items are hard; nothing about proofs or capitals.
        let new = ex(
            &[
                "invoice dispute reverse charge",
                "invoice chargeback reason",
            ],
            0.0,
        );
        let tuned = fine_tune(&base, &new, &cfg).expect("tuned");
        assert_eq!(
            tuned.df, base.df,
            "the base's vocabulary statistics are kept"
        );
        let (b, t) = (
            LearnedRouter::new("b", &base),
            LearnedRouter::new("t", &tuned),
        );
        let invoice = "an invoice with a reverse charge";
        assert!(t.score(invoice, TaskKind::Generate) > b.score(invoice, TaskKind::Generate));
        // Buckets the new data never touches keep the base's weights exactly.
        let untouched: Vec<usize> = (0..base.df.len())
            .filter(|&i| base.heads[0].weights[i] != 0.0)
            .filter(|&i| {
                !new.iter().any(|e| {
                    GramCounts::of(&cfg.features, e.text, e.kind)
                        .distinct_buckets()
                        .any(|bk| bk as usize == i)
                })
            })
            .collect();
        assert!(!untouched.is_empty());
        for i in untouched {
            assert_eq!(tuned.heads[0].weights[i], base.heads[0].weights[i]);
        }
    }

    #[test]
    fn rejects_bad_input() {
        let cfg = TrainConfig::default();
        assert!(matches!(
            train_linear(&[], &cfg),
            Err(TrainError::NoExamples)
        ));
        let ok = Example {
            text: "x",
            kind: TaskKind::Classify,
            weak: 0.0,
            strong: 1.0,
            weight: 1.0,
        };
        let bad = [Example { strong: 1.5, ..ok }];
        assert!(matches!(
            train_linear(&bad, &cfg),
            Err(TrainError::BadExample { index: 0, .. })
        ));
        let zero = [Example { weight: 0.0, ..ok }];
        assert!(matches!(
            train_linear(&zero, &cfg),
            Err(TrainError::ZeroWeight)
        ));
        let no_heads = TrainConfig {
            heads: vec![],
            ..TrainConfig::default()
        };
        assert!(matches!(
            train_linear(&[ok], &no_heads),
            Err(TrainError::Config(_))
        ));
    }
}
