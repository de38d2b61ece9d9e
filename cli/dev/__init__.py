"""The local stack: PostgreSQL, the Supabase bootstrap, PostgREST and a gateway, without Docker."""
