-- Subscriptions, part 3: what providers and buyers learn as it happens (issue 19, items 2, 3, 5),
-- a provider who lost their role sells no new subscription, and earnings count subscriptions.
--
-- 1. The provider's feed. Every row of subscription_events is broadcast on the private Realtime
--    topic `subscriptions:<provider_id>`, event `subscription_event`: the row's columns and the
--    subscription's product_id, quantity and unit (what a provider's service needs to start or
--    stop the workload without a read). Only that provider may join the topic (the policy on
--    realtime.messages that opened the balance topics opens it too). A trigger sends it, so every function
--    that records an event (the batch too) is covered, and only once it commits.
-- 2. The low-balance warning. Every row of low_balance_warnings is broadcast on the buyer's
--    `balance:<user_id>` topic, event `low_balance`: the row's columns (balance, cost_per_hour,
--    runway_hours, threshold_hours, at); the table is published for Postgres Changes too.
-- 3. Burn rate and runway. What a user's running subscriptions (active, and in grace: they run,
--    unpaid) cost an hour, now including metered usage (mycelium_private.burn_rate, and so
--    subscription_burn_rate() and the low-balance warnings): the usage reported in the last 24
--    hours (or since the subscription started, if later) per started hour of that window: the
--    current rate of use, extrapolated. Unreported usage cannot be known; a provider reporting
--    rarely makes the estimate lumpy, never wrong by more than the reports say.
--    Every balance change broadcast (and the balance feed's NOTIFY) now carries `burn_rate` (0
--    when nothing runs) and `runway_hours`: how many hours the spendable balance lasts at it, to 2
--    decimals cut down, null when nothing runs; a subscription that starts or stops running (a
--    stop, a suspension, a resumption, a cancellation) sends its buyer's account again with them,
--    as a balance change. The view credit_balances, the balance read, offers the same two, and
--    `expiring`. Kept cheap for the ledger: a user with nothing running costs a
--    balance change one probe of a partial index of the running subscriptions.
-- 4. start_subscription refuses a product whose provider no longer holds the role of its category
--    with `provider_not_selling` (409), as place_order does, before it looks at `active` (revoking
--    the role took the product off sale: the buyer learns why). Renewals need no new rule: a
--    product off sale is not renewed (its subscriptions are cancelled when the paid period ends).
-- 5. Earnings. Subscription periods are paid to providers by provider_earning transfers, which the
--    earnings views did not count (they read orders): provider_earnings_daily, _monthly and
--    _by_product now count every charged period (period, arrears, usage) by the UTC day (month)
--    it was charged, at its charged amount, less its fee; `periods` (a new last column) says how
--    many. `orders` and `units` stay the orders' (a period has no units sold).

-- ---------------------------------------------------------------------------------------
-- 3. The burn rate, with metered usage.
-- ---------------------------------------------------------------------------------------

-- The running subscriptions of a buyer: every balance change looks here.
create index subscriptions_running_idx on public.subscriptions (buyer_id)
where status in ('active', 'grace');
-- A subscription's recent usage.
create index subscription_usage_reported_idx on public.subscription_usage (subscription_id, reported_at);

-- What a user's running subscriptions cost per hour now: their products' prices (a month counts
-- 730 hours, 365 * 24 / 12) and their usage in the last 24 hours per started hour (see above).
create or replace function mycelium_private.burn_rate(p_user uuid, out running bigint, out cost numeric)
language plpgsql
stable
as $$
begin
  select count(*),
         coalesce(sum(case when s.unit = 'hour' then p.price * s.quantity
                           else mycelium_private.divide_rounded(p.price * s.quantity, 730, 6) end
                      + coalesce(u.per_hour, 0)), 0)
  into running, cost
  from public.subscriptions as s
  inner join public.products as p on s.product_id = p.id
  cross join lateral (select greatest(s.created_at, now() - interval '24 hours') as since) as w
  left join lateral (
    select mycelium_private.divide_rounded(sum(r.quantity * r.unit_price),
                                           mycelium_private.started_hours(w.since, now()), 6) as per_hour
    from public.subscription_usage as r
    where r.subscription_id = s.id and r.reported_at >= w.since
  ) as u on true
  where s.buyer_id = p_user and s.status in ('active', 'grace');
