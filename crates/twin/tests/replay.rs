//! The twin on the bundled demo data (held out from the default router's training).

use std::path::{Path, PathBuf};

use switchyard_twin::cli::{EvalArgs, run, table};

fn demo(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/demo")
        .join(file)
}

fn args(file: &str) -> EvalArgs {
    EvalArgs {
        data: vec![demo(file)],
        policy: 0.95,
        fixed: None,
        router: None,
        folds: None,
        train: Vec::new(),
        history: false,
        weak: None,
        strong: None,
        auroc: 0.85,
        bias: 2.0,
        seed: 0,
        no_logprobs: false,
        samples: 4,
        audit_share: 0.02,
        draws: 1,
        plot: None,
        json: false,
        keep_contaminated: false,
        exclude_demo: false,
        skip_missing: false,
        slice: switchyard_router_lab::data::Slice::All,
    }
}

#[test]
fn a_quality_job_is_replayed_with_every_call_counted() {
    let out = run(&args("classify_mmlu.jsonl")).unwrap();
    assert_eq!(out.jobs.len(), 1);
    let r = &out.jobs[0].report;
    let plan = r.plan.as_ref().unwrap();
    // Every item is in exactly one place.
    assert!(r.pilot > 0 && r.audited > 0);
    assert_eq!(plan.items, r.items);
    assert_eq!(plan.strong_up_front, r.strong_up_front);
    let weak_routed = r.items - r.pilot - r.strong_up_front;
    // Calls: pilot items twice, up-front once, weak-routed once plus escalations and audits.
    assert_eq!(
        r.calls,
        2 * r.pilot + r.strong_up_front + weak_routed + r.escalated + r.audited
    );
    assert_eq!(r.cost_usd, r.spend.total());
    assert!(r.cost_usd < r.cost_all_strong_usd && r.cost_usd > r.cost_all_weak_usd);
    // The audit cap: at most about 2% of all-strong on audit calls.
    let audit_share = switchyard_twin::job::ratio(r.spend.audit, r.cost_all_strong_usd).unwrap();
    assert!(audit_share < 0.03, "{audit_share}");
    // The promise, on held-out rows at AUROC 0.85.
    assert!(
        r.quality_vs_all_strong >= 0.95,
        "{}",
        r.quality_vs_all_strong
    );
    assert!(r.saved > 0.3, "{}", r.saved);
    // Knowing every score, the plan's own family of rules could keep the target for less
    // (no pilot, no margin): the hindsight figure bounds what the plan can reach.
    let hindsight = r.hindsight_saved.unwrap();
    assert!(
        hindsight > r.saved && hindsight < 1.0,
        "{hindsight} vs {}",
        r.saved
    );
    // The audit's interval holds its estimate; the conservative proxy is below the truth here.
    let a = r.audit.unwrap();
    assert!(a.low <= a.estimate && a.estimate <= a.high);
    assert!(a.estimate <= r.quality_vs_all_strong + 0.02);
    // The simulator's confidence is what it was set to.
    assert!((r.confidence_auroc.unwrap() - 0.85).abs() < 0.03);
    assert!(!r.frontier.is_empty());
    assert!(table(&out).contains("classify_mmlu"));
    // Replays are deterministic.
    let again = run(&args("classify_mmlu.jsonl")).unwrap();
    assert_eq!(again.jobs[0].report.cost_usd, r.cost_usd);
    assert_eq!(again.jobs[0].report.escalated, r.escalated);
}

#[test]
fn a_fixed_policy_has_no_pilot_and_a_sharper_confidence_escalates_better() {
    let mut a = args("classify_mmlu.jsonl");
    a.fixed = Some((0.1, 0.8));
    let sharp = run(&a).unwrap().jobs.remove(0).report;
    a.auroc = 0.6;
    let dull = run(&a).unwrap().jobs.remove(0).report;
    assert_eq!((sharp.pilot, sharp.audited), (0, 0));
    assert!(sharp.audit.is_none());
    assert!(sharp.plan.is_none());
    assert_eq!(
        sharp.strong_up_front,
        (0.1 * sharp.items as f64).round() as usize
    );
    assert!(sharp.quality_vs_all_strong > dull.quality_vs_all_strong);
}

