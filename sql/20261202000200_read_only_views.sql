-- Read-only views refuse writes as a refusal, not as a server error.
--
-- PostgreSQL rejects a write into a view it cannot update itself (one with GROUP BY, DISTINCT,
-- joins...) while rewriting the statement, before it checks privileges: PostgREST then answers
-- a POST, PATCH or DELETE from anyone, anon included, with a 500 ("cannot insert into view").
-- An INSTEAD OF trigger makes the view writable in principle, so the privilege check comes
-- first and answers 401/403 like every other refusal; the trigger itself runs only for a role
-- that holds a write privilege, which no API role does (sql/privileges.manifest).

create or replace function mycelium_private.refuse_view_write()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform mycelium_private.fail('read_only', tg_table_name || ' is read-only', 405);
  return null;
end;
$$;

do $views$
declare
  view_name text;
begin
  foreach view_name in array array[
    'credit_daily_activity', 'credit_monthly_activity', 'provider_earnings_daily',
    'provider_earnings_monthly', 'provider_earnings_by_product', 'order_item_shares',
    'buyer_spending_by_category'
  ] loop
    execute format(
      'create trigger refuse_writes instead of insert or update or delete on public.%I '
      'for each row execute function mycelium_private.refuse_view_write()',
      view_name
    );
  end loop;
end
$views$;
