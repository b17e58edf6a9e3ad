-- Review R15 finding 5 (defence in depth): two IPv6 forms of an IPv4 address were not in the list
-- of addresses a webhook must never reach:
--   * IPv4-compatible `::/96` (`::a.b.c.d`, deprecated by RFC 4291: `::7f00:1`, `::a9fe:a9fe`);
--     only `::/127` (`::` and `::1`) was refused;
--   * IPv4-translated `::ffff:0:0:0/96` (RFC 2765: `::ffff:0:a.b.c.d`).
-- A stack that hands such an address to its IPv4 side would reach 127.0.0.1 or 169.254.169.254.
-- Both ranges are now refused, here (registration) and in orchestrator/webhooks/webhook-address.ts
-- (what a name resolves to at delivery time). `::/96` contains `::/127`, so that entry is replaced.
-- Copied from its only definition (20261201110000_deployment_events_and_webhooks.sql) with only
-- this change: same signature, immutable, not security definer, search_path pinned, no grants
-- (only webhook_endpoints__check_url, its owner's function, calls it; re-stated below).

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function public.webhook_endpoints__private_address(p_ip inet)
returns boolean
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case pg_catalog.family(p_ip)
    when 4 then p_ip <<= any (array['0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16',
      '172.16.0.0/12', '192.0.0.0/24', '192.0.2.0/24', '192.88.99.0/24', '192.168.0.0/16', '198.18.0.0/15',
      '198.51.100.0/24', '203.0.113.0/24', '224.0.0.0/4', '240.0.0.0/4']::inet[])
    else p_ip <<= any (array['::/96', '::ffff:0:0/96', '::ffff:0:0:0/96', '64:ff9b::/96', '64:ff9b:1::/48', '100::/64',
      '2001::/23', '2001:db8::/32', '2002::/16', 'fc00::/7', 'fe80::/10', 'fec0::/10', 'ff00::/8']::inet[])
  end
$$;

revoke all on function public.webhook_endpoints__private_address(inet) from public, anon, authenticated, service_role;