#[test]
fn without_logprobs_samples_are_paid_for_and_give_a_signal() {
    let mut a = args("classify_mmlu.jsonl");
    a.no_logprobs = true;
    let r = run(&a).unwrap().jobs.remove(0).report;
    let plan = r.plan.as_ref().unwrap();
    assert_eq!(plan.rule.samples, 4);
    // The samples' agreement separates right from wrong answers (above chance).
    assert!(
        r.confidence_auroc.unwrap() > 0.55,
        "{:?}",
        r.confidence_auroc
    );
    // Weak calls cost more than without samples (each draws four more completions). Compared
    // under one hand-set policy, so the same items are weak-routed in both runs (a quality
    // plan may route different items, and prompts differ in length).
    let weak_spend = |no_logprobs: bool| {
        let mut a = args("classify_mmlu.jsonl");
        a.fixed = Some((0.1, 0.8));
        a.no_logprobs = no_logprobs;
        run(&a).unwrap().jobs.remove(0).report.spend.weak
    };
    assert!(weak_spend(true) > weak_spend(false));
}

#[test]
fn bad_input_is_refused_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{not json}\n").unwrap();
    let mut a = args("classify_mmlu.jsonl");
    a.data = vec![bad.clone()];
    let e = run(&a).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl"), "{e}");
}

#[test]
fn draws_replay_a_job_under_ids_of_their_own_and_count_who_kept_the_target() {
    let mut a = args("summarize_news.jsonl");
    a.draws = 3;
    let out = run(&a).unwrap();
    assert_eq!(out.jobs.len(), 3);
    let ids: Vec<&str> = out.jobs.iter().map(|j| j.job.as_str()).collect();
    assert_eq!(
        ids,
        [
            "summarize_news",
            "summarize_news#draw-1",
            "summarize_news#draw-2"
        ]
    );
    // Other ids draw other pilots: not every draw plans the same job.
    let pilots: std::collections::BTreeSet<String> = out
        .jobs
        .iter()
        .map(|j| format!("{:?}", j.report.plan.as_ref().unwrap().rule))
        .collect();
    assert!(pilots.len() > 1, "{pilots:?}");
    let pooled = &out.pooled[0];
    assert_eq!(pooled.jobs, 3);
    let kept = out
        .jobs
        .iter()
        .filter(|j| j.report.quality_vs_all_strong >= 0.95)
        .count();
    assert_eq!(pooled.kept_target, Some(kept));
    assert!(table(&out).contains(&format!("{kept} of 3 kept the target")));
}

/// A file of 80 demo MMLU rows, the second half turned into free-form questions (no
/// choices, a maths task): two task kinds in one file, as RouterArena's is.
fn mixed_file(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(demo("classify_mmlu.jsonl")).expect("the demo file");
    let mut out = String::new();
    for (i, line) in text.lines().take(80).enumerate() {
        let mut row: serde_json::Value = serde_json::from_str(line).expect("a JSON row");
        if i >= 40 {
            row.as_object_mut().expect("an object").remove("choices");
            row["task"] = "gsm8k".into();
        }
        out.push_str(&row.to_string());
        out.push('\n');
    }
    let path = dir.join("mixed.jsonl");
    std::fs::write(&path, out).expect("written");
    path
}

#[test]
fn a_file_of_several_task_kinds_is_one_job_per_kind() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = args("classify_mmlu.jsonl");
    a.data = vec![mixed_file(dir.path())];
    let out = run(&a).unwrap();
    let jobs: Vec<(&str, usize)> = out
        .jobs
        .iter()
        .map(|j| (j.set.as_str(), j.report.items))
        .collect();
    assert_eq!(
        jobs,
        vec![("mixed [classify]", 40), ("mixed [generate]", 40)],
        "it used to stop at the second kind"
    );
}

#[test]
fn a_weak_model_dearer_than_the_strong_one_pilots_nothing() {
    // The pair reversed: the "weak" model is GPT-4, the "strong" one Mixtral (17 times
    // cheaper): nothing can be saved, so nothing is spent on a pilot.
    let mut a = args("classify_mmlu.jsonl");
    a.weak = Some("gpt-4-1106-preview".to_owned());
    a.strong = Some("mistralai/Mixtral-8x7B-Instruct-v0.1".to_owned());
    let out = run(&a).unwrap();
    let r = &out.jobs[0].report;
    assert_eq!((r.pilot, r.audited, r.escalated), (0, 0, 0));
    assert_eq!(r.strong_up_front, r.items);
    assert_eq!(
        r.cost_usd, r.cost_all_strong_usd,
        "all strong, nothing more"
    );
    assert!(r.saved.abs() < 1e-12);
}
