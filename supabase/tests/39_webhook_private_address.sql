-- IPv6 forms of IPv4 addresses a webhook must never reach (20261206110000_webhook_private_address_ipv4_in_ipv6.sql,
-- review R15 finding 5): IPv4-compatible ::/96 (::a9fe:a9fe is 169.254.169.254) and IPv4-translated
-- ::ffff:0:0:0/96 are refused like IPv4-mapped ::ffff:0:0/96 always was, by the function and by
-- the registration of an endpoint; public addresses are still admitted; the helper stays
-- immutable, pinned, and callable by no API role.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(27);

-- ---- privileges and shape (re-stated by the migration) --------------------------------------------
select ok(not has_function_privilege(r, 'public.webhook_endpoints__private_address(inet)', 'execute'),
  r || ' may not execute webhook_endpoints__private_address')
from unnest(array['anon', 'authenticated', 'service_role', 'cortex_orchestrator']) r;
select ok((select p.provolatile = 'i' and not p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp']
           from pg_proc p where p.oid = 'public.webhook_endpoints__private_address(inet)'::regprocedure),
  'immutable, not security definer, search_path pinned to pg_catalog, pg_temp');

-- ---- the list ----------------------------------------------------------------------------------------
select ok(public.webhook_endpoints__private_address(a::inet), 'refused: ' || a)
from unnest(array[
  '::a9fe:a9fe',            -- IPv4-compatible 169.254.169.254
  '::7f00:1',               -- IPv4-compatible 127.0.0.1
  '::a00:1',                -- IPv4-compatible 10.0.0.1
  '::169.254.169.254',
  '::ffff:0:a9fe:a9fe',     -- IPv4-translated 169.254.169.254
  '::ffff:0:7f00:1',        -- IPv4-translated 127.0.0.1
  '::ffff:0:5db8:d70e',     -- IPv4-translated, even of a public IPv4 address
  '::ffff:a9fe:a9fe',       -- IPv4-mapped (as before)
  '::ffff:127.0.0.1',
  '::1', '::']) a;
select ok(not public.webhook_endpoints__private_address(a::inet), 'admitted: ' || a)
from unnest(array['2606:4700:4700::1111', '2001:4860:4860::8888', '93.184.215.14', '1.1.1.1',
                  '::1:0:0:1', '0:0:1::1']) a;

-- ---- registration --------------------------------------------------------------------------------------
create function pg_temp.sqlstate_of(p_sql text) returns text language plpgsql as $$
begin
  execute p_sql;
  return '00000';
exception when others then
  return sqlstate;
end
$$;
select public.organizations__create('Private Address Org') ->> 'id' as org \gset
select is(pg_temp.sqlstate_of(format('select public.webhook_endpoints__create(%L, %L)', :'org', u)), '22023', 'refused: ' || u)
from unnest(array['https://[::a9fe:a9fe]/latest/meta-data', 'https://[::ffff:0:a9fe:a9fe]/x', 'https://[::7f00:1]/x']) u;
select is(pg_temp.sqlstate_of(format('select public.webhook_endpoints__create(%L, %L, true)', :'org', 'https://[::7f00:1]/x')),
  '22023', 'local mode admits ::1, not the IPv4-compatible ::7f00:1');
select is(pg_temp.sqlstate_of(format('select public.webhook_endpoints__create(%L, %L)', :'org', 'https://[2606:4700:4700::1111]/x')),
  '00000', 'a public IPv6 literal is still accepted');

select * from finish();
rollback;
