//! The router artifact: a trained router as one small, versioned JSON file.
//!
//! Why JSON: it is diffable metadata (which data, which pairs, which command) around two
//! packed arrays, readable with any tool. The arrays are the bulk of the model, so they are
//! packed: n-gram weights as 16-bit integers with one scale per array (relative error below
//! 1/32767 of the largest weight, far below what changes a ranking), document frequencies as
//! LEB128 varints, both base64-encoded.
//!
//! `format_version` is checked before anything else, so a file from a newer release is a
//! clear "upgrade" error rather than a confusing parse failure; everything decoded is then
//! validated (array sizes, finite numbers), so a damaged file is refused, never half-used.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::RouterError;
use crate::features::{DENSE, DENSE_NAMES, FeatureConfig};
use crate::knn::KnnIndex;
use crate::model::{EmbedSpec, Head, KINDS, LearnedRouter, LinearModel, Target};
use crate::prior::{self, QualityPrior};

/// The `format` field of every artifact.
pub const FORMAT: &str = "switchyard-router";
/// The newest format version this build reads and the one it writes.
/// Version 2 added the static token embedding (`model.embedding` and per-head
/// `embed_weights`): a version-1 reader would silently score without it, so it must refuse.
/// Version 3 added the nearest-neighbour index (`model.knn`), for the same reason.
pub const FORMAT_VERSION: u32 = 3;

/// A data set a router was trained on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingSet {
    /// The file name (no directory: artifacts must not carry machine paths).
    pub file: String,
    pub weak: String,
    pub strong: String,
    /// Rows used after filtering.
    pub rows: usize,
    /// The total weight its rows carried in training.
    pub weight: f64,
}

/// Where a router came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The command that produced it.
    pub command: String,
    pub sets: Vec<TrainingSet>,
    /// Free notes (regularization, filters).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// One head, packed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedHead {
    pub target: Target,
    pub scale: f32,
    pub offset: f32,
    pub bias: [f32; KINDS],
    pub dense_weights: Vec<Vec<f32>>,
    /// N-gram weights = `weight_scale × i16`, little-endian, base64.
    pub weight_scale: f32,
    pub weights: String,
    /// Embedding weights: a block shared by every task kind, then one block per kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub embed_weights: Vec<f32>,
}

/// Which embedding table a model uses, and how its mean vectors are standardized.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedEmbed {
    /// The table's file name (informative) and SHA-256 (what loading checks).
    pub table: String,
    pub sha256: String,
    pub dims: usize,
    pub mean: Vec<f32>,
    pub scale: Vec<f32>,
}

/// The model, packed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedModel {
    pub features: FeatureConfig,
    pub docs: u32,
    /// Document frequencies per bucket: LEB128 varints, base64.
    pub df: String,
    pub dense_names: Vec<String>,
    pub dense_mean: Vec<f32>,
    pub dense_scale: Vec<f32>,
    pub heads: Vec<PackedHead>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embedding: Option<PackedEmbed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knn: Option<PackedKnn>,
}

/// The nearest-neighbour index: centroids and gains as 16-bit integers with one scale each,
/// list offsets as varints, the rows' unit vectors as signed bytes, all base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PackedKnn {
    pub dims: usize,
    pub k: usize,
    pub probe: usize,
    pub weight: f32,
    pub rows: usize,
    pub centroid_scale: f32,
    pub centroids: String,
    pub offsets: String,
    pub vectors: String,
    pub gain_scale: f32,
    pub gains: String,
}

impl PackedKnn {
    fn pack(k: &KnnIndex) -> Self {
        let (centroid_scale, centroids) = pack_weights(&k.centroids);
        let (gain_scale, gains) = pack_weights(&k.gains);
        Self {
            dims: k.dims,
            k: k.k,
            probe: k.probe,
            weight: k.weight,
            rows: k.rows(),
            centroid_scale,
            centroids,
            offsets: pack_varints(&k.offsets),
            vectors: B64.encode(k.vectors.iter().map(|&v| v as u8).collect::<Vec<u8>>()),
            gain_scale,
            gains,
        }
    }

    fn unpack(&self) -> Result<KnnIndex, String> {
        for (what, s) in [("centroid", self.centroid_scale), ("gain", self.gain_scale)] {
            if !s.is_finite() || s <= 0.0 {
                return Err(format!("kNN {what} scale is not a positive finite number"));
            }
        }
        let index = KnnIndex {
            dims: self.dims,
            k: self.k,
            probe: self.probe,
            weight: self.weight,
            centroids: unpack_weights(self.centroid_scale, &self.centroids)
                .map_err(|e| format!("kNN centroids: {e}"))?,
            offsets: unpack_varints(&self.offsets).map_err(|e| format!("kNN offsets: {e}"))?,
            vectors: B64
                .decode(&self.vectors)
                .map_err(|e| format!("kNN vectors: {e}"))?
                .into_iter()
                .map(|b| b as i8)
                .collect(),
            gains: unpack_weights(self.gain_scale, &self.gains)
                .map_err(|e| format!("kNN gains: {e}"))?,
        };
        if index.rows() != self.rows {
            return Err(format!(
                "kNN: {} gains for {} rows",
                index.rows(),
                self.rows
            ));
        }
        index.validate()?;
        Ok(index)
    }
}

