-- Secret lifecycle: create, add a version, retire a version, bind, unbind, revoke, delete for a
-- deployment. Values live in the vault under scoped names; metadata never holds one; every change
-- is audited.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(59);
-- the keyed fingerprint, as the orchestrator computes it (HMAC-SHA256 under a key outside the
-- database; here a test key): the functions store what they are given
create function pg_temp.fp(p_value text) returns text language sql as $f$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$f$;

-- Canary keys are generated at run time: the repo never holds a real-looking key. Each keeps a fixed
-- provider prefix and last four (the display-prefix expectations below rely on them) and carries one
-- random marker shared by all of them, which the "no row holds a value" checks look for.
select 'canary' || encode(extensions.gen_random_bytes(8), 'hex') as marker \gset
select 'sk-ant-api03-' || :'marker' || encode(extensions.gen_random_bytes(8), 'hex') || '-ab12' as k1 \gset
select 'sk-proj-' || :'marker' || encode(extensions.gen_random_bytes(8), 'hex') || '-cd34' as k2 \gset
select 'sk-ant-api03-' || :'marker' || encode(extensions.gen_random_bytes(8), 'hex') || '-ef56' as k3 \gset
select 'sk-ant-api03-' || :'marker' || encode(extensions.gen_random_bytes(8), 'hex') || '-gh78' as k4 \gset
select 'sk-ant-api03-' || :'marker' || encode(extensions.gen_random_bytes(8), 'hex') || '-ij90' as k5 \gset
select 'sk-ant-api03-' || :'marker' || encode(extensions.gen_random_bytes(8), 'hex') || '-0000' as k9 \gset

select public.organizations__create('Test Org Secrets A') ->> 'id' as org_a \gset
select public.organizations__create('Test Org Secrets B') ->> 'id' as org_b \gset
select public.deployments__create(:'org_a', 'A1', 'test-secrets-a1') ->> 'id' as dep_a1 \gset
select public.deployments__create(:'org_a', 'A2', 'test-secrets-a2') ->> 'id' as dep_a2 \gset
select public.deployments__create(:'org_b', 'B1', 'test-secrets-b1') ->> 'id' as dep_b1 \gset

-- ---- create ----------------------------------------------------------------------------------------
select public.secrets__create(:'org_a', 'anthropic', 'anthropic', :'k1', pg_temp.fp(:'k1'),
  null, 'tester', 'job-1', '192.0.2.10', 'pgtap') as created \gset
select (:'created'::jsonb) ->> 'secret_id' as s1 \gset
select is((:'created'::jsonb) - 'secret_id',
  jsonb_build_object('version', 1, 'display_prefix', 'sk-ant-…ab12',
    'fingerprint', pg_temp.fp(:'k1'),
    'vault_name', format('org:%s:secret:%s:v1', :'org_a', :'s1')),
  'secrets__create returns version 1, display prefix, keyed (HMAC-SHA256) fingerprint and the org-scoped vault name');
select is((select decrypted_secret from vault.decrypted_secrets where name = format('org:%s:secret:%s:v1', :'org_a', :'s1')),
  :'k1', 'the value is in the vault under that name');
select is((select v.vault_secret_id from public.secret_versions v where v.secret_id = :'s1' and v.version = 1),
  (select id from vault.secrets where name = format('org:%s:secret:%s:v1', :'org_a', :'s1')),
  'secret_versions references the vault secret');
select is((select count(*) from public.secrets s where s.id = :'s1' and s.org_id = :'org_a' and s.deployment_id is null
           and s.name = 'anthropic' and s.provider = 'anthropic' and s.current_version = 1 and s.status = 'active'),
  1::bigint, 'the metadata row is org-wide, active, at version 1');
select is((select count(*) from public.secret_access_log l where l.secret_id = :'s1' and l.operation = 'create'
           and l.outcome = 'success' and l.version = 1 and l.org_id = :'org_a' and l.actor = 'tester'
           and l.job_id = 'job-1' and l.request_ip = '192.0.2.10' and l.user_agent = 'pgtap'),
  1::bigint, 'create is audited with the audit context');

select public.secrets__create(:'org_a', 'openai', 'openai', :'k2', pg_temp.fp(:'k2'), :'dep_a1')
  ->> 'vault_name' as scoped_name \gset
select matches(:'scoped_name'::text, format('^org:%s:deployment:%s:secret:[0-9a-f-]{36}:v1$', :'org_a', :'dep_a1'),
  'a deployment-scoped secret''s vault name carries the deployment');
