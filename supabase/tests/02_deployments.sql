-- Organizations, members and deployments: the functions' shapes, their input checks, and the
-- deployment status machine (which holds for direct writes too).
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(46);

-- ---- organizations and members -----------------------------------------------------------------
select public.organizations__create('Test Org Deployments') ->> 'id' as org \gset
select ok((select count(*) = 1 from public.organizations where id = :'org' and name = 'Test Org Deployments'),
  'organizations__create returns the id of the new organization');
select throws_ok($$select public.organizations__create('')$$, '22023', 'name: must not be empty',
  'an empty organization name is refused');
select throws_ok(format('select public.organizations__create(%L)', repeat('n', 201)), '22023',
  'name: must be at most 200 characters', 'an organization name over 200 characters is refused');

select gen_random_uuid() as user_a \gset
select is(public.organization_members__add(:'org', :'user_a'),
  jsonb_build_object('org_id', :'org', 'user_id', :'user_a', 'role', 'member'),
  'organization_members__add returns org_id, user_id and role (member by default)');
select is(public.organization_members__add(:'org', :'user_a', 'admin') ->> 'role', 'admin',
  'adding the same member again changes its role');
select is((select count(*) from public.organization_members where org_id = :'org' and user_id = :'user_a'), 1::bigint,
  'organization_members__add is idempotent: one row per member');
select throws_ok(format('select public.organization_members__add(%L, %L, %L)', :'org', :'user_a', 'root'), '22023',
  'role: must be one of owner, admin, member', 'an unknown role is refused');
select throws_ok(format('select public.organization_members__add(%L, %L)', '00000000-0000-0000-0000-00000000dead', :'user_a'),
  'P0002', 'organization 00000000-0000-0000-0000-00000000dead not found', 'a member of an unknown organization is refused');

