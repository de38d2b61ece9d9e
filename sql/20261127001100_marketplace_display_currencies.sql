-- Marketplace, part 2: prices shown in other currencies. Display only: TFC is the only currency
-- of account, and no amount in the ledger or on an order is ever converted.
--
-- A price in USD is price * credit_config.tfc_to_usd_rate; in a display currency it is that USD
-- amount / usd_per_unit of the currency, rounded to the currency's `decimals`.

create table public.display_currencies (
  code text primary key check (code ~ '^[A-Z][A-Z0-9]{1,9}$'),
  symbol text not null check (btrim(symbol) <> '' and length(symbol) <= 16),
  name text check (name is null or length(name) <= 100),
  -- What one unit of the currency is worth in USD.
  usd_per_unit numeric not null
    check (usd_per_unit <> 'NaN'::numeric and usd_per_unit > 0 and usd_per_unit < 1e9
           and scale(usd_per_unit) <= 12),
  decimals integer not null default 2 check (decimals between 0 and 8),
  updated_at timestamptz not null default now(),
  updated_by uuid
);
comment on table public.display_currencies is
  'Currencies prices may be shown in (display only). Readable by anyone; written by admins through rpc/set_display_currency.';

insert into public.display_currencies (code, symbol, name, usd_per_unit, decimals) values
  ('USD', '$', 'US dollar', 1, 2),
  ('EUR', '€', 'Euro', 1.08, 2);

alter table public.display_currencies enable row level security;
revoke all on public.display_currencies from anon, authenticated, service_role;
grant select on public.display_currencies to anon, authenticated, service_role;
create policy display_currencies_readable_by_all on public.display_currencies
  for select to anon, authenticated
  using (true);

-- rpc/set_display_currency: add or change a currency (admins and service_role); usd_per_unit
-- null removes it. Returns the row, or null once removed.
create or replace function public.set_display_currency(
  code text, symbol text default null, usd_per_unit numeric default null, name text default null,
  decimals integer default null)
returns public.display_currencies
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.display_currencies;
begin
  perform mycelium_private.require_admin();
  if code is null or code !~ '^[A-Z][A-Z0-9]{1,9}$' then
    perform mycelium_private.fail('invalid_argument', 'code must be 2 to 10 capital letters or digits, starting with a letter');
  end if;
  if usd_per_unit is null then
    delete from public.display_currencies c where c.code = set_display_currency.code;
    return null;
  end if;
  if usd_per_unit = 'NaN'::numeric or usd_per_unit <= 0 or usd_per_unit >= 1e9
     or scale(trim_scale(usd_per_unit)) > 12 then
    perform mycelium_private.fail('invalid_amount', 'usd_per_unit must be above 0, below 1000000000, with at most 12 fractional digits');
  end if;
  if decimals is not null and (decimals < 0 or decimals > 8) then
    perform mycelium_private.fail('invalid_argument', 'decimals must be between 0 and 8');
  end if;
  if symbol is not null and (btrim(symbol) = '' or length(symbol) > 16) then
    perform mycelium_private.fail('invalid_argument', 'symbol must be 1 to 16 characters');
  end if;
  insert into public.display_currencies as c (code, symbol, name, usd_per_unit, decimals, updated_by)
  values (set_display_currency.code, coalesce(set_display_currency.symbol, set_display_currency.code),
          mycelium_private.check_text(set_display_currency.name, 'name', 100), trim_scale(set_display_currency.usd_per_unit),
          coalesce(set_display_currency.decimals, 2), auth.uid())
  on conflict on constraint display_currencies_pkey do update set
    symbol = coalesce(set_display_currency.symbol, c.symbol),
    name = coalesce(excluded.name, c.name),
    usd_per_unit = excluded.usd_per_unit,
    decimals = coalesce(set_display_currency.decimals, c.decimals),
    updated_at = now(),
    updated_by = excluded.updated_by
  returning * into v_row;
  return v_row;
end;
$$;

-- An amount of TFC in every display currency: {"TFC": ..., "USD": ..., "EUR": ...}. USD is the
-- configured rate's exact value; other currencies are rounded to their decimals.
create or replace function public.display_prices(amount numeric)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object('TFC', amount, 'USD', amount * r.rate)
         || coalesce((select jsonb_object_agg(c.code, mycelium_private.divide_rounded(amount * r.rate, c.usd_per_unit, c.decimals))
                      from public.display_currencies c where c.code <> 'USD'), '{}'::jsonb)
  from (select cfg.tfc_to_usd_rate as rate from public.credit_config cfg where cfg.id) r
$$;
comment on function public.display_prices(numeric) is
  'For display: an amount of TFC in TFC, USD and every display currency. Nothing is converted in the ledger.';

-- Active products (as the caller may see them) with their price in every display currency:
-- GET /product_prices?id=eq.<product id>.
create view public.product_prices with (security_invoker = true) as
select p.id, p.name, p.category, p.unit, p.price, public.tfc_to_usd(p.price) as price_usd,
       public.display_prices(p.price) as prices
from public.products as p;
comment on view public.product_prices is 'Each product''s price in TFC, in USD and in every display currency (display only).';

revoke all on public.product_prices from anon, authenticated, service_role;
grant select on public.product_prices to anon, authenticated, service_role;
revoke execute on function public.set_display_currency(text, text, numeric, text, integer) from public, anon;
grant execute on function public.set_display_currency(text, text, numeric, text, integer)
  to authenticated, service_role;
grant execute on function public.display_prices(numeric) to anon, authenticated, service_role;
