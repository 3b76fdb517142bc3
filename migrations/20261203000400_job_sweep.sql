-- No job stays unfinished (docs/reliability.md, "Stuck jobs").
--
-- 1. Jobs gain a final status `failed`: the fleet gave up on the job (its message ran out of
--    deliveries, or a sweep found it could not be finished), with the reason in
--    `failure_reason`. Not `rejected` (the input was bad: resubmitting it cannot help) and not
--    `partial` (every item was tried and some failed: `retry --failed` re-runs them): a failed
--    job may have items that were never stored, and resubmitting it may well succeed.
-- 2. `message_seq`: the stream sequence of the job's message, so a dispatcher's sweep can find
--    a job whose message ran out of deliveries (it stays in the work-queue stream) and take it
--    over.
-- 3. `progress_at` / `progress_mark`: when a job was last seen to move, and what the sweep saw
--    of its open items then. Dispatchers touch `progress_at` when they take a job; the sweep
--    compares marks. Nothing on a worker's commit path writes here.

ALTER TABLE jobs DROP CONSTRAINT jobs_status_known;
ALTER TABLE jobs ADD CONSTRAINT jobs_status_known CHECK (status IN
    ('ingesting', 'dispatching', 'running', 'completed', 'partial', 'failed', 'rejected',
     'cancelled'));

ALTER TABLE jobs
    ADD COLUMN failure_reason text,
    ADD COLUMN message_seq bigint,
    ADD COLUMN progress_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN progress_mark text;

-- The sweep looks only at unfinished jobs, oldest progress first.
CREATE INDEX jobs_unfinished ON jobs (progress_at)
    WHERE status IN ('ingesting', 'dispatching', 'running');
