-- Webhook URLs name HTTPS ports only (20261207120000_webhook_https_ports.sql; port scanning through
-- webhooks, noted by review R15): webhook_endpoints__check_url refuses any port but 443 and 8443
-- for a DNS name and for a public IP literal, with an error naming the field; a URL without a port
-- (443) is admitted as before; a loopback literal in local mode keeps any port; the endpoint is not
-- created when its URL is refused; the function keeps its shape and no API role may call it.
begin;
create extension if not exists pgtap with schema extensions;
set local search_path = extensions, public;
select plan(26);

-- ---- privileges and shape (re-stated by the migration) --------------------------------------------
select ok(not has_function_privilege(r, 'public.webhook_endpoints__check_url(text, boolean)', 'execute'),
  r || ' may not execute webhook_endpoints__check_url')
from unnest(array['anon', 'authenticated', 'service_role', 'cortex_orchestrator']) r;
select ok((select p.provolatile = 'i' and not p.prosecdef and p.proconfig @> array['search_path=pg_catalog, pg_temp']
           from pg_proc p where p.oid = 'public.webhook_endpoints__check_url(text, boolean)'::regprocedure),
  'immutable, not security definer, search_path pinned to pg_catalog, pg_temp');

-- ---- refused: any other port, in production and in local mode --------------------------------------
select throws_ok(format('select public.webhook_endpoints__check_url(%L, %L)', u, loopback), '22023',
  'url: port must be 443 or 8443 (or left out): webhooks go to HTTPS ports', 'refused: ' || u || ' (local mode ' || loopback || ')')
from unnest(array['https://hooks.example.com:22/x', 'https://hooks.example.com:6379/x', 'https://93.184.215.14:5432/x',
                  'https://[2606:2800:220:1::1]:80/x', 'https://hooks.example.com:8080/']) u,
     unnest(array[false, true]) loopback;

-- ---- admitted ------------------------------------------------------------------------------------------
select lives_ok(format('select public.webhook_endpoints__check_url(%L, false)', u), 'admitted: ' || u)
from unnest(array['https://hooks.example.com/x', 'https://hooks.example.com:443/x', 'https://hooks.example.com:8443/x',
                  'https://93.184.215.14:8443/h', 'https://[2606:2800:220:1::1]/x']) u;
select lives_ok(format('select public.webhook_endpoints__check_url(%L, true)', u), 'local mode, a loopback literal on any port: ' || u)
from unnest(array['http://127.0.0.1:43817/hook', 'https://127.0.0.1:9/x', 'http://[::1]:8080/x']) u;
select throws_ok(format('select public.webhook_endpoints__check_url(%L, false)', 'https://hooks.example.com:99999/'), '22023',
  'url: port must be between 1 and 65535', 'a port out of range still says so');

-- ---- registration: nothing created when refused ----------------------------------------------------------
select public.organizations__create('R43') ->> 'id' as org \gset
select throws_ok(format('select public.webhook_endpoints__create(%L, %L)', :'org', 'https://hooks.example.com:22/x'), '22023',
  'url: port must be 443 or 8443 (or left out): webhooks go to HTTPS ports', 'webhook_endpoints__create refuses it');
select is((select count(*) from public.webhook_endpoints where org_id = :'org'), 0::bigint, 'and creates no endpoint');

select * from finish();
rollback;
