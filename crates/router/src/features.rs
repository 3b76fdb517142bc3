//! What a router sees of an item: hashed word and character n-grams of its text, plus a few
//! length and structure measurements.
//!
//! Why these: routing data is small (thousands of rows), so features must be cheap to learn
//! and must transfer to prompts from other benchmarks and to open-ended chat. Character
//! n-grams survive typos, inflection and unseen vocabulary; word n-grams carry topic and
//! phrasing ("which of the following", "prove that"); the structure measurements (length,
//! digits, maths symbols, code punctuation) carry difficulty signals that no vocabulary does.
//!
//! Everything is hashed into a fixed table (the "hashing trick"), so the model is a flat
//! array and scoring needs no allocation and no vocabulary lookup. Text is normalized byte by
//! byte: ASCII is lowercased and every digit becomes `0`, so numbers are seen by shape
//! ("000.00"), not value. Nothing here sees ids, scores, references or benchmark names.

use serde::{Deserialize, Serialize};

use crate::TaskKind;
use crate::model::kind_index;

/// Which family a hashed n-gram belongs to. Each family is length-normalized on its own so
/// that the many character n-grams do not drown the few word n-grams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Word = 0,
    Char = 1,
}

/// How many gram families there are.
pub const GROUPS: usize = 2;

/// The shape of the hashed feature space. Stored in the artifact: a router is always scored
/// with the features it was trained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureConfig {
    /// The hash table has `2^bits` buckets.
    pub bits: u8,
    /// Word n-grams up to this size (0 = none, 1 = words, 2 = words and word pairs).
    pub word_ngrams: u8,
    /// Smallest byte n-gram (0 = no character n-grams).
    pub char_min: u8,
    /// Largest byte n-gram.
    pub char_max: u8,
    /// Whether the length/structure measurements ([`dense`]) are used.
    pub dense: bool,
    /// Whether every word n-gram also gets a bucket of its own per task kind, so a word can
    /// weigh differently in classification than in generation.
    #[serde(default)]
    pub per_kind: bool,
    /// How many dimensions of the static token embedding's mean vector are used (0 = none;
    /// see [`crate::embedding`]). Old artifacts have none.
    #[serde(default)]
    pub embed_dims: u16,
}

impl FeatureConfig {
    /// The default router's features: words and word pairs, shared and per task kind, and
    /// the structure measurements. (Byte n-grams did no better in cross-validation and cost
    /// three times the scoring time; they remain available.)
    pub const DEFAULT: FeatureConfig = FeatureConfig {
        bits: 16,
        word_ngrams: 2,
        char_min: 0,
        char_max: 0,
        dense: true,
        per_kind: true,
        embed_dims: 0,
    };

    /// A classic TF-IDF text baseline: words and word pairs only.
    pub const WORDS_ONLY: FeatureConfig = FeatureConfig {
        bits: 18,
        word_ngrams: 2,
        char_min: 0,
        char_max: 0,
        dense: false,
        per_kind: false,
        embed_dims: 0,
    };

    /// Number of hash buckets.
    pub fn buckets(&self) -> usize {
        1usize << self.bits
    }

