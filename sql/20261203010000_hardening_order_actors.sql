-- Hardening: admins' user ids were visible to the parties of an order and of a product.
--
-- The buyer and the provider of an order read its order_status_history and order_refunds, and a
-- provider reads product_moderation of their products: `changed_by` / `refunded_by` held the user
-- id of whoever made the change, an admin's too (a refund, a take-down, a status an admin set).
-- As 20261202020000_hardening.sql did for `updated_by`, the columns stay (clients read these tables
-- with `select=*`) and shapes do not change: they now hold only a party's id (the buyer's
-- cancel, the provider's fulfilment); any other actor's id (an admin's) is recorded in the new
-- staff_actions, which admins alone read, and the column is null, as it is for the service role.
-- `changed_role` / `refunded_role` still say which API role acted.

create table public.staff_actions (
  id bigint generated always as identity primary key,
  -- The row acted on: its table and its id (as text: ids are bigint or uuid).
  table_name text not null,
  row_id text not null,
  staff_id uuid not null,
  at timestamptz not null default now()
);
comment on table public.staff_actions is
  'Who, not being a party, wrote a row of order_status_history, order_refunds or product_moderation '
  '(an admin): that row''s actor column is null for its parties to read. Admins only. Append-only.';
create unique index staff_actions_row_idx on public.staff_actions (table_name, row_id);
create index staff_actions_staff_idx on public.staff_actions (staff_id, at);

alter table public.staff_actions enable row level security;
revoke all on public.staff_actions from anon, authenticated, service_role;
revoke all on sequence public.staff_actions_id_seq from anon, authenticated, service_role;
grant select on public.staff_actions to authenticated, service_role;
create policy staff_actions_admins on public.staff_actions
  for select to authenticated using ((select public.is_admin()));
create trigger staff_actions_append_only
  before update or delete or truncate on public.staff_actions
  for each statement execute function mycelium_private.refuse_change();

-- The parties who may read a row of `table_name` whose fields are `row_fields`.
create or replace function mycelium_private.row_parties(table_name text, row_fields jsonb)
returns uuid[]
language sql
stable
set search_path = ''
as $$
  select case row_parties.table_name
    when 'product_moderation' then
      (select array[p.provider_id] from public.products as p
       where p.id = (row_parties.row_fields ->> 'product_id')::uuid)
    else
      (select array[o.buyer_id, o.provider_id] from public.orders as o
       where o.id = (row_parties.row_fields ->> 'order_id')::uuid)
  end
$$;

-- Before a row is written: an actor (the column named by the trigger's argument) who is not one
-- of the row's parties goes to staff_actions, and the column is left null. Enforced here rather
-- than in each writer, so that a function redefined later cannot bring the id back.
create or replace function mycelium_private.hide_staff_actor()
returns trigger
language plpgsql
set search_path = ''
as $$
declare
  v_row jsonb := to_jsonb(new);
  v_actor uuid := (v_row ->> tg_argv[0])::uuid;
begin
  if v_actor is null or v_actor = any(mycelium_private.row_parties(tg_table_name, v_row)) then
    return new;
  end if;
  insert into public.staff_actions (table_name, row_id, staff_id)
  values (tg_table_name, v_row ->> 'id', v_actor);
  return jsonb_populate_record(new, jsonb_build_object(tg_argv[0], null));
end;
$$;

create trigger hide_staff_actor before insert on public.order_status_history
  for each row execute function mycelium_private.hide_staff_actor('changed_by');
create trigger hide_staff_actor before insert on public.order_refunds
  for each row execute function mycelium_private.hide_staff_actor('refunded_by');
create trigger hide_staff_actor before insert on public.product_moderation
  for each row execute function mycelium_private.hide_staff_actor('changed_by');

comment on column public.order_status_history.changed_by is
  'The buyer or the provider who made the change; null for anyone else (admins: staff_actions).';
comment on column public.order_refunds.refunded_by is
  'The provider who refunded; null for anyone else (admins: staff_actions).';
comment on column public.product_moderation.changed_by is
  'The provider, if they made the change; null for anyone else (admins: staff_actions).';

-- The rows written so far: their staff actors recorded, then cleared. These tables are
-- append-only; the migration alone rewrites them, with their guards off for the moment.
insert into public.staff_actions (table_name, row_id, staff_id, at)
select
  'order_status_history' as table_name, h.id::text as row_id, h.changed_by as staff_id, h.at
from public.order_status_history as h
where h.changed_by is not null
  and h.changed_by <> all(mycelium_private.row_parties('order_status_history', to_jsonb(h)))
union all
select
  'order_refunds' as table_name, r.id::text as row_id, r.refunded_by as staff_id, r.created_at as at
from public.order_refunds as r
where r.refunded_by is not null
  and r.refunded_by <> all(mycelium_private.row_parties('order_refunds', to_jsonb(r)))
union all
select
  'product_moderation' as table_name, m.id::text as row_id, m.changed_by as staff_id, m.at
from public.product_moderation as m
where m.changed_by is not null
  and m.changed_by <> all(mycelium_private.row_parties('product_moderation', to_jsonb(m)));

alter table public.order_status_history disable trigger order_status_history_append_only;
alter table public.order_refunds disable trigger order_refunds_append_only;
alter table public.product_moderation disable trigger product_moderation_append_only;
update public.order_status_history as h set changed_by = null
from public.staff_actions as s
where s.table_name = 'order_status_history' and s.row_id = h.id::text;
update public.order_refunds as r set refunded_by = null
from public.staff_actions as s
where s.table_name = 'order_refunds' and s.row_id = r.id::text;
update public.product_moderation as m set changed_by = null
from public.staff_actions as s
where s.table_name = 'product_moderation' and s.row_id = m.id::text;
alter table public.order_status_history enable trigger order_status_history_append_only;
alter table public.order_refunds enable trigger order_refunds_append_only;
alter table public.product_moderation enable trigger product_moderation_append_only;
