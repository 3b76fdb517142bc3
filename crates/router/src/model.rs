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

use serde::{Deserialize, Serialize};

use crate::features::{DENSE, FeatureConfig, GROUPS, dense, for_each_gram};
use crate::{Router, TaskKind};

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
        TaskKind::Generate => 2,
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
        }
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
            let finite = h
                .weights
                .iter()
                .chain(&h.bias)
                .chain(h.dense_weights.iter().flatten())
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
        let all = self.head_logits(text, task);
        all[..self.heads.len()].to_vec()
    }

    /// The heads' logits in a fixed array (no allocation on the scoring path).
    fn head_logits(&self, text: &str, task: TaskKind) -> [f32; MAX_HEADS] {
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
        for (h, (head, o)) in self.heads.iter().zip(out.iter_mut()).enumerate() {
            let mut s = head.bias[kind];
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
        out
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
        let s: f32 = self
            .head_logits(text, task)
            .iter()
            .zip(&self.heads)
            .map(|(z, h)| h.scale * sigmoid(*z) + h.offset)
            .sum();
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
