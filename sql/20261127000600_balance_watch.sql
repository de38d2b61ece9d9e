-- Credits: balances, watched. Every change of a user's balance or held credits reaches
-- dashboards, with the same payload {user_id, balance, held, updated_at} on every path:
-- 1. Postgres Changes: credit_accounts is in publication supabase_realtime with replica
--    identity full; its RLS (select own) makes Realtime deliver each user only their account.
-- 2. Broadcast from the database: every balance change is sent on the private topic
--    `balance:<user_id>`, event `balance_changed`; the policy below lets only that user receive it.
-- 3. Feeds for trusted services with a database login (mycelium_client.feeds: dashboards of all
--    balances): every committed change as a NOTIFY on channel `mycelium_balance_changed`, while
--    a feed listens (below).

alter table public.credit_accounts replica identity full;
alter publication supabase_realtime add table public.credit_accounts;

-- Sends what a watcher learns of an update of an account, if the balance or the held credits
-- changed: by Realtime broadcast, or (argument 'feed') as a NOTIFY.
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
    v_change := jsonb_build_object('user_id', new.user_id, 'balance', new.balance, 'held', new.held,
                                   'updated_at', new.updated_at);
    if tg_argv[0] = 'feed' then
      perform pg_notify('mycelium_balance_changed', v_change::text);
    else
      perform realtime.send(v_change, 'balance_changed', 'balance:' || new.user_id::text, true);
    end if;
  end if;
  return null;
end;
$$;

create trigger credit_accounts_broadcast_balance
  after update of balance, held on public.credit_accounts
  for each row execute function mycelium_private.send_balance_change('broadcast');

create policy mycelium_balance_broadcast_own on realtime.messages
  for select to authenticated
  using (
    realtime.topic() = 'balance:' || (select auth.uid())::text
    and extension = 'broadcast'
  );

-- ---------------------------------------------------------------------------------------
-- Feeds. NOTIFY is delivered at commit, in commit order, and never for a rolled-back change. The
-- payload is far below NOTIFY's 8000 bytes. API roles cannot LISTEN through PostgREST, so
-- nothing here reaches them.
--
-- A transaction that sent a NOTIFY takes one database-wide lock at commit, which halves the rate
-- of concurrent transfers; and even a trigger that decides not to notify costs every transfer
-- two function calls. So the trigger is enabled only while a feed is listening: a feed registers
-- its backend with start_balance_feed() and leaves with stop_balance_feed(), the last one out
-- disables the trigger, and a feed that died without leaving is forgotten when the next one
-- starts. Enabling or disabling waits a moment for the transactions then writing balances.
-- ---------------------------------------------------------------------------------------
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

create trigger credit_accounts_notify_balance_feed
  after update of balance, held on public.credit_accounts
  for each row execute function mycelium_private.send_balance_change('feed');
alter table public.credit_accounts disable trigger credit_accounts_notify_balance_feed;

revoke execute on all functions in schema mycelium_private from public;
