//! The learned router: a few logistic "heads" over one shared set of hashed n-gram and
//! structure features, combined into one estimate of the strong model's quality gain.
//!
//! Why linear: with a few thousand labelled prompts, a regularized linear model over good
//! features is as accurate as anything heavier, generalizes predictably, and scores in a few
//! microseconds with no allocation. Why several heads: the gain (strong − weak) is a noisy,
//! three-valued label; "does the weak model fail?" and "does the strong model succeed?" are
//! cleaner two-valued ones. Each head estimates the gain its own way and the router averages
//! them, a small ensemble that costs one pass over the text (the heads share the features).
//!
//! The score is an estimate of the expected quality gain of the strong model over the weak
//! one, in [−1, 1]: a number the dispatcher can compare with a threshold or weigh against a
//! price, not just rank.
//!
//! [`LinearModel`] is the plain parameter set (what training produces and the artifact
//! stores); [`LearnedRouter`] is its compiled form, laid out for fast scoring.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::embedding::StaticEmbedding;
use crate::features::{DENSE, FeatureConfig, GROUPS, dense, for_each_gram};
use crate::knn::{KnnIndex, MAX_DIMS};
use crate::{Estimate, Router, TaskKind};

/// Number of task kinds (classify, summarize, generate).
pub const KINDS: usize = 3;

/// At most this many heads per model. With the `idf²` column they fill one 16-byte table
/// entry per bucket, summed with one vector add per n-gram.
pub const MAX_HEADS: usize = 3;

/// The index of a task kind in per-kind parameter arrays.
pub fn kind_index(kind: TaskKind) -> usize {
    match kind {
        TaskKind::Classify => 0,
        TaskKind::Summarize => 1,
        // A chat conversation is scored as generation.
        TaskKind::Generate | TaskKind::Chat => 2,
    }
}

/// The inverse document frequency of a bucket seen in `df` of `docs` training texts
/// (scikit-learn's smooth IDF). Unseen buckets get the largest weight.
pub fn idf(docs: u32, df: u32) -> f32 {
    ((1.0 + f64::from(docs)) / (1.0 + f64::from(df))).ln() as f32 + 1.0
}

/// What a head predicts, as a probability, from a row's weak and strong qualities in [0, 1].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// That the strong model beats the weak one: `(1 + strong − weak) / 2` (½ on ties).
    Gain,
    /// That the weak model fails: `1 − weak`.
    WeakFails,
    /// That the strong model succeeds: `strong`.
    StrongRight,
}

impl Target {
    /// The label of a row with these qualities.
    pub fn label(self, weak: f64, strong: f64) -> f32 {
        match self {
            Target::Gain => ((1.0 + strong - weak) / 2.0) as f32,
            Target::WeakFails => (1.0 - weak) as f32,
            Target::StrongRight => strong as f32,
        }
    }

    /// `(scale, offset)` turning the head's probability p into its share of the expected
    /// gain: `E[strong − weak] = 2p − 1` for [`Target::Gain`]; `p_fail + p_right − 1` for the
    /// two others together, so each contributes `p − ½`.
    pub fn gain_affine(self) -> (f32, f32) {
        match self {
            Target::Gain => (2.0, -1.0),
            Target::WeakFails | Target::StrongRight => (1.0, -0.5),
        }
    }
}

/// One logistic head: its weights and how its probability enters the score.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub target: Target,
    /// The head adds `scale × sigmoid(logit) + offset` to the score.
    pub scale: f32,
    pub offset: f32,
    /// Per bucket: the weight of its TF-IDF value.
    pub weights: Vec<f32>,
    /// Per task kind: the intercept.
    pub bias: [f32; KINDS],
    /// Per task kind: the weights of the standardized structure measurements.
    pub dense_weights: [[f32; DENSE]; KINDS],
    /// The weights of the standardized mean token embedding: one block shared by every task
    /// kind, then one block per kind, each of [`EmbedSpec::dims`] (empty without one).
    pub embed_weights: Vec<f32>,
}

