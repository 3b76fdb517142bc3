//! A catalog of malformed jobs and items: each gets a clear error, a dead letter,
//! and a terminated message, and nothing else is disturbed: a good job submitted in the
//! middle of them completes, and ids full of SQL or path metacharacters are plain data.

use std::time::Duration;

use serde_json::{Value, json};
use switchyard_proto::{Item, JobSpec, Routing, Task, codec};
use switchyard_sim::SimConfig;

use crate::support::{Harness, classify_job, mmlu_items};

fn item(id: &str, text: &str) -> Value {
    json!({"item_id": id, "text": text})
}

fn classify(job_id: &str) -> Value {
    json!({"v": 1, "job_id": job_id, "task": {"kind": "classify", "labels": ["A", "B"]},
           "items": [item("1", "Is it A or B?")]})
}

fn enc(v: &Value) -> Vec<u8> {
    codec::encode(v).unwrap()
}

/// `classify(job_id)`, edited.
fn with(job_id: &str, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = classify(job_id);
    edit(&mut v);
    enc(&v)
}

/// Replaces the first occurrence of `from` in `bytes` with `to`.
fn splice(mut bytes: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    let at = bytes
        .windows(from.len())
        .position(|w| w == from)
        .expect("marker present");
    bytes.splice(at..at + from.len(), to.iter().copied());
    bytes
}