select public.secrets__create(:'org_b', 'anthropic', 'anthropic', :'k3', pg_temp.fp(:'k3'))
  ->> 'secret_id' as sb \gset
select is((select array_agg(vs.name order by vs.name) from vault.secrets vs
           join public.secret_versions v on v.vault_secret_id = vs.id where v.secret_id in (:'s1', :'sb') and v.version = 1),
  (select array_agg(x order by x) from unnest(array[format('org:%s:secret:%s:v1', :'org_a', :'s1'),
                                                    format('org:%s:secret:%s:v1', :'org_b', :'sb')]) x),
  'org A''s and org B''s secrets named alike get vault names of their own, each under its org''s prefix');
select throws_ok(format('select vault.create_secret(%L, %L)', 'canary-collision-value-0001', format('org:%s:secret:%s:v1', :'org_a', :'s1')),
  '23505', 'duplicate key value violates unique constraint "secrets_name_idx"',
  'a vault name already taken is refused: no second secret can take over org A''s name');

select is((select count(*) from public.secrets s, public.secret_versions v
           where v.secret_id = s.id and s.org_id in (:'org_a', :'org_b')
             and (s::text like ('%' || :'marker' || '%') or v::text like ('%' || :'marker' || '%'))),
  0::bigint, 'no metadata row holds a value');
select is((select count(*) from public.secret_access_log l where l::text like ('%' || :'marker' || '%')),
  0::bigint, 'no audit row holds a value');

select is((public.secrets__create(:'org_a', 'short', 'other', 'abcdefghijklmnopqrst', repeat('ab', 32)) ->> 'display_prefix'), 'abcd…qrst',
  'a 20-character value (the shortest accepted) shows four and four, twelve stay hidden');
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32))', :'org_a', 'tiny', 'other', 'abcdefghijklmnopqrs'),
  '22023', 'value: must be at least 20 characters (no real API key is shorter)',
  'a value shorter than 20 characters is refused');
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, %L)', :'org_a', 'keyed', 'other', 'abcdefghijklmnopqrst-k',
    encode(sha256(convert_to('abcdefghijklmnopqrst-k', 'UTF8')), 'hex')),
  '22023', 'fingerprint: is the unkeyed SHA-256 of the value; give its HMAC-SHA256 under the fingerprint key',
  'the fingerprint cannot be the unkeyed SHA-256 a member could compute from a guess');
select is((public.secrets__describe_value('abcdefghijk', repeat('ab', 32))).display_prefix, '…',
  '(the display rule itself: a short value would show nothing)');

select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32))', :'org_a', 'anthropic', 'anthropic', 'x-long-enough-value-0001'),
  '23505', 'name: an active secret with this name already exists in this scope; add a version to it instead',
  'a second active secret of the same name in the same scope is refused');
select lives_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32), %L)', :'org_a', 'anthropic', 'anthropic',
  :'k9', :'dep_a2'),
  'the same name in another scope (deployment A2) is fine');
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32), %L)', :'org_a', 'cross', 'other', 'x-long-enough-value-0001', :'dep_b1'),
  '22023', format('deployment_id: deployment %s belongs to another organization; scope the secret to a deployment of organization %s',
    :'dep_b1', :'org_a'),
  'a secret cannot be scoped to another org''s deployment');
select throws_ok(format('select public.secrets__create(%L, %L, %L, %L, repeat(''ab'', 32))', '00000000-0000-0000-0000-00000000dead', 'x', 'other', 'x-long-enough-value-0001'),
  'P0002', 'organization 00000000-0000-0000-0000-00000000dead not found', 'a secret of an unknown org: not_found');

-- ---- add a version, retire the old one ---------------------------------------------------------
select is(public.secrets__add_version(:'s1', :'k4', pg_temp.fp(:'k4'), 'rotator') - 'secret_id',
  jsonb_build_object('version', 2, 'display_prefix', 'sk-ant-…gh78',
    'fingerprint', pg_temp.fp(:'k4')),
  'secrets__add_version returns version 2 with its prefix and fingerprint');
select is((select current_version || '|' || display_prefix from public.secrets where id = :'s1'), '2|sk-ant-…gh78',
  'the secret points at version 2');
select is((select decrypted_secret from vault.decrypted_secrets where name = format('org:%s:secret:%s:v2', :'org_a', :'s1')),
  :'k4', 'version 2 is a new vault secret');
select is((select count(*) from vault.secrets where name = format('org:%s:secret:%s:v1', :'org_a', :'s1')), 1::bigint,
  'version 1 stays in the vault until retired');
