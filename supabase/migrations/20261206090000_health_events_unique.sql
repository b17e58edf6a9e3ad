-- squawk-disable-assume-in-transaction
-- Review R12 finding 4 (issue 11): at most one `health` event per (deployment, revocation) and one
-- per (deployment, rotation), enforced by the database whatever the callers' isolation level (the
-- look-up-then-insert of deployment_events__record_health / __record_rotation_health holds under
-- READ COMMITTED only). The keys are the payload's `revocation_id` (operation revoke,
-- 20261205100000_health_events.sql) and `rotation_id` (operation rotate,
-- 20261205120000_rotation_health_events.sql), as text, as the functions look them up (so the
-- look-ups use these indexes too). 20261206090100_health_events_on_conflict.sql makes the functions
-- insert with ON CONFLICT DO NOTHING.
--
-- Built CONCURRENTLY (deployment events are written by every step of every provision), so outside
-- a transaction, as the pinned CLI runs a file marked as above (.squawk.toml); `set`, not `set
-- local`, reset at the end.
--
-- A database that already holds two health events of one (deployment, revocation) or (deployment,
-- rotation) (possible only through the race this closes) fails here: the build stops with 23505
-- naming the key, leaves the index behind INVALID and the migration unrecorded. Then delete the
-- later duplicate events and their webhook_deliveries (keep the lowest id: the one the functions
-- return), `drop index concurrently` the invalid index, and run the migrations again. Finding them:
--   select deployment_id, payload ->> 'revocation_id', array_agg(id order by id) from public.deployment_events
--   where kind = 'health' and payload ? 'revocation_id' group by 1, 2 having count(*) > 1;
--   (and the same with 'rotation_id')

set lock_timeout = '5s';
set statement_timeout = '30min';

-- No `if not exists`: a rerun after a failed build must not take the INVALID index left behind
-- for a built one (ON CONFLICT does not take an invalid index as its arbiter); it fails on the
-- name until that index is dropped.
-- squawk-ignore prefer-robust-stmts
create unique index concurrently deployment_events_health_revocation_key
  on public.deployment_events (deployment_id, (payload ->> 'revocation_id'))
  where kind = 'health' and (payload ->> 'revocation_id') is not null;

-- squawk-ignore prefer-robust-stmts
create unique index concurrently deployment_events_health_rotation_key
  on public.deployment_events (deployment_id, (payload ->> 'rotation_id'))
  where kind = 'health' and (payload ->> 'rotation_id') is not null;

reset lock_timeout;
reset statement_timeout;
