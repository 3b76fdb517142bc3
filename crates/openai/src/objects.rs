//! The objects the Files and Batches endpoints answer, field for field as OpenAI documents
//! them, so the SDK's models parse them. Timestamps are Unix seconds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ErrorBody;
use crate::{CHAT_COMPLETIONS, COMPLETION_WINDOW};

/// The purpose of uploads that batches read.
pub const PURPOSE_BATCH: &str = "batch";
/// The purpose of the output and error files a batch writes.
pub const PURPOSE_BATCH_OUTPUT: &str = "batch_output";

/// At most this many metadata pairs on a batch.
pub const METADATA_MAX_PAIRS: usize = 16;
/// The longest metadata key, in characters.
pub const METADATA_MAX_KEY: usize = 64;
/// The longest metadata value, in characters.
pub const METADATA_MAX_VALUE: usize = 512;

/// `GET /files/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileObject {
    pub id: String,
    /// Always `file`.
    pub object: String,
    pub bytes: u64,
    pub created_at: i64,
    pub filename: String,
    pub purpose: String,
    /// Deprecated by OpenAI but still sent: `processed` once stored.
    pub status: String,
}

impl FileObject {
    /// A stored file.
    pub fn new(id: String, bytes: u64, created_at: i64, filename: String, purpose: &str) -> Self {
        Self {
            id,
            object: "file".to_owned(),
            bytes,
            created_at,
            filename,
            purpose: purpose.to_owned(),
            status: "processed".to_owned(),
        }
    }
}

/// `DELETE /files/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deleted {
    pub id: String,
    /// Always `file`.
    pub object: String,
    pub deleted: bool,
}

/// A page of a list: `first_id`, `last_id` and `has_more` drive the SDK's auto-pagination
/// (it asks again with `after=last_id` while `has_more`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPage<T> {
    /// Always `list`.
    pub object: String,
    pub data: Vec<T>,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    pub has_more: bool,
}

impl<T> ListPage<T> {
    /// A page of `data` (in list order) whose ids `id_of` gives.
    pub fn new(data: Vec<T>, has_more: bool, id_of: impl Fn(&T) -> &str) -> Self {
        Self {
            object: "list".to_owned(),
            first_id: data.first().map(|x| id_of(x).to_owned()),
            last_id: data.last().map(|x| id_of(x).to_owned()),
            data,
            has_more,
        }
    }
}

/// Where a batch is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatus {
    /// The input file is being checked.
    Validating,
    /// The input file failed its checks (see `errors`).
    Failed,
    /// Its requests are being answered.
    InProgress,
    /// Every request is answered; the output and error files are being written.
    Finalizing,
    Completed,
    /// Not finished within its completion window.
    Expired,
    /// Cancel asked; what has started is finishing.
    Cancelling,
    Cancelled,
}

impl BatchStatus {
    /// Every status, in the order of a batch's life.
    pub const ALL: [BatchStatus; 8] = [
        Self::Validating,
        Self::Failed,
        Self::InProgress,
        Self::Finalizing,
        Self::Completed,
        Self::Expired,
        Self::Cancelling,
        Self::Cancelled,
    ];

    /// The wire name (`in_progress`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validating => "validating",
            Self::Failed => "failed",
            Self::InProgress => "in_progress",
            Self::Finalizing => "finalizing",
            Self::Completed => "completed",
            Self::Expired => "expired",
            Self::Cancelling => "cancelling",
            Self::Cancelled => "cancelled",
        }
    }

    /// A status nothing moves on from.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Failed | Self::Completed | Self::Expired | Self::Cancelled
        )
    }
}

impl std::str::FromStr for BatchStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("unknown batch status `{s}`"))
    }
}

/// How many of a batch's requests are done.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
}

/// One fault of an input file that failed its batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchError {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    /// 1-based line of the input file.
    pub line: Option<u64>,
}

/// `errors` of a failed batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchErrors {
    /// Always `list`.
    pub object: String,
    pub data: Vec<BatchError>,
}

impl BatchErrors {
    pub fn new(data: Vec<BatchError>) -> Self {
        Self {
            object: "list".to_owned(),
            data,
        }
    }
}

