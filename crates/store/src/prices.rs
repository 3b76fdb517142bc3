//! Price versions. A row is never changed (a trigger refuses UPDATE and DELETE): a changed
//! price is a new row with its own `effective_from`, in force until the next version of the
//! model. Every ledger row references the version in force at its call's time, so changing a
//! price never changes a past cost.
//!
//! Rules `set` enforces, with nothing written when one fails: a valid tariff
//! ([`switchyard_core::tariff`]); no two versions of a model from the same instant (they
//! would overlap); and no version taking effect before a call already booked for the model
//! (it would silently disagree with what that call was charged).

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;
use sqlx::PgPool;
use switchyard_core::tariff::Tariff;

/// A stored price version.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct PriceVersion {
    pub price_id: i64,
    pub model: String,
    pub provider: String,
    #[serde(serialize_with = "crate::money::ser")]
    pub input_usd_per_mtok: Decimal,
    #[serde(serialize_with = "crate::money::ser_opt")]
    pub cached_input_usd_per_mtok: Option<Decimal>,
    #[serde(serialize_with = "crate::money::ser")]
    pub output_usd_per_mtok: Decimal,
    #[serde(serialize_with = "crate::money::ser")]
    pub batch_discount: Decimal,
    #[serde(serialize_with = "crate::money::ser_opt")]
    pub cache_write_usd_per_mtok: Option<Decimal>,
    #[serde(serialize_with = "crate::money::ser_opt")]
    pub cache_write_1h_usd_per_mtok: Option<Decimal>,
    pub effective_from: DateTime<Utc>,
    /// When the next version takes over (`None`: still in force, or the latest).
    pub effective_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl PriceVersion {
    /// This version's tariff.
    pub fn tariff(&self) -> Tariff {
        Tariff {
            input_usd_per_mtok: self.input_usd_per_mtok,
            cached_input_usd_per_mtok: self.cached_input_usd_per_mtok,
            output_usd_per_mtok: self.output_usd_per_mtok,
            batch_discount: self.batch_discount,
            cache_write_usd_per_mtok: self.cache_write_usd_per_mtok,
            cache_write_1h_usd_per_mtok: self.cache_write_1h_usd_per_mtok,
        }
    }

    /// True when this version is in force at `at`.
    pub fn in_force_at(&self, at: DateTime<Utc>) -> bool {
        self.effective_from <= at && self.effective_until.is_none_or(|u| at < u)
    }
}

/// A price version about to be recorded.
#[derive(Debug, Clone)]
pub struct NewPrice {
    pub model: String,
    pub provider: String,
    pub tariff: Tariff,
    pub effective_from: DateTime<Utc>,
}

/// Why a price version was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum PriceSetError {
    #[error(
        "`{model}` already has a price version effective from {at}: two versions from the same \
         instant would overlap (versions are never changed; choose another --effective-from)"
    )]
    Overlap { model: String, at: DateTime<Utc> },
    #[error(
        "a price for `{model}` effective from {at} would overlap calls already booked with the \
         previous version ({calls} calls, the latest priced at {latest}); a new version must \
         take effect after the last booked call (use a later --effective-from, or correct those \
         entries with `switchyard ledger correct`)"
    )]
    BackDated {
        model: String,
        at: DateTime<Utc>,
        calls: i64,
        latest: DateTime<Utc>,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Why a worker cannot price a model at start-up.
#[derive(Debug, thiserror::Error)]
pub enum PriceSeedError {
    #[error(
        "model `{model}` has no price: set one with `switchyard prices set {model} \
         --input-per-mtok X --output-per-mtok Y --effective-from now`, or give \
         input_usd_per_mtok and output_usd_per_mtok in [models.\"{model}\"] to seed it"
    )]
    NoPrice { model: String },
    #[error("model `{model}` has no price in force yet: its first version takes effect at {first}")]
    NotYetInForce { model: String, first: DateTime<Utc> },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

const SELECT_VERSIONS: &str = "SELECT price_id, model, provider, input_usd_per_mtok, \
     cached_input_usd_per_mtok, output_usd_per_mtok, batch_discount, cache_write_usd_per_mtok, \
     cache_write_1h_usd_per_mtok, effective_from, \
     lead(effective_from) OVER (PARTITION BY model ORDER BY effective_from) AS effective_until, \
     created_at FROM prices";

/// Records a new price version after checking it overlaps nothing (see the module docs).
///
/// # Errors
/// [`PriceSetError`]; nothing is written then.
pub async fn set(pool: &PgPool, new: &NewPrice) -> Result<PriceVersion, PriceSetError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('price:' || $1))")
        .bind(&new.model)
        .execute(&mut *tx)
        .await?;
    let same: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM prices WHERE model = $1 AND effective_from = $2)",
    )
    .bind(&new.model)
    .bind(new.effective_from)
    .fetch_one(&mut *tx)
    .await?;
    if same {
        return Err(PriceSetError::Overlap {
            model: new.model.clone(),
            at: new.effective_from,
        });
    }
    let (calls, latest): (i64, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT count(*), max(COALESCE(priced_at, created_at)) FROM ledger \
         WHERE model = $1 AND kind = 'call' \
         AND (priced_at >= $2 OR (priced_at IS NULL AND created_at >= $2))",
    )
    .bind(&new.model)
    .bind(new.effective_from)
    .fetch_one(&mut *tx)
    .await?;
    if let Some(latest) = latest {
        return Err(PriceSetError::BackDated {
            model: new.model.clone(),
            at: new.effective_from,
            calls,
            latest,
        });
    }
    let id = insert_version(
        &mut tx,
        &new.model,
        &new.provider,
        &new.tariff,
        Some(new.effective_from),
    )
    .await?;
    tx.commit().await?;
    Ok(version(pool, id).await?)
}

