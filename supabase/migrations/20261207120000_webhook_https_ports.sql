-- Port scanning through webhooks (noted by review R15, not fixed then): a registered webhook URL
-- could name any port of a public host, and the delivery's recorded error codes (connection_failed,
-- timeout, tls_failed, http_status) told an organisation whether that port was open, from the
-- orchestrator's address. Now webhook_endpoints__check_url admits only the HTTPS ports 443 (the
-- default, or written out) and 8443; a loopback literal in local mode keeps any port (the tests'
-- and the demo's receivers). The delivery worker applies the same rule at send time outside local mode
-- (orchestrator/webhooks/webhook-sender.ts: `bad_url`), so an endpoint registered before this
-- migration on another port gets no more POSTs: its deliveries fail `bad_url`; register it again
-- on 443 or 8443.
--
-- Copied from 20261201110000_deployment_events_and_webhooks.sql (its only definition) with only
-- the port check added at the end. Same signature, immutable, search_path; its grants re-stated.

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function public.webhook_endpoints__check_url(p_url text, p_allow_loopback boolean)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_m text[];
  v_scheme text;
  v_host text;
  v_port text;
  v_ip inet;
begin
  if p_url is null or p_url = '' then
    raise exception using errcode = '22023', message = 'url: is required';
  end if;
  if pg_catalog.char_length(p_url) > 2000 then
    raise exception using errcode = '22023', message = 'url: must be at most 2000 characters';
  end if;
  if p_url ~ '[\x01-\x20\x7f-\x9f]' or p_url ~ '[\\#]' then
    raise exception using errcode = '22023', message = 'url: must not contain whitespace, control characters, "\" or a fragment';
  end if;
  v_m := pg_catalog.regexp_match(p_url, '^([a-z]+)://([^/?]*)([/?].*)?$');
  if v_m is null then
    raise exception using errcode = '22023', message = 'url: must be an absolute https:// URL';
  end if;
  v_scheme := v_m[1];
  if v_m[2] like '%@%' then
    raise exception using errcode = '22023', message = 'url: must not contain credentials (user:password@)';
  end if;
  if v_scheme not in ('https', 'http') then
    raise exception using errcode = '22023', message = 'url: scheme must be https';
  end if;
  v_m := pg_catalog.regexp_match(v_m[2], '^(\[[0-9a-f:.]+\]|[^:\[\]]+)(?::([0-9]{1,5}))?$');
  if v_m is null then
    raise exception using errcode = '22023', message = 'url: host must be a lower-case DNS name or an IP address, with an optional port';
  end if;
  v_host := v_m[1];
  v_port := v_m[2];
  if v_port is not null and (v_port::integer < 1 or v_port::integer > 65535) then
    raise exception using errcode = '22023', message = 'url: port must be between 1 and 65535';
  end if;
  if v_host ~ '^\[.*\]$' or v_host ~ '^[0-9.]+$' then
    begin
      v_ip := pg_catalog.btrim(v_host, '[]')::inet;
    exception when others then
      raise exception using errcode = '22023', message = 'url: host is not a valid IP address';
    end;
    if v_host ~ '^[0-9.]+$' and v_host !~ '^(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}$' then
      raise exception using errcode = '22023', message = 'url: an IPv4 host must be written as four decimal numbers';
    end if;
    if p_allow_loopback and (v_ip <<= '127.0.0.0/8'::inet or v_ip = '::1'::inet) then
      return;
    end if;
    if public.webhook_endpoints__private_address(v_ip) then
      raise exception using errcode = '22023',
        message = 'url: host is a private, loopback, link-local or reserved address; webhooks go to public addresses';
    end if;
  else
    if v_host !~ '^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$' then
      raise exception using errcode = '22023', message = 'url: host must be a lower-case DNS name or an IP address, with an optional port';
    end if;
    if v_host ~ '(^|\.)(localhost|local|internal|home\.arpa|localdomain|test|invalid|example)$' then
      raise exception using errcode = '22023', message = 'url: host must be a public DNS name';
    end if;
  end if;
  if v_scheme = 'http' then
    raise exception using errcode = '22023', message = 'url: scheme must be https (http only to 127.0.0.1 in local mode)';
  end if;
  -- HTTPS ports only (review R15: a webhook must not make the orchestrator knock on any port of a
  -- host, whose delivery error codes would tell open from closed). A loopback literal in local mode
  -- returned above, with any port.
  if v_port is not null and v_port::integer not in (443, 8443) then
    raise exception using errcode = '22023', message = 'url: port must be 443 or 8443 (or left out): webhooks go to HTTPS ports';
  end if;
end
$$;

revoke all on function public.webhook_endpoints__check_url(text, boolean) from public, anon, authenticated, service_role;
