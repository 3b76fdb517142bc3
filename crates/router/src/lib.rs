//! Routers decide where the money goes: for each item, a score of how much a strong model
//! would beat a weak one on it (higher = more need for the strong model).
//!
//! A router is pure: no I/O, microseconds per item, and it may look only at what the
//! dispatcher sees in real traffic, the item's text and the job's task kind (never ids,
//! benchmark or subject names). Policies (threshold, strong share, budget) turn scores into
//! tiers; that happens in the dispatcher, not here.
//!
//! This crate is what the dispatcher links: [`Router`], [`configured_router`] (the one
//! function that picks the configured artifact or the default), [`LearnedRouter`] and its
//! [`artifact`], [`features`], [`model`] and [`embedding`]; pure and fast, with no I/O
//! beyond reading an artifact. The tools that build an artifact from benchmark rows and
//! prove what it is worth (data, training, evaluation, cross-validation, cascade replay,
//! plots, the `switchyard-router` CLI) are `switchyard-router-lab`'s.

use std::path::Path;
use std::sync::{Arc, OnceLock};

pub use switchyard_proto::TaskKind;

pub mod artifact;
pub mod embed_table;
pub mod embedding;
pub mod features;
pub mod knn;
mod length;
pub mod model;
pub mod prior;
pub mod rng;
pub mod wordpiece;

pub use artifact::{FORMAT_VERSION, RouterArtifact};
pub use length::LengthRouter;
pub use model::LearnedRouter;

/// Scores items for the dispatcher.
pub trait Router: Send + Sync + std::fmt::Debug {
    /// A short name for reports and `router explain` (`length`, `learned-v2`).
    fn name(&self) -> &str;

    /// The predicted need for the strong model on this item. Higher = more need. Always
    /// finite; comparable only between items scored by the same router.
    fn score(&self, text: &str, task: TaskKind) -> f32;

    /// The weak model's expected quality on this task kind, in [0, 1], as measured on the
    /// router's training data; `None` when unknown. The score is a gain over this level, so
    /// `weak_quality + score` predicts the strong model's quality on an item.
    fn weak_quality(&self, _task: TaskKind) -> Option<f64> {
        None
    }

    /// [`Router::weak_quality`], or [`prior::ASSUMED_WEAK_QUALITY`] when the router has no
    /// measurement: what route planning assumes.
    fn planned_weak_quality(&self, task: TaskKind) -> f64 {
        self.weak_quality(task)
            .unwrap_or(prior::ASSUMED_WEAK_QUALITY)
    }

    /// What the router predicts for this item: the expected quality gain of the strong model
    /// (the score) and the weak model's expected quality on it, so that a quality target can
    /// be planned item by item. The default knows only the task kind's mean weak quality.
    fn estimate(&self, text: &str, task: TaskKind) -> Estimate {
        Estimate {
            gain: f64::from(self.score(text, task)),
            weak: self.weak_quality(task),
        }
    }
}

/// A router's prediction for one item (see [`Router::estimate`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Expected quality gain of the strong model over the weak one, in [−1, 1].
    pub gain: f64,
    /// Expected quality of the weak model's answer, in [0, 1], when known.
    pub weak: Option<f64>,
}

/// Why a router artifact could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// The file could not be read.
    #[error("cannot read router artifact {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a router artifact, or is damaged.
    #[error("corrupt router artifact {path}: {reason}")]
    Corrupt { path: String, reason: String },
    /// The artifact was written by a newer (or unknown) version of the format.
    #[error(
        "router artifact {path} has format version {found}, this build reads versions up to \
         {supported}: upgrade switchyard or retrain the router"
    )]
    UnsupportedVersion {
        path: String,
        found: u64,
        supported: u32,
    },
}

/// The committed default artifact (see `crates/router/README.md` for the command that
/// rebuilds it). Embedded so the dispatcher never does I/O to get its router.
pub const DEFAULT_ARTIFACT: &str = include_str!("../artifacts/default-router.json");

/// The router the dispatcher uses when none is configured: the committed learned router.
///
/// The artifact is parsed once per process. It is checked by this crate's tests, so the
/// length fallback exists only to keep a broken build from taking dispatch down.
pub fn default_router() -> Arc<dyn Router> {
    static DEFAULT: OnceLock<Arc<dyn Router>> = OnceLock::new();
    DEFAULT
        .get_or_init(
            || match RouterArtifact::from_json(DEFAULT_ARTIFACT, "<embedded default>") {
                Ok(artifact) => match artifact.into_router() {
                    Ok(router) => Arc::new(router),
                    Err(_) => Arc::new(LengthRouter),
                },
                Err(_) => Arc::new(LengthRouter),
            },
        )
        .clone()
}

/// Loads a router artifact written by `switchyard router train`.
pub fn load_router(path: &Path) -> Result<Arc<dyn Router>, RouterError> {
    Ok(Arc::new(RouterArtifact::load(path)?.into_router()?))
}

/// The router to run: the artifact at `path` when one is configured, else the committed
/// default. The one place that choice is made: the dispatcher, `quote`, `router explain`,
/// the cascade replay and the twin all call it, so they score alike. Errors name the path.
pub fn configured_router(path: Option<&Path>) -> Result<Arc<dyn Router>, RouterError> {
    match path {
        None => Ok(default_router()),
        Some(path) => load_router(path),
    }
}
