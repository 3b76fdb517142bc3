-- Issue 5 (reliability and security): the audit trail of `local_only` items.
--
-- One row per booked model call of an item submitted as `local_only`, with the tier, model
-- and provider that served it. Which tiers are local is configuration (`[tiers.<t>] local`),
-- so the question "did a local_only item reach an external model between these dates" is
-- this view filtered on the tiers that are not local: `switchyard audit local-only --from
-- --to` asks it with the deployment's configuration. Workers refuse a local_only item on a
-- non-local tier before calling, so the expected answer is always "none".
CREATE VIEW reporting.local_only_calls AS
SELECT l.entry_id, l.call_id, l.job_id, l.item_id, l.attempt, l.team, l.project, l.tier,
       l.model, l.provider, l.outcome, l.created_at
FROM ledger l
JOIN items i ON i.job_id = l.job_id AND i.item_id = l.item_id
WHERE i.sensitivity = 'local_only';

COMMENT ON VIEW reporting.local_only_calls IS
    'booked calls of local_only items; rows on tiers that are not local are violations';
