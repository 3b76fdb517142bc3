-- A job's deadline (wire spec `deadline`, `switchyard submit --deadline`, a Batch API
-- batch's completion window): when it must be done, fixed once when the dispatcher accepts
-- the job (`created_at` + the spec's seconds, to the whole second). Its work messages carry
-- it, for the provider-batch path (an attempt may wait in a provider's batch, at the batch
-- price, while the deadline allows). NULL: real time.
ALTER TABLE jobs ADD COLUMN deadline_at timestamptz;
