-- OpenAI batches that run (docs/openai-compatibility.md): a batch becomes a job, its counts
-- follow the job's items, and its end writes an output and an error file.
--
-- `request_prefailed`: requests refused before the job (a `stream`, `n > 1`, tools, a line
-- over the chat item limit): they are in the error file from the start and count as failed.
-- `lease_until` of a running batch is when some API process looks at it next (its counts,
-- a cancellation, its expiry, its end); any process may, one at a time.
ALTER TABLE api_batches
    ADD COLUMN request_completed bigint NOT NULL DEFAULT 0,
    ADD COLUMN request_failed    bigint NOT NULL DEFAULT 0,
    ADD COLUMN request_prefailed bigint NOT NULL DEFAULT 0;
