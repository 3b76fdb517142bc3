//! Our APGR and CPT agree with the project's Python reference (`routing_metrics.py`, copied
//! into `tests/fixtures/`) to 3 decimals, for the same per-item scores.
//!
//! The test writes scores to a file, runs `python3 routing_metrics.py --scores … --json` on
//! the small fixture, and compares with `metrics.rs` fed the very same numbers (read back
//! from the file, as Python reads them). Several score sets are used: a learned router's,
//! one full of ties (to exercise the `1e-12 × row` tie-break), and a reversed one.

use std::path::{Path, PathBuf};
use std::process::Command;

use switchyard_router::Router;
use switchyard_router_lab::baselines::{length_scores, oracle_curve, router_scores};
use switchyard_router_lab::data::{Dataset, Filter, Pair, PairedRow};
use switchyard_router_lab::metrics::{Outcomes, RouteMetrics, routellm_curve, routellm_metrics};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn rows() -> Vec<PairedRow> {
    let data = Dataset::read(&fixture("routing_small.jsonl"), None).expect("fixture reads");
    data.paired(&Pair::new("weak-model", "strong-model"), &Filter::default())
        .expect("fixture pairs")
}

/// Both models' scores of the rows, at no cost (the reference ignores costs).
struct Scored {
    weak: Vec<f64>,
    strong: Vec<f64>,
    zero: Vec<f64>,
}

impl Scored {
    fn of(rows: &[PairedRow]) -> Self {
        Self {
            weak: rows.iter().map(|r| r.weak.score).collect(),
            strong: rows.iter().map(|r| r.strong.score).collect(),
            zero: vec![0.0; rows.len()],
        }
    }

    fn outcomes(&self) -> Outcomes<'_> {
        Outcomes {
            weak: &self.weak,
            strong: &self.strong,
            weak_cost: &self.zero,
            strong_cost: &self.zero,
        }
    }

    /// The weak and the strong model's mean score.
    fn means(&self) -> (f64, f64) {
        let n = self.weak.len() as f64;
        (
            self.weak.iter().sum::<f64>() / n,
            self.strong.iter().sum::<f64>() / n,
        )
    }
}

/// Our metrics for scores (with the reference's tie-break already added).
fn ours(rows: &[PairedRow], scores: &[f64]) -> RouteMetrics {
    let scored = Scored::of(rows);
    let pts: Vec<(f64, f64)> = routellm_curve(scores, &scored.outcomes(), 10)
        .iter()
        .map(|p| (p.strong_pct, p.quality))
        .collect();
    let (wa, sa) = scored.means();
    routellm_metrics(&pts, wa, sa)
}

fn python(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(fixture("routing_metrics.py"))
        .arg(fixture("routing_small.jsonl"))
        .args(["--weak", "weak-model", "--strong", "strong-model"])
        .args(args)
        .output()
        .expect("python3 runs (the reference needs no packages)");
    assert!(
        out.status.success(),
        "reference failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Writes `{"id","score"}` lines, runs the reference on them, and compares.
fn check(rows: &[PairedRow], raw: &[f64], dir: &Path, label: &str) {
    let path = dir.join(format!("{label}.jsonl"));
    let text: String = rows
        .iter()
        .zip(raw)
        .map(|(r, s)| format!("{}\n", serde_json::json!({"id": r.id, "score": s})))
        .collect();
    std::fs::write(&path, &text).expect("write scores");
    // Read the scores back exactly as Python will see them.
    let read: Vec<f64> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json");
            v["score"].as_f64().expect("number")
        })
        .collect();
    let tie_broken: Vec<f64> = read
        .iter()
        .enumerate()
        .map(|(i, s)| s + 1e-12 * i as f64)
        .collect();
    let mine = ours(rows, &tie_broken);

    let out = python(&["--scores", path.to_str().expect("utf-8 path"), "--json"]);
    let reference: serde_json::Value =
        serde_json::from_str(out.lines().last().expect("a line")).expect("reference json");
    assert_eq!(
        reference["rows"].as_u64(),
        Some(rows.len() as u64),
        "{label}"
    );
    let pairs = [
        ("APGR", mine.apgr),
        ("CPT(20%)", mine.cpt20),
        ("CPT(50%)", mine.cpt50),
        ("CPT(80%)", mine.cpt80),
    ];
    for (key, value) in pairs {
        let want = reference[key].as_f64().expect("metric");
        // The reference rounds to 4 decimals; agreement to 3 is what is promised.
        assert!(
            (value - want).abs() < 5e-4,
            "{label} {key}: ours {value} vs reference {want}"
        );
    }
}

#[test]
fn apgr_and_cpt_match_the_python_reference() {
    let rows = rows();
    assert_eq!(rows.len(), 156, "160 rows minus 4 contaminated");
    let dir = tempfile::tempdir().expect("tempdir");

    let router = switchyard_router::default_router();
    let learned: Vec<f64> = router_scores(router.as_ref(), &rows)
        .iter()
        .enumerate()
        .map(|(i, s)| s - 1e-12 * i as f64)
        .collect();
    check(&rows, &learned, dir.path(), "learned");

    // Heavy ties: only five distinct values.
    let ties: Vec<f64> = rows.iter().map(|r| (r.text.len() % 5) as f64).collect();
    check(&rows, &ties, dir.path(), "ties");

    let reversed: Vec<f64> = learned.iter().map(|s| -s).collect();
    check(&rows, &reversed, dir.path(), "reversed");

    let length = switchyard_router::LengthRouter;
    let by_length: Vec<f64> = rows
        .iter()
        .map(|r| f64::from(length.score(&r.text, r.kind)))
        .collect();
    check(&rows, &by_length, dir.path(), "log_length");
}

#[test]
fn oracle_and_prompt_length_baselines_match_the_reference() {
    let rows = rows();
    // Without --json the reference prints one Python dict per router, CPT as "12.34%".
    let out = python(&[]);
    let parse = |name: &str| -> serde_json::Value {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("{name} {{")))
            .unwrap_or_else(|| panic!("no `{name}` line in:\n{out}"));
        // `'12.34%'` -> `"12.34"`; keys like `'CPT(20%)'` keep their percent sign.
        let dict = line[name.len() + 1..]
            .replace("%'", "'")
            .replace('\'', "\"");
        serde_json::from_str(&dict).expect("dict parses as JSON")
    };
    let scored = Scored::of(&rows);
    let o = scored.outcomes();
    let (wa, sa) = scored.means();
    let oracle_pts: Vec<(f64, f64)> = oracle_curve(&o)
        .iter()
        .map(|p| (p.strong_pct, p.quality))
        .collect();
    let length = ours(&rows, &length_scores(&rows));
    for (name, mine) in [
        ("oracle", routellm_metrics(&oracle_pts, wa, sa)),
        ("prompt_length", length),
    ] {
        let reference = parse(name);
        let num = |k: &str| -> f64 {
            match &reference[k] {
                serde_json::Value::String(s) => s.parse().expect("number"),
                v => v.as_f64().expect("number"),
            }
        };
        assert!((mine.apgr - num("APGR")).abs() < 5e-4, "{name} APGR");
        // CPT is printed with 2 decimals.
        for (k, v) in [
            ("CPT(20%)", mine.cpt20),
            ("CPT(50%)", mine.cpt50),
            ("CPT(80%)", mine.cpt80),
        ] {
            assert!(
                (v - num(k)).abs() < 6e-3,
                "{name} {k}: ours {v} vs {}",
                num(k)
            );
        }
    }
}
