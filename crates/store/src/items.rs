//! Item rows: inserted in batches by the dispatcher (one `INSERT … SELECT FROM UNNEST` per
//! chunk, engine-notes: ~0.6× COPY, far above row-by-row), read back in input order to
//! publish.

use sqlx::PgPool;

/// An item as the dispatcher stores it.
#[derive(Debug, Clone)]
pub struct NewItem {
    pub item_id: String,
    pub seq: i64,
    pub text: String,
    pub input_hash: String,
    pub sensitivity: Option<String>,
    /// JSON text of the item's metadata, if any.
    pub metadata: Option<String>,
    pub router_score: f32,
    /// Why it will go where it goes (see [`crate::routing`]).
    pub route: crate::routing::ItemRoute,
}

/// Inserts a chunk of items; returns how many were new (fewer than given means duplicate
/// item ids, within the chunk or with earlier chunks).
///
/// # Errors
/// Database errors only.
pub async fn insert_chunk(pool: &PgPool, job_id: &str, items: &[NewItem]) -> sqlx::Result<u64> {
    let mut ids = Vec::with_capacity(items.len());
    let mut seqs = Vec::with_capacity(items.len());
    let mut texts = Vec::with_capacity(items.len());
    let mut hashes = Vec::with_capacity(items.len());
    let mut sens = Vec::with_capacity(items.len());
    let mut meta = Vec::with_capacity(items.len());
    let mut scores = Vec::with_capacity(items.len());
    let mut route = crate::routing::RouteCols::with_capacity(items.len());
    for it in items {
        route.push(&it.route);
        ids.push(it.item_id.as_str());
        seqs.push(it.seq);
        texts.push(it.text.as_str());
        hashes.push(it.input_hash.as_str());
        sens.push(it.sensitivity.as_deref());
        meta.push(it.metadata.as_deref());
        scores.push(it.router_score);
    }
    let r = sqlx::query(
        "INSERT INTO items (job_id, item_id, seq, text, input_hash, sensitivity, metadata, \
         router_score, status, route_rule, route_tier, route_score, route_key, est_weak_usd, \
         est_strong_usd) \
         SELECT $1, u.item_id, u.seq, u.text, u.input_hash, u.sensitivity, u.metadata::jsonb, \
         u.score, 'queued', u.rule, u.tier, u.rscore, u.rkey, u.ew, u.es \
         FROM UNNEST($2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::real[], $9::text[], $10::text[], $11::real[], $12::real[], $13::numeric[], \
         $14::numeric[]) AS u(item_id, seq, text, input_hash, sensitivity, metadata, score, \
         rule, tier, rscore, rkey, ew, es) \
         ON CONFLICT DO NOTHING",
    )
    .bind(job_id)
    .bind(&ids)
    .bind(&seqs)
    .bind(&texts)
    .bind(&hashes)
    .bind(&sens)
    .bind(&meta)
    .bind(&scores)
    .bind(&route.rule)
    .bind(&route.tier)
    .bind(&route.score)
    .bind(&route.key)
    .bind(&route.est_weak)
    .bind(&route.est_strong)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Removes a job's items (a restarted ingest starts over; nothing was published yet).
///
/// # Errors
/// Database errors only.
pub async fn delete_for_job(pool: &PgPool, job_id: &str) -> sqlx::Result<u64> {
    Ok(sqlx::query("DELETE FROM items WHERE job_id = $1")
        .bind(job_id)
        .execute(pool)
        .await?
        .rows_affected())
}

/// An item read back for publishing.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredItem {
    pub item_id: String,
    pub seq: i64,
    pub text: String,
    pub sensitivity: Option<String>,
    pub router_score: f32,
    pub routed_tier: Option<String>,
}

/// The next chunk of a job's items after `after_seq`, in input order, that are still
/// waiting for an answer.
///
/// # Errors
/// Database errors only.
pub async fn chunk_after(
    pool: &PgPool,
    job_id: &str,
    after_seq: i64,
    limit: i64,
) -> sqlx::Result<Vec<StoredItem>> {
    sqlx::query_as(
        "SELECT item_id, seq, text, sensitivity, router_score, routed_tier FROM items \
         WHERE job_id = $1 AND seq > $2 AND status = 'queued' ORDER BY seq LIMIT $3",
    )
    .bind(job_id)
    .bind(after_seq)
    .bind(limit)
    .fetch_all(pool)
    .await
}
