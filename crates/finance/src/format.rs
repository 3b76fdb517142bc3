//! Report formats: an aligned table for people, CSV for spreadsheets and FinOps tools (column
//! names from the FinOps FOCUS specification where one applies, `x_`-prefixed extensions
//! otherwise), and JSON (an array of row objects, amounts as exact decimal strings).
//!
//! Amounts are printed exactly in every format: nothing is rounded (see docs/finance.md).

use std::io::Write;

use switchyard_store::ledger_reports::{Dimension, Report, ReportRow};
use switchyard_store::money::exact;

/// `--format` of `ledger report`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReportFormat {
    Table,
    Csv,
    Json,
}

/// Writes `report` in `format`.
///
/// # Errors
/// Write errors.
pub fn write_report(
    report: &Report,
    format: ReportFormat,
    mut out: impl Write,
) -> anyhow::Result<()> {
    match format {
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut out, &report.rows)?;
            writeln!(out)?;
        }
        ReportFormat::Csv => write_csv(report, &mut out)?,
        ReportFormat::Table => write!(out, "{}", render_report_table(report))?,
    }
    out.flush()?;
    Ok(())
}

/// FOCUS columns first (BilledCost, ChargePeriodStart, …), then Switchyard's `x_` columns.
pub const CSV_COLUMNS: [&str; 42] = [
    "BilledCost",
    "EffectiveCost",
    "ListCost",
    "ContractedCost",
    "BillingCurrency",
    "BillingPeriodStart",
    "BillingPeriodEnd",
    "ChargePeriodStart",
    "ChargePeriodEnd",
    "ChargeCategory",
    "ChargeDescription",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ServiceCategory",
    "ServiceName",
    "ResourceId",
    "ResourceName",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "x_Team",
    "x_Project",
    "x_Model",
    "x_Tier",
    "x_JobId",
    "x_Calls",
    "x_PromptTokens",
    "x_CachedPromptTokens",
    "x_CompletionTokens",
    "x_CostAllStrong",
    "x_CostAllWeak",
    "x_Savings",
    "x_SavingsShare",
    "x_EscalationCost",
    "x_ShadowCost",
    "x_RetryCost",
    "x_Corrections",
    "x_InDoubtCost",
    "x_DuplicateCost",
    "x_BatchSavings",
    "x_CacheSavings",
    "x_TierCostShare",
];

/// Extra columns after [`CSV_COLUMNS`].
const CSV_BUDGET_COLUMNS: [&str; 2] = ["x_BudgetDowngradedItems", "x_BudgetWaitingItems"];

fn ts(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

fn key(row: &ReportRow, d: Dimension) -> String {
    row.key(d).unwrap_or_default().to_owned()
}

fn describe(row: &ReportRow) -> String {
    let parts: Vec<String> = row
        .keys
        .iter()
        .map(|(d, v)| format!("{} {v}", d.name()))
        .collect();
    if parts.is_empty() {
        "LLM calls".to_owned()
    } else {
        format!("LLM calls, {}", parts.join(", "))
    }
}

/// One CSV record of a row.
pub fn csv_record(report: &Report, row: &ReportRow) -> Vec<String> {
    let tags: serde_json::Map<String, serde_json::Value> = row
        .keys
        .iter()
        .filter(|(d, _)| !matches!(d, Dimension::Day | Dimension::Month))
        .map(|(d, v)| {
            (
                format!("x_{}", d.field()),
                serde_json::Value::from(v.as_str()),
            )
        })
        .collect();
    let tier_share: Vec<String> = row
        .tier_cost_share()
        .into_iter()
        .map(|(t, s)| format!("{t}={}", exact(s)))
        .collect();
    let cost = exact(row.cost_usd);
    // List cost: what the calls cost at the real-time price without cache pricing (FOCUS's
    // price before discounts); batch and cache savings are the difference.
    let list = exact(row.cost_usd + row.batch_savings_usd + row.cache_savings_usd);
    let mut rec = vec![
        cost.clone(),
        cost.clone(),
        list,
        cost,
        "USD".to_owned(),
        ts(Some(report.from)),
        ts(Some(report.to)),
        ts(row.period_start),
        ts(row.period_end),
        "Usage".to_owned(),
        describe(row),
        row.tokens().to_string(),
        "Tokens".to_owned(),
        "AI and Machine Learning".to_owned(),
        "Switchyard".to_owned(),
        key(row, Dimension::Model),
        key(row, Dimension::Model),
        key(row, Dimension::Team),
        key(row, Dimension::Team),
        if tags.is_empty() {
            String::new()
        } else {
            serde_json::Value::Object(tags).to_string()
        },
        key(row, Dimension::Team),
        key(row, Dimension::Project),
        key(row, Dimension::Model),
        key(row, Dimension::Tier),
        key(row, Dimension::Job),
        row.calls.to_string(),
        row.prompt_tokens.to_string(),
        row.cached_prompt_tokens.to_string(),
        row.completion_tokens.to_string(),
        exact(row.cost_all_strong_usd),
        exact(row.cost_all_weak_usd),
        exact(row.savings_usd()),
        row.savings_share().map(exact).unwrap_or_default(),
        exact(row.escalation_cost_usd),
        exact(row.shadow_cost_usd),
        exact(row.retry_cost_usd),
        exact(row.corrections_usd),
        exact(row.in_doubt_usd),
        exact(row.duplicate_usd),
        exact(row.batch_savings_usd),
        exact(row.cache_savings_usd),
        tier_share.join(";"),
    ];
    if has_budget_columns(report) {
        rec.push(opt(row.budget_downgraded_items));
        rec.push(opt(row.budget_waiting_items));
    }
    rec
}

fn opt(n: Option<i64>) -> String {
    n.map(|n| n.to_string()).unwrap_or_default()
}

fn has_budget_columns(report: &Report) -> bool {
    report
        .rows
        .iter()
        .any(|r| r.budget_downgraded_items.is_some())
}

/// The CSV header of a report.
pub fn csv_header(report: &Report) -> Vec<&'static str> {
    let mut h = CSV_COLUMNS.to_vec();
    if has_budget_columns(report) {
        h.extend(CSV_BUDGET_COLUMNS);
    }
    h
}

