//! Reconciliation: more than 10,000 simulated calls through the real fleet, across teams,
//! projects, tiers and a price change mid-run. The sum of the ledger equals the total of every
//! report grouping (from the rollup and from the ledger) and equals Σ tokens × the price
//! version in force at each call's time, to the last unit; the counterfactuals equal an
//! independent per-item computation.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use switchyard_core::tariff::Tariff;
use switchyard_sim::SimConfig;
use switchyard_store::ledger_reports::{self, Dimension, ReportRequest, Source};
use switchyard_store::prices::{self, NewPrice, PriceVersion};
use switchyard_testkit::eventually;

use crate::finance_support::{all_mmlu_items, d};
use crate::support::{Harness, STRONG, WEAK, classify_job};

#[derive(Debug, sqlx::FromRow)]
struct Row {
    job_id: String,
    item_id: String,
    tier: String,
    model: String,
    price_id: i64,
    prompt_tokens: i32,
    cached_prompt_tokens: i32,
    completion_tokens: i32,
    batch: bool,
    cost_usd: Decimal,
    cost_all_strong_usd: Decimal,
    cost_all_weak_usd: Decimal,
    priced_at: DateTime<Utc>,
}

fn in_force<'a>(versions: &'a [PriceVersion], model: &str, at: DateTime<Utc>) -> &'a PriceVersion {
    versions
        .iter()
        .filter(|v| v.model == model && v.effective_from <= at)
        .max_by_key(|v| v.effective_from)
        .unwrap()
}

/// Every subset of the five key dimensions, each alone, by day and by month.
fn groupings() -> Vec<Vec<Dimension>> {
    let keys = [
        Dimension::Team,
        Dimension::Project,
        Dimension::Model,
        Dimension::Tier,
        Dimension::Job,
    ];
    let mut out = Vec::new();
    for mask in 0u32..32 {
        let base: Vec<Dimension> = keys
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & (1 << i) != 0)
            .map(|(_, d)| *d)
            .collect();
        for time in [None, Some(Dimension::Day), Some(Dimension::Month)] {
            let mut g = base.clone();
            g.extend(time);
            out.push(g);
        }
    }
    out
}

