//! Dead letters: messages that will not be processed, with why.

/// A dead letter about to be recorded.
#[derive(Debug, Clone)]
pub struct DeadLetter<'a> {
    /// Idempotency key: `<stream>:<sequence>` for a job message.
    pub message_key: &'a str,
    pub kind: &'a str,
    pub job_id: Option<&'a str>,
    pub item_id: Option<&'a str>,
    pub attempt: Option<i32>,
    pub subject: &'a str,
    pub deliveries: Option<i32>,
    pub error: &'a str,
}

impl<'a> DeadLetter<'a> {
    /// A work message that names no item we could read (undecodable, or an advisory about
    /// one), delivered `deliveries` times.
    pub fn unattributed_item(
        message_key: &'a str,
        subject: &'a str,
        deliveries: i32,
        error: &'a str,
    ) -> Self {
        Self {
            message_key,
            kind: "item",
            job_id: None,
            item_id: None,
            attempt: None,
            subject,
            deliveries: Some(deliveries),
            error,
        }
    }
}

/// Records a dead letter once (a redelivered message records nothing new).
///
/// # Errors
/// Database errors only.
pub async fn record<'e>(db: impl sqlx::PgExecutor<'e>, d: &DeadLetter<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO dead_letters (message_key, kind, job_id, item_id, attempt, subject, \
         deliveries, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
         ON CONFLICT (message_key) DO NOTHING",
    )
    .bind(d.message_key)
    .bind(d.kind)
    .bind(d.job_id)
    .bind(d.item_id)
    .bind(d.attempt)
    .bind(d.subject)
    .bind(d.deliveries)
    .bind(d.error)
    .execute(db)
    .await?;
    Ok(())
}
