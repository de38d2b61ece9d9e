-- Legacy import, part 2, now that the marketplace exists: a claim also lists the user's old
-- products as their products, the old platform fee is carried into the marketplace
-- configuration, and operators' metrics count orders by status.

-- Products belong to a profile, and triggers of one event fire in name order: at a confirmed
-- sign-up (an INSERT) the claim must come after mycelium_profile_on_user_created. The trigger of
-- 20261127003000 fires before it (and only its owner, GoTrue's role, could drop it), so it now
-- handles confirmations (UPDATEs) only, and a second trigger, named to fire after the profile's,
-- handles confirmed sign-ups.
create or replace function mycelium_private.claim_legacy_account_on_confirmation()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Only a confirmed address proves who this is; an unconfirmed sign-up claims nothing.
  if tg_op = 'UPDATE' and new.email is not null and new.email_confirmed_at is not null
     and not coalesce(new.is_anonymous, false)
     and (old.email_confirmed_at is null or old.email is distinct from new.email) then
    perform mycelium_private.claim_legacy_account(new.id, new.email);
  end if;
  return null;
end;
$$;

create or replace function mycelium_private.claim_legacy_account_on_confirmed_signup()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform mycelium_private.claim_legacy_account(new.id, new.email);
  return null;
end;
$$;

create trigger mycelium_user_created_claims_legacy_account
  after insert on auth.users
  for each row
  when (new.email is not null and new.email_confirmed_at is not null and not coalesce(new.is_anonymous, false))
  execute function mycelium_private.claim_legacy_account_on_confirmed_signup();

alter table mycelium_private.legacy_products
  add column product_id uuid references public.products (id),
  -- Why the catalogue refused the listing at the claim (the import checks what it can first).
  add column claim_error text;

-- As in 20261127003000, plus the products: listed for the provider once their roles are theirs
-- (the catalogue's trigger checks the role for each category and the price). A listing the
-- catalogue refuses is recorded, not raised: it must never stop the user confirming their address.
create or replace function mycelium_private.claim_legacy_account(p_user uuid, p_email text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_account mycelium_private.legacy_accounts;
  v_transfer uuid;
  v_balance numeric;
  v_product record;
  v_product_id uuid;
begin
  select * into v_account from mycelium_private.legacy_accounts a
  where a.email = lower(p_email) and a.user_id is null
  for update;
  if not found then
    return;
  end if;
  if v_account.opening_credits > 0 then
    insert into mycelium_private.transfers (kind, from_system, to_user, amount, memo, reference, initiated_role)
    values ('legacy_migration', 'issuance', p_user, v_account.opening_credits,
            'opening balance from the old marketplace', 'legacy:' || v_account.email, 'legacy_import')
    returning id into v_transfer;
    v_balance := mycelium_private.credit_user(p_user, v_account.opening_credits, null, v_transfer);
    insert into public.credit_transactions (transfer_id, user_id, amount, kind, balance_after, memo, reference)
    values (v_transfer, p_user, v_account.opening_credits, 'legacy_migration', v_balance,
            'opening balance from the old marketplace', 'legacy:' || v_account.email);
  end if;
  insert into public.user_roles (user_id, role)
  select p_user, r from unnest(v_account.roles) r
  on conflict do nothing;
  for v_product in
    select p.id, p.name, p.description, p.category, p.price, p.unit, p.attributes, p.active
    from mycelium_private.legacy_products p
    where p.email = v_account.email
    order by p.id
  loop
    begin
      insert into public.products (provider_id, category, name, description, price, unit, attributes, active)
      values (p_user, v_product.category, v_product.name, coalesce(v_product.description, ''), v_product.price,
              v_product.unit, v_product.attributes, v_product.active)
      returning id into v_product_id;
      update mycelium_private.legacy_products set product_id = v_product_id where id = v_product.id;
    exception when others then
      update mycelium_private.legacy_products set claim_error = sqlerrm where id = v_product.id;
    end;
  end loop;
  update mycelium_private.legacy_accounts
  set user_id = p_user, claimed_at = now(), opening_transfer_id = v_transfer
  where email = v_account.email;
  update public.legacy_transactions set user_id = p_user where email = v_account.email;
end;
$$;

-- The old platform fee becomes the marketplace's, when an import writes anything and the fee
-- differs (a re-run changes nothing). Returns the settings applied.
create or replace function mycelium_private.apply_legacy_settings(p_settings jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_fee numeric := (p_settings ->> 'platform_fee_percent')::numeric;
begin
  if v_fee is null or v_fee = (select c.platform_fee_percent from public.marketplace_config c where c.id) then
    return '{}';
  end if;
  perform public.set_marketplace_config(platform_fee_percent => v_fee);
  return jsonb_build_object('platform_fee_percent', v_fee);
end;
$$;

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
revoke execute on all functions in schema mycelium_private from public;