/// A trained router as stored on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RouterArtifact {
    pub format: String,
    pub format_version: u32,
    /// The router's name in reports (`learned-v2`).
    pub name: String,
    pub provenance: Provenance,
    /// Mean weak and strong quality per task kind on the training rows (see
    /// [`crate::prior`]). Optional: artifacts written before it existed still load, and their
    /// predicted quality uses [`prior::ASSUMED_WEAK_QUALITY`].
    #[serde(default, skip_serializing_if = "QualityPrior::is_empty")]
    pub quality: QualityPrior,
    pub model: PackedModel,
}

fn corrupt(path: &str, reason: impl Into<String>) -> RouterError {
    RouterError::Corrupt {
        path: path.to_string(),
        reason: reason.into(),
    }
}

fn pack_varints(values: &[u32]) -> String {
    let mut bytes = Vec::with_capacity(values.len() * 2);
    for &v in values {
        let mut v = v;
        loop {
            let low = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                bytes.push(low);
                break;
            }
            bytes.push(low | 0x80);
        }
    }
    B64.encode(bytes)
}

fn unpack_varints(text: &str) -> Result<Vec<u32>, String> {
    let bytes = B64
        .decode(text)
        .map_err(|e| format!("document frequencies: {e}"))?;
    let mut out = Vec::new();
    let (mut value, mut shift) = (0u32, 0u32);
    for b in bytes {
        if shift > 28 {
            return Err("document frequencies: varint too long".into());
        }
        value |= u32::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            out.push(value);
            value = 0;
            shift = 0;
        } else {
            shift += 7;
        }
    }
    if shift != 0 {
        return Err("document frequencies: truncated varint".into());
    }
    Ok(out)
}

fn pack_weights(weights: &[f32]) -> (f32, String) {
    let max = weights.iter().fold(0.0f32, |m, w| m.max(w.abs()));
    let scale = if max > 0.0 { max / 32767.0 } else { 1.0 };
    let bytes: Vec<u8> = weights
        .iter()
        .flat_map(|w| ((w / scale).round().clamp(-32767.0, 32767.0) as i16).to_le_bytes())
        .collect();
    (scale, B64.encode(bytes))
}

fn unpack_weights(scale: f32, text: &str) -> Result<Vec<f32>, String> {
    let bytes = B64.decode(text).map_err(|e| format!("weights: {e}"))?;
    if bytes.len() % 2 != 0 {
        return Err("weights: odd number of bytes".into());
    }
    Ok(bytes
        .chunks_exact(2)
        .map(|c| f32::from(i16::from_le_bytes([c[0], c[1]])) * scale)
        .collect())
}

fn to_array<const N: usize>(v: &[f32], what: &str) -> Result<[f32; N], String> {
    v.try_into()
        .map_err(|_| format!("{what}: expected {N} numbers, found {}", v.len()))
}

impl PackedModel {
    /// Packs a trained model.
    pub fn pack(m: &LinearModel) -> Self {
        Self {
            features: m.features,
            docs: m.docs,
            df: pack_varints(&m.df),
            dense_names: DENSE_NAMES.iter().map(|s| s.to_string()).collect(),
            dense_mean: m.dense_mean.to_vec(),
            dense_scale: m.dense_scale.to_vec(),
            heads: m
                .heads
                .iter()
                .map(|h| {
                    let (weight_scale, weights) = pack_weights(&h.weights);
                    PackedHead {
                        target: h.target,
                        scale: h.scale,
                        offset: h.offset,
                        bias: h.bias,
                        dense_weights: h.dense_weights.iter().map(|w| w.to_vec()).collect(),
                        weight_scale,
                        weights,
                        embed_weights: h.embed_weights.clone(),
                    }
                })
                .collect(),
            embedding: m.embed.as_ref().map(|e| PackedEmbed {
                table: crate::embedding::DEFAULT_TABLE_NAME.to_string(),
                sha256: e.table.sha256.clone(),
                dims: e.dims,
                mean: e.mean.clone(),
                scale: e.scale.clone(),
            }),
            knn: m.knn.as_ref().map(PackedKnn::pack),
        }
    }

