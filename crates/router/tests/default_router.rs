//! The committed default router: it is the learned artifact (not the length fallback), the
//! file and the embedded copy agree, and it ranks a few obvious cases the obvious way.

use std::path::Path;

use switchyard_router::{RouterArtifact, TaskKind, default_router, load_router};

fn artifact_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/default-router.json")
}

#[test]
fn default_router_is_the_committed_learned_artifact() {
    let router = default_router();
    assert_eq!(
        router.name(),
        "learned-v2",
        "fell back to the length router?"
    );
    let art = RouterArtifact::load(&artifact_path()).expect("committed artifact loads");
    assert_eq!(art.format_version, switchyard_router::FORMAT_VERSION);
    // The neighbour index is opt-in (`--knn-dims`): the default stays within the scoring budget.
    assert!(art.unpack().expect("unpacks").knn.is_none());
    // Trained without the demo rows: the Goyal set is all demo, so it must be absent.
    assert!(art.provenance.command.contains("--exclude-demo"));
    assert!(
        art.provenance
            .sets
            .iter()
            .all(|s| !s.file.starts_with("goyal"))
    );
    assert!(
        art.provenance
            .sets
            .iter()
            .any(|s| s.file == "routellm_mmlu.dev.jsonl")
    );
    // It knows the weak model's quality per task kind (what `quality=q` predicts from).
    for kind in [TaskKind::Classify, TaskKind::Summarize, TaskKind::Generate] {
        let q = art.quality[kind.as_str()];
        assert!(
            0.3 < q.weak && q.weak < q.strong && q.strong < 1.0,
            "{kind}: {q:?}"
        );
        assert_eq!(router.weak_quality(kind), Some(q.weak));
    }

    // It uses the committed static embedding table, named by hash, and never trained on
    // the untouched slice.
    let table = switchyard_router::embedding::default_embedding().expect("table decodes");
    let embedding = art.model.embedding.as_ref().expect("uses the embedding");
    assert_eq!(embedding.sha256, table.sha256);
    assert!(art.provenance.command.contains("--slice dev"));

    let from_file = load_router(&artifact_path()).expect("loads");
    for (text, kind) in [
        ("What is the capital of France?", TaskKind::Classify),
        (
            "Summarize: the council met on Tuesday.",
            TaskKind::Summarize,
        ),
        ("", TaskKind::Generate),
    ] {
        let (a, b) = (router.score(text, kind), from_file.score(text, kind));
        assert_eq!(a, b);
        assert!(a.is_finite() && (-1.0..=1.0).contains(&a), "{a}");
        // The per-item estimate: the same gain, and a weak quality of its own.
        let e = router.estimate(text, kind);
        assert_eq!(e.gain, f64::from(a));
        let weak = e.weak.expect("the weak-fails head predicts weak quality");
        assert!((0.0..=1.0).contains(&weak), "{weak}");
    }
}

#[test]
fn default_router_ranks_obvious_cases() {
    let r = default_router();
    let easy = r.score(
        "What is the capital of France?\nA. Paris\nB. Rome\nC. Berlin\nD. Madrid\nAnswer:",
        TaskKind::Classify,
    );
    let hard = r.score(
        "Let G be a finite group of order 2p where p is an odd prime. Which of the following \
         must be true?\nA. G is cyclic\nB. G has a normal subgroup of order p\nC. G is abelian\n\
         D. G has exactly p Sylow 2-subgroups\nAnswer:",
        TaskKind::Classify,
    );
    assert!(
        hard > easy,
        "group theory {hard} <= capital of France {easy}"
    );
    let poem = r.score("Write a short poem about the sea.", TaskKind::Generate);
    let word_problem = r.score(
        "A train leaves the station at 3:15 pm traveling at 48 km/h. A second train leaves 25 \
         minutes later at 64 km/h on a parallel track. At what time does the second train \
         catch up, and how far from the station?",
        TaskKind::Generate,
    );
    assert!(
        word_problem > poem,
        "word problem {word_problem} <= poem {poem}"
    );
}
