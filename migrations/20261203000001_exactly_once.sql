-- Every model call booked exactly once (docs/finance.md, "In-doubt calls"; docs/reliability.md).
--
-- 1. A call's identity is ours, not the provider's: each call gets a UUIDv7 and a durable
--    intent (`call_intents`) before its request leaves. The ledger stays unique on `call_id`,
--    which is now that id; the provider's response id is kept, sanitized, in a column of its
--    own that is not unique (some servers number their ids in a small range).
-- 2. An intent is also the claim on its attempt: one intent per (job, item, attempt) at a
--    time, so a second delivery of an attempt being called by a live worker waits instead of
--    calling again.
-- 3. Liveness is a lease per worker process (`worker_leases`), renewed by a task of its own.
--    An intent whose owner's lease ran out and that has no booking is booked `in_doubt` at its
--    worst case; budget holds of a dead owner are released (any month).
-- 4. Items know their current attempt, so stale and duplicate outcomes never decide an item.
-- 5. Budget spend lands in the month of the call's price time (the hold's month).

-- ---------------------------------------------------------------------------------------------
-- Worker leases.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE worker_leases (
    owner       text PRIMARY KEY,
    started_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL
);

-- True when `p_owner` holds no live lease: its lease ran out (or it never had one), and the
-- database has been up for at least `p_grace` (after a restart of Postgres every lease looks
-- expired; live owners get one lease period to renew before anything of theirs is taken).
CREATE FUNCTION owner_is_gone(p_owner text, p_grace interval) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT now() - pg_postmaster_start_time() > p_grace
       AND NOT EXISTS (SELECT 1 FROM worker_leases l
                       WHERE l.owner = p_owner AND l.expires_at >= now())
$$;

-- ---------------------------------------------------------------------------------------------
-- Call intents: written (group-committed) before a request leaves, deleted by the commit that
-- books the call, or booked `in_doubt` when their owner is gone.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE call_intents (
    call_id        text PRIMARY KEY,
    job_id         text NOT NULL,
    item_id        text NOT NULL,
    attempt        integer NOT NULL,
    team           text NOT NULL,
    project        text NOT NULL,
    tier           text NOT NULL,
    model          text NOT NULL,
    provider       text NOT NULL,
    owner          text NOT NULL,
    -- The call's worst case, as a budget hold computes it: prompt tokens cannot exceed this
    -- bound, completion tokens cannot exceed max_tokens.
    prompt_bound   integer NOT NULL CHECK (prompt_bound >= 0),
    max_tokens     integer NOT NULL CHECK (max_tokens >= 0),
    -- What the ledger row's counterfactual columns would say (see `counterfactual_cost`).
    escalation     boolean NOT NULL DEFAULT false,
    s_mode         text NOT NULL DEFAULT 'own',
    s_model        text,
    w_mode         text NOT NULL DEFAULT 'own',
    w_model        text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, item_id, attempt)
);
CREATE INDEX call_intents_owner ON call_intents (owner);

-- ---------------------------------------------------------------------------------------------
-- Items: the current attempt. An outcome decides its item only for the current attempt.
-- ---------------------------------------------------------------------------------------------
-- `attempt_tier` is where that attempt runs (NULL: `routed_tier`), so a sweeper can publish
-- the current attempt of an item whose message was lost.
ALTER TABLE items
    ADD COLUMN attempt integer NOT NULL DEFAULT 0,
    ADD COLUMN attempt_tier text;
UPDATE items i SET attempt = r.next
FROM (SELECT job_id, item_id, max(attempt) + 1 AS next FROM results
      WHERE escalated AND attempt < 1000 GROUP BY job_id, item_id) r
WHERE i.job_id = r.job_id AND i.item_id = r.item_id;

-- ---------------------------------------------------------------------------------------------
-- Results: answers Postgres text cannot hold (NUL) are stored JSON-escaped and flagged.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE results
    ADD COLUMN answer_encoding text CHECK (answer_encoding IN ('json'));

-- ---------------------------------------------------------------------------------------------
-- Ledger: our call id, the provider's response id, where the usage came from, settlements.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE ledger
    -- The provider's response id, sanitized (printable, at most 200 characters); not unique.
    ADD COLUMN provider_response_id text,
    -- `provider`: the response's usage; `estimated`: the provider sent no usable usage, tokens
    -- estimated from the text; `worst_case`: an in-doubt call, booked at its worst case.
    ADD COLUMN usage_source text NOT NULL DEFAULT 'provider'
        CHECK (usage_source IN ('provider', 'estimated', 'worst_case', 'evidence')),
    -- A settlement: this entry replaces `settles_entry_id` (reversed by its own entry) with
    -- what the evidence (a provider's usage report, the call's own late answer) says.
    ADD COLUMN settles_entry_id bigint UNIQUE REFERENCES ledger (entry_id);
CREATE INDEX ledger_in_doubt ON ledger (priced_at) WHERE outcome = 'in_doubt';
CREATE INDEX ledger_estimated ON ledger (priced_at) WHERE usage_source = 'estimated';

