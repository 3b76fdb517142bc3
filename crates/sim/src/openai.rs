//! The OpenAI chat-completions wire format: the request we accept, the response and error
//! bodies we send, and how a confidence becomes `logprobs`.
//!
//! Only the fields the simulator uses are modelled; serde ignores the rest, as a lenient
//! provider would.

use serde::{Deserialize, Serialize};

use crate::hashing::{stable_hash, unit_interval};
use crate::replay::Answer;

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub max_completion_tokens: Option<u32>,
    /// Above 0, the choices are samples (see [`ChatRequest::sample_indices`]); at 0 or
    /// absent, every choice is the answer (greedy decoding repeats itself).
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub logprobs: Option<bool>,
    #[serde(default)]
    pub top_logprobs: Option<u32>,
    /// Choices to return (OpenAI's `n`).
    #[serde(default)]
    pub n: Option<u32>,
    /// With a temperature above 0, which sample the first choice is (0, the default, is the
    /// answer itself): a client that cannot ask for `n` asks again with seeds 1, 2, ….
    #[serde(default)]
    pub seed: Option<u64>,
}

/// At most this many choices per request.
pub const MAX_CHOICES: u32 = 16;

#[derive(Debug, Clone, Deserialize)]
pub struct Message {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

/// Message content: a string, or a list of parts of which the text ones count.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(default)]
    pub text: Option<String>,
}

impl Message {
    /// The text of the message (text parts joined by newlines).
    pub fn text(&self) -> String {
        match &self.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => parts
                .iter()
                .filter_map(|p| p.text.as_deref())
                .collect::<Vec<_>>()
                .join("\n"),
        }
    }
}

impl ChatRequest {
    /// Parses and validates a request body; the error is a message for the client.
    pub fn parse(body: &[u8]) -> Result<ChatRequest, String> {
        let request: ChatRequest =
            serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))?;
        if request.model.trim().is_empty() {
            return Err("`model` must not be empty".into());
        }
        if !request.messages.iter().any(|m| m.role == "user") {
            return Err("`messages` must contain a user message".into());
        }
        Ok(request)
    }

    /// The last user message's text: what identifies the item.
    pub fn last_user_text(&self) -> String {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(Message::text)
            .unwrap_or_default()
    }

    /// All system (and developer) messages, joined by newlines.
    pub fn system_text(&self) -> String {
        self.messages
            .iter()
            .filter(|m| m.role == "system" || m.role == "developer")
            .map(Message::text)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Characters over all messages, for estimating the prompt tokens.
    pub fn prompt_chars(&self) -> usize {
        self.messages.iter().map(|m| m.text().chars().count()).sum()
    }

    /// The sample of each choice (`n` of them, 1 to [`MAX_CHOICES`]): with a temperature
    /// above 0, samples `seed`, `seed + 1`, …; otherwise sample 0 every time.
    pub fn sample_indices(&self) -> Vec<u64> {
        let n = u64::from(self.n.unwrap_or(1).clamp(1, MAX_CHOICES));
        if self.temperature.is_some_and(|t| t > 0.0) {
            let first = self.seed.unwrap_or(0);
            (0..n).map(|j| first.saturating_add(j)).collect()
        } else {
            vec![0; n as usize]
        }
    }

    /// The completion budget, whichever of the two spellings was used.
    pub fn max_tokens(&self) -> Option<u32> {
        self.max_completion_tokens.or(self.max_tokens)
    }
}

/// `chat.completion` response body.
#[derive(Debug, Clone, Serialize)]
pub struct ChatResponse {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub model: String,
    pub choices: Vec<Choice>,
    pub usage: Usage,
}

