// What a dashboard does with @supabase/supabase-js and nothing of Mycelium's: sign in, read the
// balance, send credits with an idempotency key (twice, as a retry after a lost answer would),
// read the balance again and the history. tests/client/test_ecosystem.py runs it and checks what it
// prints: one JSON object on stdout, or, at the first refusal, {"step", "error"} and exit code 1.
//
// Environment: SUPABASE_URL, SUPABASE_ANON_KEY, DASHBOARD_EMAIL, DASHBOARD_PASSWORD,
// DASHBOARD_RECIPIENT (a user id), DASHBOARD_AMOUNT (a decimal string), DASHBOARD_IDEMPOTENCY_KEY.
//
// Node 20 needs --experimental-websocket: createClient builds the Realtime client at once and
// refuses to without a global WebSocket, which Node has by default only from 22 on.

import { createClient } from '@supabase/supabase-js';

function fail(step, error) {
  process.stdout.write(`${JSON.stringify({ step, error })}\n`);
  process.exit(1);
}

function setting(name) {
  const value = process.env[name];
  if (!value) fail('environment', { message: `${name} is not set` });
  return value;
}

// supabase-js answers { data, error } and never throws for a refusal: stop at the first one.
async function check(step, request) {
  const { data, error } = await request;
  if (error) fail(step, error);
  return data;
}

const supabase = createClient(setting('SUPABASE_URL'), setting('SUPABASE_ANON_KEY'), {
  auth: { persistSession: false, autoRefreshToken: false },
});

// supabase-js parses numeric columns into JS numbers (doubles): exact up to 15 significant digits.
// A dashboard that must show any amount exactly asks PostgREST for the text as well (`::text`).
const ACCOUNT = 'user_id, balance, held, balance_text:balance::text';
const ENTRY = 'kind, amount, amount_text:amount::text, balance_after, counterparty_id, memo, reference';

const signedIn = await check(
  'sign in',
  supabase.auth.signInWithPassword({
    email: setting('DASHBOARD_EMAIL'),
    password: setting('DASHBOARD_PASSWORD'),
  }),
);
const before = await check('balance', supabase.from('credit_accounts').select(ACCOUNT));

// The amount goes as a string, as a form field gives it: a JSON number would pass through a double.
const transfer = {
  recipient: setting('DASHBOARD_RECIPIENT'),
  amount: setting('DASHBOARD_AMOUNT'),
  memo: 'from the dashboard',
  idempotency_key: setting('DASHBOARD_IDEMPOTENCY_KEY'),
};
const sent = await check('transfer', supabase.rpc('transfer_credits', transfer));
const resent = await check('transfer again', supabase.rpc('transfer_credits', transfer));

const after = await check('balance after', supabase.from('credit_accounts').select(ACCOUNT));
const history = await check('history', supabase.rpc('credit_history', { page_size: 10 }).select(ENTRY));
const { error: signOutError } = await supabase.auth.signOut();
if (signOutError) fail('sign out', signOutError);

process.stdout.write(
  `${JSON.stringify({
    user_id: signedIn.user.id,
    balance_type: typeof before[0]?.balance,
    before,
    sent,
    resent,
    after,
    history,
  })}\n`,
);
