-- The ledger's write path, cheaper for its commonest movement (issue 21): a transfer between two
-- users whose sender holds no expiring credits. create_transfer now writes the two accounts'
-- UPDATEs itself instead of calling debit_user and credit_user for them: a plpgsql call sets up
-- its frame and its expressions again in every transaction, and these two calls were about a
-- tenth of a PostgREST-shaped transfer's time (docs/performance.md, bench/profile_ledger.py).
-- Signature, results, lock order (ascending user_id), entries and broadcasts are unchanged;
-- debit_user still takes every other sender (expiring credits to pass on as lots, too few
-- credits), and credit_user every movement from a system account.

create or replace function mycelium_private.create_transfer(
  p_kind text,
  p_amount numeric,
  p_from_user uuid default null,
  p_from_system text default null,
  p_to_user uuid default null,
  p_to_system text default null,
  p_reference text default null,
  p_memo text default null,
  p_expires_at timestamptz default null,
  p_lots_last boolean default false,
  p_counterparty uuid default null,
  p_holder uuid default null,
  p_held numeric default null,
  p_gives_back_hold boolean default false,
  p_usd_amount numeric default null,
  p_rate numeric default null,
  p_package_id uuid default null,
  out transfer_id uuid,
  out created_at timestamptz,
  out from_balance numeric,
  out to_balance numeric,
  out replayed boolean)
language plpgsql
as $$
declare
  v_held numeric := 0;    -- the change of the holder's `held`
  v_debit record;
  v_passed numeric := 0;  -- what the sender's expiring lots gave, reaching the recipient as lots
  v_late numeric := 0;    -- expiring credits the recipient's balance held before its lots came
