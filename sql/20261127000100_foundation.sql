-- Foundation: the private schema and the helpers every other file relies on (errors, who is
-- calling, amounts and text, exact division, append-only tables, read-only views).
--
-- `mycelium_private` is not exposed by PostgREST and API roles have no usage on it: internal
-- tables and helpers live here. Security definer functions in `public` call into it with
-- `search_path = ''`, so every name is schema-qualified.
--
-- search_path. A function that something other than our own functions starts pins
-- `search_path = ''`: every security definer function, every trigger (it runs as whoever writes
-- the table), and what a database login or a migration calls itself (the import, the balance
-- feeds, make_configuration, the audit). The plpgsql helpers they call have no SET clause: they
-- run only inside those (nobody else may execute them), under that `search_path = ''`, and a SET
-- clause makes every call save and restore the setting: measured, about 10,000 instructions a
-- call, a few percent of every purchase, transfer and order. Every name is schema-qualified
-- everywhere all the same. (SQL functions keep the SET clause unless they are to be inlined.)

create schema if not exists mycelium_private;
revoke all on schema mycelium_private from public;
revoke all on schema mycelium_private from anon, authenticated, service_role;

-- Functions get EXECUTE for PUBLIC by default: not in this schema.
alter default privileges in schema mycelium_private revoke execute on functions from public;

-- ---------------------------------------------------------------------------------------
-- Errors: one stable machine-readable reason and a fitting HTTP status through PostgREST.
-- SQLSTATE 'PGRST' lets the function choose the status; the JSON message becomes the body,
-- so the body's `code` is the reason (insufficient_credits, invalid_amount, ...).
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.fail(reason text, message text, status integer default 400)
returns void
language plpgsql
as $$
begin
  raise sqlstate 'PGRST' using
    message = json_build_object('code', reason, 'message', message, 'details', null, 'hint', null)::text,
    detail = json_build_object('status', status, 'headers', json_build_object())::text;
end;
$$;

