-- Client feeds: every committed balance change as a NOTIFY on channel `mycelium_balance_changed`,
-- for trusted services with a database login (mycelium_client.feeds: dashboards of all balances).
-- NOTIFY is delivered at commit, in commit order, and never for a rolled-back change. The payload
-- is the account row as JSON (user_id, balance, held, updated_at): far below NOTIFY's 8000 bytes.
-- API roles cannot LISTEN through PostgREST, so nothing here reaches them.

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

revoke execute on all functions in schema mycelium_private from public;
