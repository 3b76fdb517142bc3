//! BERT's uncased WordPiece tokenizer, in plain Rust over an [`EmbedTable`]'s vocabulary, so
//! the dispatcher turns text into embedding-table rows without linking a tokenizer runtime.
//!
//! It follows Hugging Face's `BertNormalizer` + `BertPreTokenizer` + `WordPiece` (what
//! all-MiniLM-L6-v2's `tokenizer.json` configures): control characters dropped, whitespace
//! splits, CJK ideographs and punctuation are words of their own, accents stripped (NFD,
//! non-spacing marks removed) and text lowercased; then each word is split greedily into the
//! longest vocabulary pieces (`##` marks a continuation), a word with an unknown part or over
//! 100 characters being one `[UNK]`. `switchyard-router-distill check-tokenizer` measures the
//! agreement with the `tokenizers` crate on real prompts.
//!
//! Why our own: scoring must stay at 100,000+ items/s on one core; this does one hash lookup
//! per word in the common case (a flat table keyed by the word's 64-bit hash, computed while
//! the word is read), never allocates, and ASCII text takes a byte-level path.

use unicode_categories::UnicodeCategories;

use crate::embed_table::EmbedTable;

/// Words longer than this (in characters) are one unknown token, as in BERT.
const MAX_WORD_CHARS: usize = 100;
/// Bytes a word may take in the buffer (100 characters of up to 4 bytes, after lowercasing).
const WORD_BYTES: usize = 4 * MAX_WORD_CHARS + 16;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// Finishes an FNV-1a state into a well-mixed 64-bit key (never 0: 0 marks an empty slot).
#[inline]
fn finish(h: u64) -> u64 {
    let mut x = h ^ (h >> 33);
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x.max(1)
}

/// The key of a byte string.
#[inline]
fn key_of(bytes: &[u8]) -> u64 {
    finish(bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    }))
}

/// Vocabulary pieces by the 64-bit hash of their bytes, open addressing with linear probing:
/// a lookup is one probe of a flat array, with no string to chase and compare. Pieces are
/// checked distinct by hash when the table is built; an out-of-vocabulary string is mistaken
/// for a piece only if its 64-bit hash collides with one (odds ~ 30,000 / 2^64 per lookup).
#[derive(Debug, Clone)]
struct PieceTable {
    slots: Vec<(u64, u32)>,
    mask: usize,
}

impl PieceTable {
    fn new(pieces: &[(&str, u32)]) -> Result<Self, String> {
        let size = (pieces.len() * 2).next_power_of_two().max(16);
        let mut slots = vec![(0u64, 0u32); size];
        let mask = size - 1;
        for &(piece, id) in pieces {
            let key = key_of(piece.as_bytes());
            let mut i = key as usize & mask;
            loop {
                match slots[i] {
                    (0, _) => {
                        slots[i] = (key, id);
                        break;
                    }
                    (k, other) if k == key => {
                        return Err(format!(
                            "vocabulary pieces {other} and {id} (`{piece}`) have the same \
                             64-bit hash"
                        ));
                    }
                    _ => i = (i + 1) & mask,
                }
            }
        }
        Ok(Self { slots, mask })
    }

    #[inline]
    fn get(&self, key: u64) -> Option<u32> {
        let mut i = key as usize & self.mask;
        loop {
            match self.slots[i] {
                (0, _) => return None,
                (k, id) if k == key => return Some(id),
                _ => i = (i + 1) & self.mask,
            }
        }
    }
}

/// A WordPiece tokenizer over a fixed vocabulary.
#[derive(Debug, Clone)]
pub struct WordPiece {
    /// Pieces that may start a word.
    start: PieceTable,
    /// Continuation pieces, keyed without their `##`.
    cont: PieceTable,
    unk: u32,
    /// The longest piece, in bytes: no lookup need try a longer one.
    max_piece: usize,
}

/// Whether BERT treats a character as whitespace.
#[inline]
fn is_space(c: char) -> bool {
    c.is_whitespace()
}

/// Whether BERT drops a character while cleaning text.
#[inline]
fn is_dropped(c: char) -> bool {
    match c {
        '\t' | '\n' | '\r' => false,
        '\0' | '\u{fffd}' => true,
        _ => c.is_other(),
    }
}

/// Whether a character is punctuation to BERT (a word of its own).
#[inline]
fn is_punct(c: char) -> bool {
    c.is_ascii_punctuation() || c.is_punctuation()
}

