-- A provider's batch id is unique at that provider, not across providers (two servers
-- speaking OpenAI's Batch API may both number theirs `batch_1`, and a simulator restarted
-- does): unique per (provider, id).
ALTER TABLE provider_batches DROP CONSTRAINT provider_batches_provider_batch_id_key;
CREATE UNIQUE INDEX provider_batches_provider_id ON provider_batches (provider, provider_batch_id);
