//! Rendering job status and exporting results.

use std::io::Write;

use futures::TryStreamExt;
use sqlx::PgPool;
use switchyard_store::quality::JobQuality;
use switchyard_store::reports::{self, JobStatus};

/// Export formats of `switchyard results`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ResultFormat {
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header row.
    Csv,
}

/// `switchyard status` as text.
pub fn render_status(s: &JobStatus) -> String {
    let j = &s.job;
    let mut out = format!(
        "job {}  {}  team {} / project {}  task {}\n",
        j.job_id,
        j.status,
        j.team,
        j.project,
        j.task_kind.as_deref().unwrap_or("-")
    );
    if let Some(reason) = &j.rejection_reason {
        out.push_str(&format!("rejected: {reason}\n"));
    }
    if let Some(at) = j.deadline_at {
        out.push_str(&format!(
            "deadline {}\n",
            at.format("%Y-%m-%d %H:%M:%S UTC")
        ));
    }
    let states: Vec<String> = s
        .items_by_state
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    out.push_str(&format!(
        "items {}: {}\n",
        j.item_count.unwrap_or(0),
        states.join(", ")
    ));
    let fmt = |m: &std::collections::BTreeMap<String, i64>| {
        m.iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    out.push_str(&format!(
        "routed: {}  |  final answers: {}  |  escalated {}\n",
        fmt(&s.routed_by_tier),
        fmt(&s.done_by_tier),
        s.escalated
    ));
    let by_tier: Vec<String> = s
        .cost_by_tier
        .iter()
        .map(|(k, v)| format!("{k} ${}", v.normalize()))
        .collect();
    out.push_str(&format!(
        "cost: ${} over {} calls ({})\n",
        s.cost_usd.normalize(),
        s.calls,
        by_tier.join(", ")
    ));
    for d in &s.dead_letters {
        out.push_str(&format!(
            "dead letter: {} {} attempt {} after {} deliveries: {}\n",
            d.kind,
            d.item_id.as_deref().unwrap_or("-"),
            d.attempt.map_or("-".to_owned(), |a| a.to_string()),
            d.deliveries.map_or("-".to_owned(), |a| a.to_string()),
            d.error
        ));
    }
    out
}

/// The quality section of `status` for a `quality=Q` job: target, plan, and the audit's
/// estimate with its 95% interval (a conservative proxy, reported, not a gate).
pub fn render_quality(q: &JobQuality) -> String {
    let pct = |x: Option<f64>| x.map_or("-".to_owned(), |v| format!("{:.1}%", 100.0 * v));
    let a = &q.audit;
    format!(
        "quality: target {} of all-strong; stage {}, {} pilot items; planned {} (checked at {})\n\
         audit estimate {} of all-strong ({} items: {} strong-final, {} estimated from {} \
         audited)\n  = {}\n",
        pct(q.target),
        q.stage,
        q.pilot_items,
        pct(q.planned_quality),
        pct(q.planned_quality_low),
        a.display(),
        a.items,
        a.strong_final,
        a.estimated,
        a.audited,
        q.proxy
    )
}

/// A quality job's estimate as it goes on every exported row (job-level, repeated so that
/// each row of a CSV carries it).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
struct RowQuality {
    quality_estimate: Option<f64>,
    quality_low: Option<f64>,
    quality_high: Option<f64>,
}

/// Writes a job's results to `out`; returns how many rows. A quality job's rows also carry
/// the audit's estimate of the job's quality and its 95% interval (`quality_estimate`,
/// `quality_low`, `quality_high`: agreement with the strong model, a conservative proxy).
///
/// # Errors
/// Database or write errors.
pub async fn export_results(
    pool: &PgPool,
    job_id: &str,
    format: ResultFormat,
    weak_tier: &str,
    mut out: impl Write,
) -> anyhow::Result<u64> {
    let q = switchyard_store::quality::job_quality(pool, job_id, weak_tier)
        .await?
        .map(|q| RowQuality {
            quality_estimate: Some(q.audit.estimate),
            quality_low: Some(q.audit.low),
            quality_high: Some(q.audit.high),
        })
        .unwrap_or_default();
    let mut rows = reports::results_stream(pool, job_id);
    let mut n = 0;
    match format {
        ResultFormat::Jsonl => {
            #[derive(serde::Serialize)]
            struct Row<'a> {
                #[serde(flatten)]
                row: &'a reports::ResultRow,
                #[serde(flatten)]
                quality: RowQuality,
            }
            while let Some(row) = rows.try_next().await? {
                serde_json::to_writer(
                    &mut out,
                    &Row {
                        row: &row,
                        quality: q,
                    },
                )?;
                out.write_all(b"\n")?;
                n += 1;
            }
        }
        ResultFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record([
                "item_id",
                "status",
                "routed_tier",
                "final_tier",
                "model",
                "answer",
                "confidence",
                "attempts",
                "cost_usd",
                "error",
                "quality_estimate",
                "quality_low",
                "quality_high",
            ])?;
            let f = |x: Option<f64>| x.map(|v| format!("{v:.4}")).unwrap_or_default();
            while let Some(r) = rows.try_next().await? {
                w.write_record([
                    r.item_id.as_str(),
                    r.status.as_str(),
                    r.routed_tier.as_deref().unwrap_or(""),
                    r.final_tier.as_deref().unwrap_or(""),
                    r.model.as_deref().unwrap_or(""),
                    r.answer.as_deref().unwrap_or(""),
                    &r.confidence.map(|c| format!("{c:.4}")).unwrap_or_default(),
                    &r.attempts.to_string(),
                    &r.cost_usd.normalize().to_string(),
                    r.error.as_deref().unwrap_or(""),
                    &f(q.quality_estimate),
                    &f(q.quality_low),
                    &f(q.quality_high),
                ])?;
                n += 1;
            }
            w.flush()?;
        }
    }
    Ok(n)
}
