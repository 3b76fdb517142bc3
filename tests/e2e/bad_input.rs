//! Bad jobs are rejected with a reason stored on the job, their messages terminated (not
//! redelivered forever), and nothing else is disturbed.

use serde_json::json;
use switchyard_proto::Item;
use switchyard_sim::SimConfig;

use crate::support::{Harness, classify_job, mmlu_items};

fn item(id: &str, text: &str) -> serde_json::Value {
    json!({"item_id": id, "text": text})
}

fn classify(job_id: &str, items: Vec<serde_json::Value>) -> serde_json::Value {
    json!({"v": 1, "job_id": job_id, "task": {"kind": "classify", "labels": ["A", "B"]}, "items": items})
}

#[tokio::test]
async fn each_bad_job_is_rejected_with_its_reason_and_good_jobs_still_run() {
    let h = Harness::start_with(|s| s.dispatcher.max_item_bytes = 2000, SimConfig::default()).await;
    let big = "x".repeat(3000);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("bad-not-msgpack", b"\xc1 this is not msgpack".to_vec(), "not a valid job spec"),
        (
            "bad-version",
            switchyard_proto::codec::encode(&json!({"v": 99, "job_id": "bad-version"})).unwrap(),
            "unsupported message version 99",
        ),
        (
            "bad-missing",
            switchyard_proto::codec::encode(&json!({"v": 1, "job_id": "bad-missing"})).unwrap(),
            "missing field `task`",
        ),
        (
            "bad-task",
            switchyard_proto::codec::encode(&json!({"v": 1, "job_id": "bad-task", "task": {"kind": "translate"}, "items": [item("1", "x")]})).unwrap(),
            "unknown variant `translate`",
        ),
        ("bad-no-items", switchyard_proto::codec::encode(&classify("bad-no-items", vec![])).unwrap(), "no items"),
        (
            "bad-too-big",
            switchyard_proto::codec::encode(&classify("bad-too-big", vec![item("1", "ok"), item("2", &big)])).unwrap(),
            "item \"2\" is 3000 bytes (limit 2000)",
        ),
        (
            "bad-dup",
            switchyard_proto::codec::encode(&classify("bad-dup", vec![item("1", "a"), item("2", "b"), item("1", "c")])).unwrap(),
            "duplicate item_id \"1\"",
        ),
        (
            "bad-labels",
            switchyard_proto::codec::encode(&json!({"v": 1, "job_id": "bad-labels", "task": {"kind": "classify", "labels": []}, "items": [item("1", "x")]})).unwrap(),
            "no labels",
        ),
        (
            "bad-model",
            switchyard_proto::codec::encode(&json!({"v": 1, "job_id": "bad-model", "task": {"kind": "generate"}, "items": [item("1", "x")], "policy": {"models": {"weak": "gpt-99"}}})).unwrap(),
            "unknown model `gpt-99`",
        ),
        (
            "bad-sensitivity",
            switchyard_proto::codec::encode(&classify("bad-sensitivity", vec![json!({"item_id": "1", "text": "x", "sensitivity": "top-secret"})])).unwrap(),
            "unknown sensitivity",
        ),
    ];
    let good = classify_job(mmlu_items(20), 0.2, 0.0);
    for (job_id, payload, _) in &cases {
        h.client
            .publish_spec(job_id, job_id, payload.clone())
            .await
            .unwrap();
    }
    let good_id = h.client.submit(good).await.unwrap();

    for (job_id, _, expected) in &cases {
        h.assert_rejected(job_id, expected).await;
    }
    let good = h.wait_final(&good_id, 60).await;
    assert_eq!(good.job.status, "completed");
    assert_eq!(good.done(), 20);

    // Terminated, not redelivered: the jobs stream is empty and nothing waits for an ack.
    let js = h.nats.js();
    let t = h.fleet.settings.topology();
    h.stream_emptied(&t.jobs_stream(), "jobs stream empty", 10)
        .await;
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(t.jobs_stream())
        .await
        .unwrap()
        .get_consumer("dispatcher")
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!((info.num_pending, info.num_ack_pending), (0, 0));
    // And each rejected payload is on the dead-letter subject.
    let mut dlq = js.get_stream(t.dlq_stream()).await.unwrap();
    assert_eq!(dlq.info().await.unwrap().state.messages, cases.len() as u64);
    h.finish().await;
}

#[tokio::test]
async fn an_input_object_that_is_not_there_is_a_rejection() {
    let h = Harness::start().await;
    let bucket = h.fleet.settings.topology().inputs_bucket();
    let spec = json!({"v": 1, "job_id": "bad-object", "task": {"kind": "generate"}, "input": {"bucket": bucket, "name": "nope"}});
    h.client
        .publish_spec(
            "bad-object",
            "bad-object",
            switchyard_proto::codec::encode(&spec).unwrap(),
        )
        .await
        .unwrap();
    let s = h.wait_final("bad-object", 30).await;
    assert_eq!(s.job.status, "rejected");
    assert!(
        s.job
            .rejection_reason
            .unwrap()
            .contains("input object `nope` not found")
    );
    // A good item list still works afterwards.
    let id = h
        .client
        .submit(classify_job(
            vec![Item::new("x", "Is water wet?\nA. yes\nB. no\nAnswer:")],
            0.0,
            0.0,
        ))
        .await
        .unwrap();
    assert_eq!(h.wait_final(&id, 30).await.job.status, "completed");
    h.finish().await;
}
