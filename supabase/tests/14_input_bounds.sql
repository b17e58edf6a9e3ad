-- Also from the security review: reserved chain ids are no organization's, and one read writes a
-- bounded number of audit rows.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(5);

select throws_ok($$insert into public.organizations (id, name) values ('00000000-0000-0000-0000-000000000000', 'x')$$,
  '23514', null, 'the org-less chain id is no organization''s (even for the table owner)');
select throws_ok($$insert into public.organizations (id, name) values ('ffffffff-ffff-ffff-ffff-ffffffffffff', 'x')$$,
  '23514', null, 'nor is the platform chain id');

create temp table log_mark as select coalesce(max(id), 0) as id from public.secret_access_log;
select throws_ok(format('select public.deployment_secrets__read(%L, %L::uuid[])', gen_random_uuid(),
    (select array_agg(gen_random_uuid()) from generate_series(1, 10000))),
  '22023', 'secret_ids: at most 100 per read', 'a read naming 10,000 secrets is refused');
select is((select count(*) from public.secret_access_log where id > (select id from log_mark)), 0::bigint,
  'and writes no audit row');
select is((public.deployment_secrets__read(gen_random_uuid(),
    (select array_agg(gen_random_uuid()) from generate_series(1, 100)))) ->> 'status', 'denied',
  'a read of 100 secrets of an unknown deployment is a denial (100 rows at most)');

select * from finish();
rollback;
