-- Operations metrics: what `mycelium metrics serve` needs for the alert rules in
-- deploy/monitoring/alerts.yml that the ledger's own numbers cannot tell, read through the API
-- like every other number the exporter shows (it holds the service_role key, not a database
-- password).
--
--   applied_migrations    the migration history, so that the exporter can compare it with the
--                         migrations it was shipped with: pending or drifted files mean the
--                         migrate job did not run, failed, or someone edited the schema by hand
--   database_connections  client connections in use and the most the server accepts, so that an
--                         alert fires before PostgREST, Auth and Realtime are refused

create or replace function public.applied_migrations()
returns table (version text, name text, checksum text, statements text[])
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform mycelium_private.require_admin();
  -- `mycelium sql push` keeps a checksum of each file; `supabase db push` keeps only the
  -- statements it ran (and no checksum table when it alone pushed), which the exporter compares.
  if to_regclass('supabase_migrations.mycelium_checksums') is null then
    return query
      select m.version::text, coalesce(m.name, '')::text, null::text, coalesce(m.statements, '{}')::text []
      from supabase_migrations.schema_migrations m;
  else
    return query
      select m.version::text, coalesce(m.name, '')::text, c.checksum::text,
             coalesce(m.statements, '{}')::text []
      from supabase_migrations.schema_migrations m
      left join supabase_migrations.mycelium_checksums c on c.version = m.version;
  end if;
end;
$$;

comment on function public.applied_migrations() is
'The migration history (admins and service_role): version, name, checksum of the file as pushed '
'(null when the Supabase CLI pushed it) and the statements the Supabase CLI ran.';

revoke execute on function public.applied_migrations() from public, anon;
grant execute on function public.applied_migrations() to authenticated, service_role;

create or replace function public.database_connections()
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
begin
  perform mycelium_private.require_admin();
  -- pg_stat_database counts every session (pg_stat_activity hides other roles' from the function's
  -- owner); the slots reserved for superusers are not the API's to use: the limit is what is left.
  return jsonb_build_object(
    'connections',
    (select sum(d.numbackends) from pg_catalog.pg_stat_database d),
    'max_connections',
    current_setting('max_connections')::integer - current_setting('superuser_reserved_connections')::integer
  );
end;
$$;

comment on function public.database_connections() is
'Client connections open on the database server, and the most it accepts from non-superusers '
'(admins and service_role).';

revoke execute on function public.database_connections() from public, anon;
grant execute on function public.database_connections() to authenticated, service_role;
