//! Price versions. A row is never updated: a changed price is a new row effective from now,
//! so past ledger rows keep the price they were computed with.

use rust_decimal::Decimal;
use sqlx::PgPool;
use switchyard_core::pricing::Price;

/// The id of the price version in force for `model` if it equals `price`; otherwise records
/// `price` as a new version effective now and returns its id. Workers call this at start-up
/// for every model they serve.
///
/// # Errors
/// Database errors only.
pub async fn ensure_current(
    pool: &PgPool,
    model: &str,
    provider: &str,
    price: Price,
) -> sqlx::Result<i64> {
    let mut tx = pool.begin().await?;
    // Serialize workers starting together for the same model.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('price:' || $1))")
        .bind(model)
        .execute(&mut *tx)
        .await?;
    let current: Option<(i64, Decimal, Decimal, String)> = sqlx::query_as(
        "SELECT price_id, input_usd_per_mtok, output_usd_per_mtok, provider FROM prices \
         WHERE model = $1 AND effective_from <= now() ORDER BY effective_from DESC LIMIT 1",
    )
    .bind(model)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((id, input, output, prov)) = current
        && input == price.input_usd_per_mtok
        && output == price.output_usd_per_mtok
        && prov == provider
    {
        tx.commit().await?;
        return Ok(id);
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO prices (model, provider, input_usd_per_mtok, output_usd_per_mtok, \
         effective_from) VALUES ($1, $2, $3, $4, clock_timestamp()) RETURNING price_id",
    )
    .bind(model)
    .bind(provider)
    .bind(price.input_usd_per_mtok)
    .bind(price.output_usd_per_mtok)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}
