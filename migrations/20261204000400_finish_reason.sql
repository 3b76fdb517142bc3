-- Why each answer ended (`stop`, `length`, `content_filter`, …, in OpenAI's words; Anthropic's
-- stop reasons translated): a pipeline reading a batch's output checks `finish_reason` to
-- find answers cut off at `max_tokens`. NULL for answers stored before it was kept, and when
-- a provider said nothing usable.
ALTER TABLE results ADD COLUMN finish_reason text;