#[derive(Debug, Clone, Serialize)]
pub struct Choice {
    pub index: u32,
    pub message: ResponseMessage,
    pub logprobs: Option<Logprobs>,
    pub finish_reason: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResponseMessage {
    pub role: &'static str,
    pub content: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct Logprobs {
    pub content: Vec<TokenLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f64,
    pub bytes: Vec<u8>,
}

impl ChatResponse {
    /// The response for `answer`, with logprobs when `top_logprobs` is `Some` (the number of
    /// alternatives per token, which may be 0).
    pub fn new(
        id: String,
        created: u64,
        model: String,
        answer: &Answer,
        top_logprobs: Option<u32>,
    ) -> Self {
        Self::with_choices(
            id,
            created,
            model,
            std::slice::from_ref(answer),
            top_logprobs,
        )
    }

    /// The response with one choice per answer (at least one). The prompt is billed once,
    /// every choice's completion (as OpenAI bills `n`).
    pub fn with_choices(
        id: String,
        created: u64,
        model: String,
        answers: &[Answer],
        top_logprobs: Option<u32>,
    ) -> Self {
        let prompt_tokens = answers.first().map_or(0, |a| a.prompt_tokens);
        let completion_tokens = answers
            .iter()
            .fold(0u32, |sum, a| sum.saturating_add(a.completion_tokens));
        Self {
            id,
            object: "chat.completion",
            created,
            model,
            choices: answers
                .iter()
                .enumerate()
                .map(|(i, answer)| Choice {
                    index: u32::try_from(i).unwrap_or(u32::MAX),
                    message: ResponseMessage {
                        role: "assistant",
                        content: answer.content.clone(),
                    },
                    logprobs: top_logprobs.map(|n| logprobs(answer, n as usize)),
                    finish_reason: "stop",
                })
                .collect(),
            usage: Usage {
                prompt_tokens,
                completion_tokens,
                total_tokens: prompt_tokens.saturating_add(completion_tokens),
            },
        }
    }
}

/// Expresses the answer's confidence as token logprobs.
///
/// A label answer is one token with logprob `ln(confidence)`; its alternatives are the other
/// labels sharing the remaining mass evenly. A text answer is split at whitespace (each token
/// keeps its leading whitespace, so the tokens concatenate to the content) and the tokens get
/// logprobs that vary stably around, and average exactly, `ln(confidence)`.
pub fn logprobs(answer: &Answer, top: usize) -> Logprobs {
    let ln_conf = answer.confidence.ln();
    let content = match &answer.labels {
        Some(labels) if labels.contains(&answer.content) => {
            vec![label_token(&answer.content, answer.confidence, labels, top)]
        }
        _ => text_tokens(&answer.content, ln_conf, top),
    };
    Logprobs { content }
}

fn label_token(chosen: &str, confidence: f64, labels: &[String], top: usize) -> TokenLogprob {
    let others: Vec<&String> = labels.iter().filter(|l| *l != chosen).collect();
    let mut alternatives = vec![top_logprob(chosen, confidence.ln())];
    if !others.is_empty() {
        let share = ((1.0 - confidence) / others.len() as f64).max(f64::MIN_POSITIVE);
        alternatives.extend(others.iter().map(|l| top_logprob(l, share.ln())));
    }
    alternatives.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
    alternatives.truncate(top);
    TokenLogprob {
        token: chosen.to_owned(),
        logprob: confidence.ln(),
        bytes: chosen.as_bytes().to_vec(),
        top_logprobs: alternatives,
    }
}

fn text_tokens(content: &str, ln_conf: f64, top: usize) -> Vec<TokenLogprob> {
    let tokens = split_keeping_whitespace(content);
    // Weights in [0.5, 1.5), rescaled to mean 1: logprobs stay <= 0 and average ln_conf.
    let weights: Vec<f64> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| 0.5 + unit_interval(stable_hash(&[&i.to_le_bytes(), t.as_bytes()])))
        .collect();
    let mean_weight = weights.iter().sum::<f64>() / weights.len().max(1) as f64;
    tokens
        .into_iter()
        .zip(weights)
        .map(|(token, weight)| {
            let logprob = ln_conf * weight / mean_weight;
            let top_logprobs = if top > 0 {
                vec![top_logprob(token, logprob)]
            } else {
                Vec::new()
            };
            TokenLogprob {
                token: token.to_owned(),
                logprob,
                bytes: token.as_bytes().to_vec(),
                top_logprobs,
            }
        })
        .collect()
}

/// Splits after each run of non-whitespace, attaching whitespace to the following word:
/// `"a b  c"` → `["a", " b", "  c"]`. Never empty for non-empty text.
fn split_keeping_whitespace(text: &str) -> Vec<&str> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut in_word = false;
    for (i, c) in text.char_indices() {
        if c.is_whitespace() && in_word {
            tokens.push(&text[start..i]);
            start = i;
            in_word = false;
        } else if !c.is_whitespace() {
            in_word = true;
        }
    }
    if start < text.len() {
        tokens.push(&text[start..]);
    }
    tokens
}

