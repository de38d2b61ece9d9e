-- Runs once, when the supabase/postgres image initialises an empty data volume.
-- The image creates the service roles without usable passwords; give each the stack's
-- POSTGRES_PASSWORD so PostgREST (authenticator), Auth (supabase_auth_admin) and
-- Realtime / postgres-meta (supabase_admin) can log in over the compose network.
\set pgpass `echo "$POSTGRES_PASSWORD"`

alter user supabase_admin with password :'pgpass';
alter user authenticator with password :'pgpass';
alter user supabase_auth_admin with password :'pgpass';

-- The analytics roll-up (owned by postgres) waits for every open transaction begun before a day
-- ended; it sees other roles' transactions only with this (docs/deploy.md, "Periodic jobs").
grant pg_read_all_stats to postgres;

-- API requests cannot hold the database for long. The image sets these itself; they are written
-- here too so that every deployment's bootstrap states them (cli/dev/supabase_bootstrap.sql,
-- deploy/k3s/supabase-init.sql; tests/deploy/test_compose.py holds the three equal).
alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
alter role authenticator set statement_timeout = '8s';
