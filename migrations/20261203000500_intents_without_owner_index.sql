-- Call intents are written and deleted once per model call, on the hot path of every worker.
-- No query finds them by owner alone: the sweeps test each row with `owner_is_gone` (a
-- function, no index serves it) over a table that only holds the calls in flight, and the
-- hold checks match on (job_id, item_id, attempt), which the unique index serves. The owner
-- index was maintenance on every write for no reader.
DROP INDEX IF EXISTS call_intents_owner;
