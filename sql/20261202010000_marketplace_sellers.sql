-- Marketplace sellers: who may go on selling, who takes a product off sale, and how much of the
-- marketplace one buyer may hold with pending orders.
--
-- 1. A provider sells only while holding the role of the product's category (catalogue:
--    role_for_category). Revoking a role takes every product it covered off sale (a trigger on
--    user_roles); place_order refuses a product whose provider lacks the role with
--    `provider_not_selling` (409), before it looks at `active`, so the buyer learns why; and
--    fulfil_order refuses, with the same reason, to capture an order whose provider lacks the role
--    for any of its items. Such pending orders are not captured, and nothing is moved for them
--    automatically: the buyer cancels (cancel_order), the provider or the service fails them
--    (fail_order), or release_expired_holds releases them after hold_ttl; each gives the hold back
--    in full. Fulfilled orders stay refundable as before. A role granted again leaves the products
--    off sale: the provider puts back on sale what they want to sell.
-- 2. Admins and the service take a product off sale (moderation) with rpc/set_product_active; each
--    call is recorded in product_moderation (who, why, when), readable by admins and the product's
--    provider. A product taken down stays off sale until an admin or the service lifts the
--    take-down with the same function: its provider cannot put it back on sale.
-- 3. product_inactive names the product by id only: an inactive product is hidden, its name too.
-- 4. Holds cost a buyer nothing once given back, so without bounds one buyer could hold a
--    product's whole capacity (or many orders) for hold_ttl and cancel. marketplace_config bounds
--    it: max_pending_orders per buyer (`too_many_pending_orders`), and, for a product with a
--    capacity, max_pending_capacity_percent of that capacity (rounded up, at least one unit) in a
--    buyer's pending orders (`too_many_pending_units`). Both 409: the buyer waits for fulfilment or
--    cancels; fulfilled units do not count, so a buyer may still end up with the whole capacity.

-- ---------------------------------------------------------------------------------------
-- 4. The bounds: two settings of the marketplace configuration.
-- ---------------------------------------------------------------------------------------
alter table public.marketplace_config
  add column max_pending_orders integer not null default 20
    check (max_pending_orders >= 1 and max_pending_orders <= 10000),
  add column max_pending_capacity_percent numeric not null default 50
    check (
      max_pending_capacity_percent > 0 and max_pending_capacity_percent <= 100
      and scale(max_pending_capacity_percent) <= 4
    );
comment on column public.marketplace_config.max_pending_orders is
  'How many pending orders one buyer may have at once.';
comment on column public.marketplace_config.max_pending_capacity_percent is
  'The share of a product''s capacity one buyer may hold in pending orders (rounded up, at least one unit).';

-- A buyer's pending orders, counted on every order.
create index orders_buyer_pending_idx on public.orders (buyer_id) where status = 'pending';

-- The setter takes the new settings (null leaves a setting unchanged, as before): a new signature,
-- so the old one goes; callers naming their arguments (PostgREST, the client) are unaffected.
drop function public.set_marketplace_config(numeric, interval);
create or replace function public.set_marketplace_config(
  platform_fee_percent numeric default null,
  hold_ttl interval default null,
  max_pending_orders integer default null,
  max_pending_capacity_percent numeric default null
)
returns public.marketplace_config
language plpgsql
security definer
set search_path = ''
as $$
declare
  new_row public.marketplace_config;
begin
  perform mycelium_private.require_admin();
  if num_nonnulls(platform_fee_percent, hold_ttl, max_pending_orders, max_pending_capacity_percent) = 0 then
    perform mycelium_private.fail('invalid_argument', 'nothing to change: pass at least one setting');
  end if;
  if platform_fee_percent is not null and (
       platform_fee_percent = 'NaN'::numeric or platform_fee_percent < 0 or platform_fee_percent > 100
       or scale(trim_scale(platform_fee_percent)) > 4) then
    perform mycelium_private.fail('invalid_amount', 'platform_fee_percent must be between 0 and 100, with at most 4 fractional digits');
  end if;
  if hold_ttl is not null and (hold_ttl < interval '1 minute' or hold_ttl > interval '90 days') then
    perform mycelium_private.fail('invalid_argument', 'hold_ttl must be between 1 minute and 90 days');
  end if;
  if max_pending_orders is not null and (max_pending_orders < 1 or max_pending_orders > 10000) then
    perform mycelium_private.fail('invalid_argument', 'max_pending_orders must be between 1 and 10000');
  end if;
  if max_pending_capacity_percent is not null and (
       max_pending_capacity_percent = 'NaN'::numeric or max_pending_capacity_percent <= 0
       or max_pending_capacity_percent > 100 or scale(trim_scale(max_pending_capacity_percent)) > 4) then
    perform mycelium_private.fail('invalid_argument',
      'max_pending_capacity_percent must be above 0 and at most 100, with at most 4 fractional digits');
  end if;

  update public.marketplace_config c set
    platform_fee_percent = coalesce(trim_scale(set_marketplace_config.platform_fee_percent), c.platform_fee_percent),
    hold_ttl = coalesce(set_marketplace_config.hold_ttl, c.hold_ttl),
    max_pending_orders = coalesce(set_marketplace_config.max_pending_orders, c.max_pending_orders),
    max_pending_capacity_percent = coalesce(
      trim_scale(set_marketplace_config.max_pending_capacity_percent), c.max_pending_capacity_percent),
    updated_at = now(),
    updated_by = auth.uid()
  where c.id
  returning * into new_row;
  return new_row;
