-- The ledger's write path, set-based (issue 19, speed): mycelium_private.create_transfers makes a
-- batch of movements as create_transfer makes each of them in turn, with statements over the
-- whole batch instead of a plpgsql call, an INSERT and an UPDATE per movement (as pgledger's
-- pgledger_create_transfers does). rpc/charge_due_subscriptions makes its plain renewals' movements
-- (sql/20261203030000_metering_speed.sql) with one call of it a batch, where it made three
-- create_transfer calls a renewal: the movements were almost all of a batch's time.
--
-- What stays the same as the single path: the transfers and their entries (each entry with the
-- balance it produced, in the batch's order), the lock order (every account of the batch up front,
-- in user_id order), the holds rules and `held`, the reasons it refuses with (invalid_argument,
-- not_found, unknown_recipient, insufficient_credits, the transfers table's own checks), and
-- all-or-nothing: a bad movement refuses the whole batch, nothing written.
--
-- What a watcher sees differs: each account is updated once a batch, with its final balance and
-- held credits, so its change is broadcast (and notified to feeds) once, with the final state of
-- the batch, not once a step. The entries keep every step.
--
-- Set-based, a movement takes credits from the sender's non-expiring ones, which is exact only for
-- a sender without expiring credits. Movements the single path must make, one create_transfer
-- call each in the batch's order after the set-based ones: those of senders holding expiring
-- credits (their lots are spent first, remembered by holds, passed on to recipients), those with a
-- retry key (a retry returns the movement made before), and, so that no account sees its movements
-- in another order than the batch's, every movement touching an account one of those touches as
-- sender or holder, or as recipient if it sends in the batch too (its spending could depend on what
-- it received; an account that only receives may see its credits arrive in another order). So one
-- buyer with expiring credits in a batch of renewals costs that buyer's movements the single path,
-- not the batch's.

-- One movement of a batch: create_transfer's arguments that a batch takes (no expiry date, no lots
-- last, no hold given back, no purchase: those stay single movements).
create type mycelium_private.ledger_movement as (
  kind text,
  amount numeric,
  from_user uuid,
  from_system text,
  to_user uuid,
  to_system text,
  reference text,
  memo text,
  counterparty uuid,
  holder uuid,
  held numeric
);

-- The entries of a batch's set-based movements (all but the positions `p_single`), `p_ids` their
-- transfers: a user side each, as create_transfer writes it, and the balance it produces, the
-- account's balance (read before the batch updates it) plus its entries so far in the batch's order.
create or replace function mycelium_private.batch_entries(
  p_movements mycelium_private.ledger_movement[], p_ids uuid[], p_single bigint[])
returns table (
  movement_no bigint, transfer_id uuid, user_id uuid, amount numeric, kind text, balance_after numeric,
  counterparty_id uuid, memo text, reference text)
language sql
stable
as $$
  select e.movement_no, p_ids[e.movement_no], e.user_id, e.amount, e.kind,
         a.balance + sum(e.amount) over (partition by e.user_id order by e.movement_no),
         e.counterparty_id, m.memo, e.reference
  from unnest(p_movements) with ordinality as m,
       lateral (values
         (m.ordinality, m.from_user, -m.amount, case when m.kind = 'transfer' then 'transfer_out' else m.kind end,
          coalesce(m.to_user, m.counterparty), m.reference),
         (m.ordinality, m.to_user, m.amount, case when m.kind = 'transfer' then 'transfer_in' else m.kind end,
          coalesce(m.from_user, m.counterparty), case when m.kind <> 'transfer' then m.reference end))
         as e (movement_no, user_id, amount, kind, counterparty_id, reference)
  inner join public.credit_accounts as a on e.user_id = a.user_id
  where m.ordinality <> all(p_single)
$$;

-- Makes `p_movements` in their order, as create_transfer would one after the other (see above);
-- returns their transfers' ids, in the same order. Callers authorize the caller and check their
-- own arguments first, as for create_transfer.
create or replace function mycelium_private.create_transfers(p_movements mycelium_private.ledger_movement[])
returns uuid[]
language plpgsql
as $$
declare
  v_ids uuid[] := array(select gen_random_uuid() from generate_series(1, cardinality(p_movements)));
  v_bad record;
  v_single_accounts uuid[];  -- accounts whose movements the single path makes
  v_grown uuid[];
  v_single bigint[];         -- the movements (their positions) the single path makes
  v_n bigint;
  v_movement mycelium_private.ledger_movement;
