-- Each worker process's share of a model's quota (requests and tokens per minute, configured
-- for the whole fleet), in parts per million, and until when it holds it. The live rows of a
-- model never add up to more than the whole (1,000,000): a process raises its share only
-- under the model's advisory lock, against what the others hold; a row past `expires_at`
-- belongs to a process that stopped renewing it, and is removed by the next one to look.
-- (Replaces the head count of `worker_presence`, which let a newcomer and the processes it
-- joined use the same share until both had looked.)
CREATE TABLE quota_shares (
    model      text NOT NULL,
    worker_id  text NOT NULL,
    share      bigint NOT NULL CHECK (share BETWEEN 0 AND 1000000),
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (model, worker_id)
);
CREATE INDEX quota_shares_worker ON quota_shares (worker_id);

-- The last fleet-wide pause of each model (a 429's Retry-After), for processes that join
-- while it holds; the others hear of it at once on the control subject.
CREATE TABLE quota_pauses (
    model  text PRIMARY KEY,
    until  timestamptz NOT NULL
);
