-- Identity, part 2: every API request of a signed-in user checks that the user still may act.
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
