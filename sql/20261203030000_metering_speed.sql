-- The subscriptions' batch, faster (issue 19, speed): rpc/charge_due_subscriptions renews the
-- common case set-based. Every rule of sql/20261202090000_subscriptions.sql's header stands: each
-- charge and each hold is an ordinary ledger movement, one create_transfer call each; a period is
-- charged once, under its subscription's lock, by the batch that took that lock (skip locked);
-- the accounts are locked up front in user_id order; the ledger audit checks it all.
--
-- Where a batch's time went (bench/metering.py, pg_stat_statements): per renewal, the step
-- function read the subscription, its product, the configuration, its held period, then the
-- period and the subscription again (charge_period), updated the subscription twice (hold_period's
-- seq, then paid_until), wrote the period charged, the next one and the event, each one statement
-- and one plpgsql call at a time, around the three movements; and every buyer of the batch was
-- then checked for a low balance, each a burn-rate query.
--
-- Now a batch first prepares, in one query, the renewals it can make without looking at a balance
-- twice: an active subscription whose held period has ended and is all that is due (the next one
-- ends after as_of), its product on sale, no usage owed, the next period under the limit of one
-- movement, and whose buyer's spendable balance covers the next periods of all of that buyer's
-- subscriptions in the batch, every one of which is such a renewal (so nothing else in the batch
-- spends that buyer's credits first; earnings arriving meanwhile only add to them). For those it
-- writes, one statement each for all of them, the periods charged, the next periods held, the
-- subscriptions moved on and the `renewed` events; then it makes their movements, in the order of
-- the original step (the fee, the earning, the hold). Every other subscription of the batch (in
-- grace or suspended, a buyer short of credits, usage to charge, a product off sale, several
-- periods behind) takes the step function as before, with what is left of the budget. So a batch
-- whose budget runs out may leave an older subscription that needs the step function for the next
-- batch (the oldest first, then) where it would have left a younger one: still at most
-- max_periods steps, each period charged once, none skipped.

-- ---------------------------------------------------------------------------------------
-- The movements of a period, shared by the step functions and the batch's renewals.
-- ---------------------------------------------------------------------------------------

-- The hold of period `p_period` (its reference): `p_amount` of the buyer's credits into `holds`,
-- expiring ones first, the provider its counterparty. The buyer's held rises by `p_amount`, and
-- by `p_held_released` less: what the capture of the period before released of it (a renewal
-- updates the buyer's account once for both).
create or replace function mycelium_private.hold_period_credits(
  p_subscription uuid, p_buyer uuid, p_provider uuid, p_period uuid, p_amount numeric,
  p_held_released numeric default 0)
returns void
language plpgsql
as $$
begin
  perform mycelium_private.create_transfer('order_hold', p_amount, p_from_user => p_buyer,
    p_to_system => 'holds', p_reference => p_period::text, p_memo => 'subscription ' || p_subscription,
    p_counterparty => p_provider, p_holder => p_buyer, p_held => p_amount - p_held_released);
end;
$$;

-- The capture of `p_charge` of a held period (its reference `p_period`): `p_fee` to
-- platform_revenue, the rest to the provider; the buyer's held changes by `p_held` in the last of
-- the two movements (as fulfil_order's capture: the account updated, and its change broadcast,
-- once). A stop passes -p_charge; a renewal 0, its next hold taking the fall along with its rise.
create or replace function mycelium_private.capture_period_credits(
  p_buyer uuid, p_provider uuid, p_period uuid, p_charge numeric, p_fee numeric, p_held numeric)
returns void
language plpgsql
as $$
begin
  if p_fee > 0 then
    perform mycelium_private.create_transfer('platform_fee', p_fee, p_from_system => 'holds',
      p_to_system => 'platform_revenue', p_reference => p_period::text, p_holder => p_buyer,
      p_held => case when p_charge > p_fee then 0 else p_held end);
  end if;
  if p_charge > p_fee then
    perform mycelium_private.create_transfer('provider_earning', p_charge - p_fee, p_from_system => 'holds',
      p_to_user => p_provider, p_reference => p_period::text, p_counterparty => p_buyer, p_holder => p_buyer,
      p_held => p_held);
  end if;
end;
$$;

-- As before (sql/20261202090000_subscriptions.sql), its hold through hold_period_credits.
create or replace function mycelium_private.hold_period(
  p_subscription public.subscriptions, p_kind text, p_start timestamptz, p_end timestamptz, p_price numeric,
  p_amount numeric)
returns uuid
language plpgsql
as $$
declare
  v_period uuid;
  v_seq integer;
begin
  if p_amount >= 1e15 then
    perform mycelium_private.fail('invalid_amount', 'a period must cost less than 1000000000000000');
  end if;
  update public.subscriptions s set periods = s.periods + 1, updated_at = now() where s.id = p_subscription.id
  returning s.periods into v_seq;
  insert into public.subscription_periods
    (subscription_id, seq, kind, starts_at, ends_at, unit_price, quantity, amount, fee_percent, held_amount)
  values (p_subscription.id, v_seq, p_kind, p_start, p_end, p_price, p_subscription.quantity,
          p_amount, (select c.platform_fee_percent from public.marketplace_config c where c.id), p_amount)
  returning id into v_period;
  perform mycelium_private.hold_period_credits(p_subscription.id, p_subscription.buyer_id,
    p_subscription.provider_id, v_period, p_amount);
  return v_period;
end;
$$;

-- As before, its capture through capture_period_credits.
create or replace function mycelium_private.charge_period(p_period uuid, p_charge numeric, p_end timestamptz)
returns void
language plpgsql
as $$
declare
  v_period public.subscription_periods;
  v_subscription public.subscriptions;
  v_fee numeric;
begin
  select * into v_period from public.subscription_periods p where p.id = p_period;
  select * into v_subscription from public.subscriptions s where s.id = v_period.subscription_id;
  v_fee := round(p_charge * v_period.fee_percent * 0.01, 6);
  update public.subscription_periods p
  set status = 'charged', held_amount = 0, charged_amount = p_charge, fee_amount = v_fee, ends_at = p_end,
      charged_at = now()
  where p.id = p_period;
  perform mycelium_private.capture_period_credits(v_subscription.buyer_id, v_subscription.provider_id, p_period,
    p_charge, v_fee, -p_charge);
  if p_charge < v_period.amount then
    perform mycelium_private.create_transfer('order_release', v_period.amount - p_charge, p_from_system => 'holds',
      p_to_user => v_subscription.buyer_id, p_reference => p_period::text, p_memo => 'subscription stopped',
      p_counterparty => v_subscription.provider_id, p_holder => v_subscription.buyer_id, p_gives_back_hold => true);
  end if;
end;
$$;

-- As before, the cheap reasons to warn no one first: a batch checks every buyer it charged, most
-- of whom were warned lately or have nothing to fear, and the burn rate is a query over all of a
-- buyer's running subscriptions.
create or replace function mycelium_private.warn_low_balance(p_user uuid)
returns void
language plpgsql
as $$
declare
  v_hours integer := (select c.low_balance_hours from public.subscription_config c where c.id);
  v_rate record;
  v_balance numeric;
begin
  if v_hours = 0 or exists (
       select 1 from public.low_balance_warnings w
       where w.user_id = p_user and w.at > now() - make_interval(hours => v_hours)) then
    return;
  end if;
  v_rate := mycelium_private.burn_rate(p_user);
  if v_rate.cost = 0 then
    return;
  end if;
  v_balance := mycelium_private.spendable(p_user);
  if v_balance >= v_rate.cost * v_hours then
    return;
  end if;
  insert into public.low_balance_warnings (user_id, cost_per_hour, balance, runway_hours, threshold_hours)
  values (p_user, v_rate.cost, v_balance, mycelium_private.divide_truncated(v_balance, v_rate.cost, 2), v_hours);
end;
$$;

-- ---------------------------------------------------------------------------------------
-- The batch.
-- ---------------------------------------------------------------------------------------

-- One renewal the batch makes set-based: the subscription and its parties, the period it charges
-- (its amount and fee), and the one it holds next: its id (chosen up front), number, times, price,
-- quantity and amount, all read once, under the subscription's lock.
create type mycelium_private.subscription_renewal as (
  subscription_id uuid,
  buyer_id uuid,
  provider_id uuid,
  charged_period uuid,
  charged_amount numeric,
  fee_amount numeric,
  next_period uuid,
  next_seq integer,
  next_starts_at timestamptz,
  next_ends_at timestamptz,
  unit_price numeric,
  quantity integer,
  next_amount numeric
);

-- rpc/charge_due_subscriptions(as_of, max_periods): as before (sql/20261202090000_subscriptions.sql:
-- which subscriptions a batch takes, how it locks them and their accounts, what it answers), the
-- plain renewals set-based (see the top of this file).
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
  v_renewal mycelium_private.subscription_renewal;
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

  -- The plain renewals (see the top of this file), decided on the balances just locked: the
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
    -- Their rows, one statement each for all of them; then their movements, each as the step
    -- function makes it: the ended period's capture (fee, earning), the next period's hold.
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
    foreach v_renewal in array v_renewals loop
      perform mycelium_private.capture_period_credits(v_renewal.buyer_id, v_renewal.provider_id,
        v_renewal.charged_period, v_renewal.charged_amount, v_renewal.fee_amount, 0);
      perform mycelium_private.hold_period_credits(v_renewal.subscription_id, v_renewal.buyer_id,
        v_renewal.provider_id, v_renewal.next_period, v_renewal.next_amount, v_renewal.charged_amount);
    end loop;
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
  perform mycelium_private.warn_low_balance(b.buyer_id)
  from (select distinct s.buyer_id from public.subscriptions s where s.id = any(v_ids)) b;
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