    /// Checks that the configuration is one this build can score.
    pub fn validate(&self) -> Result<(), String> {
        if !(4..=24).contains(&self.bits) {
            return Err(format!("hash bits {} outside 4..=24", self.bits));
        }
        if self.word_ngrams > 2 {
            return Err(format!("word n-grams {} > 2", self.word_ngrams));
        }
        if self.char_min > self.char_max || self.char_max > 8 {
            return Err(format!(
                "character n-gram sizes {}..={} invalid",
                self.char_min, self.char_max
            ));
        }
        Ok(())
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
const WORD_SALT: u64 = 0x5157_4f52_4453_0001;
const PAIR_SALT: u64 = 0x5157_4f52_4453_0002;
const CHAR_SALT: u64 = 0x4348_4152_5300_0000;
const KIND_SALT: u64 = 0x4b49_4e44_0000_0001;

/// The byte normalization: ASCII lowercase, digits to `0`, every whitespace to a space.
#[inline]
fn norm(b: u8) -> u8 {
    if b.is_ascii_digit() {
        b'0'
    } else if b.is_ascii_whitespace() {
        b' '
    } else {
        b.to_ascii_lowercase()
    }
}

/// Whether a byte belongs to a word: ASCII letters and digits, and every byte of a
/// non-ASCII character (so words in other scripts are words too).
#[inline]
fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b >= 0x80
}

/// Maps a 64-bit hash and a salt to a bucket (multiply-shift: the top bits mix best).
#[inline]
fn bucket(h: u64, salt: u64, bits: u8) -> u32 {
    let x = (h ^ salt).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (x >> (64 - u32::from(bits))) as u32
}

/// Calls `emit(group, bucket)` once for every n-gram occurrence of `text`. The one place
/// that defines the hashed features: training and scoring both go through it.
#[inline]
pub fn for_each_gram(
    cfg: &FeatureConfig,
    text: &str,
    kind: TaskKind,
    mut emit: impl FnMut(Group, u32),
) {
    let bytes = text.as_bytes();
    let bits = cfg.bits;
    let kind_salt = KIND_SALT.wrapping_mul(kind_index(kind) as u64 + 1);

    if cfg.word_ngrams > 0 {
        let mut prev: Option<u64> = None;
        let mut h = FNV_OFFSET;
        let mut in_word = false;
        // One extra iteration with a virtual separator closes the last word.
        for i in 0..=bytes.len() {
            let b = bytes.get(i).copied().unwrap_or(b' ');
            if is_word_byte(b) {
                h = (h ^ u64::from(norm(b))).wrapping_mul(FNV_PRIME);
                in_word = true;
            } else if in_word {
                emit(Group::Word, bucket(h, WORD_SALT, bits));
                if cfg.per_kind {
                    emit(Group::Word, bucket(h, WORD_SALT ^ kind_salt, bits));
                }
                if let (true, Some(p)) = (cfg.word_ngrams >= 2, prev) {
                    let pair = p.rotate_left(23) ^ h;
                    emit(Group::Word, bucket(pair, PAIR_SALT, bits));
                    if cfg.per_kind {
                        emit(Group::Word, bucket(pair, PAIR_SALT ^ kind_salt, bits));
                    }
                }
                prev = Some(h);
                h = FNV_OFFSET;
                in_word = false;
            }
        }
    }

    if cfg.char_min > 0 {
        let (lo, hi) = (usize::from(cfg.char_min), usize::from(cfg.char_max));
        for start in 0..bytes.len() {
            let mut h = FNV_OFFSET;
            let end = (start + hi).min(bytes.len());
            for (k, &b) in bytes[start..end].iter().enumerate() {
                h = (h ^ u64::from(norm(b))).wrapping_mul(FNV_PRIME);
                if k + 1 >= lo {
                    emit(Group::Char, bucket(h, CHAR_SALT + k as u64, bits));
                }
            }
        }
    }
}

/// How many structure measurements [`dense`] returns.
pub const DENSE: usize = 11;

/// Names of the structure measurements, in order (for reports and the artifact).
pub const DENSE_NAMES: [&str; DENSE] = [
    "ln_chars",
    "ln_words",
    "ln_lines",
    "digit_share",
    "upper_share",
    "non_ascii_share",
    "math_share",
    "ln_numbers",
    "ln_questions",
    "mean_word_len",
    "code_share",
];

/// Length and structure measurements of a text, in one pass over its bytes.
pub fn dense(text: &str) -> [f32; DENSE] {
    let bytes = text.as_bytes();
    let (mut digits, mut upper, mut letters, mut non_ascii) = (0u32, 0u32, 0u32, 0u32);
    let (mut math, mut code, mut lines, mut questions) = (0u32, 0u32, 1u32, 0u32);
    let (mut words, mut word_bytes, mut numbers) = (0u32, 0u32, 0u32);
    let mut in_word = false;
    let mut word_has_alpha = false;
    let mut chars = 0u32;
    for &b in bytes {
        // Every byte but a UTF-8 continuation byte starts a character.
        chars += u32::from(b & 0xC0 != 0x80);
        match b {
            b'0'..=b'9' => digits += 1,
            b'A'..=b'Z' => {
                upper += 1;
                letters += 1;
            }
            b'a'..=b'z' => letters += 1,
            b'\n' => lines += 1,
            b'?' => questions += 1,
            b'=' | b'+' | b'*' | b'/' | b'^' | b'\\' | b'$' | b'<' | b'>' | b'%' | b'(' | b')' => {
                math += 1
            }
            b'{' | b'}' | b';' | b'`' | b'_' | b'[' | b']' | b'#' => code += 1,
            0x80.. => non_ascii += 1,
            _ => {}
        }
        if is_word_byte(b) {
            if !in_word {
                words += 1;
                word_has_alpha = false;
            }
            word_bytes += 1;
            word_has_alpha |= !b.is_ascii_digit();
            in_word = true;
        } else {
            if in_word && !word_has_alpha {
                numbers += 1;
            }
            in_word = false;
        }
    }
    if in_word && !word_has_alpha {
        numbers += 1;
    }
    let n = bytes.len().max(1) as f32;
    let ln1 = |x: u32| (1.0 + x as f32).ln();
    [
        ln1(chars),
        ln1(words),
        ln1(lines),
        digits as f32 / n,
        upper as f32 / letters.max(1) as f32,
        non_ascii as f32 / n,
        math as f32 / n,
        ln1(numbers),
        ln1(questions),
        word_bytes as f32 / words.max(1) as f32,
        code as f32 / n,
    ]
}

/// The weighted n-gram counts of one text, for training: per group, sorted
/// `(bucket, count)` pairs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GramCounts {
    pub groups: [Vec<(u32, u32)>; GROUPS],
}

