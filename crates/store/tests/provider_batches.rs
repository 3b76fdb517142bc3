//! Provider batch records over a real Postgres: an attempt is in at most one open line (a
//! redelivered message records nothing new), a batch with nothing new is not kept, the
//! provider's ids are recorded once, and a batch whose worker died is taken over by exactly
//! one other.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::time::Duration;

use chrono::Utc;
use switchyard_store::provider_batches::{self as pb, NewBatch, NewLine};
use switchyard_testkit::TestDb;

mod common;

fn line(call: &str, item: &str) -> NewLine {
    common::batch_line(call, "job", item)
}

fn models() -> Vec<String> {
    vec!["m".to_owned()]
}

fn batch(id: &str, lines: Vec<NewLine>) -> NewBatch {
    NewBatch {
        batch_id: id.to_owned(),
        model: "m".to_owned(),
        provider: "openai".to_owned(),
        deadline: Utc::now() + chrono::Duration::hours(24),
        lines,
    }
}

#[tokio::test]
async fn an_attempt_is_in_one_open_line_and_a_dead_worker_s_batch_is_taken_over_once() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let lease = Duration::from_secs(60);
    let first = pb::record(
        pool,
        &batch("pb_1", vec![line("c1", "a"), line("c2", "b")]),
        "w1",
        lease,
    )
    .await
    .unwrap();
    assert_eq!(first, ["c1", "c2"]);
    // The same attempts again (redelivered messages, another worker): only `c` is new.
    let second = pb::record(
        pool,
        &batch("pb_2", vec![line("c3", "a"), line("c4", "c")]),
        "w2",
        lease,
    )
    .await
    .unwrap();
    assert_eq!(second, ["c4"]);
    // Nothing new: no batch is kept.
    let none = pb::record(pool, &batch("pb_3", vec![line("c5", "b")]), "w2", lease)
        .await
        .unwrap();
    assert!(none.is_empty());
    let kept: i64 = sqlx::query_scalar("SELECT count(*) FROM provider_batches")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(kept, 2);

    // Both are leased to their creators: nobody else takes them.
    assert!(
        pb::claim_due(pool, "w3", lease, &models())
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        pb::submitted(pool, "pb_1", "batch_abc", Some("file_1"), Duration::ZERO)
            .await
            .unwrap()
    );
    assert!(
        !pb::submitted(pool, "pb_1", "batch_abc", Some("file_1"), Duration::ZERO)
            .await
            .unwrap(),
        "recorded once"
    );
    // pb_1 is due for a look at once; pb_2's creator "dies" (its lease runs out).
    sqlx::query("UPDATE provider_batches SET lease_until = now() - interval '1 second' WHERE batch_id = 'pb_2'")
        .execute(pool)
        .await
        .unwrap();
    let served = models();
    let (a, b) = tokio::join!(
        pb::claim_due(pool, "w3", lease, &served),
        pb::claim_due(pool, "w4", lease, &served)
    );
    let mut taken: Vec<String> = [a.unwrap(), b.unwrap()]
        .into_iter()
        .flatten()
        .map(|r| r.batch_id)
        .collect();
    taken.sort();
    assert_eq!(taken, ["pb_1", "pb_2"], "each taken by exactly one worker");
    assert!(
        pb::claim_due(pool, "w5", lease, &models())
            .await
            .unwrap()
            .is_none()
    );

    // Closing lines frees their attempts; an ended batch is never due again.
    assert_eq!(
        pb::close_lines(pool, "pb_1", &["c1".to_owned()], true)
            .await
            .unwrap(),
        1
    );
    let open = pb::open_lines(pool, "pb_1").await.unwrap();
    let open: Vec<(&str, &str)> = open
        .iter()
        .map(|l| (l.call_id.as_str(), l.item_id.as_str()))
        .collect();
    assert_eq!(open, [("c2", "b")]);
    let again = pb::record(pool, &batch("pb_4", vec![line("c6", "a")]), "w1", lease)
        .await
        .unwrap();
    assert_eq!(
        again,
        ["c6"],
        "a booked line's attempt may be sent again (a retry)"
    );
    pb::end(pool, "pb_1", Some("file_out"), None, false)
        .await
        .unwrap();
    sqlx::query("UPDATE provider_batches SET lease_until = NULL")
        .execute(pool)
        .await
        .unwrap();
    let mut due = Vec::new();
    for _ in 0..4 {
        match pb::claim_due(pool, "w6", lease, &models()).await.unwrap() {
            Some(r) => due.push(r.batch_id),
            None => break,
        }
    }
    due.sort();
    assert_eq!(due, ["pb_2", "pb_4"]);
}

#[tokio::test]
async fn the_batch_queue_holds_the_tokens_of_open_lines_in_submitted_batches_only() {
    let db = TestDb::new().await;
    let pool = &db.pool;
    let lease = Duration::from_secs(60);
    pb::record(
        pool,
        &batch("pb_q1", vec![line("c1", "i1"), line("c2", "i2")]),
        "w",
        lease,
    )
    .await
    .unwrap();
    pb::record(pool, &batch("pb_q2", vec![line("c3", "i3")]), "w", lease)
        .await
        .unwrap();
    assert_eq!(
        pb::enqueued_tokens(pool, "m").await.unwrap(),
        0,
        "nothing sent yet"
    );
    assert!(
        pb::submitted(pool, "pb_q1", "batch_q1", None, Duration::ZERO)
            .await
            .unwrap()
    );
    assert_eq!(pb::enqueued_tokens(pool, "m").await.unwrap(), 200);
    assert_eq!(pb::enqueued_tokens(pool, "other").await.unwrap(), 0);
    // A booked line leaves the queue.
    pb::close_lines(pool, "pb_q1", &["c1".to_owned()], true)
        .await
        .unwrap();
    assert_eq!(pb::enqueued_tokens(pool, "m").await.unwrap(), 100);
}
