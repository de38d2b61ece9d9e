-- Client feeds: every committed balance change as a NOTIFY on channel `mycelium_balance_changed`,
-- for trusted services with a database login (mycelium_client.feeds: dashboards of all balances).
-- NOTIFY is delivered at commit, in commit order, and never for a rolled-back change. The payload
-- is the account row as JSON (user_id, balance, held, updated_at): far below NOTIFY's 8000 bytes.
-- API roles cannot LISTEN through PostgREST, so nothing here reaches them.
--
-- A transaction that sent a NOTIFY takes one database-wide lock at commit, which halves the rate
-- of concurrent transfers; and even a trigger that decides not to notify costs every transfer
-- two function calls. So the trigger is enabled only while a feed is listening: a feed registers
-- its backend with start_balance_feed() and leaves with stop_balance_feed(), the last one out
-- disables the trigger, and a feed that died without leaving is forgotten when the next one
-- starts. Enabling or disabling waits a moment for the transactions then writing balances.

create table mycelium_private.balance_feed_listeners (
  backend_pid integer primary key,
  started_at timestamptz not null default now()
);
alter table mycelium_private.balance_feed_listeners enable row level security;

-- Feeds start and stop one at a time, so that the trigger's state always follows the listeners.
create or replace function mycelium_private.start_balance_feed()
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('mycelium_private.balance_feed'));
  delete from mycelium_private.balance_feed_listeners
  where backend_pid not in (select pid from pg_catalog.pg_stat_activity);
  insert into mycelium_private.balance_feed_listeners (backend_pid) values (pg_catalog.pg_backend_pid())
  on conflict (backend_pid) do nothing;
  alter table public.credit_accounts enable trigger credit_accounts_notify_balance_feed;
end;
$$;

create or replace function mycelium_private.stop_balance_feed()
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('mycelium_private.balance_feed'));
  delete from mycelium_private.balance_feed_listeners where backend_pid = pg_catalog.pg_backend_pid();
  if not exists (select 1 from mycelium_private.balance_feed_listeners) then
    alter table public.credit_accounts disable trigger credit_accounts_notify_balance_feed;
  end if;
end;
$$;

create or replace function mycelium_private.notify_balance_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.balance is distinct from old.balance or new.held is distinct from old.held then
    perform pg_notify(
      'mycelium_balance_changed',
      json_build_object(
        'user_id', new.user_id,
        'balance', new.balance,
        'held', new.held,
        'updated_at', new.updated_at
      )::text
    );
  end if;
  return null;
end;
$$;

create trigger credit_accounts_notify_balance_feed
  after update of balance, held on public.credit_accounts
  for each row execute function mycelium_private.notify_balance_change();
alter table public.credit_accounts disable trigger credit_accounts_notify_balance_feed;

revoke execute on all functions in schema mycelium_private from public;
