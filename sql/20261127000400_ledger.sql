-- Credits: the double-entry ledger, its read surface, and its one write path
-- (mycelium_private.create_transfer, at the end: every movement of credits is a call of it).
--
-- Every movement is one row in mycelium_private.transfers: a positive amount from one account
-- to another. An account is either a user (credit_accounts.user_id) or a system account
-- (issuance, platform_revenue, expiry, holds). User accounts keep their balance, updated in the
-- same transaction, and each user side of a transfer is an entry in public.credit_transactions
-- that records the balance it produced. System accounts have no row (no hot row serialising every
-- purchase): their balance is derived from the transfers. So the sum over all accounts is zero
-- by construction, and audit_ledger() checks that the stored user balances agree.
--
-- Holds (two-phase payments: authorise, then capture; the marketplace pays orders with them): a
-- hold is a transfer from a user to the system account `holds`, named by its reference; the
-- user's balance goes down and their `held` column up by the same amount. Capturing it moves
-- credits out of `holds` to others; releasing it moves them back to the holder. So `held` is a
-- memo of what sits in `holds` for each user: the derived balance of `holds` equals the sum of
-- `held`, which audit_ledger() checks. The marketplace's movements are `order_hold`,
-- `provider_earning` plus `platform_fee` (the capture), `order_release` and `refund`.
--
-- Lots: credits with an expiry (from a grant or a purchase) each form a lot (public.credit_lots),
-- and keep it when they move to another user (a transfer, a refund: the recipient gets lots);
-- the account's `expiring` column is what its lots still hold, and the rest of its balance,
-- `balance - expiring`, is its one lot of non-expiring credits. So an account's balance is always
-- the sum of its lots, and a movement of non-expiring credits (almost every one) writes only the
-- account row: no second row to update while the account is locked, which is what bounds the
-- rate of transfers into one popular account.
--
-- The ledger's column rules are domains, not table CHECKs: PostgreSQL parses a table's CHECKs
-- again for every statement that writes it, a domain's once per connection, and every movement
-- writes both ledger tables. Rules across columns stay CHECKs. credit_accounts keeps plain
-- numeric columns: Realtime sends its rows to dashboards with their column types.
-- Kinds are domains over text, not enums: a new enum value cannot be used in the transaction
-- that adds it, and a push is one transaction. They are the ledger's whole vocabulary, the kinds
-- the marketplace and the legacy import record included (a domain's list is replaced whole, not
-- extended): to add one, `alter domain ... drop constraint`, add the new list `not valid`, then
-- validate it.
--
-- Lock order: a movement updates the user accounts it touches in ascending user_id order (the
-- UPDATE of the balance is the lock), and touches lots only after its account's lock. So two
-- transfers between the same accounts in opposite directions never deadlock.

create domain public.credit_amount as numeric
  check (value <> 'NaN'::numeric and value > 0 and value < 1e15 and scale(value) <= 6);
comment on domain public.credit_amount is 'A movement''s amount of credits: positive, at most 6 decimals, below 1e15.';
create domain public.credit_entry_amount as numeric check (value <> 0 and value <> 'NaN'::numeric);
comment on domain public.credit_entry_amount is 'An entry''s signed amount: positive in, negative out.';
create domain public.credit_balance as numeric check (value >= 0 and value < 'Infinity'::numeric);
create domain public.credit_transfer_kind as text check (value in (
  'purchase', 'grant', 'transfer', 'expiry', 'legacy_migration',
  'order_hold', 'order_release', 'provider_earning', 'platform_fee', 'refund', 'adjustment'));
create domain public.credit_entry_kind as text check (value in (
  'purchase', 'grant', 'transfer_in', 'transfer_out', 'expiry', 'legacy_migration',
  'order_hold', 'order_release', 'provider_earning', 'refund', 'adjustment'));
create domain public.credit_system_account as text
  check (value in ('issuance', 'platform_revenue', 'expiry', 'holds'));

