-- The cost ledger finance can trust (issue 4): price versions resolved by time, exact costs
-- computed by the database, reversal entries, daily rollups, budgets with reservations, and
-- read-only reporting views for a finance role. See docs/finance.md.

-- ---------------------------------------------------------------------------------------------
-- Prices: every version is a row that is never changed. A version is in force from its
-- `effective_from` until the next version of the same model takes over.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE prices
    ADD COLUMN cached_input_usd_per_mtok numeric
        CHECK (cached_input_usd_per_mtok >= 0 AND cached_input_usd_per_mtok <= 10000),
    -- Fraction taken off calls made through a provider's batch API (0.5 = half price).
    ADD COLUMN batch_discount numeric NOT NULL DEFAULT 0
        CHECK (batch_discount >= 0 AND batch_discount < 1),
    ADD CONSTRAINT prices_not_absurd
        CHECK (input_usd_per_mtok <= 10000 AND output_usd_per_mtok <= 10000);

CREATE FUNCTION prices_are_immutable() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'price versions are never changed: % is not allowed (set a new version instead)', TG_OP;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER prices_immutable
    BEFORE UPDATE OR DELETE ON prices
    FOR EACH ROW EXECUTE FUNCTION prices_are_immutable();

-- The version of `p_model` in force at `p_at` (NULL when the model had no price then).
CREATE FUNCTION price_in_force(p_model text, p_at timestamptz) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT price_id FROM prices
    WHERE model = p_model AND effective_from <= p_at
    ORDER BY effective_from DESC LIMIT 1
$$;

-- The exact cost of a call under a price version: nothing is rounded (a multiplication by
-- 10^-6 is exact in NUMERIC). Mirrored by `switchyard_core::tariff::Tariff::cost`.
CREATE FUNCTION call_cost(p_price_id bigint, p_prompt integer, p_cached integer,
                          p_completion integer, p_batch boolean) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT ((p_prompt - p_cached) * p.input_usd_per_mtok
            + p_cached * COALESCE(p.cached_input_usd_per_mtok, p.input_usd_per_mtok)
            + p_completion * p.output_usd_per_mtok)
           * CASE WHEN p_batch THEN 1 - p.batch_discount ELSE 1 END
           * 0.000001
    FROM prices p WHERE p.price_id = p_price_id
$$;

-- What one call would have cost in a counterfactual ("everything strong", "everything
-- weak"): `own` (the call is what that world would have paid), `zero` (that world would not
-- have made it), or `reprice` (the same tokens at `p_model`'s price in force at `p_at`).
CREATE FUNCTION counterfactual_cost(p_mode text, p_model text, p_at timestamptz,
                                    p_prompt integer, p_cached integer, p_completion integer,
                                    p_own numeric) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT CASE p_mode
        WHEN 'own' THEN p_own
        WHEN 'zero' THEN 0::numeric
        ELSE call_cost(price_in_force(p_model, p_at), p_prompt, p_cached, p_completion, false)
    END
$$;

-- ---------------------------------------------------------------------------------------------
-- The ledger: reversal entries, the time a call was priced at, counterfactual costs.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE ledger
    -- `call`: a model call. `reversal`: cancels one entry exactly (negated tokens and costs),
    -- booked by `switchyard ledger correct` with a reason.
    ADD COLUMN kind text NOT NULL DEFAULT 'call',
    -- An entry is reversed at most once (UNIQUE).
    ADD COLUMN reverses_entry_id bigint UNIQUE REFERENCES ledger (entry_id),
    ADD COLUMN reason text,
    ADD COLUMN cached_prompt_tokens integer NOT NULL DEFAULT 0,
    -- Made through a provider's batch API (the price version's batch discount applies).
    ADD COLUMN batch boolean NOT NULL DEFAULT false,
    -- The time the call's price was resolved at: the price version is the one in force then.
    -- NULL only for rows booked before this migration (their `created_at` stands in).
    ADD COLUMN priced_at timestamptz,
    -- This call happened because an earlier answer of the item escalated.
    ADD COLUMN escalation boolean NOT NULL DEFAULT false,
    -- Estimates: this call's share of the item's cost had every item gone to the strong tier
    -- (or the weak tier), the same tokens repriced. NULL (older rows): the call's own cost.
    ADD COLUMN cost_all_strong_usd numeric,
    ADD COLUMN cost_all_weak_usd numeric;