/// Every malformed job: (job id on the `Sy-Job-Id` header, payload, expected reason).
fn rejected_cases() -> Vec<(String, Vec<u8>, &'static str)> {
    let good = enc(&classify("x-trunc"));
    let mut nan_spec = JobSpec::new(
        "x-nan",
        Task::Classify {
            labels: vec!["A".into(), "B".into()],
            instructions: None,
        },
    );
    nan_spec.items = Some(vec![Item::new("1", "x")]);
    nan_spec.policy.routing = Routing::Threshold { value: f64::NAN };
    let many_labels: Vec<String> = (0..100_000).map(|i| format!("{i:x}")).collect();
    let mut deep = vec![0x91u8; 100_000]; // [[[[…]]]] a hundred thousand levels deep
    deep.push(0xc0);
    let deep_job = splice(
        enc(
            &json!({"v": 1, "job_id": "x-deep", "task": {"kind": "generate"},
                    "items": [{"item_id": "1", "text": "t", "metadata": {"m": "PLACEHOLDER"}}]}),
        ),
        b"\xabPLACEHOLDER",
        &deep,
    );
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "x-trunc",
            good[..good.len() / 2].to_vec(),
            "not a valid job spec",
        ),
        ("x-empty", Vec::new(), "not a valid job spec"),
        (
            "x-json",
            br#"{"v": 1, "job_id": "x-json"}"#.to_vec(),
            "not a valid job spec",
        ),
        ("x-array", enc(&json!([1, 2, 3])), "not a valid job spec"),
        (
            "x-no-version",
            enc(&json!({"job_id": "x-no-version", "task": {"kind": "generate"}})),
            "no version field",
        ),
        (
            "x-version-text",
            with("x-version-text", |v| v["v"] = json!("1")),
            "not a valid job spec",
        ),
        (
            "x-utf8-text",
            splice(
                with("x-utf8-text", |v| v["items"][0]["text"] = json!("AAAA")),
                b"AAAA",
                b"\xff\xfe\xfd\xfc",
            ),
            "not a valid job spec",
        ),
        (
            "x-utf8-id",
            splice(enc(&classify("ZZZZ")), b"ZZZZ", b"\xc3\x28\xa0\xa1"),
            "not a valid job spec",
        ),
        (
            "x-nul-text",
            with("x-nul-text", |v| v["items"][0]["text"] = json!("a\u{0}b")),
            "contains a NUL byte",
        ),
        (
            "x-ctl-item-id",
            with("x-ctl-item-id", |v| {
                v["items"][0]["item_id"] = json!("a\u{7}b")
            }),
            "contains control characters",
        ),
        (
            "x-nul-job-id",
            enc(&classify("job\u{0}id")),
            "contains control characters",
        ),
        ("x-empty-id", enc(&classify("")), "job_id is empty"),
        (
            "x-huge-id",
            enc(&classify(&"j".repeat(100_000))),
            "job_id is 100000 bytes long (limit 256)",
        ),
        (
            "x-huge-label",
            with("x-huge-label", |v| {
                v["task"]["labels"] = json!(["A", "B".repeat(10_000)]);
            }),
            "is 10000 bytes long (limit 256)",
        ),
        (
            "x-100k-labels",
            with("x-100k-labels", |v| {
                v["task"]["labels"] = json!(many_labels)
            }),
            "has 100000 labels (limit 1000)",
        ),
        (
            "x-dup-labels",
            with("x-dup-labels", |v| {
                v["task"]["labels"] = json!(["yes", "YES"])
            }),
            "appears twice",
        ),
        (
            "x-comma-label",
            with("x-comma-label", |v| {
                v["task"]["labels"] = json!(["a,b", "c"])
            }),
            "contains a comma",
        ),
        (
            "x-huge-instructions",
            with("x-huge-instructions", |v| {
                v["task"]["instructions"] = json!("i".repeat(80_000));
            }),
            "task instructions are 80000 bytes",
        ),
        (
            "x-nan",
            codec::encode(&nan_spec).unwrap(),
            "not a finite number",
        ),
        (
            "x-max-words-0",
            enc(&json!({"v": 1, "job_id": "x-max-words-0",
                        "task": {"kind": "summarize", "max_words": 0}, "items": [item("1", "t")]})),
            "max_words is 0",
        ),
        (
            "x-max-words-negative",
            enc(&json!({"v": 1, "job_id": "x-max-words-negative",
                        "task": {"kind": "summarize", "max_words": -3}, "items": [item("1", "t")]})),
            "not a valid job spec",
        ),
        (
            "x-items-and-input",
            with("x-items-and-input", |v| {
                v["input"] = json!({"bucket": "B", "name": "n"});
            }),
            "sets both `items` and `input`",
        ),
        (
            "x-foreign-bucket",
            enc(
                &json!({"v": 1, "job_id": "x-foreign-bucket", "task": {"kind": "generate"},
                        "input": {"bucket": "OTHER_INPUTS", "name": "n"}}),
            ),
            "is not this deployment's inputs bucket",
        ),
        (
            "x-empty-text",
            with("x-empty-text", |v| v["items"][0]["text"] = json!("")),
            "has empty text",
        ),
        (
            "x-empty-item-id",
            with("x-empty-item-id", |v| v["items"][0]["item_id"] = json!("")),
            "item_id is empty",
        ),
        (
            "x-ctl-team",
            with("x-ctl-team", |v| v["team"] = json!("ops\r\nX-Injected: 1")),
            "team",
        ),
        (
            "x-huge-text",
            with("x-huge-text", |v| {
                v["items"][0]["text"] = json!("t".repeat(900_000))
            }),
            "is 900000 bytes (limit 2000)",
        ),
        ("x-deep", deep_job, "not a valid job spec"),
        (
            "x-items-not-array",
            with("x-items-not-array", |v| v["items"] = json!("all of them")),
            "not a valid job spec",
        ),
        (
            "x-ctl-idempotency",
            with("x-ctl-idempotency", |v| {
                v["idempotency_key"] = json!("k\ny")
            }),
            "idempotency_key",
        ),
    ];
    // Jobs whose policy is bad: (job id, policy, expected reason).
    let bad_policies = [
        (
            "x-negative-budget",
            json!({"routing": {"kind": "budget_usd", "value": "-5"}}),
            "budget_usd -5 is negative",
        ),
        (
            "x-float-budget",
            json!({"routing": {"kind": "budget_usd", "value": 2.5}}),
            "write budgets as decimal strings",
        ),
        (
            "x-share",
            json!({"routing": {"kind": "strong_share", "value": 1.5}}),
            "strong_share 1.5 is outside [0, 1]",
        ),
        (
            "x-threshold",
            json!({"cascade": {"confidence_threshold": 2.0}}),
            "confidence_threshold 2 is outside [0, 1]",
        ),
        (
            "x-shadow",
            json!({"shadow": 3.0}),
            "policy shadow 3 is outside [0, 1]",
        ),
        (
            "x-quality",
            json!({"routing": {"kind": "quality", "value": 0.0}}),
            "policy quality 0 is outside (0, 1]",
        ),
        (
            "x-audit",
            json!({"routing": {"kind": "quality", "value": 0.95}, "audit": 1.5}),
            "policy audit 1.5 is outside [0, 1]",
        ),
        (
            "x-routing-kind",
            json!({"routing": {"kind": "coin_flip"}}),
            "unknown variant `coin_flip`",
        ),
        (
            "x-unknown-tier",
            json!({"models": {"gold": "gpt-4-1106-preview"}}),
            "unknown tier `gold`",
        ),
        (
            "x-wrong-tier-model",
            json!({"models": {"weak": "gpt-4-1106-preview"}}),
            "serves tier `strong`, not `weak`",
        ),
        (
            "x-escalations-300",
            json!({"cascade": {"max_escalations": 300}}),
            "not a valid job spec",
        ),
    ];
    let bad_policies = bad_policies
        .into_iter()
        .map(|(id, policy, reason)| (id, with(id, |v| v["policy"] = policy), reason));
    cases
        .into_iter()
        .chain(bad_policies)
        .map(|(id, payload, reason)| (id.to_owned(), payload, reason))
        .collect()
}