    /// Unpacks and validates.
    pub fn unpack(&self) -> Result<LinearModel, String> {
        let names: Vec<&str> = self.dense_names.iter().map(String::as_str).collect();
        if names != DENSE_NAMES {
            return Err(format!(
                "structure measurements {names:?} differ from this build's {DENSE_NAMES:?}"
            ));
        }
        let mut heads = Vec::with_capacity(self.heads.len());
        for (i, h) in self.heads.iter().enumerate() {
            if !h.weight_scale.is_finite() || h.weight_scale <= 0.0 {
                return Err(format!(
                    "head {i}: weight scale is not a positive finite number"
                ));
            }
            if h.dense_weights.len() != KINDS {
                return Err(format!(
                    "head {i}: expected {KINDS} rows of structure weights, found {}",
                    h.dense_weights.len()
                ));
            }
            let mut dense_weights = [[0.0; DENSE]; KINDS];
            for (k, row) in h.dense_weights.iter().enumerate() {
                dense_weights[k] = to_array(row, "structure weights")?;
            }
            heads.push(Head {
                target: h.target,
                scale: h.scale,
                offset: h.offset,
                weights: unpack_weights(h.weight_scale, &h.weights)
                    .map_err(|e| format!("head {i}: {e}"))?,
                bias: h.bias,
                dense_weights,
                embed_weights: h.embed_weights.clone(),
            });
        }
        let model = LinearModel {
            features: self.features,
            docs: self.docs,
            df: unpack_varints(&self.df)?,
            dense_mean: to_array(&self.dense_mean, "structure means")?,
            dense_scale: to_array(&self.dense_scale, "structure scales")?,
            heads,
            embed: match &self.embedding {
                None => None,
                Some(e) => Some(EmbedSpec {
                    table: crate::embedding::embedding_for(&e.sha256)?,
                    dims: e.dims,
                    mean: e.mean.clone(),
                    scale: e.scale.clone(),
                }),
            },
            knn: self.knn.as_ref().map(PackedKnn::unpack).transpose()?,
        };
        model.validate()?;
        Ok(model)
    }
}

impl RouterArtifact {
    /// An artifact for a trained model.
    pub fn new(name: impl Into<String>, provenance: Provenance, model: &LinearModel) -> Self {
        Self {
            format: FORMAT.to_string(),
            format_version: FORMAT_VERSION,
            name: name.into(),
            provenance,
            quality: QualityPrior::new(),
            model: PackedModel::pack(model),
        }
    }

    /// The same artifact with a quality prior.
    pub fn with_quality(mut self, quality: QualityPrior) -> Self {
        self.quality = quality;
        self
    }

