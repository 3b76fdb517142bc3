//! The worker's copy of the price versions, refreshed every `finance.refresh`.
//!
//! It prices what the worker decides before a call (a budget hold's worst case). What a call
//! is booked at is not taken from here: Postgres resolves the version in force at the call's
//! time when the ledger row is inserted, so a cache a second out of date never books a wrong
//! price. At start-up every configured model must have a version in force (the configuration's
//! prices only seed a model the database has never priced): a model without a price is a
//! start-up error, never a $0 row.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use switchyard_core::tariff::Tariff;
use switchyard_runtime::Settings;
use switchyard_store::prices::{self, PriceVersion, Seeded};

/// Price versions by model, each model's sorted by `effective_from`.
#[derive(Debug, Default)]
pub struct PriceBook {
    versions: RwLock<HashMap<String, Vec<PriceVersion>>>,
}

impl PriceBook {
    /// Makes sure every configured model has a price in force (seeding from the configuration
    /// the models the database has never priced), then loads every version.
    ///
    /// # Errors
    /// A model without any price, or whose versions all start in the future; database errors.
    pub async fn load_checked(pool: &PgPool, settings: &Settings) -> anyhow::Result<Self> {
        let mut problems = Vec::new();
        for (name, m) in &settings.models {
            let seed = match (m.input_usd_per_mtok, m.output_usd_per_mtok) {
                (Some(i), Some(o)) => Some(
                    Tariff::simple(i, o)
                        .with_context(|| format!("model `{name}` has an invalid price"))?,
                ),
                _ => None,
            };
            match prices::seed_if_unpriced(pool, name, &m.provider, seed).await {
                Ok(Seeded::FromConfig(v)) => {
                    tracing::info!(model = %name, price_id = v.price_id, "seeded the price from the configuration");
                }
                Ok(Seeded::Existing(v)) => {
                    if let Some(seed) = seed
                        && (seed.input_usd_per_mtok != v.input_usd_per_mtok
                            || seed.output_usd_per_mtok != v.output_usd_per_mtok)
                    {
                        tracing::warn!(
                            model = %name,
                            price_id = v.price_id,
                            "the configuration's price differs from the version in force; the database's versions win (`switchyard prices list`)"
                        );
                    }
                }
                Err(prices::PriceSeedError::Database(e)) => {
                    return Err(e).with_context(|| format!("cannot check the price of `{name}`"));
                }
                Err(e) => problems.push(e.to_string()),
            }
        }
        anyhow::ensure!(problems.is_empty(), "{}", problems.join("\n"));
        let book = Self::default();
        book.refresh(pool).await?;
        Ok(book)
    }

    /// Reloads every version.
    ///
    /// # Errors
    /// Database errors (the previous versions stay in use).
    pub async fn refresh(&self, pool: &PgPool) -> sqlx::Result<()> {
        let mut by_model: HashMap<String, Vec<PriceVersion>> = HashMap::new();
        for v in prices::all(pool).await? {
            by_model.entry(v.model.clone()).or_default().push(v);
        }
        *self
            .versions
            .write()
            .unwrap_or_else(PoisonError::into_inner) = by_model;
        Ok(())
    }

    /// The version of `model` in force at `at`.
    pub fn at(&self, model: &str, at: DateTime<Utc>) -> Option<PriceVersion> {
        let versions = self.versions.read().unwrap_or_else(PoisonError::into_inner);
        versions
            .get(model)?
            .iter()
            .rev()
            .find(|v| v.effective_from <= at)
            .cloned()
    }
}
