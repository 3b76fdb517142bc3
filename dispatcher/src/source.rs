//! Where a job's items come from: inline in the job message, or a JSONL object in the NATS
//! object store, read line by line so a million-item job never sits in memory.

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncSeekExt, AsyncWriteExt, BufReader};

use switchyard_proto::Item;

/// A stream of `(line number, item)`; line numbers start at 1. It can be read twice
/// ([`ItemSource::rewind`]): the dispatcher checks and scores every item before it stores or
/// publishes any (pass 1), then reads them again to store and publish them (pass 2).
pub enum ItemSource {
    Inline {
        items: Vec<Item>,
        line: u64,
    },
    Object {
        reader: Box<BufReader<tokio::fs::File>>,
        line: u64,
        max_line: usize,
        name: String,
    },
}

/// An item that could not be read; the job is rejected with this text.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The input itself is wrong (shown to the submitter).
    #[error("{0}")]
    Bad(String),
    /// Reading failed (retry the job later).
    #[error("cannot read input object: {0}")]
    Io(#[from] std::io::Error),
}

/// A bucket the submitter named that does not exist (or cannot be a bucket's name) is bad
/// input; anything else (NATS restarting, a timeout) is a failure to read, and the job is
/// tried again: rejecting it would be final, and its resubmission a duplicate of the
/// rejected job.
fn bucket_error(bucket: &str, e: &async_nats::jetstream::context::ObjectStoreError) -> SourceError {
    use async_nats::jetstream::ErrorCode;
    use async_nats::jetstream::context::{
        GetStreamError, GetStreamErrorKind, ObjectStoreErrorKind,
    };
    let missing = match e.kind() {
        ObjectStoreErrorKind::InvalidBucketName => true,
        ObjectStoreErrorKind::GetStore => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<GetStreamError>())
            .is_some_and(|s| match s.kind() {
                GetStreamErrorKind::JetStream(j) => j.error_code() == ErrorCode::STREAM_NOT_FOUND,
                GetStreamErrorKind::EmptyName | GetStreamErrorKind::InvalidStreamName => true,
                _ => false,
            }),
    };
    if missing {
        SourceError::Bad(format!("input bucket `{bucket}` not found: {e}"))
    } else {
        SourceError::Io(std::io::Error::other(format!(
            "input bucket `{bucket}` cannot be read now: {e}"
        )))
    }
}

/// As [`bucket_error`], for the object.
fn object_error(name: &str, e: &async_nats::jetstream::object_store::GetError) -> SourceError {
    use async_nats::jetstream::object_store::GetErrorKind;
    match e.kind() {
        GetErrorKind::NotFound | GetErrorKind::InvalidName | GetErrorKind::BucketLink => {
            SourceError::Bad(format!("input object `{name}` not found: {e}"))
        }
        _ => SourceError::Io(std::io::Error::other(format!(
            "input object `{name}` cannot be read now: {e}"
        ))),
    }
}

impl ItemSource {
    /// Items given inline.
    pub fn inline(items: Vec<Item>) -> Self {
        ItemSource::Inline { items, line: 0 }
    }

    /// Opens an input object. Lines longer than `max_line` bytes are rejected without being
    /// held in memory whole.
    ///
    /// # Errors
    /// A missing bucket or object is [`SourceError::Bad`] (the submitter named it); NATS
    /// failing to answer is [`SourceError::Io`] (tried again).
    pub async fn object(
        js: &async_nats::jetstream::Context,
        bucket: &str,
        name: &str,
        max_line: usize,
    ) -> Result<Self, SourceError> {
        let store = js
            .get_object_store(bucket)
            .await
            .map_err(|e| bucket_error(bucket, &e))?;
        let mut object = store.get(name).await.map_err(|e| object_error(name, &e))?;
        // Spooled to an anonymous temporary file first: the object store delivers chunks as
        // fast as NATS can push them, and parsing and storing items is slower, so reading
        // straight from it buffered most of a large object in memory (154 MB of RSS for a
        // million items). The file is deleted when it is closed.
        let mut spool = tokio::fs::File::from_std(tempfile::tempfile()?);
        tokio::io::copy(&mut object, &mut spool).await?;
        spool.flush().await?;
        spool.seek(std::io::SeekFrom::Start(0)).await?;
        Ok(ItemSource::Object {
            reader: Box::new(BufReader::with_capacity(256 * 1024, spool)),
            line: 0,
            max_line,
            name: name.to_owned(),
        })
    }

