-- The fleet's tables: jobs, their items, results per attempt, prices, the cost ledger and
-- dead letters. Money is NUMERIC (exact decimal), never floating point.

-- One row per submitted job, including rejected ones (so `switchyard status` can show why).
CREATE TABLE jobs (
    job_id            text PRIMARY KEY,
    -- NULL for rejected submissions, so a rejected attempt never blocks a correct re-submit.
    idempotency_key   text UNIQUE,
    -- sha256 of the canonical spec: the same key with different content is refused.
    spec_hash         text,
    team              text NOT NULL DEFAULT 'default',
    project           text NOT NULL DEFAULT 'default',
    task_kind         text,
    task              jsonb,
    policy            jsonb,
    labels            jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- ingesting → dispatching → running → completed | partial; or rejected | cancelled.
    status            text NOT NULL,
    item_count        bigint,
    -- The cut the policy applied to router scores: items scoring above `routing_cut` (or
    -- equal to it with seq <= `routing_cut_seq`) went strong. NULL: nothing went strong.
    routing_cut       real,
    routing_cut_seq   bigint,
    rejection_reason  text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    dispatched_at     timestamptz,
    finished_at       timestamptz,
    CONSTRAINT jobs_status_known CHECK (status IN
        ('ingesting', 'dispatching', 'running', 'completed', 'partial', 'rejected', 'cancelled'))
);
CREATE INDEX jobs_created_at ON jobs (created_at);

-- One row per item of a job. The input text is kept so failed items can be retried without
-- the original file; `switchyard purge` (later) can drop it.
CREATE TABLE items (
    job_id         text NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    item_id        text NOT NULL,
    -- Position in the input: ties in routing are broken by it, exports keep input order.
    seq            bigint NOT NULL,
    text           text NOT NULL,
    input_hash     text NOT NULL,
    sensitivity    text,
    metadata       jsonb,
    router_score   real NOT NULL,
    -- NULL until the dispatcher has applied the policy.
    routed_tier    text,
    -- pending (ingested) → queued (published) → done | failed; or cancelled.
    status         text NOT NULL DEFAULT 'pending',
    -- The attempt whose answer is final, and where it ran.
    final_attempt  integer,
    final_tier     text,
    error          text,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, item_id),
    CONSTRAINT items_status_known CHECK (status IN
        ('pending', 'queued', 'done', 'failed', 'cancelled'))
);
CREATE UNIQUE INDEX items_job_seq ON items (job_id, seq);
-- Completion checks only look at open items; this index stays small as items finish.
CREATE INDEX items_open ON items (job_id) WHERE status IN ('pending', 'queued');

-- The answer of each attempt. (job_id, item_id, attempt) is the unit of exactly-once effect.
CREATE TABLE results (
    job_id       text NOT NULL,
    item_id      text NOT NULL,
    attempt      integer NOT NULL,
    tier         text NOT NULL,
    model        text NOT NULL,
    answer       text NOT NULL,
    confidence   double precision NOT NULL,
    -- True when this answer was below the cascade threshold and the item moved on.
    escalated    boolean NOT NULL,
    call_id      text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, item_id, attempt),
    FOREIGN KEY (job_id, item_id) REFERENCES items (job_id, item_id) ON DELETE CASCADE
);

-- Price versions. Never updated in place: a new row with a later effective_from is a new
-- version, and every ledger row names the version it was priced with.
CREATE TABLE prices (
    price_id               bigserial PRIMARY KEY,
    model                  text NOT NULL,
    provider               text NOT NULL,
    input_usd_per_mtok     numeric NOT NULL CHECK (input_usd_per_mtok >= 0),
    output_usd_per_mtok    numeric NOT NULL CHECK (output_usd_per_mtok >= 0),
    effective_from         timestamptz NOT NULL,
    created_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (model, effective_from)
);

-- The cost ledger: one row per model call, append-only (see the trigger below).
-- Keyed by the call itself (the provider's response id, or one the worker minted), so the
-- same call can never be booked twice while a redelivered item that really calls the model
-- again books a second row marked `retry`.
CREATE TABLE ledger (
    entry_id           bigserial PRIMARY KEY,
    call_id            text NOT NULL UNIQUE,
    job_id             text NOT NULL,
    item_id            text NOT NULL,
    attempt            integer NOT NULL,
    team               text NOT NULL,
    project            text NOT NULL,
    tier               text NOT NULL,
    model              text NOT NULL,
    provider           text NOT NULL,
    price_id           bigint NOT NULL REFERENCES prices (price_id),
    prompt_tokens      integer NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens  integer NOT NULL CHECK (completion_tokens >= 0),
    -- Exact: tokens × USD per million tokens / 10^6, never rounded.
    cost_usd           numeric NOT NULL CHECK (cost_usd >= 0),
    latency_ms         integer NOT NULL,
    -- `ok`: the answer was used (final or escalated from).
    outcome            text NOT NULL,
    -- The item was delivered again and the model called again: real extra spend.
    retry              boolean NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ledger_job ON ledger (job_id);
CREATE INDEX ledger_team_time ON ledger (team, created_at);

CREATE FUNCTION ledger_is_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only: % is not allowed (book a reversal entry instead)', TG_OP;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER ledger_append_only
    BEFORE UPDATE OR DELETE ON ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_is_append_only();
CREATE TRIGGER ledger_no_truncate
    BEFORE TRUNCATE ON ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_is_append_only();

-- Messages that died: rejected jobs and items that failed for good, with the last error.
CREATE TABLE dead_letters (
    dead_letter_id  bigserial PRIMARY KEY,
    -- What makes recording idempotent under redelivery: `<stream>:<sequence>` of a job
    -- message, or the attempt key of an item.
    message_key     text NOT NULL UNIQUE,
    kind            text NOT NULL CHECK (kind IN ('job', 'item')),
    job_id          text,
    item_id         text,
    attempt         integer,
    subject         text NOT NULL,
    deliveries      integer,
    error           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_job ON dead_letters (job_id);
