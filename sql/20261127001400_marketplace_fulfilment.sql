-- Marketplace, part 5: what happens to a hold. Captured by fulfil_order; released in full by
-- cancel_order, fail_order and release_expired_holds; a captured order may then be refunded.
--
-- Capture: the fee is the order's snapshotted fee_percent of the total, rounded to 6 decimals;
-- the provider receives total - fee (`provider_earning`, holds -> provider) and the platform the
-- fee (`platform_fee`, holds -> platform_revenue, a derived system account: no row, so a popular
-- provider's orders serialise only on that provider's own account).
-- Release: `order_release` (holds -> buyer); the credits come back with the expiry they had
-- (the hold's lots): non-expiring as non-expiring credits, expiring ones as lots with their
-- old expires_at (already past: swept by the next expire_credits, as they would have been).
-- Refund: `refund` transfers to the buyer from the provider and from platform_revenue, in the
-- proportion of the fee. The platform's cumulative part is computed from the cumulative refunded
-- amount (the last refund takes exactly what is left of the fee), the provider's part is the
-- rest: every part has 6 decimals, the parts sum exactly to each refund and, refund after refund,
-- to exactly what was paid. A refund never makes expiring credits permanent: it takes the
-- provider's part from their credits that never expire first (it takes back an earning, which
-- never expires) and only then from their expiring lots, which reach the buyer as lots with the
-- same expiry; as far as the refund goes beyond those, the buyer gets back as lots what they paid
-- from expiring lots (the hold's lots, latest expiry first: the spending took the soonest first),
-- with their old expiry even when it is past (swept by the next expire_credits, as after a
-- release). A provider's earnings themselves never expire, so promotional credits spent on an
-- order become the provider's for good: that is what they are for.
-- Every movement is a call of the ledger's write path (mycelium_private.create_transfer).

-- Give back an order's hold in full; the order is locked by the caller.
create or replace function mycelium_private.release_hold(p_order public.orders, p_to text, p_reason text)
returns jsonb
language plpgsql
as $$
begin
  perform mycelium_private.change_units_in_use(p_order.id, -1);
  perform mycelium_private.create_transfer('order_release', p_order.held_amount, p_from_system => 'holds',
    p_to_user => p_order.buyer_id, p_reference => p_order.id::text, p_memo => p_reason,
    p_counterparty => p_order.provider_id, p_holder => p_order.buyer_id, p_gives_back_hold => true);
  update public.orders o set status = p_to, held_amount = 0, updated_at = now() where o.id = p_order.id;
  perform mycelium_private.record_order_status(p_order.id, p_order.status, p_to, p_reason);
  return mycelium_private.order_object(p_order.id);
end;
$$;

-- ---------------------------------------------------------------------------------------
-- rpc/fulfil_order: the order's provider or service_role (the provisioning service) captures
-- the hold. A hold is captured once: a repeated call (a retry after a lost response) returns the
-- fulfilled order and moves nothing; from any other state it is invalid_transition.
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

-- ---------------------------------------------------------------------------------------
-- rpc/cancel_order: the buyer, while the order is pending. rpc/fail_order: the provider or
-- service_role, when provisioning failed. Both release the hold in full.
-- ---------------------------------------------------------------------------------------
create or replace function public.cancel_order(order_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_order public.orders := mycelium_private.lock_order(cancel_order.order_id);
begin
  perform mycelium_private.authorize(v_order.buyer_id = auth.uid(),
    'only the buyer cancels an order (providers: fail_order)');
  if mycelium_private.is_retry(v_order, 'cancelled') then
    return mycelium_private.order_object(v_order.id);
  end if;
  return mycelium_private.release_hold(v_order, 'cancelled', 'cancelled by the buyer');
end;
$$;

create or replace function public.fail_order(order_id uuid, reason text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_order public.orders := mycelium_private.lock_order(fail_order.order_id);
  v_reason text := mycelium_private.check_text(fail_order.reason, 'reason', 500, true);
begin
  perform mycelium_private.authorize(v_order.provider_id = auth.uid() or mycelium_private.is_service(),
    'only the order''s provider or service_role fail an order');
  if mycelium_private.is_retry(v_order, 'failed') then
    return mycelium_private.order_object(v_order.id);
  end if;
  return mycelium_private.release_hold(v_order, 'failed', v_reason);
end;
$$;

-- ---------------------------------------------------------------------------------------
-- rpc/release_expired_holds(as_of, max_orders): service_role. Cancels orders pending since before
-- as_of - hold_ttl, oldest first, at most max_orders per call (call again while orders_released
-- is max_orders). Orders being fulfilled right now are skipped, not waited for. Every lock is taken in
-- the global order (orders, products, accounts) before anything moves, so it cannot deadlock
-- with orders placed, fulfilled or refunded meanwhile.
-- ---------------------------------------------------------------------------------------
create or replace function public.release_expired_holds(
  as_of timestamptz default now(), max_orders integer default 1000)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_as_of timestamptz := release_expired_holds.as_of;
  v_max integer := release_expired_holds.max_orders;
  v_ttl interval := (select c.hold_ttl from public.marketplace_config c where c.id);
  v_ids uuid[];
  v_order public.orders;
  v_credits numeric := 0;
begin
  perform mycelium_private.require_service();
  perform mycelium_private.check_batch(v_as_of, v_max, 'max_orders', 10000);
  select coalesce(array_agg(x.id), '{}') into v_ids from (
    select o.id from public.orders o
    where o.status = 'pending' and o.created_at < v_as_of - v_ttl
    order by o.created_at
    limit v_max
    for no key update skip locked) x;
  perform 1 from public.products p
  where p.capacity is not null and p.id in (select i.product_id from public.order_items i where i.order_id = any(v_ids))
  order by p.id for no key update;
  perform 1 from public.credit_accounts a
  where a.user_id in (select o.buyer_id from public.orders o where o.id = any(v_ids))
  order by a.user_id for no key update;
  for v_order in select * from public.orders o where o.id = any(v_ids) order by o.created_at loop
    v_credits := v_credits + v_order.held_amount;
    perform mycelium_private.release_hold(v_order, 'cancelled', 'hold expired');
  end loop;
  return jsonb_build_object('as_of', v_as_of, 'hold_ttl', v_ttl, 'orders_released', cardinality(v_ids),
                            'credits_released', v_credits);
end;
$$;

-- ---------------------------------------------------------------------------------------
-- rpc/refund_order(order_id, reason, amount, idempotency_key): an admin, service_role or the
-- order's provider, after fulfilment. amount null: everything not refunded yet. The same
-- idempotency_key for the same order returns the order and moves nothing.
-- ---------------------------------------------------------------------------------------
create or replace function public.refund_order(
  order_id uuid, reason text, amount numeric default null, idempotency_key text default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_order public.orders := mycelium_private.lock_order(refund_order.order_id);
  v_reason text;
  v_key text;
  v_previous public.order_refunds;
  v_amount numeric;
  v_refunded numeric;
  v_fee_refunded numeric;
  v_platform numeric;
  v_provider numeric;
  v_to text;
begin
  perform mycelium_private.authorize(v_order.provider_id = auth.uid() or mycelium_private.is_admin_or_service(),
    'only admins and the order''s provider refund an order');
  v_reason := mycelium_private.check_text(refund_order.reason, 'reason', 500, true);
  v_key := mycelium_private.check_text(refund_order.idempotency_key, 'idempotency_key', 200);
  if refund_order.amount is not null then
    v_amount := mycelium_private.check_amount(refund_order.amount);
  end if;
  if v_key is not null then
    select * into v_previous from public.order_refunds r where r.order_id = v_order.id and r.idempotency_key = v_key;
    if found then
      if v_amount is not null and v_amount <> v_previous.amount then
        perform mycelium_private.fail('duplicate_reference',
          'idempotency_key was already used for a different refund of this order', 409);
      end if;
      return mycelium_private.order_object(v_order.id);
    end if;
  end if;
  if v_order.status not in ('fulfilled', 'partially_refunded') then
    perform mycelium_private.refuse_transition(v_order, 'refunded');
  end if;
  v_amount := coalesce(v_amount, v_order.total - v_order.refunded_amount);
  if v_amount > v_order.total - v_order.refunded_amount then
    perform mycelium_private.fail('refund_exceeds_paid',
      format('order %s has %s left to refund, %s asked', v_order.id, v_order.total - v_order.refunded_amount, v_amount), 409);
  end if;

  v_refunded := v_order.refunded_amount + v_amount;
  v_fee_refunded := case when v_refunded = v_order.total then v_order.fee_amount
                         else mycelium_private.divide_rounded(v_refunded * v_order.fee_amount, v_order.total, 6) end;
  v_platform := v_fee_refunded - v_order.fee_refunded;
  v_provider := v_amount - v_platform;
  v_to := case when v_refunded = v_order.total then 'refunded' else 'partially_refunded' end;

  if v_to = 'refunded' then
    perform mycelium_private.change_units_in_use(v_order.id, -1);
  end if;
  -- From the provider's credits that never expire first (the refund takes back an earning);
  -- what their expiring lots must give reaches the buyer as lots, as in a transfer. Beyond those,
  -- the buyer gets back as lots what the hold took from their expiring lots.
  if v_provider > 0 then
    perform mycelium_private.create_transfer('refund', v_provider, p_from_user => v_order.provider_id,
      p_to_user => v_order.buyer_id, p_reference => v_order.id::text, p_memo => v_reason, p_lots_last => true,
      p_gives_back_hold => true);
  end if;
  if v_platform > 0 then
    perform mycelium_private.create_transfer('refund', v_platform, p_from_system => 'platform_revenue',
      p_to_user => v_order.buyer_id, p_reference => v_order.id::text, p_memo => v_reason, p_gives_back_hold => true);
  end if;

  insert into public.order_refunds
    (order_id, amount, provider_part, platform_part, reason, idempotency_key, refunded_by, refunded_role)
  values (v_order.id, v_amount, v_provider, v_platform, v_reason, v_key, auth.uid(), mycelium_private.caller_role());
  update public.orders o
  set status = v_to, refunded_amount = v_refunded, fee_refunded = v_fee_refunded, updated_at = now()
  where o.id = v_order.id;
  perform mycelium_private.record_order_status(v_order.id, v_order.status, v_to, v_reason);
  return mycelium_private.order_object(v_order.id);
end;
$$;

revoke execute on function public.fulfil_order(uuid), public.cancel_order(uuid),
  public.fail_order(uuid, text), public.refund_order(uuid, text, numeric, text),
  public.release_expired_holds(timestamptz, integer)
  from public, anon;
grant execute on function public.fulfil_order(uuid), public.fail_order(uuid, text),
  public.refund_order(uuid, text, numeric, text) to authenticated, service_role;
grant execute on function public.cancel_order(uuid) to authenticated;
revoke execute on function public.cancel_order(uuid) from service_role;
revoke execute on function public.release_expired_holds(timestamptz, integer) from authenticated;
grant execute on function public.release_expired_holds(timestamptz, integer) to service_role;
revoke execute on all functions in schema mycelium_private from public;
