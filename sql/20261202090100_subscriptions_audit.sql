-- Subscriptions, part 2: the ledger audit proves every subscription period charged exactly once,
-- and upkeep_backlog reports the periods the batch has left uncharged.
--
-- The audit (rpc/audit_ledger) keeps every check it had; two of the orders' checks now count the
-- subscriptions' holds too (they share the holds account and the hold's kinds with orders):
-- held_equals_open_orders adds the held periods, order_transfers_without_order leaves out the
-- transfers of periods. audit_subscriptions() adds:
--   subscription_period_transfers  each period has exactly one hold of its amount; a held period
--                                  nothing else, a charged one exactly one capture of its charged
--                                  amount (earning and fee, each at most once, the fee its
--                                  fee_amount) and one release of the rest, if any
--   subscription_periods           a subscription's periods are numbered 1..periods, without gaps;
--                                  an active one has exactly one held period, ending at paid_until;
--                                  any other none
--   subscription_usage_charges     each usage period charged what its reports cost (less only
--                                  for a subscription that ended unpaid), and every report it
--                                  charged is its own subscription's
-- (A transfer of a hold's kinds naming neither an order nor a period: order_transfers_without_order.)

-- ---------------------------------------------------------------------------------------
-- The orders' invariants (sql/20261127002100_audit.sql), with the subscriptions' holds.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.audit_orders()
returns table (check_name text, subject text, detail text)
language sql
stable
set search_path = ''
as $$
  with open_holds as (
    select h.buyer_id, sum(h.held) as held from (
      select o.buyer_id, o.held_amount as held from public.orders o where o.held_amount > 0
      union all
      select s.buyer_id, p.held_amount from public.subscription_periods p
      join public.subscriptions s on s.id = p.subscription_id
      where p.status = 'held'
    ) h group by h.buyer_id
  ), moved as (
    select t.reference,
           coalesce(sum(t.amount) filter (where t.kind = 'order_hold'), 0) as hold,
           coalesce(sum(t.amount) filter (where t.kind = 'order_release'), 0) as released,
           coalesce(sum(t.amount) filter (where t.kind = 'provider_earning'), 0) as earned,
           coalesce(sum(t.amount) filter (where t.kind = 'platform_fee'), 0) as fee,
           coalesce(sum(t.amount) filter (where t.kind = 'refund'), 0) as refunded,
           coalesce(sum(t.amount) filter (where t.kind = 'refund' and t.from_system = 'platform_revenue'), 0) as fee_refunded
    from mycelium_private.transfers t
    where t.kind in ('order_hold', 'order_release', 'provider_earning', 'platform_fee', 'refund')
    group by t.reference
  ), item_sums as (
    select i.order_id, sum(i.line_total) as total from public.order_items i group by i.order_id
  ), units as (
    select i.product_id, sum(i.quantity) as units
    from public.order_items i join public.orders o on o.id = i.order_id
    where o.status in ('pending', 'fulfilled', 'partially_refunded')
    group by i.product_id
  )
  select 'held_equals_open_orders', a.user_id::text,
         format('held %s but open orders hold %s', a.held, coalesce(h.held, 0))
  from public.credit_accounts a full join open_holds h on h.buyer_id = a.user_id
  where coalesce(a.held, 0) <> coalesce(h.held, 0)
  union all
  select 'order_held_amount', o.id::text, format('%s order holds %s of %s', o.status, o.held_amount, o.total)
  from public.orders o
  where o.held_amount <> case when o.status = 'pending' then o.total else 0 end
  union all
  select 'order_total_equals_items', o.id::text, format('total %s, items %s', o.total, coalesce(s.total, 0))
  from public.orders o left join item_sums s on s.order_id = o.id
  where o.total <> coalesce(s.total, 0)
  union all
  select 'order_transfers', o.id::text,
         format('%s order of %s (fee %s, refunded %s): held %s, released %s, earned %s, fee %s, refunded %s (%s from the fee)',
                o.status, o.total, o.fee_amount, o.refunded_amount, coalesce(m.hold, 0), coalesce(m.released, 0),
                coalesce(m.earned, 0), coalesce(m.fee, 0), coalesce(m.refunded, 0), coalesce(m.fee_refunded, 0))
  from public.orders o left join moved m on m.reference = o.id::text
  where coalesce(m.hold, 0) <> o.total
     or coalesce(m.refunded, 0) <> o.refunded_amount
     or coalesce(m.fee_refunded, 0) <> o.fee_refunded
     or case
          when o.status = 'pending' then coalesce(m.released + m.earned + m.fee, 0) <> 0
          when o.status in ('cancelled', 'failed') then coalesce(m.released, 0) <> o.total or coalesce(m.earned + m.fee, 0) <> 0
          else coalesce(m.released, 0) <> 0 or coalesce(m.earned + m.fee, 0) <> o.total or coalesce(m.fee, 0) <> o.fee_amount
        end
  union all
  select 'order_transfers_without_order', m.reference, format('held %s', m.hold)
  from moved m where not exists (select 1 from public.orders o where o.id::text = m.reference)
    and not exists (select 1 from public.subscription_periods p where p.id::text = m.reference)
  union all
  select 'units_in_use', p.id::text, format('units_in_use %s but open orders have %s', p.units_in_use, coalesce(u.units, 0))
  from public.products p left join units u on u.product_id = p.id
  where p.units_in_use <> case when p.capacity is null then 0 else coalesce(u.units, 0) end
$$;


create or replace function mycelium_private.audit_subscriptions()
returns table (check_name text, subject text, detail text)
language sql
stable
set search_path = ''
as $$
  with moved as (
    select t.reference,
           count(*) filter (where t.kind = 'order_hold') as holds,
           coalesce(sum(t.amount) filter (where t.kind = 'order_hold'), 0) as hold,
           count(*) filter (where t.kind = 'order_release') as releases,
           coalesce(sum(t.amount) filter (where t.kind = 'order_release'), 0) as released,
           count(*) filter (where t.kind = 'provider_earning') as earnings,
           coalesce(sum(t.amount) filter (where t.kind = 'provider_earning'), 0) as earned,
           count(*) filter (where t.kind = 'platform_fee') as fees,
           coalesce(sum(t.amount) filter (where t.kind = 'platform_fee'), 0) as fee,
           count(*) filter (where t.kind = 'refund') as refunds
    from mycelium_private.transfers t
    where t.kind in ('order_hold', 'order_release', 'provider_earning', 'platform_fee', 'refund')
      and t.reference in (select p.id::text from public.subscription_periods p)
    group by t.reference
  ), numbered as (
    select p.subscription_id, count(*) as periods, max(p.seq) as last_seq,
           count(*) filter (where p.status = 'held') as held,
           max(p.ends_at) filter (where p.status = 'held') as held_until
    from public.subscription_periods p group by p.subscription_id
  )
  select 'subscription_period_transfers', p.id::text,
         format('%s period of %s (charged %s, fee %s): %s hold(s) of %s, %s release(s) of %s, '
                '%s earning(s) of %s, %s fee(s) of %s, %s refund(s)',
                p.status, p.amount, p.charged_amount, p.fee_amount, coalesce(m.holds, 0), coalesce(m.hold, 0),
                coalesce(m.releases, 0), coalesce(m.released, 0), coalesce(m.earnings, 0), coalesce(m.earned, 0),
                coalesce(m.fees, 0), coalesce(m.fee, 0), coalesce(m.refunds, 0))
  from public.subscription_periods p left join moved m on m.reference = p.id::text
  where coalesce(m.holds, 0) <> 1 or coalesce(m.hold, 0) <> p.amount or coalesce(m.refunds, 0) <> 0
     or coalesce(m.earnings, 0) > 1 or coalesce(m.fees, 0) > 1 or coalesce(m.releases, 0) > 1
     or case
          when p.status = 'held' then coalesce(m.released + m.earned + m.fee, 0) <> 0
          else coalesce(m.earned + m.fee, 0) <> p.charged_amount or coalesce(m.fee, 0) <> p.fee_amount
            or coalesce(m.released, 0) <> p.amount - p.charged_amount
        end
  union all
  select 'subscription_periods', s.id::text,
         format('%s subscription with %s periods (paid until %s): %s rows numbered up to %s, %s held until %s',
                s.status, s.periods, s.paid_until, coalesce(n.periods, 0), n.last_seq, coalesce(n.held, 0),
                n.held_until)
  from public.subscriptions s left join numbered n on n.subscription_id = s.id
  where coalesce(n.periods, 0) <> s.periods or coalesce(n.last_seq, 0) <> s.periods
     or case
          when s.status = 'active' then coalesce(n.held, 0) <> 1 or n.held_until is distinct from s.paid_until
          else coalesce(n.held, 0) <> 0
        end
  union all
  select 'subscription_usage_charges', p.id::text,
         format('usage charge of %s for %s report(s) costing %s', p.amount, coalesce(c.reports, 0), c.cost)
  from public.subscription_periods p
  join public.subscriptions s on s.id = p.subscription_id
  left join (
    select u.charge_id, count(*) as reports, round(sum(u.quantity * u.unit_price), 6) as cost
    from public.subscription_usage u where u.charge_id is not null group by u.charge_id
  ) c on c.charge_id = p.id
  where p.kind = 'usage'
    and (c.cost is null or p.amount > c.cost or (p.amount < c.cost and s.status not in ('stopped', 'cancelled')))
  union all
  select 'subscription_usage_charges', u.id::text, format('report charged by period %s', u.charge_id)
  from public.subscription_usage u join public.subscription_periods p on p.id = u.charge_id
  where p.kind <> 'usage' or p.subscription_id <> u.subscription_id
$$;

-- ---------------------------------------------------------------------------------------
-- rpc/audit_ledger: admins and service_role, as before, with the subscriptions' checks.
-- ---------------------------------------------------------------------------------------
create or replace function public.audit_ledger()
returns table (check_name text, subject text, detail text)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform mycelium_private.require_admin();
  -- One snapshot for all (a stable function's queries share the caller's): the ledger, then the
  -- marketplace's orders and subscriptions against it.
  return query select * from mycelium_private.audit_ledger();
  return query select * from mycelium_private.audit_orders();
  return query select * from mycelium_private.audit_subscriptions();
end;
$$;

revoke execute on function public.audit_ledger() from public, anon;
grant execute on function public.audit_ledger() to authenticated, service_role;

-- ---------------------------------------------------------------------------------------
-- rpc/upkeep_backlog(grace) (sql/20261127004000_upkeep.sql), every job as before and one more:
--   charge_due_subscriptions  subscriptions whose period, grace or suspension ended (due since
--                             then) and that the batch has not charged or moved on yet
-- ---------------------------------------------------------------------------------------
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

  return query
    select 'charge_due_subscriptions', count(*), min(s.due_at)
    from public.subscriptions s
    where s.status in ('active', 'grace', 'suspended') and s.due_at < v_cutoff;
end;
$$;

revoke execute on function public.upkeep_backlog(interval) from public, anon;
grant execute on function public.upkeep_backlog(interval) to authenticated, service_role;
revoke execute on all functions in schema mycelium_private from public;
