-- Review R8 finding 3 (issue 11; 20261204130000_revocation_finish_checked.sql): a revocation is
-- closed `done` only when the data says it is done, and the stored `vault_deleted` is the secret's
-- status, not the caller's word. Before, the orchestrator's role could close any open revocation
-- as done and deleted without revoking anything.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
grant usage on schema extensions to cortex_orchestrator;
select plan(10);
create function pg_temp.fp(p_value text) returns text language sql immutable as $$
  select encode(extensions.hmac(convert_to(p_value, 'UTF8'), convert_to('pgtap-fingerprint-key', 'UTF8'), 'sha256'), 'hex')
$$;
grant execute on function pg_temp.fp(text) to cortex_orchestrator;

select public.organizations__create('R8 finish') ->> 'id' as org \gset
select public.deployments__create(:'org', 'R8 A', 'r8a-' || substr(md5(random()::text), 1, 6)) ->> 'id' as dep \gset
select 'canary-r8-' || md5(random()::text) as v \gset
select public.secrets__create(:'org', 'anthropic', 'anthropic', :'v', pg_temp.fp(:'v')) ->> 'secret_id' as s \gset
select public.deployment_secrets__bind(:'dep', 'ANTHROPIC_API_KEY', :'s') is not null as b \gset
set local role cortex_orchestrator;
select public.secrets__request_revoke(:'s', null, null, 'token:t') ->> 'revocation_id' as rev \gset
select public.secrets__request_revoke(:'s', :'dep', null, 'token:t') ->> 'revocation_id' as rev_dep \gset

-- the attack: close both as done (and "deleted") having revoked nothing
select throws_ok(format('select public.secret_revocations__finish(%L, true, %L)', :'rev', '{"vault_deleted": true, "revoked": []}'),
  '22023', null, 'a whole-secret revocation is not done while the secret is active (its versions in the vault)');
select throws_ok(format('select public.secret_revocations__finish(%L, true, %L)', :'rev_dep', '{"vault_deleted": true}'),
  '22023', null, 'a one-deployment revocation is not done while that deployment is still bound');
reset role;
select is((select string_agg(state, ',' order by id) from public.secret_revocations where id in (:'rev', :'rev_dep')),
  'open,open', 'both stay open');
set local role cortex_orchestrator;
-- a run that ends open may say what it likes about the vault: the record says the truth
select public.secret_revocations__finish(:'rev', false, '{"vault_deleted": true, "failed_count": 1}') as fin \gset
select is((:'fin'::jsonb) #>> '{result,vault_deleted}', 'false', 'vault_deleted stored as the secret''s status says (active: false)');
select is((:'fin'::jsonb) #>> '{result,failed_count}', '1', 'the rest of the result is kept');
reset role;
select is((select status from public.secrets where id = :'s'), 'active', 'the key is still active (nothing was revoked)');
set local role cortex_orchestrator;

-- the real thing: unbind the deployment, then the one-deployment revocation may close
select public.deployment_secrets__revoke(:'s', :'rev_dep', :'dep', 'orchestrator', 'revoke-' || :'rev_dep') is not null as x \gset
select is(public.secret_revocations__finish(:'rev_dep', true, '{}') ->> 'state', 'done',
  'once unbound, the one-deployment revocation is done');
-- revoke the whole secret, then it may close, and vault_deleted is true whatever the caller says
select public.secrets__revoke(:'s', :'rev', 'orchestrator', 'revoke-' || :'rev') is not null as x \gset
select public.secret_revocations__finish(:'rev', true, '{"vault_deleted": false}') as fin2 \gset
select is((:'fin2'::jsonb) ->> 'state', 'done', 'once the secret is revoked, the whole-secret revocation is done');
select is((:'fin2'::jsonb) #>> '{result,vault_deleted}', 'true', 'and the record says the vault copy is gone');
select is((:'fin2'::jsonb) ->> 'attempts', '2', 'each run counted');
reset role;

select * from finish();
rollback;
