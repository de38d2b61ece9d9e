-- Credits, part 9: keyset pagination of your history that stays fast at any depth.
-- rpc/credit_history(before_created_at, before_id, page_size): your movements, newest first,
-- strictly before the (created_at, id) cursor of the last row of the previous page. The cursor
-- is an index condition on credit_transactions (user_id, created_at, id), so page 2,000 costs
-- what page 1 costs.
-- Security definer with an explicit `user_id = auth.uid()`: behind RLS's security barrier the
-- generic plan of a parameterised cursor would not use the index. It returns only the caller's
-- rows, as RLS would. (With plain PostgREST filters on /credit_transactions, add
-- `created_at=lte.<cursor>` next to `or=(created_at.lt.…,and(created_at.eq.…,id.lt.…))`.)

create or replace function public.credit_history(
  before_created_at timestamptz default null,
  before_id bigint default null,
  page_size integer default 50
)
returns setof public.credit_transactions
language sql
stable
security definer
set search_path = ''
as $$
  select t.*
  from public.credit_transactions t
  where t.user_id = (select auth.uid())
    and (t.created_at, t.id) < (coalesce(before_created_at, 'infinity'::timestamptz),
                                coalesce(before_id, 9223372036854775807))
  order by t.created_at desc, t.id desc
  limit least(greatest(coalesce(page_size, 50), 1), 1000)
$$;
comment on function public.credit_history(timestamptz, bigint, integer) is
  'Your credit movements, newest first, keyset-paginated by (created_at, id).';

revoke execute on function public.credit_history(timestamptz, bigint, integer) from public, anon;
grant execute on function public.credit_history(timestamptz, bigint, integer) to authenticated, service_role;
