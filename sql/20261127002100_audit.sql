-- Audit, over the credits and the marketplace: rpc/audit_ledger reports every broken invariant of
-- the ledger and of the orders against it, checked in one snapshot. Empty when all is sound.
-- (`mycelium credits audit`, `mycelium health` and the metrics exporter run it.)

-- ---------------------------------------------------------------------------------------
-- The ledger's invariants, from per-user aggregates (a few scans, no per-transfer join), so that it
-- stays usable on millions of rows: each user's entries must match the transfers that touch the
-- user (sum and count), the last entry's balance_after must match the stored balance, and the
-- lots the stored `expiring` (the rest of the balance is the account's non-expiring lot).
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.audit_ledger()
returns table (check_name text, subject text, detail text)
language sql
stable
set search_path = ''
as $$
  with entry_sums as (
    select e.user_id, sum(e.amount) as total, count(*) as entries, max(e.id) as last_id
    from public.credit_transactions e group by e.user_id
  ), transfer_sums as (
    select s.user_id, sum(s.amount) as total, count(*) as entries
    from (
      select t.to_user as user_id, t.amount from mycelium_private.transfers t where t.to_user is not null
      union all
      select t.from_user, -t.amount from mycelium_private.transfers t where t.from_user is not null
    ) s
    group by s.user_id
  ), lot_sums as (
    select l.user_id, sum(l.remaining) as total from public.credit_lots l group by l.user_id
  ), system_balances as (
    select s.code,
      coalesce((select sum(t.amount) from mycelium_private.transfers t where t.to_system = s.code), 0)
      - coalesce((select sum(t.amount) from mycelium_private.transfers t where t.from_system = s.code), 0) as balance
    from (values ('issuance'), ('platform_revenue'), ('expiry'), ('holds')) s(code)
  ), user_total as (
    select coalesce(sum(a.balance), 0) as total, coalesce(sum(a.held), 0) as held from public.credit_accounts a
  )
  select 'sum_zero', 'ledger',
         format('user accounts (%s) and system accounts (%s) sum to %s, not 0',
                u.total, (select sum(balance) from system_balances), u.total + (select sum(balance) from system_balances))
  from user_total u
  where u.total + (select sum(balance) from system_balances) <> 0
  union all
  select 'negative_balance', a.user_id::text, format('balance %s, held %s', a.balance, a.held)
  from public.credit_accounts a where a.balance < 0 or a.held < 0
  union all
  select 'balance_equals_entries', a.user_id::text,
         format('balance = %s but entries sum to %s', a.balance, coalesce(s.total, 0))
  from public.credit_accounts a left join entry_sums s on s.user_id = a.user_id
  where a.balance <> coalesce(s.total, 0)
  union all
  select 'holds_equal_held', 'holds',
         format('the holds account has %s but users hold %s', sb.balance, u.held)
  from system_balances sb, user_total u
  where sb.code = 'holds' and sb.balance <> u.held
  union all
  select 'balance_after_of_last_entry', a.user_id::text,
         format('balance %s but the last entry recorded %s', a.balance, e.balance_after)
  from public.credit_accounts a
  join entry_sums s on s.user_id = a.user_id
  join public.credit_transactions e on e.id = s.last_id
  where a.balance <> e.balance_after
  union all
  select 'entries_without_account', s.user_id::text, format('entries sum to %s', s.total)
  from entry_sums s where not exists (select 1 from public.credit_accounts a where a.user_id = s.user_id)
  union all
  select 'entries_equal_transfers', coalesce(s.user_id, t.user_id)::text,
         format('entries: %s totalling %s; transfers: %s totalling %s',
                coalesce(s.entries, 0), coalesce(s.total, 0), coalesce(t.entries, 0), coalesce(t.total, 0))
  from entry_sums s full join transfer_sums t on t.user_id = s.user_id
  where coalesce(s.total, 0) <> coalesce(t.total, 0) or coalesce(s.entries, 0) <> coalesce(t.entries, 0)
  union all
  select 'lots_equal_expiring', a.user_id::text,
         format('expiring %s but lots hold %s', a.expiring, coalesce(l.total, 0))
  from public.credit_accounts a left join lot_sums l on l.user_id = a.user_id
  where a.expiring <> coalesce(l.total, 0)
  union all
  select 'lot_bounds', l.id::text, format('lot of %s has %s remaining', l.amount, l.remaining)
  from public.credit_lots l where l.remaining < 0 or l.remaining > l.amount
  union all
  select 'system_account_sign', sb.code, format('%s has balance %s', sb.code, sb.balance)
  from system_balances sb
  where (sb.code = 'issuance' and sb.balance > 0) or (sb.code in ('expiry', 'platform_revenue', 'holds') and sb.balance < 0)
$$;

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

-- ---------------------------------------------------------------------------------------
-- rpc/audit_ledger: admins and service_role.
-- ---------------------------------------------------------------------------------------
create or replace function public.audit_ledger()
returns table (check_name text, subject text, detail text)
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform mycelium_private.require_admin();
  -- One snapshot for both (a stable function's queries share the caller's): the ledger, then the
  -- marketplace's orders against it.
  return query select * from mycelium_private.audit_ledger();
  return query select * from mycelium_private.audit_orders();
end;
$$;

revoke execute on function public.audit_ledger() from public, anon;
grant execute on function public.audit_ledger() to authenticated, service_role;
revoke execute on all functions in schema mycelium_private from public;