end;
$$;

revoke execute on function public.set_marketplace_config(numeric, interval, integer, numeric)
  from public, anon;
grant execute on function public.set_marketplace_config(numeric, interval, integer, numeric)
  to authenticated, service_role;

-- ---------------------------------------------------------------------------------------
-- 2. Moderation: every take-down and every lifting of one, append-only.
-- ---------------------------------------------------------------------------------------
create table public.product_moderation (
  id bigint generated always as identity primary key,
  product_id uuid not null references public.products (id),
  -- false: taken off sale; true: the take-down lifted.
  active boolean not null,
  reason text not null check (btrim(reason) <> '' and length(reason) <= 500),
  changed_by uuid,
  changed_role text not null,
  at timestamptz not null default now()
);
comment on table public.product_moderation is
  'Products taken off sale by admins or the service, and take-downs lifted: who, why, when. Append-only.';
create index product_moderation_product_idx on public.product_moderation (product_id, id);

create trigger product_moderation_append_only
  before update or delete or truncate on public.product_moderation
  for each statement execute function mycelium_private.refuse_change();

alter table public.product_moderation enable row level security;
revoke all on public.product_moderation from anon, authenticated, service_role;
revoke all on sequence public.product_moderation_id_seq from anon, authenticated, service_role;
grant select on public.product_moderation to authenticated, service_role;
-- The provider reads why their product was taken down (the subquery sees products through
-- their policy: a provider sees all of their own).
create policy product_moderation_provider_or_admin on public.product_moderation
  for select to authenticated
  using ((select public.is_admin()) or exists (
    select 1 from public.products as p
    where p.id = product_moderation.product_id and p.provider_id = (select auth.uid())
  ));

-- Whether a product's last moderation took it off sale.
create or replace function mycelium_private.is_taken_down(p_product uuid)
returns boolean
language plpgsql
stable
as $$
begin
  return coalesce((select not m.active from public.product_moderation m
                   where m.product_id = p_product order by m.id desc limit 1), false);
end;
$$;

-- The catalogue's check (see marketplace_catalogue), with two additions: an admin may change
-- `active` alone on someone else's product (set_product_active, the role revocation; the API
-- cannot, as RLS limits a user's writes to their own products), and a product taken down by
-- moderation is not put back on sale by an UPDATE of anyone but through set_product_active, which
-- records the lifting first.
create or replace function mycelium_private.check_product()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_caller uuid := auth.uid();
  v_service boolean := mycelium_private.is_service();
begin
  if tg_op = 'UPDATE' then
    if new.provider_id is distinct from old.provider_id or new.id <> old.id
       or new.created_at <> old.created_at then
      perform mycelium_private.fail('not_authorized', 'the owner, id and creation time of a product never change', 403);
    end if;
  elsif new.units_in_use <> 0 then
    perform mycelium_private.fail('invalid_argument', 'units_in_use is kept by orders');
  end if;
  if mycelium_private.role_for_category(new.category) is null then
    perform mycelium_private.fail('invalid_argument', 'category must be one of compute, node, gateway, app, service');
  elsif new.unit is null or new.unit not in ('hour', 'month', 'once') then
    perform mycelium_private.fail('invalid_argument', 'unit must be one of hour, month, once');
  elsif new.attributes is null or jsonb_typeof(new.attributes) <> 'object' then
    perform mycelium_private.fail('invalid_argument', 'attributes must be a JSON object');
  elsif new.capacity < 0 then
    perform mycelium_private.fail('invalid_argument', 'capacity must be 0 or more, or null for unlimited');
  end if;
  perform mycelium_private.authorize(
    v_service or new.provider_id = v_caller
    or (tg_op = 'UPDATE' and public.has_role('admin')
        and (new.category, new.name, new.description, new.price, new.unit, new.attributes, new.capacity)
            is not distinct from (old.category, old.name, old.description, old.price, old.unit, old.attributes, old.capacity)),
    'providers list and edit only their own products');
  if tg_op = 'UPDATE' and new.active and not old.active and mycelium_private.is_taken_down(new.id) then
    perform mycelium_private.fail('not_authorized',
      format('product %s was taken off sale by moderation: only an admin puts it back', new.id), 403);
  end if;
  -- The role is needed to list and to sell; a provider who lost it may still take a product off sale.
  if (tg_op = 'INSERT' or new.active)
     and not exists (select 1 from public.user_roles r
                     where r.user_id = new.provider_id and r.role = mycelium_private.role_for_category(new.category)) then
    perform mycelium_private.fail('not_authorized',
      format('listing %s products needs the role %s', new.category, mycelium_private.role_for_category(new.category)), 403);
  end if;
  new.price := mycelium_private.check_amount(new.price, 'price');
  new.name := mycelium_private.check_text(new.name, 'name', 200, true);
  if new.capacity is null then
    new.units_in_use := 0;
  end if;
  new.updated_at := now();
  return new;
