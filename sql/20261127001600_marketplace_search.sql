-- Marketplace, part 7: product search for a front end, fast at any catalogue size.
--
-- Simple filters work on /products itself (`category=eq.compute&price=lte.5&location=eq.BE`,
-- `attributes=cs.{"gpu":true}`, `order=price.asc,id.asc`). rpc/search_products adds full-text
-- search, numeric attribute minimums, keyset pagination and display prices:
--   GET /rpc/search_products?query=ubuntu&category=compute&max_price=5&sort=price_asc
--   then pass the last row's `cursor` as `after` for the next page.
--
-- Security definer with an explicit `active` filter: it returns exactly what anyone may read
-- (active products, as the anon policy does), and it must: behind RLS's security barrier, the
-- non-leakproof operators of these filters (numeric comparisons, @@, @>) could not be index
-- conditions, and a page at 100,000 products would scan. Every index is partial on `active`.
-- The query is built for the filters given (dynamic SQL with parameters, never interpolated
-- values), so each search is planned for its own filters and sort and walks one index.

alter table public.products set (fillfactor = 90);  -- units_in_use changes stay HOT updates

create index products_newest_idx on public.products (created_at, id) where active;
create index products_price_idx on public.products (price, id) where active;
create index products_category_newest_idx on public.products (category, created_at, id) where active;
create index products_category_price_idx on public.products (category, price, id) where active;
create index products_location_newest_idx on public.products (location, created_at, id) where active;
create index products_location_price_idx on public.products (location, price, id) where active;
create index products_search_text_idx on public.products using gin (search_text) where active;
create index products_attributes_idx on public.products using gin (attributes jsonb_path_ops) where active;

-- A row of search results (a type, not OUT parameters: its columns share names with filters).
create type public.product_search_hit as (
  id uuid, provider_id uuid, category text, name text, description text, price numeric, unit text,
  attributes jsonb, capacity integer, units_available integer, location text, created_at timestamptz,
  price_usd numeric, currency text, price_in_currency numeric, cursor jsonb
);

create or replace function public.search_products(
  query text default null,
  category text default null,
  min_price numeric default null,
  max_price numeric default null,
  location text default null,
  attributes jsonb default null,
  min_attributes jsonb default null,
  sort text default 'newest',
  after jsonb default null,
  page_size integer default 20,
  currency text default null
)
returns setof public.product_search_hit
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_where text := 'p.active';
  v_order text;
  v_after text;
  v_path text;
  v_key text;
  v_value jsonb;
  v_rate numeric := (select c.tfc_to_usd_rate from public.credit_config c where c.id);
  v_currency public.display_currencies;
  v_size integer := coalesce(page_size, 20);
  v_cursor_ts timestamptz;
  v_cursor_price numeric;
  v_cursor_id uuid;
begin
  if v_size < 1 or v_size > 100 then
    perform mycelium_private.fail('invalid_argument', 'page_size must be between 1 and 100');
  end if;
  if currency is not null then
    select * into v_currency from public.display_currencies c where c.code = search_products.currency;
    if not found then
      perform mycelium_private.fail('invalid_argument', 'unknown display currency ' || currency);
    end if;
  end if;
  if nullif(btrim(query), '') is not null then
    v_where := v_where || ' and p.search_text @@ websearch_to_tsquery(''simple'', $1)';
  end if;
  if category is not null then
    v_where := v_where || ' and p.category = $2';
  end if;
  if min_price is not null then
    v_where := v_where || ' and p.price >= $3';
  end if;
  if max_price is not null then
    v_where := v_where || ' and p.price <= $4';
  end if;
  if location is not null then
    v_where := v_where || ' and p.location = $5';
  end if;
  if attributes is not null then
    if jsonb_typeof(attributes) <> 'object' then
      perform mycelium_private.fail('invalid_argument', 'attributes must be an object, e.g. {"gpu": true}');
    end if;
    v_where := v_where || ' and p.attributes @> $6';
  end if;
  -- min_attributes {"cpu": 4, "memory_gb": 8}: attribute >= value, as a jsonpath the GIN index
  -- answers. Keys are checked to be plain names and values numbers: nothing else reaches the path.
  if min_attributes is not null then
    if jsonb_typeof(min_attributes) <> 'object' then
      perform mycelium_private.fail('invalid_argument', 'min_attributes must be an object of numbers, e.g. {"cpu": 4}');
    end if;
    for v_key, v_value in select e.key, e.value from jsonb_each(min_attributes) e loop
      if v_key !~ '^[A-Za-z_][A-Za-z0-9_]{0,62}$' or jsonb_typeof(v_value) <> 'number' then
        perform mycelium_private.fail('invalid_argument', 'min_attributes must map attribute names to numbers');
      end if;
      v_path := coalesce(v_path || ' && ', '') || format('$."%s" >= %s', v_key, v_value::text);
    end loop;
    if v_path is not null then
      v_where := v_where || ' and p.attributes @@ $15::jsonpath';
    end if;
  end if;

  if sort = 'newest' then
    v_order := 'p.created_at desc, p.id desc';
    v_after := '(p.created_at, p.id) < ($7, $9)';
  elsif sort = 'price_asc' then
    v_order := 'p.price, p.id';
    v_after := '(p.price, p.id) > ($8, $9)';
  elsif sort = 'price_desc' then
    v_order := 'p.price desc, p.id desc';
    v_after := '(p.price, p.id) < ($8, $9)';
  else
    perform mycelium_private.fail('invalid_argument', 'sort must be newest, price_asc or price_desc');
  end if;
  if after is not null then
    begin
      v_cursor_id := (after ->> 'id')::uuid;
      v_cursor_ts := (after ->> 'created_at')::timestamptz;
      v_cursor_price := (after ->> 'price')::numeric;
    exception when others then
      perform mycelium_private.fail('invalid_argument', 'after must be the cursor of a row of the previous page');
    end;
    if v_cursor_id is null or (sort = 'newest' and v_cursor_ts is null) or (sort <> 'newest' and v_cursor_price is null) then
      perform mycelium_private.fail('invalid_argument', 'after must be the cursor of a row of the previous page, with the same sort');
    end if;
    v_where := v_where || ' and ' || v_after;
  end if;

  return query execute format(
    'select p.id, p.provider_id, p.category, p.name, p.description, p.price, p.unit, p.attributes, p.capacity,'
    || ' case when p.capacity is null then null else greatest(p.capacity - p.units_in_use, 0) end,'
    || ' p.location, p.created_at, p.price * $10, $11, mycelium_private.divide_rounded(p.price * $10, $12, $13),'
    || ' case when $14 = ''newest'' then jsonb_build_object(''created_at'', p.created_at, ''id'', p.id)'
    || '      else jsonb_build_object(''price'', p.price, ''id'', p.id) end'
    || ' from public.products p where %s order by %s limit %s',
    v_where, v_order, v_size)
  using query, category, min_price, max_price, location, attributes, v_cursor_ts, v_cursor_price, v_cursor_id,
        v_rate, v_currency.code, v_currency.usd_per_unit, v_currency.decimals, sort, v_path;
end;
$$;
comment on function public.search_products(text, text, numeric, numeric, text, jsonb, jsonb, text, jsonb, integer, text) is
  'Active products: full text, category, price range, location, attributes; newest or by price; keyset pages of up to 100.';

grant execute on function
  public.search_products(text, text, numeric, numeric, text, jsonb, jsonb, text, jsonb, integer, text)
  to anon, authenticated, service_role;
