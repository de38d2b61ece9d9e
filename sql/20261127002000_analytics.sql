-- Analytics, over the credits and the marketplace: per user (own rows through RLS) and for the
-- platform (admins and service_role). Days and months are UTC.
--
-- Orders in these figures: a user's `spent` is what they put into orders (held or paid) net of
-- released holds; refunds they receive and provider earnings are `received` (a provider's refunds
-- given count there negatively). On the platform, `spent` is what orders paid out of holds
-- (provider earnings plus platform fees) net of refunds.

-- ---------------------------------------------------------------------------------------
-- Per user, own rows only: a user's movements summed per UTC `p_period` ('day' or 'month'); the
-- daily and the monthly view are this one query. SQL, stable, without a SET clause: inlined into
-- the views, and run as the caller, so the caller's RLS on credit_transactions applies.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.credit_activity(p_period text)
returns table (
  user_id uuid, period date, bought numeric, granted numeric, received numeric, sent numeric, spent numeric,
  expired numeric, net numeric, movements bigint
)
language sql
stable
as $$
  select
    t.user_id,
    date_trunc(p_period, t.created_at at time zone 'UTC')::date,
    coalesce(sum(t.amount) filter (where t.kind = 'purchase'), 0),
    coalesce(sum(t.amount) filter (where t.kind = 'grant'), 0),
    coalesce(sum(t.amount) filter (where t.kind in ('transfer_in', 'provider_earning', 'refund')), 0),
    coalesce(-sum(t.amount) filter (where t.kind = 'transfer_out'), 0),
    coalesce(-sum(t.amount) filter (where t.kind in ('order_hold', 'order_release')), 0),
    coalesce(-sum(t.amount) filter (where t.kind = 'expiry'), 0),
    sum(t.amount),
    count(*)
  from public.credit_transactions t
  group by 1, 2
$$;
grant execute on function mycelium_private.credit_activity(text) to authenticated, service_role;

create view public.credit_daily_activity with (security_invoker = true) as
select a.user_id, a.period as day, a.bought, a.granted, a.received, a.sent, a.spent, a.expired, a.net,
       a.movements
from mycelium_private.credit_activity('day') as a;
comment on view public.credit_daily_activity is 'Your credits bought, granted, received, sent, spent, expired per UTC day.';

create view public.credit_monthly_activity with (security_invoker = true) as
select a.user_id, a.period as month, a.bought, a.granted, a.received, a.sent, a.spent, a.expired, a.net,
       a.movements
from mycelium_private.credit_activity('month') as a;
comment on view public.credit_monthly_activity is 'Your credits bought, granted, received, sent, spent, expired per UTC month.';

revoke all on public.credit_daily_activity, public.credit_monthly_activity
  from anon, authenticated, service_role;
grant select on public.credit_daily_activity, public.credit_monthly_activity to authenticated, service_role;
-- Aggregates: PostgreSQL cannot update them itself (see refuse_view_write).
create trigger refuse_writes instead of insert or update or delete on public.credit_daily_activity
  for each row execute function mycelium_private.refuse_view_write();
create trigger refuse_writes instead of insert or update or delete on public.credit_monthly_activity
  for each row execute function mycelium_private.refuse_view_write();

-- Spending by orders summed without scanning every transfer.
create index transfers_order_spending_idx on mycelium_private.transfers (created_at) include (kind, amount)
  where kind in ('provider_earning', 'platform_fee', 'refund');