#[tokio::test]
async fn ten_thousand_calls_reconcile_to_the_last_unit() {
    let h = Harness::start_with(
        |s| {
            s.worker.concurrency = switchyard_runtime::settings::count(128);
            s.finance.refresh = Duration::from_millis(200);
        },
        SimConfig::default(),
    )
    .await;
    let pool = &h.db.pool;
    let jobs = [
        ("team-a", "proj-1", 0.1, 0.8),
        ("team-a", "proj-2", 0.3, 0.5),
        ("team-b", "proj-1", 0.0, 0.9),
        ("team-b", "proj-3", 0.5, 0.8),
    ];
    let items = all_mmlu_items();
    let mut ids = Vec::new();
    for (i, (team, project, share, threshold)) in jobs.iter().enumerate() {
        let mut spec = classify_job(items.clone(), *share, *threshold);
        spec.team = Some((*team).into());
        spec.project = Some((*project).into());
        spec.job_id = format!("recon-{i}");
        ids.push(h.client.submit(spec).await.unwrap());
        if i == 1 {
            // Mid-run, the weak model's price changes (effective in a moment: a version never
            // takes effect before calls already booked).
            eventually(
                "the first calls are booked",
                Duration::from_secs(60),
                || async {
                    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger")
                        .fetch_one(pool)
                        .await
                        .unwrap();
                    (n > 500).then_some(())
                },
            )
            .await;
            // A loaded machine may book a call past "a moment from now" before the version
            // is written (refused as back-dated): then a later moment, a few times at most.
            let mut lead = chrono::Duration::milliseconds(300);
            for attempt in 1..=5 {
                let set = prices::set(
                    pool,
                    &NewPrice {
                        model: WEAK.into(),
                        provider: "sim".into(),
                        tariff: Tariff::new(d("0.55"), Some(d("0.275")), d("0.65"), d("0.5"))
                            .unwrap(),
                        effective_from: Utc::now() + lead,
                    },
                )
                .await;
                match set {
                    Ok(_) => break,
                    Err(prices::PriceSetError::BackDated { .. }) if attempt < 5 => lead = lead * 2,
                    Err(e) => panic!("setting the new price: {e}"),
                }
            }
        }
    }
    for id in &ids {
        let s = h.wait_final(id, 600).await;
        assert_eq!(s.job.status, "completed", "{id}");
    }

    let rows: Vec<Row> = sqlx::query_as(
        "SELECT job_id, item_id, tier, model, price_id, prompt_tokens, cached_prompt_tokens, \
         completion_tokens, batch, cost_usd, cost_all_strong_usd, cost_all_weak_usd, priced_at \
         FROM ledger ORDER BY entry_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(rows.len() >= 10_000, "only {} calls", rows.len());
    let versions = prices::all(pool).await.unwrap();

    // Σ ledger = Σ tokens × the version in force at each call's time.
    let ledger_sum: Decimal = sqlx::query_scalar("SELECT sum(cost_usd) FROM ledger")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut recomputed = Decimal::ZERO;
    let mut versions_used = BTreeMap::new();
    for r in &rows {
        let v = in_force(&versions, &r.model, r.priced_at);
        assert_eq!(
            r.price_id, v.price_id,
            "{} priced at {}",
            r.item_id, r.priced_at
        );
        let cost = v.tariff().cost(
            r.prompt_tokens.into(),
            r.cached_prompt_tokens.into(),
            r.completion_tokens.into(),
            r.batch,
        );
        assert_eq!(r.cost_usd, cost);
        assert!(cost > Decimal::ZERO, "no $0 rows");
        recomputed += cost;
        *versions_used.entry(r.price_id).or_insert(0u64) += 1;
    }
    assert_eq!(ledger_sum, recomputed);
    let weak_versions = versions
        .iter()
        .filter(|v| v.model == WEAK && versions_used.contains_key(&v.price_id))
        .count();
    assert_eq!(weak_versions, 2, "both weak price versions were booked");

    // Every grouping's total, from the rollup and from the ledger, is the same sum.
    let today = Utc::now().date_naive();
    let (from, to) = (
        ledger_reports::midnight(today.pred_opt().unwrap()),
        ledger_reports::midnight(today.succ_opt().unwrap()),
    );
    let groupings = groupings();
    for group_by in &groupings {
        let req = ReportRequest {
            group_by: group_by.clone(),
            from,
            to,
            team: None,
        };
        for source in [Source::Rollup, Source::Ledger] {
            let report = ledger_reports::run(pool, &req, source).await.unwrap();
            let total = report.total();
            assert_eq!(total.cost_usd, ledger_sum, "{group_by:?} {source:?}");
            assert_eq!(total.calls as usize, rows.len(), "{group_by:?} {source:?}");
            let json = serde_json::to_value(&report.rows).unwrap();
            let from_json: Decimal = json
                .as_array()
                .unwrap()
                .iter()
                .map(|r| d(r["cost_usd"].as_str().unwrap()))
                .sum();
            assert_eq!(from_json, ledger_sum, "{group_by:?} JSON");
        }
    }

    // Counterfactuals, independently: per item, all-strong is its strong call if it had one,
    // else its weak call's tokens at the strong price; all-weak the mirror image.
    let mut by_item: HashMap<(&str, &str), Vec<&Row>> = HashMap::new();
    for r in &rows {
        by_item.entry((&r.job_id, &r.item_id)).or_default().push(r);
    }
    let mut per_job: BTreeMap<&str, (Decimal, Decimal)> = BTreeMap::new();
    for ((job, _), calls) in &by_item {
        let strong = calls.iter().find(|r| r.tier == "strong");
        let weak = calls.iter().find(|r| r.tier == "weak");
        let reprice = |r: &Row, model: &str| {
            in_force(&versions, model, r.priced_at).tariff().cost(
                r.prompt_tokens.into(),
                r.cached_prompt_tokens.into(),
                r.completion_tokens.into(),
                false,
            )
        };
        // Every call the item really made on a tier is in that tier's world too (a billed
        // answer the worker could not use is called again there as well), so all of them count.
        let paid = |tier: &str| -> Decimal {
            calls
                .iter()
                .filter(|r| r.tier == tier)
                .map(|r| r.cost_usd)
                .sum()
        };
        let s = strong.map_or_else(|| reprice(weak.unwrap(), STRONG), |_| paid("strong"));
        let w = weak.map_or_else(|| reprice(strong.unwrap(), WEAK), |_| paid("weak"));
        let e = per_job.entry(job).or_default();
        e.0 += s;
        e.1 += w;
    }
    let report = ledger_reports::run(
        pool,
        &ReportRequest {
            group_by: vec![Dimension::Job],
            from,
            to,
            team: None,
        },
        Source::Auto,
    )
    .await
    .unwrap();
    for row in &report.rows {
        let job = row.key(Dimension::Job).unwrap();
        let (s, w) = per_job[job];
        assert_eq!(row.cost_all_strong_usd, s, "{job} all strong");
        assert_eq!(row.cost_all_weak_usd, w, "{job} all weak");
        assert!(row.cost_all_weak_usd <= row.cost_usd && row.cost_usd <= row.cost_all_strong_usd);
    }
    let per_row_strong: Decimal = rows.iter().map(|r| r.cost_all_strong_usd).sum();
    assert_eq!(
        per_row_strong,
        per_job.values().map(|v| v.0).sum::<Decimal>()
    );
    let per_row_weak: Decimal = rows.iter().map(|r| r.cost_all_weak_usd).sum();
    assert_eq!(per_row_weak, per_job.values().map(|v| v.1).sum::<Decimal>());
    println!(
        "reconciled {} calls over {} jobs: Σ ledger = Σ tokens × price = {} USD, every one of {} \
         groupings × 2 sources equal; price versions used: {:?}",
        rows.len(),
        ids.len(),
        ledger_sum.normalize(),
        groupings.len(),
        versions_used
    );
    h.finish().await;
}
