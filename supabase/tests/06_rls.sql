-- Row-level security (DESIGN invariant 7): a signed-in member sees the metadata and audit rows of
-- their own organizations only, writes nothing, and never reaches a value; anon gets nothing.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(29);
\ir support/read_intent.psql

select public.organizations__create('Test Org RLS A') ->> 'id' as org_a \gset
select public.organizations__create('Test Org RLS B') ->> 'id' as org_b \gset
select gen_random_uuid() as user_a \gset
select gen_random_uuid() as user_b \gset
select public.organization_members__add(:'org_a', :'user_a') is not null as ok \gset
select public.organization_members__add(:'org_b', :'user_b') is not null as ok \gset

select public.deployments__create(:'org_a', 'A1', 'test-rls-a1') ->> 'id' as dep_a \gset
select public.deployments__create(:'org_b', 'B1', 'test-rls-b1') ->> 'id' as dep_b \gset
insert into public.deployment_steps (deployment_id, run, step, status, started_at)
values (:'dep_a', 1, 'host', 'running', now()), (:'dep_b', 1, 'host', 'running', now());
select public.secrets__create(:'org_a', 'k', 'anthropic', 'canary-rls-value-a-0001', repeat('ab', 32)) ->> 'secret_id' as s_a \gset
select public.secrets__create(:'org_b', 'k', 'anthropic', 'canary-rls-value-b-0001', repeat('ab', 32)) ->> 'secret_id' as s_b \gset
select public.deployment_secrets__bind(:'dep_a', 'KEY', :'s_a') is not null as ok \gset
select public.deployment_secrets__bind(:'dep_b', 'KEY', :'s_b') is not null as ok \gset
select public.deployment_secrets__read(:'dep_a', p_intent_id => pg_temp.read_intent(:'dep_a', null)) is not null as ok \gset
select public.deployment_secrets__read(:'dep_b', p_intent_id => pg_temp.read_intent(:'dep_b', null)) is not null as ok \gset
-- a row with no org (unknown deployment): nobody's
select public.deployment_secrets__read('00000000-0000-0000-0000-00000000beef', p_intent_id => pg_temp.read_intent('00000000-0000-0000-0000-00000000beef', null)) is not null as ok \gset

-- ---- a member of org A --------------------------------------------------------------------------
select set_config('request.jwt.claims', json_build_object('sub', :'user_a', 'role', 'authenticated')::text, true)
  is not null as ok \gset
set local role authenticated;

select is(auth.uid(), :'user_a'::uuid, 'auth.uid() reads sub from request.jwt.claims');
select is(auth.role(), 'authenticated', 'auth.role() reads role from request.jwt.claims');
select results_eq($$select id from public.organizations$$, format('values (%L::uuid)', :'org_a'),
  'organizations: only org A');
select results_eq($$select distinct org_id from public.organization_members$$, format('values (%L::uuid)', :'org_a'),
  'organization_members: only own memberships');
select results_eq($$select id from public.deployments$$, format('values (%L::uuid)', :'dep_a'), 'deployments: only A''s');
select results_eq($$select distinct deployment_id from public.deployment_steps$$, format('values (%L::uuid)', :'dep_a'),
  'deployment_steps: only A''s');
select results_eq($$select id from public.secrets$$, format('values (%L::uuid)', :'s_a'), 'secrets: only A''s');
select results_eq($$select distinct secret_id from public.secret_versions$$, format('values (%L::uuid)', :'s_a'),
  'secret_versions: only A''s');
select results_eq($$select distinct deployment_id from public.deployment_secrets$$, format('values (%L::uuid)', :'dep_a'),
  'deployment_secrets: only A''s');
select results_eq($$select distinct org_id from public.secret_access_log$$, format('values (%L::uuid)', :'org_a'),
  'secret_access_log: only A''s rows (not B''s, not the org-less chain)');
select is((select array_agg(operation || '/' || outcome order by id) from public.secret_access_log),
  array['create/success', 'bind/success', 'read/success'], 'and exactly A''s audit rows are there: create, bind, read');
select results_eq($$select chain_id from public.secret_access_log_chains$$, format('values (%L::uuid)', :'org_a'),
  'secret_access_log_chains: only A''s');
select is((select count(*) from public.secrets s where s::text like '%canary-rls%'), 0::bigint,
  'the visible metadata holds no value');

select throws_ok(format('update public.deployments set name = %L', 'x'), '42501', null, 'a member cannot update deployments');
select throws_ok(format('insert into public.organization_members (org_id, user_id) values (%L, %L)', :'org_b', :'user_a'),
  '42501', null, 'a member cannot add themselves to another org');
select throws_ok(format('delete from public.secrets where id = %L', :'s_a'), '42501', null, 'a member cannot delete secrets');
select throws_ok($$select decrypted_secret from vault.decrypted_secrets$$, '42501', null, 'a member cannot read the vault');
select throws_ok(format('select public.deployment_secrets__read(%L)', :'dep_a'), '42501', null,
  'a member cannot call the reading function');
reset role;

-- ---- a member of org B, through the legacy per-claim setting ------------------------------------
select set_config('request.jwt.claims', '', true) is not null as ok \gset
select set_config('request.jwt.claim.sub', :'user_b', true) is not null as ok \gset
set local role authenticated;
select is(auth.uid(), :'user_b'::uuid, 'auth.uid() honours the legacy request.jwt.claim.sub');
select results_eq($$select id from public.secrets$$, format('values (%L::uuid)', :'s_b'), 'a member of B sees B''s secrets');
select results_eq($$select distinct org_id from public.secret_access_log$$, format('values (%L::uuid)', :'org_b'),
  'and B''s audit rows only');
reset role;

-- ---- signed in, but a member of nothing --------------------------------------------------------
select set_config('request.jwt.claim.sub', '', true) is not null as ok \gset
select set_config('request.jwt.claims', json_build_object('sub', gen_random_uuid())::text, true) is not null as ok \gset
set local role authenticated;
select is((select count(*) from public.organizations) + (select count(*) from public.secrets)
          + (select count(*) from public.secret_access_log), 0::bigint, 'a user of no org sees nothing');
reset role;

-- ---- anon -------------------------------------------------------------------------------------------
select set_config('request.jwt.claims', '{"role": "anon"}', true) is not null as ok \gset
set local role anon;
select throws_ok($$select count(*) from public.organizations$$, '42501', null, 'anon cannot read organizations');
select throws_ok($$select count(*) from public.deployments$$, '42501', null, 'anon cannot read deployments');
select throws_ok($$select count(*) from public.secrets$$, '42501', null, 'anon cannot read secrets');
select throws_ok($$select count(*) from public.secret_access_log$$, '42501', null, 'anon cannot read the audit log');
select throws_ok($$select count(*) from vault.secrets$$, '42501', null, 'anon cannot read the vault');
reset role;

-- ---- service_role bypasses RLS (the dashboard key; it reads, never writes) ------------------------
set local role service_role;
select is((select count(*) from public.secrets where id in (:'s_a', :'s_b')), 2::bigint, 'service_role sees both orgs');
select is((select count(*) from public.secret_access_log where org_id is null and deployment_id = '00000000-0000-0000-0000-00000000beef'),
  1::bigint, 'and the org-less audit rows');
reset role;

select * from finish();
rollback;