ALTER TABLE ledger DROP CONSTRAINT ledger_cost_usd_check;
ALTER TABLE ledger DROP CONSTRAINT ledger_prompt_tokens_check;
ALTER TABLE ledger DROP CONSTRAINT ledger_completion_tokens_check;
ALTER TABLE ledger ADD CONSTRAINT ledger_kind_known CHECK (
    (kind = 'call' AND reverses_entry_id IS NULL AND cost_usd >= 0 AND prompt_tokens >= 0
        AND completion_tokens >= 0 AND cached_prompt_tokens >= 0
        AND cached_prompt_tokens <= prompt_tokens)
    OR (kind = 'reversal' AND reverses_entry_id IS NOT NULL AND cost_usd <= 0
        AND length(btrim(reason)) > 0));

-- Month reports read the rollup; these serve raw reads by time and the back-dating check of
-- `prices set` (the latest call booked for a model).
CREATE INDEX ledger_created_at ON ledger (created_at);
CREATE INDEX ledger_model_priced_at ON ledger (model, priced_at);

-- ---------------------------------------------------------------------------------------------
-- Daily rollup, kept by the database itself (statement trigger below), so a month's report
-- reads a few thousand rows instead of millions. Every column is a plain sum of ledger rows
-- (UTC days), so rollup totals equal ledger totals exactly; a test checks every grouping.
-- ---------------------------------------------------------------------------------------------
CREATE TABLE ledger_daily (
    day                   date NOT NULL,
    team                  text NOT NULL,
    project               text NOT NULL,
    job_id                text NOT NULL,
    model                 text NOT NULL,
    tier                  text NOT NULL,
    -- Calls net of reversals (a reversed call counts -1).
    calls                 bigint NOT NULL,
    prompt_tokens         bigint NOT NULL,
    cached_prompt_tokens  bigint NOT NULL,
    completion_tokens     bigint NOT NULL,
    cost_usd              numeric NOT NULL,
    cost_all_strong_usd   numeric NOT NULL,
    cost_all_weak_usd     numeric NOT NULL,
    escalation_cost_usd   numeric NOT NULL,
    shadow_cost_usd       numeric NOT NULL,
    retry_cost_usd        numeric NOT NULL,
    corrections_usd       numeric NOT NULL,
    PRIMARY KEY (day, team, project, job_id, model, tier)
);

-- ---------------------------------------------------------------------------------------------
-- Budgets: a monthly hard limit per team (and an optional soft limit that warns once).
-- ---------------------------------------------------------------------------------------------
CREATE TABLE budgets (
    team            text PRIMARY KEY,
    monthly_usd     numeric NOT NULL CHECK (monthly_usd > 0 AND monthly_usd <= 1000000000),
    soft_usd        numeric CHECK (soft_usd > 0),
    -- What a call that does not fit does: `downgrade` (a strong call goes weak; a weak one
    -- waits) or `wait` (the item waits until the budget has room again).
    when_exhausted  text NOT NULL DEFAULT 'downgrade'
        CHECK (when_exhausted IN ('downgrade', 'wait')),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT budgets_soft_below_hard CHECK (soft_usd IS NULL OR soft_usd < monthly_usd)
);

-- One row per team and UTC month that booked anything or reserved anything: what was spent
-- (kept by the ledger trigger, so it always equals the ledger) and what is held by calls in
-- flight. A reservation is admitted only by an UPDATE whose WHERE clause checks
-- `spent + reserved + amount <= limit`, which Postgres evaluates under the row lock: two
-- workers can never both take the last dollar.
CREATE TABLE budget_periods (
    team            text NOT NULL,
    month           date NOT NULL,
    spent_usd       numeric NOT NULL DEFAULT 0,
    reserved_usd    numeric NOT NULL DEFAULT 0 CHECK (reserved_usd >= 0),
    soft_warned_at  timestamptz,
    PRIMARY KEY (team, month)
);

