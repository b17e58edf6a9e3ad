-- secret_revocations__show (20261204120000_revocation_get_org.sql): a revocation as the API and the
-- CLI show it. An org-scoped caller sees only its organisation's (another org's: P0002, the same
-- answer as an id nobody opened); no organisation (an ops caller) sees any; a missing id names the
-- field; the answer carries no value; only cortex_orchestrator may call it.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(15);
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

select 'canary-revget-' || md5(random()::text) as val \gset
select public.organizations__create('revocation show A') ->> 'id' as org_a \gset
select public.organizations__create('revocation show B') ->> 'id' as org_b \gset
select public.deployments__create(:'org_a', 'RevGet', 'revget-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select public.secrets__create(:'org_a', 'anthropic', 'anthropic', :'val', pg_temp.fp(:'val')) ->> 'secret_id' as sec \gset
select public.deployment_secrets__bind(:'dep', 'ANTHROPIC_API_KEY', :'sec') is not null as b \gset

-- ---- privileges and shape ---------------------------------------------------------------------------
select ok(not has_function_privilege(r, 'public.secret_revocations__show(uuid, uuid)', 'execute'),
  r || ' may not call secret_revocations__show')
from unnest(array['anon', 'authenticated', 'service_role', 'public']) r;
select ok(has_function_privilege('cortex_orchestrator', 'public.secret_revocations__show(uuid, uuid)', 'execute'),
  'cortex_orchestrator may call secret_revocations__show');
select is((select p.prosecdef and coalesce(p.proconfig @> array['search_path=pg_catalog, pg_temp'], false)
   from pg_proc p where p.oid = 'public.secret_revocations__show(uuid, uuid)'::regprocedure),
  true, 'security definer with search_path = pg_catalog, pg_temp');

-- ---- what it shows, to whom ---------------------------------------------------------------------------
set local role cortex_orchestrator;
select public.secrets__request_revoke(:'sec', :'dep', null, 'token:t') ->> 'revocation_id' as rev \gset
select public.secret_revocations__show(:'rev', :'org_a') as shown \gset
select public.secret_revocations__show(:'rev') as shown_ops \gset
select throws_ok(format('select public.secret_revocations__show(%L, %L)', :'rev', :'org_b'), 'P0002',
  format('revocation %s not found', :'rev'), 'another organisation''s revocation: not found');
select throws_ok(format('select public.secret_revocations__show(%L, %L)', gen_random_uuid(), :'org_a'), 'P0002', null,
  'an id nobody opened: not found (the same answer)');
select throws_ok('select public.secret_revocations__show(null, null)', '22023', 'revocation_id: is required',
  'a missing id names the field');
select throws_ok('select public.secret_revocations__show(''not-a-uuid'')', '22P02', null,
  'a malformed id is refused as bad input');
reset role;
select is((:'shown'::jsonb) ->> 'id', :'rev', 'its own organisation sees it');
select is(array[(:'shown'::jsonb) ->> 'secret_id', (:'shown'::jsonb) ->> 'deployment_id', (:'shown'::jsonb) ->> 'state',
    (:'shown'::jsonb) ->> 'attempts'],
  array[:'sec', :'dep', 'open', '0'], 'secret, deployment, open, no run yet');
select is((:'shown_ops'::jsonb), (:'shown'::jsonb), 'an ops caller (no organisation) sees the same');
select ok((:'shown'::jsonb)::text not like '%' || :'val' || '%' and (:'shown'::jsonb)::text not like '%canary%',
  'no value in the answer');

-- a finished run: done, its result and end time shown (the deployment unbound first: a
-- revocation is done only when it is, 20261204130000_revocation_finish_checked.sql)
set local role cortex_orchestrator;
select public.deployment_secrets__revoke(:'sec', :'rev', :'dep', 'orchestrator', 'revoke-' || :'rev') is not null as u \gset
select public.secret_revocations__finish(:'rev', true, jsonb_build_object('revoked', jsonb_build_array(:'dep'),
  'failed', '[]'::jsonb, 'vault_deleted', false)) is not null as f \gset
select public.secret_revocations__show(:'rev', :'org_a') as done \gset
reset role;
select is(array[(:'done'::jsonb) ->> 'state', (:'done'::jsonb) ->> 'attempts', (:'done'::jsonb) #>> '{result,revoked,0}',
    ((:'done'::jsonb) ->> 'finished_at' is not null)::text],
  array['done', '1', :'dep', 'true'], 'after its run: done, one attempt, the revoked deployment, its end time');

select * from finish();
rollback;
