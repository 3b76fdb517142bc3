//! Scoring throughput of the default router on ~500-character prompts, against a loop that
//! only reads the same items (the floor any scorer pays to touch the text).
//!
//! `cargo bench -p switchyard-router --bench score`. Throughput is reported in items/s; the
//! ratio to `read_only` is the router's cost over merely reading the items, and the ratio to
//! `lexical-v1` (the previous default, lexical and structure features only, committed as
//! `artifacts/lexical-v1.json`) what the static embedding costs, both measured in the same
//! run.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use switchyard_router::{Router, RouterArtifact, TaskKind, default_router};

/// 1,000 distinct prompts of about 500 characters, mixing prose, numbers and options.
fn items() -> Vec<(String, TaskKind)> {
    let words = [
        "the",
        "integral",
        "of",
        "a",
        "function",
        "which",
        "following",
        "is",
        "true",
        "about",
        "market",
        "equilibrium",
        "when",
        "supply",
        "increases",
        "patient",
        "presents",
        "with",
        "fever",
        "and",
        "cough",
        "compute",
        "value",
        "x",
        "if",
        "train",
        "leaves",
        "station",
        "at",
        "speed",
        "write",
        "python",
        "code",
        "that",
        "sorts",
        "list",
        "summarize",
        "article",
    ];
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..1000)
        .map(|i| {
            let mut s = String::new();
            while s.len() < 500 {
                let r = next();
                s.push_str(words[(r % words.len() as u64) as usize]);
                s.push(if r % 11 == 0 { '\n' } else { ' ' });
                if r % 17 == 0 {
                    s.push_str(&format!("{} ", r % 1000));
                }
            }
            let kind = [TaskKind::Classify, TaskKind::Summarize, TaskKind::Generate][i % 3];
            (s, kind)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let items = items();
    let router = default_router();
    let lexical = RouterArtifact::from_json(
        include_str!("../artifacts/lexical-v1.json"),
        "lexical-v1.json",
    )
    .and_then(|a| a.into_router())
    .expect("the committed lexical-v1 artifact loads");
    let mut g = c.benchmark_group("score_500_chars");
    g.throughput(Throughput::Elements(items.len() as u64));
    g.bench_function("read_only", |b| {
        b.iter(|| {
            // Touch every byte, as any scorer must: the baseline cost of reading the items.
            let mut acc = 0u64;
            for (text, kind) in &items {
                for &byte in text.as_bytes() {
                    acc = acc.wrapping_add(u64::from(byte));
                }
                acc = acc.wrapping_add(*kind as u64);
            }
            black_box(acc)
        })
    });
    g.bench_function("lexical-v1", |b| {
        b.iter(|| {
            let mut acc = 0.0f32;
            for (text, kind) in &items {
                acc += lexical.score(black_box(text), *kind);
            }
            black_box(acc)
        })
    });
    g.bench_function(router.name().to_string(), |b| {
        b.iter(|| {
            let mut acc = 0.0f32;
            for (text, kind) in &items {
                acc += router.score(black_box(text), *kind);
            }
            black_box(acc)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
