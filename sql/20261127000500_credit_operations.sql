-- Credits: packages, and the money operations: purchase, transfer, grant, expiry.
-- Every operation: security definer, search_path '', authorization first, arguments validated by
-- the helpers, every movement through the ledger's write path (mycelium_private.create_transfer),
-- idempotent through the ledger's retry key, one transaction.

create table public.credit_packages (
  id uuid primary key default gen_random_uuid(),
  name text not null unique check (btrim(name) <> '' and length(name) <= 100),
  description text check (description is null or length(description) <= 1000),
  price_usd numeric not null
    check (price_usd <> 'NaN'::numeric and price_usd > 0 and price_usd < 1e15
           and scale(trim_scale(price_usd)) <= 6),
  bonus_credits numeric not null default 0
    check (bonus_credits <> 'NaN'::numeric and bonus_credits >= 0 and bonus_credits < 1e15
           and scale(trim_scale(bonus_credits)) <= 6),
  expires_after interval check (expires_after is null or expires_after > interval '0'),
  active boolean not null default true,
  sort_order integer not null default 0,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table public.credit_packages is
  'Credit bundles: pay price_usd, get price_usd / tfc_to_usd_rate credits plus bonus_credits. Managed by admins.';

alter table public.credit_packages enable row level security;
revoke all on public.credit_packages from anon, authenticated, service_role;
grant select on public.credit_packages to anon;
grant select, insert, update, delete on public.credit_packages to authenticated, service_role;

create policy credit_packages_anon_read_active on public.credit_packages
  for select to anon
  using (active);
create policy credit_packages_read_active_or_admin on public.credit_packages
  for select to authenticated
  using (active or (select public.is_admin()));
create policy credit_packages_admin_insert on public.credit_packages
  for insert to authenticated with check ((select public.is_admin()));
create policy credit_packages_admin_update on public.credit_packages
  for update to authenticated using ((select public.is_admin())) with check ((select public.is_admin()));
create policy credit_packages_admin_delete on public.credit_packages
  for delete to authenticated using ((select public.is_admin()));

-- ---------------------------------------------------------------------------------------
-- What every operation returns: the transfer as `viewer` sees it (balance_after of their entry).
-- A replayed call returns exactly what the first call returned.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.movement_result(p_transfer uuid, p_viewer uuid)
returns jsonb
language plpgsql
stable
as $$
begin
  return (
  select jsonb_build_object(
    'transfer_id', t.id,
    'kind', t.kind,
    'amount', t.amount,
    'from_user_id', t.from_user,
    'to_user_id', t.to_user,
    'usd_amount', t.usd_amount,
    'package_id', t.package_id,
    'memo', t.memo,
    'reference', t.reference,
    'expires_at', t.expires_at,
    'created_at', t.created_at,
    'balance_after', (select e.balance_after from public.credit_transactions e
                      where e.user_id = p_viewer and e.created_at = t.created_at and e.transfer_id = t.id)
  )
  from mycelium_private.transfers t
  where t.id = p_transfer
  );
end;
$$;

-- The same object from values at hand (no lookup), for the call that made the transfer.
create or replace function mycelium_private.movement_object(
  p_transfer uuid, p_kind text, p_amount numeric, p_from uuid, p_to uuid, p_usd numeric, p_package uuid,
  p_memo text, p_reference text, p_expires_at timestamptz, p_created_at timestamptz, p_balance_after numeric)
returns jsonb
language sql
stable
-- No SET clause and stable like jsonb_build_object, so that it is inlined into its callers; it
-- names nothing outside pg_catalog.
as $$
  select jsonb_build_object(
    'transfer_id', p_transfer,
    'kind', p_kind,
    'amount', p_amount,
    'from_user_id', p_from,
    'to_user_id', p_to,
    'usd_amount', p_usd,
    'package_id', p_package,
    'memo', p_memo,
    'reference', p_reference,
    'expires_at', p_expires_at,
    'created_at', p_created_at,
    'balance_after', p_balance_after
  )
$$;

-- A call whose retry key a movement took before: that movement's result again, as `p_viewer` saw
-- it, if it was the same request (the transfer holds every field of `p_request`); else the key
-- was used for something else: duplicate_reference, saying so (`p_conflict`).
create or replace function mycelium_private.replay_movement(
  p_transfer uuid, p_viewer uuid, p_request jsonb, p_conflict text)
returns jsonb
language plpgsql
stable
as $$
begin
  if not exists (select 1 from mycelium_private.transfers t where t.id = p_transfer and to_jsonb(t) @> p_request) then
    perform mycelium_private.fail('duplicate_reference', p_conflict, 409);
  end if;
  return mycelium_private.movement_result(p_transfer, p_viewer);
end;
$$;

-- ---------------------------------------------------------------------------------------
-- rpc/purchase_credits: service_role only (the payment webhook, once the provider confirmed).
-- credits = usd_amount / tfc_to_usd_rate (truncated to 6 fractional digits), plus the package's
-- bonus. The same payment_reference again returns the first result and moves nothing.
-- ---------------------------------------------------------------------------------------
create or replace function public.purchase_credits(
  user_id uuid,
  usd_amount numeric,
  payment_reference text,
  package_id uuid default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_user uuid := purchase_credits.user_id;
  v_usd numeric;
  v_reference text;
  v_rate numeric;
  v_credits numeric;
  v_expires timestamptz;
  v_package public.credit_packages;
  v_existing uuid;
  v_moved record;
begin
  perform mycelium_private.require_service();
  v_usd := mycelium_private.check_amount(purchase_credits.usd_amount, 'usd_amount');
  v_reference := mycelium_private.check_text(purchase_credits.payment_reference, 'payment_reference', 200, true);

  -- A payment seen before is replayed before anything else is checked: its package may be off
  -- sale by now.
  select t.id into v_existing from mycelium_private.transfers t
  where t.retry_key = mycelium_private.retry_key('purchase', null, v_user, v_reference);
  if v_existing is null then
    if v_user is null then
      perform mycelium_private.fail('invalid_argument', 'user_id is required');
    end if;

    if purchase_credits.package_id is not null then
      select * into v_package from public.credit_packages p where p.id = purchase_credits.package_id;
      if not found then
        perform mycelium_private.fail('not_found', 'no credit package has id ' || purchase_credits.package_id, 404);
      elsif not v_package.active then
        perform mycelium_private.fail('package_inactive', 'credit package ' || v_package.name || ' is not on sale', 409);
      elsif v_package.price_usd <> v_usd then
        perform mycelium_private.fail('invalid_argument',
          format('usd_amount %s does not match the price %s of package %s', v_usd, v_package.price_usd, v_package.name));
      end if;
      if v_package.expires_after is not null then
        v_expires := now() + v_package.expires_after;
      end if;
    end if;

    select c.tfc_to_usd_rate into v_rate from public.credit_config c where c.id;
    v_credits := trim_scale(mycelium_private.divide_truncated(v_usd, v_rate, 6) + coalesce(v_package.bonus_credits, 0));
    if v_credits <= 0 then
      perform mycelium_private.fail('invalid_amount', 'usd_amount buys less than 0.000001 credits');
    elsif v_credits >= 1e15 then
      perform mycelium_private.fail('invalid_amount', 'usd_amount buys more than the maximum amount of credits');
    end if;

    v_moved := mycelium_private.create_transfer('purchase', v_credits, p_from_system => 'issuance', p_to_user => v_user,
      p_reference => v_reference, p_expires_at => v_expires,
      p_usd_amount => v_usd, p_rate => v_rate, p_package_id => purchase_credits.package_id);
    if not v_moved.replayed then
      return mycelium_private.movement_object(v_moved.transfer_id, 'purchase', v_credits, null, v_user, v_usd,
        purchase_credits.package_id, null, v_reference, v_expires, v_moved.created_at, v_moved.to_balance);
    end if;
    -- A concurrent call with the same reference won; it has committed: replay it.
    v_existing := v_moved.transfer_id;
  end if;
  return mycelium_private.replay_movement(v_existing, v_user,
    jsonb_build_object('to_user', v_user, 'usd_amount', v_usd, 'package_id', purchase_credits.package_id),
    'payment_reference was already used for a different purchase');
end;
$$;

-- ---------------------------------------------------------------------------------------
-- rpc/transfer_credits: the signed-in user sends credits to another user. Credits keep their
-- expiry: what the sender's expiring lots give becomes lots of the recipient with the same
-- expires_at, so a transfer never makes expiring credits permanent. Most senders have none, and
-- then the recipient's side is one UPDATE of its account row.
-- ---------------------------------------------------------------------------------------
create or replace function public.transfer_credits(
  recipient uuid,
  amount numeric,
  memo text default null,
  idempotency_key text default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  p_sender uuid := mycelium_private.require_signed_in('transfer credits');
  p_recipient uuid := transfer_credits.recipient;
  v_amount numeric;
  v_memo text;
  v_key text;
  v_moved record;
begin
  v_amount := mycelium_private.check_amount(transfer_credits.amount);
  v_memo := mycelium_private.check_text(transfer_credits.memo, 'memo', 500);
  v_key := mycelium_private.check_text(transfer_credits.idempotency_key, 'idempotency_key', 200);
  if p_recipient is null then
    perform mycelium_private.fail('invalid_argument', 'recipient is required');
  end if;
  if p_recipient = p_sender then
    perform mycelium_private.fail('self_transfer', 'cannot transfer credits to yourself');
  end if;

  -- A missing recipient account fails the whole transfer (unknown_recipient); a retry with the
  -- same key returns the first transfer before anything is taken.
  v_moved := mycelium_private.create_transfer('transfer', v_amount, p_from_user => p_sender, p_to_user => p_recipient,
    p_reference => v_key, p_memo => v_memo);
  if v_moved.replayed then
    return mycelium_private.replay_movement(v_moved.transfer_id, p_sender,
      jsonb_build_object('to_user', p_recipient, 'amount', v_amount),
      'idempotency_key was already used for a different transfer');
  end if;
  return mycelium_private.movement_object(v_moved.transfer_id, 'transfer', v_amount, p_sender, p_recipient, null, null,
    v_memo, v_key, null, v_moved.created_at, v_moved.from_balance);
end;
$$;

-- ---------------------------------------------------------------------------------------
-- rpc/grant_credits: admins and service_role; promotional credits, optionally expiring.
-- The same idempotency_key for the same user returns the first grant and moves nothing.
-- ---------------------------------------------------------------------------------------
create or replace function public.grant_credits(
  user_id uuid,
  amount numeric,
  reason text,
  expires_at timestamptz default null,
  idempotency_key text default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_user uuid := grant_credits.user_id;
  v_amount numeric;
  v_reason text;
  v_key text;
  v_expires timestamptz := grant_credits.expires_at;
  v_moved record;
begin
  perform mycelium_private.require_admin();
  v_amount := mycelium_private.check_amount(grant_credits.amount);
  v_reason := mycelium_private.check_text(grant_credits.reason, 'reason', 500, true);
  v_key := mycelium_private.check_text(grant_credits.idempotency_key, 'idempotency_key', 200);
  if v_expires is not null and (v_expires <= now() or v_expires = 'infinity'::timestamptz) then
    perform mycelium_private.fail('invalid_argument', 'expires_at must be a finite time in the future');
  end if;
  if v_user is null then
    perform mycelium_private.fail('invalid_argument', 'user_id is required');
  end if;

  v_moved := mycelium_private.create_transfer('grant', v_amount, p_from_system => 'issuance', p_to_user => v_user,
    p_reference => v_key, p_memo => v_reason, p_expires_at => v_expires);
  if v_moved.replayed then
    return mycelium_private.replay_movement(v_moved.transfer_id, v_user,
      jsonb_build_object('amount', v_amount, 'expires_at', v_expires),
      'idempotency_key was already used for a different grant to this user');
  end if;
  return mycelium_private.movement_object(v_moved.transfer_id, 'grant', v_amount, null, v_user, null, null,
    v_reason, v_key, v_expires, v_moved.created_at, v_moved.to_balance);
end;
$$;

revoke execute on function public.purchase_credits(uuid, numeric, text, uuid)
  from public, anon, authenticated;
grant execute on function public.purchase_credits(uuid, numeric, text, uuid) to service_role;
revoke execute on function public.transfer_credits(uuid, numeric, text, text) from public, anon, service_role;
grant execute on function public.transfer_credits(uuid, numeric, text, text) to authenticated;
revoke execute on function public.grant_credits(uuid, numeric, text, timestamptz, text) from public, anon;
grant execute on function public.grant_credits(uuid, numeric, text, timestamptz, text)
  to authenticated, service_role;

-- ---------------------------------------------------------------------------------------
-- rpc/expire_credits: what is left of a lot past its expires_at is not spendable; the sweep
-- moves it to the system account `expiry`, once, and the user sees an `expiry` movement.
-- One call sweeps about `max_lots` lots (a user's lots go together, so the last user may take it
-- over): a call stays well inside the API's statement timeout however many lots expire at once.
-- Call again while lots_expired >= max_lots.
-- ---------------------------------------------------------------------------------------
create or replace function public.expire_credits(
  as_of timestamptz default now(), max_lots integer default 1000)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_as_of timestamptz := expire_credits.as_of;
  v_max integer := expire_credits.max_lots;
  v_user uuid;
  v_lot record;
  v_lots integer := 0;
  v_users integer := 0;
  v_total numeric := 0;
begin
  perform mycelium_private.require_service();
  perform mycelium_private.check_batch(v_as_of, v_max, 'max_lots', 100000);

  -- Each user with a lot to sweep gives at least one: max_lots users are enough for max_lots lots.
  for v_user in
    select distinct l.user_id from public.credit_lots l
    where l.live and l.expires_at <= v_as_of
    order by l.user_id
    limit v_max
  loop
    exit when v_lots >= v_max;
    perform mycelium_private.lock_account(v_user);
    -- Re-read under the account lock: a concurrent sweep may have taken these lots already.
    for v_lot in
      select l.id, l.remaining, l.expires_at from public.credit_lots l
      where l.user_id = v_user and l.live and l.expires_at <= v_as_of
      order by l.expires_at, l.id
    loop
      perform mycelium_private.create_transfer('expiry', v_lot.remaining, p_from_user => v_user, p_to_system => 'expiry',
        p_reference => 'lot:' || v_lot.id, p_memo => 'credits expired', p_expires_at => v_lot.expires_at);
      v_lots := v_lots + 1;
      v_total := v_total + v_lot.remaining;
    end loop;
    -- A concurrent sweep may have taken this user's lots already: counted only if some were left.
    if found then
      v_users := v_users + 1;
    end if;
  end loop;

  return jsonb_build_object('as_of', v_as_of, 'lots_expired', v_lots, 'users', v_users, 'credits_expired', v_total);
end;
$$;

revoke execute on function public.expire_credits(timestamptz, integer) from public, anon, authenticated;
grant execute on function public.expire_credits(timestamptz, integer) to service_role;
revoke execute on all functions in schema mycelium_private from public;
