-- Identity: who is who, and who may act. Profiles (one per auth user, created by a trigger),
-- roles, the checks every function makes of its caller, and the gate PostgREST runs before every
-- request.

create table public.profiles (
  id uuid primary key references auth.users (id) on delete cascade,
  email text,
  display_name text check (display_name is null or length(display_name) <= 200),
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now()
);
comment on table public.profiles is 'One profile per auth user; readable by its owner and admins.';

create table public.user_roles (
  user_id uuid not null references auth.users (id) on delete cascade,
  role text not null check (role in ('admin', 'farmer', 'app_provider', 'service_provider')),
  granted_at timestamptz not null default now(),
  granted_by uuid,
  primary key (user_id, role)
);
comment on table public.user_roles is 'Roles of users; granted and revoked only by admins and service_role.';

-- ---------------------------------------------------------------------------------------
-- Role helpers. Security definer so policies on user_roles can use them without recursion.
-- ---------------------------------------------------------------------------------------
create or replace function public.has_role(role text)
returns boolean
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  return exists (
    select 1 from public.user_roles ur
    where ur.user_id = auth.uid() and ur.role = has_role.role
  );
end;
$$;
comment on function public.has_role(text) is 'True when the signed-in user has the role.';

-- For RLS policies: an admin user or the service_role key (never a direct login: Realtime
-- evaluates policies from its own login).
create or replace function public.is_admin()
returns boolean
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  return coalesce(auth.role(), '') = 'service_role' or public.has_role('admin');
end;
$$;
comment on function public.is_admin() is 'True for admins and the service_role key.';

-- For RPC authorization: is_admin() or a trusted direct login.
create or replace function mycelium_private.is_admin_or_service()
returns boolean
language plpgsql
stable
as $$
begin
  return mycelium_private.is_service() or public.has_role('admin');
end;
$$;

create or replace function mycelium_private.require_admin()
returns void
language plpgsql
stable
as $$
begin
  if not mycelium_private.is_admin_or_service() then
    perform mycelium_private.fail('not_authorized', 'only admins and service_role may do this', 403);
  end if;
end;
$$;

create or replace function mycelium_private.require_service()
returns void
language plpgsql
stable
as $$
begin
  if not mycelium_private.is_service() then
    perform mycelium_private.fail('not_authorized', 'only service_role may do this', 403);
  end if;
end;
$$;

-- For what only a signed-in user does with their own credits (send them, order): the user's id.
create or replace function mycelium_private.require_signed_in(p_action text)
returns uuid
language plpgsql
stable
as $$
declare
  v_user uuid := auth.uid();
begin
  if v_user is null or coalesce(auth.role(), '') <> 'authenticated' then
    perform mycelium_private.fail('not_authorized', 'sign in to ' || p_action, 403);
  end if;
  return v_user;
end;
$$;

-- ---------------------------------------------------------------------------------------
-- RLS and privileges
-- ---------------------------------------------------------------------------------------
alter table public.profiles enable row level security;
alter table public.user_roles enable row level security;

revoke all on public.profiles, public.user_roles from anon, authenticated, service_role;
grant select on public.profiles, public.user_roles to authenticated, service_role;
grant update (display_name) on public.profiles to authenticated;

create policy profiles_select_own_or_admin on public.profiles
  for select to authenticated
  using (id = (select auth.uid()) or (select public.is_admin()));
create policy profiles_update_own on public.profiles
  for update to authenticated
  using (id = (select auth.uid()))
  with check (id = (select auth.uid()));

create policy user_roles_select_own_or_admin on public.user_roles
  for select to authenticated
  using (user_id = (select auth.uid()) or (select public.is_admin()));

create index user_roles_role_idx on public.user_roles (role, user_id);

-- ---------------------------------------------------------------------------------------
-- A profile for every new auth user, whatever path created it.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.create_profile_for_new_user()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  insert into public.profiles (id, email, display_name)
  values (
    new.id,
    new.email,
    left(coalesce(new.raw_user_meta_data ->> 'display_name', new.raw_user_meta_data ->> 'full_name'), 200)
  )
  on conflict (id) do nothing;
  return new;
end;
$$;

create or replace function mycelium_private.sync_profile_email()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  update public.profiles set email = new.email, updated_at = now()
  where id = new.id and email is distinct from new.email;
  return new;
end;
$$;

create trigger mycelium_profile_on_user_created
  after insert on auth.users
  for each row execute function mycelium_private.create_profile_for_new_user();
create trigger mycelium_profile_on_user_email_changed
  after update of email on auth.users
  for each row execute function mycelium_private.sync_profile_email();

insert into public.profiles (id, email, display_name)
select
  u.id, u.email,
  left(coalesce(u.raw_user_meta_data ->> 'display_name', u.raw_user_meta_data ->> 'full_name'), 200)
    as display_name
