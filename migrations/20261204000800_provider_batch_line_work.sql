-- What a worker needs to book a provider batch line's answer, or to send its attempt again,
-- whichever worker polls the batch: the attempt's work message as it was delivered
-- (MessagePack), the tier it ran on, the budget hold its booking settles and the time its
-- call is priced at (when the hold was taken, as for a real-time call).
ALTER TABLE provider_batch_lines
    ADD COLUMN work           bytea,
    ADD COLUMN tier           text,
    ADD COLUMN reservation_id bigint,
    ADD COLUMN priced_at      timestamptz NOT NULL DEFAULT now();
