-- Legacy import: the move from the old marketplace's JSON user files (`mycelium legacy import`).
--
-- The importer converts the old amounts to credits once (the rate is the operator's) and hands
-- everything to mycelium_private.legacy_import() in ONE transaction: all or nothing, and a
-- re-run of the same files writes nothing (an e-mail address is imported once).
--
-- Users who are not in Auth yet are not created: their opening balance, roles, history and
-- products wait in mycelium_private.legacy_accounts, keyed by lower-cased e-mail, and are
-- claimed by the trigger below when a user with that address has a CONFIRMED e-mail (never at an
-- unconfirmed sign-up, which could be anyone's). Users already confirmed are claimed at import.
-- The opening balance is one ledger movement of kind 'legacy_migration' from `issuance`.
--
-- A claim never grants `admin`: whoever confirms an address (with Auth's autoconfirm on, or an
-- OAuth provider passing unverified e-mails, that proves little) would take the platform over.
-- The old admins wait in mycelium_private.legacy_admin_roles_waiting until an admin or an
-- operator grants the role explicitly (public.grant_role).

create table mycelium_private.legacy_import_runs (
  id uuid primary key default gen_random_uuid(),
  imported_at timestamptz not null default now(),
  imported_by text not null default session_user,
  source text not null,
  -- USD per old unit, as the operator stated it, and the credit's USD rate at import.
  legacy_usd_rate numeric not null check (legacy_usd_rate > 0),
  credit_usd_rate numeric not null check (credit_usd_rate > 0),
  users integer not null default 0,
  credits numeric not null default 0,
  transactions integer not null default 0,
  products integer not null default 0,
  -- The old configuration keys worth keeping (platform_fee_percent).
  settings jsonb not null default '{}'
);
comment on table mycelium_private.legacy_import_runs is 'One row per legacy import that wrote anything.';

create table mycelium_private.legacy_accounts (
  email text primary key check (email = lower(email) and email like '%@%'),
  run_id uuid not null references mycelium_private.legacy_import_runs (id),
  source_file text not null,
  display_name text,
  roles text[] not null default '{}'
    check (roles <@ array['admin', 'farmer', 'app_provider', 'service_provider']),
  opening_credits numeric not null
    check (opening_credits >= 0 and opening_credits < 1e15 and scale(opening_credits) <= 6),
  legacy_balance numeric not null check (legacy_balance >= 0),
  user_id uuid unique,
  claimed_at timestamptz,
  opening_transfer_id uuid,
  -- Why a confirmed user with this address did not claim it (the account waits for an operator).
  claim_error text,
  check ((user_id is null) = (claimed_at is null))
);
comment on table mycelium_private.legacy_accounts is
  'Imported users: what waits to be claimed by a confirmed user with this e-mail, and who claimed it.';

-- The old history, read-only: each user sees their own rows once claimed.
create table public.legacy_transactions (
  id bigint generated always as identity primary key,
  email text not null references mycelium_private.legacy_accounts (email),
  user_id uuid,
  legacy_id text not null,
  transaction_type text,
  status text,
  amount numeric,          -- in credits, converted at import
  legacy_amount numeric,   -- as the old file stated it
  occurred_at timestamptz,
  counterparty text,
  memo text,
  unique (email, legacy_id)
);
comment on table public.legacy_transactions is
  'Your history from the old marketplace (read-only; amounts converted to credits at import).';
create index legacy_transactions_user_idx on public.legacy_transactions (user_id, occurred_at);

-- Listings from the old files, waiting for their provider (and the marketplace's products).
create table mycelium_private.legacy_products (
  id bigint generated always as identity primary key,
  email text not null references mycelium_private.legacy_accounts (email),
  legacy_id text not null,
  name text not null,
  description text,
  category text,
  price numeric check (price >= 0),  -- in credits per unit, converted at import
  legacy_price numeric,
  unit text,
  attributes jsonb not null default '{}',
  active boolean not null default true,
  product_id uuid references public.products (id),  -- the product listed at the claim
  -- Why the catalogue refused the listing at the claim (the import checks what it can first).
  claim_error text,
  unique (email, legacy_id)
);
comment on table mycelium_private.legacy_products is 'Listings from the old files, by provider e-mail.';

alter table mycelium_private.legacy_import_runs enable row level security;
alter table mycelium_private.legacy_accounts enable row level security;
alter table mycelium_private.legacy_products enable row level security;
alter table public.legacy_transactions enable row level security;
revoke all on mycelium_private.legacy_import_runs, mycelium_private.legacy_accounts,
  mycelium_private.legacy_products from public, anon, authenticated, service_role;
revoke all on public.legacy_transactions from public, anon, authenticated, service_role;
revoke all on sequence public.legacy_transactions_id_seq from public, anon, authenticated, service_role;
grant select on public.legacy_transactions to authenticated, service_role;
create policy legacy_transactions_select_own on public.legacy_transactions
  for select to authenticated using (user_id = (select auth.uid()));

-- ---------------------------------------------------------------------------------------
-- A confirmed user takes over what waits for their address: the opening balance through the
-- ledger's write path, the roles, the history and the listings (the catalogue's trigger checks the
-- role for each category and the price). A listing the catalogue refuses is recorded, not
-- raised: it must never stop the user confirming their address. Nothing waits: nothing happens.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.claim_legacy_account(p_user uuid, p_email text)
returns void
language plpgsql
as $$
declare
  v_account mycelium_private.legacy_accounts;
  v_transfer uuid;
  v_product record;
  v_product_id uuid;
  v_owned text;
begin
  select * into v_account from mycelium_private.legacy_accounts a
  where a.email = lower(p_email) and a.user_id is null
  for update;
  if not found then
    return;
  end if;
  -- One old account per user (user_id is unique). A user who owns one and confirms a second
  -- address (an e-mail change) keeps the first; raising would make Auth refuse the change. The
  -- user's lock makes an import claiming the address they leave and Auth confirming the new one
  -- take turns, so the second sees the first's claim.
  perform pg_advisory_xact_lock(hashtext('mycelium_private.claim_legacy_account'), hashtext(p_user::text));
  select a.email into v_owned from mycelium_private.legacy_accounts a where a.user_id = p_user;
  if found then
    update mycelium_private.legacy_accounts
    set claim_error = format('not claimed by user %s: it already owns the legacy account of %s', p_user, v_owned)
    where email = v_account.email;
    return;
  end if;
  -- Credited once per imported address, whatever happens: the ledger's retry_key
  -- (`legacy_migration:legacy:<email>`) is unique.
  if v_account.opening_credits > 0 then
    v_transfer := (mycelium_private.create_transfer('legacy_migration', v_account.opening_credits,
      p_from_system => 'issuance', p_to_user => p_user, p_reference => 'legacy:' || v_account.email,
      p_memo => 'opening balance from the old marketplace')).transfer_id;
  end if;
  insert into public.user_roles (user_id, role)
  select p_user, r from unnest(v_account.roles) r
  where r <> 'admin'  -- granted only explicitly (see the top of this file)
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
  set user_id = p_user, claimed_at = now(), opening_transfer_id = v_transfer, claim_error = null
  where email = v_account.email;
  update public.legacy_transactions set user_id = p_user where email = v_account.email;
end;
$$;

create or replace function mycelium_private.claim_legacy_account_on_confirmation()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  -- Only a confirmed address proves who this is; an unconfirmed sign-up claims nothing.
  if new.email is not null and new.email_confirmed_at is not null and not coalesce(new.is_anonymous, false)
     and (tg_op = 'INSERT' or old.email_confirmed_at is null or old.email is distinct from new.email) then
    -- Wait for an import under way (it holds this lock alone): else an address it adds, confirmed
    -- after it looked at the users and before it commits, would be claimed by neither side.
    perform pg_advisory_xact_lock_shared(hashtext('mycelium_private.legacy_import'));
    perform mycelium_private.claim_legacy_account(new.id, new.email);
  end if;
  return null;
end;
$$;

-- Triggers of one event fire in name order: this one comes after those that open the user's
-- profile and credit account (mycelium_credit_account_..., mycelium_profile_...), which the
-- claim's products and credits need at a sign-up that arrives confirmed.
create trigger mycelium_user_confirmed_claims_legacy_account
  after insert or update of email_confirmed_at, email on auth.users
  for each row execute function mycelium_private.claim_legacy_account_on_confirmation();

-- The old admins whose account is claimed and who are not admins yet: for an admin or an operator
-- to check who owns the address, then grant the role (public.grant_role).
create view mycelium_private.legacy_admin_roles_waiting as
select a.email, a.user_id, a.claimed_at
from mycelium_private.legacy_accounts as a
where 'admin' = any(a.roles) and a.user_id is not null
  and not exists (
    select 1 from public.user_roles as r
    where r.user_id = a.user_id and r.role = 'admin'
  );
comment on view mycelium_private.legacy_admin_roles_waiting is
  'Claimed legacy accounts whose admin role waits to be granted explicitly.';
revoke all on mycelium_private.legacy_admin_roles_waiting from public, anon, authenticated, service_role;

-- The old platform fee becomes the marketplace's, when an import writes anything and the fee
-- differs (a re-run changes nothing). Returns the settings applied.
create or replace function mycelium_private.apply_legacy_settings(p_settings jsonb)
returns jsonb
language plpgsql
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
-- The import itself, for the operator's database login (never through the API).
-- p_accounts: [{email, source_file, display_name, roles, opening_credits, legacy_balance}]
-- p_transactions: [{email, legacy_id, transaction_type, status, amount, legacy_amount,
--                   occurred_at, counterparty, memo}]
-- p_products: [{email, legacy_id, name, description, category, price, legacy_price, unit,
--               attributes, active}]
-- Addresses already imported are left as they are. Nothing new: no run row, nothing written.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.legacy_import(
  p_source text, p_legacy_usd_rate numeric, p_accounts jsonb, p_transactions jsonb, p_products jsonb,
  p_settings jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_rate numeric;
  v_run uuid;
  v_offered integer;
  v_users integer;
  v_credits numeric;
  v_transactions integer;
  v_products integer;
  v_claimed integer;
  v_not_claimed jsonb;
  v_admin_not_granted jsonb;
begin
  -- Concurrent imports of overlapping files: one after the other.
  perform pg_advisory_xact_lock(hashtext('mycelium_private.legacy_import'));
  select c.tfc_to_usd_rate into v_rate from public.credit_config c where c.id;
  v_offered := jsonb_array_length(p_accounts);

  create temporary table legacy_incoming on commit drop as
  select lower(x.email) as email, x.source_file, x.display_name, coalesce(x.roles, '{}') as roles,
         x.opening_credits, x.legacy_balance
  from jsonb_to_recordset(p_accounts) as x(
    email text, source_file text, display_name text, roles text[], opening_credits numeric, legacy_balance numeric)
  where not exists (select 1 from mycelium_private.legacy_accounts a where a.email = lower(x.email));

  select count(*), coalesce(sum(opening_credits), 0) into v_users, v_credits from legacy_incoming;
  if v_users = 0 then
    drop table legacy_incoming;
    return jsonb_build_object('run_id', null, 'users', 0, 'already_imported', v_offered, 'credits', 0,
      'transactions', 0, 'products', 0, 'claimed', 0, 'not_claimed', '[]'::jsonb,
      'admin_not_granted', '[]'::jsonb, 'credit_usd_rate', v_rate);
  end if;

  insert into mycelium_private.legacy_import_runs (source, legacy_usd_rate, credit_usd_rate, settings)
  values (p_source, p_legacy_usd_rate, v_rate, coalesce(p_settings, '{}'))
  returning id into v_run;

  insert into mycelium_private.legacy_accounts
    (email, run_id, source_file, display_name, roles, opening_credits, legacy_balance)
  select i.email, v_run, i.source_file, i.display_name, i.roles, i.opening_credits, i.legacy_balance
  from legacy_incoming i;

  insert into public.legacy_transactions
    (email, legacy_id, transaction_type, status, amount, legacy_amount, occurred_at, counterparty, memo)
  select lower(t.email), t.legacy_id, t.transaction_type, t.status, t.amount, t.legacy_amount, t.occurred_at,
         t.counterparty, t.memo
  from jsonb_to_recordset(p_transactions) as t(
    email text, legacy_id text, transaction_type text, status text, amount numeric, legacy_amount numeric,
    occurred_at timestamptz, counterparty text, memo text)
  where lower(t.email) in (select i.email from legacy_incoming i);
  get diagnostics v_transactions = row_count;

  insert into mycelium_private.legacy_products
    (email, legacy_id, name, description, category, price, legacy_price, unit, attributes, active)
  select lower(p.email), p.legacy_id, p.name, p.description, p.category, p.price, p.legacy_price, p.unit,
         coalesce(p.attributes, '{}'), coalesce(p.active, true)
  from jsonb_to_recordset(p_products) as p(
    email text, legacy_id text, name text, description text, category text, price numeric,
    legacy_price numeric, unit text, attributes jsonb, active boolean)
  where lower(p.email) in (select i.email from legacy_incoming i);
  get diagnostics v_products = row_count;

  -- Users already confirmed in Auth take over their accounts now.
  perform mycelium_private.claim_legacy_account(u.id, u.email)
  from auth.users u
  join legacy_incoming i on i.email = lower(u.email)
  where u.email_confirmed_at is not null and not coalesce(u.is_anonymous, false);
  select count(*) into v_claimed from mycelium_private.legacy_accounts a where a.run_id = v_run and a.user_id is not null;
  select coalesce(jsonb_agg(jsonb_build_object('email', a.email, 'reason', a.claim_error) order by a.email), '[]')
  into v_not_claimed
  from mycelium_private.legacy_accounts a where a.run_id = v_run and a.claim_error is not null;
  select coalesce(jsonb_agg(i.email order by i.email), '[]') into v_admin_not_granted
  from legacy_incoming i where 'admin' = any (i.roles);

  update mycelium_private.legacy_import_runs
  set users = v_users, credits = v_credits, transactions = v_transactions, products = v_products
  where id = v_run;
  drop table legacy_incoming;
  return jsonb_build_object('run_id', v_run, 'users', v_users, 'already_imported', v_offered - v_users,
    'credits', v_credits, 'transactions', v_transactions, 'products', v_products, 'claimed', v_claimed,
    'not_claimed', v_not_claimed, 'admin_not_granted', v_admin_not_granted, 'credit_usd_rate', v_rate);
end;
$$;

revoke execute on all functions in schema mycelium_private from public;