    /// Starts over from the first item (the spooled object is read again from its temporary
    /// file, not fetched again).
    ///
    /// # Errors
    /// The temporary file cannot be rewound.
    pub async fn rewind(&mut self) -> Result<(), SourceError> {
        match self {
            ItemSource::Inline { line, .. } => *line = 0,
            ItemSource::Object { reader, line, .. } => {
                reader.seek(std::io::SeekFrom::Start(0)).await?;
                *line = 0;
            }
        }
        Ok(())
    }

    /// The next item, `None` at the end.
    pub async fn next(&mut self) -> Option<Result<(u64, Item), SourceError>> {
        match self {
            ItemSource::Inline { items, line } => {
                // Inline items are small (the job message's size limit): cloning is cheaper
                // than keeping two copies of the reader logic.
                let item = items.get(usize::try_from(*line).ok()?)?.clone();
                *line += 1;
                Some(Ok((*line, item)))
            }
            ItemSource::Object {
                reader,
                line,
                max_line,
                name,
            } => loop {
                let mut buf = Vec::new();
                let limit = *max_line as u64 + 2;
                let read = match (&mut **reader)
                    .take(limit)
                    .read_until(b'\n', &mut buf)
                    .await
                {
                    Ok(n) => n,
                    Err(e) => return Some(Err(e.into())),
                };
                if read == 0 {
                    return None;
                }
                *line += 1;
                if buf.len() as u64 >= limit && buf.last() != Some(&b'\n') {
                    return Some(Err(SourceError::Bad(format!(
                        "input `{name}` line {line}: longer than {max_line} bytes"
                    ))));
                }
                let text = match std::str::from_utf8(&buf) {
                    Ok(t) => t.trim(),
                    Err(_) => {
                        return Some(Err(SourceError::Bad(format!(
                            "input `{name}` line {line}: not valid UTF-8"
                        ))));
                    }
                };
                if text.is_empty() {
                    continue;
                }
                return Some(
                    serde_json::from_str::<Item>(text)
                        .map(|item| (*line, item))
                        .map_err(|e| SourceError::Bad(format!("input `{name}` line {line}: {e}"))),
                );
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{
        GetStreamError, GetStreamErrorKind, ObjectStoreError, ObjectStoreErrorKind,
    };
    use async_nats::jetstream::object_store::{GetError, GetErrorKind};

    fn is_bad(e: &SourceError) -> bool {
        matches!(e, SourceError::Bad(_))
    }

    #[test]
    fn only_what_the_submitter_named_wrong_is_bad_input() {
        let invalid = ObjectStoreError::new(ObjectStoreErrorKind::InvalidBucketName);
        assert!(is_bad(&bucket_error("b", &invalid)));
        // NATS restarting: the stream lookup's request failed.
        let unreachable = ObjectStoreError::with_source(
            ObjectStoreErrorKind::GetStore,
            GetStreamError::new(GetStreamErrorKind::Request),
        );
        let e = bucket_error("b", &unreachable);
        assert!(!is_bad(&e), "{e}");
        assert!(e.to_string().contains("cannot be read now"), "{e}");
        assert!(is_bad(&object_error(
            "o",
            &GetError::new(GetErrorKind::NotFound)
        )));
        assert!(!is_bad(&object_error(
            "o",
            &GetError::new(GetErrorKind::TimedOut)
        )));
    }
}
