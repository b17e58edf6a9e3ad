-- squawk-disable-assume-in-transaction
-- Review R12 finding 4 (issue 11): at most one `health` event per (deployment, revocation) and one
-- per (deployment, rotation), enforced by the database whatever the callers' isolation level (the
-- look-up-then-insert of deployment_events__record_health / __record_rotation_health holds under
-- READ COMMITTED only). This file: the revocations' index, keyed on the payload's `revocation_id`
-- (operation revoke, 20261205100000_health_events.sql) as text, as the function looks it up (so the
-- look-up uses this index too). The rotations' index is 20261206090050_health_events_unique_rotation.sql,
-- a file of its own (review R16 F8: with two builds in one file a failure could leave one index
-- valid and the other invalid, and no single recovery fitted both). 20261206090100_health_events_on_conflict.sql
-- makes the functions insert with ON CONFLICT DO NOTHING.
--
-- Built CONCURRENTLY (deployment events are written by every step of every provision), so outside
-- a transaction, as the pinned CLI runs a file marked as above (.squawk.toml); `set`, not `set
-- local`, reset at the end.
--
-- No lock_timeout (review R16 F7). The build's own lock, SHARE UPDATE EXCLUSIVE, blocks no read and
-- no write (only DDL, VACUUM and other index builds on the table), so a short lock_timeout protects
-- nothing. But the build also waits, as lock waits, for every transaction that writes the table and
-- then for every transaction in the database whose snapshot is older than its own: with
-- lock_timeout = '5s' any transaction open for more than ~5 s (a REPEATABLE READ one, a long report,
-- an idle-in-transaction session) failed the build with 55P03. Now it waits for them; the
-- statement_timeout bounds the whole build, waits included.
set lock_timeout = 0;
set statement_timeout = '30min';

-- No `if not exists`: a rerun after a failed build must not take the INVALID index left behind
-- for a built one (ON CONFLICT does not take an invalid index as its arbiter); it fails on the
-- name (42P07) until that index is dropped.
-- squawk-ignore prefer-robust-stmts
create unique index concurrently deployment_events_health_revocation_key
  on public.deployment_events (deployment_id, (payload ->> 'revocation_id'))
  where kind = 'health' and (payload ->> 'revocation_id') is not null;

reset lock_timeout;
reset statement_timeout;

-- If this file fails, the migration is not recorded and the index is left behind INVALID (used by
-- no query and no ON CONFLICT, still updated by every insert); the next run of the migrations fails
-- on its name (42P07) until it is dropped. What to do, in psql as the role that runs the migrations:
--
-- 1. Only if it failed with 23505 (could not create unique index, Key (deployment_id, (payload ->>
--    'revocation_id'::text))=(…) is duplicated): two health events of one (deployment, revocation),
--    possible only through the race this closes. Find them (the lowest id of each is the one the
--    functions return; it stays):
--      select deployment_id, payload ->> 'revocation_id' as revocation_id, array_agg(id order by id) as ids
--      from public.deployment_events
--      where kind = 'health' and payload ->> 'revocation_id' is not null
--      group by 1, 2 having count(*) > 1;
--    Delete the later ones, their webhook deliveries first (foreign key; a receiver may already have
--    had both). The event log is append-only: its trigger refuses a delete (42501) even to a
--    superuser, except to cortex_api_retention (20261202100000_retention.sql, which made the role
--    that ran it a member, so it may `set role`; that role may delete both tables' rows):
--      begin;
--      set local role cortex_api_retention;
--      delete from public.webhook_deliveries where event_id in (
--        select id from (select id, row_number() over (partition by deployment_id, payload ->> 'revocation_id' order by id) as n
--                        from public.deployment_events
--                        where kind = 'health' and payload ->> 'revocation_id' is not null) d
--        where n > 1);
--      delete from public.deployment_events where id in (
--        select id from (select id, row_number() over (partition by deployment_id, payload ->> 'revocation_id' order by id) as n
--                        from public.deployment_events
--                        where kind = 'health' and payload ->> 'revocation_id' is not null) d
--        where n > 1);
--      commit;
-- 2. After any failure (23505 once step 1 is done, 57014 after 30 min, a lost connection): drop
--    what the build left (outside a transaction block; a no-op if there is nothing):
--      drop index concurrently if exists public.deployment_events_health_revocation_key;
-- 3. Run the migrations again (scripts/db-setup.sh <database url>, or `supabase migration up`).
