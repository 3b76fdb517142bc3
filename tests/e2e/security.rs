//! Security: the fleet on a nats-server with authentication and per-user
//! permissions; a job's team is the submitter's NATS identity; a team cannot submit or read
//! results as another; local_only items never leave the local tiers.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use secrecy::SecretString;
use serde_json::{Value, json};
use switchyard_demo::fleet::Fleet;
use switchyard_proto::topology::{HEADER_JOB_ID, HEADER_MSG_ID};
use switchyard_proto::{Item, codec, teams};
use switchyard_runtime::Settings;
use switchyard_runtime::settings::StorageKind;
use switchyard_sim::{Faults, SimConfig};
use switchyard_testkit::TestDb;
use switchyard_testkit::server::NatsServer;
use tokio_util::sync::CancellationToken;

use crate::support::{Harness, classify_job, data, mmlu_items};

/// The error of a connection the server refuses, as it is printed.
async fn refused(settings: &Settings) -> String {
    let err = switchyard_runtime::nats::connect(settings, "t")
        .await
        .unwrap_err();
    format!("{err:#}")
}

async fn connect_as(url: &str, user: &str, password: &str) -> Result<async_nats::Client, String> {
    async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .custom_inbox_prefix(switchyard::security_cli::inbox_prefix(user))
        .request_timeout(Some(Duration::from_secs(2)))
        .connect(url)
        .await
        .map_err(|e| e.to_string())
}

/// Publishes a job spec on `subject` and waits for the JetStream ack (2 s at most).
async fn submit_on(
    client: &async_nats::Client,
    subject: &str,
    spec: &switchyard_proto::JobSpec,
) -> Result<(), String> {
    let js = async_nats::jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_MSG_ID, format!("job:{}", spec.job_id).as_str());
    headers.insert(HEADER_JOB_ID, spec.job_id.as_str());
    let ack = js
        .publish_with_headers(
            subject.to_owned(),
            headers,
            codec::encode(spec).unwrap().into(),
        )
        .await
        .map_err(|e| e.to_string())?;
    ack.await.map(|_| ()).map_err(|e| e.to_string())
}

async fn ask(client: &async_nats::Client, subject: String, job_id: &str) -> Result<Value, String> {
    let reply = tokio::time::timeout(
        Duration::from_secs(3),
        client.request(subject, json!({ "job_id": job_id }).to_string().into()),
    )
    .await
    .map_err(|_| "no answer".to_owned())?
    .map_err(|e| e.to_string())?;
    serde_json::from_slice(&reply.payload).map_err(|e| e.to_string())
}

fn job(id: &str, team: Option<&str>) -> switchyard_proto::JobSpec {
    let mut spec = classify_job(mmlu_items(3), 0.0, 0.0);
    spec.job_id = id.to_owned();
    spec.team = team.map(str::to_owned);
    spec
}

