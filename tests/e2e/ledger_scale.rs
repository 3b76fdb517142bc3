//! The report at scale, smaller than the published 1,000,000-row figure (`switchyard ledger
//! bench --rows 1000000`, see docs/finance.md) so the suite stays quick: the rollup answers a
//! month by team and model with the same figures as the ledger rows, well under a second.

#[tokio::test]
async fn a_month_by_team_and_model_comes_from_the_rollup_fast_and_exact() {
    let figures =
        switchyard_lab::ledger_bench::run(&switchyard_testkit::admin_database_url(), 100_000)
            .await
            .unwrap();
    println!("{}", switchyard_lab::ledger_bench::render(&figures));
    assert!(figures.identical, "rollup and ledger disagree");
    assert!(figures.month_rows > 30_000, "{figures:?}");
    assert!(figures.groups >= 20, "{figures:?}");
    assert!(figures.rollup_median_ms < 1000.0, "{figures:?}");
}
