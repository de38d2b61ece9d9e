-- Marketplace, part 1: the catalogue. Providers sell products priced in TFC.
--
-- Who sells what (a provider's role decides the categories they may list):
--   farmer            compute (slices), node, gateway   (gateways run on farmers' nodes)
--   app_provider      app
--   service_provider  service
-- Providers write their products straight through PostgREST (POST/PATCH /products): RLS limits
-- them to their own rows, column privileges to the editable columns, and a trigger checks the
-- role, the category and the price (the same amount rules as credits, with the same stable
-- reasons). No one deletes a product (orders refer to it): providers deactivate it.
-- `units_in_use` (what orders hold of a limited capacity) is written only by the order functions.

create table public.products (
  id uuid primary key default gen_random_uuid(),
  provider_id uuid not null default auth.uid() references public.profiles (id),
  category text not null check (category in ('compute', 'node', 'app', 'service', 'gateway')),
  name text not null check (btrim(name) <> '' and length(name) <= 200),
  description text not null default '' check (length(description) <= 5000),
  price numeric not null
    check (price <> 'NaN'::numeric and price > 0 and price < 1e15 and scale(price) <= 6),
  unit text not null check (unit in ('hour', 'month', 'once')),
  attributes jsonb not null default '{}'::jsonb
    check (jsonb_typeof(attributes) = 'object' and length(attributes::text) <= 10000),
  -- How many units may be sold at once (pending and fulfilled orders); null: unlimited.
  capacity integer check (capacity >= 0),
  -- Units of pending and fulfilled orders; kept 0 while capacity is null (see below).
  units_in_use integer not null default 0 check (units_in_use >= 0),
  active boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  -- For search: filterable by PostgREST (`location=eq.BE`) and indexed (marketplace search).
  location text generated always as (attributes ->> 'location') stored,
  search_text tsvector generated always as (
    setweight(to_tsvector('simple'::regconfig, name), 'A')
    || setweight(to_tsvector('simple'::regconfig, description), 'B')) stored
);
comment on table public.products is
  'The catalogue: what providers sell, priced in TFC per unit. Anyone reads active products; providers write their own.';

-- Which role may list which category.
create or replace function mycelium_private.role_for_category(p_category text)
returns text
language sql
immutable
set search_path = ''
as $$
  select case p_category
    when 'compute' then 'farmer' when 'node' then 'farmer' when 'gateway' then 'farmer'
    when 'app' then 'app_provider'
    when 'service' then 'service_provider'
  end
$$;

-- Before every insert and update: the owner is the caller (never someone else, never changed),
-- the owner holds the role for the category (except to deactivate), the price obeys the amount
-- rules. units_in_use stays 0 while there is no capacity (the orders count it once one is set:
-- products_count_units_in_use).
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
  perform mycelium_private.authorize(v_service or new.provider_id = v_caller,
    'providers list and edit only their own products');
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

-- Not on updates of units_in_use alone (the order functions' own writes; no API role may
-- write that column).
create trigger products_check
  before insert or update of id, provider_id, category, name, description, price, unit, attributes, capacity,
    active, created_at
  on public.products
  for each row execute function mycelium_private.check_product();

create trigger products_no_delete
  before delete or truncate on public.products
  for each statement execute function mycelium_private.refuse_change();

alter table public.products enable row level security;
revoke all on public.products from anon, authenticated, service_role;
grant select on public.products to anon, authenticated, service_role;
grant insert (provider_id, category, name, description, price, unit, attributes, capacity, active)
  on public.products to authenticated;
grant update (category, name, description, price, unit, attributes, capacity, active)
  on public.products to authenticated;

create policy products_anon_read_active on public.products
  for select to anon
  using (active);
create policy products_read_active_own_or_admin on public.products
  for select to authenticated
  using (active or provider_id = (select auth.uid()) or (select public.is_admin()));
create policy products_provider_insert on public.products
  for insert to authenticated
  with check (provider_id = (select auth.uid()));
create policy products_provider_update on public.products
  for update to authenticated
  using (provider_id = (select auth.uid()))
  with check (provider_id = (select auth.uid()));

-- A provider's own products (and RLS's owner test).
create index products_provider_idx on public.products (provider_id, created_at);

revoke execute on all functions in schema mycelium_private from public;
