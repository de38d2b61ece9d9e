-- Runs once, when the supabase/postgres image initialises an empty data volume.
-- Realtime keeps its own bookkeeping (tenants, extensions) in schema _realtime, which it
-- selects with DB_AFTER_CONNECT_QUERY but does not create; it connects as supabase_admin.
create schema if not exists _realtime;
alter schema _realtime owner to supabase_admin;
