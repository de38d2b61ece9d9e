-- Batches side by side (issue 19, speed). Every batch of rpc/charge_due_subscriptions locked, up
-- front and waiting, the accounts of all the subscriptions it took, the earliest due: the providers'
-- accounts were in every batch, so a second batch (a second upkeep, or a second worker of one)
-- waited for the first one's commit, and batches ran one at a time on one core however many ran.
-- Now a batch claims providers: it locks their accounts without waiting (skip locked), in the
-- order of their earliest due subscription, until their subscriptions fill its budget, and takes
-- only theirs; then it locks their buyers' accounts without waiting, and leaves to a later call a
-- subscription whose buyer's account another transaction holds. Batches running at once charge
-- different providers side by side.
--
-- A batch's renewals are signalled to their providers once a batch each: one `subscription_event`
-- broadcast a provider on `subscriptions:<provider_id>`, the last of its renewals in the batch,
-- where there was one a renewal (half of a batch's messages, and a subtransaction each). A renewal
-- asks nothing of a provider's service (the workload runs on), the feed over REST has every event,
-- and a follower (client.subscriptions.follow) reads it on each signal: it misses none. Every other
-- event (started, grace, suspended, resumed, stopped, cancelled) is still broadcast on its own.
--
-- What stays: every period charged once, none skipped (a subscription left for a busy buyer's
-- account stays due, free again once the batch commits; `done` is false when a batch left one); the
-- earliest due first within a provider; the ledger's lock order for every transaction that waits
-- (a batch waits for no account, so it cannot close a cycle of waits). What changes: a provider
-- whose account a long transaction holds is charged a call or a run later; the earliest due
-- subscriptions overall are charged first only up to the providers' claims.

-- The unpaid subscriptions (grace, suspended) whose buyer's balance now covers what resuming takes
-- (checked again, exactly, on the spendable balance, by the step function), up to `p_limit`. As in
-- sql/20261203080000_batch_transfers.sql: waiting ones are not picked again and again in place of
-- due ones.
create or replace function mycelium_private.resumable_subscriptions(p_as_of timestamptz, p_limit integer)
returns uuid[]
language sql
stable
as $$
  select array(
    select s.id from public.subscriptions as s
    inner join public.products as p on s.product_id = p.id
    inner join public.credit_accounts as a on s.buyer_id = a.user_id
    where s.status in ('grace', 'suspended') and s.due_at > p_as_of and p.active
      and a.balance >= p.price * s.quantity + mycelium_private.usage_owed(s.id) + mycelium_private.arrears(s, p_as_of)
    limit p_limit)
$$;

-- rpc/charge_due_subscriptions(as_of, max_periods): as in sql/20261203080000_batch_transfers.sql,
-- with its subscriptions taken as above, its renewals' events broadcast set-based, and its buyers'
-- spendable balances read in one query.
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
  v_claim record;
  v_claimed bigint := 0;
  v_providers uuid[] := '{}';
  v_buyers uuid[];
  v_deferred bigint;
  v_events public.subscription_events[];
  v_resumable uuid[];
begin
  perform mycelium_private.require_service();
  perform mycelium_private.check_batch(v_as_of, v_budget, 'max_periods', 10000);
  -- The providers this batch charges for, claimed without waiting (skip locked) in the order of
  -- their earliest due subscription among the next few batches' worth (and of the unpaid ones
  -- whose buyer's balance now covers resuming them), until their subscriptions fill the budget:
  -- batches running at once claim different providers, and charge side by side.
  v_resumable := mycelium_private.resumable_subscriptions(v_as_of, v_budget);
  for v_claim in
    select w.provider_id, count(*) as subscriptions
    from (
      (select s.provider_id, s.due_at from public.subscriptions s
       where s.status in ('active', 'grace', 'suspended') and s.due_at <= v_as_of
       order by s.due_at
       limit 4 * v_budget)
      union all
      (select s.provider_id, v_as_of from public.subscriptions s
       where s.id = any(v_resumable))
    ) w
    group by w.provider_id
    order by min(w.due_at), w.provider_id
  loop
    perform 1 from public.credit_accounts a where a.user_id = v_claim.provider_id for no key update skip locked;
    continue when not found;
    v_providers := v_providers || v_claim.provider_id;
    v_claimed := v_claimed + v_claim.subscriptions;
    exit when v_claimed >= v_budget;
  end loop;
  -- Their due subscriptions, earliest first, then their unpaid ones that can resume (see
  -- resumable_subscriptions).
  select coalesce(array_agg(x.id), '{}') into v_ids from (
    select s.id from public.subscriptions s
    where s.provider_id = any(v_providers) and s.status in ('active', 'grace', 'suspended') and s.due_at <= v_as_of
    order by s.due_at
    limit v_budget
    for no key update skip locked) x;
  v_ids := v_ids || array(
    select s.id from public.subscriptions s
    where s.id = any(v_resumable) and s.provider_id = any(v_providers)
    limit v_budget - cardinality(v_ids)
    for no key update skip locked);
  -- Their buyers' accounts, without waiting either: a subscription whose buyer's account another
  -- transaction holds waits for a later call (`done` stays false). The batch never waits for an
  -- account, so it takes part in no deadlock, whatever order it locked them in.
  v_buyers := array(
    select a.user_id from public.credit_accounts a
    where a.user_id in (select s.buyer_id from public.subscriptions s where s.id = any(v_ids))
    order by a.user_id
    for no key update skip locked);
  select coalesce(array_agg(i.id order by i.n) filter (where s.buyer_id = any(v_buyers)), '{}'),
         count(*) filter (where s.buyer_id <> all(v_buyers))
  into v_ids, v_deferred
  from unnest(v_ids) with ordinality i (id, n)
  join public.subscriptions s on s.id = i.id;

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
    join mycelium_private.spendables(array(select distinct b.buyer_id from taken b)) a on a.user_id = t.buyer_id
    group by t.buyer_id, a.spendable
    having bool_and(t.plain) and sum(t.next_amount) <= a.spendable
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
    -- Their events, the trigger standing aside: each provider is told once a batch, with its last
    -- renewal (see the top of this file), as a watcher of a balance learns of it once a batch.
    perform set_config('mycelium.batch_sends_messages', 'on', true);
    with recorded as (
      insert into public.subscription_events as e
        (subscription_id, buyer_id, provider_id, event, period_id, amount, changed_by, changed_role)
      select r.subscription_id, r.buyer_id, r.provider_id, 'renewed', r.next_period, r.next_amount, auth.uid(),
             mycelium_private.caller_role()
      from unnest(v_renewals) r
      returning e
    )
    select array_agg(x.e) into v_events from recorded x;
    perform set_config('mycelium.batch_sends_messages', 'off', true);
    perform mycelium_private.send_subscription_events(array(
      select e from unnest(v_events) as e
      where e.id in (select max(x.id) from unnest(v_events) as x group by x.provider_id)));
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
  return jsonb_build_object('as_of', v_as_of, 'done', v_budget > 0 and v_deferred = 0, 'credits_charged', v_charged,
    'periods_charged', (select count(*) from public.subscription_periods p
                        where p.subscription_id = any(v_ids) and p.charged_at = now())) || v_counts;
end;
$$;

revoke execute on function public.charge_due_subscriptions(timestamptz, integer)
  from public, anon, authenticated;
grant execute on function public.charge_due_subscriptions(timestamptz, integer) to service_role;

revoke execute on all functions in schema mycelium_private from public;
