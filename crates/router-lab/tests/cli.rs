//! The router commands end to end, through this crate's `switchyard-router` binary (the same
//! `cli::run` the `switchyard` binary mounts): train → score → eval (table, JSON, plots) →
//! crossval, and every kind of bad input failing with a message that names file and line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard-router"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("binary runs")
}

fn ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

/// Runs a command that must fail; returns its error output.
/// `eval --data DATA` with the fixture's pair of models, which must fail: its stderr.
fn eval_fails(data: &Path) -> String {
    let mut args = vec!["eval", "--data", s(data)];
    args.extend(PAIR);
    fails(&args)
}

fn fails(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "{args:?} should have failed");
    String::from_utf8(out.stderr).expect("utf-8")
}

const PAIR: [&str; 4] = ["--weak", "weak-model", "--strong", "strong-model"];

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

#[test]
fn train_score_eval_plot_and_crossval() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = fixture("routing_small.jsonl");
    let router = dir.path().join("r.json");

    let mut args = vec![
        "train",
        "--data",
        s(&data),
        "--out",
        s(&router),
        "--name",
        "fx",
    ];
    args.extend(PAIR);
    ok(&args);
    let art: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&router).expect("written")).expect("json");
    assert_eq!(art["format"], "switchyard-router");
    assert_eq!(art["format_version"], switchyard_router::FORMAT_VERSION);
    // The default recipe uses the committed embedding table, named by its hash.
    assert_eq!(
        art["model"]["embedding"]["sha256"],
        switchyard_router::embedding::default_embedding()
            .expect("table")
            .sha256
            .as_str()
    );
    assert_eq!(art["provenance"]["sets"][0]["rows"], 156);
    let cmd = art["provenance"]["command"].as_str().expect("command");
    assert!(
        cmd.contains("--data routing_small.jsonl") && !cmd.contains('/'),
        "{cmd}"
    );

    // Score: one line per row of the file (scoring does not filter), ids kept.
    let out = ok(&["score", "--router", s(&router), "--data", s(&data)]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 160);
    assert_eq!(lines[0]["id"], "fx-000");
    assert!(
        lines
            .iter()
            .all(|l| l["score"].as_f64().is_some_and(f64::is_finite))
    );
    // The scores are exactly what the library router gives.
    let lib = switchyard_router::load_router(&router).expect("loads");
    let first = switchyard_router_lab::data::Dataset::read(&data, None)
        .expect("reads")
        .rows[0]
        .clone();
    let want = f64::from(lib.score(&first.text, first.kind));
    assert!((lines[0]["score"].as_f64().expect("score") - want).abs() < 1e-6);

    // Without --router: the default router.
    let default_out = ok(&["score", "--data", s(&data)]);
    assert_eq!(default_out.lines().count(), 160);

    // Eval: JSON keyed by router name.
    let mut args = vec!["eval", "--router", s(&router), "--data", s(&data), "--json"];
    args.extend(PAIR);
    let json: serde_json::Value = serde_json::from_str(&ok(&args)).expect("json");
    for name in ["random", "oracle", "prompt_length", "tfidf_linear", "fx"] {
        for key in ["APGR", "CPT(20%)", "CPT(50%)", "CPT(80%)", "AIQ"] {
            assert!(json[name][key].is_number(), "{name} {key}: {json}");
        }
    }
    let oracle = json["oracle"]["APGR"].as_f64().expect("apgr");
    let random = json["random"]["APGR"].as_f64().expect("apgr");
    assert!(oracle > random, "{json}");

    // Eval: table and plots (pair inferred: the fixture has exactly two models).
    let svg = dir.path().join("curves.svg");
    let png = dir.path().join("curves.png");
    let table = ok(&["eval", "--data", s(&data), "--plot", s(&svg)]);
    assert!(
        table.contains("learned-v2") && table.contains("tfidf_linear"),
        "{table}"
    );
    let svg_text = std::fs::read_to_string(&svg).expect("svg written");
    assert!(svg_text.starts_with("<svg") && svg_text.contains("prompt_length"));
    ok(&["eval", "--data", s(&data), "--plot", s(&png)]);
    let png_bytes = std::fs::read(&png).expect("png written");
    assert!(png_bytes.starts_with(b"\x89PNG"), "not a PNG");
    let e = fails(&["eval", "--data", s(&data), "--plot", "curves.pdf"]);
    assert!(e.contains(".svg or .png"), "{e}");

    // Cross-validation on the fixture.
    let mut args = vec!["crossval", "--data", s(&data), "--folds", "3", "--markdown"];
    args.extend(PAIR);
    let md = ok(&args);
    assert!(
        md.contains("| routing_small.jsonl | 156 | learned |"),
        "{md}"
    );
}

#[test]
fn bad_input_is_a_clear_error_naming_file_and_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write");
        p
    };
    let good = r#"{"id":"a","task":"gsm8k","prompt":"x","models":{"weak-model":{"score":1},"strong-model":{"score":0}}}"#;

    let empty = write("empty.jsonl", "");
    let e = fails(&["score", "--data", s(&empty)]);
    assert!(e.contains("empty.jsonl: the file has no rows"), "{e}");

    let not_json = write("notjson.jsonl", &format!("{good}\n{{oops\n"));
    let e = fails(&["score", "--data", s(&not_json)]);
    assert!(e.contains("notjson.jsonl:2: not a JSON object"), "{e}");

    let missing = write(
        "missing.jsonl",
        &format!(
            "{good}\n{}\n",
            r#"{"id":"b","task":"gsm8k","prompt":"y","models":{"weak-model":{"score":1}}}"#
        ),
    );
    let e = eval_fails(&missing);
    assert!(
        e.contains("missing.jsonl:2: row `b` has no result for model `strong-model`"),
        "{e}"
    );

    let out_of_range = write(
        "range.jsonl",
        r#"{"id":"a","task":"gsm8k","prompt":"x","models":{"weak-model":{"score":7},"strong-model":{"score":0}}}"#,
    );
    let e = eval_fails(&out_of_range);
    assert!(
        e.contains("range.jsonl:1: model `weak-model` has score 7"),
        "{e}"
    );

    let fine = write("fine.jsonl", &format!("{good}\n"));
    // A weak model no row has.
    let nobody = |command: &str, more: &[&str]| {
        let mut args = vec![command, "--data", s(&fine)];
        args.extend(["--weak", "nobody", "--strong", "strong-model"]);
        args.extend(more);
        fails(&args)
    };
    let e = nobody("eval", &[]);
    assert!(e.contains("fine.jsonl: no row has model `nobody`"), "{e}");
    let out = dir.path().join("r.json");
    let e = nobody("train", &["--out", s(&out)]);
    assert!(e.contains("no row has model `nobody`"), "{e}");

    let corrupt = write(
        "corrupt.json",
        "{\"format\": \"switchyard-router\", \"format_ver",
    );
    let e = fails(&["score", "--router", s(&corrupt), "--data", s(&fine)]);
    assert!(
        e.contains("corrupt router artifact") && e.contains("corrupt.json"),
        "{e}"
    );

    let default = switchyard_router::DEFAULT_ARTIFACT
        .replace("\"format_version\": 3", "\"format_version\": 99");
    let newer = write("newer.json", &default);
    let e = fails(&["score", "--router", s(&newer), "--data", s(&fine)]);
    assert!(e.contains("newer.json has format version 99"), "{e}");

    let nowhere = dir.path().join("absent.json");
    let e = fails(&["score", "--router", s(&nowhere), "--data", s(&fine)]);
    assert!(
        e.contains("cannot read router artifact") && e.contains("absent.json"),
        "{e}"
    );
}
