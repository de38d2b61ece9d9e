-- Credits: the credit configuration (the only place a USD rate exists) and its history.
--
-- A configuration is one row (`id` is true) of settings that anyone may read and only its setter
-- function changes, with `<table>_history`: every change of the row (who, when, the old and the
-- new row), append-only, read by admins. make_configuration() gives a configuration table all of
-- that; credit_config is the first, the marketplace's marketplace_config the second.

-- Any change of a configuration row, the setter's or an operator's, is recorded.
create or replace function mycelium_private.record_config_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  execute format(
    'insert into public.%I (changed_by, changed_by_role, old_config, new_config) values ($1, $2, $3, $4)',
    tg_table_name || '_history')
  using auth.uid(), mycelium_private.caller_role(), to_jsonb(old), to_jsonb(new);
  return null;
end;
$$;

-- Makes configuration table `p_table` one: its one row (the columns' defaults), its read surface
-- (anyone reads it, nobody writes it through the API), its history table and the trigger that
-- fills it. The history's identity sequence is taken back too (Supabase grants all on every new
-- one): only the owner's functions insert, and one setval through the API would make every later
-- insert collide.
create or replace function mycelium_private.make_configuration(p_table text)
returns void
language plpgsql
set search_path = ''
as $$
begin
  execute format($ddl$
    insert into public.%1$I (id) values (true);
    alter table public.%1$I enable row level security;
    revoke all on public.%1$I from anon, authenticated, service_role;
    grant select on public.%1$I to anon, authenticated, service_role;
    create policy %1$s_readable_by_all on public.%1$I for select to anon, authenticated using (true);

    create table public.%1$s_history (
      id bigint generated always as identity primary key,
      changed_at timestamptz not null default now(),
      changed_by uuid,
      changed_by_role text,
      old_config jsonb not null,
      new_config jsonb not null
    );
    comment on table public.%1$s_history is 'Every change of %1$s: who, when, old, new. Admins only.';
    alter table public.%1$s_history enable row level security;
    revoke all on public.%1$s_history from anon, authenticated, service_role;
    revoke all on sequence public.%1$s_history_id_seq from anon, authenticated, service_role;
    grant select on public.%1$s_history to authenticated, service_role;
    create policy %1$s_history_admins on public.%1$s_history
      for select to authenticated using ((select public.is_admin()));
    create trigger %1$s_history_append_only
      before update or delete or truncate on public.%1$s_history
      for each statement execute function mycelium_private.refuse_change();

    create trigger record_changes after update on public.%1$I
      for each row execute function mycelium_private.record_config_change();
  $ddl$, p_table);
end;
$$;

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
select mycelium_private.make_configuration('credit_config');

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

  update public.credit_config c set
    tfc_to_usd_rate = coalesce(trim_scale(set_credit_config.tfc_to_usd_rate), c.tfc_to_usd_rate),
    credit_currency_code = coalesce(set_credit_config.credit_currency_code, c.credit_currency_code),
    credit_display_name = coalesce(set_credit_config.credit_display_name, c.credit_display_name),
    credit_symbol = coalesce(set_credit_config.credit_symbol, c.credit_symbol),
    updated_at = now(),
    updated_by = auth.uid()
  where c.id
  returning * into new_row;
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
revoke execute on all functions in schema mycelium_private from public;
