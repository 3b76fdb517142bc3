//! A static token-embedding table: one vector per vocabulary token, distilled offline from a
//! sentence-embedding model (see `crates/router-distill`), so that a text's semantic vector is the
//! mean of its tokens' rows: a table lookup per token, no ML runtime at scoring time.
//!
//! Why a table rather than the model: the dispatcher scores 100,000+ items per second per core
//! and must not link an inference runtime; a transformer is ~10,000 times slower per item.
//! Averaging static token vectors (the model2vec recipe) keeps much of what the model knows
//! about topics and register, which is what a router needs to generalize to subjects and
//! benchmarks it was never trained on.
//!
//! File format (little-endian), written by [`EmbedTable::to_bytes`]:
//!
//! ```text
//! magic "SYEMBTAB" | u32 version (1) | u32 vocab size V | u32 dims D | u32 flags (bit 0: uncased)
//! D × f32 per-dimension scale
//! V × (u16 byte length, UTF-8 token)        WordPiece vocabulary, continuation pieces as "##x"
//! V × D × i8 values                          row-major; value = i8 × scale[dim]
//! ```
//!
//! A table is identified by the SHA-256 of its bytes, which a router artifact records.

use sha2::{Digest, Sha256};

/// The first bytes of every table file.
pub const MAGIC: &[u8; 8] = b"SYEMBTAB";
/// The table format this build reads and writes.
pub const TABLE_VERSION: u32 = 1;

/// A decoded embedding table.
#[derive(Debug, Clone, PartialEq)]
pub struct EmbedTable {
    /// Whether the tokenizer lowercases and strips accents (BERT "uncased").
    pub uncased: bool,
    /// The WordPiece vocabulary; a token's index is its row.
    pub vocab: Vec<String>,
    /// Per dimension, the value of one quantization step.
    pub scales: Vec<f32>,
    /// `vocab.len() × dims` quantized values, row-major.
    pub values: Vec<i8>,
}

/// Reads a little-endian u32 at `*at`, advancing it.
fn take<'a>(bytes: &'a [u8], at: &mut usize, n: usize, what: &str) -> Result<&'a [u8], String> {
    let end = at
        .checked_add(n)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| format!("embedding table truncated in {what}"))?;
    let s = &bytes[*at..end];
    *at = end;
    Ok(s)
}

fn take_u32(bytes: &[u8], at: &mut usize, what: &str) -> Result<u32, String> {
    let s = take(bytes, at, 4, what)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

impl EmbedTable {
    /// The number of dimensions.
    pub fn dims(&self) -> usize {
        self.scales.len()
    }

    /// Token `id`'s row, dequantized into `out` (which must have [`Self::dims`] entries).
    pub fn row_into(&self, id: usize, out: &mut [f32]) {
        let d = self.dims();
        for ((o, &q), &s) in out
            .iter_mut()
            .zip(&self.values[id * d..(id + 1) * d])
            .zip(&self.scales)
        {
            *o = f32::from(q) * s;
        }
    }

    /// Encodes the table in the file format above.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.values.len() + self.vocab.len() * 8);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&TABLE_VERSION.to_le_bytes());
        out.extend_from_slice(&(self.vocab.len() as u32).to_le_bytes());
        out.extend_from_slice(&(self.dims() as u32).to_le_bytes());
        out.extend_from_slice(&u32::from(self.uncased).to_le_bytes());
        for s in &self.scales {
            out.extend_from_slice(&s.to_le_bytes());
        }
        for t in &self.vocab {
            let len = u16::try_from(t.len()).unwrap_or(u16::MAX);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&t.as_bytes()[..usize::from(len)]);
        }
        out.extend(self.values.iter().map(|&v| v as u8));
        out
    }

    /// Decodes and validates a table file.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        let mut at = 0;
        if take(bytes, &mut at, 8, "the header")? != MAGIC {
            return Err("not an embedding table (bad magic bytes)".into());
        }
        let version = take_u32(bytes, &mut at, "the header")?;
        if version != TABLE_VERSION {
            return Err(format!(
                "embedding table version {version}, this build reads version {TABLE_VERSION}"
            ));
        }
        let vocab_len = take_u32(bytes, &mut at, "the header")? as usize;
        let dims = take_u32(bytes, &mut at, "the header")? as usize;
        let flags = take_u32(bytes, &mut at, "the header")?;
        if vocab_len == 0 || !(1..=4096).contains(&dims) || flags > 1 {
            return Err(format!(
                "implausible embedding table header: {vocab_len} tokens, {dims} dimensions, flags {flags}"
            ));
        }
        let scales: Vec<f32> = take(bytes, &mut at, dims * 4, "the scales")?
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if scales.iter().any(|s| !s.is_finite() || *s < 0.0) {
            return Err("an embedding table scale is not a finite number >= 0".into());
        }
        let mut vocab = Vec::with_capacity(vocab_len);
        for i in 0..vocab_len {
            let len = take(bytes, &mut at, 2, "the vocabulary")?;
            let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
            let token = take(bytes, &mut at, len, "the vocabulary")?;
            let token = std::str::from_utf8(token)
                .map_err(|_| format!("embedding table token {i} is not UTF-8"))?;
            vocab.push(token.to_string());
        }
        let values: Vec<i8> = take(bytes, &mut at, vocab_len * dims, "the values")?
            .iter()
            .map(|&b| b as i8)
            .collect();
        if at != bytes.len() {
            return Err(format!(
                "embedding table has {} trailing bytes",
                bytes.len() - at
            ));
        }
        Ok(Self {
            uncased: flags & 1 == 1,
            vocab,
            scales,
            values,
        })
    }
}

/// The SHA-256 of a table file, in lowercase hex: how an artifact names its table.
pub fn table_hash(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn tiny() -> EmbedTable {
        EmbedTable {
            uncased: true,
            vocab: ["[PAD]", "[UNK]", "the", "cat", "##s", "é"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            scales: vec![0.5, 0.25],
            values: vec![0, 0, 1, -1, 2, 2, 4, 0, -8, 3, 127, -127],
        }
    }

    #[test]
    fn roundtrip_and_rows() {
        let t = tiny();
        let bytes = t.to_bytes();
        let back = EmbedTable::from_bytes(&bytes).expect("decodes");
        assert_eq!(back, t);
        let mut row = [0.0; 2];
        back.row_into(3, &mut row);
        assert_eq!(row, [2.0, 0.0]);
        assert_eq!(table_hash(&bytes).len(), 64);
    }

    #[test]
    fn damage_is_refused_with_a_reason() {
        let bytes = tiny().to_bytes();
        let e = EmbedTable::from_bytes(&bytes[..bytes.len() - 1]).expect_err("short");
        assert!(e.contains("truncated in the values"), "{e}");
        let mut more = bytes.clone();
        more.push(0);
        assert!(
            EmbedTable::from_bytes(&more)
                .expect_err("long")
                .contains("trailing")
        );
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert!(
            EmbedTable::from_bytes(&magic)
                .expect_err("magic")
                .contains("magic")
        );
        let mut version = bytes;
        version[8] = 9;
        assert!(
            EmbedTable::from_bytes(&version)
                .expect_err("version")
                .contains("version 9")
        );
    }
}
