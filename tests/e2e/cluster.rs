//! Scale-out on a real cluster: three NATS nodes on loopback, streams with 3 replicas,
//! workers attached to different nodes; one node is killed mid-job and the job still
//! completes with nothing lost.

use std::time::Duration;

use switchyard_demo::fleet::Fleet;
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;
use switchyard_sim::SimConfig;
use switchyard_testkit::TestDb;
use switchyard_testkit::cluster::NatsCluster;

use crate::support::{classify_job, data, mmlu_items};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_survives_losing_one_of_three_nats_nodes() {
    let mut cluster = NatsCluster::start(3).await;
    let db = TestDb::new().await;
    let mut settings = Settings::demo();
    settings.nats.url = cluster.url_list();
    settings.nats.prefix = format!("c{}", &db.name[8..]);
    settings.nats.replicas = switchyard_runtime::settings::count(3);
    settings.nats.storage = StorageKind::File;
    settings.database.url = secrecy::SecretString::from(db.url.clone());
    settings.worker.ack_wait = Duration::from_secs(5);
    let sim = SimConfig {
        latency: Duration::from_millis(10),
        ..SimConfig::default()
    };
    let mut fleet = Fleet::start(settings, Some((data(), sim)))
        .await
        .expect("fleet starts on the cluster");
    // Move the work to workers attached to nodes 1 and 2 only.
    let tiers: Vec<String> = fleet.settings.tiers.keys().cloned().collect();
    fleet
        .start_worker_on(&cluster.urls[1], tiers.clone())
        .await
        .unwrap();
    fleet
        .start_worker_on(&cluster.urls[2], tiers)
        .await
        .unwrap();
    fleet.stop_worker(0).await.unwrap();

    let client = fleet.client();
    let n = 400;
    let job_id = client
        .submit(classify_job(mmlu_items(n), 0.2, 0.6))
        .await
        .unwrap();
    switchyard_testkit::eventually("some items answered", Duration::from_secs(60), || async {
        let s = client.status(&job_id).await.ok()??;
        (s.done() >= 60).then_some(())
    })
    .await;
    let before = client.status(&job_id).await.unwrap().unwrap();
    assert!(
        before.done() < n as i64,
        "the job finished before the node was killed"
    );
    cluster.kill(0);

    let status = match client
        .wait(
            &job_id,
            Some(Duration::from_secs(120)),
            Duration::from_secs(10),
            |_| {},
        )
        .await
        .unwrap()
    {
        switchyard_client::WaitOutcome::Finished(s) => *s,
        other => panic!("job did not finish after a node was killed: {other:?}"),
    };
    assert_eq!(
        status.job.status, "completed",
        "failed items: {:?}",
        status.dead_letters
    );
    assert_eq!(status.done(), n as i64);
    let (rows, distinct) =
        switchyard_testkit::ledger::rows_and_distinct_calls(&db.pool, &job_id).await;
    assert_eq!(rows, distinct, "a call was booked twice");
    let finals: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM items i JOIN results r ON r.job_id = i.job_id AND r.item_id = i.item_id \
         AND r.attempt = i.final_attempt WHERE i.job_id = $1 AND i.status = 'done'",
    )
    .bind(&job_id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(finals, n as i64);
    fleet.stop().await;
    drop(db);
}

#[tokio::test]
async fn a_process_that_starts_while_nats_restarts_waits_for_jetstream() {
    // A worker restarted just as nats-server was killed and started again (chaos saw it)
    // exited with "cannot create stream: jetstream request timed out"; it waits instead,
    // bounded, as it does for Postgres.
    let mut nats = switchyard_testkit::server::NatsServer::with_args(&[]).await;
    let mut settings = Settings::demo();
    settings.nats.url = nats.url.clone();
    let client = switchyard_runtime::nats::connect(&settings, "restart-test")
        .await
        .unwrap();
    // Requests that give up after half a second, so that a short outage makes them time
    // out as a JetStream still recovering its store does.
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(500))
        .build(client);
    let (streams_js, streams_settings) = (js.clone(), settings.clone());
    let made = across_an_outage(&mut nats, async move {
        switchyard_runtime::nats::ensure_streams(&streams_js, &streams_settings).await
    })
    .await;
    made.expect("the streams are made once JetStream is back");

    // A lane starting right after, as the server goes away again: its consumer waits too
    // (it used to fail with "cannot create consumer: timed out").
    let spec = switchyard_runtime::nats::worker_consumer_spec(&settings, "weak");
    let consumer = across_an_outage(&mut nats, async move {
        switchyard_runtime::nats::ensure_consumer(&js, &spec).await
    })
    .await;
    consumer.expect("the consumer is made once JetStream is back");
}

/// Runs `start_up` while `nats` is down for three seconds (six of the test's request
/// timeouts), then back on the same port and store; returns what it returned (within a
/// minute).
async fn across_an_outage<T: Send + 'static>(
    nats: &mut switchyard_testkit::server::NatsServer,
    start_up: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    nats.stop();
    let started = tokio::spawn(start_up);
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.resume().await.unwrap();
    tokio::time::timeout(Duration::from_secs(60), started)
        .await
        .expect("the start-up returns once the server is back")
        .unwrap()
}