impl Head {
    /// A head that predicts ½ everywhere (the starting point of training).
    pub fn zeros(target: Target, buckets: usize) -> Self {
        let (scale, offset) = target.gain_affine();
        Self {
            target,
            scale,
            offset,
            weights: vec![0.0; buckets],
            bias: [0.0; KINDS],
            dense_weights: [[0.0; DENSE]; KINDS],
            embed_weights: Vec::new(),
        }
    }

    /// The embedding weights that apply to kind `k` (shared block plus the kind's own).
    pub fn embed_weights_for(&self, k: usize, dims: usize) -> Vec<f32> {
        if self.embed_weights.len() < (1 + KINDS) * dims {
            return vec![0.0; dims];
        }
        let shared = &self.embed_weights[..dims];
        let own = &self.embed_weights[(1 + k) * dims..(2 + k) * dims];
        shared.iter().zip(own).map(|(a, b)| a + b).collect()
    }
}

/// The semantic part of a model: which static embedding table, how many of its dimensions,
/// and how the mean token vector is standardized.
#[derive(Debug, Clone)]
pub struct EmbedSpec {
    /// The table (its SHA-256 identifies it in artifacts).
    pub table: Arc<StaticEmbedding>,
    /// The first `dims` dimensions (PCA order) are used.
    pub dims: usize,
    /// Standardization of the mean vector: `(x − mean) / scale`.
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
}

impl PartialEq for EmbedSpec {
    fn eq(&self, other: &Self) -> bool {
        self.table.sha256 == other.table.sha256
            && self.dims == other.dims
            && self.mean == other.mean
            && self.scale == other.scale
    }
}

/// The parameters of a learned router.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearModel {
    /// The features it was trained with.
    pub features: FeatureConfig,
    /// How many training texts the document frequencies were counted over.
    pub docs: u32,
    /// Per bucket: in how many training texts it occurred.
    pub df: Vec<u32>,
    /// Standardization of the structure measurements: `(x − mean) / scale`.
    pub dense_mean: [f32; DENSE],
    pub dense_scale: [f32; DENSE],
    /// The heads, summed.
    pub heads: Vec<Head>,
    /// The mean token embedding, if the model uses one.
    pub embed: Option<EmbedSpec>,
    /// The nearest training prompts in the embedding's space, if the model uses them (needs
    /// `embed`: the same table).
    pub knn: Option<KnnIndex>,
}

impl LinearModel {
    /// A model without heads (training adds them).
    pub fn empty(features: FeatureConfig) -> Self {
        Self {
            features,
            docs: 0,
            df: vec![0; features.buckets()],
            dense_mean: [0.0; DENSE],
            dense_scale: [1.0; DENSE],
            heads: Vec::new(),
            embed: None,
            knn: None,
        }
    }

