//! A provider's batch API as the batching path sees it, whichever protocol the model speaks:
//! OpenAI's Batch API ([`super::openai_batch`]: an uploaded file, a batch with `metadata`,
//! output and error files) or Anthropic's Message Batches ([`super::anthropic_batch`]:
//! requests in the body, no metadata, results read from the batch). The batching path
//! (`crate::batching`) is written once against [`BatchApi`]: create, find a batch created but
//! never recorded, poll, cancel, read results, clean up.

use super::anthropic_batch::AnthropicBatchClient;
use super::openai_batch::OpenAiBatchClient;
use super::{Completion, CompletionRequest, ProviderError};

/// One answered (or failed) request of a provider batch.
#[derive(Debug)]
pub struct LineResult {
    pub custom_id: String,
    /// The completion (billed at the batch price), or why the line has none.
    pub result: Result<Completion, ProviderError>,
}

/// The custom id of a line's request `j`: the line's call id for its own (`j = 0`), and
/// `{call_id}_s{j}` for its `j`-th extra sample drawn as a request of its own (a provider
/// without `n`, see [`super::anthropic_batch`]). Call ids are UUIDs, which never hold `_s`.
pub fn request_custom_id(call_id: &str, j: u32) -> String {
    if j == 0 {
        call_id.to_owned()
    } else {
        format!("{call_id}_s{j}")
    }
}

/// The line's call id and the request's index within the line, from a custom id.
pub fn line_of(custom_id: &str) -> (&str, u32) {
    match custom_id.rsplit_once("_s") {
        Some((call, j)) if !j.is_empty() && j.bytes().all(|b| b.is_ascii_digit()) => {
            (call, j.parse().unwrap_or(u32::MAX))
        }
        _ => (custom_id, 0),
    }
}

/// One line's requests' results: (index within the line, result), by index.
pub type LineRequests = Vec<(u32, Result<Completion, ProviderError>)>;

/// A batch's results by line (call id).
pub fn by_line(results: Vec<LineResult>) -> std::collections::HashMap<String, LineRequests> {
    let mut lines: std::collections::HashMap<String, Vec<_>> = std::collections::HashMap::new();
    for r in results {
        let (call, j) = line_of(&r.custom_id);
        lines
            .entry(call.to_owned())
            .or_default()
            .push((j, r.result));
    }
    for requests in lines.values_mut() {
        requests.sort_by_key(|(j, _)| *j);
    }
    lines
}

/// Reads a results file of JSON lines: each line that parses as `T` becomes a result by
/// `result_of`; one that does not is skipped (logged with `source`) and its request goes back
/// to be called again, as a line without a result does.
pub(crate) fn read_lines<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    provider: &str,
    source: &str,
    result_of: impl Fn(T) -> LineResult,
) -> Vec<LineResult> {
    let text = String::from_utf8_lossy(bytes);
    let mut out = Vec::new();
    for raw in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<T>(raw) {
            Ok(line) => out.push(result_of(line)),
            Err(e) => {
                tracing::warn!(provider, source, error = %e, "a results line does not parse; its request is called again");
            }
        }
    }
    out
}

/// Where a provider batch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Still answering (or validating, or not started).
    Running,
    /// Cancelling: results are not final yet.
    Stopping,
    /// Every request has its result (answered, failed, expired or cancelled).
    Ended,
}

/// A provider batch as the poller needs it.
#[derive(Debug, Clone)]
pub struct ProviderBatch {
    pub id: String,
    pub progress: Progress,
    /// The provider's own word for its status, for logs.
    pub status: String,
    /// OpenAI's files (input, output, error); Anthropic has none.
    pub input_file_id: Option<String>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
}

/// The answer to "did we create this batch before we could record it?".
#[derive(Debug)]
pub enum Lookup {
    /// Yes: this is it.
    Found(ProviderBatch),
    /// No: nothing the provider holds can be it; sending it is safe.
    Absent,
    /// Cannot tell yet (why): sending it now could answer its items twice.
    Undecided(String),
}

/// What a local batch was created as: the provider's batch id and, for OpenAI, its input file.
#[derive(Debug, Clone)]
pub struct Created {
    pub provider_batch_id: String,
    pub input_file_id: Option<String>,
}

/// The batch API of a model with `batch = true`.
#[derive(Debug, Clone)]
pub enum BatchApi {
    OpenAi(OpenAiBatchClient),
    Anthropic(AnthropicBatchClient),
}

/// The metadata key naming our batch on an OpenAI batch.
pub const METADATA_KEY: &str = switchyard_store::provider_batches::METADATA_KEY;

