//! The Batch API over real NATS and Postgres, through HTTP: keys, files, batch creation and
//! the background check of a batch's file, team isolation, bad input in OpenAI's shape.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

mod common;
use common::{good_file, request_line, server};

#[tokio::test]
async fn keys_guard_every_route_in_openais_error_shape() {
    let s = server(1 << 20).await;
    for (key, what) in [("", "no key"), ("sy-nope", "a wrong key")] {
        let (status, body) = s.get(key, "/files").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}");
        assert_eq!(
            body["error"]["type"], "invalid_request_error",
            "{what}: {body}"
        );
        assert!(body["error"]["message"].as_str().unwrap().len() > 5);
    }
    // A revoked key stops working.
    let (row, secret) = switchyard_api::keys::create(&s.pool, "a", None)
        .await
        .unwrap();
    assert_eq!(s.get(&secret, "/files").await.0, StatusCode::OK);
    assert!(
        switchyard_store::api::revoke_key(&s.pool, &row.key_id)
            .await
            .unwrap()
    );
    assert_eq!(s.get(&secret, "/files").await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn files_are_stored_listed_read_and_deleted_per_team() {
    let s = server(1 << 20).await;
    let a = s.key("team-a").await;
    let b = s.key("team-b").await;
    let bytes = good_file(3);
    let (status, f) = s.upload(&a, "batch", bytes.clone()).await;
    assert_eq!(status, StatusCode::OK, "{f}");
    assert_eq!(f["object"], "file");
    assert_eq!(f["purpose"], "batch");
    assert_eq!(f["bytes"], bytes.len());
    assert_eq!(f["filename"], "requests.jsonl");
    let id = f["id"].as_str().unwrap().to_owned();

    let (status, got) = s.get(&a, &format!("/files/{id}")).await;
    assert_eq!((status, &got), (StatusCode::OK, &f));
    let content = s
        .http
        .get(format!("{}/files/{id}/content", s.base))
        .bearer_auth(&a)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(content.as_ref(), bytes.as_slice());

    // Another team sees nothing of it.
    assert_eq!(
        s.get(&b, &format!("/files/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.get(&b, "/files").await.1["data"], json!([]));

    // Lists are newest first and page with `after`.
    let (_, second) = s.upload(&a, "batch", good_file(1)).await;
    let (_, page) = s.get(&a, "/files?limit=1").await;
    assert_eq!(page["data"][0]["id"], second["id"]);
    assert_eq!(page["has_more"], true);
    let (_, rest) = s
        .get(
            &a,
            &format!("/files?limit=1&after={}", page["last_id"].as_str().unwrap()),
        )
        .await;
    assert_eq!(rest["data"][0]["id"], f["id"]);
    assert_eq!(rest["has_more"], false);

    let (status, deleted) = s
        .call(&a, reqwest::Method::DELETE, &format!("/files/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        deleted,
        json!({"id": id, "object": "file", "deleted": true})
    );
    assert_eq!(
        s.get(&a, &format!("/files/{id}")).await.0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn bad_uploads_are_refused_and_leave_nothing() {
    let s = server(1000).await;
    let a = s.key("team-a").await;
    let (status, body) = s.upload(&a, "fine-tune", good_file(1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["param"], "purpose");
    let (status, body) = s.upload(&a, "batch", vec![b'x'; 5000]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "file_too_large");
    // A `purpose` of 100 KB is refused as it streams in (the upload limit guards the file).
    let (status, body) = s.upload(&a, &"b".repeat(100_000), good_file(1)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["param"], "purpose");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than 64 bytes"),
        "{body}"
    );
    assert_eq!(s.get(&a, "/files").await.1["data"], json!([]));
    // The server still serves.
    assert_eq!(s.upload(&a, "batch", good_file(1)).await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_batch_answers_validating_and_its_file_is_checked_in_the_background() {
    let s = server(1 << 20).await;
    let a = s.key("team-a").await;
    let (_, f) = s.upload(&a, "batch", good_file(3)).await;
    let (status, batch) = s.create_batch(&a, f["id"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["status"], "validating");
    assert_eq!(batch["metadata"], json!({"run": "nightly"}));
    assert_eq!(
        batch["expires_at"].as_i64().unwrap() - batch["created_at"].as_i64().unwrap(),
        86_400
    );
    let id = batch["id"].as_str().unwrap();
    let checked = s.checked(&a, id).await;
    assert_eq!(checked["request_counts"]["total"], 3, "{checked}");
    assert_eq!(checked["errors"], Value::Null);

    // A file with faults fails its batch, each fault with its line.
    let bad = format!(
        "{}\nnot json\n{}\n{}\n",
        request_line("a"),
        request_line("a"),
        json!({"custom_id": "u", "method": "POST", "url": "/v1/embeddings", "body": {}})
    );
    let (_, f) = s.upload(&a, "batch", bad.into_bytes()).await;
    let (_, batch) = s.create_batch(&a, f["id"].as_str().unwrap()).await;
    let failed = s.checked(&a, batch["id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert!(failed["failed_at"].is_i64());
    let faults: Vec<(i64, &str)> = failed["errors"]["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["line"].as_i64().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    assert_eq!(
        faults,
        [
            (2, "invalid_json_line"),
            (3, "duplicate_custom_id"),
            (4, "mismatched_endpoint")
        ]
    );
    // Bytes that are not text are a fault of their line too.
    let (_, f) = s.upload(&a, "batch", vec![0xff, 0xfe, b'\n']).await;
    let (_, batch) = s.create_batch(&a, f["id"].as_str().unwrap()).await;
    let failed = s.checked(&a, batch["id"].as_str().unwrap()).await;
    assert_eq!(failed["errors"]["data"][0]["line"], 1, "{failed}");
}

#[tokio::test]
async fn batch_requests_are_checked_listed_cancelled_and_kept_per_team() {
    let s = server(1 << 20).await;
    let a = s.key("team-a").await;
    let b = s.key("team-b").await;
    let (_, f) = s.upload(&a, "batch", good_file(1)).await;
    let file_id = f["id"].as_str().unwrap();
    let bad = |field: &str, value: Value| {
        let mut body = json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                              "completion_window": "24h"});
        body[field] = value;
        body
    };
    for (field, value) in [
        ("completion_window", json!("48h")),
        ("endpoint", json!("/v1/embeddings")),
        (
            "metadata",
            json!(
                (0..17)
                    .map(|i| (format!("k{i}"), json!("v")))
                    .collect::<serde_json::Map<_, _>>()
            ),
        ),
    ] {
        let (status, body) = s.post(&a, "/batches", bad(field, value)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}: {body}");
        assert_eq!(body["error"]["param"], field);
    }
    let (status, body) = s.post(&a, "/batches", json!({"nonsense": true})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Another team's file is not there for this key.
    let (status, _) = s.create_batch(&b, file_id).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let mut ids = Vec::new();
    for _ in 0..3 {
        let (_, batch) = s.create_batch(&a, file_id).await;
        ids.push(batch["id"].as_str().unwrap().to_owned());
    }
    let (_, page) = s.get(&a, "/batches?limit=2").await;
    let listed: Vec<&str> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()]);
    assert_eq!(
        (page["first_id"].as_str(), page["has_more"].as_bool()),
        (Some(ids[2].as_str()), Some(true))
    );
    let (_, rest) = s.get(&a, &format!("/batches?after={}", ids[1])).await;
    assert_eq!(rest["data"][0]["id"], ids[0]);
    assert_eq!(rest["has_more"], false);
    assert_eq!(s.get(&b, "/batches").await.1["data"], json!([]));
    assert_eq!(
        s.get(&b, &format!("/batches/{}", ids[0])).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        s.get(&a, "/batches?limit=0").await.0,
        StatusCode::BAD_REQUEST
    );

    // Cancelling a batch still being checked ends it at once; one already handed to the fleet
    // (no dispatcher runs here, so its job is never admitted) waits `cancelling` for its job
    // to stop. Cancelling again changes nothing.
    let (status, cancelled) = s
        .post(&a, &format!("/batches/{}/cancel", ids[0]), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let now = cancelled["status"].as_str().unwrap();
    assert!(now == "cancelled" || now == "cancelling", "{cancelled}");
    assert!(cancelled["cancelling_at"].is_i64(), "{cancelled}");
    let (_, again) = s
        .post(&a, &format!("/batches/{}/cancel", ids[0]), json!({}))
        .await;
    assert_eq!(again["cancelling_at"], cancelled["cancelling_at"]);
    assert_eq!(again["cancelled_at"], cancelled["cancelled_at"]);
    assert_eq!(
        s.post(&b, &format!("/batches/{}/cancel", ids[1]), json!({}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_validation_whose_process_died_is_taken_over() {
    let s = server(1 << 20).await;
    let a = s.key("team-a").await;
    let (_, f) = s.upload(&a, "batch", good_file(2)).await;
    let (key, _) = switchyard_store::api::list_keys(&s.pool, Some("team-a"))
        .await
        .unwrap()
        .into_iter()
        .map(|k| (k.key_id, k.team))
        .next()
        .unwrap();
    // A batch created by a process that died at once: validating, its lease already over,
    // nobody checking its file.
    let orphan = switchyard_store::api::insert_batch(
        &s.pool,
        &switchyard_store::api::NewBatch {
            batch_id: "batch_orphan",
            team: "team-a",
            key_id: &key,
            input_file_id: f["id"].as_str().unwrap(),
            endpoint: "/v1/chat/completions",
            completion_window: "24h",
            metadata: None,
            window: Duration::from_secs(86_400),
        },
        "api-dead",
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(orphan.status, "validating");
    let checked = s.checked(&a, "batch_orphan").await;
    assert_eq!(checked["request_counts"]["total"], 2, "{checked}");
}
