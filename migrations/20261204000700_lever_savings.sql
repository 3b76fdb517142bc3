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

-- The same per UTC day, in the daily rollup: two columns summed by a trigger of their own,
-- which fires after `ledger_rollup` (triggers of one event fire in name order), so the day's
-- row exists and is already locked by this transaction. Only entries that can save anything
-- are looked at: the common real-time, uncached call costs the rollup nothing more.
ALTER TABLE ledger_daily
    ADD COLUMN batch_savings_usd numeric NOT NULL DEFAULT 0,
    ADD COLUMN cache_savings_usd numeric NOT NULL DEFAULT 0;

CREATE FUNCTION ledger_rollup_levers() RETURNS trigger AS $$
BEGIN
    UPDATE ledger_daily d SET batch_savings_usd = d.batch_savings_usd + s.batch_usd,
        cache_savings_usd = d.cache_savings_usd + s.cache_usd
    FROM (SELECT (n.created_at AT TIME ZONE 'UTC')::date AS day, n.team, n.project, n.job_id,
              n.model, n.tier, sum(v.batch_savings_usd) AS batch_usd,
              sum(v.cache_savings_usd) AS cache_usd
          FROM new_rows n JOIN ledger_levers v ON v.entry_id = n.entry_id
          WHERE n.batch OR n.kind = 'reversal' OR n.cached_prompt_tokens <> 0
              OR n.cache_write_tokens <> 0
          GROUP BY 1, 2, 3, 4, 5, 6) s
    WHERE (d.day, d.team, d.project, d.job_id, d.model, d.tier)
        = (s.day, s.team, s.project, s.job_id, s.model, s.tier);
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER ledger_rollup_levers
    AFTER INSERT ON ledger
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_rollup_levers();

-- Entries booked before this migration.
UPDATE ledger_daily d SET batch_savings_usd = s.batch_usd, cache_savings_usd = s.cache_usd
FROM (SELECT (n.created_at AT TIME ZONE 'UTC')::date AS day, n.team, n.project, n.job_id,
          n.model, n.tier, sum(v.batch_savings_usd) AS batch_usd,
          sum(v.cache_savings_usd) AS cache_usd
      FROM ledger n JOIN ledger_levers v ON v.entry_id = n.entry_id
      WHERE n.batch OR n.kind = 'reversal' OR n.cached_prompt_tokens <> 0
          OR n.cache_write_tokens <> 0
      GROUP BY 1, 2, 3, 4, 5, 6) s
WHERE (d.day, d.team, d.project, d.job_id, d.model, d.tier)
    = (s.day, s.team, s.project, s.job_id, s.model, s.tier);

-- Finance reads both (`switchyard ledger grant-finance` grants every view of the schema;
-- the rollup's view is re-created so `*` takes in the new columns).
CREATE OR REPLACE VIEW reporting.spend_daily AS SELECT * FROM ledger_daily;
CREATE VIEW reporting.ledger_levers AS SELECT * FROM ledger_levers;