begin
  -- The holds rules of the single path, the first movement breaking them refused.
  select m.ordinality into v_bad
  from unnest(p_movements) with ordinality as m
  where (m.holder is null) <> (m.from_system is distinct from 'holds' and m.to_system is distinct from 'holds')
     or (m.to_system = 'holds' and (m.holder is distinct from m.from_user or m.reference is null))
  order by m.ordinality
  limit 1;
  if found then
    perform mycelium_private.fail('invalid_argument',
      'a movement into or out of holds names its holder (going in: the sender), and a hold its reference');
  end if;

  -- Every account of the batch, once, in user_id order (the ledger's lock order).
  perform 1 from public.credit_accounts as a
  where a.user_id in (select u.user_id from unnest(p_movements) as m, unnest(array[m.from_user, m.to_user, m.holder]) as u (user_id))
  order by a.user_id
  for no key update;
  select m.ordinality, m.from_user, m.to_user,
         not exists (select 1 from public.credit_accounts as a where a.user_id = m.from_user) as no_sender
  into v_bad
  from unnest(p_movements) with ordinality as m
  where (m.from_user is not null and not exists (select 1 from public.credit_accounts as a where a.user_id = m.from_user))
     or (m.to_user is not null and not exists (select 1 from public.credit_accounts as a where a.user_id = m.to_user))
  order by m.ordinality
  limit 1;
  if found then
    if v_bad.from_user is not null and v_bad.no_sender then
      perform mycelium_private.fail('not_found', 'no credit account for this user', 404);
    end if;
    perform mycelium_private.fail('unknown_recipient', 'no user with a credit account has id ' || v_bad.to_user, 404);
  end if;

  -- The movements the single path makes (see the top of this file), grown until no account of
  -- theirs has movements left to the set-based path that it would see out of order.
  v_single_accounts := array(
    select a.user_id from public.credit_accounts as a
    where a.expiring > 0 and a.user_id in (select m.from_user from unnest(p_movements) as m));
  loop
    v_single := array(
      select m.ordinality from unnest(p_movements) with ordinality as m
      where mycelium_private.retry_key(m.kind, m.from_user, m.to_user, m.reference) is not null
         or m.from_user = any(v_single_accounts) or m.to_user = any(v_single_accounts)
         or m.holder = any(v_single_accounts));
    v_grown := array(
      select distinct u.user_id
      from unnest(p_movements) with ordinality as m,
           unnest(array[m.from_user, m.holder,
                        case when m.to_user in (select s.from_user from unnest(p_movements) as s) then m.to_user end])
             as u (user_id)
      where m.ordinality = any(v_single) and u.user_id is not null and u.user_id <> all(v_single_accounts));
    exit when cardinality(v_grown) = 0;
    v_single_accounts := v_single_accounts || v_grown;
  end loop;

  -- The set-based movements: their transfers (whose domains and CHECKs refuse a bad amount or a
  -- movement without two sides, as for a single one), then their entries, each with the balance it
  -- produced: the account's locked balance plus its entries so far in the batch's order.
  insert into mycelium_private.transfers
    (id, kind, from_user, from_system, to_user, to_system, amount, memo, reference, initiated_by, initiated_role)
  select v_ids[m.ordinality], m.kind, m.from_user, m.from_system, m.to_user, m.to_system, m.amount, m.memo,
         m.reference, auth.uid(), mycelium_private.caller_role()
  from unnest(p_movements) with ordinality as m
  where m.ordinality <> all(v_single)
  order by m.ordinality;

  select e.movement_no, e.amount, e.balance_after into v_bad
  from mycelium_private.batch_entries(p_movements, v_ids, v_single) as e
  where e.balance_after < 0
  order by e.movement_no
  limit 1;
  if found then
    perform mycelium_private.fail('insufficient_credits',
      format('insufficient credits: %s available, %s needed', v_bad.balance_after - v_bad.amount, -v_bad.amount), 409);
  end if;
  insert into public.credit_transactions
    (transfer_id, user_id, amount, kind, balance_after, counterparty_id, memo, reference, expires_at)
  select e.transfer_id, e.user_id, e.amount, e.kind, e.balance_after, e.counterparty_id, e.memo, e.reference, null
  from mycelium_private.batch_entries(p_movements, v_ids, v_single) as e
  order by e.movement_no, e.amount;

  -- Each account once: its final balance and held credits (one broadcast, the batch's final state).
  update public.credit_accounts as a
  set balance = a.balance + d.amount, held = a.held + d.held, updated_at = now()
  from (
    select c.user_id, sum(c.amount) as amount, sum(c.held) as held
    from unnest(p_movements) with ordinality as m,
         lateral (values (m.from_user, -m.amount, 0::numeric), (m.to_user, m.amount, 0),
                         (m.holder, 0, coalesce(m.held, case when m.to_system = 'holds' then m.amount else -m.amount end)))
           as c (user_id, amount, held)
    where m.ordinality <> all(v_single) and c.user_id is not null
    group by c.user_id
    having bool_or(c.amount <> 0 or c.held <> 0)
  ) as d
  where a.user_id = d.user_id;

  -- Then the single path's, in the batch's order.
  foreach v_n in array v_single loop
    v_movement := p_movements[v_n];
    v_ids[v_n] := (mycelium_private.create_transfer(v_movement.kind, v_movement.amount,
      p_from_user => v_movement.from_user, p_from_system => v_movement.from_system,
      p_to_user => v_movement.to_user, p_to_system => v_movement.to_system, p_reference => v_movement.reference,
      p_memo => v_movement.memo, p_counterparty => v_movement.counterparty, p_holder => v_movement.holder,
      p_held => v_movement.held)).transfer_id;
  end loop;
  return v_ids;
end;
$$;

-- The burn rate (sql/20261203020000_subscriptions_feeds.sql), as before, of several users in one
-- query, and their usage divided only for a subscription that has usage. Every balance change of a
-- buyer with running subscriptions computes it (the broadcast's runway), and so does the batch's
-- low-balance check for each of its buyers: in a batch of renewals that was a third of the time
-- (pg_stat_user_functions), mostly dividing the nothing that subscriptions without usage reported
-- (divide_rounded is not inlined with a function call for an argument) and starting a query a buyer.
-- A user with nothing running has no row.
create or replace function mycelium_private.burn_rates(p_users uuid[])
returns table (user_id uuid, running bigint, cost numeric)
language sql
stable
as $$
  select s.buyer_id,
         count(*),
         sum(case when s.unit = 'hour' then p.price * s.quantity
                  else mycelium_private.divide_rounded(p.price * s.quantity, 730, 6) end
             + case when u.used is null then 0
                    else mycelium_private.divide_rounded(u.used, mycelium_private.started_hours(w.since, now()), 6)
               end)
  from public.subscriptions as s
  inner join public.products as p on s.product_id = p.id
  cross join lateral (select greatest(s.created_at, now() - interval '24 hours') as since) as w
  left join lateral (
    select sum(r.quantity * r.unit_price) as used
    from public.subscription_usage as r
    where r.subscription_id = s.id and r.reported_at >= w.since
  ) as u on true
  where s.buyer_id = any(p_users) and s.status in ('active', 'grace')
  group by s.buyer_id
$$;

create or replace function mycelium_private.burn_rate(p_user uuid, out running bigint, out cost numeric)
language plpgsql
stable
as $$
begin
  select r.running, r.cost into running, cost from mycelium_private.burn_rates(array[p_user]) as r;
  running := coalesce(running, 0);
  cost := coalesce(cost, 0);
end;
$$;

-- The low-balance check (sql/20261203030000_metering_speed.sql) of several users at once: those
-- warned lately left out first, then the burn rates of the others in one query. A batch checks all
-- of its buyers with one call.
create or replace function mycelium_private.warn_low_balances(p_users uuid[])
returns void
language plpgsql
as $$
declare
  v_hours integer := (select c.low_balance_hours from public.subscription_config as c where c.id);
begin
  if v_hours = 0 then
    return;
  end if;
  insert into public.low_balance_warnings (user_id, cost_per_hour, balance, runway_hours, threshold_hours)
  select r.user_id, r.cost, b.balance, mycelium_private.divide_truncated(b.balance, r.cost, 2), v_hours
  from mycelium_private.burn_rates(array(
         select u.user_id from unnest(p_users) as u (user_id)
         where not exists (select 1 from public.low_balance_warnings as w
                           where w.user_id = u.user_id and w.at > now() - make_interval(hours => v_hours)))) as r
  cross join lateral (select mycelium_private.spendable(r.user_id) as balance) as b
  where r.cost > 0 and b.balance < r.cost * v_hours
  order by r.user_id;
end;
$$;

create or replace function mycelium_private.warn_low_balance(p_user uuid)
returns void
language plpgsql
as $$
begin
  perform mycelium_private.warn_low_balances(array[p_user]);
end;
$$;

-- rpc/charge_due_subscriptions(as_of, max_periods): as in sql/20261203030000_metering_speed.sql, the
-- plain renewals' movements made by one create_transfers call: for each renewal in the batch's
-- order, as capture_period_credits and hold_period_credits make them (the fee and the earning of
-- the period charged, `held` unchanged by them; the next hold, `held` changed by the next amount
-- less the one charged).
create or replace function public.charge_due_subscriptions(
  as_of timestamptz default now(), max_periods integer default 500)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_as_of timestamptz := charge_due_subscriptions.as_of;
  v_budget integer := charge_due_subscriptions.max_periods;
  v_ids uuid[];
  v_rest uuid[];  -- what the step function takes
  v_id uuid;
  v_sub public.subscriptions;
  v_step record;
  v_charged numeric := 0;
  v_renewals mycelium_private.subscription_renewal[];
  v_counts jsonb := '{"renewed": 0, "grace": 0, "suspended": 0, "resumed": 0, "cancelled": 0}';
begin
  perform mycelium_private.require_service();
  perform mycelium_private.check_batch(v_as_of, v_budget, 'max_periods', 10000);
  select coalesce(array_agg(x.id), '{}') into v_ids from (
    select s.id from public.subscriptions s
    where s.status in ('active', 'grace', 'suspended') and s.due_at <= v_as_of
    order by s.due_at
    limit v_budget
    for no key update skip locked) x;
  -- The unpaid ones whose buyer's balance now covers what resuming takes (checked again, exactly,
  -- on the spendable balance): waiting ones are not picked again and again in place of due ones.
  v_ids := v_ids || coalesce((select array_agg(x.id) from (
    select s.id from public.subscriptions s
    join public.products p on p.id = s.product_id
    join public.credit_accounts a on a.user_id = s.buyer_id
    where s.status in ('grace', 'suspended') and s.due_at > v_as_of and p.active
      and a.balance >= p.price * s.quantity + mycelium_private.usage_owed(s.id)
                       + mycelium_private.arrears(s, v_as_of)
    limit v_budget - cardinality(v_ids)
    for no key update of s skip locked) x), '{}');
  -- Every account the batch may touch, up front and in user_id order (see the lock order).
  perform 1 from public.credit_accounts a
  where a.user_id in (select s.buyer_id from public.subscriptions s where s.id = any(v_ids)
                      union select s.provider_id from public.subscriptions s where s.id = any(v_ids))
  order by a.user_id for no key update;

  -- The plain renewals (see the top of 20261203030000_metering_speed.sql), decided on the balances just locked: the
  -- subscriptions of the buyers all of whose subscriptions in the batch are plain and whose
  -- spendable balance covers all of their next periods.
  with taken as (
    select s.id, s.buyer_id, s.provider_id, s.due_at, s.periods, s.paid_until, s.quantity,
           h.id as period_id, h.amount, h.fee_percent, p.price, p.price * s.quantity as next_amount,
           mycelium_private.period_end(s.unit, s.paid_until) as next_ends_at,
           s.status = 'active' and p.active and p.price * s.quantity < 1e15 and h.id is not null
             and mycelium_private.period_end(s.unit, s.paid_until) > v_as_of
             and not exists (select 1 from public.subscription_usage u
                             where u.subscription_id = s.id and u.charge_id is null) as plain
    from public.subscriptions s
    join public.products p on p.id = s.product_id
    left join public.subscription_periods h on h.subscription_id = s.id and h.status = 'held'
    where s.id = any(v_ids)
  ), renewing as (
    select t.buyer_id from taken t
    group by t.buyer_id
    having bool_and(t.plain) and sum(t.next_amount) <= mycelium_private.spendable(t.buyer_id)
  )
  select coalesce(array_agg(row(t.id, t.buyer_id, t.provider_id, t.period_id, t.amount,
                                round(t.amount * t.fee_percent * 0.01, 6), gen_random_uuid(), t.periods + 1,
                                t.paid_until, t.next_ends_at, t.price, t.quantity, t.next_amount
                            )::mycelium_private.subscription_renewal order by t.due_at), '{}')
  into v_renewals
  from taken t
  where t.buyer_id in (select r.buyer_id from renewing r);

  v_rest := v_ids;
  if cardinality(v_renewals) > 0 then
    -- Their rows, one statement each for all of them; then their movements, in one batch.
    update public.subscription_periods p
    set status = 'charged', held_amount = 0, charged_amount = r.charged_amount, fee_amount = r.fee_amount,
        charged_at = now()
    from unnest(v_renewals) r
    where p.id = r.charged_period;
    insert into public.subscription_periods
      (id, subscription_id, seq, kind, starts_at, ends_at, unit_price, quantity, amount, fee_percent, held_amount)
    select r.next_period, r.subscription_id, r.next_seq, 'period', r.next_starts_at, r.next_ends_at, r.unit_price,
           r.quantity, r.next_amount, c.platform_fee_percent, r.next_amount
    from unnest(v_renewals) r, public.marketplace_config c
    where c.id;
    update public.subscriptions s
    set periods = r.next_seq, paid_until = r.next_ends_at, due_at = r.next_ends_at, updated_at = now()
    from unnest(v_renewals) r
    where s.id = r.subscription_id;
    perform mycelium_private.create_transfers(array(
      select m.movement
      from unnest(v_renewals) with ordinality as r,
           lateral (values
             (1, row('platform_fee', r.fee_amount, null, 'holds', null, 'platform_revenue', r.charged_period::text,
                     null, null, r.buyer_id, 0)::mycelium_private.ledger_movement),
             (2, row('provider_earning', r.charged_amount - r.fee_amount, null, 'holds', r.provider_id, null,
                     r.charged_period::text, null, r.buyer_id, r.buyer_id, 0)::mycelium_private.ledger_movement),
             (3, row('order_hold', r.next_amount, r.buyer_id, null, null, 'holds', r.next_period::text,
                     'subscription ' || r.subscription_id, r.provider_id, r.buyer_id,
                     r.next_amount - r.charged_amount)::mycelium_private.ledger_movement))
             as m (step, movement)
      -- As capture_period_credits: no fee of 0, no earning of 0; the hold always.
      where m.step = 3 or (m.movement).amount > 0
      order by r.ordinality, m.step));
    insert into public.subscription_events
      (subscription_id, buyer_id, provider_id, event, period_id, amount, changed_by, changed_role)
    select r.subscription_id, r.buyer_id, r.provider_id, 'renewed', r.next_period, r.next_amount, auth.uid(),
           mycelium_private.caller_role()
    from unnest(v_renewals) r;
    v_budget := v_budget - cardinality(v_renewals);
    v_charged := (select sum(r.charged_amount) from unnest(v_renewals) r);
    v_counts := jsonb_set(v_counts, '{renewed}', to_jsonb(cardinality(v_renewals)));
    v_rest := array(select i.id from unnest(v_ids) with ordinality i (id, n)
                    where i.id not in (select r.subscription_id from unnest(v_renewals) r)
                    order by i.n);
  end if;

  -- Everything else, a step at a time, with what is left of the budget.
  foreach v_id in array v_rest loop
    loop
      exit when v_budget = 0;
      select * into v_sub from public.subscriptions s where s.id = v_id;
      exit when v_sub.status not in ('active', 'grace', 'suspended')
             or (v_sub.status = 'active' and v_sub.due_at > v_as_of);
      select * into v_step from mycelium_private.advance_subscription(v_sub, v_as_of, v_charged);
      v_charged := v_step.charged;
      exit when v_step.outcome = 'waiting';
      v_budget := v_budget - 1;
      v_counts := jsonb_set(v_counts, array[v_step.outcome], to_jsonb((v_counts ->> v_step.outcome)::integer + 1));
    end loop;
  end loop;
  perform mycelium_private.warn_low_balances(array(
    select distinct s.buyer_id from public.subscriptions s where s.id = any(v_ids)));
  -- Every period this transaction charged carries its timestamp.
  return jsonb_build_object('as_of', v_as_of, 'done', v_budget > 0, 'credits_charged', v_charged,
    'periods_charged', (select count(*) from public.subscription_periods p
                        where p.subscription_id = any(v_ids) and p.charged_at = now())) || v_counts;
end;
$$;

revoke execute on function public.charge_due_subscriptions(timestamptz, integer)
  from public, anon, authenticated;
grant execute on function public.charge_due_subscriptions(timestamptz, integer) to service_role;

revoke execute on all functions in schema mycelium_private from public;
