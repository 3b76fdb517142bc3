-- A provider batch line's estimated input tokens (prompt bytes / 4 and per-message framing,
-- as the worker's TPM estimate counts them): what the line puts in the provider's batch
-- queue. OpenAI limits the input tokens of a model's batches enqueued at once (its
-- "enqueued tokens" limit, a quota like RPM and TPM); a model's `batch_queue_tokens` makes
-- workers create a batch only when its lines' tokens fit beside those of the model's open
-- submitted batches.
ALTER TABLE provider_batch_lines ADD COLUMN tokens integer NOT NULL DEFAULT 0;