end;
$$;

-- The burn rate, and the hours the spendable balance lasts at it (null when nothing runs).
create or replace function mycelium_private.runway(
  p_user uuid, out burn_rate numeric, out runway_hours numeric)
language plpgsql
stable
as $$
begin
  burn_rate := (mycelium_private.burn_rate(p_user)).cost;
  if burn_rate > 0 then
    runway_hours := mycelium_private.divide_truncated(mycelium_private.spendable(p_user), burn_rate, 2);
  end if;
end;
$$;

-- The same for the view credit_balances, which runs as its reader: subscriptions, products and
-- lots are read whole here (a product taken off sale still runs until its period ends), for an
-- account the reader may see (the view passes only those; anyone else gets nulls).
create or replace function mycelium_private.account_runway(
  p_user uuid, out burn_rate numeric, out runway_hours numeric)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  if p_user = auth.uid() or mycelium_private.is_admin_or_service() then
    select r.burn_rate, r.runway_hours into burn_rate, runway_hours from mycelium_private.runway(p_user) as r;
  end if;
end;
$$;
grant execute on function mycelium_private.account_runway(uuid) to authenticated, service_role;

-- The balance read: as before, and `expiring`, `burn_rate`, `runway_hours` (new last columns).
create or replace view public.credit_balances with (security_invoker = true) as
select  -- noqa: ST06
  a.user_id, a.balance, a.held, public.tfc_to_usd(a.balance) as balance_usd, a.updated_at,
  a.expiring, r.burn_rate, r.runway_hours
from public.credit_accounts as a
cross join lateral mycelium_private.account_runway(a.user_id) as r;
comment on view public.credit_balances is
  'Your balance, its value in USD at the configured rate (display only), what expires of it, what your '
  'running subscriptions cost an hour (burn_rate) and how many hours your spendable balance lasts at that '
  'rate (runway_hours, null when nothing runs).';
-- A join now: PostgreSQL cannot update it itself (see refuse_view_write).
create trigger refuse_writes instead of insert or update or delete on public.credit_balances
for each row execute function mycelium_private.refuse_view_write();

-- What a watcher learns of an account: its balance and held credits, and the burn rate and runway.
-- Most balance changes are of users with nothing running: for them one probe of the running
-- subscriptions' index (3 microseconds), not the burn rate's calls (80 microseconds, which cost a
-- PostgREST-shaped transfer a sixth of its rate: bench/profile_ledger.py --compare).
create or replace function mycelium_private.balance_change(
  p_user uuid, p_balance numeric, p_held numeric, p_updated_at timestamptz)
returns jsonb
language plpgsql
stable
as $$
declare
  v_burn_rate numeric := 0;
  v_runway_hours numeric;
  v_runway record;
begin
  if exists (select 1 from public.subscriptions as s where s.buyer_id = p_user and s.status in ('active', 'grace')) then
    v_runway := mycelium_private.runway(p_user);
    v_burn_rate := v_runway.burn_rate;
    v_runway_hours := v_runway.runway_hours;
  end if;
  return jsonb_build_object('user_id', p_user, 'balance', p_balance, 'held', p_held, 'updated_at', p_updated_at,
                            'burn_rate', v_burn_rate, 'runway_hours', v_runway_hours);
end;
$$;

-- Every balance change, broadcast or notified, with the burn rate and the runway.
create or replace function mycelium_private.send_balance_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_change jsonb;
begin
  if new.balance is distinct from old.balance or new.held is distinct from old.held then
    v_change := mycelium_private.balance_change(new.user_id, new.balance, new.held, new.updated_at);
    if tg_argv[0] = 'feed' then
      perform pg_notify('mycelium_balance_changed', v_change::text);
    else
      perform realtime.send(v_change, 'balance_changed', 'balance:' || new.user_id::text, true);
    end if;
  end if;
  return null;
end;
$$;