/// Whether a character is a CJK ideograph (a word of its own).
#[inline]
fn is_cjk(c: char) -> bool {
    matches!(
        c as u32,
        0x4E00..=0x9FFF
            | 0x3400..=0x4DBF
            | 0x20000..=0x2A6DF
            | 0x2A700..=0x2B73F
            | 0x2B740..=0x2B81F
            | 0x2B920..=0x2CEAF
            | 0xF900..=0xFAFF
            | 0x2F800..=0x2FA1F
    )
}

/// The word being collected: normalized bytes on the stack.
struct Word {
    buf: [u8; WORD_BYTES],
    len: usize,
    chars: usize,
    /// FNV-1a state of the bytes so far: a whole word is looked up without re-reading it.
    hash: u64,
}

impl Word {
    #[inline]
    fn push(&mut self, c: char) {
        let mut tmp = [0u8; 4];
        for &b in c.encode_utf8(&mut tmp).as_bytes() {
            self.push_byte(b);
        }
        self.chars += 1;
    }

    #[inline]
    fn push_ascii(&mut self, b: u8) {
        self.push_byte(b);
        self.chars += 1;
    }

    #[inline]
    fn push_byte(&mut self, b: u8) {
        self.hash = (self.hash ^ u64::from(b)).wrapping_mul(FNV_PRIME);
        if self.len < WORD_BYTES {
            self.buf[self.len] = b;
            self.len += 1;
        }
    }
}

/// Whether `end` is a character boundary of the UTF-8 bytes `w`.
#[inline]
fn is_boundary(w: &[u8], end: usize) -> bool {
    end >= w.len() || w[end] & 0xC0 != 0x80
}

impl WordPiece {
    /// A tokenizer over `table`'s vocabulary. Fails if the vocabulary lacks `[UNK]`.
    pub fn new(table: &EmbedTable) -> Result<Self, String> {
        let mut start: Vec<(&str, u32)> = Vec::new();
        let mut cont: Vec<(&str, u32)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        let mut max_piece = 1;
        for (id, token) in table.vocab.iter().enumerate() {
            // The first of duplicate tokens wins, as in a vocabulary map.
            if !seen.insert(token.as_str()) {
                continue;
            }
            let id = id as u32;
            match token.strip_prefix("##") {
                Some(rest) if !rest.is_empty() => {
                    max_piece = max_piece.max(rest.len());
                    cont.push((rest, id));
                }
                _ => {
                    max_piece = max_piece.max(token.len());
                    start.push((token.as_str(), id));
                }
            }
        }
        let unk = start
            .iter()
            .find(|(t, _)| *t == "[UNK]")
            .map(|&(_, id)| id)
            .ok_or("the embedding table's vocabulary has no [UNK] token")?;
        Ok(Self {
            start: PieceTable::new(&start)?,
            cont: PieceTable::new(&cont)?,
            unk,
            max_piece,
        })
    }

    /// The id of the unknown token.
    pub fn unk(&self) -> u32 {
        self.unk
    }