    /// Checks that the arrays fit the feature space and every number is finite.
    pub fn validate(&self) -> Result<(), String> {
        self.features.validate()?;
        let n = self.features.buckets();
        if self.df.len() != n {
            return Err(format!(
                "expected {n} buckets, found {} document frequencies",
                self.df.len()
            ));
        }
        if self.heads.is_empty() || self.heads.len() > MAX_HEADS {
            return Err(format!(
                "expected 1 to {MAX_HEADS} heads, found {}",
                self.heads.len()
            ));
        }
        for (i, h) in self.heads.iter().enumerate() {
            if h.weights.len() != n {
                return Err(format!(
                    "head {i}: expected {n} weights, found {}",
                    h.weights.len()
                ));
            }
            let want = self.embed.as_ref().map_or(0, |e| (1 + KINDS) * e.dims);
            if h.embed_weights.len() != want {
                return Err(format!(
                    "head {i}: expected {want} embedding weights, found {}",
                    h.embed_weights.len()
                ));
            }
            let finite = h
                .weights
                .iter()
                .chain(&h.bias)
                .chain(h.dense_weights.iter().flatten())
                .chain(&h.embed_weights)
                .chain([&h.scale, &h.offset])
                .all(|x| x.is_finite());
            if !finite {
                return Err(format!("head {i}: a parameter is not a finite number"));
            }
        }
        let finite = self
            .dense_mean
            .iter()
            .chain(&self.dense_scale)
            .all(|x| x.is_finite());
        if !finite || self.dense_scale.iter().any(|&s| s <= 0.0) {
            return Err("a structure mean or scale is not a finite (positive) number".into());
        }
        if let Some(e) = &self.embed {
            if e.dims == 0 || e.dims > e.table.table.dims() {
                return Err(format!(
                    "{} embedding dimensions used, the table has {}",
                    e.dims,
                    e.table.table.dims()
                ));
            }
            if e.mean.len() != e.dims || e.scale.len() != e.dims {
                return Err(format!(
                    "expected {} embedding means and scales, found {} and {}",
                    e.dims,
                    e.mean.len(),
                    e.scale.len()
                ));
            }
            let ok = e.mean.iter().all(|x| x.is_finite())
                && e.scale.iter().all(|x| x.is_finite() && *x > 0.0);
            if !ok {
                return Err("an embedding mean or scale is not a finite (positive) number".into());
            }
        }
        if let Some(k) = &self.knn {
            k.validate()?;
            let Some(e) = &self.embed else {
                return Err("a kNN index needs the embedding table (the model has none)".into());
            };
            if k.dims > e.table.table.dims() {
                return Err(format!(
                    "kNN compares {} dimensions, the table has {}",
                    k.dims,
                    e.table.table.dims()
                ));
            }
        }
        Ok(())
    }
}

fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + (-z).exp())
}

/// A trained router, laid out for scoring: per bucket, `idf²` followed by each head's
/// `weight × idf` (zero for absent heads), so one 16-byte load serves every sum.
#[derive(Debug, Clone)]
pub struct LearnedRouter {
    name: String,
    /// Per task kind, the weak model's mean quality on the training rows, if measured.
    weak_quality: [Option<f64>; KINDS],
    features: FeatureConfig,
    table: Vec<[f32; 1 + MAX_HEADS]>,
    heads: Vec<CompiledHead>,
    dense_mean: [f32; DENSE],
    dense_inv_scale: [f32; DENSE],
    embed: Option<CompiledEmbed>,
    /// The nearest training prompts (scored from the same token pass as the embedding).
    knn: Option<KnnIndex>,
    /// Which head, if any, predicts that the weak model fails.
    weak_fails: Option<usize>,
}

/// The embedding part folded into the heads: the model is linear in the mean token vector,
/// so each head's contribution is the mean over tokens of a per-token number, precomputed per
/// task kind. Scoring then costs one table read per token, whatever the dimensions.
#[derive(Debug, Clone)]
struct CompiledEmbed {
    table: Arc<StaticEmbedding>,
    /// Per kind, per token: each head's `Σ_d w_d · row_d / scale_d`.
    proj: [Vec<[f32; MAX_HEADS]>; KINDS],
    /// Per kind, per head: `−Σ_d w_d · mean_d / scale_d`.
    offset: [[f32; MAX_HEADS]; KINDS],
}

