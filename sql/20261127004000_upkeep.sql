-- Upkeep: what the periodic jobs (`mycelium upkeep`, every five minutes in the deployments) have
-- left undone for longer than `grace` past the moment it fell due. Anything overdue means the
-- scheduler is not running, or failing, or (days to roll up) a session has held a transaction
-- open since before a day ended: `mycelium health` and the metrics report it.
--
-- rpc/upkeep_backlog(grace): one row per job, admins and service_role.
--   release_expired_holds    orders pending past hold_ttl (due when their hold's time ran out)
--   expire_credits           live lots past their expires_at
--   refresh_ledger_rollups   days not rolled up an hour after they ended: a transaction left open
--                            since before a day ended holds that day back (the roll-up waits for
--                            it), and shows here, so that a stuck session does not go unnoticed
create or replace function public.upkeep_backlog(grace interval default interval '15 minutes')
returns table (job text, overdue bigint, due_since timestamptz)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_grace interval := upkeep_backlog.grace;
  v_cutoff timestamptz;
  v_ttl interval := (select c.hold_ttl from public.marketplace_config c where c.id);
  v_rolled date := (select max(d.day) from mycelium_private.ledger_days d);
  v_due date;
begin
  perform mycelium_private.require_admin();
  if v_grace is null or v_grace < interval '0' or v_grace > interval '30 days' then
    perform mycelium_private.fail('invalid_argument', 'grace must be an interval from 0 to 30 days');
  end if;
  v_cutoff := now() - v_grace;

  return query
    select 'release_expired_holds', count(*), min(o.created_at) + v_ttl
    from public.orders o
    where o.status = 'pending' and o.created_at < v_cutoff - v_ttl;

  return query
    select 'expire_credits', count(*), min(l.expires_at)
    from public.credit_lots l
    where l.live and l.expires_at < v_cutoff;

  -- Days roll up from the first day of the ledger, or the day after the last one rolled up.
  if v_rolled is null then
    v_rolled := (select (min(t.created_at) at time zone 'UTC')::date - 1 from mycelium_private.transfers t);
  end if;
  v_due := mycelium_private.last_complete_day(v_cutoff, null);
  return query
    select 'refresh_ledger_rollups',
           greatest(coalesce(v_due - v_rolled, 0), 0)::bigint,
           -- The first day not rolled up fell due an hour after it ended.
           case when v_due > v_rolled then ((v_rolled + 2)::timestamp at time zone 'UTC') + interval '1 hour' end;
end;
$$;

revoke execute on function public.upkeep_backlog(interval) from public, anon;
grant execute on function public.upkeep_backlog(interval) to authenticated, service_role;