#[tokio::test]
async fn forty_malformed_jobs_get_clear_errors_and_disturb_nothing() {
    let h = Harness::start_with(|s| s.dispatcher.max_item_bytes = 2000, SimConfig::default()).await;
    let cases = rejected_cases();
    assert!(cases.len() >= 40, "{} cases", cases.len());

    // A job id and an idempotency key used twice with different content.
    let first = {
        let mut spec = classify_job(mmlu_items(5), 0.2, 0.0);
        spec.job_id = "x-reused-id".into();
        h.client.submit(spec).await.unwrap()
    };
    let keyed = {
        let mut spec = classify_job(mmlu_items(3), 0.2, 0.0);
        spec.job_id = "x-key-a".into();
        spec.idempotency_key = Some("key-1".into());
        h.client.submit(spec).await.unwrap()
    };
    assert_eq!(h.wait_final(&first, 60).await.job.status, "completed");
    assert_eq!(h.wait_final(&keyed, 60).await.job.status, "completed");

    for (job_id, payload, _) in &cases {
        h.client
            .publish_spec(job_id, job_id, payload.clone())
            .await
            .unwrap();
    }
    let mut reused = classify_job(mmlu_items(6), 0.2, 0.0);
    reused.job_id = "x-reused-id".into();
    h.client
        .publish_spec(
            "x-reused-id",
            "x-reused-id-again",
            codec::encode(&reused).unwrap(),
        )
        .await
        .unwrap();
    let mut rekeyed = classify_job(mmlu_items(4), 0.2, 0.0);
    rekeyed.job_id = "x-key-b".into();
    rekeyed.idempotency_key = Some("key-1".into());
    h.client
        .publish_spec("x-key-b", "x-key-b", codec::encode(&rekeyed).unwrap())
        .await
        .unwrap();
    // Ids full of SQL and path metacharacters are data, nothing more.
    let mut odd = classify_job(
        vec![
            Item::new(
                "'; DROP TABLE items; --",
                "Is water wet?\nA. yes\nB. no\nAnswer:",
            ),
            Item::new("../../etc/passwd", "Is fire cold?\nA. yes\nB. no\nAnswer:"),
            Item::new(
                "ジョブ 🚀 $(rm -rf /) %s %n",
                "Is ice solid?\nA. yes\nB. no\nAnswer:",
            ),
        ],
        0.0,
        0.0,
    );
    odd.job_id = "x'); DELETE FROM ledger; -- ../../".into();
    let odd_id = h.client.submit(odd).await.unwrap();
    let good_id = h
        .client
        .submit(classify_job(mmlu_items(20), 0.2, 0.0))
        .await
        .unwrap();

    for (job_id, _, expected) in &cases {
        h.assert_rejected(job_id, expected).await;
    }
    let rekeyed = h.wait_final("x-key-b", 30).await;
    assert!(
        rekeyed
            .job
            .rejection_reason
            .unwrap_or_default()
            .contains("idempotency key `key-1` was already used by job `x-key-a`")
    );

    // The reused id: the first job stands, untouched; the second submission is a dead letter.
    switchyard_testkit::eventually(
        "reused id dead-lettered",
        Duration::from_secs(30),
        || async {
            let s = h.client.status("x-reused-id").await.unwrap()?;
            s.dead_letters
                .iter()
                .any(|d| d.error.contains("already submitted with different content"))
                .then_some(s)
        },
    )
    .await;
    let s = h.client.status("x-reused-id").await.unwrap().unwrap();
    assert_eq!((s.job.status.as_str(), s.done()), ("completed", 5));

    let odd = h.wait_final(&odd_id, 60).await;
    assert_eq!((odd.job.status.as_str(), odd.done()), ("completed", 3));
    let ids: Vec<String> =
        sqlx::query_scalar("SELECT item_id FROM results WHERE job_id = $1 ORDER BY item_id")
            .bind(&odd_id)
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    assert!(
        ids.contains(&"'; DROP TABLE items; --".to_owned()),
        "{ids:?}"
    );
    assert!(ids.contains(&"../../etc/passwd".to_owned()));
    let good = h.wait_final(&good_id, 60).await;
    assert_eq!((good.job.status.as_str(), good.done()), ("completed", 20));

    // Terminated, not redelivered: nothing is left in the jobs stream or waiting for an ack.
    let jobs_stream = h.fleet.settings.topology().jobs_stream();
    h.stream_emptied(&jobs_stream, "jobs stream empty", 10)
        .await;
    h.finish().await;
}

