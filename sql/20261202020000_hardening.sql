-- Hardening: four holes of release 0.1.0, closed without changing any shape clients read.
--
-- 1. Admins' user ids were public: `updated_by` of credit_config, display_currencies and
--    marketplace_config, which anyone (anon too) reads. Who changed a configuration is now only
--    in its `<table>_history`, which admins alone read; display_currencies gets that history
--    too. `updated_by` stays (clients read these tables with `select=*`, which fails on a column
--    they may not read), always null: deprecated, dropped in a later release (expand, contract).
-- 2. tfc_to_usd(amount) and display_prices(amount) took NaN, infinities, negative amounts and
--    excess precision: they now refuse them as every amount is refused (invalid_amount), zero
--    still allowed (an empty balance is shown in USD).
-- 3. The Realtime policy on realtime.messages let a user read every message, of any topic, while
--    the topic they join was their own: a message is now readable only on its own topic.
-- 4. A refund whose provider has already sent their earnings away failed with
--    insufficient_credits, as though the caller lacked credits: it now says what is short
--    (provider_funds_short, 409, with the shortfall) and still changes nothing. Balances never go
--    negative; the provider's account is funded first (grant_credits), then the refund retried.

-- ---------------------------------------------------------------------------------------
-- 1. The configurations' actors, in the admins' histories only.
-- ---------------------------------------------------------------------------------------

-- display_currencies' history, as make_configuration() gives a configuration table, recorded by
-- the same trigger; a currency is added and removed, so a change may have no old or no new row.
create table public.display_currencies_history (
  id bigint generated always as identity primary key,
  changed_at timestamptz not null default now(),
  changed_by uuid,
  changed_by_role text,
  old_config jsonb,
  new_config jsonb
);
comment on table public.display_currencies_history is
  'Every change of display_currencies: who, when, old, new (null when added, removed). Admins only.';
alter table public.display_currencies_history enable row level security;
revoke all on public.display_currencies_history from anon, authenticated, service_role;
revoke all on sequence public.display_currencies_history_id_seq from anon, authenticated, service_role;
grant select on public.display_currencies_history to authenticated, service_role;
create policy display_currencies_history_admins on public.display_currencies_history
  for select to authenticated using ((select public.is_admin()));
create trigger display_currencies_history_append_only
  before update or delete or truncate on public.display_currencies_history
  for each statement execute function mycelium_private.refuse_change();
create trigger record_changes after insert or update or delete on public.display_currencies
  for each row execute function mycelium_private.record_config_change();

comment on column public.credit_config.updated_by is
  'Deprecated, always null; dropped in a later release. Who changed the row: credit_config_history (admins).';
comment on column public.marketplace_config.updated_by is
  'Deprecated, always null; dropped in a later release. Who changed the row: marketplace_config_history (admins).';
comment on column public.display_currencies.updated_by is
  'Deprecated, always null; dropped in a later release. Who changed the row: display_currencies_history (admins).';

-- Whatever writes a configuration row (a setter of any version, an operator) leaves updated_by
-- null: its history trigger records the caller. Enforced here rather than in each setter, so
-- that a setter redefined later cannot bring the id back.
create or replace function mycelium_private.clear_updated_by()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  new.updated_by := null;
  return new;
end;
$$;

create trigger updated_by_deprecated before insert or update on public.credit_config
  for each row execute function mycelium_private.clear_updated_by();
create trigger updated_by_deprecated before insert or update on public.marketplace_config
  for each row execute function mycelium_private.clear_updated_by();
create trigger updated_by_deprecated before insert or update on public.display_currencies
  for each row execute function mycelium_private.clear_updated_by();

-- The values written so far go; each history keeps them (the old_config of this update).
update public.credit_config set updated_by = null
where updated_by is not null;
update public.marketplace_config set updated_by = null
where updated_by is not null;
update public.display_currencies set updated_by = null
where updated_by is not null;

