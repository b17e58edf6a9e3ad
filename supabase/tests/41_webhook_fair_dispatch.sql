-- Fair webhook dispatch (20261207110000_webhook_fair_dispatch.sql, review R15 finding 6): the claim
-- queues a pending delivery only while its endpoint and its organisation are under their caps of
-- queued deliveries, oldest first, and never while the endpoint's breaker is open; what it holds
-- back stays pending. The breaker opens after N failures in a row that cost a slot, for a cool-down
-- that doubles and is bounded; a job of an open endpoint is told to hold (no POST, no attempt); a
-- 2xx closes and resets it; a 4xx neither counts nor resets. The functions keep the contract's
-- rules: security definer, search_path pinned, EXECUTE for cortex_orchestrator only.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(47);

-- ---- privileges and shape --------------------------------------------------------------------------
select ok(not has_function_privilege(r, f, 'execute'), r || ' may not execute ' || f)
from unnest(array['anon', 'authenticated', 'service_role']) r,
     unnest(array['public.webhook_deliveries__claim(integer, integer, integer, integer, integer)',
                  'public.webhook_deliveries__record(bigint, text, integer, text, integer, integer, integer)',
                  'public.webhook_deliveries__begin(bigint, integer)']) f;
select ok(has_function_privilege('cortex_orchestrator', f, 'execute'), 'cortex_orchestrator executes ' || f)
from unnest(array['public.webhook_deliveries__claim(integer, integer, integer, integer, integer)',
                  'public.webhook_deliveries__record(bigint, text, integer, text, integer, integer, integer)']) f;
