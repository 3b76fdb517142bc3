-- Provider batches (docs/finance.md, "Provider batches"): items of deadline-tolerant jobs sent
-- through a provider's batch API at its batch price. The record comes first: a batch and each
-- line's `custom_id` are committed before anything is uploaded, the provider batch is created
-- with `metadata.switchyard_batch = batch_id`, and its ids are recorded after. A crash between
-- creating and recording leaves a `recorded` row that any worker finds again by its metadata
-- (never a second provider batch of the same lines); a worker that dies while batches are
-- open leaves rows whose lease runs out, and another worker adopts them and keeps polling.

CREATE TABLE provider_batches (
    -- Ours (`pb_<ulid>`), in the provider batch's metadata.
    batch_id          text PRIMARY KEY,
    model             text NOT NULL,
    provider          text NOT NULL,
    -- recorded → submitted → ended; `abandoned`: nothing was sent (no line, or the provider
    -- refused the upload), its lines went back to real time.
    status            text NOT NULL CHECK (status IN ('recorded', 'submitted', 'ended', 'abandoned')),
    provider_batch_id text UNIQUE,
    input_file_id     text,
    output_file_id    text,
    error_file_id     text,
    line_count        integer NOT NULL DEFAULT 0,
    -- The earliest deadline of its lines: past it, what is left goes to real time.
    deadline          timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    submitted_at      timestamptz,
    ended_at          timestamptz,
    -- Which worker looks at it next and until when (not the worker that created it: any
    -- worker adopts a batch whose lease ran out).
    lease_owner       text,
    lease_until       timestamptz
);
CREATE INDEX provider_batches_open ON provider_batches (lease_until)
    WHERE status IN ('recorded', 'submitted');

CREATE TABLE provider_batch_lines (
    batch_id   text NOT NULL REFERENCES provider_batches (batch_id) ON DELETE CASCADE,
    -- The line's ledger call id, which is also its `custom_id` at the provider (a UUID:
    -- within Anthropic's `^[a-zA-Z0-9_-]{1,64}$`).
    call_id    text NOT NULL,
    job_id     text NOT NULL,
    item_id    text NOT NULL,
    attempt    integer NOT NULL,
    -- open → booked (its answer or failure is committed) | returned (sent back to real time).
    status     text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'booked', 'returned')),
    PRIMARY KEY (batch_id, call_id),
    UNIQUE (call_id)
);
-- An attempt is in at most one open line: recording it twice (a redelivered message) adds
-- nothing, so no attempt is sent, answered or booked twice.
CREATE UNIQUE INDEX provider_batch_lines_open_attempt
    ON provider_batch_lines (job_id, item_id, attempt) WHERE status = 'open';
