-- What the provider levers saved, apart from what routing saved (docs/finance.md, "Batch and
-- cache savings"). Routing savings compare the all-strong counterfactual with what was spent;
-- a call made through a provider's batch API, or served from a provider's prompt cache, costs
-- less for reasons routing has no part in, and those savings must never count toward the
-- routing promise. Per entry:
--   cache savings: the call at list price (no cache pricing) minus the call as priced with its
--     cache reads and writes, both at the real-time price (negative when a write's premium was
--     not yet earned back by reads);
--   batch savings: for a call made through a batch, the call at the real-time price minus what
--     was booked.
-- A reversal saves the negation of what the entry it reverses saved. Entries without a price
-- version save nothing here.

CREATE VIEW ledger_levers AS
SELECT e.entry_id,
       CASE WHEN e.kind = 'reversal' THEN -s.batch_usd ELSE s.batch_usd END AS batch_savings_usd,
       CASE WHEN e.kind = 'reversal' THEN -s.cache_usd ELSE s.cache_usd END AS cache_savings_usd
FROM ledger e
JOIN ledger c ON c.entry_id = COALESCE(e.reverses_entry_id, e.entry_id)
CROSS JOIN LATERAL (
    SELECT call_cost(c.price_id, c.prompt_tokens, c.cached_prompt_tokens, c.cache_write_tokens,
                     c.cache_write_1h_tokens, c.completion_tokens, false) AS real_time
) rt
CROSS JOIN LATERAL (
    SELECT COALESCE(CASE WHEN c.batch THEN rt.real_time - c.cost_usd END, 0) AS batch_usd,
           COALESCE(CASE WHEN c.cached_prompt_tokens > 0 OR c.cache_write_tokens > 0 THEN
               call_cost(c.price_id, c.prompt_tokens, 0, 0, 0, c.completion_tokens, false)
               - rt.real_time END, 0) AS cache_usd
) s;

-- The same per UTC day, kept by a trigger beside `ledger_daily` (whose trigger is left as it
-- is): only entries that can save anything are looked at, so the common real-time, uncached
-- call costs the rollup nothing more.
CREATE TABLE ledger_daily_levers (
    day               date NOT NULL,
    team              text NOT NULL,
    project           text NOT NULL,
    job_id            text NOT NULL,
    model             text NOT NULL,
    tier              text NOT NULL,
    batch_savings_usd numeric NOT NULL,
    cache_savings_usd numeric NOT NULL,
    PRIMARY KEY (day, team, project, job_id, model, tier)
);

CREATE FUNCTION ledger_levers_rollup() RETURNS trigger AS $$
BEGIN
    INSERT INTO ledger_daily_levers AS d (day, team, project, job_id, model, tier,
        batch_savings_usd, cache_savings_usd)
    SELECT (n.created_at AT TIME ZONE 'UTC')::date, n.team, n.project, n.job_id, n.model,
        n.tier, sum(v.batch_savings_usd), sum(v.cache_savings_usd)
    FROM new_rows n JOIN ledger_levers v ON v.entry_id = n.entry_id
    WHERE n.batch OR n.kind = 'reversal' OR n.cached_prompt_tokens <> 0
        OR n.cache_write_tokens <> 0
    GROUP BY 1, 2, 3, 4, 5, 6
    ORDER BY 1, 2, 3, 4, 5, 6
    ON CONFLICT (day, team, project, job_id, model, tier) DO UPDATE SET
        batch_savings_usd = d.batch_savings_usd + EXCLUDED.batch_savings_usd,
        cache_savings_usd = d.cache_savings_usd + EXCLUDED.cache_savings_usd;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER ledger_levers_rollup
    AFTER INSERT ON ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_levers_rollup();

-- Entries booked before this migration.
INSERT INTO ledger_daily_levers (day, team, project, job_id, model, tier, batch_savings_usd,
    cache_savings_usd)
SELECT (n.created_at AT TIME ZONE 'UTC')::date, n.team, n.project, n.job_id, n.model, n.tier,
    sum(v.batch_savings_usd), sum(v.cache_savings_usd)
FROM ledger n JOIN ledger_levers v ON v.entry_id = n.entry_id
WHERE n.batch OR n.kind = 'reversal' OR n.cached_prompt_tokens <> 0 OR n.cache_write_tokens <> 0
GROUP BY 1, 2, 3, 4, 5, 6;

-- Finance reads both (`switchyard ledger grant-finance` grants every view of the schema).
CREATE VIEW reporting.ledger_levers AS SELECT * FROM ledger_levers;
CREATE VIEW reporting.spend_levers_daily AS SELECT * FROM ledger_daily_levers;
