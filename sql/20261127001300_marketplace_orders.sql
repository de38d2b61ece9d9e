-- Marketplace, part 4: orders paid in TFC with holds (two-phase payments, like TigerBeetle's
-- pending transfers or Stripe's authorise/capture).
--
-- rpc/place_order holds the order's total: a transfer `order_hold` from the buyer to the system
-- account `holds` (see the ledger). The buyer's balance goes down, their `held` up; credits come
-- out of expiring lots first, and the hold remembers which expiry they had (the ledger's hold_lots).
-- Then (marketplace_fulfilment) the hold is captured (fulfil_order) or released in full (cancel_order,
-- fail_order, release_expired_holds), and a fulfilled order may be refunded.
--
-- Decisions:
-- - One provider per order: every item of an order belongs to the same provider (else
--   `mixed_providers`), so fulfilment, failure and refunds are per order, and the provider sees
--   whole orders, never another provider's items. A front end splits a basket by provider.
-- - Prices come from the products at placement (never from the client) and are snapshotted on
--   the items, as is the platform fee on the order: later changes touch new orders only.
-- - Status: pending -> fulfilled | cancelled | failed; fulfilled -> partially_refunded | refunded;
--   partially_refunded -> partially_refunded | refunded. Anything else is `invalid_transition`
--   (409): a second fulfil, cancel or refund of the whole order moves nothing. An expired hold is
--   `cancelled` with the reason `hold expired`. Every change is in order_status_history.
-- - Capacity: units of pending, fulfilled and partially refunded orders count against a product's
--   capacity, kept in products.units_in_use under the product's row lock.
-- - Lock order everywhere: the order row, then products in id order, then accounts in user_id
--   order. Products with a capacity are locked FOR NO KEY UPDATE (orders for them serialise, so
--   they never oversell); the others FOR SHARE (orders run in parallel; a price change waits for
--   orders in flight, so an order pays the price committed when it locked the product).
-- - Every transfer of an order carries the order id as its reference.

create table public.orders (
  id uuid primary key default gen_random_uuid(),
  buyer_id uuid not null,
  provider_id uuid not null,
  status text not null default 'pending'
    check (status in ('pending', 'fulfilled', 'cancelled', 'failed', 'partially_refunded', 'refunded')),
  total numeric not null check (total > 0 and total < 1e15),
  -- What the buyer has in `holds` for this order: the total while pending, then 0.
  held_amount numeric not null check (held_amount >= 0 and held_amount <= total),
  fee_percent numeric not null check (fee_percent >= 0 and fee_percent <= 100),
  -- Set at capture: the platform's part of the total; the provider received the rest.
  fee_amount numeric check (fee_amount >= 0 and fee_amount <= total),
  refunded_amount numeric not null default 0 check (refunded_amount >= 0 and refunded_amount <= total),
  fee_refunded numeric not null default 0 check (fee_refunded >= 0),
  idempotency_key text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  fulfilled_at timestamptz,
  check (buyer_id <> provider_id),
  check (fee_refunded <= coalesce(fee_amount, 0))
);
comment on table public.orders is
  'Orders paid in TFC: buyers see theirs, providers the orders for their products, admins all. Written only by the order functions.';

create unique index orders_idempotency_key on public.orders (buyer_id, idempotency_key)
  where idempotency_key is not null;
create index orders_buyer_idx on public.orders (buyer_id, created_at);
create index orders_provider_idx on public.orders (provider_id, created_at);
create index orders_pending_idx on public.orders (created_at) where status = 'pending';

create table public.order_items (
  id bigint generated always as identity primary key,
  order_id uuid not null references public.orders (id),
  product_id uuid not null references public.products (id),
  quantity integer not null check (quantity > 0),
  -- Snapshots of the product when the order was placed.
  product_name text not null,
  category text not null,
  unit text not null,
  unit_price numeric not null check (unit_price > 0),
  line_total numeric not null check (line_total > 0),
  check (line_total = unit_price * quantity)
);
comment on table public.order_items is 'What an order bought, at the price of the moment it was placed.';
create index order_items_order_idx on public.order_items (order_id);
create index order_items_product_idx on public.order_items (product_id);

create table public.order_status_history (
  id bigint generated always as identity primary key,
  order_id uuid not null references public.orders (id),
  from_status text,
  to_status text not null,
  changed_by uuid,
  changed_role text not null,
  reason text,
  at timestamptz not null default now()
);
comment on table public.order_status_history is 'Every status change of every order: from, to, who, when, why. Append-only.';
create index order_status_history_order_idx on public.order_status_history (order_id, id);

create table public.order_refunds (
  id uuid primary key default gen_random_uuid(),
  order_id uuid not null references public.orders (id),
  amount numeric not null check (amount > 0),
  -- The parts taken back from the provider and from the platform's fee; they sum to amount.
  provider_part numeric not null check (provider_part >= 0),
  platform_part numeric not null check (platform_part >= 0),
  reason text not null,
  idempotency_key text,
  refunded_by uuid,
  refunded_role text not null,
  created_at timestamptz not null default now(),
  check (provider_part + platform_part = amount)
);
comment on table public.order_refunds is 'Refunds of fulfilled orders, full or partial. Append-only.';
create index order_refunds_order_idx on public.order_refunds (order_id);
create unique index order_refunds_idempotency_key on public.order_refunds (order_id, idempotency_key)
  where idempotency_key is not null;

create trigger order_status_history_append_only
  before update or delete or truncate on public.order_status_history
  for each statement execute function mycelium_private.refuse_change();
create trigger order_refunds_append_only
  before update or delete or truncate on public.order_refunds
  for each statement execute function mycelium_private.refuse_change();

-- Read surface. Providers see the orders for their products (one provider per order) with their
-- items, history and refunds; buyers their own; admins all. Nobody writes through the API.
alter table public.orders enable row level security;
alter table public.order_items enable row level security;
alter table public.order_status_history enable row level security;
alter table public.order_refunds enable row level security;
revoke all on public.orders, public.order_items, public.order_status_history, public.order_refunds
  from anon, authenticated, service_role;
revoke all on sequence public.order_items_id_seq, public.order_status_history_id_seq
  from anon, authenticated, service_role;
grant select on public.orders, public.order_items, public.order_status_history, public.order_refunds
  to authenticated, service_role;

create policy orders_buyer_provider_or_admin on public.orders
  for select to authenticated
  using (buyer_id = (select auth.uid()) or provider_id = (select auth.uid()) or (select public.is_admin()));
-- The subqueries see orders through the policy above.
create policy order_items_of_visible_orders on public.order_items
  for select to authenticated
  using (exists (
    select 1 from public.orders as o
    where o.id = order_items.order_id
  ));
create policy order_status_history_of_visible_orders on public.order_status_history
  for select to authenticated
  using (exists (
    select 1 from public.orders as o
    where o.id = order_status_history.order_id
  ));
create policy order_refunds_of_visible_orders on public.order_refunds
  for select to authenticated
  using (exists (
    select 1 from public.orders as o
    where o.id = order_refunds.order_id
  ));

-- A capacity set on a product that had none: units_in_use counts the units of its open orders,
-- under the row lock of this UPDATE, which waits for orders in flight (they hold the row FOR
-- SHARE). After products_check (triggers of an event fire in name order), which has refused a
-- change that may not be made.
create or replace function mycelium_private.count_units_in_use()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  new.units_in_use := coalesce((
    select sum(i.quantity) from public.order_items i join public.orders o on o.id = i.order_id
    where i.product_id = new.id and o.status in ('pending', 'fulfilled', 'partially_refunded')), 0);
  return new;
end;
$$;

create trigger products_count_units_in_use
  before update of capacity on public.products
  for each row when (new.capacity is not null and old.capacity is null)
  execute function mycelium_private.count_units_in_use();

-- ---------------------------------------------------------------------------------------
-- Helpers shared by the order functions
-- ---------------------------------------------------------------------------------------

-- What every order function returns: the order with its items. (plpgsql: its plan is cached.)
create or replace function mycelium_private.order_object(p_order uuid)
returns jsonb
language plpgsql
stable
as $$
begin
  return (select to_jsonb(o) || jsonb_build_object('items', (
    select coalesce(jsonb_agg(jsonb_build_object(
             'product_id', i.product_id, 'product_name', i.product_name, 'category', i.category,
             'unit', i.unit, 'quantity', i.quantity, 'unit_price', i.unit_price, 'line_total', i.line_total)
           order by i.id), '[]'::jsonb)
    from public.order_items i where i.order_id = o.id))
  from public.orders o where o.id = p_order);
end;
$$;

create or replace function mycelium_private.record_order_status(
  p_order uuid, p_from text, p_to text, p_reason text default null)
returns void
language plpgsql
as $$
begin
  insert into public.order_status_history (order_id, from_status, to_status, changed_by, changed_role, reason)
  values (p_order, p_from, p_to, auth.uid(), mycelium_private.caller_role(), p_reason);
end;
$$;

-- Lock an order for a change, after checking that the caller may see it at all: someone who is
-- neither its buyer, its provider, an admin nor the service gets order_not_found (404), as if it
-- did not exist. What they may do with it is for the caller to decide.
create or replace function mycelium_private.lock_order(p_order uuid)
returns public.orders
language plpgsql
as $$
declare
  v_order public.orders;
begin
  if p_order is null then
    perform mycelium_private.fail('invalid_argument', 'order_id is required');
  end if;
  select * into v_order from public.orders o where o.id = p_order for no key update;
  if not found or not (v_order.buyer_id = auth.uid() or v_order.provider_id = auth.uid()
                       or mycelium_private.is_admin_or_service()) then
    perform mycelium_private.fail('order_not_found', 'no order ' || p_order, 404);
  end if;
  return v_order;
end;
$$;

create or replace function mycelium_private.refuse_transition(p_order public.orders, p_to text)
returns void
language plpgsql
as $$
begin
  perform mycelium_private.fail('invalid_transition',
    format('order %s is %s: it cannot become %s', p_order.id, p_order.status, p_to), 409);
end;
$$;

-- Before a pending order's hold is captured or released as `p_to`: true when the order is `p_to`
-- already (a retry after a lost response: the caller returns the order and moves nothing), false
-- when it is pending; from any other status, invalid_transition.
create or replace function mycelium_private.is_retry(p_order public.orders, p_to text)
returns boolean
language plpgsql
as $$
begin
  if p_order.status = p_to then
    return true;
  elsif p_order.status <> 'pending' then
    perform mycelium_private.refuse_transition(p_order, p_to);
  end if;
  return false;
end;
$$;

-- Lock the capacity-limited products of an order (id order) and give back or take its units.
create or replace function mycelium_private.change_units_in_use(p_order uuid, p_sign integer)
returns void
language plpgsql
as $$
begin
  perform 1 from public.products p
  where p.capacity is not null and p.id in (select i.product_id from public.order_items i where i.order_id = p_order)
  order by p.id
  for no key update;
  update public.products p set units_in_use = greatest(p.units_in_use + p_sign * u.units, 0)
  from (select i.product_id, sum(i.quantity) as units from public.order_items i
        where i.order_id = p_order group by i.product_id) u
  where p.id = u.product_id and p.capacity is not null;
end;
$$;

-- ---------------------------------------------------------------------------------------
-- rpc/place_order(items, idempotency_key): items are [{"product_id": ..., "quantity": n}].
-- The same idempotency_key by the same buyer returns the same order (and moves nothing); with
-- other items it is duplicate_reference (409).
-- ---------------------------------------------------------------------------------------

-- The items as (product_id, quantity) pairs, one per product, sorted: validated, never trusted.
create or replace function mycelium_private.parse_order_items(p_items jsonb)
returns table (product_id uuid, quantity integer)
language plpgsql
immutable
as $$
declare
  v_item jsonb;
  v_quantity jsonb;
begin
  if p_items is null or jsonb_typeof(p_items) <> 'array' or jsonb_array_length(p_items) = 0 then
    perform mycelium_private.fail('invalid_argument', 'items must be a non-empty array of {product_id, quantity}');
  elsif jsonb_array_length(p_items) > 100 then
    perform mycelium_private.fail('invalid_argument', 'an order has at most 100 items');
  end if;
  for v_item in select e from jsonb_array_elements(p_items) e loop
    if jsonb_typeof(v_item) <> 'object' or jsonb_typeof(v_item -> 'product_id') is distinct from 'string'
       or (v_item ->> 'product_id') !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' then
      perform mycelium_private.fail('invalid_argument', 'every item needs a product_id (a uuid)');
    end if;
    v_quantity := v_item -> 'quantity';
    if jsonb_typeof(v_quantity) is distinct from 'number' or v_quantity::numeric <> trunc(v_quantity::numeric)
       or v_quantity::numeric < 1 or v_quantity::numeric > 10000 then
      perform mycelium_private.fail('invalid_quantity', 'quantity must be a whole number from 1 to 10000');
    end if;
  end loop;
  return query
    select (e ->> 'product_id')::uuid, sum((e ->> 'quantity')::numeric)::integer
    from jsonb_array_elements(p_items) e
    group by 1 order by 1;
end;
$$;

-- A retry with the same key: the same order back, if it asked for the same items (an order has
-- one item per product, as parse_order_items merges them).
create or replace function mycelium_private.order_replay(
  p_order public.orders, p_product_ids uuid[], p_quantities integer[])
returns jsonb
language plpgsql
stable
as $$
declare
  v_product_ids uuid[];
  v_quantities integer[];
begin
  select array_agg(i.product_id order by i.product_id), array_agg(i.quantity order by i.product_id)
  into v_product_ids, v_quantities
  from public.order_items i where i.order_id = p_order.id;
  if v_product_ids is distinct from p_product_ids or v_quantities is distinct from p_quantities then
    perform mycelium_private.fail('duplicate_reference',
      'idempotency_key was already used for a different order', 409);
  end if;
  return mycelium_private.order_object(p_order.id);
end;
$$;

create or replace function public.place_order(items jsonb, idempotency_key text default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
#variable_conflict use_column
declare
  v_buyer uuid := mycelium_private.require_signed_in('place an order');
  v_key text;
  v_ids uuid[];
  v_quantities integer[];
  v_existing public.orders;
  v_found integer;
  v_limited integer := 0;
  v_product record;
  v_provider uuid;
  v_total numeric := 0;
  v_fee_percent numeric;
  v_order uuid;
begin
  v_key := mycelium_private.check_text(place_order.idempotency_key, 'idempotency_key', 200);
  select array_agg(p.product_id), array_agg(p.quantity) into v_ids, v_quantities
  from mycelium_private.parse_order_items(place_order.items) p;

  if v_key is not null then
    select * into v_existing from public.orders o where o.buyer_id = v_buyer and o.idempotency_key = v_key;
    if found then
      return mycelium_private.order_replay(v_existing, v_ids, v_quantities);
    end if;
  end if;

  -- Lock the products (see the lock order above): those with a capacity first, then all of them
  -- FOR SHARE as they are read (a no-op on the rows this transaction holds already).
  perform 1 from public.products p where p.id = any(v_ids) and p.capacity is not null order by p.id for no key update;
  v_found := 0;
  for v_product in
    select p.*, q.quantity from public.products p
    join unnest(v_ids, v_quantities) q(product_id, quantity) on q.product_id = p.id
    order by p.id
    for share of p
  loop
    v_found := v_found + 1;
    if not v_product.active then
      perform mycelium_private.fail('product_inactive', format('product %s (%s) is not on sale', v_product.id, v_product.name), 409);
    end if;
    if v_provider is null then
      v_provider := v_product.provider_id;
    elsif v_provider <> v_product.provider_id then
      perform mycelium_private.fail('mixed_providers',
        'all items of an order must come from one provider: place one order per provider');
    end if;
    if v_product.capacity is not null and v_product.units_in_use + v_product.quantity > v_product.capacity then
      perform mycelium_private.fail('capacity_exceeded',
        format('product %s (%s) has %s of %s units left, %s asked', v_product.id, v_product.name,
               greatest(v_product.capacity - v_product.units_in_use, 0), v_product.capacity, v_product.quantity), 409);
    end if;
    v_limited := v_limited + (v_product.capacity is not null)::integer;
    v_total := v_total + v_product.price * v_product.quantity;
  end loop;
  if v_found < cardinality(v_ids) then
    perform mycelium_private.fail('product_not_found', 'no product '
      || (select x::text from unnest(v_ids) x where not exists (select 1 from public.products p where p.id = x) limit 1), 404);
  end if;
  if v_provider = v_buyer then
    perform mycelium_private.fail('own_product', 'providers cannot buy their own products');
  end if;
  if v_total >= 1e15 then
    perform mycelium_private.fail('invalid_amount', 'the order total must be below 1000000000000000');
  end if;

  -- Claim the idempotency key: a concurrent retry waits on the unique index, then replays.
  select c.platform_fee_percent into v_fee_percent from public.marketplace_config c where c.id;
  insert into public.orders (buyer_id, provider_id, total, held_amount, fee_percent, idempotency_key)
  values (v_buyer, v_provider, v_total, v_total, v_fee_percent, v_key)
  on conflict (buyer_id, idempotency_key) where idempotency_key is not null do nothing
  returning id into v_order;
  if v_order is null then
    select * into v_existing from public.orders o where o.buyer_id = v_buyer and o.idempotency_key = v_key;
    return mycelium_private.order_replay(v_existing, v_ids, v_quantities);
  end if;

  insert into public.order_items (order_id, product_id, quantity, product_name, category, unit, unit_price, line_total)
  select v_order, p.id, q.quantity, p.name, p.category, p.unit, p.price, p.price * q.quantity
  from unnest(v_ids, v_quantities) q(product_id, quantity) join public.products p on p.id = q.product_id
  order by p.id;
  -- Guarded again in the UPDATE: a capacity set on a product between its lock and its read
  -- (the provider's change committed in between) must not oversell either.
  if v_limited > 0 then
    update public.products p set units_in_use = p.units_in_use + q.quantity
    from unnest(v_ids, v_quantities) q(product_id, quantity)
    where p.id = q.product_id and p.capacity is not null and p.units_in_use + q.quantity <= p.capacity;
    get diagnostics v_found = row_count;
    if v_found <> v_limited then
      perform mycelium_private.fail('capacity_exceeded', 'a product''s capacity changed while ordering: try again', 409);
    end if;
  end if;

  -- The hold: the buyer's balance down and held up (the account lock), credits taken from
  -- expiring lots first and remembered per expiry, the rest from the non-expiring credits.
  perform mycelium_private.create_transfer('order_hold', v_total, p_from_user => v_buyer, p_to_system => 'holds',
    p_reference => v_order::text, p_counterparty => v_provider, p_holder => v_buyer);

  perform mycelium_private.record_order_status(v_order, null, 'pending');
  return mycelium_private.order_object(v_order);
end;
$$;

revoke execute on function public.place_order(jsonb, text) from public, anon, service_role;
grant execute on function public.place_order(jsonb, text) to authenticated;
revoke execute on all functions in schema mycelium_private from public;
