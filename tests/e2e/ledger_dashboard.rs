//! `switchyard ledger serve`, connected as the finance role: the API answers JSON and CSV,
//! and the dashboard, loaded in headless Chromium, shows the figures the JSON API returns.
//! The test saves a screenshot and prints its path.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::finance_support::{chromium, http_get};
use crate::ledger_finance::{drop_role, finance_role};
use crate::support::{Harness, classify_job, mmlu_items};

async fn browser(args: &[String]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(chromium());
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        "--virtual-time-budget=20000",
    ])
    .args(args)
    .kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("chromium finishes within 2 minutes")
        .expect("chromium runs")
}

#[tokio::test]
async fn the_finance_dashboard_shows_what_the_api_returns() {
    let h = Harness::start().await;
    for (team, n, share) in [("alpha", 60, 0.2), ("beta", 40, 0.5)] {
        let mut spec = classify_job(mmlu_items(n), share, 0.8);
        spec.team = Some(team.into());
        spec.project = Some(format!("{team}-reports"));
        spec.job_id = format!("dash-{team}");
        let id = h.client.submit(spec).await.unwrap();
        h.wait_final(&id, 60).await;
    }
    let (role, _url, fin) = finance_role(&h).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(switchyard_finance::serve::serve(
        fin.clone(),
        listener,
        stop.clone(),
    ));

    // The API: JSON rows with exact decimal strings, CSV with FOCUS columns, clear errors.
    let (status, body) = http_get(addr, "/api/report?group_by=").await;
    assert_eq!(status, 200, "{body}");
    let total: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let total_cost = total[0]["cost_usd"].as_str().unwrap().to_owned();
    let (_, body) = http_get(addr, "/api/report?group_by=team").await;
    let teams: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(teams.len(), 2);
    let (status, csv) = http_get(addr, "/api/report?group_by=team,model&format=csv").await;
    assert_eq!(status, 200);
    assert!(csv.starts_with("BilledCost,"), "{csv}");
    assert!(
        csv.lines()
            .next()
            .unwrap()
            .contains("ChargePeriodStart,ChargePeriodEnd")
    );
    let (status, body) = http_get(addr, "/api/report?from=someday").await;
    assert_eq!(status, 400);
    assert!(body.contains("not a time"), "{body}");
    let (status, body) = http_get(addr, "/api/report?team=nobody").await;
    assert_eq!(status, 400);
    assert!(body.contains("unknown team"), "{body}");
    let (status, body) = http_get(addr, "/api/prices").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(crate::support::STRONG));

    // The page, rendered by a real browser.
    let url = format!("http://{addr}/");
    let out = browser(&["--dump-dom".to_owned(), url.clone()]).await;
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        dom.contains("data-ready=\"1\""),
        "the page did not finish: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dom.contains("data-error"), "{dom}");
    assert!(
        dom.contains(&format!(
            "data-testid=\"total-cost\" id=\"total-cost\">${total_cost}<"
        )),
        "total {total_cost} not shown: {dom}"
    );
    for t in &teams {
        let (team, cost, strong, saved) = (
            t["team"].as_str().unwrap(),
            t["cost_usd"].as_str().unwrap(),
            t["cost_all_strong_usd"].as_str().unwrap(),
            t["savings_usd"].as_str().unwrap(),
        );
        for (what, value) in [("cost", cost), ("all-strong", strong), ("savings", saved)] {
            let cell = format!("data-testid=\"team-{what}-{team}\">{value}<");
            assert!(dom.contains(&cell), "{cell} not in the page");
        }
    }
    assert!(dom.matches("<rect").count() >= 6, "charts are drawn");

    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ledger-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    let out = browser(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1280,1500".to_owned(),
        url,
    ])
    .await;
    assert!(
        shot.metadata().map(|m| m.len() > 10_000).unwrap_or(false),
        "no screenshot: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("dashboard screenshot: {}", shot.display());

    stop.cancel();
    server.await.unwrap().unwrap();
    drop_role(&h, &role, fin).await;
    h.finish().await;
}