fn top_logprob(token: &str, logprob: f64) -> TopLogprob {
    TopLogprob {
        token: token.to_owned(),
        logprob,
        bytes: token.as_bytes().to_vec(),
    }
}

/// `{"error": {"message", "type", "code"}}`, the body of every error response.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorDetail {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub code: Option<String>,
}

impl ErrorBody {
    pub fn new(message: impl Into<String>, kind: &str, code: &str) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.to_owned(),
                code: Some(code.to_owned()),
            },
        }
    }
}

/// `GET /v1/models` response body.
#[derive(Debug, Clone, Serialize)]
pub struct ModelList {
    pub object: &'static str,
    pub data: Vec<ModelInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

impl ModelList {
    pub fn new(names: Vec<String>) -> Self {
        Self {
            object: "list",
            data: names
                .into_iter()
                .map(|id| ModelInfo {
                    id,
                    object: "model",
                    created: 0,
                    owned_by: "switchyard-sim",
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(content: &str, confidence: f64, labels: Option<Vec<&str>>) -> Answer {
        Answer {
            content: content.to_owned(),
            record_id: None,
            correct: None,
            score: None,
            confidence,
            labels: labels.map(|l| l.into_iter().map(str::to_owned).collect()),
            prompt_tokens: 1,
            completion_tokens: 1,
        }
    }

    #[test]
    fn parses_requests_leniently() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"Labels: a, b"},
            {"role":"user","content":"first"},{"role":"assistant","content":null},
            {"role":"user","content":[{"type":"text","text":"  last  "}]}],
            "max_tokens":5,"logprobs":true,"top_logprobs":2,"stream_options":{"x":1}}"#;
        let request = ChatRequest::parse(body).unwrap();
        assert_eq!(request.last_user_text(), "  last  ");
        assert_eq!(request.system_text(), "Labels: a, b");
        assert_eq!(request.max_tokens(), Some(5));
        assert_eq!(request.prompt_chars(), 12 + 5 + 8);

        assert!(ChatRequest::parse(b"{").is_err());
        assert!(ChatRequest::parse(br#"{"model":"m","messages":[]}"#).is_err());
        assert!(ChatRequest::parse(br#"{"messages":[{"role":"user","content":"x"}]}"#).is_err());
    }

    #[test]
    fn label_logprobs_carry_the_confidence() {
        let a = answer("B", 0.8, Some(vec!["A", "B", "C", "D"]));
        let lp = logprobs(&a, 4);
        assert_eq!(lp.content.len(), 1);
        let token = &lp.content[0];
        assert_eq!(token.token, "B");
        assert!((token.logprob.exp() - 0.8).abs() < 1e-12);
        assert_eq!(token.top_logprobs.len(), 4);
        assert_eq!(token.top_logprobs[0].token, "B");
        let mass: f64 = token.top_logprobs.iter().map(|t| t.logprob.exp()).sum();
        assert!((mass - 1.0).abs() < 1e-9, "{mass}");
        assert_eq!(logprobs(&a, 2).content[0].top_logprobs.len(), 2);
        assert!(logprobs(&a, 0).content[0].top_logprobs.is_empty());
    }

    #[test]
    fn text_logprobs_average_the_confidence() {
        let a = answer("The cat  sat\non the mat.", 0.7, None);
        let lp = logprobs(&a, 1);
        let tokens: Vec<&str> = lp.content.iter().map(|t| t.token.as_str()).collect();
        assert_eq!(tokens, ["The", " cat", "  sat", "\non", " the", " mat."]);
        assert_eq!(tokens.concat(), a.content);
        let mean = lp.content.iter().map(|t| t.logprob).sum::<f64>() / tokens.len() as f64;
        assert!((mean - 0.7f64.ln()).abs() < 1e-12, "{mean}");
        assert!(lp.content.iter().all(|t| t.logprob <= 0.0));
    }
}
