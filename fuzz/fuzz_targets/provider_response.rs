//! Any bytes from a provider: the chat completion parser returns an answer or an error,
//! never panics, and what it returns is sane (logprobs finite and ≤ 0, ids bounded).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_core::completion::{MAX_RESPONSE_ID_BYTES, parse_completion};

fuzz_target!(|data: &[u8]| {
    let prompt_chars = data.first().map_or(0, |b| usize::from(*b) * 97);
    if let Ok(c) = parse_completion(data, prompt_chars) {
        assert!(c.response_id.as_ref().is_none_or(|id| !id.is_empty() && id.len() <= MAX_RESPONSE_ID_BYTES));
        for t in c.logprobs.iter().flatten() {
            assert!(t.logprob.is_finite() && t.logprob <= 0.0);
        }
        // Judging the answer must not panic either.
        let labels = vec!["A".to_owned(), "B".to_owned()];
        let _ = switchyard_core::confidence::judge_label(&c.content, c.logprobs.as_deref(), &labels, 0.5);
        let _ = switchyard_core::confidence::judge_text(&c.content, c.logprobs.as_deref(), Some(60), 0.5);
    }
});
