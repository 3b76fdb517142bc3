-- Reconciliation against a provider's usage evidence (`switchyard ledger reconcile`,
-- docs/finance.md "In-doubt calls and reconciliation").
--
-- An in-doubt call settled by evidence keeps its outcome (`in_doubt`: its answer was never
-- used) but its cost is now known (`usage_source = 'evidence'`). The rollup's
-- `in_doubt_cost_usd` is what is still unknown: worst-case in-doubt entries net of their
-- reversals (a reversal copies its entry's usage source, so a settled entry nets to zero).
-- Before this migration no entry had `usage_source = 'evidence'`, so the existing rollup rows
-- already say exactly this and need no recomputation.

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
        sum(CASE WHEN n.outcome = 'in_doubt' AND n.usage_source = 'worst_case'
            THEN n.cost_usd ELSE 0 END),
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

-- The same figure, per team and UTC day, from the ledger itself: what finance still has to
-- settle, with the entries' count.
CREATE VIEW reporting.in_doubt_open AS
SELECT l.team, (COALESCE(l.priced_at, l.created_at) AT TIME ZONE 'UTC')::date AS day,
       count(*) AS calls, sum(l.cost_usd) AS in_doubt_usd
FROM ledger l
WHERE l.kind = 'call' AND l.outcome = 'in_doubt' AND l.usage_source = 'worst_case'
  AND NOT EXISTS (SELECT 1 FROM ledger r WHERE r.reverses_entry_id = l.entry_id)
GROUP BY 1, 2;
