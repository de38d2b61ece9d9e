-- Marketplace, part 6: provider earnings, buyer spending (views: security invoker, so orders' RLS
-- applies, and each restricted to the caller's own side; admins see all), and orders by status.
--
-- Earnings count captured orders by the UTC day (month) they were fulfilled; refunds count
-- against the order they refund. gross: what buyers paid; fee: the platform's part; refunded:
-- given back (fee_refunded of it from the fee); net: what the provider keeps,
-- gross - fee - (refunded - fee_refunded). Per product, an order's fee and refunds are shared
-- between its items in proportion to their line totals (rounded to 6 decimals: display only).
-- The ledger itself (credit_daily_activity, platform_daily_stats) counts orders too.

-- One provider's earnings (an admin: every provider's) per UTC `p_period` ('day' or 'month') of
-- fulfilment: the daily and the monthly view are this one query. SQL, stable, without a SET
-- clause: inlined into the views, so filters on them reach orders' indexes, and run as the caller
-- (orders' RLS applies).
create or replace function mycelium_private.provider_earnings(p_period text)
returns table (
  provider_id uuid, period date, orders bigint, gross numeric, fee numeric, refunded numeric,
  fee_refunded numeric, net numeric
)
language sql
stable
as $$
  select o.provider_id, date_trunc(p_period, o.fulfilled_at at time zone 'UTC')::date,
         count(*), sum(o.total), sum(o.fee_amount), sum(o.refunded_amount), sum(o.fee_refunded),
         sum(o.total - o.fee_amount - o.refunded_amount + o.fee_refunded)
  from public.orders o
  where o.fulfilled_at is not null
    and (o.provider_id = (select auth.uid()) or (select public.is_admin()))
  group by 1, 2
$$;
grant execute on function mycelium_private.provider_earnings(text) to authenticated, service_role;

create view public.provider_earnings_daily with (security_invoker = true) as
select e.provider_id, e.period as day, e.orders, e.gross, e.fee, e.refunded, e.fee_refunded, e.net
from mycelium_private.provider_earnings('day') as e;
comment on view public.provider_earnings_daily is 'Your earnings as a provider per UTC day: gross, platform fee, refunds, net.';

create view public.provider_earnings_monthly with (security_invoker = true) as
select e.provider_id, e.period as month, e.orders, e.gross, e.fee, e.refunded, e.fee_refunded, e.net
from mycelium_private.provider_earnings('month') as e;
comment on view public.provider_earnings_monthly is 'Your earnings as a provider per UTC month: gross, platform fee, refunds, net.';

-- An order's items with their share of its fee and refunds.
create view public.order_item_shares with (security_invoker = true) as
select i.order_id, i.product_id, i.product_name, i.category, i.quantity, i.line_total,
       o.buyer_id, o.provider_id, o.fulfilled_at,
       mycelium_private.divide_rounded(i.line_total * o.fee_amount, o.total, 6) as fee,
       mycelium_private.divide_rounded(i.line_total * o.refunded_amount, o.total, 6) as refunded,
       mycelium_private.divide_rounded(i.line_total * o.fee_refunded, o.total, 6) as fee_refunded
from public.order_items as i inner join public.orders as o on i.order_id = o.id
where o.fulfilled_at is not null;
comment on view public.order_item_shares is 'Items of captured orders you may see, with their share of the fee and of refunds.';

create view public.provider_earnings_by_product with (security_invoker = true) as
select s.provider_id, s.product_id, min(s.product_name) as product_name, min(s.category) as category,
       count(distinct s.order_id) as orders, sum(s.quantity) as units, sum(s.line_total) as gross,
       sum(s.fee) as fee, sum(s.refunded) as refunded, sum(s.fee_refunded) as fee_refunded,
       sum(s.line_total - s.fee - s.refunded + s.fee_refunded) as net
from public.order_item_shares as s
where s.provider_id = (select auth.uid()) or (select public.is_admin())
group by s.provider_id, s.product_id;
comment on view public.provider_earnings_by_product is 'Your earnings as a provider per product: gross, platform fee, refunds, net.';

create view public.buyer_spending_by_category with (security_invoker = true) as
select s.buyer_id, s.category, count(distinct s.order_id) as orders, sum(s.quantity) as units,
       sum(s.line_total) as paid, sum(s.refunded) as refunded, sum(s.line_total - s.refunded) as spent
from public.order_item_shares as s
where s.buyer_id = (select auth.uid()) or (select public.is_admin())
group by s.buyer_id, s.category;
comment on view public.buyer_spending_by_category is 'What you spent on captured orders per category, net of refunds.';

revoke all on public.provider_earnings_daily, public.provider_earnings_monthly, public.order_item_shares,
  public.provider_earnings_by_product, public.buyer_spending_by_category
  from anon, authenticated, service_role;
grant select on public.provider_earnings_daily, public.provider_earnings_monthly, public.order_item_shares,
  public.provider_earnings_by_product, public.buyer_spending_by_category to authenticated, service_role;
-- Aggregates and joins: PostgreSQL cannot update them itself (see refuse_view_write).
create trigger refuse_writes instead of insert or update or delete on public.provider_earnings_daily
  for each row execute function mycelium_private.refuse_view_write();
create trigger refuse_writes instead of insert or update or delete on public.provider_earnings_monthly
  for each row execute function mycelium_private.refuse_view_write();
create trigger refuse_writes instead of insert or update or delete on public.order_item_shares
  for each row execute function mycelium_private.refuse_view_write();
create trigger refuse_writes instead of insert or update or delete on public.provider_earnings_by_product
  for each row execute function mycelium_private.refuse_view_write();
create trigger refuse_writes instead of insert or update or delete on public.buyer_spending_by_category
  for each row execute function mycelium_private.refuse_view_write();

-- ---------------------------------------------------------------------------------------
-- rpc/order_status_counts: how many orders are in each status (admins and service_role).
-- ---------------------------------------------------------------------------------------
create or replace function public.order_status_counts()
returns table (status text, orders bigint)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform mycelium_private.require_admin();
  return query select o.status, count(*) from public.orders o group by o.status order by o.status;
end;
$$;

revoke execute on function public.order_status_counts() from public, anon;
grant execute on function public.order_status_counts() to authenticated, service_role;
