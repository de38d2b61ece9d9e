-- Lint fixes: indexes for the foreign keys Supabase's database advisor (lint
-- unindexed_foreign_keys) finds without one, where a query or a delete would use them.
-- tests/security/test_lints.py runs the advisor's rules over the pushed schema; a key left
-- unindexed on purpose is allowed there, with why.

-- A user reads their own lots through the API (credit_lots_select_own: user_id = the caller).
-- The only index leading with user_id is partial (live lots only), so reading spent lots too
-- scanned every user's lots. Lots are inserted when credits with a new expiry arrive; spending
-- updates `remaining` only, which this index does not hold, so those updates stay HOT.
create index credit_lots_user_id_idx on public.credit_lots (user_id);

-- The legacy import counts the accounts of its run (claimed ones, failed claims) by run_id.
create index legacy_accounts_run_id_idx on mycelium_private.legacy_accounts (run_id);