#[tokio::test]
async fn a_team_submits_and_reads_only_as_itself() {
    let mut settings = Settings::demo();
    settings.nats.prefix = "sec".into();
    settings.nats.storage = StorageKind::Memory;
    settings.security.team_from_subject = true;
    settings.security.nats_users = BTreeMap::from([
        ("alice".into(), "red".into()),
        ("bob".into(), "blue".into()),
    ]);
    // An nkey user of team red, next to the password users.
    let carol = nkeys::KeyPair::new_user();
    let t = settings.topology();
    let (publish, subscribe) = teams::client_permissions(&t, "red", "_INBOX_carol");
    let carol_entry = format!(
        "    {{ nkey: \"{}\", permissions: {{ publish: {{ allow: {publish:?} }}, \
         subscribe: {{ allow: {subscribe:?} }} }} }}\n  ]",
        carol.public_key()
    );
    let authorization = switchyard::security_cli::nats_authorization(&settings, "svc").replacen(
        "  ]",
        &carol_entry,
        1,
    );
    let server = NatsServer::with_config(
        &authorization,
        &[
            ("SY_NATS_PASSWORD_SVC", "svc-Secret-1"),
            ("SY_NATS_PASSWORD_ALICE", "alice-Secret-2"),
            ("SY_NATS_PASSWORD_BOB", "bob-Secret-3"),
        ],
    )
    .await;

    // The services connect as the service user.
    let db = TestDb::new().await;
    settings.nats.url = server.url.clone();
    settings.nats.auth.user = Some("svc".into());
    settings.nats.auth.password = Some(SecretString::from("svc-Secret-1"));
    settings.database.url = SecretString::from(db.url.clone());
    settings.worker.ack_wait = Duration::from_secs(10);
    settings.worker.retry_delay = Duration::from_millis(200);
    let fleet = Fleet::start(settings.clone(), Some((data(), SimConfig::default())))
        .await
        .expect("the fleet connects with its credentials");
    let api_stop = CancellationToken::new();
    let api = tokio::spawn(switchyard_dispatcher::team_api::run(
        fleet.dispatcher.clone(),
        api_stop.clone(),
    ));
    let admin = fleet.client();

    let alice = connect_as(&server.url, "alice", "alice-Secret-2")
        .await
        .unwrap();
    let bob = connect_as(&server.url, "bob", "bob-Secret-3")
        .await
        .unwrap();
    let red = teams::submit_subject(&t, "red");
    let blue = teams::submit_subject(&t, "blue");

    // Alice submits as red: the job is red's, whatever she could have written.
    submit_on(&alice, &red, &job("a-1", None)).await.unwrap();
    submit_on(&bob, &blue, &job("b-1", Some("blue")))
        .await
        .unwrap();
    for id in ["a-1", "b-1"] {
        let s = crate::support::wait_final(&admin, id, 60).await;
        assert_eq!(s.job.status, "completed", "{id}: {s:?}");
    }
    assert_eq!(admin.status("a-1").await.unwrap().unwrap().job.team, "red");
    assert_eq!(admin.status("b-1").await.unwrap().unwrap().job.team, "blue");

    // Alice cannot submit as blue (NATS refuses the subject), nor on the bare subject.
    assert!(
        submit_on(&alice, &blue, &job("a-as-blue", None))
            .await
            .is_err()
    );
    assert!(
        submit_on(
            &alice,
            &t.jobs_submit_subject(),
            &job("a-bare", Some("blue"))
        )
        .await
        .is_err()
    );
    // On her own subject, a job claiming blue is rejected with the reason.
    submit_on(&alice, &red, &job("a-claims-blue", Some("blue")))
        .await
        .unwrap();
    let s = crate::support::wait_final(&admin, "a-claims-blue", 30).await;
    assert_eq!(s.job.status, "rejected");
    assert!(
        s.job
            .rejection_reason
            .unwrap()
            .contains("names team `blue` but was submitted as team `red`")
    );
    // The service user on the bare subject: refused too, since identity is required.
    admin
        .publish_spec(
            "svc-bare",
            "svc-bare",
            codec::encode(&job("svc-bare", Some("red"))).unwrap(),
        )
        .await
        .unwrap();
    let s = crate::support::wait_final(&admin, "svc-bare", 30).await;
    assert!(
        s.job
            .rejection_reason
            .unwrap()
            .contains("sec.jobs.submit.<team>")
    );
    assert!(admin.status("a-as-blue").await.unwrap().is_none());
    assert!(admin.status("a-bare").await.unwrap().is_none());

    // Results: each team reads its own jobs; another team's job does not exist for it, and
    // its subjects are closed.
    let status = ask(&alice, teams::api_subject(&t, "red", "status"), "a-1")
        .await
        .unwrap();
    assert_eq!(
        (status["team"].as_str(), status["status"].as_str()),
        (Some("red"), Some("completed"))
    );
    let results = ask(&bob, teams::api_subject(&t, "blue", "results"), "b-1")
        .await
        .unwrap();
    assert_eq!(results["results"].as_array().unwrap().len(), 3);
    assert!(results["results"][0]["answer"].is_string());
    let theirs = ask(&alice, teams::api_subject(&t, "red", "results"), "b-1")
        .await
        .unwrap();
    assert_eq!(theirs["error"], "no job `b-1`");
    assert!(
        ask(&alice, teams::api_subject(&t, "blue", "results"), "b-1")
            .await
            .is_err(),
        "alice may not ask as blue"
    );

    // An nkey user works the same way.
    let carol_client = async_nats::ConnectOptions::with_nkey(carol.seed().unwrap())
        .custom_inbox_prefix("_INBOX_carol")
        .connect(&server.url)
        .await
        .unwrap();
    submit_on(&carol_client, &red, &job("c-1", None))
        .await
        .unwrap();
    // Wrong credentials are refused, and the error does not repeat the password.
    let err = connect_as(&server.url, "alice", "wrong-Secret-9")
        .await
        .unwrap_err();
    assert!(!err.contains("wrong-Secret-9"), "{err}");
    let mut wrong = settings.clone();
    wrong.nats.auth.password = Some(SecretString::from("svc-Wrong-7"));
    let err = refused(&wrong).await;
    assert!(
        !err.contains("svc-Wrong-7") && err.contains("cannot connect"),
        "{err}"
    );

    api_stop.cancel();
    let _ = api.await;
    fleet.stop().await;
}

#[tokio::test]
async fn token_authentication_from_the_configuration() {
    let server = NatsServer::with_args(&["--auth", "tok-Secret-5"]).await;
    let mut settings = Settings::demo();
    settings.nats.url = server.url.clone();
    settings.nats.auth.token = Some(SecretString::from("tok-Secret-5"));
    let client = switchyard_runtime::nats::connect(&settings, "t")
        .await
        .unwrap();
    client.flush().await.unwrap();
    settings.nats.auth.token = Some(SecretString::from("tok-Wrong-6"));
    let err = refused(&settings).await;
    assert!(!err.contains("tok-Wrong-6"), "{err}");
    // A token in the URL is not printed either.
    settings.nats.auth.token = None;
    settings.nats.url = format!("nats://tok-Wrong-6@127.0.0.1:{}", server.port);
    let err = refused(&settings).await;
    assert!(!err.contains("tok-Wrong-6"), "{err}");
    assert!(!settings.to_redacted_toml().contains("tok-Wrong-6"));
}