impl GramCounts {
    /// Counts the n-grams of `text`.
    pub fn of(cfg: &FeatureConfig, text: &str, kind: TaskKind) -> Self {
        let mut raw: [Vec<u32>; GROUPS] = Default::default();
        for_each_gram(cfg, text, kind, |g, b| raw[g as usize].push(b));
        let mut out = GramCounts::default();
        for (g, mut v) in raw.into_iter().enumerate() {
            v.sort_unstable();
            let counts = &mut out.groups[g];
            for b in v {
                match counts.last_mut() {
                    Some((last, c)) if *last == b => *c += 1,
                    _ => counts.push((b, 1)),
                }
            }
        }
        out
    }

    /// Every distinct bucket of the text (for document frequencies).
    pub fn distinct_buckets(&self) -> impl Iterator<Item = u32> + '_ {
        self.groups.iter().flatten().map(|&(b, _)| b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grams(cfg: &FeatureConfig, text: &str) -> Vec<(usize, u32)> {
        let mut v = Vec::new();
        for_each_gram(cfg, text, TaskKind::Classify, |g, b| {
            v.push((g as usize, b))
        });
        v
    }

    #[test]
    fn normalization_ignores_case_and_digit_values() {
        let cfg = WORDS_AND_CHARS;
        assert_eq!(grams(&cfg, "Add 12 and 34"), grams(&cfg, "add 99 AND 07"));
        assert_ne!(grams(&cfg, "add 12 and 34"), grams(&cfg, "add 123 and 34"));
    }

    const WORDS_AND_CHARS: FeatureConfig = FeatureConfig {
        bits: 16,
        word_ngrams: 2,
        char_min: 3,
        char_max: 5,
        dense: true,
        per_kind: false,
        embed_dims: 0,
    };

    #[test]
    fn per_kind_buckets_double_the_words_and_differ_by_kind() {
        let cfg = FeatureConfig::DEFAULT;
        let text = "the cat saw the cat";
        let c = GramCounts::of(&cfg, text, TaskKind::Classify);
        let g = GramCounts::of(&cfg, text, TaskKind::Generate);
        let total = |c: &GramCounts| c.groups[0].iter().map(|&(_, n)| n).sum::<u32>();
        assert_eq!(total(&c), 18);
        assert_ne!(c, g);
        let shared = GramCounts::of(&WORDS_AND_CHARS, text, TaskKind::Classify);
        assert_eq!(
            shared.groups[0],
            GramCounts::of(&WORDS_AND_CHARS, text, TaskKind::Generate).groups[0]
        );
    }

    #[test]
    fn counts_match_the_gram_stream() {
        let cfg = WORDS_AND_CHARS;
        let text = "the cat saw the cat";
        let counts = GramCounts::of(&cfg, text, TaskKind::Generate);
        let words: u32 = counts.groups[0].iter().map(|&(_, c)| c).sum();
        // 5 words + 4 word pairs.
        assert_eq!(words, 9);
        let chars: u32 = counts.groups[1].iter().map(|&(_, c)| c).sum();
        // 19 bytes: 17 trigrams + 16 four-grams + 15 five-grams.
        assert_eq!(chars, 17 + 16 + 15);
        assert!(
            counts
                .distinct_buckets()
                .all(|b| (b as usize) < cfg.buckets())
        );
        // "the cat" occurs twice: its pair bucket is counted twice.
        assert!(counts.groups[0].iter().any(|&(_, c)| c == 2));
    }

    #[test]
    fn empty_and_unicode_text_are_fine() {
        let cfg = FeatureConfig::DEFAULT;
        assert!(grams(&cfg, "").is_empty());
        let g = grams(&cfg, "Привет, мир — 東京");
        assert!(!g.is_empty());
        let d = dense("Привет, мир — 東京");
        assert!(d.iter().all(|x| x.is_finite()));
        assert!(d[5] > 0.5, "mostly non-ASCII bytes");
        assert!(dense("").iter().all(|x| x.is_finite()));
    }

    #[test]
    fn dense_measures_structure() {
        let d = dense("What is 12 + 30?\nAnswer: 42");
        assert_eq!(d[2], (3.0f32).ln()); // two lines
        assert_eq!(d[7], (4.0f32).ln()); // three numbers
        assert_eq!(d[8], (2.0f32).ln()); // one question mark
        assert!(d[6] > 0.0); // the plus sign
    }

    #[test]
    fn config_validation() {
        assert!(FeatureConfig::DEFAULT.validate().is_ok());
        assert!(FeatureConfig::WORDS_ONLY.validate().is_ok());
        let bad = FeatureConfig {
            bits: 40,
            ..FeatureConfig::DEFAULT
        };
        assert!(bad.validate().is_err());
    }
}