    /// Calls `emit` with every token id of `text`, in order.
    pub fn for_each_token(&self, text: &str, mut emit: impl FnMut(u32)) {
        let mut word = Word {
            buf: [0; WORD_BYTES],
            len: 0,
            chars: 0,
            hash: FNV_OFFSET,
        };
        let bytes = text.as_bytes();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b < 0x80 {
                i += 1;
                match b {
                    b'a'..=b'z' | b'0'..=b'9' => word.push_ascii(b),
                    b'A'..=b'Z' => word.push_ascii(b.to_ascii_lowercase()),
                    b' ' | b'\t' | b'\n' | b'\r' => self.flush(&mut word, &mut emit),
                    // Other control characters are dropped, not separators (BERT's cleaning).
                    0x00..=0x1F | 0x7F => {}
                    _ => {
                        // ASCII punctuation: a word of its own.
                        self.flush(&mut word, &mut emit);
                        word.push_ascii(b);
                        self.flush(&mut word, &mut emit);
                    }
                }
                continue;
            }
            // A multi-byte character: `text` is valid UTF-8, so it decodes.
            let c = text[i..].chars().next().unwrap_or('\u{fffd}');
            i += c.len_utf8();
            if is_dropped(c) {
                continue;
            }
            if is_space(c) {
                self.flush(&mut word, &mut emit);
                continue;
            }
            if is_cjk(c) {
                self.flush(&mut word, &mut emit);
                word.push(c);
                self.flush(&mut word, &mut emit);
                continue;
            }
            // Strip accents (NFD, drop non-spacing marks), then lowercase.
            unicode_normalization::char::decompose_canonical(c, |d| {
                if d.is_mark_nonspacing() {
                    return;
                }
                for l in d.to_lowercase() {
                    if is_punct(l) {
                        self.flush(&mut word, &mut emit);
                        word.push(l);
                        self.flush(&mut word, &mut emit);
                    } else if is_space(l) {
                        self.flush(&mut word, &mut emit);
                    } else {
                        word.push(l);
                    }
                }
            });
        }
        self.flush(&mut word, &mut emit);
    }

    /// Emits the collected word's pieces and clears it.
    #[inline]
    fn flush(&self, word: &mut Word, emit: &mut impl FnMut(u32)) {
        if word.chars == 0 {
            return;
        }
        let (len, chars, hash) = (word.len, word.chars, word.hash);
        word.len = 0;
        word.chars = 0;
        word.hash = FNV_OFFSET;
        if chars > MAX_WORD_CHARS {
            emit(self.unk);
            return;
        }
        if let Some(id) = self.start.get(finish(hash)) {
            emit(id);
            return;
        }
        // The buffer holds whole characters, pushed from `char`s: valid UTF-8.
        let w = &word.buf[..len];
        let mut pieces = [0u32; MAX_WORD_CHARS];
        let mut n = 0;
        let mut at = 0;
        while at < w.len() {
            let map = if at == 0 { &self.start } else { &self.cont };
            let mut end = (at + self.max_piece).min(w.len());
            while !is_boundary(w, end) {
                end -= 1;
            }
            let found = loop {
                if end <= at {
                    break None;
                }
                if let Some(id) = map.get(key_of(&w[at..end])) {
                    break Some(id);
                }
                end -= 1;
                while !is_boundary(w, end) {
                    end -= 1;
                }
            };
            match found {
                Some(id) if n < pieces.len() => {
                    pieces[n] = id;
                    n += 1;
                    at = end;
                }
                _ => {
                    emit(self.unk);
                    return;
                }
            }
        }
        pieces[..n].iter().for_each(|&id| emit(id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(vocab: &[&str]) -> EmbedTable {
        EmbedTable {
            uncased: true,
            vocab: vocab.iter().map(|s| s.to_string()).collect(),
            scales: vec![1.0],
            values: vec![0; vocab.len()],
        }
    }

    fn tokens(wp: &WordPiece, vocab: &[&str], text: &str) -> Vec<String> {
        let mut out = Vec::new();
        wp.for_each_token(text, |id| out.push(vocab[id as usize].to_string()));
        out
    }

    const VOCAB: &[&str] = &[
        "[PAD]", "[UNK]", "the", "cat", "##s", "un", "##aff", "##able", "?", ",", "cafe", "中",
        "x", "##x", "naive", "-", "0", "##0",
    ];

    #[test]
    fn splits_words_punctuation_and_pieces() {
        let wp = WordPiece::new(&table(VOCAB)).expect("has unk");
        assert_eq!(
            tokens(&wp, VOCAB, "The cats, unaffable?"),
            ["the", "cat", "##s", ",", "un", "##aff", "##able", "?"]
        );
        assert_eq!(tokens(&wp, VOCAB, "  \n\t "), Vec::<String>::new());
        // "1" is not in the vocabulary: the whole word is one unknown token.
        assert_eq!(tokens(&wp, VOCAB, "100-x"), ["[UNK]", "-", "x"]);
        assert_eq!(tokens(&wp, VOCAB, "000"), ["0", "##0", "##0"]);
    }

    #[test]
    fn unknown_words_are_one_unk_and_long_words_too() {
        let wp = WordPiece::new(&table(VOCAB)).expect("has unk");
        assert_eq!(tokens(&wp, VOCAB, "thezz cat"), ["[UNK]", "cat"]);
        let long = "x".repeat(101);
        assert_eq!(tokens(&wp, VOCAB, &long), ["[UNK]"]);
        let ok = "x".repeat(100);
        assert_eq!(tokens(&wp, VOCAB, &ok).len(), 100);
    }

    #[test]
    fn accents_case_cjk_and_controls() {
        let wp = WordPiece::new(&table(VOCAB)).expect("has unk");
        assert_eq!(tokens(&wp, VOCAB, "CAFÉ Naïve"), ["cafe", "naive"]);
        assert_eq!(tokens(&wp, VOCAB, "cat中cat"), ["cat", "中", "cat"]);
        assert_eq!(tokens(&wp, VOCAB, "ca\u{0}t\u{200b}s"), ["cat", "##s"]);
        assert_eq!(tokens(&wp, VOCAB, "cat\u{3000}cat"), ["cat", "cat"]);
        assert_eq!(tokens(&wp, VOCAB, "cat\u{ff1f}"), ["cat", "[UNK]"]);
    }

    #[test]
    fn a_vocabulary_without_unk_is_refused() {
        assert!(WordPiece::new(&table(&["a", "b"])).is_err());
    }
}
