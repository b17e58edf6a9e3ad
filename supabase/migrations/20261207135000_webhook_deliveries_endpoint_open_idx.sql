-- squawk-disable-assume-in-transaction
-- Review R21 finding 1: webhook_deliveries__claim (20261207140000_webhook_fair_dispatch_fixes.sql)
-- looks at each endpoint's queued deliveries and its first few pending ones instead of ranking
-- every open delivery: a dead endpoint's backlog of 200,000 rows made each claim take 200-330 ms
-- under the claims' lock. This index is what it reads: per endpoint and state, in id order, open
-- rows only (a final row leaves it).
--
-- Built CONCURRENTLY: webhook_deliveries is written by every status change of every deployment (the
-- outbox), so a plain build's SHARE lock would block those writers (and the deployments' pipeline)
-- for the build's length. Hence a file of its own, outside a transaction, as the pinned CLI runs a
-- file marked as above (.squawk.toml); `set`, not `set local`, reset at the end.
--
-- No lock_timeout, as in 20261206090000_health_events_unique.sql (review R16 F7): the build's own
-- lock blocks no read and no write, and it waits, as lock waits, for older transactions; a short
-- lock_timeout would fail it for any transaction open a few seconds. statement_timeout bounds it.
set lock_timeout = 0;
set statement_timeout = '30min';

-- No `if not exists`: a rerun after a failed build must not take the INVALID index left behind for
-- a built one; it fails on the name (42P07) until that index is dropped (below).
-- squawk-ignore prefer-robust-stmts
create index concurrently webhook_deliveries_endpoint_open_idx
  on public.webhook_deliveries (endpoint_id, state, id)
  where state in ('pending', 'queued');

reset lock_timeout;
reset statement_timeout;

-- If this file fails (57014 after 30 min, a lost connection), the migration is not recorded and the
-- index is left behind INVALID. Drop it (outside a transaction block; a no-op if there is nothing):
--   drop index concurrently if exists public.webhook_deliveries_endpoint_open_idx;
-- then run the migrations again (scripts/db-setup.sh <database url>, or `supabase migration up`).
