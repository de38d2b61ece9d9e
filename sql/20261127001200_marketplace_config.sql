-- Marketplace, part 3: the marketplace configuration, a configuration like credit_config (one
-- row, readable by anyone, every change in marketplace_config_history: make_configuration()).
--   platform_fee_percent  the platform's share of every order, 0 to 100 with at most 4 decimals.
--                         Snapshotted on each order when it is placed: a change applies to new
--                         orders only, never to credits already held.
--   hold_ttl              how long an order may stay pending; rpc/release_expired_holds releases
--                         older holds. Applies to all pending orders as they are swept.

create table public.marketplace_config (
  id boolean primary key default true check (id),
  platform_fee_percent numeric not null default 5
    check (platform_fee_percent >= 0 and platform_fee_percent <= 100 and scale(platform_fee_percent) <= 4),
  hold_ttl interval not null default interval '24 hours'
    check (hold_ttl >= interval '1 minute' and hold_ttl <= interval '90 days'),
  updated_at timestamptz not null default now(),
  updated_by uuid
);
comment on table public.marketplace_config is
  'The one marketplace configuration row: platform fee and how long holds last. Readable by anyone.';
select mycelium_private.make_configuration('marketplace_config');

-- rpc/set_marketplace_config: admins and service_role; null leaves a setting unchanged.
create or replace function public.set_marketplace_config(
  platform_fee_percent numeric default null,
  hold_ttl interval default null
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
  if num_nonnulls(platform_fee_percent, hold_ttl) = 0 then
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

  update public.marketplace_config c set
    platform_fee_percent = coalesce(trim_scale(set_marketplace_config.platform_fee_percent), c.platform_fee_percent),
    hold_ttl = coalesce(set_marketplace_config.hold_ttl, c.hold_ttl),
    updated_at = now(),
    updated_by = auth.uid()
  where c.id
  returning * into new_row;
  return new_row;
end;
$$;

revoke execute on function public.set_marketplace_config(numeric, interval) from public, anon;
grant execute on function public.set_marketplace_config(numeric, interval) to authenticated, service_role;
