-- The functions redefined for one lock order (20261125222412_audit_lock_order.sql) still write what
-- they wrote before, in the same order and the same transaction. The order itself needs two
-- sessions: test/integration/audit-lock-order.test.ts runs the calls that deadlocked before.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(17);

select public.organizations__create('Test Org Lock Order') ->> 'id' as org \gset
select public.deployments__create(:'org', 'A', 'test-lock-order-a') ->> 'id' as dep_a \gset
select public.deployments__create(:'org', 'B', 'test-lock-order-b') ->> 'id' as dep_b \gset
select public.secrets__create(:'org', 'one', 'other', 'canary-lock-order-0001', repeat('ab', 32), :'dep_a') ->> 'secret_id' as s1 \gset
select public.secrets__create(:'org', 'two', 'other', 'canary-lock-order-0002', repeat('ab', 32), :'dep_a') ->> 'secret_id' as s2 \gset
select public.secrets__create(:'org', 'three', 'other', 'canary-lock-order-0003', repeat('ab', 32), :'dep_a') ->> 'secret_id' as s3 \gset
select public.secrets__create(:'org', 'wide', 'other', 'canary-lock-order-0004', repeat('ab', 32)) ->> 'secret_id' as w \gset
select public.secrets__add_version(:'s1', 'canary-lock-order-0005', repeat('ab', 32)) ->> 'version' as s1_v2 \gset
select public.deployment_secrets__bind(:'dep_a', 'ZED', :'s1') is not null as ok \gset
select public.deployment_secrets__bind(:'dep_a', 'MID', :'s2') is not null as ok \gset
select public.deployment_secrets__bind(:'dep_a', 'ALPHA', :'s3') is not null as ok \gset
select public.deployment_secrets__bind(:'dep_a', 'ORG_WIDE', :'w') is not null as ok \gset
select public.deployment_secrets__bind(:'dep_b', 'ORG_WIDE', :'w') is not null as ok \gset
select public.deployment_secrets__bind(:'dep_b', 'ORG_WIDE_AGAIN', :'w') is not null as ok \gset
-- a revoked secret of the deployment is deleted with the others
select public.secrets__revoke(:'s2', (public.secrets__request_revoke(:'s2', null, null, 'test') ->> 'revocation_id')::uuid)
  ->> 'bindings_removed' as s2_unbound \gset

create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;

-- ---- secrets__delete_for_deployment --------------------------------------------------------------
-- A failure after the changes (here: a trigger refusing the last update) takes them and their
-- audit rows back together.
create function pg_temp.refuse_delete() returns trigger language plpgsql as $$
begin
  raise exception using errcode = 'P0001', message = 'refused by test';
end
$$;
create trigger lock_order_refuse before update of status on public.secrets
  for each row when (new.status = 'deleted') execute function pg_temp.refuse_delete();
select throws_ok(format('select public.secrets__delete_for_deployment(%L)', :'dep_a'), 'P0001', 'refused by test',
  'a delete that fails part way raises');
drop trigger lock_order_refuse on public.secrets;
select is((select count(*) from public.secret_access_log where id > (select id from log_mark)), 0::bigint,
  'and leaves no audit row');
select is((select count(*) from public.deployment_secrets where deployment_id = :'dep_a'), 3::bigint,
  'and no binding removed');
select is((select count(*) from vault.secrets where name like format('org:%s:deployment:%s:%%', :'org', :'dep_a')),
  3::bigint, 'and no vault secret deleted');

select is(public.secrets__delete_for_deployment(:'dep_a', 'lock-order'), '{"deleted": 3}'::jsonb,
  'the delete deletes the deployment''s three scoped secrets, the revoked one included');
select is(
  (select array_agg(l.operation || ' ' || l.outcome || ' ' || coalesce(l.secret_id::text, '-') || ' '
                    || coalesce(l.version::text, '-') || ' ' || l.reason order by l.id)
   from public.secret_access_log l where l.id > (select id from log_mark)),
  array[
    'unbind success ' || :'s3' || ' - env_var ALPHA',
    'unbind success ' || :'w' || ' - env_var ORG_WIDE',
    'unbind success ' || :'s1' || ' - env_var ZED'
  ] || (select array_agg('delete success ' || s.id || ' ' || s.current_version || ' deployment secrets deleted'
                         order by s.created_at, s.id)
        from public.secrets s where s.deployment_id = :'dep_a'),
  'its audit rows: an unbind per binding in env_var order, then a delete per secret with its current version');
select is((select array_agg(distinct l.actor) from public.secret_access_log l where l.id > (select id from log_mark)),
  array['lock-order'], 'each with the audit context');
select is((select count(*) from public.secret_access_log l where l.id > (select id from log_mark)
           and l.secret_id = :'s1' and l.operation = 'delete' and l.version = :'s1_v2'::int), 1::bigint,
  'a secret with two versions is audited at its current version');
select is((select array_agg(distinct s.status) from public.secrets s where s.deployment_id = :'dep_a'), array['deleted'],
  'every scoped secret is deleted');
select is((select count(*) from vault.secrets where name like format('org:%s:deployment:%s:%%', :'org', :'dep_a')),
  0::bigint, 'no vault secret of them remains');
select is((select count(*) from public.secret_versions v join public.secrets s on s.id = v.secret_id
           where s.deployment_id = :'dep_a' and v.retired_at is null), 0::bigint, 'every version is retired');
select is((select count(*) from public.deployment_secrets where deployment_id = :'dep_a'), 0::bigint,
  'no binding of the deployment remains');
select is((select status from public.secrets where id = :'w') || ' '
          || (select count(*) from public.deployment_secrets where deployment_id = :'dep_b')::text,
  'active 2', 'the org-wide secret it used stays active and bound elsewhere');
select is(public.secret_access_log__verify(:'org') ->> 'ok', 'true', 'the org chain verifies');

-- ---- secrets__revoke --------------------------------------------------------------------------------
select public.secrets__request_revoke(:'w', null, null, 'lock-order') ->> 'revocation_id' as rev_w \gset
update log_mark set id = (select max(id) from public.secret_access_log);
select is(public.secrets__revoke(:'w', :'rev_w', 'lock-order') - 'secret_id',
  '{"status": "revoked", "vault_secrets_deleted": 1, "bindings_removed": 2}'::jsonb,
  'a revoke removes every binding of the secret, two in one deployment here');
select is(
  (select array_agg(l.operation || ' ' || l.outcome || ' ' || l.reason order by l.id)
   from public.secret_access_log l where l.id > (select id from log_mark)),
  array['revoke success 1 vault secrets deleted, 2 bindings removed'], 'in one audit row, as before');
select is(public.secret_access_log__verify(:'org') ->> 'ok', 'true', 'and the chain still verifies');

select * from finish();
rollback;