/// `GET /batches/{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub id: String,
    /// Always `batch`.
    pub object: String,
    pub endpoint: String,
    pub errors: Option<BatchErrors>,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: BatchStatus,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
    pub request_counts: RequestCounts,
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `POST /batches`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateBatch {
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl CreateBatch {
    /// The checks OpenAI answers 400 to before a batch exists: the endpoint, the window and
    /// the metadata's limits. (The input file is checked later, asynchronously, and fails the
    /// batch instead.)
    ///
    /// # Errors
    /// OpenAI's error body naming the parameter.
    pub fn check(&self) -> Result<(), ErrorBody> {
        if self.input_file_id.trim().is_empty() {
            return Err(ErrorBody::invalid_request(
                "input_file_id",
                "input_file_id must name an uploaded file",
            ));
        }
        if self.endpoint != CHAT_COMPLETIONS {
            return Err(ErrorBody::invalid_request(
                "endpoint",
                format!(
                    "endpoint `{}` is not supported: batches are accepted for {CHAT_COMPLETIONS}",
                    self.endpoint
                ),
            ));
        }
        if self.completion_window != COMPLETION_WINDOW {
            return Err(ErrorBody::invalid_request(
                "completion_window",
                format!(
                    "completion_window `{}` is not supported: the only window is {COMPLETION_WINDOW}",
                    self.completion_window
                ),
            ));
        }
        if let Some(m) = &self.metadata {
            check_metadata(m)?;
        }
        Ok(())
    }
}

/// At most [`METADATA_MAX_PAIRS`] pairs, keys of at most [`METADATA_MAX_KEY`] characters,
/// values of at most [`METADATA_MAX_VALUE`].
///
/// # Errors
/// OpenAI's error body naming `metadata` and the pair at fault.
pub fn check_metadata(m: &BTreeMap<String, String>) -> Result<(), ErrorBody> {
    if m.len() > METADATA_MAX_PAIRS {
        return Err(ErrorBody::invalid_request(
            "metadata",
            format!(
                "metadata has {} pairs; at most {METADATA_MAX_PAIRS} are allowed",
                m.len()
            ),
        ));
    }
    for (k, v) in m {
        if k.chars().count() > METADATA_MAX_KEY {
            return Err(ErrorBody::invalid_request(
                "metadata",
                format!("metadata key `{k}` is longer than {METADATA_MAX_KEY} characters"),
            ));
        }
        if v.chars().count() > METADATA_MAX_VALUE {
            return Err(ErrorBody::invalid_request(
                "metadata",
                format!("metadata value of `{k}` is longer than {METADATA_MAX_VALUE} characters"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn create() -> CreateBatch {
        CreateBatch {
            input_file_id: "file-1".into(),
            endpoint: CHAT_COMPLETIONS.into(),
            completion_window: "24h".into(),
            metadata: None,
        }
    }

    #[test]
    fn creation_checks_name_the_parameter() {
        assert!(create().check().is_ok());
        let bad = |c: CreateBatch| c.check().unwrap_err().error.param.unwrap();
        assert_eq!(
            bad(CreateBatch {
                endpoint: "/v1/embeddings".into(),
                ..create()
            }),
            "endpoint"
        );
        assert_eq!(
            bad(CreateBatch {
                completion_window: "48h".into(),
                ..create()
            }),
            "completion_window"
        );
        let many: BTreeMap<String, String> =
            (0..17).map(|i| (format!("k{i}"), "v".into())).collect();
        assert_eq!(
            bad(CreateBatch {
                metadata: Some(many),
                ..create()
            }),
            "metadata"
        );
        let long_key = BTreeMap::from([("k".repeat(65), "v".to_owned())]);
        assert!(check_metadata(&long_key).is_err());
        let long_value = BTreeMap::from([("k".to_owned(), "é".repeat(513))]);
        assert!(check_metadata(&long_value).is_err());
        let at_limits = BTreeMap::from([("k".repeat(64), "é".repeat(512))]);
        assert!(check_metadata(&at_limits).is_ok());
    }

    #[test]
    fn statuses_round_trip_by_their_wire_names() {
        for s in BatchStatus::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(s.as_str().parse::<BatchStatus>().unwrap(), s);
        }
        assert!("done".parse::<BatchStatus>().is_err());
        assert!(BatchStatus::Completed.is_terminal() && !BatchStatus::Cancelling.is_terminal());
    }

    #[test]
    fn a_page_names_its_first_and_last_ids() {
        let page = ListPage::new(vec!["a".to_owned(), "b".to_owned()], true, |s| s);
        assert_eq!(
            (page.first_id.as_deref(), page.last_id.as_deref()),
            (Some("a"), Some("b"))
        );
        let empty: ListPage<String> = ListPage::new(vec![], false, |s| s);
        assert_eq!(empty.first_id, None);
        let v = serde_json::to_value(&page).unwrap();
        assert_eq!(v["object"], "list");
        assert_eq!(v["has_more"], true);
    }
}