-- A subscription that starts or stops running changes its buyer's burn rate, often after the
-- last movement of its transaction (a stop charges, then ends it; a suspension moves nothing):
-- the account is sent again, with the burn rate and runway that hold now. (A price change or a
-- usage report waits for the next change of the account: they are not the account's.)
create or replace function mycelium_private.send_running_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_change jsonb;
begin
  select mycelium_private.balance_change(a.user_id, a.balance, a.held, a.updated_at) into v_change
  from public.credit_accounts as a where a.user_id = new.buyer_id;
  perform realtime.send(v_change, 'balance_changed', 'balance:' || new.buyer_id::text, true);
  if exists (select 1 from mycelium_private.balance_feed_listeners) then
    perform pg_notify('mycelium_balance_changed', v_change::text);
  end if;
  return null;
end;
$$;

create trigger subscriptions_broadcast_running_change
after update of status on public.subscriptions
for each row
when ((old.status in ('active', 'grace')) <> (new.status in ('active', 'grace')))
execute function mycelium_private.send_running_change();

-- ---------------------------------------------------------------------------------------
-- 1. The provider's feed, and 2. the low-balance warning, broadcast.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.send_subscription_event()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform realtime.send(
    to_jsonb(new) || (select jsonb_build_object('product_id', s.product_id, 'quantity', s.quantity, 'unit', s.unit)
                      from public.subscriptions as s where s.id = new.subscription_id),
    'subscription_event', 'subscriptions:' || new.provider_id::text, true);
  return null;
end;
$$;

create trigger subscription_events_broadcast
after insert on public.subscription_events
for each row execute function mycelium_private.send_subscription_event();

create or replace function mycelium_private.send_low_balance_warning()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform realtime.send(to_jsonb(new), 'low_balance', 'balance:' || new.user_id::text, true);
  return null;
end;
$$;

create trigger low_balance_warnings_broadcast
after insert on public.low_balance_warnings
for each row execute function mycelium_private.send_low_balance_warning();

