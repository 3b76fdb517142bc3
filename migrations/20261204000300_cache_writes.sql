-- Prompt caching booked exactly (docs/finance.md): writes to a provider's cache are priced
-- at their own rates, and the usage the provider reported is kept with each call.
--
-- Anthropic bills tokens written to its cache at 1.25 × input (kept 5 minutes) or 2 × input
-- (kept an hour), reads at 0.1 × input. A call's `prompt_tokens` is its whole prompt (the
-- worker normalizes Anthropic's `input_tokens`, which leaves cache tokens out), of which
-- `cached_prompt_tokens` were read from the cache and `cache_write_tokens` written to it,
-- `cache_write_1h_tokens` of those for an hour.

ALTER TABLE prices
    -- NULL: the input price.
    ADD COLUMN cache_write_usd_per_mtok numeric
        CHECK (cache_write_usd_per_mtok >= 0 AND cache_write_usd_per_mtok <= 10000),
    -- NULL: the 5-minute price.
    ADD COLUMN cache_write_1h_usd_per_mtok numeric
        CHECK (cache_write_1h_usd_per_mtok >= 0 AND cache_write_1h_usd_per_mtok <= 10000);

ALTER TABLE ledger
    ADD COLUMN cache_write_tokens integer NOT NULL DEFAULT 0,
    ADD COLUMN cache_write_1h_tokens integer NOT NULL DEFAULT 0,
    -- The provider's `usage` object as it came (JSON), so finance can recompute a cost.
    ADD COLUMN raw_usage jsonb,
    ADD CONSTRAINT ledger_cache_writes_fit CHECK (kind <> 'call' OR (
        cache_write_tokens >= 0 AND cache_write_1h_tokens >= 0
        AND cache_write_1h_tokens <= cache_write_tokens
        AND cached_prompt_tokens + cache_write_tokens <= prompt_tokens));

-- The exact cost of a call that also wrote to the cache. Mirrored by
-- `switchyard_core::tariff::Tariff::cost_with_writes`; the five-argument `call_cost` is this
-- with no writes.
CREATE FUNCTION call_cost(p_price_id bigint, p_prompt integer, p_cached integer,
                          p_written integer, p_written_1h integer, p_completion integer,
                          p_batch boolean) RETURNS numeric
LANGUAGE sql STABLE AS $$
    SELECT ((p_prompt - p_cached - p_written) * p.input_usd_per_mtok
            + p_cached * COALESCE(p.cached_input_usd_per_mtok, p.input_usd_per_mtok)
            + (p_written - p_written_1h)
                * COALESCE(p.cache_write_usd_per_mtok, p.input_usd_per_mtok)
            + p_written_1h * COALESCE(p.cache_write_1h_usd_per_mtok,
                                      p.cache_write_usd_per_mtok, p.input_usd_per_mtok)
            + p_completion * p.output_usd_per_mtok)
           * CASE WHEN p_batch THEN 1 - p.batch_discount ELSE 1 END
           * 0.000001
    FROM prices p WHERE p.price_id = p_price_id
$$;

-- Finance reads the new columns through its views (columns appended, so CREATE OR REPLACE
-- keeps what readers already use).
CREATE OR REPLACE VIEW reporting.ledger AS
SELECT entry_id, call_id, kind, reverses_entry_id, reason, job_id, item_id, attempt, team,
       project, tier, model, provider, price_id, prompt_tokens, cached_prompt_tokens,
       completion_tokens, cost_usd, cost_all_strong_usd, cost_all_weak_usd, batch, escalation,
       outcome, retry, latency_ms, COALESCE(priced_at, created_at) AS priced_at, created_at,
       provider_response_id, usage_source, settles_entry_id,
       cache_write_tokens, cache_write_1h_tokens, raw_usage
FROM ledger;

CREATE OR REPLACE VIEW reporting.prices AS
SELECT p.price_id, p.model, p.provider, p.input_usd_per_mtok, p.cached_input_usd_per_mtok,
       p.output_usd_per_mtok, p.batch_discount, p.effective_from,
       lead(p.effective_from) OVER (PARTITION BY p.model ORDER BY p.effective_from)
           AS effective_until,
       p.created_at, p.cache_write_usd_per_mtok, p.cache_write_1h_usd_per_mtok
FROM prices p;