fn write_csv(report: &Report, out: &mut impl Write) -> anyhow::Result<()> {
    let mut w = csv::Writer::from_writer(out);
    w.write_record(csv_header(report))?;
    for row in &report.rows {
        w.write_record(csv_record(report, row))?;
    }
    w.flush()?;
    Ok(())
}

/// The report as an aligned table, with a total line.
pub fn render_report_table(report: &Report) -> String {
    let budget = has_budget_columns(report);
    let mut header: Vec<String> = report
        .group_by
        .iter()
        .map(|d| d.name().to_owned())
        .collect();
    let first_number = header.len();
    header.extend(
        [
            "calls",
            "tokens",
            "cost USD",
            "all strong",
            "all weak",
            "saved",
            "saved %",
            "escalation",
            "shadow",
            "in doubt",
            "duplicate",
            "batch saved",
            "cache saved",
        ]
        .map(str::to_owned),
    );
    if budget {
        header.push("downgraded".into());
        header.push("waiting".into());
    }
    let line = |r: &ReportRow, keys: Vec<String>| {
        let mut v = keys;
        v.extend([
            r.calls.to_string(),
            r.tokens().to_string(),
            exact(r.cost_usd),
            exact(r.cost_all_strong_usd),
            exact(r.cost_all_weak_usd),
            exact(r.savings_usd()),
            r.savings_share()
                .map(|s| format!("{:.1}", s * rust_decimal::Decimal::ONE_HUNDRED))
                .unwrap_or_else(|| "-".into()),
            exact(r.escalation_cost_usd),
            exact(r.shadow_cost_usd),
            exact(r.in_doubt_usd),
            exact(r.duplicate_usd),
            exact(r.batch_savings_usd),
            exact(r.cache_savings_usd),
        ]);
        if budget {
            v.push(opt(r.budget_downgraded_items));
            v.push(opt(r.budget_waiting_items));
        }
        v
    };
    // Without grouping, the total is the only line.
    let key_columns = first_number.max(1);
    if first_number == 0 {
        header.insert(0, String::new());
    }
    let mut rows = vec![header];
    if first_number > 0 {
        for r in &report.rows {
            rows.push(line(r, r.keys.iter().map(|(_, v)| v.clone()).collect()));
        }
    }
    let mut total_keys = vec![String::new(); key_columns];
    total_keys[0] = "total".into();
    rows.push(line(&report.total(), total_keys));
    let numeric: Vec<usize> = (key_columns..rows[0].len()).collect();
    format!(
        "period {} to {} (end exclusive), from the {}; amounts exact, in USD\n{}",
        ts(Some(report.from)),
        ts(Some(report.to)),
        report.source,
        render_table(&rows, &numeric)
    )
}

/// Aligns rows of cells (the first row is the header); `right` lists right-aligned columns.
pub fn render_table(rows: &[Vec<String>], right: &[usize]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for (i, r) in rows.iter().enumerate() {
        let cells: Vec<String> = (0..cols)
            .map(|c| {
                let cell = r.get(c).map(String::as_str).unwrap_or("");
                if right.contains(&c) {
                    format!("{cell:>w$}", w = widths[c])
                } else {
                    format!("{cell:<w$}", w = widths[c])
                }
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&rule.join("  "));
            out.push('\n');
        }
    }
    out
}