-- ---- create and get -----------------------------------------------------------------------------
select public.deployments__create(:'org', 'Agent One', 'test-agent-one') as dep \gset
select (:'dep'::jsonb) ->> 'id' as dep_id \gset
-- containment: later migrations (the pipeline's) add columns to the row
select ok((:'dep'::jsonb) @>
  jsonb_build_object('org_id', :'org', 'name', 'Agent One', 'subdomain', 'test-agent-one', 'provider', 'local',
    'region', null, 'server_type', null, 'status', 'requested', 'server_id', null, 'ipv4', null, 'ipv6', null,
    'host_public_key', null),
  'deployments__create returns the new row; provider defaults to local, status starts as requested');
select is(public.deployments__get(:'dep_id'), (select to_jsonb(d) from public.deployments d where d.id = :'dep_id'),
  'deployments__get returns the row as json');
select ok(public.deployments__create(:'org', 'Agent Two', 'test-agent-two', 'hcloud', 'fsn1', 'cx23')
          @> '{"subdomain": "test-agent-two", "provider": "hcloud", "region": "fsn1", "server_type": "cx23"}'::jsonb,
  'provider, region and server type are stored');
select throws_ok($$select public.deployments__get('00000000-0000-0000-0000-00000000dead')$$, 'P0002',
  'deployment 00000000-0000-0000-0000-00000000dead not found', 'deployments__get of an unknown id: not_found');

select throws_ok(format('select public.deployments__create(%L, %L, %L)', :'org', 'x', s), '22023',
  'subdomain: must be a DNS label: lowercase letters, digits and inner hyphens, at most 63 characters (^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$)',
  'subdomain ' || quote_literal(s) || ' is refused')
from unnest(array['Upper', '-lead', 'trail-', 'under_score', 'dot.ted', '', repeat('a', 64)]) s;
select lives_ok(format('select public.deployments__create(%L, %L, %L)', :'org', 'x', repeat('a', 63)),
  'a 63-character subdomain is accepted');
select throws_ok(format('select public.deployments__create(%L, %L, %L)', :'org', 'x', 'test-agent-one'), '23505',
  'subdomain: test-agent-one is already in use; choose another', 'a subdomain in use is refused');
select throws_ok(format('select public.deployments__create(%L, %L, %L, %L)', :'org', 'x', 'test-agent-x', 'aws'), '22023',
  'provider: must be local or hcloud', 'an unknown provider is refused');
select throws_ok(format('select public.deployments__create(%L, %L, %L, %L, %L)', :'org', 'x', 'test-agent-x', 'hcloud', 'FSN 1'),
  '22023', 'region: must be a location name such as fsn1 (lowercase letters, digits, ".", "_", "-"; at most 63 characters)',
  'a malformed region is refused');
select throws_ok(format('select public.deployments__create(%L, %L, %L)', :'org', '', 'test-agent-x'), '22023',
  'name: must not be empty', 'an empty deployment name is refused');
select throws_ok($$select public.deployments__create('00000000-0000-0000-0000-00000000dead', 'x', 'test-agent-x')$$,
  'P0002', 'organization 00000000-0000-0000-0000-00000000dead not found', 'a deployment of an unknown organization is refused');

-- ---- the status machine -------------------------------------------------------------------------
select throws_ok(format('select public.deployments__set_status(%L, %L)', :'dep_id', 'ready'), '22023',
  'status: cannot change from requested to ready; allowed from requested: provisioning, deprovisioning',
  'requested -> ready is refused, naming the allowed transitions');
select is(public.deployments__set_status(:'dep_id', 'provisioning') ->> 'status', 'provisioning', 'requested -> provisioning');
select is(public.deployments__set_status(:'dep_id', 'failed') ->> 'status', 'failed', 'provisioning -> failed');
select throws_ok(format('select public.deployments__set_status(%L, %L)', :'dep_id', 'ready'), '22023',
  'status: cannot change from failed to ready; allowed from failed: provisioning, deprovisioning', 'failed -> ready is refused');
select is(public.deployments__set_status(:'dep_id', 'provisioning') ->> 'status', 'provisioning', 'failed -> provisioning');
select is(public.deployments__set_status(:'dep_id', 'ready') ->> 'status', 'ready', 'provisioning -> ready');
select is(public.deployments__set_status(:'dep_id', 'ready') ->> 'status', 'ready', 'ready -> ready is a no-op');
select throws_ok(format('select public.deployments__set_status(%L, %L)', :'dep_id', 'provisioning'), '22023',
  'status: cannot change from ready to provisioning; allowed from ready: rotating, deprovisioning',
  'ready -> provisioning is refused');
select is(public.deployments__set_status(:'dep_id', 'rotating') ->> 'status', 'rotating', 'ready -> rotating');
select is(public.deployments__set_status(:'dep_id', 'ready') ->> 'status', 'ready', 'rotating -> ready');
select throws_ok(format('update public.deployments set status = %L where id = %L', 'requested', :'dep_id'), '22023',
  'status: cannot change from ready to requested; allowed from ready: rotating, deprovisioning',
  'a direct update cannot skip the status machine either');
select throws_ok(format('insert into public.deployments (org_id, name, subdomain, status) values (%L, %L, %L, %L)',
  :'org', 'x', 'test-agent-direct', 'ready'), '22023', 'status: a new deployment starts as requested',
  'a direct insert cannot start past requested');
select throws_ok(format('select public.deployments__set_status(%L, %L)', :'dep_id', 'gone'), '22023',
  'status: must be one of requested, provisioning, ready, failed, rotating, deprovisioning, deleted',
  'an unknown status is refused');
select throws_ok($$select public.deployments__set_status('00000000-0000-0000-0000-00000000dead', 'ready')$$, 'P0002',
  'deployment 00000000-0000-0000-0000-00000000dead not found', 'set_status of an unknown deployment: not_found');

-- deleting needs the deployment's secrets gone first
select public.secrets__create(:'org', 'scoped', 'other', 'canary-deployments-value-0001', repeat('ab', 32), :'dep_id') ->> 'secret_id' as sid \gset
select is(public.deployments__set_status(:'dep_id', 'deprovisioning') ->> 'status', 'deprovisioning', 'ready -> deprovisioning');
select throws_ok(format('select public.deployments__set_status(%L, %L)', :'dep_id', 'deleted'), '22023',
  format('status: deployment %s still has secrets or bindings; call secrets__delete_for_deployment first', :'dep_id'),
  'deprovisioning -> deleted is refused while the deployment still has secrets');
select is(public.secrets__delete_for_deployment(:'dep_id'), '{"deleted": 1}'::jsonb,
  'secrets__delete_for_deployment clears the way');
select is(public.deployments__set_status(:'dep_id', 'deleted') ->> 'status', 'deleted', 'deprovisioning -> deleted');
select throws_ok(format('select public.deployments__set_status(%L, %L)', :'dep_id', 'provisioning'), '22023',
  'status: cannot change from deleted to provisioning; allowed from deleted: nothing (final state)',
  'deleted is final');
select ok((select status_changed_at >= created_at from public.deployments where id = :'dep_id'),
  'status_changed_at is kept');
select lives_ok(format('select public.deployments__create(%L, %L, %L)', :'org', 'Agent One again', 'test-agent-one'),
  'a deleted deployment gives its subdomain back');

select * from finish();
rollback;