-- `ok` (the answer was used), `shadow`, `audit`, `duplicate` (a second copy of an attempt
-- whose other copy decided the item: real spend, never an answer), `in_doubt` (the owner died
-- between request and booking), `unusable` (the provider answered 200 with a body that holds
-- no usable answer: billed, item retried or failed).
ALTER TABLE ledger ADD CONSTRAINT ledger_outcome_known
    CHECK (outcome IN ('ok', 'shadow', 'audit', 'duplicate', 'in_doubt', 'unusable'));

ALTER TABLE ledger_daily
    ADD COLUMN in_doubt_cost_usd numeric NOT NULL DEFAULT 0,
    ADD COLUMN duplicate_cost_usd numeric NOT NULL DEFAULT 0;

-- The rollup trigger, now with in-doubt and duplicate costs, and budget spend in the month
-- of each entry's price time (a call held at 23:59:59.9 and booked after midnight is spent in
-- the month its hold was taken in, so neither month passes its limit).
CREATE OR REPLACE FUNCTION ledger_rollup() RETURNS trigger AS $$
BEGIN
    INSERT INTO ledger_daily AS d (day, team, project, job_id, model, tier, calls,
        prompt_tokens, cached_prompt_tokens, completion_tokens, cost_usd, cost_all_strong_usd,
        cost_all_weak_usd, escalation_cost_usd, shadow_cost_usd, retry_cost_usd,
        corrections_usd, in_doubt_cost_usd, duplicate_cost_usd)
    SELECT (n.created_at AT TIME ZONE 'UTC')::date, n.team, n.project, n.job_id, n.model, n.tier,
        sum(CASE WHEN n.kind = 'call' THEN 1 ELSE -1 END),
        sum(n.prompt_tokens), sum(n.cached_prompt_tokens), sum(n.completion_tokens),
        sum(n.cost_usd),
        sum(COALESCE(n.cost_all_strong_usd, n.cost_usd)),
        sum(COALESCE(n.cost_all_weak_usd, n.cost_usd)),
        sum(CASE WHEN n.escalation THEN n.cost_usd ELSE 0 END),
        sum(CASE WHEN n.outcome = 'shadow' THEN n.cost_usd ELSE 0 END),
        sum(CASE WHEN n.retry THEN n.cost_usd ELSE 0 END),
        sum(CASE WHEN n.kind = 'reversal' THEN n.cost_usd ELSE 0 END),
        sum(CASE WHEN n.outcome = 'in_doubt' THEN n.cost_usd ELSE 0 END),
        sum(CASE WHEN n.outcome = 'duplicate' THEN n.cost_usd ELSE 0 END)
    FROM new_rows n
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (day, team, project, job_id, model, tier) DO UPDATE SET
        calls = d.calls + EXCLUDED.calls,
        prompt_tokens = d.prompt_tokens + EXCLUDED.prompt_tokens,
        cached_prompt_tokens = d.cached_prompt_tokens + EXCLUDED.cached_prompt_tokens,
        completion_tokens = d.completion_tokens + EXCLUDED.completion_tokens,
        cost_usd = d.cost_usd + EXCLUDED.cost_usd,
        cost_all_strong_usd = d.cost_all_strong_usd + EXCLUDED.cost_all_strong_usd,
        cost_all_weak_usd = d.cost_all_weak_usd + EXCLUDED.cost_all_weak_usd,
        escalation_cost_usd = d.escalation_cost_usd + EXCLUDED.escalation_cost_usd,
        shadow_cost_usd = d.shadow_cost_usd + EXCLUDED.shadow_cost_usd,
        retry_cost_usd = d.retry_cost_usd + EXCLUDED.retry_cost_usd,
        corrections_usd = d.corrections_usd + EXCLUDED.corrections_usd,
        in_doubt_cost_usd = d.in_doubt_cost_usd + EXCLUDED.in_doubt_cost_usd,
        duplicate_cost_usd = d.duplicate_cost_usd + EXCLUDED.duplicate_cost_usd;

    INSERT INTO budget_periods AS p (team, month, spent_usd)
    SELECT n.team,
        date_trunc('month', COALESCE(n.priced_at, n.created_at) AT TIME ZONE 'UTC')::date,
        sum(n.cost_usd)
    FROM new_rows n
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (team, month) DO UPDATE SET spent_usd = p.spent_usd + EXCLUDED.spent_usd;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

-- ---------------------------------------------------------------------------------------------
-- Reporting views gain the new columns (appended, so CREATE OR REPLACE keeps them valid).
-- ---------------------------------------------------------------------------------------------
CREATE OR REPLACE VIEW reporting.ledger AS
SELECT entry_id, call_id, kind, reverses_entry_id, reason, job_id, item_id, attempt, team,
       project, tier, model, provider, price_id, prompt_tokens, cached_prompt_tokens,
       completion_tokens, cost_usd, cost_all_strong_usd, cost_all_weak_usd, batch, escalation,
       outcome, retry, latency_ms, COALESCE(priced_at, created_at) AS priced_at, created_at,
       provider_response_id, usage_source, settles_entry_id
FROM ledger;

CREATE OR REPLACE VIEW reporting.spend_daily AS SELECT * FROM ledger_daily;

-- Calls in flight right now, without prompts: what finance sees of money not yet booked.
CREATE VIEW reporting.call_intents AS
SELECT call_id, job_id, item_id, attempt, team, project, tier, model, provider, owner,
       created_at
FROM call_intents;
