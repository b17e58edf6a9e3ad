-- Findings of the adversarial review of the pipeline (issue 9). Postgres is the source of truth
-- for intent, Redis only carries work: a deprovision job that reaches a worker without a
-- deprovision having been requested in Postgres (someone holding a Redis connection enqueues
-- `deprovision {deploymentId}`: job data is ids only, and ids are visible in Redis) must not start
-- destroying a live deployment — its server, DNS record and vault secrets. Only
-- deployments__request_deprovision (what `destroy` calls before it enqueues) may start one.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(8);

select public.organizations__create('Review Org') ->> 'id' as org \gset
select public.deployments__request(:'org', 'Review A', 'rv-' || substr(md5(random()::text), 1, 8)) #>> '{deployment,id}' as dep \gset

-- provisioning: a stray deprovision job stops, and the provision's run and status are untouched
select public.deployments__begin(:'dep', 'provision') ->> 'run' as run1 \gset
select is(public.deployments__begin(:'dep', 'deprovision') ->> 'action', 'stop',
  'a deprovision job for a provisioning deployment whose deprovision nobody requested stops');
select is((select status::text || '/' || current_run from public.deployments where id = :'dep'), 'provisioning/' || :'run1',
  'and leaves its status and run as they were');

-- ready: the same
update public.deployments set status = 'ready' where id = :'dep';
select is(public.deployments__begin(:'dep', 'deprovision') ->> 'action', 'stop',
  'a deprovision job for a ready deployment whose deprovision nobody requested stops');
select is((select status::text from public.deployments where id = :'dep'), 'ready', 'and the deployment stays ready');

-- failed and requested: the same
select public.deployments__request(:'org', 'Review B', 'rw-' || substr(md5(random()::text), 1, 8)) #>> '{deployment,id}' as dep_b \gset
select is(public.deployments__begin(:'dep_b', 'deprovision') ->> 'action', 'stop',
  'a deprovision job for a requested deployment whose deprovision nobody requested stops');
select public.deployments__begin(:'dep_b', 'provision');
update public.deployments set status = 'failed' where id = :'dep_b';
select is(public.deployments__begin(:'dep_b', 'deprovision') ->> 'action', 'stop',
  'a deprovision job for a failed deployment whose deprovision nobody requested stops');

-- requested in Postgres: it runs (and resumes)
select public.deployments__request_deprovision(:'dep');
select is(public.deployments__begin(:'dep', 'deprovision') ->> 'action', 'run', 'a requested deprovision runs');
select is(public.deployments__begin(:'dep', 'deprovision') ->> 'action', 'run', 'and resumes after a crash');

select * from finish();
rollback;
