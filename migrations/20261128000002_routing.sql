-- Why each item went where it went (issue 3): the rule that decided it, the key the job's cut
-- compared, and the cost estimates a budget weighed; and each job's routing plan. Read by
-- `switchyard router explain` and `router audit`, and by `router train --from-db`.

ALTER TABLE items
    -- The rule that decided the item: a routing rule's name, or 'sensitivity' for a
    -- `local_only` pin. NULL: no rule matched, the job's policy alone decided.
    ADD COLUMN route_rule      text,
    -- The tier a pin or a rule forced (outside the policy). NULL: the policy decided.
    ADD COLUMN route_tier      text,
    -- The router's score after the matching rule's shift (= router_score without one).
    ADD COLUMN route_score     real,
    -- What the job's cut (`jobs.routing_cut`, `routing_cut_seq`) is compared with: the
    -- shifted score, or for a budget the shifted score per extra dollar.
    ADD COLUMN route_key       real,
    -- Estimated cost of the item on the job's weak and strong model (tokens × price).
    ADD COLUMN est_weak_usd    numeric,
    ADD COLUMN est_strong_usd  numeric;

COMMENT ON COLUMN jobs.routing_cut IS
    'items whose route_key is above it (or equal with seq <= routing_cut_seq) went strong';

ALTER TABLE jobs
    -- The policy's plan: key kind, cut, strong count, expected cost and predicted quality
    -- (switchyard_core::calibrate::Plan as JSON).
    ADD COLUMN routing_plan jsonb;
