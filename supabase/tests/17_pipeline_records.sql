-- deployments__record_host and deployments__record_dns share one guard
-- (deployments__lock_provisioning): each is refused, with the same message, on a deployment that is
-- not provisioning, and under a fencing token another run has replaced; neither writes anything
-- then; the guard itself is no one's to call.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(12);

\set k1 'ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB'
select public.organizations__create('Records Org') ->> 'id' as org \gset
select public.deployments__request(:'org', 'Agent R', 'tr-' || substr(md5(random()::text), 1, 8), 'local', null, null, 'echo',
  '[]'::jsonb) #>> '{deployment,id}' as dep \gset

-- requested (not begun): both refused, nothing written
select throws_ok(format($$select public.deployments__record_host(%L, 'cortex-r', '10.0.0.7', null, %L)$$, :'dep', :'k1'),
  '22023', format('deployment_id: deployment %s is requested, not provisioning', :'dep'),
  'record_host is refused on a requested deployment');
select throws_ok(format($$select public.deployments__record_dns(%L, 'r.agents.example.com')$$, :'dep'),
  '22023', format('deployment_id: deployment %s is requested, not provisioning', :'dep'),
  'record_dns is refused on a requested deployment');
select is((select row(server_id, ipv4, host_public_key, dns_name)::text from public.deployments where id = :'dep'),
  row(null::text, null::inet, null::text, null::text)::text, 'neither wrote anything');

-- provisioning under token A: both record
select is(public.deployments__begin(:'dep', 'provision', 'records-token-a') ->> 'action', 'run', 'run A begins');
select is(public.deployments__record_host(:'dep', 'cortex-r', '10.0.0.7', null, :'k1', 'records-token-a') ->> 'server_id',
  'cortex-r', 'record_host records while provisioning, under the run''s token');
select is(public.deployments__record_dns(:'dep', 'r.agents.example.com', 'records-token-a') ->> 'dns_name',
  'r.agents.example.com', 'record_dns records while provisioning, under the run''s token');

-- run B takes over: A's writes are refused with 55006, before the status is looked at
select is(public.deployments__begin(:'dep', 'provision', 'records-token-b') ->> 'action', 'run', 'run B takes over');
select throws_ok(format($$select public.deployments__record_dns(%L, 'stale.agents.example.com', 'records-token-a')$$, :'dep'),
  '55006', format('token: another worker has taken over the operation on deployment %s', :'dep'),
  'record_dns under the replaced token is refused');
select is((select dns_name from public.deployments where id = :'dep'), 'r.agents.example.com', 'and wrote nothing');

-- deprovisioning: refused again, naming the status
select public.deployments__request_deprovision(:'dep') is not null as deprov \gset
select throws_ok(format($$select public.deployments__record_dns(%L, 'late.agents.example.com')$$, :'dep'),
  '22023', format('deployment_id: deployment %s is deprovisioning, not provisioning', :'dep'),
  'record_dns is refused once deprovisioning');
select throws_ok(format($$select public.deployments__record_host(%L, 'cortex-late', '10.0.0.8')$$, :'dep'),
  '22023', format('deployment_id: deployment %s is deprovisioning, not provisioning', :'dep'),
  'record_host is refused once deprovisioning');

select is(
  (select array_agg(r order by r) from unnest(array['anon', 'authenticated', 'service_role', 'cortex_orchestrator']) r
   where has_function_privilege(r, 'public.deployments__lock_provisioning(uuid, text)', 'execute')),
  null, 'the shared guard is executable by no API role and not by the orchestrator');

select * from finish();
rollback;
