-- Credits, part 6: expiry. What is left of a lot past its expires_at is not spendable; the
-- sweep moves it to the system account `expiry`, once, and the user sees an `expiry` movement.
-- One call sweeps about `max_lots` lots (a user's lots go together, so the last user may take it
-- over): a call stays well inside the API's statement timeout however many lots expire at once.
-- Call again while lots_expired >= max_lots.

create or replace function public.expire_credits(as_of timestamptz default now(), max_lots integer default 1000)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_as_of timestamptz := expire_credits.as_of;
  v_max integer := expire_credits.max_lots;
  v_user uuid;
  v_lot record;
  v_lots integer := 0;
  v_users integer := 0;
  v_total numeric := 0;
begin
  perform mycelium_private.require_service();
  if v_as_of is null or v_as_of > now() then
    perform mycelium_private.fail('invalid_argument', 'as_of must be a time not in the future');
  end if;
  if v_max is null or v_max < 1 or v_max > 100000 then
    perform mycelium_private.fail('invalid_argument', 'max_lots must be from 1 to 100000');
  end if;

  -- Each user with a lot to sweep gives at least one: max_lots users are enough for max_lots lots.
  for v_user in
    select distinct l.user_id from public.credit_lots l
    where l.live and l.expires_at <= v_as_of
    order by l.user_id
    limit v_max
  loop
    exit when v_lots >= v_max;
    perform mycelium_private.lock_account(v_user);
    -- Re-read under the account lock: a concurrent sweep may have taken these lots already.
    for v_lot in
      select l.id, l.remaining, l.expires_at from public.credit_lots l
      where l.user_id = v_user and l.live and l.expires_at <= v_as_of
      order by l.expires_at, l.id
    loop
      perform mycelium_private.create_transfer('expiry', v_lot.remaining, p_from_user => v_user, p_to_system => 'expiry',
        p_reference => 'lot:' || v_lot.id, p_memo => 'credits expired', p_expires_at => v_lot.expires_at);
      v_lots := v_lots + 1;
      v_total := v_total + v_lot.remaining;
    end loop;
    -- A concurrent sweep may have taken this user's lots already: counted only if some were left.
    if found then
      v_users := v_users + 1;
    end if;
  end loop;

  return jsonb_build_object('as_of', v_as_of, 'lots_expired', v_lots, 'users', v_users, 'credits_expired', v_total);
end;
$$;

revoke execute on function public.expire_credits(timestamptz, integer) from public, anon, authenticated;
grant execute on function public.expire_credits(timestamptz, integer) to service_role;
