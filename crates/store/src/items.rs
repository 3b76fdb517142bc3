//! Item rows: inserted in batches by the dispatcher (one `INSERT … SELECT FROM UNNEST` per
//! chunk, engine-notes: ~0.6× COPY, far above row-by-row), each written once with its final
//! tier, just before it is published; read back only when an interrupted dispatch resumes.

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
    /// The tier it is published to.
    pub routed_tier: String,
}

/// Inserts a chunk of items while the job is `dispatching`; returns how many were new.
/// Fewer than given: some were stored before (a resumed dispatch), or the job is no longer
/// dispatching (cancelled). The job row is share-locked for the statement, so a concurrent
/// cancel either sees these items (and cancels them) or makes this insert store none.
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
    let mut tiers = Vec::with_capacity(items.len());
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
        tiers.push(it.routed_tier.as_str());
    }
    let r = sqlx::query(
        "INSERT INTO items (job_id, item_id, seq, text, input_hash, sensitivity, metadata, \
         router_score, status, route_rule, route_tier, route_score, route_key, est_weak_usd, \
         est_strong_usd, routed_tier) \
         SELECT $1, u.item_id, u.seq, u.text, u.input_hash, u.sensitivity, u.metadata::jsonb, \
         u.score, 'queued', u.rule, u.tier, u.rscore, u.rkey, u.ew, u.es, u.routed \
         FROM UNNEST($2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::text[], \
         $8::real[], $9::text[], $10::text[], $11::real[], $12::real[], $13::numeric[], \
         $14::numeric[], $15::text[]) AS u(item_id, seq, text, input_hash, sensitivity, \
         metadata, score, rule, tier, rscore, rkey, ew, es, routed) \
         WHERE EXISTS (SELECT 1 FROM jobs WHERE job_id = $1 AND status = 'dispatching' \
           FOR SHARE) \
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
    .bind(&tiers)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// Removes a job's items (a restarted ingest starts over; nothing was published yet, and
/// since items are stored only once the job is `dispatching`, there are none to remove
/// unless an older version of the dispatcher stored them).
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
    /// The tier a pin or rule forced, if one did.
    pub route_tier: Option<String>,
}

/// A job's items with `from_seq ≤ seq ≤ to_seq`, in input order, whose routed attempt (0) is
/// still unanswered: what a resumed dispatch publishes again. An item that has moved on
/// (escalated, downgraded, retried: `items.attempt > 0`), or whose first attempt has a result
/// or a recorded failure, is left out: its first attempt is settled and a message for it could
/// only be dropped by the workers' claim (JetStream's duplicate window does not cover a
/// dispatch resumed minutes later).
///
/// # Errors
/// Database errors only.
pub async fn unanswered_between(
    pool: &PgPool,
    job_id: &str,
    from_seq: i64,
    to_seq: i64,
) -> sqlx::Result<Vec<StoredItem>> {
    sqlx::query_as(
        "SELECT i.item_id, i.seq, i.text, i.sensitivity, i.router_score, i.routed_tier, \
         i.route_tier \
         FROM items i WHERE i.job_id = $1 AND i.seq BETWEEN $2 AND $3 \
         AND i.status IN ('pending', 'queued') AND i.attempt = 0 \
         AND NOT EXISTS (SELECT 1 FROM results r WHERE r.job_id = i.job_id \
           AND r.item_id = i.item_id AND r.attempt = 0) \
         AND NOT EXISTS (SELECT 1 FROM dead_letters d WHERE d.message_key = \
           'item:' || octet_length(i.job_id) || ':' || i.job_id || ':' || i.item_id || ':0') \
         ORDER BY i.seq",
    )
    .bind(job_id)
    .bind(from_seq)
    .bind(to_seq)
    .fetch_all(pool)
    .await
}

/// Moves an item on from attempt `from` to the next one, on `tier` (a budget downgrade,
/// published before this); nothing when the item is closed or already past `from`.
///
/// # Errors
/// Database errors only.
pub async fn advance(
    pool: &PgPool,
    job_id: &str,
    item_id: &str,
    from: i32,
    tier: &str,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE items SET attempt = $3 + 1, attempt_tier = $4, updated_at = now() \
         WHERE job_id = $1 AND item_id = $2 AND attempt <= $3 \
         AND status IN ('pending', 'queued')",
    )
    .bind(job_id)
    .bind(item_id)
    .bind(from)
    .bind(tier)
    .execute(pool)
    .await?
    .rows_affected()
        > 0)
}
