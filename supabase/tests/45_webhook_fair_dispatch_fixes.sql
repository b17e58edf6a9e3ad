-- Fair webhook dispatch, fixes (20261207140000_webhook_fair_dispatch_fixes.sql, review R21): a held
-- job puts its row back to pending (its organisation's slots go to its healthy endpoints); a delivery
-- older than the maximum age ends failed/expired (in the claim and in begin); the claim reads each
-- endpoint's first rows through webhook_deliveries_endpoint_open_idx and skips its turn when another
-- claim holds the lock; rows without a live job are released to pending; a 429 does not count for
-- the breaker. Grants as before: EXECUTE for cortex_orchestrator only.
begin;
create extension if not exists pgtap with schema extensions;
create extension if not exists dblink with schema extensions;
set local search_path = extensions, public;
select plan(35);

-- ---- privileges and shape --------------------------------------------------------------------------
select ok(not has_function_privilege(r, f, 'execute'), r || ' may not execute ' || f)
from unnest(array['anon', 'authenticated', 'service_role']) r,
     unnest(array['public.webhook_deliveries__claim(integer, integer, integer, integer, integer)',
                  'public.webhook_deliveries__begin(bigint, integer)',
                  'public.webhook_deliveries__release(bigint[])']) f;
select ok(bool_and(has_function_privilege('cortex_orchestrator', f, 'execute')), 'cortex_orchestrator executes claim, begin and release')
from unnest(array['public.webhook_deliveries__claim(integer, integer, integer, integer, integer)',
                  'public.webhook_deliveries__begin(bigint, integer)',
                  'public.webhook_deliveries__release(bigint[])']) f;
select ok((select bool_and(p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp']) from pg_proc p
           where p.oid in ('public.webhook_deliveries__release(bigint[])'::regprocedure,
                           'public.webhook_deliveries__begin(bigint, integer)'::regprocedure)),
  'release and begin are security definer with search_path = pg_catalog, pg_temp');
select ok(to_regprocedure('public.webhook_deliveries__claim(integer, integer, integer, integer)') is null
          and to_regprocedure('public.webhook_deliveries__begin(bigint)') is null,
  'the old signatures are gone (no overload to pick by mistake)');
select ok((select i.indisvalid from pg_index i where i.indexrelid = 'public.webhook_deliveries_endpoint_open_idx'::regclass),
  'the per-endpoint index of open deliveries exists and is valid');

create function pg_temp.queued(p_endpoint uuid) returns bigint language sql as $$
  select count(*) from public.webhook_deliveries where endpoint_id = p_endpoint and state = 'queued'
$$;
create function pg_temp.deploy(p_org uuid, p_n integer) returns bigint language sql as $$
  select count(public.deployments__create(p_org, 'fix ' || i, 'fix-' || i || '-' || substr(md5(random()::text), 1, 8)))
  from generate_series(1, p_n) i
$$;

-- ---- F3: held rows hold no slot of their organisation ---------------------------------------------------
select public.organizations__create('Fix Org D') ->> 'id' as org_d \gset
select public.webhook_endpoints__create(:'org_d', 'https://d1.example.com/h') ->> 'id' as d1 \gset
select public.webhook_endpoints__create(:'org_d', 'https://d2.example.com/h') ->> 'id' as d2 \gset
select public.webhook_endpoints__create(:'org_d', 'https://d3.example.com/h') ->> 'id' as d3 \gset
select pg_temp.deploy(:'org_d', 3) as x \gset
select public.webhook_deliveries__claim(100, 900, 2, 5) as claimed \gset
select is(array(select pg_temp.queued(e) from unnest(array[:'d1', :'d2', :'d3']::uuid[]) e order by 1), array[1, 2, 2]::bigint[],
  'org D''s three endpoints take its five slots');
-- the three go dead: their breakers open; then a healthy endpoint joins and an event comes
update public.webhook_endpoints set breaker_open_until = now() + interval '1 hour', consecutive_failures = 5, breaker_opens = 1
where id in (:'d1', :'d2', :'d3');
select public.webhook_endpoints__create(:'org_d', 'https://d4.example.com/h') ->> 'id' as d4 \gset
select pg_temp.deploy(:'org_d', 1) as x \gset
select is(jsonb_array_length(public.webhook_deliveries__claim(100, 900, 2, 5)), 0,
  'control: while the dead endpoints'' rows are queued, the healthy one gets no slot');
-- each queued job of a dead endpoint begins: the breaker is open
select is(array_agg(distinct b.plan ->> 'action' || '/' || (b.plan ->> 'state')), array['skip/pending'],
  'a job of an open endpoint is skipped (what every worker completes), its row back to pending')
from (select public.webhook_deliveries__begin(w.id) as plan from public.webhook_deliveries w
      where w.endpoint_id in (:'d1', :'d2', :'d3') and w.state = 'queued' order by w.id) b;
select is((select count(*) from public.webhook_deliveries where org_id = :'org_d' and state = 'queued'), 0::bigint,
  'no row of a dead endpoint holds a slot');
select is((select sum(attempts) from public.webhook_deliveries where endpoint_id in (:'d1', :'d2', :'d3')), 0::bigint,
  'no attempt spent');
select public.webhook_deliveries__claim(100, 900, 2, 5) as claimed \gset
select is(pg_temp.queued(:'d4'), 1::bigint, 'the healthy endpoint''s delivery is queued at the next claim');
select is((select count(*) from public.webhook_deliveries where endpoint_id in (:'d1', :'d2', :'d3') and state = 'queued'),
  0::bigint, 'the dead endpoints'' rows wait pending until their breakers close');

-- ---- F1 (b): slots counted from every queued row, whatever its age among the pending ones ----------------
select public.organizations__create('Fix Org E') ->> 'id' as org_e \gset
select public.webhook_endpoints__create(:'org_e', 'https://e1.example.com/h') ->> 'id' as e1 \gset
select pg_temp.deploy(:'org_e', 5) as x \gset
-- the newest is queued (e.g. claimed while the older ones were released); the four older ones pending
update public.webhook_deliveries set state = 'queued', queued_at = now()
where id = (select max(id) from public.webhook_deliveries where endpoint_id = :'e1');
select public.webhook_deliveries__claim(100, 900, 2, 5) as claimed \gset
select is(pg_temp.queued(:'e1'), 2::bigint, 'a queued row newer than the pending ones still takes a slot of the cap');
select is((select min(id) from public.webhook_deliveries where endpoint_id = :'e1' and state = 'queued'),
  (select min(id) from public.webhook_deliveries where endpoint_id = :'e1'), 'and the oldest pending one went');

-- ---- F1 (a): the maximum age -------------------------------------------------------------------------
select public.organizations__create('Fix Org F') ->> 'id' as org_f \gset
select public.webhook_endpoints__create(:'org_f', 'https://f1.example.com/h') ->> 'id' as f1 \gset
select pg_temp.deploy(:'org_f', 3) as x \gset
select array_agg(id order by id) as f_ids from public.webhook_deliveries where endpoint_id = :'f1' \gset
select (:'f_ids'::bigint[])[1] as f_1, (:'f_ids'::bigint[])[2] as f_2, (:'f_ids'::bigint[])[3] as f_3 \gset
update public.webhook_deliveries set created_at = now() - interval '25 hours' where id in (:f_1, :f_2);
select public.webhook_deliveries__claim(100, 900, 2, 5, 86400) as claimed \gset
select is((select state || '/' || last_error || '/' || attempts from public.webhook_deliveries where id = :f_1), 'failed/expired/0',
  'a pending delivery past the maximum age ends failed, error expired, in the claim');
select ok((select finished_at is not null from public.webhook_deliveries where id = :f_1), 'finished');
select ok(not (:'claimed'::jsonb @> to_jsonb(:f_1)), 'and is not queued');
select is((select state from public.webhook_deliveries where id = :f_3), 'queued', 'a young one is queued as before');
-- f_2 was expired by the claim too; a queued row that grew old is expired by begin
update public.webhook_deliveries set created_at = now() - interval '2 hours' where id = :f_3;
select is(public.webhook_deliveries__begin(:f_3, 3600) ->> 'state', 'failed', 'begin expires a queued delivery past the age');
select is((select state || '/' || last_error from public.webhook_deliveries where id = :f_3), 'failed/expired',
  'recorded failed/expired, nothing sent');
select throws_ok('select public.webhook_deliveries__claim(100, 900, 2, 5, 59)', '22023',
  'max_age_seconds: must be between 60 and 2592000', 'the age is checked');

-- ---- F1 (c): a claim does not wait behind another ---------------------------------------------------------
-- this session takes the claims' lock; a claim in another session (dblink) returns at once, with nothing
select pg_advisory_xact_lock(7765626801);
select dblink_connect('fix45', format('dbname=%s host=127.0.0.1 port=%s user=postgres', current_database(), current_setting('port')));
select dblink_exec('fix45', 'set statement_timeout = 2000');
select is((select c from dblink('fix45', 'select public.webhook_deliveries__claim()::text') as t(c text)), '[]',
  'a claim that finds the lock taken returns [] instead of waiting');
select dblink_disconnect('fix45');

-- ---- F2: release ---------------------------------------------------------------------------------------
select public.organizations__create('Fix Org G') ->> 'id' as org_g \gset
select public.webhook_endpoints__create(:'org_g', 'https://g1.example.com/h') ->> 'id' as g1 \gset
select pg_temp.deploy(:'org_g', 3) as x \gset
select public.webhook_deliveries__claim(100, 900, 2, 5) as claimed \gset
select array_agg(id order by id) as g_ids from public.webhook_deliveries where endpoint_id = :'g1' \gset
select public.webhook_deliveries__record((:'g_ids'::bigint[])[1], 'delivered', 204) as rec \gset
select is(public.webhook_deliveries__release(:'g_ids'::bigint[]), jsonb_build_array((:'g_ids'::bigint[])[2]),
  'release puts back only the queued row (not the delivered one, not the pending one)');
select is(array(select state from public.webhook_deliveries where endpoint_id = :'g1' order by id),
  array['delivered', 'pending', 'pending'], 'back to pending: it holds no slot');
select throws_ok(format('select public.webhook_deliveries__release(%L)', (select array_agg(i) from generate_series(1, 1001) i)),
  '22023', 'ids: must be a list of at most 1000 delivery ids', 'release is bounded');

-- ---- F6: a 429 does not count for the breaker; a 408 still does -------------------------------------------
select public.webhook_deliveries__claim(100, 900, 2, 5) as claimed \gset
select is(public.webhook_deliveries__record((:'g_ids'::bigint[])[2], 'retry', 429, 'http_status') ->> 'consecutive_failures', '0',
  'a 429 does not count');
select is(public.webhook_deliveries__record((:'g_ids'::bigint[])[2], 'retry', 408, 'http_status') ->> 'consecutive_failures', '1',
  'control: a 408 counts');

select * from finish();
rollback;