-- Worst-case holds of calls in flight. The worker renews `expires_at` while its call runs; a
-- hold whose worker stopped renewing it (died) expires and is reclaimed.
CREATE TABLE budget_reservations (
    reservation_id  bigserial PRIMARY KEY,
    team            text NOT NULL,
    month           date NOT NULL,
    amount_usd      numeric NOT NULL CHECK (amount_usd > 0),
    holder          text NOT NULL,
    job_id          text NOT NULL,
    item_id         text NOT NULL,
    attempt         integer NOT NULL,
    model           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL
);
CREATE INDEX budget_reservations_expiry ON budget_reservations (team, month, expires_at);

-- Items waiting for budget: the work message is kept here (not in JetStream, where waiting
-- would burn deliveries) and re-published when the team's budget has room again.
CREATE TABLE budget_parked (
    park_id         bigserial PRIMARY KEY,
    team            text NOT NULL,
    job_id          text NOT NULL,
    item_id         text NOT NULL,
    attempt         integer NOT NULL,
    tier            text NOT NULL,
    worst_case_usd  numeric NOT NULL,
    payload         bytea NOT NULL,
    parked_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (job_id, item_id, attempt)
);
CREATE INDEX budget_parked_team ON budget_parked (team, park_id);

-- What budgets did to items and teams, for reports: `downgraded` (a strong call went weak),
-- `waiting` (parked), `soft_limit` (the warning event was published).
CREATE TABLE budget_events (
    event_id    bigserial PRIMARY KEY,
    team        text NOT NULL,
    kind        text NOT NULL CHECK (kind IN ('downgraded', 'waiting', 'soft_limit')),
    job_id      text,
    item_id     text,
    attempt     integer,
    detail      text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX budget_events_once ON budget_events (kind, job_id, item_id, attempt)
    WHERE job_id IS NOT NULL;
CREATE INDEX budget_events_team ON budget_events (team, created_at);

-- ---------------------------------------------------------------------------------------------
-- The trigger that keeps the rollup and the budget periods equal to the ledger. Statement
-- level, over the inserted rows only (an `ON CONFLICT DO NOTHING` duplicate adds nothing);
-- upserts go in key order so concurrent committers lock rows in the same order.
-- ---------------------------------------------------------------------------------------------
CREATE FUNCTION ledger_rollup() RETURNS trigger AS $$
BEGIN
    INSERT INTO ledger_daily AS d (day, team, project, job_id, model, tier, calls,
        prompt_tokens, cached_prompt_tokens, completion_tokens, cost_usd, cost_all_strong_usd,
        cost_all_weak_usd, escalation_cost_usd, shadow_cost_usd, retry_cost_usd,
        corrections_usd)
    SELECT (n.created_at AT TIME ZONE 'UTC')::date, n.team, n.project, n.job_id, n.model, n.tier,
        sum(CASE WHEN n.kind = 'call' THEN 1 ELSE -1 END),
        sum(n.prompt_tokens), sum(n.cached_prompt_tokens), sum(n.completion_tokens),
        sum(n.cost_usd),
        sum(COALESCE(n.cost_all_strong_usd, n.cost_usd)),
        sum(COALESCE(n.cost_all_weak_usd, n.cost_usd)),
        sum(CASE WHEN n.escalation THEN n.cost_usd ELSE 0 END),
        sum(CASE WHEN n.outcome = 'shadow' THEN n.cost_usd ELSE 0 END),
        sum(CASE WHEN n.retry THEN n.cost_usd ELSE 0 END),
        sum(CASE WHEN n.kind = 'reversal' THEN n.cost_usd ELSE 0 END)
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
        corrections_usd = d.corrections_usd + EXCLUDED.corrections_usd;

    INSERT INTO budget_periods AS p (team, month, spent_usd)
    SELECT n.team, date_trunc('month', n.created_at AT TIME ZONE 'UTC')::date, sum(n.cost_usd)
    FROM new_rows n
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (team, month) DO UPDATE SET spent_usd = p.spent_usd + EXCLUDED.spent_usd;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER ledger_rollup
    AFTER INSERT ON ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_rollup();

-- Rows booked before this migration.
INSERT INTO ledger_daily (day, team, project, job_id, model, tier, calls, prompt_tokens,
    cached_prompt_tokens, completion_tokens, cost_usd, cost_all_strong_usd, cost_all_weak_usd,
    escalation_cost_usd, shadow_cost_usd, retry_cost_usd, corrections_usd)
SELECT (created_at AT TIME ZONE 'UTC')::date, team, project, job_id, model, tier, count(*),
    sum(prompt_tokens), 0, sum(completion_tokens), sum(cost_usd), sum(cost_usd), sum(cost_usd),
    0, sum(CASE WHEN outcome = 'shadow' THEN cost_usd ELSE 0 END),
    sum(CASE WHEN retry THEN cost_usd ELSE 0 END), 0
FROM ledger GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO budget_periods (team, month, spent_usd)
SELECT team, date_trunc('month', created_at AT TIME ZONE 'UTC')::date, sum(cost_usd)
FROM ledger GROUP BY 1, 2;

-- ---------------------------------------------------------------------------------------------
-- Retention: `switchyard purge` blanks prompts and answers of old jobs and stamps them.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE jobs ADD COLUMN purged_at timestamptz;
CREATE INDEX jobs_finished_at ON jobs (finished_at) WHERE purged_at IS NULL;
CREATE INDEX jobs_team ON jobs (team);

-- ---------------------------------------------------------------------------------------------
-- Reporting views for finance. A finance role is granted USAGE on this schema and SELECT on
-- its views only (`switchyard ledger grant-finance ROLE`): views run with their owner's
-- rights, so the role reads costs without any right on `items` (prompts) or `results`
-- (answers).
-- ---------------------------------------------------------------------------------------------
CREATE SCHEMA reporting;

CREATE VIEW reporting.ledger AS
SELECT entry_id, call_id, kind, reverses_entry_id, reason, job_id, item_id, attempt, team,
       project, tier, model, provider, price_id, prompt_tokens, cached_prompt_tokens,
       completion_tokens, cost_usd, cost_all_strong_usd, cost_all_weak_usd, batch, escalation,
       outcome, retry, latency_ms, COALESCE(priced_at, created_at) AS priced_at, created_at
FROM ledger;

CREATE VIEW reporting.spend_daily AS SELECT * FROM ledger_daily;

CREATE VIEW reporting.prices AS
SELECT p.price_id, p.model, p.provider, p.input_usd_per_mtok, p.cached_input_usd_per_mtok,
       p.output_usd_per_mtok, p.batch_discount, p.effective_from,
       lead(p.effective_from) OVER (PARTITION BY p.model ORDER BY p.effective_from)
           AS effective_until,
       p.created_at
FROM prices p;

CREATE VIEW reporting.budgets AS
SELECT b.team, b.monthly_usd, b.soft_usd, b.when_exhausted,
       date_trunc('month', now() AT TIME ZONE 'UTC')::date AS month,
       COALESCE(p.spent_usd, 0) AS spent_usd, COALESCE(p.reserved_usd, 0) AS reserved_usd,
       b.monthly_usd - COALESCE(p.spent_usd, 0) - COALESCE(p.reserved_usd, 0) AS available_usd,
       p.soft_warned_at
FROM budgets b
LEFT JOIN budget_periods p
  ON p.team = b.team AND p.month = date_trunc('month', now() AT TIME ZONE 'UTC')::date;

CREATE VIEW reporting.budget_events AS
SELECT event_id, team, kind, job_id, item_id, attempt, detail, created_at FROM budget_events;

CREATE VIEW reporting.budget_periods AS
SELECT team, month, spent_usd, reserved_usd, soft_warned_at FROM budget_periods;

-- Items waiting for budget, without their work message (it holds the prompt).
CREATE VIEW reporting.budget_waiting AS
SELECT park_id, team, job_id, item_id, attempt, tier, worst_case_usd, parked_at
FROM budget_parked;

-- Jobs without their task (instructions are prompt text).
CREATE VIEW reporting.jobs AS
SELECT job_id, team, project, task_kind, status, item_count, created_at, dispatched_at,
       finished_at, purged_at
FROM jobs;
