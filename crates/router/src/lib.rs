//! Routers decide where the money goes: for each item, a score of how much a strong model
//! would beat a weak one on it (higher = more need for the strong model).
//!
//! A router is pure: no I/O, microseconds per item, and it may look only at what the
//! dispatcher sees in real traffic, the item's text and the job's task kind (never ids,
//! benchmark or subject names). Policies (threshold, strong share, budget) turn scores into
//! tiers; that happens in the dispatcher, not here.

use std::sync::Arc;

pub use switchyard_proto::TaskKind;

mod length;

pub use length::LengthRouter;

/// Scores items for the dispatcher.
pub trait Router: Send + Sync + std::fmt::Debug {
    /// A short name for reports and `router explain` (`length`, `learned-v1`).
    fn name(&self) -> &str;

    /// The predicted need for the strong model on this item. Higher = more need. Always
    /// finite; comparable only between items scored by the same router.
    fn score(&self, text: &str, task: TaskKind) -> f32;
}

/// The router the dispatcher uses when none is configured.
pub fn default_router() -> Arc<dyn Router> {
    Arc::new(LengthRouter)
}