end;
$$;

-- ---------------------------------------------------------------------------------------
-- rpc/set_product_active(product_id, active, reason): admins and service_role.
-- active false takes the product off sale (also one its provider took off sale already: it then
-- stays off); true lifts the last take-down, if its provider still holds the role (else
-- provider_not_selling). Lifting a product that is not taken down changes nothing: an active one
-- is returned as it is (a retry), an inactive one is its provider's to put back (403).
-- Returns the product.
-- ---------------------------------------------------------------------------------------
create or replace function public.set_product_active(product_id uuid, active boolean, reason text)
returns public.products
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_reason text;
  v_product public.products;
begin
  perform mycelium_private.require_admin();
  v_reason := mycelium_private.check_text(set_product_active.reason, 'reason', 500, true);
  if set_product_active.product_id is null or set_product_active.active is null then
    perform mycelium_private.fail('invalid_argument', 'product_id and active are required');
  end if;
  select * into v_product from public.products p where p.id = set_product_active.product_id for no key update;
  if not found then
    perform mycelium_private.fail('product_not_found', 'no product ' || set_product_active.product_id, 404);
  end if;
  if set_product_active.active then
    if not mycelium_private.is_taken_down(v_product.id) then
      if v_product.active then
        return v_product;
      end if;
      perform mycelium_private.fail('not_authorized',
        format('product %s was taken off sale by its provider: only they put it back', v_product.id), 403);
    end if;
    if not exists (select 1 from public.user_roles r
                   where r.user_id = v_product.provider_id and r.role = mycelium_private.role_for_category(v_product.category)) then
      perform mycelium_private.fail('provider_not_selling',
        format('the provider of product %s no longer holds the role %s', v_product.id,
               mycelium_private.role_for_category(v_product.category)), 409);
    end if;
  end if;
  insert into public.product_moderation (product_id, active, reason, changed_by, changed_role)
  values (v_product.id, set_product_active.active, v_reason, auth.uid(), mycelium_private.caller_role());
  update public.products p set active = set_product_active.active where p.id = v_product.id
  returning * into v_product;
  return v_product;
end;
$$;

revoke execute on function public.set_product_active(uuid, boolean, text) from public, anon;
grant execute on function public.set_product_active(uuid, boolean, text) to authenticated, service_role;

-- ---------------------------------------------------------------------------------------
-- 1. A revoked role takes the products it covered off sale.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.take_off_sale_on_role_revoked()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  update public.products p set active = false
  where p.provider_id = old.user_id and p.active and mycelium_private.role_for_category(p.category) = old.role;
  return null;
end;
$$;

create trigger user_roles_take_products_off_sale
  after delete on public.user_roles
  for each row execute function mycelium_private.take_off_sale_on_role_revoked();

-- Roles revoked before this migration left their products on sale.
update public.products as p set active = false
where p.active and not exists (
  select 1 from public.user_roles as r
  where r.user_id = p.provider_id and r.role = mycelium_private.role_for_category(p.category)
);