#[tokio::test]
async fn local_only_items_never_reach_an_external_model() {
    // Every temptation at once: the local tier escalates to strong, every answer is below the
    // threshold, the job shadows all weak-routed items, a third of calls fail and are retried.
    let sim = SimConfig {
        faults: Faults {
            error_rate: 0.3,
            ..Faults::default()
        },
        ..SimConfig::default()
    };
    let h = Harness::start_with(
        |s| {
            s.tiers.get_mut("local").unwrap().escalate_to = Some("strong".into());
            s.worker.max_deliver = 10;
            s.worker.breaker.failures = 0;
        },
        sim,
    )
    .await;
    let items: Vec<Item> = mmlu_items(40)
        .into_iter()
        .enumerate()
        .map(|(i, mut item)| {
            if i % 2 == 0 {
                item.sensitivity = Some("local_only".into());
            }
            item
        })
        .collect();
    let local_ids: BTreeSet<String> = items
        .iter()
        .filter(|i| i.sensitivity.is_some())
        .map(|i| i.item_id.clone())
        .collect();
    let mut spec = classify_job(items, 0.5, 1.0);
    spec.policy.shadow = Some(1.0);
    spec.policy.cascade.max_escalations = Some(2);
    let started = chrono::Utc::now();
    let job_id = h.client.submit(spec).await.unwrap();
    let status = h.wait_final(&job_id, 90).await;
    assert_eq!(status.job.status, "completed", "{:?}", status.dead_letters);

    // A hand-made work message that puts a local_only item on the strong tier is refused
    // before any call.
    let rogue = switchyard_proto::WorkItem {
        attempt: 7,
        text: "leak me".into(),
        local_only: true,
        ..crate::support::foreign_work_item(&job_id, local_ids.iter().next().unwrap(), "strong")
    };
    let t = h.fleet.settings.topology();
    // Shadow calls may still be in flight after the job is final, so count only calls whose
    // prompt matches no data record: the rogue text is the only such prompt.
    let unmatched = |calls: &[switchyard_sim::CallRecord]| {
        calls.iter().filter(|c| c.record_id.is_none()).count()
    };
    let calls_before = unmatched(&h.fleet.sim.as_ref().unwrap().calls());
    h.nats
        .js()
        .publish(
            t.work_subject("strong"),
            codec::encode(&rogue).unwrap().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    switchyard_testkit::eventually("the rogue message is refused", Duration::from_secs(30), || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM dead_letters WHERE attempt = 7 AND error LIKE 'local_only item refused%'",
        )
        .fetch_one(&h.db.pool)
        .await
        .ok()?;
        (n == 1).then_some(())
    })
    .await;

    // The provider's side: no call for a local_only item reached a model of another tier.
    let local_models: BTreeSet<String> = h
        .fleet
        .settings
        .models
        .iter()
        .filter(|(_, m)| m.tier == "local")
        .map(|(n, _)| n.clone())
        .collect();
    let calls = h.fleet.sim.as_ref().unwrap().calls();
    assert_eq!(
        unmatched(&calls),
        calls_before,
        "the rogue message made no call"
    );
    let local_calls = calls
        .iter()
        .filter(|c| c.record_id.as_ref().is_some_and(|r| local_ids.contains(r)))
        .collect::<Vec<_>>();
    assert!(local_calls.len() >= local_ids.len());
    for c in &local_calls {
        assert!(
            local_models.contains(&c.model),
            "{} reached {}",
            c.record_id.as_deref().unwrap_or(""),
            c.model
        );
    }
    // The books agree, and the audit says so for the period.
    let local_tiers = vec!["local".to_owned()];
    let audit = switchyard_store::audit::local_only(
        &h.db.pool,
        &local_tiers,
        started - chrono::Duration::minutes(1),
        chrono::Utc::now() + chrono::Duration::minutes(1),
    )
    .await
    .unwrap();
    assert!(audit.clean(), "{audit:?}");
    assert!(audit.local_only_calls >= local_ids.len() as i64);
    // Had the local tier been declared external, every one of those calls would be listed.
    let strict = switchyard_store::audit::local_only(
        &h.db.pool,
        &[],
        started - chrono::Duration::minutes(1),
        chrono::Utc::now() + chrono::Duration::minutes(1),
    )
    .await
    .unwrap();
    assert_eq!(strict.external_count, audit.local_only_calls);
    h.finish().await;
}