from auth.users as u
on conflict (id) do nothing;

-- ---------------------------------------------------------------------------------------
-- rpc/grant_role, rpc/revoke_role: admins and service_role only.
-- ---------------------------------------------------------------------------------------
-- A role there is (the same list as user_roles' CHECK), else invalid_argument.
create or replace function mycelium_private.check_role(p_role text)
returns void
language plpgsql
immutable
as $$
begin
  if p_role is null or p_role not in ('admin', 'farmer', 'app_provider', 'service_provider') then
    perform mycelium_private.fail('invalid_argument', 'role must be one of admin, farmer, app_provider, service_provider');
  end if;
end;
$$;

create or replace function public.grant_role(user_id uuid, role text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform mycelium_private.require_admin();
  perform mycelium_private.check_role(grant_role.role);
  if grant_role.user_id is null or not exists (select 1 from auth.users u where u.id = grant_role.user_id) then
    perform mycelium_private.fail('not_found', 'no such user', 404);
  end if;
  insert into public.user_roles (user_id, role, granted_by)
  values (grant_role.user_id, grant_role.role, auth.uid())
  on conflict do nothing;
  return jsonb_build_object('user_id', grant_role.user_id, 'role', grant_role.role, 'granted', true);
end;
$$;

create or replace function public.revoke_role(user_id uuid, role text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform mycelium_private.require_admin();
  perform mycelium_private.check_role(revoke_role.role);
  delete from public.user_roles ur where ur.user_id = revoke_role.user_id and ur.role = revoke_role.role;
  return jsonb_build_object('user_id', revoke_role.user_id, 'role', revoke_role.role, 'granted', false);
end;
$$;

revoke execute on function public.grant_role(uuid, text), public.revoke_role(uuid, text) from public, anon;
grant execute on function public.grant_role(uuid, text), public.revoke_role(uuid, text)
  to authenticated, service_role;
revoke execute on function public.has_role(text), public.is_admin() from public, anon;
grant execute on function public.has_role(text), public.is_admin() to authenticated, service_role;
revoke execute on all functions in schema mycelium_private from public;

-- ---------------------------------------------------------------------------------------
-- The request gate: every API request of a signed-in user checks that the user still may act.
-- ---------------------------------------------------------------------------------------
--
-- An access token stays valid until it expires (an hour by default), whatever Auth did since: a
-- ban (`banned_until`), a soft delete (`deleted_at`) or a hard delete (the row is gone) changes
-- nothing for a token already issued. RLS and the money functions trust `auth.uid()`, so such a
-- token would go on reading the user's rows and moving their credits. PostgREST runs a
-- "pre-request" function after it switches to the request's role and before the request itself,
-- in the same transaction: refusing there refuses every table, view and RPC at once.
--
-- PostgREST is told to run it by its own configuration (`db-pre-request`: the local stack's
-- postgrest.conf, PGRST_DB_PRE_REQUEST in Compose and on k3s), not by `alter role authenticator
-- set pgrst.db_pre_request` here: Supabase reserves `authenticator`, and a migration running as
-- `postgres` may not change it.
--
-- The function lives in a schema of its own because every API role must be able to run it
-- (PostgREST calls it as anon, authenticated and service_role) while `mycelium_private` stays
-- closed to them, and `public` would publish it as an RPC.

create schema if not exists mycelium_gate;
revoke all on schema mycelium_gate from public;
grant usage on schema mycelium_gate to anon, authenticated, service_role;
comment on schema mycelium_gate is
  'What PostgREST runs before every request (pgrst.db_pre_request); nothing else lives here.';

-- Reasons follow Supabase Auth's own error codes for the same states (user_banned,
-- user_not_found), so a client handles a refused token the way it handles a refused sign-in.
create or replace function mycelium_gate.check_caller()
returns void
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_caller uuid := auth.uid();
  v_user record;
begin
  -- The anon and service_role keys carry no user: nothing to check.
  if v_caller is null then
    return;
  end if;
  select u.banned_until, u.deleted_at into v_user from auth.users u where u.id = v_caller;
  if not found or v_user.deleted_at is not null then
    perform mycelium_private.fail('user_not_found', 'the user of this token no longer exists', 401);
  elsif v_user.banned_until is not null and v_user.banned_until > now() then
    perform mycelium_private.fail('user_banned', 'the user of this token is banned', 403);
  end if;
end;
$$;
comment on function mycelium_gate.check_caller() is
  'PostgREST''s pre-request: refuses tokens of banned, soft-deleted and deleted users.';
revoke execute on function mycelium_gate.check_caller() from public;
grant execute on function mycelium_gate.check_caller() to anon, authenticated, service_role;
