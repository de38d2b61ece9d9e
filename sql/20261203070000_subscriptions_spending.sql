-- Subscriptions, part 5: buyers' spending counts subscriptions, and providers' events reach
-- them through Postgres Changes too (issue 19).
--
-- 1. buyer_spending_by_category read captured orders only: a buyer paying for running
--    subscriptions saw none of it. It now counts every charged subscription period (period,
--    arrears, usage) of the buyer, at what was charged (fee included: the fee comes out of the
--    provider's share), in the category of its product, as the provider earnings views count
--    them (20261203020000); `periods` (a new last column) says how many. `orders` and `units`
--    stay the orders' (a period has no units sold); a period is never refunded (a stop charges
--    only the started hours).
-- 2. subscription_events is published for Postgres Changes: a provider's service follows its
--    events (client.subscriptions.follow) on the private topic `subscriptions:<provider_id>`, and
--    through Postgres Changes on a project whose policy refuses that topic, as the balance watch
--    does; RLS delivers each provider the rows of their subscriptions. Either way a frame only
--    tells the follower to read /subscription_events now.

-- 1. The charged periods of the caller's subscriptions (an admin or the service: everyone's), each
-- with its product's category. Security definer for that category alone: a product taken off
-- sale is hidden from its buyers by the products' RLS, yet what was paid for it stays spent.
-- Filtered here, like account_runway: it shows nothing of anyone else to its caller.
create or replace function mycelium_private.buyer_charged_periods()
returns table (buyer_id uuid, category text, period_id uuid, charged_amount numeric)
language sql
stable
security definer
set search_path = ''
as $$
  select s.buyer_id, p.category, c.id, c.charged_amount
  from public.subscriptions as s
  inner join public.subscription_periods as c on s.id = c.subscription_id
  inner join public.products as p on s.product_id = p.id
  where c.status = 'charged' and (s.buyer_id = (select auth.uid()) or (select public.is_admin()))
$$;
revoke execute on function mycelium_private.buyer_charged_periods() from public, anon;
grant execute on function mycelium_private.buyer_charged_periods() to authenticated, service_role;

-- As before for orders, and charged periods; `periods` last (create or replace appends only).
create or replace view public.buyer_spending_by_category with (security_invoker = true) as
select
  e.buyer_id, e.category, count(distinct e.order_id) as orders, sum(e.units) as units, sum(e.paid) as paid,
  sum(e.refunded) as refunded, sum(e.paid - e.refunded) as spent, count(e.period_id) as periods
from (
  select
    s.buyer_id, s.category, s.order_id, null::uuid as period_id, s.quantity as units, s.line_total as paid,
    s.refunded
  from public.order_item_shares as s
  where s.buyer_id = (select auth.uid()) or (select public.is_admin())
  union all
  select
    c.buyer_id, c.category, null::uuid as order_id, c.period_id, 0 as units, c.charged_amount,
    0 as refunded
  from mycelium_private.buyer_charged_periods() as c
) as e
group by e.buyer_id, e.category;
comment on view public.buyer_spending_by_category is
  'What you spent per category: captured orders net of refunds, and charged subscription periods.';

-- 2. The provider's events through Postgres Changes (INSERTs only: no replica identity needed).
alter publication supabase_realtime add table public.subscription_events;
