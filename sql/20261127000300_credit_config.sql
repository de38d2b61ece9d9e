-- Credits, part 3: the credit configuration (the only place a USD rate exists) and its history.

create table public.credit_config (
  id boolean primary key default true check (id),
  tfc_to_usd_rate numeric not null default 1.0
    check (tfc_to_usd_rate > 0 and tfc_to_usd_rate < 'Infinity'::numeric),
  credit_currency_code text not null default 'TFC',
  credit_display_name text not null default 'ThreeFold Credits',
  credit_symbol text not null default 'TFC',
  updated_at timestamptz not null default now(),
  updated_by uuid
);
comment on table public.credit_config is
  'The one credit configuration row: value of one credit in USD, code, name, symbol. Readable by anyone.';

insert into public.credit_config (id) values (true);

create table public.credit_config_history (
  id bigint generated always as identity primary key,
  changed_at timestamptz not null default now(),
  changed_by uuid,
  changed_by_role text,
  old_config jsonb not null,
  new_config jsonb not null
);
comment on table public.credit_config_history is 'Every change of credit_config: who, when, old, new. Admins only.';

alter table public.credit_config enable row level security;
alter table public.credit_config_history enable row level security;

revoke all on public.credit_config, public.credit_config_history from anon, authenticated, service_role;
-- Identity sequences too (Supabase grants all on every new one): only the owner's functions insert,
-- and one setval through the API would make every later insert collide.
revoke all on sequence public.credit_config_history_id_seq from anon, authenticated, service_role;
grant select on public.credit_config to anon, authenticated, service_role;
grant select on public.credit_config_history to authenticated, service_role;

create policy credit_config_readable_by_all on public.credit_config
  for select to anon, authenticated
  using (true);
create policy credit_config_history_admins on public.credit_config_history
  for select to authenticated
  using ((select public.is_admin()));

create trigger credit_config_history_append_only
  before update or delete or truncate on public.credit_config_history
  for each statement execute function mycelium_private.refuse_change();

-- ---------------------------------------------------------------------------------------
-- rpc/set_credit_config: admins and service_role. Null arguments leave a field unchanged.
-- ---------------------------------------------------------------------------------------
create or replace function public.set_credit_config(
  tfc_to_usd_rate numeric default null,
  credit_currency_code text default null,
  credit_display_name text default null,
  credit_symbol text default null
)
returns public.credit_config
language plpgsql
security definer
set search_path = ''
as $$
declare
  old_row public.credit_config;
  new_row public.credit_config;
begin
  perform mycelium_private.require_admin();
  if num_nonnulls(tfc_to_usd_rate, credit_currency_code, credit_display_name, credit_symbol) = 0 then
    perform mycelium_private.fail('invalid_argument', 'nothing to change: pass at least one setting');
  end if;
  if tfc_to_usd_rate is not null then
    if tfc_to_usd_rate = 'NaN'::numeric or tfc_to_usd_rate in ('Infinity'::numeric, '-Infinity'::numeric)
       or tfc_to_usd_rate <= 0 or tfc_to_usd_rate >= 1e9 then
      perform mycelium_private.fail('invalid_amount', 'tfc_to_usd_rate must be a finite number above 0 and below 1000000000');
    elsif scale(trim_scale(tfc_to_usd_rate)) > 12 then
      perform mycelium_private.fail('invalid_amount', 'tfc_to_usd_rate has more than 12 fractional digits');
    end if;
  end if;
  if credit_currency_code is not null and credit_currency_code !~ '^[A-Z][A-Z0-9]{1,9}$' then
    perform mycelium_private.fail('invalid_argument', 'credit_currency_code must be 2 to 10 capital letters or digits, starting with a letter');
  end if;
  if credit_display_name is not null and (btrim(credit_display_name) = '' or length(credit_display_name) > 100) then
    perform mycelium_private.fail('invalid_argument', 'credit_display_name must be 1 to 100 characters');
  end if;
  if credit_symbol is not null and (btrim(credit_symbol) = '' or length(credit_symbol) > 16) then
    perform mycelium_private.fail('invalid_argument', 'credit_symbol must be 1 to 16 characters');
  end if;

  select * into old_row from public.credit_config where id for update;
  update public.credit_config c set
    tfc_to_usd_rate = coalesce(trim_scale(set_credit_config.tfc_to_usd_rate), c.tfc_to_usd_rate),
    credit_currency_code = coalesce(set_credit_config.credit_currency_code, c.credit_currency_code),
    credit_display_name = coalesce(set_credit_config.credit_display_name, c.credit_display_name),
    credit_symbol = coalesce(set_credit_config.credit_symbol, c.credit_symbol),
    updated_at = now(),
    updated_by = auth.uid()
  where c.id
  returning * into new_row;

  insert into public.credit_config_history (changed_by, changed_by_role, old_config, new_config)
  values (auth.uid(), mycelium_private.caller_role(), to_jsonb(old_row), to_jsonb(new_row));
  return new_row;
end;
$$;

-- ---------------------------------------------------------------------------------------
-- Display: credits to USD at the configured rate. The only other use of the rate is converting
-- a USD payment into credits in purchase_credits.
-- ---------------------------------------------------------------------------------------
create or replace function public.tfc_to_usd(amount numeric)
returns numeric
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  return amount * (select c.tfc_to_usd_rate from public.credit_config c where c.id);
end;
$$;
comment on function public.tfc_to_usd(numeric) is 'For display: an amount of credits in USD at the configured rate.';

revoke execute on function public.set_credit_config(numeric, text, text, text) from public, anon;
grant execute on function public.set_credit_config(numeric, text, text, text) to authenticated, service_role;
grant execute on function public.tfc_to_usd(numeric) to anon, authenticated, service_role;