#[tokio::test]
async fn a_job_over_the_message_size_limit_is_refused_at_the_door() {
    let h = Harness::start().await;
    // A million labels: several megabytes, refused by NATS before any dispatcher sees it.
    let labels: Vec<String> = (0..1_000_000).map(|i| format!("label-{i}")).collect();
    let spec = json!({"v": 1, "job_id": "x-million-labels",
                      "task": {"kind": "classify", "labels": labels}, "items": [item("1", "x")]});
    let err = h
        .client
        .publish_spec("x-million-labels", "x-million-labels", enc(&spec))
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("max payload"), "{err:#}");
    // Nothing else is disturbed.
    h.a_small_job_completes().await;
    assert!(h.client.status("x-million-labels").await.unwrap().is_none());
    h.finish().await;
}

#[tokio::test]
async fn garbage_on_a_work_subject_is_dead_lettered_once() {
    let h = Harness::start().await;
    let t = h.fleet.settings.topology();
    let js = h.nats.js();
    for payload in [&b"\xc1\xc1"[..], b"", b"{\"json\": 1}"] {
        js.publish(t.work_subject("weak"), payload.to_vec().into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    switchyard_testkit::eventually("three dead letters", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dead_letters WHERE error LIKE 'work message is not a valid work item%'",
        )
        .fetch_one(&h.db.pool)
        .await
        .ok()?;
        (n == 3).then_some(())
    })
    .await;
    h.a_small_job_completes().await;
    h.finish().await;
}

/// A job still ingesting (its dispatcher mid-way, or between two deliveries of its message)
/// is not ended by other messages that name its id: a malformed one, and one of another
/// content. Each gets its dead letter; the job stays as it was.
#[tokio::test]
async fn messages_naming_an_ingesting_job_s_id_do_not_reject_it() {
    let h = Harness::start().await;
    sqlx::query(
        "INSERT INTO jobs (job_id, team, project, status, spec_hash) \
         VALUES ('x-ingesting', 'team-e2e', 'proj', 'ingesting', 'its-own-hash')",
    )
    .execute(&h.db.pool)
    .await
    .unwrap();
    h.client
        .publish_spec(
            "x-ingesting",
            "x-ingesting-garbage",
            b"\xc1 not a job".to_vec(),
        )
        .await
        .unwrap();
    let mut other = classify_job(mmlu_items(2), 0.2, 0.0);
    other.job_id = "x-ingesting".into();
    h.client
        .publish_spec(
            "x-ingesting",
            "x-ingesting-other",
            codec::encode(&other).unwrap(),
        )
        .await
        .unwrap();
    switchyard_testkit::eventually("two dead letters", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dead_letters WHERE job_id = 'x-ingesting' AND kind = 'job'",
        )
        .fetch_one(&h.db.pool)
        .await
        .ok()?;
        (n == 2).then_some(())
    })
    .await;
    let (status, reason): (String, Option<String>) =
        sqlx::query_as("SELECT status, rejection_reason FROM jobs WHERE job_id = 'x-ingesting'")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), reason), ("ingesting", None));
    h.a_small_job_completes().await;
    h.finish().await;
}

