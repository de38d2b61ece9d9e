-- A batch's messages, sent set-based (issue 19, speed). create_transfers updates each account of a
-- batch once (sql/20261203080000_batch_transfers.sql), and the row trigger sent each change with
-- its runway: a burn-rate query an account, a third of a batch of renewals' time
-- (pg_stat_user_functions: 105 of 446 microseconds a renewal, of which 77 in burn_rate). Now
-- create_transfers sends the changes of its update itself, right after it, with the burn rates and
-- spendable balances of all of them from one query each, while the trigger stands aside for that
-- update only (the setting mycelium.batch_sends_messages, local to the transaction). The
-- subscriptions' batch does the same for the events it records (their message's subscription
-- columns from one join). The messages are the same, built by the same functions on both paths,
-- on the same topics: one an account, in user_id order, before any movement the single path then
-- makes; one an event, in the order recorded. The balance feed's NOTIFY too, while a feed listens.
-- What each of `p_users` can spend now (sql/20261127000400_ledger.sql), in one query: the balance
-- less the credits of lots past their expiry that the sweep has not taken yet.
create or replace function mycelium_private.spendables(p_users uuid[])
returns table (user_id uuid, spendable numeric)
language sql
stable
as $$
  select a.user_id,
         a.balance - case when a.expiring = 0 then 0 else coalesce((
           select sum(l.remaining) from public.credit_lots as l
           where l.user_id = a.user_id and l.live and l.expires_at <= now()), 0) end
  from public.credit_accounts as a
  where a.user_id = any(p_users)
$$;

create or replace function mycelium_private.spendable(p_user uuid)
returns numeric
language plpgsql
stable
as $$
begin
  return (select s.spendable from mycelium_private.spendables(array[p_user]) as s);
end;
$$;

-- The message of a balance change (sql/20261203020000_subscriptions_feeds.sql): the account's
-- balance and held credits, the burn rate of its running subscriptions (0 when nothing runs) and
-- the hours its spendable balance lasts at that rate (null when nothing runs).
create or replace function mycelium_private.balance_message(
  p_user uuid, p_balance numeric, p_held numeric, p_updated_at timestamptz, p_burn_rate numeric,
  p_spendable numeric)
returns jsonb
language sql
immutable
as $$
  select jsonb_build_object(
    'user_id', p_user, 'balance', p_balance, 'held', p_held, 'updated_at', p_updated_at,
    'burn_rate', coalesce(p_burn_rate, 0),
    'runway_hours', case when p_burn_rate > 0 then mycelium_private.divide_truncated(p_spendable, p_burn_rate, 2) end)
$$;

-- As before; a user with nothing running costs one probe of the running subscriptions' index.
create or replace function mycelium_private.balance_change(
  p_user uuid, p_balance numeric, p_held numeric, p_updated_at timestamptz)
returns jsonb
language plpgsql
stable
as $$
declare
  v_burn_rate numeric;
begin
  if exists (select 1 from public.subscriptions as s where s.buyer_id = p_user and s.status in ('active', 'grace')) then
    v_burn_rate := (mycelium_private.burn_rate(p_user)).cost;
  end if;
  return mycelium_private.balance_message(p_user, p_balance, p_held, p_updated_at, v_burn_rate,
    case when v_burn_rate > 0 then mycelium_private.spendable(p_user) end);
end;
$$;

-- The balance changes of `p_users`, as the accounts stand now: broadcast on each one's topic and,
-- while a feed listens, notified. For a statement that updated them with the trigger standing aside.
create or replace function mycelium_private.send_balance_changes(p_users uuid[])
returns void
language plpgsql
as $$
declare
  v_changes jsonb[];
  v_change jsonb;
begin
  v_changes := array(
    select mycelium_private.balance_message(a.user_id, a.balance, a.held, a.updated_at, r.cost, s.spendable)
    from public.credit_accounts as a
    inner join mycelium_private.spendables(p_users) as s on a.user_id = s.user_id
    left join mycelium_private.burn_rates(p_users) as r on a.user_id = r.user_id
    where a.user_id = any(p_users)
    order by a.user_id);
  foreach v_change in array v_changes loop
    perform realtime.send(v_change, 'balance_changed', 'balance:' || (v_change ->> 'user_id'), true);
  end loop;
  if exists (select 1 from mycelium_private.balance_feed_listeners) then
    perform pg_notify('mycelium_balance_changed', c::text) from unnest(v_changes) as c;
  end if;
