-- Pay as you go: subscriptions to `hour` and `month` products, which run until stopped and are
-- paid while they run, a period at a time, through the order holds of the ledger.
--
-- The rules:
-- - Periods. A subscription (rpc/start_subscription: a product, a quantity) is paid by periods:
--   one hour for an `hour` product, one calendar month in UTC for a `month` product (from the
--   start: 31 January runs to the end of February's last day... as PostgreSQL adds a month).
--   Each period is reserved in advance from the buyer's balance as a hold (`order_hold` to the
--   system account `holds`, the period's id as its reference: expiring credits are spent first
--   and the hold remembers their expiry, as an order's hold does), and paid when it ends: the
--   provider receives the period's amount less the platform fee (`provider_earning`), the platform
--   the fee (`platform_fee`, marketplace_config's platform_fee_percent, snapshotted on the period
--   when it is held, like an order's). Products with `once` as their unit are sold by orders only,
--   and so, for now, are products with a capacity (units_in_use counts orders): not_subscribable.
-- - Prices. A period's unit price is the product's price when the period is held, snapshotted on
--   it: a provider's price change applies from the next period.
-- - Stopping (rpc/stop_subscription: the buyer, the provider or the service). The running period
--   is charged by the started hour: at least one hour, an hourly period in full (it is one hour),
--   a monthly period its amount times the hours started over the hours of that month, rounded to
--   6 decimals (half away from zero); the rest of the hold goes back to the buyer, as an order's
--   release does (expiring credits with their expiry). Time run past the paid period before the
--   batch renewed it is charged like arrears (below).
-- - Renewal (rpc/charge_due_subscriptions, the service's upkeep). When a period ends the batch pays
--   it and holds the next one, which starts when the last ended (periods are contiguous, however
--   late the batch runs: a batch behind catches up period by period). A product taken off sale is
--   not renewed: its subscriptions end (`cancelled`) when their paid period ends.
-- - Credits running out. A period that the buyer's spendable balance cannot hold starts `grace`
--   (subscription_config.grace_period): the workload runs on, unpaid; then `suspended`
--   (suspension_period: the provider stops the workload), then `cancelled`. Whenever the balance
--   covers what is due and the next period (a top-up, any credit arrival), the next batch resumes
--   it: the unpaid time since the last paid period (up to the suspension, when the workload
--   stopped) is charged as one `arrears` period, by the started hour like a stop, at the product's
--   price; then a new period is held, starting then. Balances never go negative: a subscription
--   stopped or cancelled while unpaid settles its arrears as far as the spendable balance goes,
--   and the rest is never charged (the grace period is credit extended at the provider's risk).
-- - Metered usage (rpc/report_usage: the provider or the service, with an idempotency key) is
--   priced when reported at the product's usage price for its unit (attributes.usage_prices) and
--   charged at the period's end as one `usage` period (the reports' quantity times price, summed,
--   rounded to 6 decimals), before the next period is held: a balance short of it means grace,
--   and it is owed like the arrears (a resume charges it; a stop or cancellation as far as the
--   balance goes). Each report is charged once: it points to the usage period that charged it.
-- - Every period, an arrears or usage one too, is one row of subscription_periods, numbered per
--   subscription (unique (subscription_id, seq)): it is held once and charged once, under the
--   subscription's row lock; the audit checks each period's transfers against it.
-- - Low balance: a buyer whose spendable balance lasts fewer than low_balance_hours at the burn
--   rate of their running subscriptions gets a row of low_balance_warnings (their own to read), at
--   most one in that many hours, when a subscription starts or a batch has charged theirs.
-- - Events (subscription_events, append-only, read by the buyer and the provider): started,
--   renewed, grace, suspended, resumed, stopped, cancelled.
-- - Lock order: the subscription, then the accounts of its buyer and provider in user_id order
--   (the batch locks all accounts of its subscriptions up front, in user_id order, so that two
--   overlapping batches, or a batch and a transfer, never deadlock).

-- ---------------------------------------------------------------------------------------
-- The configuration, a configuration like marketplace_config (make_configuration()).
--   grace_period       how long a subscription the balance cannot renew runs on unpaid
--   suspension_period  how long it then stays suspended, resumable, before it is cancelled
--   low_balance_hours  a buyer whose spendable balance lasts fewer hours than this at the burn
--                      rate of their running subscriptions is warned (low_balance_warnings), at
--                      most once in that many hours; 0: never
-- ---------------------------------------------------------------------------------------
create table public.subscription_config (
  id boolean primary key default true check (id),
  grace_period interval not null default interval '24 hours'
    check (grace_period >= interval '0' and grace_period <= interval '30 days'),
  suspension_period interval not null default interval '7 days'
    check (suspension_period >= interval '0' and suspension_period <= interval '90 days'),
  low_balance_hours integer not null default 24 check (low_balance_hours >= 0 and low_balance_hours <= 720),
  updated_at timestamptz not null default now()
);
comment on table public.subscription_config is
  'The one subscription configuration row: how long unpaid subscriptions run (grace) and stay suspended, '
  'when a balance is low. Readable by anyone.';
select mycelium_private.make_configuration('subscription_config');

-- rpc/set_subscription_config: admins and service_role; null leaves a setting unchanged.
create or replace function public.set_subscription_config(
  grace_period interval default null,
  suspension_period interval default null,
  low_balance_hours integer default null
)
returns public.subscription_config
language plpgsql
security definer
set search_path = ''
as $$
declare
  new_row public.subscription_config;
begin
  perform mycelium_private.require_admin();
  if num_nonnulls(grace_period, suspension_period, low_balance_hours) = 0 then
    perform mycelium_private.fail('invalid_argument', 'nothing to change: pass at least one setting');
  end if;
  if grace_period is not null and (grace_period < interval '0' or grace_period > interval '30 days') then
    perform mycelium_private.fail('invalid_argument', 'grace_period must be between 0 and 30 days');
  end if;
  if suspension_period is not null
     and (suspension_period < interval '0' or suspension_period > interval '90 days') then
    perform mycelium_private.fail('invalid_argument', 'suspension_period must be between 0 and 90 days');
  end if;
  if low_balance_hours is not null and (low_balance_hours < 0 or low_balance_hours > 720) then
    perform mycelium_private.fail('invalid_argument', 'low_balance_hours must be from 0 to 720');
  end if;
  update public.subscription_config c set
    grace_period = coalesce(set_subscription_config.grace_period, c.grace_period),
    suspension_period = coalesce(set_subscription_config.suspension_period, c.suspension_period),
    low_balance_hours = coalesce(set_subscription_config.low_balance_hours, c.low_balance_hours),
    updated_at = now()
  where c.id
  returning * into new_row;
  return new_row;
end;
$$;

revoke execute on function public.set_subscription_config(interval, interval, integer) from public, anon;
grant execute on function public.set_subscription_config(interval, interval, integer)
  to authenticated, service_role;

-- ---------------------------------------------------------------------------------------
-- The tables.
-- ---------------------------------------------------------------------------------------
create table public.subscriptions (
  id uuid primary key default gen_random_uuid(),
  buyer_id uuid not null,
  provider_id uuid not null,
  product_id uuid not null references public.products (id),
  quantity integer not null check (quantity >= 1 and quantity <= 10000),
  unit text not null check (unit in ('hour', 'month')),
  status text not null default 'active'
    check (status in ('active', 'grace', 'suspended', 'stopped', 'cancelled')),
  -- When the batch must look at it next: the end of the paid period (active), of the grace
  -- (grace), of the suspension (suspended); null once it has ended.
  due_at timestamptz,
  -- The end of the last period held: while active, of the running one.
  paid_until timestamptz not null,
  -- Unpaid since (grace, suspended), and suspended since: the arrears run between them.
  grace_since timestamptz,
  suspended_at timestamptz,
  -- Periods so far: the seq of the last one.
  periods integer not null default 0 check (periods >= 0),
  idempotency_key text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  ended_at timestamptz,
  check (buyer_id <> provider_id),
  check ((due_at is null) = (status in ('stopped', 'cancelled'))),
  check (status <> 'active' or (grace_since is null and suspended_at is null)),
  check (status not in ('grace', 'suspended') or grace_since is not null),
  check ((status = 'suspended') = (suspended_at is not null) or status in ('stopped', 'cancelled'))
);
comment on table public.subscriptions is
  'Products that run until stopped, paid a period at a time: buyers see theirs, providers those of their '
  'products, admins all. Written only by the subscription functions.';
create unique index subscriptions_idempotency_key on public.subscriptions (buyer_id, idempotency_key)
  where idempotency_key is not null;
create index subscriptions_buyer_idx on public.subscriptions (buyer_id, created_at);
create index subscriptions_provider_idx on public.subscriptions (provider_id, created_at);
create index subscriptions_product_idx on public.subscriptions (product_id);
-- The batch's queue: what falls due, oldest first, and the unpaid ones a top-up may resume.
create index subscriptions_due_idx on public.subscriptions (due_at)
  where status in ('active', 'grace', 'suspended');
create index subscriptions_unpaid_idx on public.subscriptions (buyer_id)
  where status in ('grace', 'suspended');

create table public.subscription_periods (
  id uuid primary key default gen_random_uuid(),
  subscription_id uuid not null references public.subscriptions (id),
  seq integer not null check (seq >= 1),
  -- `period`: held in advance; `arrears`: unpaid time, and `usage`: the metered usage reported
  -- (subscription_usage), each held and charged at once.
  kind text not null check (kind in ('period', 'arrears', 'usage')),
  starts_at timestamptz not null,
  -- Where a stop cut it short: the stop.
  ends_at timestamptz not null,
  -- The product's price per unit (of time); none for usage, whose reports carry theirs.
  unit_price numeric check (unit_price > 0),
  quantity integer not null check (quantity >= 1),
  amount numeric not null check (amount > 0 and amount < 1e15),
  fee_percent numeric not null check (fee_percent >= 0 and fee_percent <= 100),
  status text not null default 'held' check (status in ('held', 'charged')),
  -- What the buyer has in `holds` for it: the amount while held, then 0.
  held_amount numeric not null check (held_amount >= 0 and held_amount <= amount),
  -- Set when charged: what was paid (the amount, or a stopped period's started hours), the
  -- platform's part of it; the rest of the amount went back to the buyer.
  charged_amount numeric check (charged_amount >= 0 and charged_amount <= amount),
  fee_amount numeric check (fee_amount >= 0 and fee_amount <= charged_amount),
  created_at timestamptz not null default now(),
  charged_at timestamptz,
  unique (subscription_id, seq),
  check (ends_at > starts_at or kind = 'usage' and ends_at = starts_at),
  check ((unit_price is null) = (kind = 'usage')),
  check ((status = 'held') = (charged_amount is null)),
  check (held_amount = case when status = 'held' then amount else 0 end)
);
comment on table public.subscription_periods is
  'Every period of every subscription, numbered: held in advance, charged once when it ends or is stopped.';
create index subscription_periods_held_idx on public.subscription_periods (subscription_id)
  where status = 'held';

create table public.subscription_usage (
  id uuid primary key default gen_random_uuid(),
  subscription_id uuid not null references public.subscriptions (id),
  unit text not null check (btrim(unit) <> '' and length(unit) <= 100),
  quantity numeric not null check (quantity > 0 and quantity < 1e15 and scale(quantity) <= 6),
  -- The product's usage price for the unit when reported (attributes.usage_prices).
  unit_price numeric not null check (unit_price > 0),
  idempotency_key text not null,
  reported_by uuid,
  reported_role text not null,
  reported_at timestamptz not null default now(),
  -- The `usage` period that charged it; null until then.
  charge_id uuid references public.subscription_periods (id),
  unique (subscription_id, idempotency_key)
);
comment on table public.subscription_usage is
  'Metered usage reported by providers (a unit, a quantity, its price), charged once at the period''s end.';
create index subscription_usage_owed_idx on public.subscription_usage (subscription_id)
  where charge_id is null;
create index subscription_usage_charge_idx on public.subscription_usage (charge_id);

create table public.subscription_events (
  id bigint generated always as identity primary key,
  subscription_id uuid not null references public.subscriptions (id),
  buyer_id uuid not null,
  provider_id uuid not null,
  event text not null
    check (event in ('started', 'renewed', 'grace', 'suspended', 'resumed', 'stopped', 'cancelled')),
  -- The period held or charged with it, and the credits it moved for the buyer (held or charged).
  period_id uuid references public.subscription_periods (id),
  amount numeric,
  reason text,
  changed_by uuid,
  changed_role text not null,
  at timestamptz not null default now()
);
comment on table public.subscription_events is
  'What happened to each subscription, for its buyer and its provider (who starts and stops the workload). '
  'Append-only.';
create index subscription_events_subscription_idx on public.subscription_events (subscription_id, id);
create index subscription_events_buyer_idx on public.subscription_events (buyer_id, id);
create index subscription_events_provider_idx on public.subscription_events (provider_id, id);
create index subscription_events_period_idx on public.subscription_events (period_id);

create trigger subscription_events_append_only
  before update or delete or truncate on public.subscription_events
  for each statement execute function mycelium_private.refuse_change();

create table public.low_balance_warnings (
  id bigint generated always as identity primary key,
  user_id uuid not null,
  -- What the user's running subscriptions cost an hour, the spendable balance, how many hours it
  -- lasts, and the threshold it fell below (subscription_config.low_balance_hours).
  cost_per_hour numeric not null check (cost_per_hour > 0),
  balance numeric not null,
  runway_hours numeric not null,
  threshold_hours integer not null,
  at timestamptz not null default now()
);
comment on table public.low_balance_warnings is
  'Your warnings that your balance lasts fewer hours than subscription_config.low_balance_hours. Append-only.';
create index low_balance_warnings_user_idx on public.low_balance_warnings (user_id, at);
create trigger low_balance_warnings_append_only
  before update or delete or truncate on public.low_balance_warnings
  for each statement execute function mycelium_private.refuse_change();

-- Read surface: the buyer, the product's provider, admins. Nobody writes through the API.
alter table public.subscriptions enable row level security;
alter table public.subscription_periods enable row level security;
alter table public.subscription_events enable row level security;
alter table public.subscription_usage enable row level security;
alter table public.low_balance_warnings enable row level security;
revoke all on public.subscriptions, public.subscription_periods, public.subscription_events,
  public.subscription_usage, public.low_balance_warnings
  from anon, authenticated, service_role;
revoke all on sequence public.subscription_events_id_seq, public.low_balance_warnings_id_seq
  from anon, authenticated, service_role;
grant select on public.subscriptions, public.subscription_periods, public.subscription_events,
  public.subscription_usage, public.low_balance_warnings
  to authenticated, service_role;

create policy subscriptions_buyer_provider_or_admin on public.subscriptions
  for select to authenticated
  using (buyer_id = (select auth.uid()) or provider_id = (select auth.uid()) or (select public.is_admin()));
-- The subquery sees subscriptions through the policy above.
create policy subscription_periods_of_visible_subscriptions on public.subscription_periods
  for select to authenticated
  using (exists (
    select 1 from public.subscriptions as s
    where s.id = subscription_periods.subscription_id
  ));
create policy subscription_usage_of_visible_subscriptions on public.subscription_usage
  for select to authenticated
  using (exists (
    select 1 from public.subscriptions as s
    where s.id = subscription_usage.subscription_id
  ));
create policy low_balance_warnings_own_or_admin on public.low_balance_warnings
  for select to authenticated
  using (user_id = (select auth.uid()) or (select public.is_admin()));
create policy subscription_events_buyer_provider_or_admin on public.subscription_events
  for select to authenticated
  using (buyer_id = (select auth.uid()) or provider_id = (select auth.uid()) or (select public.is_admin()));

-- ---------------------------------------------------------------------------------------
-- Helpers (no SET clause: see the foundation).
-- ---------------------------------------------------------------------------------------

-- The end of a period of `p_unit` starting at `p_start`: an hour, or a calendar month in UTC.
create or replace function mycelium_private.period_end(p_unit text, p_start timestamptz)
returns timestamptz
language plpgsql
immutable
as $$
begin
  if p_unit = 'hour' then
    return p_start + interval '1 hour';
  end if;
  return ((p_start at time zone 'UTC') + interval '1 month') at time zone 'UTC';
end;
$$;

-- Hours started from `p_from` to `p_to`: at least one.
create or replace function mycelium_private.started_hours(p_from timestamptz, p_to timestamptz)
returns integer
language plpgsql
immutable
as $$
begin
  return greatest(ceil(extract(epoch from p_to - p_from) / 3600), 1)::integer;
end;
$$;

-- What `p_hours` started hours of a subscription cost at `p_price` per unit: hourly, the hours;
-- monthly, the month (from `p_from`) prorated by the hour, rounded to 6 decimals.
create or replace function mycelium_private.hours_cost(
  p_unit text, p_price numeric, p_quantity integer, p_from timestamptz, p_hours integer)
returns numeric
language plpgsql
immutable
as $$
begin
  if p_unit = 'hour' then
    return p_price * p_quantity * p_hours;
  end if;
  return mycelium_private.divide_rounded(p_price * p_quantity * p_hours,
    extract(epoch from mycelium_private.period_end('month', p_from) - p_from) / 3600, 6);
end;
$$;

create or replace function mycelium_private.record_subscription_event(
  p_subscription public.subscriptions, p_event text, p_period uuid default null,
  p_amount numeric default null, p_reason text default null)
returns void
language plpgsql
as $$
begin
  insert into public.subscription_events
    (subscription_id, buyer_id, provider_id, event, period_id, amount, reason, changed_by, changed_role)
  values (p_subscription.id, p_subscription.buyer_id, p_subscription.provider_id, p_event, p_period, p_amount,
          p_reason, auth.uid(), mycelium_private.caller_role());
end;
$$;

-- Hold the subscription's next period, numbered after its last: `p_amount` at `p_price` per unit
-- the buyer's credits into `holds` (expiring ones first). Returns the period's id. The caller
-- has locked the subscription and checked (or lets create_transfer check) the balance.
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
  perform mycelium_private.create_transfer('order_hold', p_amount, p_from_user => p_subscription.buyer_id,
    p_to_system => 'holds', p_reference => v_period::text, p_memo => 'subscription ' || p_subscription.id,
    p_counterparty => p_subscription.provider_id, p_holder => p_subscription.buyer_id);
  return v_period;
end;
$$;

-- Charge a held period `p_charge` of its amount (all of it, or a stopped period's started hours),
-- ending at `p_end`: the fee to platform_revenue, the rest to the provider, what is left of the
-- hold back to the buyer (with the expiry it had). As fulfil_order's capture, the buyer's held
-- goes down once per movement.
create or replace function mycelium_private.charge_period(p_period uuid, p_charge numeric, p_end timestamptz)
returns void
language plpgsql
as $$
declare
  v_period public.subscription_periods;
  v_subscription public.subscriptions;
  v_fee numeric;
  v_earning numeric;
begin
  select * into v_period from public.subscription_periods p where p.id = p_period;
  select * into v_subscription from public.subscriptions s where s.id = v_period.subscription_id;
  v_fee := round(p_charge * v_period.fee_percent * 0.01, 6);
  v_earning := p_charge - v_fee;
  update public.subscription_periods p
  set status = 'charged', held_amount = 0, charged_amount = p_charge, fee_amount = v_fee, ends_at = p_end,
      charged_at = now()
  where p.id = p_period;
  if v_fee > 0 then
    perform mycelium_private.create_transfer('platform_fee', v_fee, p_from_system => 'holds',
      p_to_system => 'platform_revenue', p_reference => p_period::text, p_holder => v_subscription.buyer_id,
      p_held => case when v_earning > 0 then 0 else -p_charge end);
  end if;
  if v_earning > 0 then
    perform mycelium_private.create_transfer('provider_earning', v_earning, p_from_system => 'holds',
      p_to_user => v_subscription.provider_id, p_reference => p_period::text,
      p_counterparty => v_subscription.buyer_id, p_holder => v_subscription.buyer_id, p_held => -p_charge);
  end if;
  if p_charge < v_period.amount then
    perform mycelium_private.create_transfer('order_release', v_period.amount - p_charge, p_from_system => 'holds',
      p_to_user => v_subscription.buyer_id, p_reference => p_period::text, p_memo => 'subscription stopped',
      p_counterparty => v_subscription.provider_id, p_holder => v_subscription.buyer_id, p_gives_back_hold => true);
  end if;
end;
$$;

-- The unpaid time of a subscription in grace or suspended, up to `p_until` (a suspension stops
-- it): by the started hour at the product's price.
create or replace function mycelium_private.arrears(p_subscription public.subscriptions, p_until timestamptz)
returns numeric
language plpgsql
stable
as $$
begin
  return mycelium_private.hours_cost(p_subscription.unit,
    (select p.price from public.products p where p.id = p_subscription.product_id), p_subscription.quantity,
    p_subscription.grace_since,
    mycelium_private.started_hours(p_subscription.grace_since, least(p_until, p_subscription.suspended_at)));
end;
$$;

-- Charge the arrears of a subscription in grace or suspended up to `p_until`, at most `p_limit`
-- of them (what the balance can pay: the rest is never charged), as one `arrears` period.
-- Returns what it charged.
create or replace function mycelium_private.settle_arrears(
  p_subscription public.subscriptions, p_until timestamptz, p_limit numeric)
returns numeric
language plpgsql
as $$
declare
  -- At most what one movement may carry (a price raised far enough must not stop the batch).
  v_amount numeric := least(mycelium_private.arrears(p_subscription, p_until), p_limit, 999999999999999.999999);
  v_end timestamptz := least(p_until, p_subscription.suspended_at);
  v_period uuid;
begin
  if v_amount <= 0 or v_end <= p_subscription.grace_since then
    return 0;
  end if;
  v_period := mycelium_private.hold_period(p_subscription, 'arrears', p_subscription.grace_since, v_end,
    (select p.price from public.products p where p.id = p_subscription.product_id), v_amount);
  perform mycelium_private.charge_period(v_period, v_amount, v_end);
  return v_amount;
end;
$$;

-- What the usage reported and not charged yet costs: each report's quantity times its price,
-- summed, rounded once to 6 decimals (half away from zero).
create or replace function mycelium_private.usage_owed(p_subscription uuid)
returns numeric
language plpgsql
stable
as $$
begin
  return (select coalesce(round(sum(u.quantity * u.unit_price), 6), 0) from public.subscription_usage u
          where u.subscription_id = p_subscription and u.charge_id is null);
end;
$$;

-- Charge the usage not charged yet, at most `p_limit` of it (what the balance can pay: the rest is
-- never charged), as one `usage` period from `p_start` to `p_end`; every report it covers points to
-- it. Returns what it charged. Reports wait for the subscription's lock (report_usage), which the
-- caller holds: none arrives between the sum and the marking.
create or replace function mycelium_private.settle_usage(
  p_subscription public.subscriptions, p_start timestamptz, p_end timestamptz, p_limit numeric)
returns numeric
language plpgsql
as $$
declare
  v_amount numeric := least(mycelium_private.usage_owed(p_subscription.id), p_limit, 999999999999999.999999);
  v_period uuid;
begin
  if v_amount <= 0 then
    return 0;
  end if;
  v_period := mycelium_private.hold_period(p_subscription, 'usage', p_start, greatest(p_start, p_end), null,
    v_amount);
  update public.subscription_usage u set charge_id = v_period
  where u.subscription_id = p_subscription.id and u.charge_id is null;
  perform mycelium_private.charge_period(v_period, v_amount, greatest(p_start, p_end));
  return v_amount;
end;
$$;

-- What a user's running subscriptions (active, and in grace: they run unpaid) cost per hour at
-- their products' prices now; a month counts 730 hours (365 * 24 / 12).
create or replace function mycelium_private.burn_rate(p_user uuid, out running bigint, out cost numeric)
language plpgsql
stable
as $$
begin
  select count(*), coalesce(sum(case when s.unit = 'hour' then p.price * s.quantity
                                     else mycelium_private.divide_rounded(p.price * s.quantity, 730, 6) end), 0)
  into running, cost
  from public.subscriptions s join public.products p on p.id = s.product_id
  where s.buyer_id = p_user and s.status in ('active', 'grace');
end;
$$;

-- Warn `p_user` when their spendable balance lasts fewer than low_balance_hours at their burn
-- rate, unless they were warned within that many hours.
create or replace function mycelium_private.warn_low_balance(p_user uuid)
returns void
language plpgsql
as $$
declare
  v_hours integer := (select c.low_balance_hours from public.subscription_config c where c.id);
  v_rate record := mycelium_private.burn_rate(p_user);
  v_balance numeric;
begin
  if v_hours = 0 or v_rate.cost = 0 then
    return;
  end if;
  v_balance := mycelium_private.spendable(p_user);
  if v_balance >= v_rate.cost * v_hours or exists (
       select 1 from public.low_balance_warnings w
       where w.user_id = p_user and w.at > now() - make_interval(hours => v_hours)) then
    return;
  end if;
  insert into public.low_balance_warnings (user_id, cost_per_hour, balance, runway_hours, threshold_hours)
  values (p_user, v_rate.cost, v_balance, mycelium_private.divide_truncated(v_balance, v_rate.cost, 2), v_hours);
end;
$$;

-- Lock a subscription for a change, after checking that the caller may see it at all: someone
-- who is neither its buyer, its provider, an admin nor the service gets subscription_not_found
-- (404), as if it did not exist. What they may do with it is for the caller to decide.
create or replace function mycelium_private.lock_subscription(p_subscription uuid)
returns public.subscriptions
language plpgsql
as $$
declare
  v_subscription public.subscriptions;
begin
  if p_subscription is null then
    perform mycelium_private.fail('invalid_argument', 'subscription_id is required');
  end if;
  select * into v_subscription from public.subscriptions s where s.id = p_subscription for no key update;
  if not found or not (v_subscription.buyer_id = auth.uid() or v_subscription.provider_id = auth.uid()
                       or mycelium_private.is_admin_or_service()) then
    perform mycelium_private.fail('subscription_not_found', 'no subscription ' || p_subscription, 404);
  end if;
  return v_subscription;
end;
$$;

-- What every subscription function returns: the subscription with its running (last) period.
create or replace function mycelium_private.subscription_object(p_subscription uuid)
returns jsonb
language plpgsql
stable
as $$
begin
  return (select to_jsonb(s) || jsonb_build_object('period', (
    select to_jsonb(p) from public.subscription_periods p where p.subscription_id = s.id and p.seq = s.periods))
  from public.subscriptions s where s.id = p_subscription);
end;
$$;

-- ---------------------------------------------------------------------------------------
-- rpc/start_subscription(product_id, quantity, idempotency_key): a signed-in user starts an
-- `hour` or `month` product; its first period is held at once (insufficient_credits otherwise).
-- The same idempotency_key by the same buyer returns the same subscription (and moves nothing);
-- for another product or quantity it is duplicate_reference (409).
-- ---------------------------------------------------------------------------------------
create or replace function public.start_subscription(
  product_id uuid, quantity integer default 1, idempotency_key text default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_buyer uuid := mycelium_private.require_signed_in('start a subscription');
  v_key text := mycelium_private.check_text(start_subscription.idempotency_key, 'idempotency_key', 200);
  v_quantity integer := start_subscription.quantity;
  v_product public.products;
  v_subscription public.subscriptions;
  v_now timestamptz := now();
  v_period uuid;
begin
  if start_subscription.product_id is null then
    perform mycelium_private.fail('invalid_argument', 'product_id is required');
  end if;
  if v_quantity is null or v_quantity < 1 or v_quantity > 10000 then
    perform mycelium_private.fail('invalid_quantity', 'quantity must be a whole number from 1 to 10000');
  end if;
  if v_key is not null then
    select * into v_subscription from public.subscriptions s where s.buyer_id = v_buyer and s.idempotency_key = v_key;
    if found then
      if v_subscription.product_id <> start_subscription.product_id or v_subscription.quantity <> v_quantity then
        perform mycelium_private.fail('duplicate_reference',
          'idempotency_key was already used for a different subscription', 409);
      end if;
      return mycelium_private.subscription_object(v_subscription.id);
    end if;
  end if;

  -- FOR SHARE, as an order: a price change waits, so the first period pays the price committed.
  select * into v_product from public.products p where p.id = start_subscription.product_id for share;
  if not found then
    perform mycelium_private.fail('product_not_found', 'no product ' || start_subscription.product_id, 404);
  end if;
  if not v_product.active then
    perform mycelium_private.fail('product_inactive', format('product %s is not on sale', v_product.id), 409);
  end if;
  if v_product.unit not in ('hour', 'month') or v_product.capacity is not null then
    perform mycelium_private.fail('not_subscribable', format(
      'product %s is sold by orders only: subscriptions are to hour and month products without a capacity',
      v_product.id), 409);
  end if;
  if v_product.provider_id = v_buyer then
    perform mycelium_private.fail('own_product', 'providers cannot buy their own products');
  end if;

  -- Claim the idempotency key: a concurrent retry waits on the unique index, then replays.
  insert into public.subscriptions as s
    (buyer_id, provider_id, product_id, quantity, unit, due_at, paid_until, idempotency_key)
  values (v_buyer, v_product.provider_id, v_product.id, v_quantity, v_product.unit,
          mycelium_private.period_end(v_product.unit, v_now), mycelium_private.period_end(v_product.unit, v_now),
          v_key)
  on conflict (buyer_id, idempotency_key) where idempotency_key is not null do nothing
  returning * into v_subscription;
  if v_subscription.id is null then
    return public.start_subscription(start_subscription.product_id, v_quantity, v_key);
  end if;
  v_period := mycelium_private.hold_period(v_subscription, 'period', v_now, v_subscription.paid_until,
    v_product.price, v_product.price * v_quantity);
  perform mycelium_private.record_subscription_event(v_subscription, 'started', v_period,
    v_product.price * v_quantity);
  perform mycelium_private.warn_low_balance(v_buyer);
  return mycelium_private.subscription_object(v_subscription.id);
end;
$$;

revoke execute on function public.start_subscription(uuid, integer, text) from public, anon, service_role;
grant execute on function public.start_subscription(uuid, integer, text) to authenticated;

-- ---------------------------------------------------------------------------------------
-- rpc/stop_subscription(subscription_id): the buyer, the provider or service_role. Charges the
-- running period by the started hour and gives the rest back; unpaid time as far as the balance
-- goes. Stopping a stopped subscription returns it (a retry); a cancelled one: invalid_transition.
-- ---------------------------------------------------------------------------------------
create or replace function public.stop_subscription(subscription_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_subscription public.subscriptions;
  v_period public.subscription_periods;
  v_now timestamptz := now();
  v_charge numeric;
begin
  v_subscription := mycelium_private.lock_subscription(stop_subscription.subscription_id);
  perform mycelium_private.authorize(v_subscription.buyer_id = auth.uid() or v_subscription.provider_id = auth.uid()
    or mycelium_private.is_service(), 'only the buyer, the provider or service_role stop a subscription');
  if v_subscription.status = 'stopped' then
    return mycelium_private.subscription_object(v_subscription.id);
  elsif v_subscription.status = 'cancelled' then
    perform mycelium_private.fail('invalid_transition',
      format('subscription %s is cancelled: it cannot be stopped', v_subscription.id), 409);
  end if;
  perform 1 from public.credit_accounts a where a.user_id in (v_subscription.buyer_id, v_subscription.provider_id)
  order by a.user_id for no key update;

  if v_subscription.status = 'active' then
    select * into v_period from public.subscription_periods p
    where p.subscription_id = v_subscription.id and p.status = 'held';
    v_charge := least(v_period.amount, mycelium_private.hours_cost(v_subscription.unit, v_period.unit_price,
      v_period.quantity, v_period.starts_at, mycelium_private.started_hours(v_period.starts_at, v_now)));
    perform mycelium_private.charge_period(v_period.id, v_charge, least(v_now, v_period.ends_at));
    v_charge := v_charge + mycelium_private.settle_usage(v_subscription, v_period.starts_at,
      least(v_now, v_period.ends_at), mycelium_private.spendable(v_subscription.buyer_id));
    if v_now > v_period.ends_at then
      -- It ran past its paid period before the batch renewed it: that time is unpaid time too.
      v_subscription.grace_since := v_period.ends_at;
      v_charge := v_charge + mycelium_private.settle_arrears(v_subscription, v_now,
        mycelium_private.spendable(v_subscription.buyer_id));
    end if;
  else
    v_charge := mycelium_private.settle_usage(v_subscription, v_subscription.grace_since,
      least(v_now, v_subscription.suspended_at), mycelium_private.spendable(v_subscription.buyer_id));
    v_charge := v_charge + mycelium_private.settle_arrears(v_subscription, v_now,
      mycelium_private.spendable(v_subscription.buyer_id));
  end if;
  update public.subscriptions s
  set status = 'stopped', due_at = null, ended_at = v_now, updated_at = v_now
  where s.id = v_subscription.id;
  perform mycelium_private.record_subscription_event(v_subscription, 'stopped', v_period.id, v_charge);
  return mycelium_private.subscription_object(v_subscription.id);
end;
$$;

revoke execute on function public.stop_subscription(uuid) from public, anon;
grant execute on function public.stop_subscription(uuid) to authenticated, service_role;

-- ---------------------------------------------------------------------------------------
-- rpc/report_usage(subscription_id, unit, quantity, idempotency_key): the provider or
-- service_role reports metered usage of a running (active or grace) subscription, priced at the
-- product's usage price for the unit (`attributes.usage_prices`, e.g. {"egress_gb": "0.01"}) when
-- reported; charged at the period's end. The same idempotency_key for the same subscription
-- returns the same report (for another unit or quantity: duplicate_reference, 409).
-- ---------------------------------------------------------------------------------------
create or replace function public.report_usage(
  subscription_id uuid, unit text, quantity numeric, idempotency_key text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_subscription public.subscriptions;
  v_key text := mycelium_private.check_text(report_usage.idempotency_key, 'idempotency_key', 200, true);
  v_unit text := mycelium_private.check_text(report_usage.unit, 'unit', 100, true);
  v_quantity numeric := mycelium_private.check_amount(report_usage.quantity, 'quantity');
  v_price text;
  v_usage public.subscription_usage;
begin
  -- Under the subscription's lock: a charge of its usage (under that lock) sees every report or none.
  v_subscription := mycelium_private.lock_subscription(report_usage.subscription_id);
  perform mycelium_private.authorize(v_subscription.provider_id = auth.uid() or mycelium_private.is_service(),
    'only the provider or service_role report usage');
  select * into v_usage from public.subscription_usage u
  where u.subscription_id = v_subscription.id and u.idempotency_key = v_key;
  if found then
    if v_usage.unit <> v_unit or v_usage.quantity <> v_quantity then
      perform mycelium_private.fail('duplicate_reference', 'idempotency_key was already used for other usage', 409);
    end if;
    return to_jsonb(v_usage);
  end if;
  if v_subscription.status not in ('active', 'grace') then
    perform mycelium_private.fail('invalid_transition',
      format('subscription %s is %s: usage is reported while it runs', v_subscription.id, v_subscription.status), 409);
  end if;
  select p.attributes -> 'usage_prices' ->> v_unit into v_price from public.products p
  where p.id = v_subscription.product_id;
  if v_price is null or v_price !~ '^[0-9]{1,15}([.][0-9]{1,6})?$' or v_price::numeric = 0 then
    perform mycelium_private.fail('unknown_usage_unit',
      format('product %s has no usage price for %s', v_subscription.product_id, v_unit));
  end if;
  insert into public.subscription_usage as u
    (subscription_id, unit, quantity, unit_price, idempotency_key, reported_by, reported_role)
  values (v_subscription.id, v_unit, v_quantity, v_price::numeric, v_key, auth.uid(), mycelium_private.caller_role())
  on conflict (subscription_id, idempotency_key) do nothing
  returning * into v_usage;
  if v_usage.id is null then
    -- A concurrent report with the same key committed first: its answer (or duplicate_reference).
    return public.report_usage(v_subscription.id, v_unit, v_quantity, v_key);
  end if;
  return to_jsonb(v_usage);
end;
$$;

revoke execute on function public.report_usage(uuid, text, numeric, text) from public, anon;
grant execute on function public.report_usage(uuid, text, numeric, text) to authenticated, service_role;

-- ---------------------------------------------------------------------------------------
-- One step of the batch for a locked subscription whose buyer and provider accounts are locked:
-- an active one whose period ended is paid and renewed (or goes into grace, or ends with its
-- product off sale); an unpaid one resumes if the balance covers its arrears and a new period,
-- else moves on when its grace or suspension is over. Returns what it did ('waiting': nothing),
-- and adds the credits it charged to `charged`.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.advance_subscription(
  p_subscription public.subscriptions, p_as_of timestamptz, inout charged numeric, out outcome text)
language plpgsql
as $$
declare
  v_sub public.subscriptions := p_subscription;
  v_product public.products;
  v_period public.subscription_periods;
  v_config public.subscription_config;
  v_next numeric;
  v_arrears numeric;
  v_usage numeric;
  v_end timestamptz;
  v_id uuid;
begin
  select * into v_product from public.products p where p.id = v_sub.product_id;
  select * into v_config from public.subscription_config c where c.id;
  v_next := v_product.price * v_sub.quantity;

  if v_sub.status = 'active' then
    select * into v_period from public.subscription_periods p
    where p.subscription_id = v_sub.id and p.status = 'held';
    perform mycelium_private.charge_period(v_period.id, v_period.amount, v_period.ends_at);
    charged := charged + v_period.amount;
    -- The period's usage is due now: charged whole if the balance covers it, else owed (grace).
    v_usage := mycelium_private.usage_owed(v_sub.id);
    if v_usage > 0 and mycelium_private.spendable(v_sub.buyer_id) >= v_usage then
      charged := charged + mycelium_private.settle_usage(v_sub, v_period.starts_at, v_period.ends_at, v_usage);
      v_usage := 0;
    end if;
    if not v_product.active then
      charged := charged + mycelium_private.settle_usage(v_sub, v_period.starts_at, v_period.ends_at,
        mycelium_private.spendable(v_sub.buyer_id));
      update public.subscriptions s set status = 'cancelled', due_at = null, ended_at = v_sub.paid_until,
        updated_at = now() where s.id = v_sub.id;
      perform mycelium_private.record_subscription_event(v_sub, 'cancelled', v_period.id, v_period.amount,
        'product off sale');
      outcome := 'cancelled';
    elsif v_usage = 0 and v_next < 1e15 and mycelium_private.spendable(v_sub.buyer_id) >= v_next then
      v_end := mycelium_private.period_end(v_sub.unit, v_sub.paid_until);
      v_id := mycelium_private.hold_period(v_sub, 'period', v_sub.paid_until, v_end, v_product.price, v_next);
      update public.subscriptions s set paid_until = v_end, due_at = v_end, updated_at = now() where s.id = v_sub.id;
      perform mycelium_private.record_subscription_event(v_sub, 'renewed', v_id, v_next);
      outcome := 'renewed';
    else
      update public.subscriptions s
      set status = 'grace', grace_since = v_sub.paid_until, due_at = v_sub.paid_until + v_config.grace_period,
          updated_at = now()
      where s.id = v_sub.id;
      perform mycelium_private.record_subscription_event(v_sub, 'grace', v_period.id, v_period.amount,
        format('%s credits needed to renew', v_usage + v_next));
      outcome := 'grace';
    end if;
    return;
  end if;

  -- Unpaid (grace, suspended): resumed when the balance covers the usage owed, the arrears and a
  -- new period.
  v_arrears := mycelium_private.arrears(v_sub, p_as_of);
  v_usage := mycelium_private.usage_owed(v_sub.id);
  if v_product.active and p_as_of > coalesce(v_sub.suspended_at, v_sub.grace_since) and v_next < 1e15
     and mycelium_private.spendable(v_sub.buyer_id) >= v_usage + v_arrears + v_next then
    charged := charged + mycelium_private.settle_usage(v_sub, v_sub.grace_since,
      least(p_as_of, v_sub.suspended_at), v_usage);
    charged := charged + mycelium_private.settle_arrears(v_sub, p_as_of, v_arrears);
    v_end := mycelium_private.period_end(v_sub.unit, p_as_of);
    v_id := mycelium_private.hold_period(v_sub, 'period', p_as_of, v_end, v_product.price, v_next);
    update public.subscriptions s
    set status = 'active', grace_since = null, suspended_at = null, paid_until = v_end, due_at = v_end,
        updated_at = now()
    where s.id = v_sub.id;
    perform mycelium_private.record_subscription_event(v_sub, 'resumed', v_id, v_usage + v_arrears + v_next);
    outcome := 'resumed';
  elsif v_sub.due_at > p_as_of then
    outcome := 'waiting';
  elsif v_sub.status = 'grace' then
    update public.subscriptions s
    set status = 'suspended', suspended_at = v_sub.due_at, due_at = v_sub.due_at + v_config.suspension_period,
        updated_at = now()
    where s.id = v_sub.id;
    perform mycelium_private.record_subscription_event(v_sub, 'suspended', null, null,
      format('%s credits needed to resume', v_usage + v_arrears + v_next));
    outcome := 'suspended';
  else
    v_arrears := mycelium_private.settle_usage(v_sub, v_sub.grace_since, v_sub.suspended_at,
      mycelium_private.spendable(v_sub.buyer_id));
    v_arrears := v_arrears + mycelium_private.settle_arrears(v_sub, v_sub.suspended_at,
      mycelium_private.spendable(v_sub.buyer_id));
    charged := charged + v_arrears;
    update public.subscriptions s set status = 'cancelled', due_at = null, ended_at = v_sub.due_at,
      updated_at = now() where s.id = v_sub.id;
    perform mycelium_private.record_subscription_event(v_sub, 'cancelled', null, v_arrears, 'unpaid');
    outcome := 'cancelled';
  end if;
end;
$$;

-- ---------------------------------------------------------------------------------------
-- rpc/charge_due_subscriptions(as_of, max_periods): service_role, the upkeep. One transaction:
-- the subscriptions due by as_of (oldest first), then the unpaid ones whose buyer's balance now
-- covers them, skipping those another batch or a stop holds (`for update skip locked`:
-- two overlapping batches take different subscriptions; each period is charged under its
-- subscription's lock, once). A subscription behind by several periods catches up within the call.
-- At most max_periods steps (a step pays a period and holds the next, or moves an unpaid one on):
-- call again while `done` is false.
-- ---------------------------------------------------------------------------------------
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
  v_id uuid;
  v_sub public.subscriptions;
  v_step record;
  v_charged numeric := 0;
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

  foreach v_id in array v_ids loop
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

-- ---------------------------------------------------------------------------------------
-- rpc/subscription_burn_rate(): what the caller's running subscriptions cost per hour
-- (mycelium_private.burn_rate), and how many hours the spendable balance (what the running
-- periods hold is paid already) lasts at that rate, to 2 decimals, cut down; null when nothing runs.
-- ---------------------------------------------------------------------------------------
create or replace function public.subscription_burn_rate()
returns table (running_subscriptions bigint, cost_per_hour numeric, balance numeric, runway_hours numeric)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_user uuid := mycelium_private.require_signed_in('read your burn rate');
begin
  return query
    select r.running, r.cost, b.balance,
           case when r.cost > 0 then mycelium_private.divide_truncated(b.balance, r.cost, 2) end
    from mycelium_private.burn_rate(v_user) r, (select mycelium_private.spendable(v_user) as balance) b;
end;
$$;

revoke execute on function public.subscription_burn_rate() from public, anon, service_role;
grant execute on function public.subscription_burn_rate() to authenticated;

revoke execute on all functions in schema mycelium_private from public;