    /// Parses and validates an artifact; `path` is only used in messages.
    pub fn from_json(text: &str, path: &str) -> Result<Self, RouterError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| corrupt(path, format!("not JSON: {e}")))?;
        match value.get("format").and_then(|f| f.as_str()) {
            Some(FORMAT) => {}
            Some(other) => {
                return Err(corrupt(
                    path,
                    format!("format is `{other}`, not `{FORMAT}`"),
                ));
            }
            None => {
                return Err(corrupt(
                    path,
                    format!("no `format` field (not a {FORMAT} file)"),
                ));
            }
        }
        let version = value
            .get("format_version")
            .and_then(|v| v.as_u64())
            .ok_or_else(|| corrupt(path, "no numeric `format_version` field"))?;
        if version == 0 || version > u64::from(FORMAT_VERSION) {
            return Err(RouterError::UnsupportedVersion {
                path: path.to_string(),
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let artifact: RouterArtifact =
            serde_json::from_value(value).map_err(|e| corrupt(path, e.to_string()))?;
        artifact.model.unpack().map_err(|e| corrupt(path, e))?;
        prior::validate(&artifact.quality).map_err(|e| corrupt(path, e))?;
        Ok(artifact)
    }

    /// Reads an artifact file.
    pub fn load(path: &Path) -> Result<Self, RouterError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| RouterError::Io {
            path: shown.clone(),
            source,
        })?;
        Self::from_json(&text, &shown)
    }

    /// The artifact as pretty JSON (one field per line, arrays packed).
    pub fn to_json(&self) -> String {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Writes the artifact.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_json())
    }

    /// The unpacked model.
    pub fn unpack(&self) -> Result<LinearModel, String> {
        self.model.unpack()
    }

    /// The router, ready to score.
    pub fn into_router(self) -> Result<LearnedRouter, RouterError> {
        let model = self.model.unpack().map_err(|e| corrupt(&self.name, e))?;
        Ok(LearnedRouter::new(self.name, &model).with_quality(&self.quality))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Router, TaskKind};

    fn model() -> LinearModel {
        let mut m = LinearModel::empty(FeatureConfig {
            bits: 10,
            ..FeatureConfig::DEFAULT
        });
        m.docs = 500;
        for (i, d) in m.df.iter_mut().enumerate() {
            *d = (i as u32 * 31) % 600;
        }
        for t in [Target::Gain, Target::WeakFails] {
            let mut h = Head::zeros(t, 1024);
            for (i, w) in h.weights.iter_mut().enumerate() {
                *w = ((i * 7919) % 1000) as f32 / 1000.0 - 0.5;
            }
            h.bias = [0.1, -0.2, 0.3];
            h.dense_weights[2][0] = 0.7;
            m.heads.push(h);
        }
        m
    }

    #[test]
    fn roundtrip_keeps_scores() {
        let m = model();
        let direct = LearnedRouter::new("x", &m);
        let art = RouterArtifact::new("x", Provenance::default(), &m);
        let back = RouterArtifact::from_json(&art.to_json(), "mem").expect("valid");
        assert_eq!(back.unpack().expect("unpacks").df, m.df);
        let router = back.into_router().expect("router");
        for text in ["short", "a somewhat longer question about integrals?"] {
            for kind in [TaskKind::Classify, TaskKind::Generate] {
                let (a, b) = (direct.score(text, kind), router.score(text, kind));
                assert!((a - b).abs() < 1e-3, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn newer_version_and_corruption_are_clear_errors() {
        let art = RouterArtifact::new("x", Provenance::default(), &model());
        let json = art.to_json();
        let newer = json.replace("\"format_version\": 3", "\"format_version\": 4");
        let e = RouterArtifact::from_json(&newer, "r.json").expect_err("newer");
        assert!(
            matches!(e, RouterError::UnsupportedVersion { found: 4, .. }),
            "{e}"
        );
        assert!(e.to_string().contains("r.json"));

        let truncated = &json[..json.len() / 2];
        let e = RouterArtifact::from_json(truncated, "r.json").expect_err("truncated");
        assert!(
            e.to_string().starts_with("corrupt router artifact r.json"),
            "{e}"
        );

        let mut bad = art.clone();
        bad.model.heads[1].weights = B64.encode([1u8, 2, 3, 4]);
        let e = RouterArtifact::from_json(&bad.to_json(), "r.json").expect_err("short");
        assert!(
            e.to_string().contains("head 1: expected 1024 weights"),
            "{e}"
        );

        let mut bad = art.clone();
        bad.model.df = "!!not base64!!".into();
        let e = RouterArtifact::from_json(&bad.to_json(), "r.json").expect_err("df");
        assert!(e.to_string().contains("document frequencies"), "{e}");

        let e = RouterArtifact::from_json("{\"hello\": 1}", "r.json").expect_err("foreign");
        assert!(e.to_string().contains("no `format` field"), "{e}");
    }

    #[test]
    fn neighbour_index_roundtrips_and_damage_is_refused() {
        let table = crate::embedding::default_embedding().expect("committed table");
        let mut m = model();
        m.embed = Some(EmbedSpec {
            table: table.clone(),
            dims: 4,
            mean: vec![0.0; 4],
            scale: vec![1.0; 4],
        });
        for h in &mut m.heads {
            h.embed_weights = vec![0.1; (1 + KINDS) * 4];
        }
        let texts: Vec<String> = (0..40)
            .map(|i| format!("question {i} about topic {}", i % 7))
            .collect();
        let vectors: Vec<Vec<f32>> = texts.iter().map(|t| table.mean_vector(t, 8).0).collect();
        let gains: Vec<f64> = (0..40).map(|i| f64::from(i % 3) / 2.0 - 0.5).collect();
        let cfg = crate::knn::KnnConfig {
            dims: 8,
            k: 5,
            lists: 4,
            probe: 2,
            weight: 0.5,
        };
        m.knn = KnnIndex::build(&vectors, &gains, &cfg);
        let direct = LearnedRouter::new("x", &m);
        let art = RouterArtifact::new("x", Provenance::default(), &m);
        let back = RouterArtifact::from_json(&art.to_json(), "mem").expect("valid");
        let router = back.into_router().expect("router");
        for t in &texts[..5] {
            let (a, b) = (
                direct.score(t, TaskKind::Classify),
                router.score(t, TaskKind::Classify),
            );
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
            assert!(router.neighbour_gain(t, TaskKind::Classify).is_some());
        }
        let mut bad = art.clone();
        if let Some(k) = bad.model.knn.as_mut() {
            k.rows += 1;
        }
        let e = RouterArtifact::from_json(&bad.to_json(), "r.json").expect_err("rows");
        assert!(e.to_string().contains("kNN"), "{e}");
    }

    #[test]
    fn varints_roundtrip() {
        let v = [0, 1, 127, 128, 300, 65_535, 1 << 30];
        assert_eq!(unpack_varints(&pack_varints(&v)).expect("ok"), v);
        assert!(unpack_varints(&B64.encode([0x80u8])).is_err());
    }
}