-- ---------------------------------------------------------------------------------------
-- Platform, per UTC day: issued (purchases + grants), spent, transferred between users,
-- expired, platform revenue, and credits in circulation (users' balances plus their credits held
-- for open orders: `holds` counts as the users' side) at the end of the day.
-- Complete days are rolled up once into mycelium_private.ledger_days (rpc/refresh_ledger_rollups,
-- run by a scheduler; idempotent); what is not rolled up yet is summed live from transfers by
-- range scans on transfers(created_at) and the system-account indexes. So a month of stats
-- reads 30 roll-up rows plus today's transfers, however long the ledger.
-- ---------------------------------------------------------------------------------------
create table mycelium_private.ledger_days (
  day date primary key,
  issued numeric not null,
  purchased numeric not null,
  granted numeric not null,
  transferred numeric not null,
  spent numeric not null,
  expired numeric not null,
  platform_revenue numeric not null,
  into_users numeric not null,
  movements bigint not null,
  rolled_up_at timestamptz not null default now()
);
alter table mycelium_private.ledger_days enable row level security;

-- Live totals per UTC day of the transfers in [from_ts, to_ts).
create or replace function mycelium_private.live_day_totals(from_ts timestamptz, to_ts timestamptz)
returns table (
  day date, issued numeric, purchased numeric, granted numeric, transferred numeric, spent numeric,
  expired numeric, platform_revenue numeric, into_users numeric, movements bigint
)
language sql
stable
set search_path = ''
as $$
  select
    (t.created_at at time zone 'UTC')::date,
    coalesce(sum(t.amount) filter (where t.from_system = 'issuance'), 0),
    coalesce(sum(t.amount) filter (where t.kind = 'purchase'), 0),
    coalesce(sum(t.amount) filter (where t.kind = 'grant'), 0),
    coalesce(sum(t.amount) filter (where t.kind = 'transfer'), 0),
    coalesce(sum(t.amount) filter (where t.kind in ('provider_earning', 'platform_fee')), 0)
      - coalesce(sum(t.amount) filter (where t.kind = 'refund'), 0),
    coalesce(sum(t.amount) filter (where t.to_system = 'expiry'), 0),
    coalesce(sum(t.amount) filter (where t.to_system = 'platform_revenue'), 0)
      - coalesce(sum(t.amount) filter (where t.from_system = 'platform_revenue'), 0),
    coalesce(sum(t.amount) filter (where t.from_system <> 'holds'), 0)
      - coalesce(sum(t.amount) filter (where t.to_system <> 'holds'), 0),
    count(*)
  from mycelium_private.transfers t
  where t.created_at >= from_ts and t.created_at < to_ts
  group by 1
$$;

-- The start of the oldest transaction still open in this database, other than the caller's. A
-- movement's created_at is its transaction's start, so a transaction that began before a day ended
-- may still add movements to that day when it commits, however late. Every kind of backend counts
-- (client sessions, pg_cron's workers, logical replication) but autovacuum and WAL senders, which
-- never write the ledger. Sessions of other roles show here only where the owner has
-- pg_read_all_stats (or their role); for those the roll-up relies on its hour of margin.
-- (Prepared transactions are not counted: Supabase runs with max_prepared_transactions = 0.)
create or replace function mycelium_private.oldest_open_transaction_start()
returns timestamptz
language sql
stable
set search_path = ''
as $$
  select min(a.xact_start) from pg_catalog.pg_stat_activity a
  where a.datname = pg_catalog.current_database()
    and a.pid <> pg_catalog.pg_backend_pid()
    and a.backend_type not in ('autovacuum worker', 'walsender')
$$;

-- The last UTC day that no movement can still be added to, at `p_now` with the oldest open
-- transaction begun at `p_oldest_open` (null: none): a day counts as complete an hour after it
-- ended, and once every transaction that began before its end has ended.
create or replace function mycelium_private.last_complete_day(p_now timestamptz, p_oldest_open timestamptz)
returns date
language sql
immutable
set search_path = ''
as $$
  select least(((p_now - interval '1 hour') at time zone 'UTC')::date,
               (coalesce(p_oldest_open, 'infinity'::timestamptz) at time zone 'UTC')::date) - 1
$$;

-- rpc/refresh_ledger_rollups(max_days): roll up the complete UTC days not rolled up yet, oldest
-- first, at most max_days a call (default one: a day of a million movements takes about 1.5 s to
-- sum here, and a call must end inside the API's statement timeout; call again while it returns
-- max_days). Admins and service_role. Returns how many days were added.
create or replace function public.refresh_ledger_rollups(max_days integer default 1)
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_last_complete date;
  v_start date;
  v_added integer;
begin
  perform mycelium_private.require_admin();
  if max_days is null or max_days < 1 or max_days > 3660 then
    perform mycelium_private.fail('invalid_argument', 'max_days must be from 1 to 3660');
  end if;
  -- Open transactions are read before the ledger is (its snapshot is taken by a later statement):
  -- a transaction that is no longer listed has committed or aborted, so the later snapshot has all
  -- it wrote.
  v_last_complete := mycelium_private.last_complete_day(now(), mycelium_private.oldest_open_transaction_start());
  -- One refresh at a time.
  perform pg_advisory_xact_lock(hashtext('mycelium_private.ledger_days'));
  select max(d.day) + 1 into v_start from mycelium_private.ledger_days d;
  if v_start is null then
    select (min(t.created_at) at time zone 'UTC')::date into v_start from mycelium_private.transfers t;
  end if;
  if v_start is null or v_start > v_last_complete then
    return 0;
  end if;
  v_last_complete := least(v_last_complete, v_start + max_days - 1);
  insert into mycelium_private.ledger_days
    (day, issued, purchased, granted, transferred, spent, expired, platform_revenue, into_users, movements)
  select g.day::date,
         coalesce(l.issued, 0), coalesce(l.purchased, 0), coalesce(l.granted, 0), coalesce(l.transferred, 0),
         coalesce(l.spent, 0), coalesce(l.expired, 0), coalesce(l.platform_revenue, 0),
         coalesce(l.into_users, 0), coalesce(l.movements, 0)
  from generate_series(v_start, v_last_complete, interval '1 day') g(day)
  left join mycelium_private.live_day_totals(
    (v_start::timestamp at time zone 'UTC'), ((v_last_complete + 1)::timestamp at time zone 'UTC')) l
    on l.day = g.day::date
  on conflict (day) do nothing;
  get diagnostics v_added = row_count;
  return v_added;
end;
$$;

create or replace function public.platform_daily_stats(from_day date default null, to_day date default null)
returns table (
  day date,
  issued numeric,
  purchased numeric,
  granted numeric,
  transferred numeric,
  spent numeric,
  expired numeric,
  platform_revenue numeric,
  circulation numeric,
  movements bigint
)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_to date := coalesce(to_day, (now() at time zone 'UTC')::date);
  v_from date := coalesce(from_day, v_to - 29);
  v_from_ts timestamptz := (v_from::timestamp at time zone 'UTC');
  v_to_ts timestamptz := ((v_to + 1)::timestamp at time zone 'UTC');
  -- Days up to v_rolled are in ledger_days (contiguous by construction); later ones are live.
  v_rolled date := (select max(d.day) from mycelium_private.ledger_days d);
  v_live_from timestamptz := coalesce(((v_rolled + 1)::timestamp at time zone 'UTC'), '-infinity'::timestamptz);
  v_base numeric;
begin
  perform mycelium_private.require_admin();
  if v_from > v_to or v_to - v_from > 3660 then
    perform mycelium_private.fail('invalid_argument', 'from_day must not be after to_day, and the range at most 10 years');
  end if;
  -- Credits held by users before the range: what systems other than `holds` paid out minus what
  -- they took back.
  select coalesce((select sum(d.into_users) from mycelium_private.ledger_days d where d.day < v_from), 0)
       + coalesce((select sum(t.amount) from mycelium_private.transfers t
                   where t.from_system <> 'holds' and t.created_at >= v_live_from and t.created_at < v_from_ts), 0)
       - coalesce((select sum(t.amount) from mycelium_private.transfers t
                   where t.to_system <> 'holds' and t.created_at >= v_live_from and t.created_at < v_from_ts), 0)
  into v_base;

  return query
  with days as (
    select g.d::date as day from generate_series(v_from, v_to, interval '1 day') g(d)
  ), per_day as (
    select d.day, d.issued, d.purchased, d.granted, d.transferred, d.spent, d.expired, d.platform_revenue,
           d.into_users, d.movements
    from mycelium_private.ledger_days d
    where d.day >= v_from and d.day <= v_to
    union all
    select l.day, l.issued, l.purchased, l.granted, l.transferred, l.spent, l.expired, l.platform_revenue,
           l.into_users, l.movements
    from mycelium_private.live_day_totals(greatest(v_from_ts, v_live_from), v_to_ts) l
  )
  select
    d.day,
    coalesce(p.issued, 0), coalesce(p.purchased, 0), coalesce(p.granted, 0), coalesce(p.transferred, 0),
    coalesce(p.spent, 0), coalesce(p.expired, 0), coalesce(p.platform_revenue, 0),
    v_base + coalesce(sum(p.into_users) over (order by d.day), 0),
    coalesce(p.movements, 0)
  from days d left join per_day p on p.day = d.day
  order by d.day;
end;
$$;

-- Totals now: credits in circulation (user balances + held), and each system account.
create or replace function public.platform_credit_summary()
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform mycelium_private.require_admin();
  return (
    select jsonb_build_object(
      'circulation', (select coalesce(sum(a.balance + a.held), 0) from public.credit_accounts a),
      'held', (select coalesce(sum(a.held), 0) from public.credit_accounts a),
      'user_accounts', (select count(*) from public.credit_accounts a),
      'issued', (select coalesce(sum(t.amount), 0) from mycelium_private.transfers t where t.from_system = 'issuance'),
      'spent', (select coalesce(sum(case when t.kind = 'refund' then -t.amount else t.amount end), 0)
                from mycelium_private.transfers t where t.kind in ('provider_earning', 'platform_fee', 'refund')),
      'expired', (select coalesce(sum(t.amount), 0) from mycelium_private.transfers t where t.to_system = 'expiry'),
      'platform_revenue',
        (select coalesce(sum(t.amount), 0) from mycelium_private.transfers t where t.to_system = 'platform_revenue')
        - (select coalesce(sum(t.amount), 0) from mycelium_private.transfers t where t.from_system = 'platform_revenue'),
      'tfc_to_usd_rate', (select c.tfc_to_usd_rate from public.credit_config c where c.id)
    )
  );
end;
$$;

-- Top spenders (credits sent to users or put into orders, net of released holds and refunds
-- received) and earners (credits received from users or earned, net of refunds given).
create or replace function public.top_credit_users(
  direction text default 'spenders', from_day date default null, to_day date default null,
  max_rows integer default 10)
returns table (user_id uuid, email text, total numeric, movements bigint)
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_to date := coalesce(to_day, (now() at time zone 'UTC')::date);
  v_from date := coalesce(from_day, v_to - 29);
  v_spenders boolean;
begin
  perform mycelium_private.require_admin();
  if direction in ('spenders', 'earners') then
    v_spenders := direction = 'spenders';
  else
    perform mycelium_private.fail('invalid_argument', 'direction must be spenders or earners');
  end if;
  if max_rows is null or max_rows < 1 or max_rows > 1000 then
    perform mycelium_private.fail('invalid_argument', 'max_rows must be between 1 and 1000');
  end if;
  -- A range scan of transfers(created_at). A refund goes from the provider (or the platform) to
  -- the buyer: it lowers the buyer's spending and the provider's earnings.
  return query
  with moved as (
    select case
             when v_spenders and t.kind in ('transfer', 'order_hold') then t.from_user
             when v_spenders then t.to_user
             when t.kind in ('transfer', 'provider_earning') then t.to_user
             else t.from_user
           end as who,
           case when t.kind in ('transfer', 'order_hold', 'provider_earning') then t.amount else -t.amount end
             as amount
    from mycelium_private.transfers t
    where t.created_at >= (v_from::timestamp at time zone 'UTC')
      and t.created_at < ((v_to + 1)::timestamp at time zone 'UTC')
      and t.kind in ('transfer', 'order_hold', 'order_release', 'provider_earning', 'refund')
      and (v_spenders or t.kind in ('transfer', 'provider_earning', 'refund'))
  )
  select m.who, p.email, sum(m.amount), count(*)
  from moved m
  left join public.profiles p on p.id = m.who
  where m.who is not null
  group by m.who, p.email
  order by 3 desc, 1
  limit max_rows;
end;
$$;

revoke execute on function public.platform_daily_stats(date, date), public.platform_credit_summary(),
  public.top_credit_users(text, date, date, integer), public.refresh_ledger_rollups(integer)
  from public, anon;
grant execute on function public.platform_daily_stats(date, date), public.platform_credit_summary(),
  public.top_credit_users(text, date, date, integer), public.refresh_ledger_rollups(integer)
  to authenticated, service_role;
revoke execute on all functions in schema mycelium_private from public;
