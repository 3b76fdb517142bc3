//! Checking a batch's input file after `POST /batches` has answered: the file is read from
//! the object store a line at a time (it may be 200 MB) through
//! `switchyard_openai::input::FileCheck`. A file fault fails the batch with every fault's
//! line; a good file records its request count.
//!
//! A check that cannot finish (the process dies, NATS is down) leaves the batch
//! `validating` under a lease that runs out, so another API process can take it over.

use switchyard_openai::input::FileCheck;
use switchyard_openai::objects::{BatchError, BatchErrors};
use switchyard_store::api::{self as store, BatchRow};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use crate::Api;

/// Takes over validations whose process died (their lease ran out), one at a time, every
/// `every`, until `shutdown`.
pub async fn sweep(
    api: Api,
    every: std::time::Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        loop {
            match store::claim_stale_validation(
                &api.pool,
                &api.owner,
                crate::batches::VALIDATION_LEASE,
            )
            .await
            {
                Ok(Some(batch)) => {
                    tracing::info!(batch = %batch.batch_id, "taking over a batch's validation");
                    run(api.clone(), batch).await;
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot look for abandoned validations");
                    break;
                }
            }
        }
    }
}

/// Checks `batch`'s input file and records the verdict.
pub async fn run(api: Api, batch: BatchRow) {
    let verdict = match check(&api, &batch).await {
        Ok(v) => v,
        Err(e) => {
            tracing::warn!(batch = %batch.batch_id, error = %e, "cannot check a batch's input file; its lease will run out");
            return;
        }
    };
    let recorded = match verdict {
        // The start is part of this step: under the same lease, taken over with it.
        Ok(total) => match crate::run::start(&api, &batch, total).await {
            Ok(()) => Ok(true),
            Err(e) => {
                tracing::warn!(batch = %batch.batch_id, error = %format!("{e:#}"), "cannot start a batch; its lease will run out");
                return;
            }
        },
        Err(errors) => {
            let errors = serde_json::to_value(BatchErrors::new(errors)).unwrap_or_default();
            store::fail_validation(&api.pool, &batch.batch_id, &errors).await
        }
    };
    if let Err(e) = recorded {
        tracing::warn!(batch = %batch.batch_id, error = %e, "cannot record a batch's validation");
    }
}

/// The verdict on `batch`'s input file: its request count, or the faults that fail it.
///
/// # Errors
/// The file's bytes cannot be read (not a fault of the file).
pub async fn check(api: &Api, batch: &BatchRow) -> anyhow::Result<Result<u64, Vec<BatchError>>> {
    let Some(file) = store::file(&api.pool, &batch.team, &batch.input_file_id).await? else {
        return Ok(Err(vec![BatchError {
            code: "file_not_found".to_owned(),
            message: format!(
                "input file {} was deleted before the batch could read it",
                batch.input_file_id
            ),
            param: Some("input_file_id".to_owned()),
            line: None,
        }]));
    };
    let object = api
        .files
        .get(&file.object_name)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", file.object_name))?;
    let mut reader = BufReader::new(object);
    let mut check = FileCheck::new(&batch.endpoint);
    let limit = max_line_bytes(api.settings.dispatcher.max_chat_item_bytes);
    let mut buf = Vec::new();
    while let Some(len) = next_line(&mut reader, &mut buf, limit).await? {
        if len > limit {
            check.too_long(len, limit);
            continue;
        }
        let line = buf.strip_suffix(b"\r").unwrap_or(&buf);
        match std::str::from_utf8(line) {
            Ok(text) => {
                check.line(text);
            }
            Err(_) => check.not_text(line.len()),
        }
    }
    Ok(check.finish())
}

/// The longest line a request may have: its conversation at the fleet's chat item limit,
/// twice over for JSON's escapes, and room for the rest of the line (the dispatcher reads a
/// chat job's lines to the same limit).
pub fn max_line_bytes(max_chat_item_bytes: usize) -> usize {
    max_chat_item_bytes.saturating_mul(2).saturating_add(4096)
}

/// Reads the next line into `buf` (without its `\n`), keeping at most `limit` bytes of it:
/// the line's whole length, or `None` at the end. A longer line is read to its end but not
/// kept, so a file of one 200 MB line costs `limit` bytes of memory, not 200 MB and its parse.
async fn next_line<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<Option<usize>> {
    buf.clear();
    let mut len = 0usize;
    let mut read_any = false;
    loop {
        let chunk = reader.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(read_any.then_some(len));
        }
        read_any = true;
        let (part, used, ended) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        let room = limit.saturating_sub(buf.len());
        buf.extend_from_slice(&part[..part.len().min(room)]);
        len = len.saturating_add(part.len());
        reader.consume(used);
        if ended {
            return Ok(Some(len));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a test fails by panicking")]

    use super::*;

    #[tokio::test]
    async fn lines_are_read_whole_and_kept_only_to_the_limit() {
        let text = format!("short\r\n{}\nlast", "x".repeat(100));
        // A small buffer: lines span several fills.
        let mut reader = BufReader::with_capacity(8, text.as_bytes());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        while let Some(len) = next_line(&mut reader, &mut buf, 10).await.unwrap() {
            got.push((len, String::from_utf8(buf.clone()).unwrap()));
        }
        assert_eq!(
            got,
            [
                (6, "short\r".to_owned()),
                (100, "x".repeat(10)),
                (4, "last".to_owned())
            ]
        );
    }
}
