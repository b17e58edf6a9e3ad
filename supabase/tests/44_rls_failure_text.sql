-- Review R22 finding 1 (20261207130000_rls_failure_text.sql): an organisation member reading
-- through row-level security cannot read a deployment's recorded failure text
-- (deployments.failure_reason, deployment_steps.error: provider summaries, host names, addresses,
-- ports) nor its fencing token (operation_token); every other column still reads, with the same
-- row policies; the failure's step and status still read; service_role (the dashboard) reads all.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(13);

select public.organizations__create('R44 A') ->> 'id' as org \gset
select gen_random_uuid() as member \gset
select public.organization_members__add(:'org', :'member') is not null as ok \gset
select public.deployments__create(:'org', 'agent', 'r44-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select (public.deployments__begin(:'dep', 'provision') ->> 'run') as run \gset
select public.deployment_steps__start(:'dep', :run, 'host') is not null as ok \gset
select public.deployment_steps__finish(:'dep', :run, 'host', 'failed',
  'ssh_connect_failed: ssh to canary-r44.hel1.internal (10.20.30.40:2222) failed; hcloud said resource_limit_exceeded', true)
  is not null as ok \gset

-- positive control: the text is in the rows (the owner reads it)
select ok((select failure_reason like '%canary-r44%10.20.30.40:2222%' from public.deployments where id = :'dep'),
  'control: the deployment row holds the recorded text');
select ok((select bool_or(error like '%canary-r44%') from public.deployment_steps where deployment_id = :'dep'),
  'control: the step row holds it too');

-- the columns authenticated may read: exactly these (a later table-wide grant would show here)
select is((select array_agg(column_name::text order by column_name) from information_schema.column_privileges
           where table_schema = 'public' and table_name = 'deployments' and grantee = 'authenticated' and privilege_type = 'SELECT'),
  array['created_at', 'current_operation', 'current_run', 'dns_name', 'failed_step', 'host_public_key',
        'host_public_key_pending', 'host_rekeyed_at', 'id', 'ipv4', 'ipv6', 'name', 'org_id', 'progress_at', 'provider',
        'region', 'runtime', 'server_id', 'server_type', 'status', 'status_changed_at', 'subdomain', 'updated_at'],
  'authenticated may select every deployments column but failure_reason and operation_token');
select is((select array_agg(column_name::text order by column_name) from information_schema.column_privileges
           where table_schema = 'public' and table_name = 'deployment_steps' and grantee = 'authenticated' and privilege_type = 'SELECT'),
  array['attempt', 'deployment_id', 'duration_ms', 'finished_at', 'operation', 'run', 'started_at', 'status', 'step'],
  'and every deployment_steps column but error');

-- ---- the member ----------------------------------------------------------------------------------------
select set_config('request.jwt.claims', json_build_object('sub', :'member', 'role', 'authenticated')::text, true)
  is not null as ok \gset
set local role authenticated;
select throws_ok('select failure_reason from public.deployments', '42501', null, 'a member cannot read failure_reason');
select throws_ok('select error from public.deployment_steps', '42501', null, 'nor a step''s error');
select throws_ok('select operation_token from public.deployments', '42501', null, 'nor the fencing token');
select throws_ok('select * from public.deployments', '42501', null, 'nor select * (it names them)');
select throws_ok('select d from public.deployments d', '42501', null, 'nor the whole row as a value');
select is((select status || ' ' || failed_step from public.deployments where id = :'dep'), 'failed host',
  'the failure''s status and step still read, through the row policy');
select is((select count(*) from public.deployment_steps where deployment_id = :'dep' and status = 'failed'), 1::bigint,
  'and the step''s row and status');
reset role;

-- ---- service_role (the operator's dashboard key) ------------------------------------------------------------
set local role service_role;
select ok((select failure_reason like '%canary-r44%' from public.deployments where id = :'dep'),
  'service_role still reads the text');
select ok((select bool_or(error like '%canary-r44%') from public.deployment_steps where deployment_id = :'dep'),
  'and the step''s');
reset role;

select * from finish();
rollback;