-- ---------------------------------------------------------------------------------------
-- 2. Amounts shown in USD and the display currencies: the rules of every amount, and zero.
-- ---------------------------------------------------------------------------------------

-- An amount to display: zero (an empty balance), or an amount check_amount() accepts; null
-- stays null. Returns it without trailing zeros.
create or replace function mycelium_private.check_display_amount(amount numeric)
returns numeric
language plpgsql
immutable
as $$
begin
  if amount is null or amount = 0 then
    return amount;
  end if;
  if amount < 0 and amount <> '-Infinity'::numeric then
    perform mycelium_private.fail('invalid_amount', 'amount must not be negative');
  end if;
  return mycelium_private.check_amount(amount);
end;
$$;

create or replace function public.tfc_to_usd(amount numeric)
returns numeric
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  return mycelium_private.check_display_amount(amount)
         * (select c.tfc_to_usd_rate from public.credit_config c where c.id);
end;
$$;

create or replace function public.display_prices(amount numeric)
returns jsonb
language sql
stable
security definer
set search_path = ''
as $$
  select jsonb_build_object('TFC', a.amount, 'USD', a.amount * r.rate)
         || coalesce((select jsonb_object_agg(c.code, mycelium_private.divide_rounded(a.amount * r.rate, c.usd_per_unit, c.decimals))
                      from public.display_currencies c where c.code <> 'USD'), '{}'::jsonb)
  from (select mycelium_private.check_display_amount(display_prices.amount) as amount) a,
       (select cfg.tfc_to_usd_rate as rate from public.credit_config cfg where cfg.id) r
$$;

-- ---------------------------------------------------------------------------------------
-- 3. Broadcast: a message is read on its own topic only. Realtime authorizes a join by reading
-- messages with realtime.topic() set to the topic joined; without `topic = realtime.topic()`
-- the policy opened every message to whoever may join their own topic.
-- ---------------------------------------------------------------------------------------
alter policy mycelium_balance_broadcast_own on realtime.messages
  using (
    topic = (select realtime.topic())
    and (select realtime.topic()) = 'balance:' || (select auth.uid())::text
    and extension = 'broadcast'
  );

-- ---------------------------------------------------------------------------------------
-- 4. rpc/refund_order: as before, and when the provider's spendable credits cannot pay their
-- part, provider_funds_short (409) with the shortfall, instead of insufficient_credits.
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
  v_spendable numeric;
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
    -- Only the provider's debit can lack credits. Its own check, under the account's lock, is the
    -- one that counts: a check before it would lock the provider out of user_id order, or race.
    begin
      perform mycelium_private.create_transfer('refund', v_provider, p_from_user => v_order.provider_id,
        p_to_user => v_order.buyer_id, p_reference => v_order.id::text, p_memo => v_reason, p_lots_last => true,
        p_gives_back_hold => true);
    exception when sqlstate 'PGRST' then
      if sqlerrm::jsonb ->> 'code' is distinct from 'insufficient_credits' then
        raise;
      end if;
      v_spendable := mycelium_private.spendable(v_order.provider_id);
      perform mycelium_private.fail('provider_funds_short',
        format('the provider has %s spendable credits and owes %s of this refund of %s: %s short; credit the '
               || 'provider the difference (grant_credits), then refund again',
               trim_scale(v_spendable), trim_scale(v_provider), v_amount, trim_scale(v_provider - v_spendable)), 409);
    end;
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
comment on function public.refund_order(uuid, text, numeric, text) is
  'Refunds a fulfilled order, fully (amount null) or in part, from the provider and the fee in proportion. '
  'Balances never go negative: when the provider''s spendable credits cannot pay their part, it changes '
  'nothing and fails with provider_funds_short (409), naming the shortfall; credit the provider the '
  'difference (grant_credits), then refund again.';

revoke execute on all functions in schema mycelium_private from public;