select is((select count(*) from public.secret_access_log where secret_id = :'s1' and operation = 'rotate'
           and outcome = 'success' and version = 2 and actor = 'rotator'), 1::bigint, 'the new version is audited as rotate');

select throws_ok(format('select public.secret_versions__retire(%L, 2)', :'s1'), '22023',
  format('version: 2 is the current version of secret %s; add a new version before retiring this one', :'s1'),
  'the current version cannot be retired');
select is((select v.version || '|' || ds.decrypted_secret from public.secret_versions v
           join vault.decrypted_secrets ds on ds.id = v.vault_secret_id where v.secret_id = :'s1' and v.retired_at is null
           order by v.version desc limit 1),
  '2|' || :'k4', 'the refused retire left version 2 current and readable');
select throws_ok(format('select public.secret_versions__retire(%L, 7)', :'s1'), 'P0002',
  format('secret %s version 7 not found', :'s1'), 'retiring an unknown version: not_found');
select is((public.secret_versions__retire(:'s1', 1) ->> 'version')::int, 1, 'secret_versions__retire retires version 1');
select is((select count(*) from vault.secrets where name = format('org:%s:secret:%s:v1', :'org_a', :'s1')), 0::bigint,
  'the retired version''s vault secret is deleted');
select isnt((select retired_at from public.secret_versions where secret_id = :'s1' and version = 1), null,
  'retired_at is set');
select is((select count(*) from public.secret_access_log where secret_id = :'s1' and operation = 'delete' and version = 1),
  1::bigint, 'retiring is audited as delete');
select lives_ok(format('select public.secret_versions__retire(%L, 1)', :'s1'), 'retiring again is harmless');
select is((select count(*) from public.secret_access_log where secret_id = :'s1' and operation = 'delete' and version = 1),
  1::bigint, 'retiring again changes and audits nothing');

-- ---- bind and unbind ----------------------------------------------------------------------------
select is(public.deployment_secrets__bind(:'dep_a1', 'ANTHROPIC_API_KEY', :'s1', 'binder'),
  jsonb_build_object('deployment_id', :'dep_a1', 'env_var', 'ANTHROPIC_API_KEY', 'secret_id', :'s1'),
  'deployment_secrets__bind binds an org-wide secret');
select is((select count(*) from public.secret_access_log where secret_id = :'s1' and operation = 'bind'
           and deployment_id = :'dep_a1' and actor = 'binder'), 1::bigint, 'bind is audited');
select public.secrets__create(:'org_a', 'anthropic-2', 'anthropic', :'k5', pg_temp.fp(:'k5'))
  ->> 'secret_id' as s2 \gset
select lives_ok(format('select public.deployment_secrets__bind(%L, %L, %L)', :'dep_a1', 'ANTHROPIC_API_KEY', :'s2'),
  'binding the same env var again replaces the binding');
select is((select secret_id from public.deployment_secrets where deployment_id = :'dep_a1' and env_var = 'ANTHROPIC_API_KEY'),
  :'s2'::uuid, 'one binding per (deployment, env var), now to the new secret');
select throws_ok(format('select public.deployment_secrets__bind(%L, %L, %L)', :'dep_a1', 'OTHER_ORG', :'sb'), '22023',
  format('secret_id: secret %s belongs to another organization than deployment %s', :'sb', :'dep_a1'),
  'a secret of another org cannot be bound');
select public.secrets__create(:'org_a', 'a2-only', 'other', 'canary-secrets-a2-only', repeat('ab', 32), :'dep_a2') ->> 'secret_id' as s_a2 \gset
select throws_ok(format('select public.deployment_secrets__bind(%L, %L, %L)', :'dep_a1', 'A2_ONLY', :'s_a2'), '22023',
  format('secret_id: secret %s is scoped to another deployment; bind an org-wide secret or one scoped to deployment %s',
    :'s_a2', :'dep_a1'),
  'a secret scoped to another deployment cannot be bound');
select throws_ok(format('select public.deployment_secrets__bind(%L, %L, %L)', :'dep_a1', 'X', '00000000-0000-0000-0000-00000000dead'),
  'P0002', 'secret 00000000-0000-0000-0000-00000000dead not found', 'binding an unknown secret: not_found');
select throws_ok(format('select public.deployment_secrets__bind(%L, %L, %L)', '00000000-0000-0000-0000-00000000dead', 'X', :'s1'),
  'P0002', 'deployment 00000000-0000-0000-0000-00000000dead not found', 'binding to an unknown deployment: not_found');