begin
  if p_holder is not null or p_from_system = 'holds' or p_to_system = 'holds' or p_gives_back_hold then
    if (p_holder is null) <> (p_from_system is distinct from 'holds' and p_to_system is distinct from 'holds')
       or (p_to_system = 'holds' and p_holder is distinct from p_from_user)
       or ((p_to_system = 'holds' or p_gives_back_hold) and p_reference is null)
       or (p_gives_back_hold and p_to_user is null) then
      perform mycelium_private.fail('invalid_argument',
        'a movement into or out of holds names its holder (going in: the sender), and a hold its reference');
    end if;
    if p_holder is not null then
      v_held := coalesce(p_held, case when p_to_system = 'holds' then p_amount else -p_amount end);
    end if;
  end if;

  -- Claim the retry key first: a concurrent movement with the same key waits on the unique index
  -- until this transaction ends, then finds this one.
  insert into mycelium_private.transfers as t
    (kind, from_user, from_system, to_user, to_system, amount, usd_amount, rate, package_id, memo, reference,
     expires_at, initiated_by, initiated_role)
  values
    (p_kind, p_from_user, p_from_system, p_to_user, p_to_system, p_amount, p_usd_amount, p_rate, p_package_id,
     p_memo, p_reference, p_expires_at, auth.uid(), mycelium_private.caller_role())
  on conflict (retry_key) where retry_key is not null do nothing
  returning t.id, t.created_at into transfer_id, created_at;
  replayed := transfer_id is null;
  if replayed then
    select t.id, t.created_at into transfer_id, created_at from mycelium_private.transfers t
    where t.retry_key = mycelium_private.retry_key(p_kind, p_from_user, p_to_user, p_reference);
    return;
  end if;

  if p_from_user is not null and p_to_user is not null then
    -- Between two users (a transfer, a refund): the two accounts in user_id order.
    -- The accounts' UPDATEs are written out here rather than called (debit_user's first step,
    -- credit_user's without lots), as almost every transfer is this: a plpgsql call costs each
    -- transaction its setup again. debit_user takes over where the sender holds expiring credits
    -- or too few.
    if p_from_user > p_to_user then
      update public.credit_accounts a set balance = a.balance + p_amount, updated_at = now()
      where a.user_id = p_to_user
      returning a.balance into to_balance;
      if not found then
        perform mycelium_private.fail('unknown_recipient', 'no user with a credit account has id ' || p_to_user, 404);
      end if;
    end if;
    update public.credit_accounts a set balance = a.balance - p_amount, updated_at = now()
    where a.user_id = p_from_user and a.expiring = 0 and a.balance >= p_amount
    returning a.balance into from_balance;
    if not found then
      v_debit := mycelium_private.debit_user(p_from_user, p_amount, 0, null, p_to_user, transfer_id, p_lots_last);
      from_balance := v_debit.balance;
      v_passed := v_debit.from_lots;
    end if;
    if p_from_user < p_to_user then
      update public.credit_accounts a set balance = a.balance + p_amount, expiring = a.expiring + v_passed, updated_at = now()
      where a.user_id = p_to_user
      returning a.balance into to_balance;
      if not found then
        perform mycelium_private.fail('unknown_recipient', 'no user with a credit account has id ' || p_to_user, 404);
      end if;
    else
      v_late := v_passed;
    end if;
    insert into public.credit_transactions
      (transfer_id, user_id, amount, kind, balance_after, counterparty_id, memo, reference, expires_at)
    values
      (transfer_id, p_from_user, -p_amount, case when p_kind = 'transfer' then 'transfer_out' else p_kind end,
       from_balance, p_to_user, p_memo, p_reference, null),
      (transfer_id, p_to_user, p_amount, case when p_kind = 'transfer' then 'transfer_in' else p_kind end,
       to_balance, p_from_user, p_memo, case when p_kind = 'transfer' then null else p_reference end, null);
  elsif p_to_user is not null then
    -- From a system account to a user (issuance, a hold going back or paid out, a refunded fee).
    if p_holder is null then
      to_balance := mycelium_private.credit_user(p_to_user, p_amount, p_expires_at, transfer_id, 0, 0);
    else
      -- Out of holds: the holder's held goes down, with the recipient's balance if it is the holder
      -- (a release), else in user_id order with the recipient's account (a capture).
      if p_holder < p_to_user and v_held <> 0 then
        update public.credit_accounts a set held = a.held + v_held, updated_at = now() where a.user_id = p_holder;
      end if;
      to_balance := mycelium_private.credit_user(p_to_user, p_amount, p_expires_at, transfer_id, 0,
        case when p_holder = p_to_user then v_held else 0 end);
      if p_holder > p_to_user and v_held <> 0 then
        update public.credit_accounts a set held = a.held + v_held, updated_at = now() where a.user_id = p_holder;
      end if;
    end if;
    insert into public.credit_transactions
      (transfer_id, user_id, amount, kind, balance_after, counterparty_id, memo, reference, expires_at)
    values (transfer_id, p_to_user, p_amount, p_kind, to_balance, p_counterparty, p_memo, p_reference, p_expires_at);
  elsif p_from_user is not null then
    -- From a user to a system account (expiry, a hold).
    if p_expires_at is not null then
      from_balance := mycelium_private.debit_lot(p_from_user, p_amount, p_expires_at);
    else
      from_balance := (mycelium_private.debit_user(p_from_user, p_amount, v_held,
        case when p_to_system = 'holds' then p_reference end, null, transfer_id, p_lots_last)).balance;
    end if;
    insert into public.credit_transactions
      (transfer_id, user_id, amount, kind, balance_after, counterparty_id, memo, reference, expires_at)
    values (transfer_id, p_from_user, -p_amount, p_kind, from_balance, p_counterparty, p_memo, p_reference, p_expires_at);
  elsif v_held <> 0 then
    -- Between system accounts (a capture's fee): only the holder's held credits may change.
    update public.credit_accounts a set held = a.held + v_held, updated_at = now() where a.user_id = p_holder;
  end if;

  if v_late > 0 or p_gives_back_hold then
    if p_gives_back_hold then
      v_late := v_late + mycelium_private.give_back_hold_lots(p_reference, p_to_user, p_amount - v_passed, transfer_id);
    end if;
    if v_late > 0 then
      -- The recipient's balance holds these credits already: its lots can count as expiring now.
      update public.credit_accounts a set expiring = a.expiring + v_late where a.user_id = p_to_user;
    end if;
  end if;
end;
$$;
