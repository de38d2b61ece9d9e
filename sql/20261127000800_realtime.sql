-- Credits, part 8: dashboards watch balances through Supabase Realtime.
-- 1. Postgres Changes: credit_accounts is in publication supabase_realtime with replica
--    identity full; its RLS (select own) makes Realtime deliver each user only their account.
-- 2. Broadcast from the database: every balance change is sent on the private topic
--    `balance:<user_id>`, event `balance_changed`; the policy below lets only that user receive it.

alter table public.credit_accounts replica identity full;
alter publication supabase_realtime add table public.credit_accounts;

create or replace function mycelium_private.broadcast_balance_change()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.balance is distinct from old.balance or new.held is distinct from old.held then
    perform realtime.send(
      jsonb_build_object(
        'user_id', new.user_id,
        'balance', new.balance,
        'held', new.held,
        'updated_at', new.updated_at
      ),
      'balance_changed',
      'balance:' || new.user_id::text,
      true
    );
  end if;
  return null;
end;
$$;

create trigger credit_accounts_broadcast_balance
  after update of balance, held on public.credit_accounts
  for each row execute function mycelium_private.broadcast_balance_change();

create policy mycelium_balance_broadcast_own on realtime.messages
  for select to authenticated
  using (
    realtime.topic() = 'balance:' || (select auth.uid())::text
    and extension = 'broadcast'
  );

revoke execute on all functions in schema mycelium_private from public;
