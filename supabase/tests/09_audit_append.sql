-- How audit rows are appended (the read path's throughput work must not change what is written):
-- one id per row, the v1 canonical form for org rows (so rows written before still verify), one
-- row per secret read or refused, and denials that only come after every check.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
-- pgTAP lives in `extensions`; the orchestrator's role needs it only to run the assertions here
grant usage on schema extensions to cortex_orchestrator;
select plan(9);
\ir support/read_intent.psql

select public.organizations__create('Test Org Append') ->> 'id' as org \gset
select public.deployments__create(:'org', 'A1', 'test-append-a1') ->> 'id' as dep \gset
select public.secrets__create(:'org', 'k1', 'other', 'canary-append-0001-p', repeat('ab', 32)) ->> 'secret_id' as s1 \gset
select public.secrets__create(:'org', 'k2', 'other', 'canary-append-0002-p', repeat('ab', 32)) ->> 'secret_id' as s2 \gset
select public.secrets__create(:'org', 'k3', 'other', 'canary-append-0003-p', repeat('ab', 32)) ->> 'secret_id' as s3 \gset
select public.deployment_secrets__bind(:'dep', 'K1', :'s1') is not null as ok \gset
select public.deployment_secrets__bind(:'dep', 'K2', :'s2') is not null as ok \gset
select public.deployment_secrets__bind(:'dep', 'K3', :'s3') is not null as ok \gset

create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;

set local role cortex_orchestrator;
select jsonb_array_length(public.deployment_secrets__read(:'dep', null, 'append-test', p_intent_id => pg_temp.read_intent(:'dep', null)) -> 'secrets') as n_read \gset
reset role;
select is(:'n_read'::int, 3, 'a read of three bound secrets returns three values');
select is((select array_agg(l.operation || '/' || l.outcome order by l.id) from public.secret_access_log l
           where l.id > (select id from log_mark)),
  array['read/success', 'read/success', 'read/success'], 'and writes exactly three read/success rows');
select is((select array_agg(t.seq - t.first_seq order by t.id)
           from (select l.id, l.seq, min(l.seq) over () as first_seq from public.secret_access_log l
                 where l.id > (select id from log_mark)) t),
  array[0, 1, 2]::bigint[], 'with consecutive seqs');
-- Before, the identity default drew an id that the chain trigger replaced, so ids went up by 2 per
-- row; concurrent writers of other chains can still take ids in between, hence "less than".
select cmp_ok((select max(l.id) - min(l.id) from public.secret_access_log l where l.id > (select id from log_mark)),
  '<', 4::bigint, 'drawing one id per row, not two');

-- the canonical form of an org row is still v1, computed here independently of the function
select is(
  (select count(*) from public.secret_access_log l
   where l.org_id = :'org' and l.hash <> encode(sha256(convert_to(jsonb_build_array(
     'cortex.secret_access_log.v1', l.seq, l.prev_id, l.prev_hash,
     to_char(l.at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'), l.org_id, l.deployment_id, l.secret_id,
     l.version, l.operation, l.outcome, l.actor, l.job_id, l.request_ip::text, l.user_agent, l.reason)::text,
     'UTF8')), 'hex')),
  0::bigint, 'org rows hash in the v1 canonical form, as rows written before this change do');
select is(public.secret_access_log__verify(:'org') ->> 'ok', 'true', 'and the chain verifies');

-- a read refused for two of three secrets: one denied row per refused secret, no success row
select public.secrets__revoke(:'s2', (public.secrets__request_revoke(:'s2', null, null, 'test') ->> 'revocation_id')::uuid)
  is not null as ok \gset
select public.organizations__create('Test Org Append B') ->> 'id' as org_b \gset
select public.secrets__create(:'org_b', 'kb', 'other', 'canary-append-0004-p', repeat('ab', 32)) ->> 'secret_id' as sb \gset
update log_mark set id = (select max(id) from public.secret_access_log);
set local role cortex_orchestrator;
select public.deployment_secrets__read(:'dep', array[:'s1', :'s2', :'sb']::uuid[], 'append-test', p_intent_id => pg_temp.read_intent(:'dep', array[:'s1', :'s2', :'sb']::uuid[])) as denied \gset
reset role;
select is((:'denied'::jsonb) ->> 'status', 'denied', 'a read with refused secrets is denied');
select is((select array_agg(coalesce(l.secret_id::text, '-') || ' ' || l.reason order by l.reason) from public.secret_access_log l
           where l.id > (select id from log_mark) and l.outcome = 'denied' and l.org_id = :'org'),
  array['- secret belongs to another organization', :'s2' || ' secret is revoked'],
  'each refused secret leaves a denied row naming its reason (another org''s secret unnamed)');
select is((select count(*) from public.secret_access_log l where l.id > (select id from log_mark) and l.org_id = :'org'), 2::bigint,
  'and nothing else is written: the entitled secret is neither read nor audited as read');

select * from finish();
rollback;