-- And through Postgres Changes, for watchers whose project's policy refuses the private topic
-- (the balance watch's fallback): RLS delivers each user their own.
alter publication supabase_realtime add table public.low_balance_warnings;

-- A user reads the messages of their own balance topic and, as a provider, of their own
-- subscriptions topic, each on that topic only (see the hardening: a message is read on its own
-- topic). One policy (its name is older than the second topic): several permissive policies for
-- one role and action would each be evaluated for every message.
alter policy mycelium_balance_broadcast_own on realtime.messages
using (
  topic = (select realtime.topic())
  and (select realtime.topic()) in (
    'balance:' || (select auth.uid())::text, 'subscriptions:' || (select auth.uid())::text
  )
  and extension = 'broadcast'
);

-- ---------------------------------------------------------------------------------------
-- 4. rpc/start_subscription (see subscriptions): as before, and provider_not_selling first.
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
  -- Before `active`, as place_order: a revoked role also took the product off sale.
  if not exists (select 1 from public.user_roles r
                 where r.user_id = v_product.provider_id
                   and r.role = mycelium_private.role_for_category(v_product.category)) then
    perform mycelium_private.fail('provider_not_selling',
      format('the provider of product %s no longer sells it', v_product.id), 409);
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
-- 5. Earnings: orders and subscription periods.
-- ---------------------------------------------------------------------------------------

-- What providers were paid, one row an order fulfilled or a period charged, for the caller's side
-- (a provider: theirs; an admin: all). SQL, stable, without a SET clause, run as the caller: inlined
-- into the views, so their filters reach the indexes, and the tables' RLS applies.
create or replace function mycelium_private.provider_income()
returns table (
  provider_id uuid, product_id uuid, product_name text, category text, order_id uuid, period_id uuid,
  paid_at timestamptz, units integer, gross numeric, fee numeric, refunded numeric, fee_refunded numeric
)
language sql
stable
as $$
  select i.provider_id, i.product_id, i.product_name, i.category, i.order_id, null::uuid, i.fulfilled_at,
         i.quantity, i.line_total, i.fee, i.refunded, i.fee_refunded
  from public.order_item_shares as i
  where i.provider_id = (select auth.uid()) or (select public.is_admin())
  union all
  select s.provider_id, s.product_id, p.name, p.category, null::uuid, c.id, c.charged_at,
         0, c.charged_amount, c.fee_amount, 0::numeric, 0::numeric
  from public.subscriptions as s
  inner join public.subscription_periods as c on s.id = c.subscription_id
  inner join public.products as p on s.product_id = p.id
  where c.status = 'charged' and (s.provider_id = (select auth.uid()) or (select public.is_admin()))
$$;
grant execute on function mycelium_private.provider_income() to authenticated, service_role;

-- Per UTC `p_period` ('day' or 'month') of payment: orders whole (their fee and refunds as they
-- were, not shared between items), as mycelium_private.provider_earnings counted them, and charged
-- periods. Like provider_income, it names only objects of `public`: an inlined body is resolved as
-- the caller, who has no usage on mycelium_private.
create or replace function mycelium_private.provider_earnings_with_periods(p_period text)
returns table (
  provider_id uuid, period date, orders bigint, gross numeric, fee numeric, refunded numeric,
  fee_refunded numeric, net numeric, periods bigint
)
language sql
stable
as $$
  select e.provider_id, date_trunc(p_period, e.paid_at at time zone 'UTC')::date, count(e.order_id),
         sum(e.gross), sum(e.fee), sum(e.refunded), sum(e.fee_refunded),
         sum(e.gross - e.fee - e.refunded + e.fee_refunded), count(e.period_id)
  from (
    select o.provider_id, o.id as order_id, null::uuid as period_id, o.fulfilled_at as paid_at, o.total as gross,
           o.fee_amount as fee, o.refunded_amount as refunded, o.fee_refunded
    from public.orders as o
    where o.fulfilled_at is not null and (o.provider_id = (select auth.uid()) or (select public.is_admin()))
    union all
    select s.provider_id, null::uuid, c.id, c.charged_at, c.charged_amount, c.fee_amount, 0, 0
    from public.subscriptions as s
    inner join public.subscription_periods as c on s.id = c.subscription_id
    where c.status = 'charged' and (s.provider_id = (select auth.uid()) or (select public.is_admin()))
  ) as e
  group by e.provider_id, date_trunc(p_period, e.paid_at at time zone 'UTC')::date
$$;
grant execute on function mycelium_private.provider_earnings_with_periods(text)
  to authenticated, service_role;

create or replace view public.provider_earnings_daily with (security_invoker = true) as
select
  e.provider_id, e.period as day, e.orders, e.gross, e.fee, e.refunded, e.fee_refunded, e.net, e.periods
from mycelium_private.provider_earnings_with_periods('day') as e;
comment on view public.provider_earnings_daily is
  'Your earnings as a provider per UTC day, orders and subscription periods: gross, platform fee, refunds, net.';

create or replace view public.provider_earnings_monthly with (security_invoker = true) as
select
  e.provider_id, e.period as month, e.orders, e.gross, e.fee, e.refunded, e.fee_refunded, e.net, e.periods
from mycelium_private.provider_earnings_with_periods('month') as e;
comment on view public.provider_earnings_monthly is
  'Your earnings as a provider per UTC month, orders and subscription periods: gross, platform fee, refunds, net.';

create or replace view public.provider_earnings_by_product with (security_invoker = true) as
select
  i.provider_id, i.product_id, min(i.product_name) as product_name, min(i.category) as category,
  count(distinct i.order_id) as orders, sum(i.units) as units, sum(i.gross) as gross, sum(i.fee) as fee,
  sum(i.refunded) as refunded, sum(i.fee_refunded) as fee_refunded,
  sum(i.gross - i.fee - i.refunded + i.fee_refunded) as net, count(i.period_id) as periods
from mycelium_private.provider_income() as i
group by i.provider_id, i.product_id;
comment on view public.provider_earnings_by_product is
  'Your earnings as a provider per product, orders and subscription periods: gross, platform fee, refunds, net.';

-- The orders-only function the views read before.
drop function mycelium_private.provider_earnings(text);

revoke execute on all functions in schema mycelium_private from public;
