-- Whether an intent's call goes out only under a budget hold (its team has a budget and the
-- call has a price). For such a call, no hold means no request: the hold is taken before the
-- request can leave and given back only when the call did not happen (the item was parked or
-- downgraded over budget, the call failed or was handed back before sending). An intent
-- whose owner is gone and that is `held` but has no hold left is therefore ended without a
-- booking: booking it in doubt at its worst case would add spend the budget never reserved,
-- and push the team past its hard limit.
ALTER TABLE call_intents ADD COLUMN held boolean NOT NULL DEFAULT false;