-- ---------------------------------------------------------------------------------------
-- rpc/place_order (see marketplace_orders), with the provider's role checked for every product,
-- product_inactive naming the id only, and the bounds of pending orders per buyer.
-- ---------------------------------------------------------------------------------------
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
  v_config public.marketplace_config;
  v_order uuid;
  v_pending integer;
  v_over record;
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
    -- Before `active`: a revoked role also took the product off sale, and the buyer learns why.
    if not exists (select 1 from public.user_roles r
                   where r.user_id = v_product.provider_id
                     and r.role = mycelium_private.role_for_category(v_product.category)) then
      perform mycelium_private.fail('provider_not_selling',
        format('the provider of product %s no longer sells it', v_product.id), 409);
    end if;
    if not v_product.active then
      perform mycelium_private.fail('product_inactive', format('product %s is not on sale', v_product.id), 409);
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
  select * into v_config from public.marketplace_config c where c.id;
  insert into public.orders (buyer_id, provider_id, total, held_amount, fee_percent, idempotency_key)
  values (v_buyer, v_provider, v_total, v_total, v_config.platform_fee_percent, v_key)
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

  -- The bounds, counting this order, after the key is claimed (a retry replays, whatever the
  -- bounds say now). The buyer's account lock (taken by the hold anyway; accounts come after
  -- products in the lock order) serialises the buyer's orders, so that two of them cannot both
  -- take the last place; the units per product are serialised by the product locks above.
  perform 1 from public.credit_accounts a where a.user_id = v_buyer for no key update;
  select count(*) into v_pending from public.orders o where o.buyer_id = v_buyer and o.status = 'pending';
  if v_pending > v_config.max_pending_orders then
    perform mycelium_private.fail('too_many_pending_orders',
      format('a buyer may have %s pending orders at once: wait for one to be fulfilled, or cancel one',
             v_config.max_pending_orders), 409);
  end if;
  if v_limited > 0 then
    select u.product_id, u.units, u.allowed into v_over from (
      select i.product_id, sum(i.quantity) as units,
             greatest(1, ceil(p.capacity * v_config.max_pending_capacity_percent * 0.01)) as allowed
      from public.orders o
      join public.order_items i on i.order_id = o.id
      join public.products p on p.id = i.product_id
      where o.buyer_id = v_buyer and o.status = 'pending' and p.capacity is not null
        and i.product_id = any(v_ids)
      group by i.product_id, p.capacity) u
    where u.units > u.allowed
    order by u.product_id
    limit 1;
    if found then
      perform mycelium_private.fail('too_many_pending_units',
        format('product %s: one buyer may hold at most %s units in pending orders, this order would make %s',
               v_over.product_id, v_over.allowed, v_over.units), 409);
    end if;
  end if;

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

-- ---------------------------------------------------------------------------------------
-- rpc/fulfil_order (see marketplace_fulfilment), refusing to capture for a provider who no longer
-- holds the role for every item (provider_not_selling); the buyer cancels such an order, the
-- provider or the service fail it, or its hold expires. A retry of a fulfilment done before the
-- revocation still returns the order.
-- ---------------------------------------------------------------------------------------
create or replace function public.fulfil_order(order_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_order public.orders := mycelium_private.lock_order(fulfil_order.order_id);
  v_fee numeric;
  v_earning numeric;
  v_result jsonb;
begin
  perform mycelium_private.authorize(v_order.provider_id = auth.uid() or mycelium_private.is_service(),
    'only the order''s provider or service_role fulfil an order');
  if mycelium_private.is_retry(v_order, 'fulfilled') then
    return mycelium_private.order_object(v_order.id);
  end if;
  if exists (select 1 from public.order_items i
             where i.order_id = v_order.id and not exists (
               select 1 from public.user_roles r
               where r.user_id = v_order.provider_id and r.role = mycelium_private.role_for_category(i.category))) then
    perform mycelium_private.fail('provider_not_selling',
      format('the provider of order %s no longer holds the role to sell it: it can only be cancelled or failed',
             v_order.id), 409);
  end if;
  -- Times 0.01, not divided by 100: numeric multiplication is exact, division is not.
  v_fee := round(v_order.total * v_order.fee_percent * 0.01, 6);
  v_earning := v_order.total - v_fee;

  -- Everything but the accounts first: a popular provider's account is locked by every capture
  -- of theirs, so it is updated last, and held only for the entry and the commit.
  update public.orders o
  set status = 'fulfilled', held_amount = 0, fee_amount = v_fee, fulfilled_at = now(), updated_at = now()
  where o.id = v_order.id;
  perform mycelium_private.record_order_status(v_order.id, 'pending', 'fulfilled');
  v_result := mycelium_private.order_object(v_order.id);

  -- Then the capture: the fee to platform_revenue (no account), the rest to the provider. The
  -- buyer's held goes down by the whole hold once, with the provider's earning (in user_id order
  -- with the provider's account), or with the fee when it is all of the total.
  if v_fee > 0 then
    perform mycelium_private.create_transfer('platform_fee', v_fee, p_from_system => 'holds',
      p_to_system => 'platform_revenue', p_reference => v_order.id::text, p_holder => v_order.buyer_id,
      p_held => case when v_earning > 0 then 0 else -v_order.held_amount end);
  end if;
  if v_earning > 0 then
    perform mycelium_private.create_transfer('provider_earning', v_earning, p_from_system => 'holds',
      p_to_user => v_order.provider_id, p_reference => v_order.id::text, p_counterparty => v_order.buyer_id,
      p_holder => v_order.buyer_id, p_held => -v_order.held_amount);
  end if;
  return v_result;
end;
$$;

revoke execute on all functions in schema mycelium_private from public;