select ok((select bool_and(p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp']) from pg_proc p
           where p.oid in ('public.webhook_deliveries__claim(integer, integer, integer, integer, integer)'::regprocedure,
                           'public.webhook_deliveries__record(bigint, text, integer, text, integer, integer, integer)'::regprocedure,
                           'public.webhook_deliveries__begin(bigint, integer)'::regprocedure)),
  'claim, begin and record are security definer with search_path = pg_catalog, pg_temp');
select ok(to_regprocedure('public.webhook_deliveries__claim(integer, integer)') is null
          and to_regprocedure('public.webhook_deliveries__record(bigint, text, integer, text)') is null,
  'the old signatures are gone (no overload to pick by mistake)');

-- ---- fixtures: org A with three endpoints and four deployments; then org B with one of each ---------
select public.organizations__create('Fair Org A') ->> 'id' as org_a \gset
select public.organizations__create('Fair Org B') ->> 'id' as org_b \gset
select public.webhook_endpoints__create(:'org_a', 'https://a1.example.com/h') ->> 'id' as a1 \gset
select public.webhook_endpoints__create(:'org_a', 'https://a2.example.com/h') ->> 'id' as a2 \gset
select public.webhook_endpoints__create(:'org_a', 'https://a3.example.com/h') ->> 'id' as a3 \gset
select public.webhook_endpoints__create(:'org_b', 'https://b1.example.com/h') ->> 'id' as b1 \gset
-- each new deployment's `requested` status: one delivery per active endpoint of its org
select count(public.deployments__create(:'org_a', 'fair ' || i, 'fair-a' || i || '-' || substr(md5(random()::text), 1, 6))) as x
from generate_series(1, 4) i \gset
select public.deployments__create(:'org_b', 'fair b', 'fair-b-' || substr(md5(random()::text), 1, 6)) is not null as x \gset
select is((select count(*) from public.webhook_deliveries where org_id = :'org_a' and state = 'pending'), 12::bigint,
  'org A has twelve pending deliveries (four per endpoint), older than org B''s one');

create function pg_temp.queued(p_endpoint uuid) returns bigint language sql as $$
  select count(*) from public.webhook_deliveries where endpoint_id = p_endpoint and state = 'queued'
$$;

-- ---- the caps --------------------------------------------------------------------------------------
select public.webhook_deliveries__claim(100, 900, 2, 5) as claimed \gset
select is(array(select pg_temp.queued(e) from unnest(array[:'a1', :'a2', :'a3']::uuid[]) e order by 1), array[1, 2, 2]::bigint[],
  'per endpoint at most 2, per organisation at most 5: org A''s three endpoints get 2, 2 and 1');
select is(pg_temp.queued(:'b1'), 1::bigint, 'org B''s delivery is queued in the same claim, behind none of org A''s backlog');
select is((select count(*) from public.webhook_deliveries where org_id = :'org_a' and state = 'pending'), 7::bigint,
  'what the caps hold back stays pending (nothing lost)');
select is((select count(*) from public.webhook_deliveries p where p.org_id = :'org_a' and p.state = 'pending'
   and p.id < (select max(q.id) from public.webhook_deliveries q where q.endpoint_id = p.endpoint_id and q.state = 'queued')),
  0::bigint, 'each endpoint''s oldest deliveries go first');
select is(jsonb_array_length(public.webhook_deliveries__claim(100, 900, 2, 5)), 0, 'at the caps, a second claim takes nothing');

select min(id) as a1_first from public.webhook_deliveries where endpoint_id = :'a1' and state = 'queued' \gset
select is(public.webhook_deliveries__record(:a1_first, 'delivered', 204) ->> 'state', 'delivered', 'one of A1''s is delivered');
-- the next in line: org A's oldest pending delivery of an endpoint under its cap
select min(w.id) as a_next from public.webhook_deliveries w
where w.org_id = :'org_a' and w.state = 'pending' and pg_temp.queued(w.endpoint_id) < 2 \gset
select is(public.webhook_deliveries__claim(100, 900, 2, 5), jsonb_build_array(:a_next::bigint),
  'the freed slot takes exactly one more: the next in line');
select is((select count(*) from public.webhook_deliveries where org_id = :'org_a' and state = 'queued'), 5::bigint,
  'org A is back at its cap');

-- a queued row whose job Redis may have lost is queued again after the requeue delay, whatever the caps
update public.webhook_deliveries set queued_at = now() - interval '1 hour'
where id = (select min(id) from public.webhook_deliveries where endpoint_id = :'a2' and state = 'queued');
select is(jsonb_array_length(public.webhook_deliveries__claim(100, 900, 2, 5)), 1, 'a stale queued row is queued again');
select is((select count(*) from public.webhook_deliveries where org_id = :'org_a' and state = 'queued'), 5::bigint,
  'and counted once');

select throws_ok('select public.webhook_deliveries__claim(100, 900, 0, 5)', '22023', 'per_endpoint: must be between 1 and 1000',
  'a cap must be at least 1');
select throws_ok('select public.webhook_deliveries__claim(100, 900, 2, null)', '22023', 'per_org: must be between 1 and 1000',
  'the organisation''s cap too');

-- ---- the breaker (org C: one endpoint, four deliveries) -------------------------------------------------
select public.organizations__create('Fair Org C') ->> 'id' as org_c \gset
select public.webhook_endpoints__create(:'org_c', 'https://c1.example.com/h') ->> 'id' as c1 \gset
select count(public.deployments__create(:'org_c', 'fair c' || i, 'fair-c' || i || '-' || substr(md5(random()::text), 1, 6))) as x
from generate_series(1, 4) i \gset
select public.webhook_deliveries__claim(100, 900, 2, 5) as claimed \gset
select array_agg(id order by id) as c_ids from public.webhook_deliveries where endpoint_id = :'c1' \gset
select (:'c_ids'::bigint[])[1] as c_1, (:'c_ids'::bigint[])[2] as c_2 \gset
select is(pg_temp.queued(:'c1'), 2::bigint, 'C1''s two oldest are queued');

select is(public.webhook_deliveries__record(:c_1, 'retry', 404, 'http_status', 2, 1000, 8000) ->> 'consecutive_failures', '0',
  'a 404 (answered at once) does not count');
select is(public.webhook_deliveries__record(:c_1, 'retry', null, 'timeout', 2, 1000, 8000) ->> 'breaker_opened', 'false',
  'one timeout: counted, the breaker still closed');
select is(public.webhook_deliveries__record(:c_2, 'retry', 503, 'http_status', 2, 1000, 8000) ->> 'breaker_opened', 'true',
  'the second failure in a row (a 503) opens the breaker');
select is((select breaker_open_until - now() from public.webhook_endpoints where id = :'c1'), interval '1 second',
  'for the first cool-down');
select is((select (e ->> 'consecutive_failures')::int from jsonb_array_elements(public.webhook_endpoints__list(:'org_c')) e
           where e ->> 'id' = :'c1'), 2, 'the endpoint list shows the failures in a row');
select ok((select (e ->> 'breaker_open_until') is not null from jsonb_array_elements(public.webhook_endpoints__list(:'org_c')) e
           where e ->> 'id' = :'c1'), 'and until when the breaker is open');

-- 20261207140000 (review R21 F3): the held row goes back to pending (no slot kept) and the job is skipped
select is(public.webhook_deliveries__begin(:c_1) ->> 'action', 'skip', 'a job of an open endpoint makes no POST');
select is((select attempts || ':' || state from public.webhook_deliveries where id = :c_1), '2:pending',
  'a hold spends no attempt and puts the row back to pending');
select is(public.webhook_deliveries__record(:c_1, 'retry', null, 'connection_failed', 2, 1000, 8000) -> 'breaker_open_until',
  (select to_jsonb(breaker_open_until) from public.webhook_endpoints where id = :'c1'),
  'a failure of an attempt already under way does not extend an open breaker');
select is(public.webhook_deliveries__record(:c_2, 'failed', 503, 'http_status', 2, 1000, 8000) ->> 'state', 'failed',
  'C1''s second delivery fails for good: a slot frees');
select public.webhook_deliveries__claim(100, 900, 2, 5) as claimed \gset
select is(pg_temp.queued(:'c1'), 0::bigint, 'no pending delivery of an endpoint whose breaker is open is queued');

-- the cool-down ends (moved into the past: time does not pass inside one transaction)
update public.webhook_endpoints set breaker_open_until = now() - interval '1 millisecond' where id = :'c1';
select public.webhook_deliveries__claim(100, 900, 2, 5) as claimed \gset
select is(pg_temp.queued(:'c1'), 2::bigint, 'after the cool-down, C1''s next delivery is queued');
select is(public.webhook_deliveries__begin(:c_1) ->> 'action', 'deliver', 'and its held job delivers');
select is(public.webhook_deliveries__record(:c_1, 'retry', null, 'timeout', 2, 1000, 8000) ->> 'breaker_opened', 'true',
  'a failure after the cool-down opens it again at once');
select is((select breaker_open_until - now() from public.webhook_endpoints where id = :'c1'), interval '2 seconds',
  'for twice as long');
update public.webhook_endpoints set breaker_open_until = now() - interval '1 millisecond', breaker_opens = 40 where id = :'c1';
select public.webhook_deliveries__record(:c_1, 'retry', null, 'tls_failed', 2, 1000, 8000) as rec \gset
select is((select breaker_open_until - now() from public.webhook_endpoints where id = :'c1'), interval '8 seconds',
  'and never longer than the bound');
select is(public.webhook_deliveries__record(:c_1, 'delivered', 200, null, 2, 1000, 8000) ->> 'breaker_open_until', null,
  'a 2xx closes the breaker');
select is((select consecutive_failures || ':' || breaker_opens from public.webhook_endpoints where id = :'c1'), '0:0',
  'and resets its count and its cool-down');

select throws_ok(format('select public.webhook_deliveries__record(%s, %L, null, %L, 0)', :c_2, 'retry', 'timeout'), '22023',
  'breaker_failures: must be between 1 and 1000', 'the breaker''s threshold is checked');
select throws_ok(format('select public.webhook_deliveries__record(%s, %L, null, %L, 5, 2000, 1000)', :c_2, 'retry', 'timeout'),
  '22023', 'breaker_max_cooldown_ms: must be between breaker_cooldown_ms and 86400000', 'and its bound');

select * from finish();
rollback;
