-- The OpenAI-compatible Batch API (docs/openai-compatibility.md).
--
-- 1. `api_keys`: keys act as their team. Only a SHA-256 of the secret is kept, so the secret
--    is shown once, at creation, and a leaked table cannot be replayed. Revoked keys stay
--    (their batches still name them) and stop authenticating.
-- 2. `api_files`: uploads and the output and error files batches write. The bytes live in
--    the NATS object store bucket `<PREFIX>_FILES` under `object_name`; a deleted file keeps
--    its row (a batch may name it) with `deleted_at` set and its object removed.
-- 3. `api_batches`: a batch, its OpenAI status with the time of each step, the faults that
--    failed it, and the job behind it. Ids are ULID-based and so time-ordered: lists page by
--    id, newest first, with the SDK's `after` cursor.

CREATE TABLE api_keys (
    key_id        text PRIMARY KEY,
    team          text NOT NULL,
    name          text,
    secret_sha256 bytea NOT NULL UNIQUE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz
);

CREATE TABLE api_files (
    file_id     text PRIMARY KEY,
    team        text NOT NULL,
    purpose     text NOT NULL CHECK (purpose IN ('batch', 'batch_output')),
    filename    text NOT NULL,
    bytes       bigint NOT NULL CHECK (bytes >= 0),
    object_name text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

CREATE INDEX api_files_by_team ON api_files (team, file_id DESC) WHERE deleted_at IS NULL;

CREATE TABLE api_batches (
    batch_id          text PRIMARY KEY,
    team              text NOT NULL,
    key_id            text NOT NULL REFERENCES api_keys (key_id),
    input_file_id     text NOT NULL REFERENCES api_files (file_id),
    endpoint          text NOT NULL,
    completion_window text NOT NULL,
    metadata          jsonb,
    status            text NOT NULL CHECK (status IN
        ('validating', 'failed', 'in_progress', 'finalizing', 'completed', 'expired',
         'cancelling', 'cancelled')),
    errors            jsonb,
    job_id            text,
    output_file_id    text REFERENCES api_files (file_id),
    error_file_id     text REFERENCES api_files (file_id),
    request_total     bigint NOT NULL DEFAULT 0,
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,
    in_progress_at    timestamptz,
    finalizing_at     timestamptz,
    completed_at      timestamptz,
    failed_at         timestamptz,
    expired_at        timestamptz,
    cancelling_at     timestamptz,
    cancelled_at      timestamptz,
    -- Which API process works on the batch's next step (validation, finalization) and until
    -- when; another process takes over a step whose lease ran out (any number of API
    -- processes run, with no state of their own).
    lease_owner       text,
    lease_until       timestamptz
);

CREATE INDEX api_batches_by_team ON api_batches (team, batch_id DESC);
-- Batches with a step to take: validating, or running towards finalization.
CREATE INDEX api_batches_open ON api_batches (lease_until)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');
