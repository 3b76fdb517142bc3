-- Live worker processes and the models they call, so a provider's quota (requests and tokens
-- per minute, configured for the whole fleet) can be shared: each process takes
-- quota / (live processes calling that model). A process refreshes `seen_at` every half
-- second; a row not refreshed for three seconds belongs to a process that stopped or died.
CREATE TABLE worker_presence (
    worker_id  text PRIMARY KEY,
    models     text[] NOT NULL,
    seen_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX worker_presence_seen ON worker_presence (seen_at);