/// Inserts a version of `model`'s price, in force from `from` (now when `None`); returns its id.
async fn insert_version(
    tx: &mut sqlx::PgConnection,
    model: &str,
    provider: &str,
    t: &Tariff,
    from: Option<DateTime<Utc>>,
) -> sqlx::Result<i64> {
    sqlx::query_scalar(
        "INSERT INTO prices (model, provider, input_usd_per_mtok, cached_input_usd_per_mtok, \
         output_usd_per_mtok, batch_discount, cache_write_usd_per_mtok, \
         cache_write_1h_usd_per_mtok, effective_from) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, COALESCE($9::timestamptz, clock_timestamp())) \
         RETURNING price_id",
    )
    .bind(model)
    .bind(provider)
    .bind(t.input_usd_per_mtok)
    .bind(t.cached_input_usd_per_mtok)
    .bind(t.output_usd_per_mtok)
    .bind(t.batch_discount)
    .bind(t.cache_write_usd_per_mtok)
    .bind(t.cache_write_1h_usd_per_mtok)
    .bind(from)
    .fetch_one(tx)
    .await
}

/// The version `price_id` as [`all`] lists it.
async fn version(pool: &PgPool, price_id: i64) -> sqlx::Result<PriceVersion> {
    all(pool)
        .await?
        .into_iter()
        .find(|v| v.price_id == price_id)
        .ok_or(sqlx::Error::RowNotFound)
}

/// Every version, by model then time, each with the time the next one takes over.
///
/// # Errors
/// Database errors only.
pub async fn all(pool: &PgPool) -> sqlx::Result<Vec<PriceVersion>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{SELECT_VERSIONS} ORDER BY model, effective_from"
    )))
    .fetch_all(pool)
    .await
}

/// The versions in force at `at`, one per model that had a price then.
///
/// # Errors
/// Database errors only.
pub async fn in_force_at(pool: &PgPool, at: DateTime<Utc>) -> sqlx::Result<Vec<PriceVersion>> {
    Ok(all(pool)
        .await?
        .into_iter()
        .filter(|v| v.in_force_at(at))
        .collect())
}

/// Models with at least one price version.
///
/// # Errors
/// Database errors only.
pub async fn priced_models(pool: &PgPool) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT model FROM prices ORDER BY model")
        .fetch_all(pool)
        .await
}

/// What a worker found for a model at start-up.
#[derive(Debug, Clone)]
pub enum Seeded {
    /// The model had versions; this one is in force now.
    Existing(PriceVersion),
    /// The model had no price at all; the configuration's was recorded, effective now.
    FromConfig(PriceVersion),
}

impl Seeded {
    /// The version in force now.
    pub fn version(&self) -> &PriceVersion {
        match self {
            Seeded::Existing(v) | Seeded::FromConfig(v) => v,
        }
    }
}

/// Makes sure `model` has a price in force now: a model with no version at all gets the
/// configuration's `seed` (effective now); a model with versions keeps them (the database is
/// the source of truth; the configuration only seeds).
///
/// # Errors
/// [`PriceSeedError::NoPrice`] when the model has no version and no seed,
/// [`PriceSeedError::NotYetInForce`] when its versions all start in the future.
pub async fn seed_if_unpriced(
    pool: &PgPool,
    model: &str,
    provider: &str,
    seed: Option<Tariff>,
) -> Result<Seeded, PriceSeedError> {
    let mut tx = pool.begin().await?;
    // Serialize workers starting together for the same model.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('price:' || $1))")
        .bind(model)
        .execute(&mut *tx)
        .await?;
    let first: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT min(effective_from) FROM prices WHERE model = $1")
            .bind(model)
            .fetch_one(&mut *tx)
            .await?;
    let seeded = match first {
        Some(first) => {
            tx.commit().await?;
            let now = Utc::now();
            return match all(pool)
                .await?
                .into_iter()
                .find(|v| v.model == model && v.in_force_at(now))
            {
                Some(v) => Ok(Seeded::Existing(v)),
                None => Err(PriceSeedError::NotYetInForce {
                    model: model.to_owned(),
                    first,
                }),
            };
        }
        None => {
            let Some(t) = seed else {
                return Err(PriceSeedError::NoPrice {
                    model: model.to_owned(),
                });
            };
            let id = insert_version(&mut tx, model, provider, &t, None).await?;
            tx.commit().await?;
            id
        }
    };
    Ok(Seeded::FromConfig(version(pool, seeded).await?))
}
