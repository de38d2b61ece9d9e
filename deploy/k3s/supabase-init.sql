-- What the supabase/postgres image sets up, for CloudNativePG's vanilla PostgreSQL 15.
--
-- CloudNativePG runs this once, as superuser, in the `mycelium` database right after creating
-- the cluster (Cluster.spec.bootstrap.initdb.postInitApplicationSQLRefs). It prepares only what
-- the services need before they first start; each service then creates its own objects:
-- Auth (GoTrue) the tables of schema auth, Realtime its tenant tables and schema realtime,
-- `mycelium sql push` the business rules. Passwords are not set here: the login roles get
-- theirs from Secrets through Cluster.spec.managed.roles, whose attributes match these.
--
-- Differences from Supabase's image that matter to an operator: `postgres` is CloudNativePG's
-- superuser (on Supabase it is not), and the migrate Job connects as it; only the pgcrypto
-- and uuid-ossp extensions are installed (the ones the business rules may use).
-- Not cli/dev/supabase_bootstrap.sql: that one emulates Auth's and Realtime's tables for the
-- Docker-free dev stack, where here the real services create them (and would collide with it).
-- tests/deploy/test_k3s.py runs this file on a real PostgreSQL 15 when one is installed.

-- ---------------------------------------------------------------------------------------
-- Roles, with Supabase's attributes
-- ---------------------------------------------------------------------------------------
do $roles$
declare
  wanted record;
begin
  for wanted in
    select * from (values
      ('anon',                'nologin noinherit'),
      ('authenticated',       'nologin noinherit'),
      ('service_role',        'nologin noinherit bypassrls'),
      -- PostgREST logs in as authenticator and switches to the role of the request's JWT.
      ('authenticator',       'login noinherit'),
      -- Auth (GoTrue) owns schema auth and runs its own migrations in it.
      ('supabase_auth_admin', 'login noinherit createrole'),
      -- Realtime reads the WAL (logical replication) and manages its tenant's schema.
      ('supabase_admin',      'login superuser createrole createdb replication bypassrls')
    ) as r(name, attributes)
  loop
    if not exists (select 1 from pg_roles where rolname = wanted.name) then
      execute format('create role %I %s', wanted.name, wanted.attributes);
    end if;
  end loop;
end
$roles$;

grant anon, authenticated, service_role to authenticator;

-- As on Supabase: API requests cannot hold the database for long.
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
alter role authenticator set statement_timeout = '8s';

-- ---------------------------------------------------------------------------------------
-- Schema extensions
-- ---------------------------------------------------------------------------------------
create schema if not exists extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;
create extension if not exists pgcrypto with schema extensions;
create extension if not exists "uuid-ossp" with schema extensions;
alter role postgres set search_path = "$user", public, extensions;

-- ---------------------------------------------------------------------------------------
-- Schema public and its default privileges, exactly as Supabase's (the classic trap: every
-- new table and function in public is open to anon until the SQL that creates it closes it;
-- the business rules are written and tested against this, so production must match it)
-- ---------------------------------------------------------------------------------------
grant usage on schema public to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on tables to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on functions to anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  grant all on sequences to anon, authenticated, service_role;

-- ---------------------------------------------------------------------------------------
-- Schema auth: created empty, owned by Auth, which creates auth.users and auth.uid() on its
-- first start. The business rules (triggers on auth.users, policies calling auth.uid()) need
-- what Supabase grants postgres and the API roles on those objects.
-- ---------------------------------------------------------------------------------------
create schema if not exists auth authorization supabase_auth_admin;
alter role supabase_auth_admin set search_path = auth;
grant usage on schema auth to postgres, anon, authenticated, service_role;
alter default privileges for role supabase_auth_admin in schema auth
  grant all on tables to postgres, service_role;
alter default privileges for role supabase_auth_admin in schema auth
  grant execute on functions to postgres, anon, authenticated, service_role;

-- ---------------------------------------------------------------------------------------
-- Realtime: its bookkeeping schema, and the publication whose tables stream their changes
-- ---------------------------------------------------------------------------------------
create schema if not exists _realtime authorization supabase_admin;
create schema if not exists realtime authorization supabase_admin;
grant usage on schema realtime to postgres, anon, authenticated, service_role;

do $publication$
begin
  if not exists (select 1 from pg_publication where pubname = 'supabase_realtime') then
    create publication supabase_realtime;
  end if;
end
$publication$;