impl BatchApi {
    /// Creates the provider batch of local batch `batch_id` holding `lines` (call id,
    /// request); on OpenAI, its input file is uploaded first and the batch named in its
    /// metadata.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn create(
        &self,
        batch_id: &str,
        lines: &[(String, CompletionRequest)],
    ) -> Result<Created, ProviderError> {
        match self {
            Self::OpenAi(c) => {
                let mut jsonl = String::new();
                for (call_id, request) in lines {
                    jsonl.push_str(&OpenAiBatchClient::line(call_id, request));
                    jsonl.push('\n');
                }
                let file = c
                    .upload(&format!("{batch_id}.jsonl"), jsonl.into_bytes())
                    .await?;
                let metadata = std::collections::BTreeMap::from([(
                    METADATA_KEY.to_owned(),
                    batch_id.to_owned(),
                )]);
                let created = c.create(&file.id, &metadata).await?;
                Ok(Created {
                    provider_batch_id: created.id,
                    input_file_id: Some(file.id),
                })
            }
            Self::Anthropic(c) => Ok(Created {
                provider_batch_id: c.create(lines).await?,
                input_file_id: None,
            }),
        }
    }

    /// Looks for the provider batch of local batch `batch_id` (recorded at `recorded_at`
    /// with the lines `calls`), created but never recorded. `known` says whether a provider
    /// batch id is recorded for another local batch already.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn find(
        &self,
        batch_id: &str,
        recorded_at: chrono::DateTime<chrono::Utc>,
        calls: &[String],
        requests: usize,
        known: &std::collections::HashSet<String>,
    ) -> Result<Lookup, ProviderError> {
        match self {
            Self::OpenAi(c) => Ok(match c.find_by_metadata(METADATA_KEY, batch_id).await? {
                Some(b) => Lookup::Found(super::openai_batch::view(&b)),
                None => Lookup::Absent,
            }),
            Self::Anthropic(c) => c.find_orphan(recorded_at, calls, requests, known).await,
        }
    }

    /// The provider batch now.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn get(&self, id: &str) -> Result<ProviderBatch, ProviderError> {
        match self {
            Self::OpenAi(c) => Ok(super::openai_batch::view(&c.get(id).await?)),
            Self::Anthropic(c) => c.get(id).await,
        }
    }

    /// Asks the provider to cancel a batch.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn cancel(&self, id: &str) -> Result<(), ProviderError> {
        match self {
            Self::OpenAi(c) => c.cancel(id).await.map(|_| ()),
            Self::Anthropic(c) => c.cancel(id).await,
        }
    }

    /// The results of an ended batch.
    ///
    /// # Errors
    /// What the provider answered.
    pub async fn results(&self, b: &ProviderBatch) -> Result<Vec<LineResult>, ProviderError> {
        match self {
            Self::OpenAi(c) => {
                let mut out = Vec::new();
                for file in [&b.output_file_id, &b.error_file_id].into_iter().flatten() {
                    out.extend(c.results(file).await?);
                }
                Ok(out)
            }
            Self::Anthropic(c) => c.results(&b.id).await,
        }
    }

    /// Deletes what the provider keeps of a booked batch (OpenAI's files; Anthropic's batch
    /// and its results). Failures are logged: the provider expires them in time.
    pub async fn clean_up(&self, b: &ProviderBatch) {
        match self {
            Self::OpenAi(c) => {
                let files = [&b.input_file_id, &b.output_file_id, &b.error_file_id];
                for file in files.into_iter().flatten() {
                    if let Err(e) = c.delete_file(file).await {
                        tracing::warn!(batch = %b.id, file = %file, error = %e, "cannot delete a provider file");
                    }
                }
            }
            Self::Anthropic(c) => {
                if let Err(e) = c.delete(&b.id).await {
                    tracing::warn!(batch = %b.id, error = %e, "cannot delete a provider batch");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(custom_id: &str) -> LineResult {
        LineResult {
            custom_id: custom_id.to_owned(),
            result: Err(ProviderError::ServerError {
                model: "m".into(),
                status: 503,
                body: custom_id.to_owned(),
                retry_after: None,
            }),
        }
    }

    #[test]
    fn a_line_s_requests_are_named_after_its_call_and_grouped_back_in_order() {
        let call = uuid::Uuid::now_v7().to_string();
        for j in 0..12 {
            let id = request_custom_id(&call, j);
            assert_eq!(line_of(&id), (call.as_str(), j), "{id}");
        }
        // Ids that merely look alike stay whole.
        for odd in ["a_s", "a_sx", "_s", "a_s1x"] {
            assert_eq!(line_of(odd), (odd, 0));
        }
        let ids = [
            request_custom_id(&call, 2),
            "other".to_owned(),
            request_custom_id(&call, 0),
            request_custom_id(&call, 1),
        ];
        let lines = by_line(ids.iter().map(|id| result(id)).collect());
        assert_eq!(lines.len(), 2);
        let order: Vec<u32> = lines[&call].iter().map(|(j, _)| *j).collect();
        assert_eq!(order, vec![0, 1, 2]);
        assert_eq!(lines["other"].len(), 1);
    }
}