impl CompiledEmbed {
    fn new(e: &EmbedSpec, heads: &[Head]) -> Self {
        let t = &e.table.table;
        let full = t.dims();
        let vocab = t.vocab.len();
        let mut proj: [Vec<[f32; MAX_HEADS]>; KINDS] = Default::default();
        let mut offset = [[0.0f32; MAX_HEADS]; KINDS];
        for (k, (proj, offset)) in proj.iter_mut().zip(offset.iter_mut()).enumerate() {
            // Per head, the weight of one quantization step of each dimension.
            let w: Vec<Vec<f32>> = heads
                .iter()
                .map(|h| {
                    h.embed_weights_for(k, e.dims)
                        .iter()
                        .zip(&e.scale)
                        .zip(&t.scales)
                        .map(|((w, s), q)| w / s * q)
                        .collect()
                })
                .collect();
            *proj = (0..vocab)
                .map(|id| {
                    let row = &t.values[id * full..id * full + e.dims];
                    let mut out = [0.0f32; MAX_HEADS];
                    for (o, wh) in out.iter_mut().zip(&w) {
                        *o = row.iter().zip(wh).map(|(&v, w)| f32::from(v) * w).sum();
                    }
                    out
                })
                .collect();
            for (o, h) in offset.iter_mut().zip(heads) {
                *o = -h
                    .embed_weights_for(k, e.dims)
                    .iter()
                    .zip(&e.mean)
                    .zip(&e.scale)
                    .map(|((w, m), s)| w * m / s)
                    .sum::<f32>();
            }
        }
        Self {
            table: e.table.clone(),
            proj,
            offset,
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledHead {
    scale: f32,
    offset: f32,
    bias: [f32; KINDS],
    dense_weights: [[f32; DENSE]; KINDS],
}

impl LearnedRouter {
    /// Compiles a model. Heads beyond [`MAX_HEADS`] are ignored ([`LinearModel::validate`]
    /// refuses such models before they get here).
    pub fn new(name: impl Into<String>, m: &LinearModel) -> Self {
        let heads = &m.heads[..m.heads.len().min(MAX_HEADS)];
        let table =
            m.df.iter()
                .enumerate()
                .map(|(b, &df)| {
                    let idf = idf(m.docs, df);
                    let mut e = [idf * idf, 0.0, 0.0, 0.0];
                    for (h, head) in heads.iter().enumerate() {
                        e[1 + h] = head.weights.get(b).copied().unwrap_or(0.0) * idf;
                    }
                    e
                })
                .collect();
        let mut dense_inv_scale = [1.0; DENSE];
        for (inv, s) in dense_inv_scale.iter_mut().zip(&m.dense_scale) {
            *inv = 1.0 / s;
        }
        Self {
            name: name.into(),
            weak_quality: [None; KINDS],
            features: m.features,
            table,
            heads: heads
                .iter()
                .map(|h| CompiledHead {
                    scale: h.scale,
                    offset: h.offset,
                    bias: h.bias,
                    dense_weights: h.dense_weights,
                })
                .collect(),
            dense_mean: m.dense_mean,
            dense_inv_scale,
            embed: m.embed.as_ref().map(|e| CompiledEmbed::new(e, heads)),
            knn: m.knn.clone().filter(|_| m.embed.is_some()),
            weak_fails: heads.iter().position(|h| h.target == Target::WeakFails),
        }
    }

    /// The same router, knowing its training data's weak quality per task kind.
    pub fn with_quality(mut self, prior: &crate::prior::QualityPrior) -> Self {
        for kind in [TaskKind::Classify, TaskKind::Summarize, TaskKind::Generate] {
            self.weak_quality[kind_index(kind)] = prior.get(kind.as_str()).map(|q| q.weak);
        }
        self
    }

    /// Each head's logit for an item (for explanations and tests).
    pub fn logits(&self, text: &str, task: TaskKind) -> Vec<f32> {
        let (all, _) = self.head_logits(text, task);
        all[..self.heads.len()].to_vec()
    }

    /// The mean gain of the item's nearest training prompts, if the model has a kNN index
    /// and the text has tokens (for explanations and tests).
    pub fn neighbour_gain(&self, text: &str, task: TaskKind) -> Option<f32> {
        self.head_logits(text, task).1
    }

    /// The heads' logits in a fixed array, and the neighbours' mean gain (no allocation on
    /// the scoring path).
    fn head_logits(&self, text: &str, task: TaskKind) -> ([f32; MAX_HEADS], Option<f32>) {
        let kind = kind_index(task);
        // Per group: [sum of idf², then per head the sum of weight × idf].
        let mut acc = [[0.0f32; 1 + MAX_HEADS]; GROUPS];
        let table = &self.table;
        for_each_gram(&self.features, text, task, |g, b| {
            if let Some(e) = table.get(b as usize) {
                let a = &mut acc[g as usize];
                for i in 0..1 + MAX_HEADS {
                    a[i] += e[i];
                }
            }
        });
        let d = if self.features.dense {
            let raw = dense(text);
            let mut z = [0.0f32; DENSE];
            for j in 0..DENSE {
                z[j] = (raw[j] - self.dense_mean[j]) * self.dense_inv_scale[j];
            }
            Some(z)
        } else {
            None
        };
        let mut out = [0.0f32; MAX_HEADS];
        let mut neighbours = None;
        if let Some(e) = &self.embed {
            let proj = &e.proj[kind];
            let mut sum = [0.0f32; MAX_HEADS];
            let mut n = 0u32;
            let t = &e.table.table;
            let full = t.dims();
            let kd = self.knn.as_ref().map_or(0, |k| k.dims.min(full));
            // The token rows' sum over the kNN's dimensions (its direction is all a cosine
            // needs, so no division by the count).
            let mut vsum = [0i32; MAX_DIMS];
            e.table.tokenizer.for_each_token(text, |id| {
                if let Some(p) = proj.get(id as usize) {
                    for h in 0..MAX_HEADS {
                        sum[h] += p[h];
                    }
                    n += 1;
                    if kd > 0 {
                        let at = id as usize * full;
                        for (s, &v) in vsum[..kd].iter_mut().zip(&t.values[at..at + kd]) {
                            *s += i32::from(v);
                        }
                    }
                }
            });
            if n > 0 {
                let inv = 1.0 / n as f32;
                for h in 0..MAX_HEADS {
                    out[h] = sum[h] * inv + e.offset[kind][h];
                }
                if let Some(knn) = &self.knn {
                    let mut v = [0.0f32; MAX_DIMS];
                    for ((o, &s), &q) in v[..kd].iter_mut().zip(&vsum[..kd]).zip(&t.scales) {
                        *o = s as f32 * q;
                    }
                    neighbours = knn.mean_gain(&v[..kd]);
                }
            }
        }
        for (h, (head, o)) in self.heads.iter().zip(out.iter_mut()).enumerate() {
            let mut s = *o + head.bias[kind];
            for a in &acc {
                if a[0] > 0.0 {
                    s += a[1 + h] / a[0].sqrt();
                }
            }
            if let Some(z) = &d {
                s += head.dense_weights[kind]
                    .iter()
                    .zip(z)
                    .map(|(w, x)| w * x)
                    .sum::<f32>();
            }
            *o = s;
        }
        (out, neighbours)
    }
}

impl Router for LearnedRouter {
    fn name(&self) -> &str {
        &self.name
    }

    fn weak_quality(&self, task: TaskKind) -> Option<f64> {
        self.weak_quality[kind_index(task)]
    }

    fn score(&self, text: &str, task: TaskKind) -> f32 {
        let (logits, neighbours) = self.head_logits(text, task);
        self.gain_of(&logits, neighbours)
    }

    fn estimate(&self, text: &str, task: TaskKind) -> Estimate {
        let (logits, neighbours) = self.head_logits(text, task);
        let gain = f64::from(self.gain_of(&logits, neighbours));
        // The weak-fails head predicts this item's weak quality; without one, the kind's mean.
        let weak = match self.weak_fails {
            Some(h) => Some(1.0 - f64::from(sigmoid(logits[h]))),
            None => self.weak_quality(task),
        };
        Estimate { gain, weak }
    }
}

impl LearnedRouter {
    /// The expected gain from the heads' logits, averaged with the neighbours' mean gain
    /// (at the index's weight) when there is one.
    fn gain_of(&self, logits: &[f32; MAX_HEADS], neighbours: Option<f32>) -> f32 {
        let mut s: f32 = logits
            .iter()
            .zip(&self.heads)
            .map(|(z, h)| h.scale * sigmoid(*z) + h.offset)
            .sum();
        if let (Some(g), Some(knn)) = (neighbours, &self.knn) {
            s = (1.0 - knn.weight) * s + knn.weight * g;
        }
        if s.is_finite() { s } else { 0.0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::features::GramCounts;

    fn tiny(heads: &[Target]) -> LinearModel {
        let features = FeatureConfig {
            bits: 8,
            ..FeatureConfig::DEFAULT
        };
        let mut m = LinearModel::empty(features);
        m.docs = 10;
        m.heads = heads.iter().map(|t| Head::zeros(*t, 256)).collect();
        m
    }

    #[test]
    fn untrained_heads_predict_no_gain_and_bias_moves_it() {
        let mut m = tiny(&[Target::Gain]);
        let r = LearnedRouter::new("t", &m);
        assert_eq!(r.score("anything at all", TaskKind::Classify), 0.0);
        assert_eq!(r.name(), "t");
        m.heads[0].bias = [0.5, -1.0, 2.0];
        let r = LearnedRouter::new("t", &m);
        let expect = |z: f32| 2.0 * sigmoid(z) - 1.0;
        assert_eq!(r.score("x", TaskKind::Classify), expect(0.5));
        assert_eq!(r.score("x", TaskKind::Summarize), expect(-1.0));
        assert_eq!(r.score("", TaskKind::Generate), expect(2.0));
    }

    #[test]
    fn logit_is_the_normalized_tfidf_dot_product() {
        let mut m = tiny(&[Target::WeakFails, Target::StrongRight]);
        m.features.dense = false;
        for (h, head) in m.heads.iter_mut().enumerate() {
            for (i, w) in head.weights.iter_mut().enumerate() {
                *w = (i as f32 * 0.37 + h as f32).sin();
            }
        }
        for (i, d) in m.df.iter_mut().enumerate() {
            *d = (i % 7) as u32;
        }
        let text = "Which of the following is a prime number?";
        // The same sums, the slow way: from the counts training uses.
        let counts = GramCounts::of(&m.features, text, TaskKind::Classify);
        let r = LearnedRouter::new("t", &m);
        let logits = r.logits(text, TaskKind::Classify);
        let mut expected_score = 0.0;
        for (h, head) in m.heads.iter().enumerate() {
            let mut expected = 0.0f64;
            for group in &counts.groups {
                let idf_of = |b: u32| f64::from(idf(m.docs, m.df[b as usize]));
                let norm: f64 = group
                    .iter()
                    .map(|&(b, c)| f64::from(c) * idf_of(b).powi(2))
                    .sum::<f64>()
                    .sqrt();
                for &(b, c) in group {
                    expected +=
                        f64::from(c) * idf_of(b) / norm * f64::from(head.weights[b as usize]);
                }
            }
            assert!((f64::from(logits[h]) - expected).abs() < 1e-4);
            expected_score += sigmoid(expected as f32) - 0.5;
        }
        let got = r.score(text, TaskKind::Classify);
        assert!(
            (got - expected_score).abs() < 1e-5,
            "{got} vs {expected_score}"
        );
    }

    #[test]
    fn embedding_part_is_the_standardized_mean_vector_dot_the_weights() {
        let table = crate::embedding::default_embedding().expect("committed table");
        let dims = 8;
        let mut m = tiny(&[Target::WeakFails, Target::StrongRight]);
        m.features.dense = false;
        m.features.word_ngrams = 0;
        m.embed = Some(EmbedSpec {
            table: table.clone(),
            dims,
            mean: (0..dims).map(|d| d as f32 * 0.01).collect(),
            scale: (0..dims).map(|d| 0.5 + d as f32 * 0.1).collect(),
        });
        for (h, head) in m.heads.iter_mut().enumerate() {
            head.embed_weights = (0..(1 + KINDS) * dims)
                .map(|i| ((i * 37 + h * 11) % 17) as f32 / 17.0 - 0.5)
                .collect();
        }
        assert!(m.validate().is_ok());
        let r = LearnedRouter::new("t", &m);
        let text = "The mitochondria is the powerhouse of the cell.";
        for kind in [TaskKind::Classify, TaskKind::Generate] {
            let logits = r.logits(text, kind);
            let (v, n) = table.mean_vector(text, dims);
            assert!(n > 0);
            let e = m.embed.as_ref().expect("embed");
            for (h, head) in m.heads.iter().enumerate() {
                let w = head.embed_weights_for(kind_index(kind), dims);
                let want: f32 = (0..dims)
                    .map(|d| w[d] * (v[d] - e.mean[d]) / e.scale[d])
                    .sum();
                assert!((logits[h] - want).abs() < 1e-3, "{} vs {want}", logits[h]);
            }
        }
        // No tokens: the embedding contributes nothing (the text sits at the mean).
        assert_eq!(r.logits("", TaskKind::Classify), vec![0.0, 0.0]);
        // A wrong number of weights is refused.
        let mut bad = m;
        bad.heads[0].embed_weights.pop();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn neighbours_mix_into_the_score_at_their_weight() {
        let table = crate::embedding::default_embedding().expect("committed table");
        let mut m = tiny(&[Target::Gain]);
        m.heads[0].bias = [0.4, 0.4, 0.4];
        m.embed = Some(EmbedSpec {
            table: table.clone(),
            dims: 4,
            mean: vec![0.0; 4],
            scale: vec![1.0; 4],
        });
        m.heads[0].embed_weights = vec![0.0; (1 + KINDS) * 4];
        let texts = [
            "The court held that the contract was void.",
            "Balance the chemical equation for methane.",
            "What is the derivative of x squared?",
            "Summarize the article about the election.",
        ];
        let vectors: Vec<Vec<f32>> = texts.iter().map(|t| table.mean_vector(t, 16).0).collect();
        let gains = [0.9, -0.5, 0.3, 0.1];
        let cfg = crate::knn::KnnConfig {
            dims: 16,
            k: 1,
            lists: 2,
            probe: 2,
            weight: 0.25,
        };
        m.knn = KnnIndex::build(&vectors, &gains, &cfg);
        assert!(m.validate().is_ok());
        let r = LearnedRouter::new("t", &m);
        let linear = 2.0 * sigmoid(0.4) - 1.0;
        for (t, g) in texts.iter().zip(gains) {
            // k = 1 and every list scanned: a stored text is its own nearest neighbour.
            let n = r.neighbour_gain(t, TaskKind::Classify).expect("tokens");
            assert!((n - g as f32).abs() < 1e-3, "{t}: {n} vs {g}");
            let want = 0.75 * linear + 0.25 * n;
            assert!((r.score(t, TaskKind::Classify) - want).abs() < 1e-5);
        }
        // No tokens: the linear estimate alone.
        assert_eq!(r.neighbour_gain("", TaskKind::Classify), None);
        assert!((r.score("", TaskKind::Classify) - linear).abs() < 1e-6);
        // An index without the embedding is refused.
        let mut bad = m;
        bad.embed = None;
        bad.heads[0].embed_weights.clear();
        assert!(bad.validate().unwrap_err().contains("embedding"));
    }

    #[test]
    fn validation_catches_bad_shapes_and_numbers() {
        let m = tiny(&[Target::Gain]);
        assert!(m.validate().is_ok());
        let mut bad = m.clone();
        bad.heads[0].weights.pop();
        assert!(bad.validate().is_err());
        let mut bad = m.clone();
        bad.heads[0].bias[1] = f32::NAN;
        assert!(bad.validate().is_err());
        let mut bad = m.clone();
        bad.heads.clear();
        assert!(bad.validate().is_err());
        let mut bad = m;
        bad.df.pop();
        assert!(bad.validate().is_err());
    }

    #[test]
    fn targets_label_and_combine_to_the_gain() {
        assert_eq!(Target::Gain.label(0.0, 1.0), 1.0);
        assert_eq!(Target::Gain.label(1.0, 1.0), 0.5);
        assert_eq!(Target::WeakFails.label(0.25, 1.0), 0.75);
        assert_eq!(Target::StrongRight.label(0.25, 1.0), 1.0);
        // Perfect heads reproduce the gain exactly.
        let (w, s) = (0.0, 1.0);
        let (a, b) = (
            Target::WeakFails.gain_affine(),
            Target::StrongRight.gain_affine(),
        );
        let two =
            a.0 * Target::WeakFails.label(w, s) + a.1 + b.0 * Target::StrongRight.label(w, s) + b.1;
        assert_eq!(two, 1.0);
        let g = Target::Gain.gain_affine();
        assert_eq!(g.0 * Target::Gain.label(w, s) + g.1, 1.0);
    }
}