end;
$$;

-- The row trigger (both its broadcast and its feed), standing aside while a batch sends its own.
create or replace function mycelium_private.send_balance_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_change jsonb;
begin
  if (new.balance is distinct from old.balance or new.held is distinct from old.held)
     and current_setting('mycelium.batch_sends_messages', true) is distinct from 'on' then
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

-- Subscription events broadcast to their providers (sql/20261203020000_subscriptions_feeds.sql):
-- each event's columns and its subscription's product_id, quantity and unit, in the events' order.
create or replace function mycelium_private.send_subscription_events(p_events public.subscription_events[])
returns void
language plpgsql
as $$
begin
  perform realtime.send(
    to_jsonb(e) || jsonb_build_object('product_id', s.product_id, 'quantity', s.quantity, 'unit', s.unit),
    'subscription_event', 'subscriptions:' || e.provider_id::text, true)
  from unnest(p_events) as e
  inner join public.subscriptions as s on e.subscription_id = s.id
  order by e.id;
end;
$$;

create or replace function mycelium_private.send_subscription_event()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if current_setting('mycelium.batch_sends_messages', true) is distinct from 'on' then
    perform mycelium_private.send_subscription_events(array[new]);
  end if;
  return null;
end;
$$;

-- The low-balance check (sql/20261203080000_batch_transfers.sql), the spendable balances of its
-- users from one query.
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
  select r.user_id, r.cost, b.spendable, mycelium_private.divide_truncated(b.spendable, r.cost, 2), v_hours
  from mycelium_private.burn_rates(array(
         select u.user_id from unnest(p_users) as u (user_id)
         where not exists (select 1 from public.low_balance_warnings as w
                           where w.user_id = u.user_id and w.at > now() - make_interval(hours => v_hours)))) as r
  inner join mycelium_private.spendables(p_users) as b on r.user_id = b.user_id
  where r.cost > 0 and b.spendable < r.cost * v_hours
  order by r.user_id;
end;
$$;

-- As in sql/20261203080000_batch_transfers.sql, and the accounts' update sends their changes.
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
  v_changed uuid[];
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

  -- The movements the single path makes (see the top of sql/20261203080000_batch_transfers.sql),
  -- grown until no account of theirs has movements left to the set-based path that it would see
  -- out of order.
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

  -- An entry's balance below zero breaks its domain (credit_balance): the batch's entries are
  -- computed once, and only a refused batch looks for the first movement short of credits.
  begin
    insert into public.credit_transactions
      (transfer_id, user_id, amount, kind, balance_after, counterparty_id, memo, reference, expires_at)
    select e.transfer_id, e.user_id, e.amount, e.kind, e.balance_after, e.counterparty_id, e.memo, e.reference, null
    from mycelium_private.batch_entries(p_movements, v_ids, v_single) as e
    order by e.movement_no, e.amount;
  exception when check_violation then
    select e.movement_no, e.amount, e.balance_after into v_bad
    from mycelium_private.batch_entries(p_movements, v_ids, v_single) as e
    where e.balance_after < 0
    order by e.movement_no
    limit 1;
    if found then
      perform mycelium_private.fail('insufficient_credits',
        format('insufficient credits: %s available, %s needed', v_bad.balance_after - v_bad.amount, -v_bad.amount), 409);
    end if;
    raise;
  end;

  -- Each account once: its final balance and held credits, and one message of it, the batch's
  -- final state, with the burn rates of all of them from one query.
  perform set_config('mycelium.batch_sends_messages', 'on', true);
  with changed as (
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
    where a.user_id = d.user_id
    returning a.user_id
  )
  select coalesce(array_agg(c.user_id), '{}') into v_changed from changed as c;
  perform set_config('mycelium.batch_sends_messages', 'off', true);
  perform mycelium_private.send_balance_changes(v_changed);

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

revoke execute on all functions in schema mycelium_private from public;