select is(public.deployment_secrets__unbind(:'dep_a1', 'ANTHROPIC_API_KEY', 'unbinder'),
  jsonb_build_object('deployment_id', :'dep_a1', 'env_var', 'ANTHROPIC_API_KEY', 'secret_id', :'s2', 'unbound', true),
  'deployment_secrets__unbind removes the binding');
select is((select count(*) from public.secret_access_log where secret_id = :'s2' and operation = 'unbind'
           and actor = 'unbinder'), 1::bigint, 'unbind is audited');
select is(public.deployment_secrets__unbind(:'dep_a1', 'ANTHROPIC_API_KEY') ->> 'unbound', 'false',
  'unbinding again is harmless');

-- ---- revoke ---------------------------------------------------------------------------------------
select public.deployment_secrets__bind(:'dep_a1', 'ANTHROPIC_API_KEY', :'s1') is not null as bound \gset
select public.deployment_secrets__bind(:'dep_a2', 'ANTHROPIC_API_KEY', :'s1') is not null as bound \gset
select public.secrets__request_revoke(:'s1', null, null, 'revoker') ->> 'revocation_id' as rev1 \gset
select is(public.secrets__revoke(:'s1', :'rev1', 'revoker') - 'secret_id',
  '{"status": "revoked", "vault_secrets_deleted": 1, "bindings_removed": 2}'::jsonb,
  'secrets__revoke deletes the remaining vault secret and both bindings');
select is((select status from public.secrets where id = :'s1'), 'revoked', 'the secret is revoked');
select is((select count(*) from vault.secrets where name like format('org:%s:secret:%s:%%', :'org_a', :'s1')), 0::bigint,
  'no vault secret of it remains');
select is((select count(*) from public.secret_versions where secret_id = :'s1' and retired_at is null), 0::bigint,
  'all its versions are retired');
select is((select count(*) from public.deployment_secrets where secret_id = :'s1'), 0::bigint, 'no binding of it remains');
select is((select count(*) from public.secret_access_log where secret_id = :'s1' and operation = 'revoke'
           and actor = 'revoker'), 1::bigint, 'revoke is audited');
select throws_ok(format('select public.secrets__add_version(%L, %L, repeat(''ab'', 32))', :'s1', 'x-long-enough-value-0001'), '22023',
  format('secret_id: secret %s is revoked; create a new secret instead', :'s1'), 'a revoked secret takes no new version');
select throws_ok(format('select public.deployment_secrets__bind(%L, %L, %L)', :'dep_a1', 'X', :'s1'), '22023',
  format('secret_id: secret %s is revoked; bind an active secret', :'s1'), 'a revoked secret cannot be bound');
select is(public.secrets__revoke(:'s1', :'rev1') ->> 'status', 'revoked', 'revoking again is harmless');

-- ---- delete for a deployment ----------------------------------------------------------------------
select public.secrets__create(:'org_a', 'a1-second', 'other', 'canary-secrets-a1-second', repeat('ab', 32), :'dep_a1') ->> 'secret_id' as s_a1b \gset
select public.deployment_secrets__bind(:'dep_a1', 'SECOND', :'s_a1b') is not null as bound \gset
select public.deployment_secrets__bind(:'dep_a1', 'ORG_WIDE', :'s2') is not null as bound \gset
select is(public.secrets__delete_for_deployment(:'dep_a1', 'deprovisioner'), '{"deleted": 2}'::jsonb,
  'secrets__delete_for_deployment deletes the deployment''s two scoped secrets');
select is((select count(*) from vault.secrets where name like format('org:%s:deployment:%s:%%', :'org_a', :'dep_a1')),
  0::bigint, 'their vault secrets are gone');
select is((select count(*) from public.secrets where deployment_id = :'dep_a1' and status <> 'deleted'), 0::bigint,
  'they are marked deleted');
select is((select count(*) from public.deployment_secrets where deployment_id = :'dep_a1'), 0::bigint,
  'the deployment has no binding left');
select is((select status from public.secrets where id = :'s2'), 'active', 'the org-wide secret it used stays active');
select is((select count(*) from public.secret_access_log where deployment_id = :'dep_a1' and operation = 'delete'
           and actor = 'deprovisioner'), 2::bigint, 'each deleted secret is audited');
select is(public.secrets__delete_for_deployment(:'dep_a1'), '{"deleted": 0}'::jsonb, 'it is idempotent');

select * from finish();
rollback;
