//! One owner per job at a time, across processes: a Postgres advisory lock.
//!
//! A dispatcher holds a job's lock for as long as it works on the job's message; a sweep
//! ([`crate::sweeper`]) holds it while it looks at a job. A job whose lock nobody holds has no
//! live dispatcher: whoever died holding it lost its session, and with it the lock.

use sqlx::PgConnection;

/// A Postgres advisory lock on a job, held on its own connection. Dropped without
/// [`JobLock::release`] (a dispatch abandoned at shutdown), its connection is closed rather
/// than returned to the pool, which ends the session and so the lock.
pub struct JobLock {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Postgres>>,
    key: String,
}

impl Drop for JobLock {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            drop(conn.detach());
        }
    }
}

impl JobLock {
    /// Takes the job's lock if nobody holds it.
    ///
    /// # Errors
    /// Database errors.
    pub async fn try_acquire(pool: &sqlx::PgPool, job_id: &str) -> anyhow::Result<Option<Self>> {
        Self::acquire(pool, job_id, None).await
    }

    /// Takes the job's lock for a dispatcher that has the job's message (stream sequence
    /// `message_seq`) in hand, and in the same round trip records that the job moved and which
    /// message carries it (`jobs.progress_at`, `jobs.message_seq`; a job not admitted yet has
    /// no row to touch, its admission stores both).
    ///
    /// # Errors
    /// Database errors.
    pub async fn try_acquire_for_message(
        pool: &sqlx::PgPool,
        job_id: &str,
        message_seq: Option<i64>,
    ) -> anyhow::Result<Option<Self>> {
        Self::acquire(pool, job_id, Some(message_seq)).await
    }

    async fn acquire(
        pool: &sqlx::PgPool,
        job_id: &str,
        touch: Option<Option<i64>>,
    ) -> anyhow::Result<Option<Self>> {
        let mut conn = pool.acquire().await?;
        let key = format!("dispatch:{job_id}");
        let got: bool = match touch {
            None => {
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(&key)
                    .fetch_one(&mut *conn)
                    .await?
            }
            Some(seq) => {
                // `l` calls a volatile function, so it is evaluated once, before `t`.
                sqlx::query_scalar(
                    "WITH l AS (SELECT pg_try_advisory_lock(hashtextextended($1, 0)) AS got), \
                     t AS (UPDATE jobs SET progress_at = now(), \
                       message_seq = COALESCE($3, message_seq) \
                       WHERE job_id = $2 AND (SELECT got FROM l) \
                       AND status IN ('ingesting', 'dispatching', 'running')) \
                     SELECT got FROM l",
                )
                .bind(&key)
                .bind(job_id)
                .bind(seq)
                .fetch_one(&mut *conn)
                .await?
            }
        };
        Ok(got.then_some(Self {
            conn: Some(conn),
            key,
        }))
    }

    /// The lock's own connection, for queries of the lock's holder (a sweep holds one
    /// connection at a time, however busy the pool is).
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_deref_mut()
            .expect("a job lock holds its connection until it is released or dropped")
    }

    /// Releases the lock and returns its connection to the pool.
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let _ = sqlx::query("SELECT pg_advisory_unlock(hashtextextended($1, 0))")
                .bind(&self.key)
                .execute(&mut *conn)
                .await;
        }
    }
}
