-- Marketplace, part 6: provider earnings, buyer spending (views: security invoker, so orders' RLS
-- applies, and each restricted to the caller's own side; admins see all), and the orders' part of
-- rpc/audit_ledger.
--
-- Earnings count captured orders by the UTC day (month) they were fulfilled; refunds count
-- against the order they refund. gross: what buyers paid; fee: the platform's part; refunded:
-- given back (fee_refunded of it from the fee); net: what the provider keeps,
-- gross - fee - (refunded - fee_refunded). Per product, an order's fee and refunds are shared
-- between its items in proportion to their line totals (rounded to 6 decimals: display only).
-- The ledger itself (credit_daily_activity, platform_daily_stats) counts orders too.

create view public.provider_earnings_daily with (security_invoker = true) as
select o.provider_id, (o.fulfilled_at at time zone 'UTC')::date as day,
       count(*) as orders, sum(o.total) as gross, sum(o.fee_amount) as fee,
       sum(o.refunded_amount) as refunded, sum(o.fee_refunded) as fee_refunded,
       sum(o.total - o.fee_amount - o.refunded_amount + o.fee_refunded) as net
from public.orders o
where o.fulfilled_at is not null
  and (o.provider_id = (select auth.uid()) or (select public.is_admin()))
group by o.provider_id, (o.fulfilled_at at time zone 'UTC')::date;
comment on view public.provider_earnings_daily is 'Your earnings as a provider per UTC day: gross, platform fee, refunds, net.';

create view public.provider_earnings_monthly with (security_invoker = true) as
select o.provider_id, date_trunc('month', o.fulfilled_at at time zone 'UTC')::date as month,
       count(*) as orders, sum(o.total) as gross, sum(o.fee_amount) as fee,
       sum(o.refunded_amount) as refunded, sum(o.fee_refunded) as fee_refunded,
       sum(o.total - o.fee_amount - o.refunded_amount + o.fee_refunded) as net
from public.orders o
where o.fulfilled_at is not null
  and (o.provider_id = (select auth.uid()) or (select public.is_admin()))
group by o.provider_id, date_trunc('month', o.fulfilled_at at time zone 'UTC')::date;
comment on view public.provider_earnings_monthly is 'Your earnings as a provider per UTC month: gross, platform fee, refunds, net.';

-- An order's items with their share of its fee and refunds.
create view public.order_item_shares with (security_invoker = true) as
select i.order_id, i.product_id, i.product_name, i.category, i.quantity, i.line_total,
       o.buyer_id, o.provider_id, o.fulfilled_at,
       mycelium_private.divide_rounded(i.line_total * o.fee_amount, o.total, 6) as fee,
       mycelium_private.divide_rounded(i.line_total * o.refunded_amount, o.total, 6) as refunded,
       mycelium_private.divide_rounded(i.line_total * o.fee_refunded, o.total, 6) as fee_refunded
from public.order_items i join public.orders o on o.id = i.order_id
where o.fulfilled_at is not null;
comment on view public.order_item_shares is 'Items of captured orders you may see, with their share of the fee and of refunds.';

create view public.provider_earnings_by_product with (security_invoker = true) as
select s.provider_id, s.product_id, min(s.product_name) as product_name, min(s.category) as category,
       count(distinct s.order_id) as orders, sum(s.quantity) as units, sum(s.line_total) as gross,
       sum(s.fee) as fee, sum(s.refunded) as refunded, sum(s.fee_refunded) as fee_refunded,
       sum(s.line_total - s.fee - s.refunded + s.fee_refunded) as net
from public.order_item_shares s
where s.provider_id = (select auth.uid()) or (select public.is_admin())
group by s.provider_id, s.product_id;
comment on view public.provider_earnings_by_product is 'Your earnings as a provider per product: gross, platform fee, refunds, net.';

create view public.buyer_spending_by_category with (security_invoker = true) as
select s.buyer_id, s.category, count(distinct s.order_id) as orders, sum(s.quantity) as units,
       sum(s.line_total) as paid, sum(s.refunded) as refunded, sum(s.line_total - s.refunded) as spent
from public.order_item_shares s
where s.buyer_id = (select auth.uid()) or (select public.is_admin())
group by s.buyer_id, s.category;
comment on view public.buyer_spending_by_category is 'What you spent on captured orders per category, net of refunds.';

revoke all on public.provider_earnings_daily, public.provider_earnings_monthly, public.order_item_shares,
  public.provider_earnings_by_product, public.buyer_spending_by_category from anon, authenticated, service_role;
grant select on public.provider_earnings_daily, public.provider_earnings_monthly, public.order_item_shares,
  public.provider_earnings_by_product, public.buyer_spending_by_category to authenticated, service_role;

-- ---------------------------------------------------------------------------------------
-- The orders' invariants, reported by rpc/audit_ledger next to the ledger's: every hold is in
-- an open order, every order's transfers match its status and amounts, capacities are counted.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.audit_orders()
returns table (check_name text, subject text, detail text)
language sql
stable
set search_path = ''
as $$
  with open_holds as (
    select o.buyer_id, sum(o.held_amount) as held from public.orders o where o.held_amount > 0 group by o.buyer_id
  ), moved as (
    select t.reference,
           coalesce(sum(t.amount) filter (where t.kind = 'order_hold'), 0) as hold,
           coalesce(sum(t.amount) filter (where t.kind = 'order_release'), 0) as released,
           coalesce(sum(t.amount) filter (where t.kind = 'provider_earning'), 0) as earned,
           coalesce(sum(t.amount) filter (where t.kind = 'platform_fee'), 0) as fee,
           coalesce(sum(t.amount) filter (where t.kind = 'refund'), 0) as refunded,
           coalesce(sum(t.amount) filter (where t.kind = 'refund' and t.from_system = 'platform_revenue'), 0) as fee_refunded
    from mycelium_private.transfers t
    where t.kind in ('order_hold', 'order_release', 'provider_earning', 'platform_fee', 'refund')
    group by t.reference
  ), item_sums as (
    select i.order_id, sum(i.line_total) as total from public.order_items i group by i.order_id
  ), units as (
    select i.product_id, sum(i.quantity) as units
    from public.order_items i join public.orders o on o.id = i.order_id
    where o.status in ('pending', 'fulfilled', 'partially_refunded')
    group by i.product_id
  )
  select 'held_equals_open_orders', a.user_id::text,
         format('held %s but open orders hold %s', a.held, coalesce(h.held, 0))
  from public.credit_accounts a full join open_holds h on h.buyer_id = a.user_id
  where coalesce(a.held, 0) <> coalesce(h.held, 0)
  union all
  select 'order_held_amount', o.id::text, format('%s order holds %s of %s', o.status, o.held_amount, o.total)
  from public.orders o
  where o.held_amount <> case when o.status = 'pending' then o.total else 0 end
  union all
  select 'order_total_equals_items', o.id::text, format('total %s, items %s', o.total, coalesce(s.total, 0))
  from public.orders o left join item_sums s on s.order_id = o.id
  where o.total <> coalesce(s.total, 0)
  union all
  select 'order_transfers', o.id::text,
         format('%s order of %s (fee %s, refunded %s): held %s, released %s, earned %s, fee %s, refunded %s (%s from the fee)',
                o.status, o.total, o.fee_amount, o.refunded_amount, coalesce(m.hold, 0), coalesce(m.released, 0),
                coalesce(m.earned, 0), coalesce(m.fee, 0), coalesce(m.refunded, 0), coalesce(m.fee_refunded, 0))
  from public.orders o left join moved m on m.reference = o.id::text
  where coalesce(m.hold, 0) <> o.total
     or coalesce(m.refunded, 0) <> o.refunded_amount
     or coalesce(m.fee_refunded, 0) <> o.fee_refunded
     or case
          when o.status = 'pending' then coalesce(m.released + m.earned + m.fee, 0) <> 0
          when o.status in ('cancelled', 'failed') then coalesce(m.released, 0) <> o.total or coalesce(m.earned + m.fee, 0) <> 0
          else coalesce(m.released, 0) <> 0 or coalesce(m.earned + m.fee, 0) <> o.total or coalesce(m.fee, 0) <> o.fee_amount
        end
  union all
  select 'order_transfers_without_order', m.reference, format('held %s', m.hold)
  from moved m where not exists (select 1 from public.orders o where o.id::text = m.reference)
  union all
  select 'units_in_use', p.id::text, format('units_in_use %s but open orders have %s', p.units_in_use, coalesce(u.units, 0))
  from public.products p left join units u on u.product_id = p.id
  where p.units_in_use <> case when p.capacity is null then 0 else coalesce(u.units, 0) end
$$;

revoke execute on all functions in schema mycelium_private from public;

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
