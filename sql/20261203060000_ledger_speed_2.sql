-- The ledger's write path, cheaper again (issue 21, item 3): every movement's retry key is computed
-- by a plpgsql function instead of an SQL function.
--
-- mycelium_private.transfers.retry_key is a stored generated column. PostgreSQL prepares a
-- generated column's expression again at every INSERT's executor start (ExecInitStoredGenerated:
-- the expression is planned anew, not cached with the statement's plan), and planning it inlined
-- mycelium_private.retry_key(): the SQL function's text was parsed and analysed, once per movement.
-- A CPU profile of the PostgREST-shaped transfer (perf, docs/performance.md) put 5.8% of the
-- database backends' time there, and 1.0% once the function is plpgsql, whose compiled form each
-- session keeps: the generated column then costs one function call.
-- A set-based INSERT of many movements (create_transfers) pays that call for every row instead of
-- one inlining per statement: about a microsecond a row (100,000 rows: 0.65 to 0.74 s, against 0.55
-- to 0.63 s with the SQL function), where a single movement saves tens of microseconds.
--
-- Same name, arguments, result, immutability and keys: stored keys are not recomputed, and the
-- lookups by key (create_transfer's replay, purchase_credits') still use the unique index (an
-- immutable function of the call's arguments is evaluated once, before the index scan). Like the
-- SQL version, it names nothing outside pg_catalog and has no SET clause (a SET clause costs every
-- call a configuration change).
create or replace function mycelium_private.retry_key(
  p_kind text, p_from_user uuid, p_to_user uuid, p_reference text
)
returns text
language plpgsql
immutable
parallel safe
as $$
begin
  return case
    when p_reference is null then null
    when p_kind = 'transfer' then 'transfer:' || p_from_user::text || ':' || p_reference
    when p_kind = 'grant' then 'grant:' || p_to_user::text || ':' || p_reference
    when p_kind in ('purchase', 'expiry', 'legacy_migration') then p_kind || ':' || p_reference
  end;
end;
$$;