-- The caller check of a function whose callers depend on the row at hand (an order's parties, a
-- product's owner): `p_allowed` (null counts as no), or not_authorized (403) saying who may.
create or replace function mycelium_private.authorize(p_allowed boolean, p_message text)
returns void
language plpgsql
stable
as $$
begin
  if not coalesce(p_allowed, false) then
    perform mycelium_private.fail('not_authorized', p_message, 403);
  end if;
end;
$$;

-- ---------------------------------------------------------------------------------------
-- Who is trusted.
-- is_service(): the service_role key, or a direct database login that is not PostgREST's and
-- does not claim to be an API user (operators, the CLI, the payment webhook worker connecting
-- as `postgres`). PostgREST always logs in as `authenticator`.
-- Only for authorization inside RPCs: never in RLS policies (Realtime evaluates policies from
-- its own login, which is not `authenticator`).
-- ---------------------------------------------------------------------------------------
-- (Helpers called on every movement are plpgsql: plpgsql caches its plans for the session,
-- while a non-inlinable SQL function is planned again on every call.)
create or replace function mycelium_private.is_service()
returns boolean
language plpgsql
stable
as $$
declare
  claimed text := coalesce(auth.role(), '');
begin
  return claimed = 'service_role'
      or (session_user::text <> 'authenticator' and claimed not in ('anon', 'authenticated'));
end;
$$;

-- Who is acting, as recorded on every movement, status change and configuration change: the API
-- role of the request (anon, authenticated, service_role), else the database login (an operator,
-- the CLI, Auth's own login when its trigger claims legacy credits). SQL without a SET clause, so
-- that it is inlined; it names nothing unqualified.
create or replace function mycelium_private.caller_role()
returns text
language sql
stable
as $$
  select coalesce(auth.role(), session_user::text)
$$;

-- ---------------------------------------------------------------------------------------
-- Amounts: numeric, > 0, at most 6 fractional digits, below 10^15. Rejected, never rounded.
-- Returns the amount without trailing zeros.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.check_amount(amount numeric, what text default 'amount')
returns numeric
language plpgsql
immutable
as $$
begin
  if amount is null then
    perform mycelium_private.fail('invalid_amount', what || ' is required');
  elsif amount = 'NaN'::numeric then
    perform mycelium_private.fail('invalid_amount', what || ' must be a number, not NaN');
  elsif amount in ('Infinity'::numeric, '-Infinity'::numeric) then
    perform mycelium_private.fail('invalid_amount', what || ' must be finite');
  elsif amount <= 0 then
    perform mycelium_private.fail('invalid_amount', what || ' must be greater than zero');
  elsif scale(trim_scale(amount)) > 6 then
    perform mycelium_private.fail('invalid_amount', what || ' has more than 6 fractional digits');
  elsif amount >= 1e15 then
    perform mycelium_private.fail('invalid_amount', what || ' must be below 1000000000000000');
  end if;
  return trim_scale(amount);
end;
$$;

-- ---------------------------------------------------------------------------------------
-- Exact division of amounts. PostgreSQL's numeric division keeps about 16 significant digits
-- (more only where an operand has more decimals), so trunc(a / b, 6) and round(a / b, 6) go
-- wrong on large amounts: 1e14 / 0.6 gives 166666666666666.6667, which trunc(_, 6) leaves as it
-- is. These divide whole numbers (div and mod are exact) and cut or round once, like trunc()
-- and round() (half away from zero), to p_scale decimals. SQL without a SET clause, so that they
-- are inlined; they name nothing outside pg_catalog.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.divide_truncated(a numeric, b numeric, p_scale integer)
returns numeric
language sql
immutable
parallel safe
as $$
  select trunc(div(a * 10::numeric ^ p_scale, b) * 10::numeric ^ (-p_scale), p_scale)
$$;

create or replace function mycelium_private.divide_rounded(a numeric, b numeric, p_scale integer)
returns numeric
language sql
immutable
parallel safe
as $$
  select round(sign(a) * sign(b) * 10::numeric ^ (-p_scale) * (
    div(abs(a) * 10::numeric ^ p_scale, abs(b))
    + case when 2 * mod(abs(a) * 10::numeric ^ p_scale, abs(b)) >= abs(b) then 1 else 0 end), p_scale)
$$;
-- Arithmetic only: the marketplace's security invoker views (each order item's share of a fee)
-- call it as the reader.
grant execute on function mycelium_private.divide_rounded(numeric, numeric, integer)
  to authenticated, service_role;

-- The arguments of a periodic job that works in batches (expire_credits, release_expired_holds):
-- the moment it works as of (not in the future) and its batch size `p_max`, named `p_max_name`,
-- from 1 to `p_limit`.
create or replace function mycelium_private.check_batch(
  p_as_of timestamptz, p_max integer, p_max_name text, p_limit integer)
returns void
language plpgsql
stable
as $$
begin
  if p_as_of is null or p_as_of > now() then
    perform mycelium_private.fail('invalid_argument', 'as_of must be a time not in the future');
  end if;
  if p_max is null or p_max < 1 or p_max > p_limit then
    perform mycelium_private.fail('invalid_argument', format('%s must be from 1 to %s', p_max_name, p_limit));
  end if;
end;
$$;

-- Text arguments: required or optional, trimmed, bounded.
create or replace function mycelium_private.check_text(
  value text, what text, max_length integer, required boolean default false)
returns text
language plpgsql
immutable
as $$
begin
  if value is null or btrim(value) = '' then
    if required then
      perform mycelium_private.fail('invalid_argument', what || ' is required');
    end if;
    return null;
  end if;
  if length(value) > max_length then
    perform mycelium_private.fail('invalid_argument', what || ' is longer than ' || max_length || ' characters');
  end if;
  return value;
end;
$$;

-- ---------------------------------------------------------------------------------------
-- Append-only tables: UPDATE, DELETE and TRUNCATE are refused for every role, service_role
-- and table owners included. Corrections are new transfers.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.refuse_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform mycelium_private.fail(
    'append_only',
    format('%s.%s is append-only: %s is not allowed, record a correcting transfer instead',
           tg_table_schema, tg_table_name, lower(tg_op)),
    409);
  return null;
end;
$$;

-- ---------------------------------------------------------------------------------------
-- Read-only views refuse writes as a refusal, not as a server error.
-- PostgreSQL rejects a write into a view it cannot update itself (one with GROUP BY, DISTINCT,
-- joins...) while rewriting the statement, before it checks privileges: PostgREST then answers
-- a POST, PATCH or DELETE from anyone, anon included, with a 500 ("cannot insert into view").
-- An INSTEAD OF trigger makes the view writable in principle, so the privilege check comes
-- first and answers 401/403 like every other refusal; the trigger itself runs only for a role
-- that holds a write privilege, which no API role does (sql/privileges.manifest). Every view that
-- PostgreSQL cannot update itself gets the trigger `refuse_writes`, next to its definition.
-- ---------------------------------------------------------------------------------------
create or replace function mycelium_private.refuse_view_write()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  perform mycelium_private.fail('read_only', tg_table_name || ' is read-only', 405);
  return null;
end;
$$;

revoke execute on all functions in schema mycelium_private from public;
