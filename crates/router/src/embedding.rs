//! A text's semantic vector: the mean of its WordPiece tokens' rows in a static embedding
//! table (see [`crate::embed_table`] for why a table and how it is made).
//!
//! The committed table is embedded in the binary, so the dispatcher does no I/O for it; a
//! router artifact names the table it was trained with by hash, and loading refuses a
//! mismatch rather than scoring with vectors the weights were not fitted to.

use std::sync::{Arc, OnceLock};

use crate::embed_table::{EmbedTable, table_hash};
use crate::wordpiece::WordPiece;

/// The committed table: all-MiniLM-L6-v2 distilled by `switchyard-router-distill distill`
/// (provenance in `embeddings/minilm-l6-static.json`).
pub const DEFAULT_TABLE: &[u8] = include_bytes!("../embeddings/minilm-l6-static.bin");
/// The committed table's file name, for artifacts and messages.
pub const DEFAULT_TABLE_NAME: &str = "minilm-l6-static.bin";

/// A decoded table with its tokenizer.
#[derive(Debug)]
pub struct StaticEmbedding {
    pub table: EmbedTable,
    pub tokenizer: WordPiece,
    /// SHA-256 of the table file.
    pub sha256: String,
}

impl StaticEmbedding {
    /// Decodes a table file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let table = EmbedTable::from_bytes(bytes)?;
        let tokenizer = WordPiece::new(&table)?;
        Ok(Self {
            table,
            tokenizer,
            sha256: table_hash(bytes),
        })
    }

    /// The mean of the first `dims` dimensions of `text`'s token rows, and the token count
    /// (zero tokens: all zeros).
    pub fn mean_vector(&self, text: &str, dims: usize) -> (Vec<f32>, usize) {
        let d = self.table.dims();
        let dims = dims.min(d);
        let mut sum = vec![0i32; dims];
        let mut n = 0usize;
        self.tokenizer.for_each_token(text, |id| {
            let row = &self.table.values[id as usize * d..id as usize * d + dims];
            for (s, &v) in sum.iter_mut().zip(row) {
                *s += i32::from(v);
            }
            n += 1;
        });
        let inv = if n > 0 { 1.0 / n as f32 } else { 0.0 };
        let out = sum
            .iter()
            .zip(&self.table.scales)
            .map(|(&s, &scale)| s as f32 * scale * inv)
            .collect();
        (out, n)
    }
}

/// The committed table, decoded once per process. `None` only if the committed file is
/// damaged, which this crate's tests rule out.
pub fn default_embedding() -> Option<Arc<StaticEmbedding>> {
    static TABLE: OnceLock<Option<Arc<StaticEmbedding>>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            StaticEmbedding::from_bytes(DEFAULT_TABLE)
                .ok()
                .map(Arc::new)
        })
        .clone()
}

/// The table an artifact names by hash: the committed one if the hash matches.
pub fn embedding_for(sha256: &str) -> Result<Arc<StaticEmbedding>, String> {
    let table = default_embedding().ok_or("the committed embedding table does not decode")?;
    if table.sha256 == sha256 {
        Ok(table)
    } else {
        Err(format!(
            "the router was trained with embedding table {sha256}, this build carries {} \
             ({DEFAULT_TABLE_NAME}): retrain the router or use the matching build",
            table.sha256
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_table_decodes_and_embeds() {
        let e = default_embedding().expect("committed table decodes");
        assert!(e.table.vocab.len() > 20_000, "a real WordPiece vocabulary");
        assert!(e.table.dims() >= 32);
        let (v, n) = e.mean_vector("Which of the following is a prime number?", 16);
        assert_eq!(v.len(), 16);
        assert!(n >= 8, "{n} tokens");
        assert!(v.iter().any(|x| *x != 0.0));
        let (empty, n) = e.mean_vector("", 16);
        assert_eq!(n, 0);
        assert!(empty.iter().all(|x| *x == 0.0));
        assert!(embedding_for(&e.sha256).is_ok());
        let err = embedding_for("00").expect_err("other table");
        assert!(err.contains("retrain"), "{err}");
    }

    #[test]
    fn related_texts_are_closer_than_unrelated_ones() {
        let e = default_embedding().expect("committed table decodes");
        let dims = e.table.dims();
        let v = |t: &str| e.mean_vector(t, dims).0;
        let cos = |a: &[f32], b: &[f32]| {
            let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
            let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
            let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
            dot / (na * nb)
        };
        let law = v("The court held that the contract was void under the statute of frauds.");
        let law2 = v("Is the defendant liable for breach of the lease agreement?");
        let chem = v("Balance the chemical equation for the combustion of methane.");
        assert!(
            cos(&law, &law2) > cos(&law, &chem),
            "{} vs {}",
            cos(&law, &law2),
            cos(&law, &chem)
        );
    }
}