/// Work messages of another client whose names hold a NUL byte (Postgres `text` cannot
/// store it) are dead-lettered alone, naming the field; claims grouped with them, and the
/// jobs running meanwhile, are not disturbed.
#[tokio::test]
async fn a_foreign_work_message_postgres_cannot_store_is_refused_alone() {
    let h = Harness::start().await;
    let t = h.fleet.settings.topology();
    let js = h.nats.js();
    let rogue = |job_id: &str, item_id: &str, team: &str| switchyard_proto::WorkItem {
        team: team.into(),
        ..crate::support::foreign_work_item(job_id, item_id, "weak")
    };
    for m in [
        rogue("job\0x", "i-1", "team-e2e"),
        rogue("job-x", "i\0-2", "team-e2e"),
        rogue("job-x", "i-3", "team\0e2e"),
    ] {
        js.publish(
            t.work_subject("weak"),
            switchyard_proto::codec::encode(&m).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    h.a_small_job_completes().await;
    let errors: Vec<String> = switchyard_testkit::eventually(
        "three dead letters",
        Duration::from_secs(30),
        || async {
            let errors: Vec<String> = sqlx::query_scalar(
                "SELECT error FROM dead_letters WHERE error LIKE '%holds a NUL byte%' ORDER BY error",
            )
            .fetch_all(&h.db.pool)
            .await
            .ok()?;
            (errors.len() == 3).then_some(errors)
        },
    )
    .await;
    for (error, field) in errors.iter().zip(["item_id", "job_id", "team"]) {
        assert!(error.contains(&format!("`{field}`")), "{error}");
    }
    h.finish().await;
}

#[tokio::test]
async fn a_message_of_a_newer_version_is_left_for_a_newer_worker_not_terminated_at_sight() {
    // What a rolling upgrade looks like to a worker that is not upgraded yet: a work message
    // written by a newer version. It is offered again (after `ack_wait`) for a newer worker
    // while deliveries last; only then is it a dead letter, naming the version.
    let h = Harness::start_with(
        |s| {
            s.worker.ack_wait = Duration::from_secs(1);
            s.worker.max_deliver = 3;
        },
        switchyard_sim::SimConfig::default(),
    )
    .await;
    let t = h.fleet.settings.topology();
    #[derive(serde::Serialize)]
    struct Newer<'a> {
        v: u16,
        job_id: &'a str,
        item_id: &'a str,
        attempt: u16,
        hologram: &'a str,
    }
    let payload = switchyard_proto::codec::encode(&Newer {
        v: switchyard_proto::MAX_VERSION + 1,
        job_id: "from-the-future",
        item_id: "1",
        attempt: 0,
        hologram: "a field this build does not know",
    })
    .unwrap();
    h.nats
        .js()
        .publish(t.work_subject("weak"), payload.into())
        .await
        .unwrap()
        .await
        .unwrap();
    let (deliveries, error): (Option<i32>, String) = switchyard_testkit::eventually(
        "the newer message's dead letter",
        Duration::from_secs(30),
        || async {
            sqlx::query_as("SELECT deliveries, error FROM dead_letters WHERE kind = 'item'")
                .fetch_optional(&h.db.pool)
                .await
                .ok()?
        },
    )
    .await;
    assert_eq!(
        deliveries,
        Some(3),
        "offered on every delivery first: {error}"
    );
    assert!(error.contains("unsupported message version"), "{error}");
    h.a_small_job_completes().await;
    h.finish().await;
}
