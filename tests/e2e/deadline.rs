//! Jobs with a deadline: the dispatcher fixes it once, every work message of the job carries
//! it (escalations included) at the message version whose readers know it, and `status`
//! shows it; a deadline out of range is refused with its reason.

use std::time::Duration;

use futures::StreamExt;
use switchyard_proto::{DEADLINE_VERSION, WorkItem, codec};

use crate::support::{Harness, classify_job, mmlu_items};

#[tokio::test]
async fn every_attempt_of_a_job_with_a_deadline_carries_the_instant_fixed_at_admission() {
    let h = Harness::start().await;
    let t = h.fleet.settings.topology();
    // A core subscription sees every message published to the work stream's subjects.
    let mut seen = h.client.nats.subscribe(t.work_subject("*")).await.unwrap();
    h.client.nats.flush().await.unwrap();
    let n = 40;
    // Half strong, and every weak answer escalates: first attempts and escalations.
    let spec = classify_job(mmlu_items(n), 0.5, 1.0).with_deadline(86_400);
    let job_id = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job_id, 60).await;
    assert_eq!(status.job.status, "completed");
    assert!(
        status.escalated > 0,
        "the cascade ran: {}",
        status.escalated
    );

    let deadline_at = status.job.deadline_at.expect("the job has a deadline");
    let window = deadline_at - status.job.created_at;
    assert!(
        (window.num_seconds() - 86_400).abs() <= 5,
        "24 h after admission: {window}"
    );
    let expected = u64::try_from(deadline_at.timestamp()).unwrap();
    let wanted = n + usize::try_from(status.escalated).unwrap();
    let mut messages = Vec::new();
    while messages.len() < wanted {
        let msg = tokio::time::timeout(Duration::from_secs(10), seen.next())
            .await
            .expect("every published message is seen")
            .unwrap();
        messages.push(codec::decode::<WorkItem>(&msg.payload).unwrap());
    }
    for m in &messages {
        assert_eq!(m.job_id, job_id);
        assert_eq!(m.v, DEADLINE_VERSION, "{} attempt {}", m.item_id, m.attempt);
        assert_eq!(
            m.deadline,
            Some(expected),
            "{} attempt {}",
            m.item_id,
            m.attempt
        );
    }
    assert!(
        messages.iter().any(|m| m.attempt > 0),
        "escalations carry it too"
    );
    let shown = switchyard_client::report::render_status(&status);
    assert!(shown.contains("deadline "), "{shown}");

    // A job without one is as before: no deadline, the first version.
    let plain = h
        .client
        .submit(classify_job(mmlu_items(3), 0.0, 0.0))
        .await
        .unwrap();
    assert_eq!(h.wait_final(&plain, 60).await.job.deadline_at, None);
    let m = tokio::time::timeout(Duration::from_secs(10), seen.next())
        .await
        .unwrap()
        .unwrap();
    let m: WorkItem = codec::decode(&m.payload).unwrap();
    assert_eq!(
        (m.v, m.deadline),
        (switchyard_proto::PROTOCOL_VERSION, None)
    );
    h.finish().await;
}

#[tokio::test]
async fn a_deadline_out_of_range_is_refused_with_its_reason() {
    let h = Harness::start().await;
    let spec = classify_job(mmlu_items(3), 0.0, 0.0).with_deadline(5);
    let job_id = h.client.submit(spec).await.unwrap();
    h.assert_rejected(&job_id, "deadline is 5 s").await;
    h.a_small_job_completes().await;
    h.finish().await;
}