create table public.credit_accounts (
  user_id uuid primary key,
  balance numeric not null default 0 check (balance >= 0 and balance < 'Infinity'::numeric),
  held numeric not null default 0 check (held >= 0 and held < 'Infinity'::numeric),
  expiring numeric not null default 0 check (expiring >= 0 and expiring <= balance),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
) with (fillfactor = 70);
comment on table public.credit_accounts is
  'One credit account per user: balance, of which `expiring` sits in lots that expire (credit_lots), '
  'and credits held for open orders (not in balance).';

-- The key that makes a movement safe to retry, unique over the ledger: a purchase's payment
-- reference, an expired lot, a migrated legacy account; a transfer's key per sender and a grant's
-- per recipient. Null for the kinds no key guards (an order's movements share its id). One key
-- column under one unique index, not one partial index per kind: every movement written opens
-- and locks each index of the ledger, and a transfer into a popular account does it while that
-- account is locked. SQL, immutable and without a SET clause, so that it is inlined; it names
-- nothing outside pg_catalog. Stored keys are not recomputed when it changes: extend it for new
-- kinds only, never re-key an existing one.
create or replace function mycelium_private.retry_key(
  p_kind text, p_from_user uuid, p_to_user uuid, p_reference text)
returns text
language sql
immutable
parallel safe
as $$
  select case
    when p_reference is null then null
    when p_kind = 'transfer' then 'transfer:' || p_from_user::text || ':' || p_reference
    when p_kind = 'grant' then 'grant:' || p_to_user::text || ':' || p_reference
    when p_kind in ('purchase', 'expiry', 'legacy_migration') then p_kind || ':' || p_reference
  end
$$;

create table mycelium_private.transfers (
  id uuid primary key default gen_random_uuid(),
  kind public.credit_transfer_kind not null,
  from_user uuid,
  from_system public.credit_system_account,
  to_user uuid,
  to_system public.credit_system_account,
  amount public.credit_amount not null,
  usd_amount numeric,
  rate numeric,
  package_id uuid,
  memo text,
  reference text,
  expires_at timestamptz,
  initiated_by uuid,
  initiated_role text,
  created_at timestamptz not null default now(),
  retry_key text generated always as
    (mycelium_private.retry_key(kind, from_user, to_user, reference)) stored,
  check ((from_user is null) <> (from_system is null)),
  check ((to_user is null) <> (to_system is null)),
  check (from_user is distinct from to_user or from_user is null),
  check (from_system is distinct from to_system or from_system is null)
);
comment on table mycelium_private.transfers is 'The ledger: one row per movement, append-only.';

-- Idempotency: concurrent retries serialise on this unique index; the loser returns the
-- winner's result.
create unique index transfers_retry_key on mycelium_private.transfers (retry_key)
  where retry_key is not null;
-- Platform analytics by day and system balances.
create index transfers_created_at_idx on mycelium_private.transfers (created_at);
create index transfers_from_system_idx on mycelium_private.transfers (from_system, created_at)
  include (amount) where from_system is not null;
create index transfers_to_system_idx on mycelium_private.transfers (to_system, created_at)
  include (amount) where to_system is not null;

create table public.credit_transactions (
  id bigint generated always as identity primary key,
  -- No foreign keys on this hot table (they cost a locking lookup per entry): entries are written
  -- only by the security definer functions, next to their transfer and under their account's
  -- lock, and audit_ledger() checks that every entry has its transfer and its account.
  transfer_id uuid not null,
  user_id uuid not null,
  amount public.credit_entry_amount not null,
  kind public.credit_entry_kind not null,
  balance_after public.credit_balance not null,
  counterparty_id uuid,
  memo text,
  reference text,
  created_at timestamptz not null default now(),
  expires_at timestamptz
);
comment on table public.credit_transactions is
  'Your credit movements: signed amount, kind, the balance it produced. Append-only; each user sees their own.';

create index credit_transactions_user_history_idx on public.credit_transactions (user_id, created_at, id);
-- An entry is found from its transfer through (user_id, created_at): both rows of a movement
-- carry the same transaction timestamp.

create table public.credit_lots (
  id bigint generated always as identity primary key,
  user_id uuid not null references public.credit_accounts (user_id),
  amount numeric not null check (amount > 0),
  remaining numeric not null check (remaining >= 0),
  expires_at timestamptz not null,
  source_transfer_id uuid references mycelium_private.transfers (id),
  -- Indexed instead of `remaining > 0`, so that spending part of a lot that stays live is a HOT
  -- update touching no index.
  live boolean generated always as (remaining > 0) stored,
  created_at timestamptz not null default now(),
  check (remaining <= amount)
) with (fillfactor = 70);
comment on table public.credit_lots is
  'Your credits that expire: one live lot per expiry date (grants, purchases and credits passed on '
  'with their expiry add to it). The rest of your balance '
  '(credit_accounts.balance - expiring) never expires.';

-- One live lot per user and expiry (mycelium_private.add_lot merges into it): credits passed on
-- in many small movements must not split an account into thousands of lots that each later
-- spending walks through, and hands on split again.
create unique index credit_lots_one_live_per_expiry on public.credit_lots (user_id, expires_at) where live;
create index credit_lots_sweep_idx on public.credit_lots (expires_at) where live;

-- Append-only ledger, for every role.
create trigger transfers_append_only
  before update or delete or truncate on mycelium_private.transfers
  for each statement execute function mycelium_private.refuse_change();
create trigger credit_transactions_append_only
  before update or delete or truncate on public.credit_transactions
  for each statement execute function mycelium_private.refuse_change();

-- Read surface: own rows only, no writes through any API role.
alter table public.credit_accounts enable row level security;
alter table public.credit_transactions enable row level security;
alter table public.credit_lots enable row level security;
alter table mycelium_private.transfers enable row level security;

revoke all on public.credit_accounts, public.credit_transactions, public.credit_lots
  from anon, authenticated, service_role;
revoke all on sequence public.credit_transactions_id_seq, public.credit_lots_id_seq
  from anon, authenticated, service_role;
grant select on public.credit_accounts, public.credit_transactions, public.credit_lots
  to authenticated, service_role;

create policy credit_accounts_select_own on public.credit_accounts
  for select to authenticated using (user_id = (select auth.uid()));
create policy credit_transactions_select_own on public.credit_transactions
  for select to authenticated using (user_id = (select auth.uid()));
create policy credit_lots_select_own on public.credit_lots
  for select to authenticated using (user_id = (select auth.uid()));

-- ---------------------------------------------------------------------------------------
-- Your history, keyset-paginated, fast at any depth.
-- rpc/credit_history(before_created_at, before_id, page_size): your movements, newest first,
-- strictly before the (created_at, id) cursor of the last row of the previous page. The cursor
-- is an index condition on credit_transactions (user_id, created_at, id), so page 2,000 costs
-- what page 1 costs.
-- Security definer with an explicit `user_id = auth.uid()`: behind RLS's security barrier the
-- generic plan of a parameterised cursor would not use the index. It returns only the caller's
-- rows, as RLS would. (With plain PostgREST filters on /credit_transactions, add
-- `created_at=lte.<cursor>` next to `or=(created_at.lt.…,and(created_at.eq.…,id.lt.…))`.)
-- ---------------------------------------------------------------------------------------
create or replace function public.credit_history(
  before_created_at timestamptz default null,
  before_id bigint default null,
  page_size integer default 50
)
returns setof public.credit_transactions
language sql
stable
security definer
set search_path = ''
as $$
  select t.*
  from public.credit_transactions t
  where t.user_id = (select auth.uid())
    and (t.created_at, t.id) < (coalesce(before_created_at, 'infinity'::timestamptz),
                                coalesce(before_id, 9223372036854775807))
  order by t.created_at desc, t.id desc
  limit least(greatest(coalesce(page_size, 50), 1), 1000)
$$;
comment on function public.credit_history(timestamptz, bigint, integer) is
  'Your credit movements, newest first, keyset-paginated by (created_at, id).';

revoke execute on function public.credit_history(timestamptz, bigint, integer) from public, anon;
grant execute on function public.credit_history(timestamptz, bigint, integer) to authenticated, service_role;

-- Your balance with its USD value, for display.
create view public.credit_balances with (security_invoker = true) as
select a.user_id, a.balance, a.held, public.tfc_to_usd(a.balance) as balance_usd, a.updated_at  -- noqa: ST06
from public.credit_accounts as a;
comment on view public.credit_balances is 'Your balance and its value in USD at the configured rate (display only).';

revoke all on public.credit_balances from anon, authenticated, service_role;
grant select on public.credit_balances to authenticated, service_role;

-- ---------------------------------------------------------------------------------------
-- A credit account for every new auth user.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.open_credit_account(p_user uuid)
returns void
language plpgsql
set search_path = ''
as $$
begin
  insert into public.credit_accounts (user_id) values (p_user) on conflict (user_id) do nothing;
end;
$$;

create or replace function mycelium_private.create_credit_account_for_new_user()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform mycelium_private.open_credit_account(new.id);
  return new;
end;
$$;

create trigger mycelium_credit_account_on_user_created
  after insert on auth.users
  for each row execute function mycelium_private.create_credit_account_for_new_user();

select mycelium_private.open_credit_account(u.id) from auth.users as u;

-- ---------------------------------------------------------------------------------------
-- Holds keep the expiry of what they took. A hold (a transfer into `holds`, named by its
-- reference: an order's id) that takes credits from the holder's expiring lots remembers here
-- how much each expiry date gave (the rest came from the non-expiring credits). Credits going
-- back to the holder (a release, a refund) give them back as lots with the expiry they had;
-- `returned` is what has gone back so far.
-- ---------------------------------------------------------------------------------------
create table mycelium_private.hold_lots (
  hold text not null,
  expires_at timestamptz not null,
  amount numeric not null check (amount > 0),
  returned numeric not null default 0 check (returned >= 0 and returned <= amount),
  primary key (hold, expires_at)
);
alter table mycelium_private.hold_lots enable row level security;

-- ---------------------------------------------------------------------------------------
-- Movement primitives, called only by the write path below (mycelium_private.create_transfer),
-- which validates the movement and orders the account updates. Helpers, without a SET clause
-- (see the foundation).
-- ---------------------------------------------------------------------------------------

-- Credits of a user expiring at `p_expires_at`: added to the user's live lot of that expiry, or a
-- new lot (whose source is `p_transfer`; a lot merged into keeps its first source). The caller
-- raises the account's `expiring` by `p_amount`.
create or replace function mycelium_private.add_lot(
  p_user uuid, p_amount numeric, p_expires_at timestamptz, p_transfer uuid)
returns void
language plpgsql
as $$
begin
  insert into public.credit_lots as l (user_id, amount, remaining, expires_at, source_transfer_id)
  values (p_user, p_amount, p_amount, p_expires_at, p_transfer)
  on conflict (user_id, expires_at) where live
  do update set amount = l.amount + excluded.amount, remaining = l.remaining + excluded.remaining;
end;
$$;

-- Lock a user's account; false when there is none.
create or replace function mycelium_private.lock_account(p_user uuid)
returns boolean
language plpgsql
as $$
begin
  perform 1 from public.credit_accounts a where a.user_id = p_user for no key update;
  return found;
end;
$$;

-- Spendable credits of an account: its balance less what sits in expired, unswept lots.
create or replace function mycelium_private.spendable(p_user uuid)
returns numeric
language plpgsql
stable
as $$
begin
  return (
    select a.balance - case when a.expiring = 0 then 0 else coalesce((
      select sum(l.remaining) from public.credit_lots l
      where l.user_id = p_user and l.live and l.expires_at <= now()
    ), 0) end
    from public.credit_accounts a where a.user_id = p_user
  );
end;
$$;

-- Take up to `p_amount` from the unexpired lots of a locked account, soonest expiry first; never
-- from an expired lot. Returns what the lots gave; the caller takes the rest from the account's
-- non-expiring credits and lowers `expiring` by what the lots gave.
-- Credits keep their expiry wherever they go, so that no movement turns expiring credits into
-- non-expiring ones:
-- - with `p_hold` (a hold's reference), what each expiry date gave is remembered in hold_lots:
--   credits going back to the holder come back with the expiry they had;
-- - with `p_pass_to` (a movement to that user), each part taken becomes a lot of the recipient
--   with the same expires_at, from transfer `p_transfer`; the caller raises the recipient's
--   `expiring` by what the lots gave once the recipient's balance holds it.
create or replace function mycelium_private.spend_expiring_lots(
  p_user uuid, p_amount numeric, p_hold text, p_pass_to uuid, p_transfer uuid)
returns numeric
language plpgsql
as $$
declare
  left_to_take numeric := p_amount;
  lot record;
  taken numeric;
begin
  -- Lots are touched only under their account's lock (a live lot of an expiry is merged into, so
  -- it is a row others write too): lock the recipient's account now. The sender's is locked
  -- already, and a recipient above the sender comes next in user_id order anyway.
  if p_pass_to is not null and not mycelium_private.lock_account(p_pass_to) then
    perform mycelium_private.fail('unknown_recipient', 'no user with a credit account has id ' || p_pass_to, 404);
  end if;
  for lot in
    select l.id, l.remaining, l.expires_at from public.credit_lots l
    where l.user_id = p_user and l.live and l.expires_at > now()
    order by l.expires_at, l.id
  loop
    taken := least(lot.remaining, left_to_take);
    update public.credit_lots set remaining = remaining - taken where id = lot.id;
    if p_hold is not null then
      insert into mycelium_private.hold_lots as h (hold, expires_at, amount)
      values (p_hold, lot.expires_at, taken)
      on conflict (hold, expires_at) do update set amount = h.amount + excluded.amount;
    end if;
    if p_pass_to is not null then
      perform mycelium_private.add_lot(p_pass_to, taken, lot.expires_at, p_transfer);
    end if;
    left_to_take := left_to_take - taken;
    exit when left_to_take = 0;
  end loop;
  return p_amount - left_to_take;
end;
$$;

-- Take `p_amount` from a user's balance: from unexpired lots first, soonest expiry first, then
-- from the non-expiring credits (with `p_lots_last`, the other way round); never from an expired
-- lot. `held` changes by `p_held` in the same UPDATE (a hold); `p_hold` and `p_pass_to` go to
-- spend_expiring_lots. The UPDATE is what locks the account. Returns the new balance and what the
-- expiring lots gave (`from_lots`); fails with insufficient_credits or not_found.
create or replace function mycelium_private.debit_user(
  p_user uuid, p_amount numeric, p_held numeric, p_hold text, p_pass_to uuid, p_transfer uuid,
  p_lots_last boolean, out balance numeric, out from_lots numeric)
language plpgsql
as $$
declare
  v_account public.credit_accounts;
  v_available numeric;
  v_from_lots_wanted numeric;
begin
  from_lots := 0;
  -- Most accounts hold no expiring credits: one UPDATE takes the amount and locks the account.
  update public.credit_accounts a set balance = a.balance - p_amount, held = a.held + p_held, updated_at = now()
  where a.user_id = p_user and a.expiring = 0 and a.balance >= p_amount
  returning a.balance into debit_user.balance;
  if found then
    return;
  end if;

  select * into v_account from public.credit_accounts a where a.user_id = p_user for no key update;
  if not found then
    perform mycelium_private.fail('not_found', 'no credit account for this user', 404);
  end if;
  v_available := mycelium_private.spendable(p_user);
  if v_available < p_amount then
    perform mycelium_private.fail('insufficient_credits',
      format('insufficient credits: %s available, %s needed', v_available, p_amount), 409);
  end if;
  v_from_lots_wanted := case when p_lots_last then greatest(p_amount - (v_account.balance - v_account.expiring), 0)
                             else p_amount end;
  if v_account.expiring > 0 and v_from_lots_wanted > 0 then
    from_lots := mycelium_private.spend_expiring_lots(p_user, v_from_lots_wanted, p_hold, p_pass_to, p_transfer);
  end if;
  update public.credit_accounts a
  set balance = a.balance - p_amount, expiring = a.expiring - from_lots, held = a.held + p_held, updated_at = now()
  where a.user_id = p_user
  returning a.balance into debit_user.balance;
end;
$$;

-- Take `p_amount` from the user's live lot expiring at `p_expires_at`, expired or not: the expiry
-- sweep takes what expired lots hold, which no spending may. Returns the new balance.
create or replace function mycelium_private.debit_lot(p_user uuid, p_amount numeric, p_expires_at timestamptz)
returns numeric
language plpgsql
as $$
declare
  new_balance numeric;
begin
  -- The account first: its UPDATE is the lock under which its lots are touched.
  update public.credit_accounts a
  set balance = a.balance - p_amount, expiring = a.expiring - p_amount, updated_at = now()
  where a.user_id = p_user
  returning a.balance into new_balance;
  update public.credit_lots l set remaining = l.remaining - p_amount
  where l.user_id = p_user and l.expires_at = p_expires_at and l.live and l.remaining >= p_amount;
  if not found then
    perform mycelium_private.fail('insufficient_credits',
      format('no lot of %s credits expiring at %s', p_amount, p_expires_at), 409);
  end if;
  return new_balance;
end;
$$;

-- Add `p_amount` to a user account: non-expiring, or as a lot expiring at `p_expires_at`; of
-- non-expiring credits, `p_from_lots` arrive in lots the sender's debit already made
-- (debit_user's p_pass_to). `held` changes by `p_held` in the same UPDATE (a hold going back).
-- The UPDATE of the balance locks the account; no account: unknown_recipient. Returns the new
-- balance.
create or replace function mycelium_private.credit_user(
  p_user uuid, p_amount numeric, p_expires_at timestamptz, p_transfer uuid, p_from_lots numeric,
  p_held numeric)
returns numeric
language plpgsql
as $$
declare
  new_balance numeric;
begin
  update public.credit_accounts a
  set balance = a.balance + p_amount,
      held = a.held + p_held,
      expiring = a.expiring + case when p_expires_at is null then p_from_lots else p_amount end,
      updated_at = now()
  where a.user_id = p_user
  returning a.balance into new_balance;
  if not found then
    perform mycelium_private.fail('unknown_recipient', 'no user with a credit account has id ' || p_user, 404);
  end if;
  if p_expires_at is not null then
    perform mycelium_private.add_lot(p_user, p_amount, p_expires_at, p_transfer);
  end if;
  return new_balance;
end;
$$;

-- Give back to `p_user` (locked already), as lots with their old expires_at, up to `p_amount` of
-- what the hold `p_hold` took from expiring lots and nothing has given back yet, latest expiry
-- first (the hold took the soonest first). An expiry already past stays: the next expire_credits
-- sweeps it, as it would have. Returns what it gave back; the caller raises `expiring` by it.
create or replace function mycelium_private.give_back_hold_lots(
  p_hold text, p_user uuid, p_amount numeric, p_transfer uuid)
returns numeric
language plpgsql
as $$
declare
  left_to_give numeric := p_amount;
  part record;
  given numeric;
begin
  for part in
    select h.expires_at, h.amount - h.returned as open from mycelium_private.hold_lots h
    where h.hold = p_hold and h.returned < h.amount
    order by h.expires_at desc
  loop
    exit when left_to_give = 0;
    given := least(part.open, left_to_give);
    update mycelium_private.hold_lots h set returned = h.returned + given
    where h.hold = p_hold and h.expires_at = part.expires_at;
    perform mycelium_private.add_lot(p_user, given, part.expires_at, p_transfer);
    left_to_give := left_to_give - given;
  end loop;
  return p_amount - left_to_give;
end;
$$;

-- ---------------------------------------------------------------------------------------
-- The write path: every movement of credits, whatever its kind and whoever makes it, is one call
-- of create_transfer. It validates the movement, writes the transfer (claiming its retry key
-- first), updates the user accounts it touches in ascending user_id order (the UPDATE of a
-- balance is the lock; so two movements in opposite directions never deadlock), carries expiring
-- lots and holds along, and writes one entry per user side with the balance it produced. Callers
-- authorize the caller and check their own arguments first (with reasons that name them).
--
--   p_kind, p_amount               what moves and how much
--   p_from_user | p_from_system    the sender: a user or a system account, exactly one
--   p_to_user | p_to_system        the recipient: a user or a system account, exactly one, not the
--                                  sender
--   p_reference, p_memo            kept on the transfer and its entries. The reference is the retry
--                                  key of the kinds retry_key() names (a transfer's key stays off the
--                                  recipient's entry: it is the sender's own), and names a hold
--   p_expires_at                   credits of one expiry date: arriving at a user they join its lot of
--                                  that expiry, leaving a user they come from it, expired or not (the
--                                  expiry sweep). Null: spendable credits, taken from the sender's
--                                  unexpired lots soonest expiry first, then from the non-expiring
--                                  ones; what the lots give reaches a recipient user as lots with the
--                                  same expiry
--   p_lots_last                    the sender's non-expiring credits first (a refund takes back an
--                                  earning, which never expires), then its lots
--   p_counterparty                 the other party on a user's entry whose other side is a system
--                                  account (an order's buyer or provider)
--   p_holder, p_held               a movement into or out of `holds` names whose hold it is (into
--                                  holds: the sender): that user's `held` changes by p_held, by default
--                                  the amount, up going in and down coming out. A capture pays a hold
--                                  out in two movements (earning and fee): `held` goes down once, by
--                                  the whole hold, in one of them (p_held 0 in the other), so that the
--                                  holder's account is updated, and its change broadcast, once
--   p_gives_back_hold              credits reaching p_to_user give back the hold named p_reference:
--                                  what it took from expiring lots comes back as lots with their
--                                  expiry, latest first, as far as the amount goes beyond what the
--                                  sender passes on as lots (a release, a refund)
--   p_usd_amount, p_rate, p_package_id   a purchase's payment
-- Returns the transfer's id and time, the balances it left the sending and the receiving user
-- (null for a system account), and `replayed`: the retry key was taken already, by an earlier
-- movement or by a concurrent one that has committed since; that one is returned, nothing moved.
--
-- The amount and the two sides are validated by the transfers table itself (its domains and
-- CHECKs refuse anything else); the holds rules are checked here. Each shape of movement takes
-- its own branch, so that a movement evaluates only what it needs: a plpgsql expression costs
-- every transaction that first runs it its setup again.
-- ---------------------------------------------------------------------------------------
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
    if p_from_user < p_to_user then
      v_debit := mycelium_private.debit_user(p_from_user, p_amount, 0, null, p_to_user, transfer_id, p_lots_last);
      to_balance := mycelium_private.credit_user(p_to_user, p_amount, null, transfer_id, v_debit.from_lots, 0);
    else
      to_balance := mycelium_private.credit_user(p_to_user, p_amount, null, transfer_id, 0, 0);
      v_debit := mycelium_private.debit_user(p_from_user, p_amount, 0, null, p_to_user, transfer_id, p_lots_last);
      v_late := v_debit.from_lots;
    end if;
    from_balance := v_debit.balance;
    v_passed := v_debit.from_lots;
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

revoke execute on all functions in schema mycelium_private from public;
