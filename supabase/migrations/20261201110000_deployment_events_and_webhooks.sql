-- Live progress and webhooks (the API issue): an append-only log of a deployment's status changes
-- and step progress, written by triggers in the same transaction as the change (so no event is
-- lost and none is seen before its change commits); the organisations' webhook endpoints, each
-- with a Standard Webhooks signing secret kept in the vault; and an outbox of deliveries, one row
-- per (endpoint, status event), also written by the trigger.
--
-- Event payloads hold only words the pipeline itself chose: a status, a step name, a step state,
-- an attempt number, the operation and run, and a reason CODE (the `code` part of our own
-- `code: message` reasons). Never a message, an address, a host key, a name or anything the
-- customer typed: events go to browsers and to third-party URLs.
--
-- Ordering: every writer of a deployment's status or steps holds that deployment's row lock
-- (deployments__lock, or the UPDATE itself), and the trigger takes it too before it draws the
-- event id; so within one deployment, ids are drawn in commit order and a reader that has seen
-- event n has seen every earlier event of that deployment. (Across deployments ids may commit out
-- of order; nothing reads them that way: the webhook side uses the outbox rows instead.)
--
-- Same rules as the rest of the contract: security definer, `search_path = pg_catalog, pg_temp`,
-- fully qualified names, EXECUTE for cortex_orchestrator only, no table privilege for any API role,
-- errors as '<field>: <what is wrong>' (22023) that never quote a value.

-- no long lock on a live database (see .squawk.toml)
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- ---- tables -------------------------------------------------------------------------------------

create table public.deployment_events (
  -- the SSE `id:` and the webhook-id: increasing within a deployment
  id bigint generated always as identity primary key,
  -- no foreign key: like the audit log, an event outlives what it names
  deployment_id uuid not null,
  org_id uuid not null,
  at timestamptz not null default clock_timestamp(),
  kind text not null check (kind in ('status', 'step')),
  payload jsonb not null check (pg_catalog.jsonb_typeof(payload) = 'object' and pg_catalog.octet_length(payload::text) <= 1000)
);
create index deployment_events_deployment_id_idx on public.deployment_events (deployment_id, id);

create table public.webhook_endpoints (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id),
  url text not null check (pg_catalog.char_length(url) <= 2000),
  -- a reference into vault.secrets (named webhook:<org>:<endpoint>); deleted when disabled
  vault_secret_id uuid unique,
  created_at timestamptz not null default now(),
  disabled_at timestamptz,
  check ((disabled_at is null) = (vault_secret_id is not null))
);
create index webhook_endpoints_org_id_idx on public.webhook_endpoints (org_id) where disabled_at is null;

create table public.webhook_deliveries (
  id bigint generated always as identity primary key,
  endpoint_id uuid not null references public.webhook_endpoints (id),
  event_id bigint not null references public.deployment_events (id),
  org_id uuid not null,
  -- pending: waiting for the dispatcher; queued: a BullMQ job exists; delivered / failed (after the
  -- last attempt) / cancelled (the endpoint was removed): final
  state text not null default 'pending' check (state in ('pending', 'queued', 'delivered', 'failed', 'cancelled')),
  attempts integer not null default 0 check (attempts >= 0),
  -- metadata only: the receiver's HTTP status and our own error code, never a response body
  last_status integer check (last_status between 100 and 599),
  last_error text check (last_error ~ '^[a-z][a-z0-9_]{0,62}$'),
  created_at timestamptz not null default now(),
  queued_at timestamptz,
  finished_at timestamptz,
  unique (endpoint_id, event_id)
);
create index webhook_deliveries_open_idx on public.webhook_deliveries (id) where state in ('pending', 'queued');
create index webhook_deliveries_event_id_idx on public.webhook_deliveries (event_id);

-- ---- the event log is append-only ----------------------------------------------------------------

create function public.deployment_events__refuse_change()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  raise exception using errcode = '42501', message = pg_catalog.format(
    'deployment_events is append-only: %s refused', pg_catalog.lower(tg_op));
end
$$;
create trigger deployment_events_append_only
  before update or delete on public.deployment_events
  for each row execute function public.deployment_events__refuse_change();
create trigger deployment_events_no_truncate
  before truncate on public.deployment_events
  for each statement execute function public.deployment_events__refuse_change();

-- ---- helpers (internal) --------------------------------------------------------------------------

-- The code of one of our reasons ('ssh_unreachable: …' → 'ssh_unreachable'); anything else (a
-- reason from elsewhere, free text) is 'unexpected', so no message ever reaches an event.
create function public.deployment_events__reason_code(p_reason text)
returns text
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case
    when p_reason is null then null
    when p_reason ~ '^[a-z][a-z0-9_]{0,62}: ' then pg_catalog.substring(p_reason, '^([a-z][a-z0-9_]{0,62}): ')
    else 'unexpected'
  end
$$;

create function public.deployment_events__json(p_row public.deployment_events)
returns jsonb
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.jsonb_build_object('id', p_row.id, 'deployment_id', p_row.deployment_id, 'at', p_row.at,
    'kind', p_row.kind, 'payload', p_row.payload)
$$;

-- A status change: the event, and one outbox row per active endpoint of the organisation.
create function public.deployment_events__on_status()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_event_id bigint;
begin
  if tg_op = 'UPDATE' and new.status is not distinct from old.status then
    return null;
  end if;
  insert into public.deployment_events (deployment_id, org_id, kind, payload)
  values (new.id, new.org_id, 'status', pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
    'status', new.status,
    'previous_status', case when tg_op = 'UPDATE' then old.status end,
    'operation', new.current_operation,
    'run', new.current_run,
    'step', case when new.status = 'failed' then new.failed_step end,
    'reason_code', case when new.status = 'failed' then public.deployment_events__reason_code(new.failure_reason) end)))
  returning id into v_event_id;
  insert into public.webhook_deliveries (endpoint_id, event_id, org_id)
  select e.id, v_event_id, new.org_id
  from public.webhook_endpoints e
  where e.org_id = new.org_id and e.disabled_at is null
  order by e.id;
  return null;
end
$$;

-- A step starts, finishes, or starts again (its attempt counts the starts).
create function public.deployment_events__on_step()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_org uuid;
begin
  if tg_op = 'UPDATE' and new.status is not distinct from old.status and new.attempt is not distinct from old.attempt then
    return null;
  end if;
  -- the deployment's row lock, which every writer of its steps already holds (deployments__lock):
  -- taken here too so that event ids of one deployment are drawn in commit order whoever writes
  select d.org_id into v_org from public.deployments d where d.id = new.deployment_id for no key update;
  insert into public.deployment_events (deployment_id, org_id, kind, payload)
  values (new.deployment_id, v_org, 'step', pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
    'operation', new.operation,
    'run', new.run,
    'step', new.step,
    'state', new.status,
    'attempt', new.attempt,
    'duration_ms', new.duration_ms,
    'reason_code', case when new.status = 'failed' then public.deployment_events__reason_code(new.error) end)));
  return null;
end
$$;

create trigger deployments_events
  after insert or update of status on public.deployments
  for each row execute function public.deployment_events__on_status();
create trigger deployment_steps_events
  after insert or update on public.deployment_steps
  for each row execute function public.deployment_events__on_step();

-- Webhook URLs. https:// with a DNS name or a public IP literal; no credentials, no fragment, no
-- whitespace or control characters, at most 2000 characters, host in lower case (the API
-- normalises). p_allow_loopback (local mode only: the API passes it when HOST_PROVIDER=local) also
-- admits http:// and https:// to 127.0.0.0/8 and [::1], and nothing else private. Names that only
-- resolve inside a network (localhost, *.localhost, *.local, *.internal, *.home.arpa) are refused;
-- what a public name resolves to is checked again at delivery time (DNS may change).
create function public.webhook_endpoints__check_url(p_url text, p_allow_loopback boolean)
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
end
$$;

-- Addresses a webhook must never reach (the delivery worker applies the same list to what a name
-- resolves to: orchestrator/webhooks/webhook-address.ts).
create function public.webhook_endpoints__private_address(p_ip inet)
returns boolean
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case pg_catalog.family(p_ip)
    when 4 then p_ip <<= any (array['0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16',
      '172.16.0.0/12', '192.0.0.0/24', '192.0.2.0/24', '192.88.99.0/24', '192.168.0.0/16', '198.18.0.0/15',
      '198.51.100.0/24', '203.0.113.0/24', '224.0.0.0/4', '240.0.0.0/4']::inet[])
    else p_ip <<= any (array['::/127', '::ffff:0:0/96', '64:ff9b::/96', '64:ff9b:1::/48', '100::/64', '2001::/23',
      '2001:db8::/32', '2002::/16', 'fc00::/7', 'fe80::/10', 'fec0::/10', 'ff00::/8']::inet[])
  end
$$;

create function public.webhook_endpoints__vault_name(p_org_id uuid, p_endpoint_id uuid)
returns text
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select 'webhook:' || p_org_id::text || ':' || p_endpoint_id::text
$$;

create function public.webhook_endpoints__json(p_row public.webhook_endpoints)
returns jsonb
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.jsonb_build_object('id', p_row.id, 'org_id', p_row.org_id, 'url', p_row.url,
    'created_at', p_row.created_at, 'disabled_at', p_row.disabled_at)
$$;

revoke all on function public.deployment_events__refuse_change() from public, anon, authenticated, service_role;
revoke all on function public.deployment_events__reason_code(text) from public, anon, authenticated, service_role;
revoke all on function public.deployment_events__json(public.deployment_events) from public, anon, authenticated, service_role;
revoke all on function public.deployment_events__on_status() from public, anon, authenticated, service_role;
revoke all on function public.deployment_events__on_step() from public, anon, authenticated, service_role;
revoke all on function public.webhook_endpoints__check_url(text, boolean) from public, anon, authenticated, service_role;
revoke all on function public.webhook_endpoints__private_address(inet) from public, anon, authenticated, service_role;
revoke all on function public.webhook_endpoints__vault_name(uuid, uuid) from public, anon, authenticated, service_role;
revoke all on function public.webhook_endpoints__json(public.webhook_endpoints) from public, anon, authenticated, service_role;

-- ---- events: reads (the contract) ------------------------------------------------------------------

-- Has the deployment's current operation stopped writing? True when no step of its current run is
-- still running, or the status has not changed for 10 s (a worker that died between setting the
-- status and closing its step record). A stream ends at a final status once this holds, so the
-- `ready` step's own end (recorded just after the status) is not cut off.
create function public.deployment_events__settled(p_dep public.deployments)
returns boolean
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select not exists (
      select 1 from public.deployment_steps s
      where s.deployment_id = p_dep.id and s.run = p_dep.current_run and s.status = 'running')
    or p_dep.status_changed_at < pg_catalog.now() - interval '10 seconds'
$$;
revoke all on function public.deployment_events__settled(public.deployments) from public, anon, authenticated, service_role;

-- One deployment's events after p_after_id (a page of at most p_limit, oldest first), with the
-- deployment's org and current status read in the same snapshot: a reader that got a page shorter
-- than p_limit and a final status has seen everything.
create function public.deployment_events__list(p_deployment_id uuid, p_after_id bigint default 0, p_limit integer default 100)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_dep public.deployments%rowtype;
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  if p_after_id is null or p_after_id < 0 then
    raise exception using errcode = '22023', message = 'after_id: must be a non-negative event id';
  end if;
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception using errcode = '22023', message = 'limit: must be between 1 and 1000';
  end if;
  select * into v_dep from public.deployments d where d.id = p_deployment_id;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;
  return pg_catalog.jsonb_build_object('deployment_id', v_dep.id, 'org_id', v_dep.org_id, 'status', v_dep.status,
    'settled', public.deployment_events__settled(v_dep),
    'events', coalesce((
      select pg_catalog.jsonb_agg(public.deployment_events__json(e) order by e.id)
      from (select * from public.deployment_events x
            where x.deployment_id = p_deployment_id and x.id > p_after_id order by x.id limit p_limit) e
    ), '[]'::jsonb));
end
$$;

-- The same for many followers at once (the API process polls ONE query for all its open streams):
-- parallel arrays of deployment ids and cursors (at most 1000), at most p_limit events each.
-- Unknown deployments are left out.
create function public.deployment_events__poll(p_deployment_ids uuid[], p_after_ids bigint[], p_limit integer default 100)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_deployment_ids is null or p_after_ids is null
     or pg_catalog.cardinality(p_deployment_ids) <> pg_catalog.cardinality(p_after_ids)
     or pg_catalog.cardinality(p_deployment_ids) > 1000 then
    raise exception using errcode = '22023', message = 'deployment_ids: must be at most 1000 ids, one cursor (after_ids) each';
  end if;
  if pg_catalog.array_position(p_deployment_ids, null) is not null or pg_catalog.array_position(p_after_ids, null) is not null then
    raise exception using errcode = '22023', message = 'deployment_ids: must not contain null';
  end if;
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception using errcode = '22023', message = 'limit: must be between 1 and 1000';
  end if;
  return coalesce((
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('deployment_id', d.id, 'after_id', c.after_id,
      'status', d.status, 'settled', public.deployment_events__settled(d),
      'events', coalesce((
        select pg_catalog.jsonb_agg(public.deployment_events__json(e) order by e.id)
        from (select * from public.deployment_events x
              where x.deployment_id = d.id and x.id > c.after_id order by x.id limit p_limit) e), '[]'::jsonb)))
    from rows from (pg_catalog.unnest(p_deployment_ids), pg_catalog.unnest(p_after_ids)) as c(deployment_id, after_id)
    join public.deployments d on d.id = c.deployment_id
  ), '[]'::jsonb);
end
$$;

-- ---- webhook endpoints (the contract) ---------------------------------------------------------------

-- Register an endpoint: the URL checked, a fresh signing secret (whsec_ + base64 of 32 random
-- bytes, the Standard Webhooks format) stored in the vault, and the creation audited in the
-- organisation's chain. The secret is in this answer and in no other, ever.
create function public.webhook_endpoints__create(
  p_org_id uuid,
  p_url text,
  p_allow_loopback boolean default false,
  p_actor text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id uuid := pg_catalog.gen_random_uuid();
  v_secret text;
  v_row public.webhook_endpoints%rowtype;
begin
  perform public.audit_context__check(p_actor, null, p_user_agent);
  perform public.input__check_required('org_id', p_org_id);
  perform public.webhook_endpoints__check_url(p_url, coalesce(p_allow_loopback, false));
  if not exists (select 1 from public.organizations o where o.id = p_org_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('organization %s not found', p_org_id);
  end if;
  -- one organisation's endpoints, serialised: the limit below holds under concurrent requests
  perform 1 from public.organizations o where o.id = p_org_id for no key update;
  if (select pg_catalog.count(*) from public.webhook_endpoints e where e.org_id = p_org_id and e.disabled_at is null) >= 10 then
    raise exception using errcode = '22023', message = 'url: an organization may have at most 10 webhook endpoints; remove one first';
  end if;
  v_secret := 'whsec_' || pg_catalog.encode(extensions.gen_random_bytes(32), 'base64');
  insert into public.webhook_endpoints (id, org_id, url, vault_secret_id)
  values (v_id, p_org_id, p_url, public.vault__store(v_secret, public.webhook_endpoints__vault_name(p_org_id, v_id),
    'cortex webhook signing secret'))
  returning * into v_row;
  perform public.secret_access_log__append('create', 'success', p_org_id, null, null, null,
    pg_catalog.format('webhook signing secret of endpoint %s', v_id), p_actor, null, p_request_ip, p_user_agent);
  return public.webhook_endpoints__json(v_row) || pg_catalog.jsonb_build_object('secret', v_secret);
end
$$;

create function public.webhook_endpoints__list(p_org_id uuid, p_include_disabled boolean default false)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_required('org_id', p_org_id);
  return coalesce((
    select pg_catalog.jsonb_agg(public.webhook_endpoints__json(e) order by e.created_at, e.id)
    from public.webhook_endpoints e
    where e.org_id = p_org_id and (coalesce(p_include_disabled, false) or e.disabled_at is null)
  ), '[]'::jsonb);
end
$$;

-- Remove (disable) an endpoint of this organisation: its signing secret deleted from the vault
-- (audited), its undelivered deliveries cancelled. Another organisation's endpoint is "not found".
-- Idempotent.
create function public.webhook_endpoints__disable(
  p_org_id uuid,
  p_endpoint_id uuid,
  p_actor text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row public.webhook_endpoints%rowtype;
  v_vault uuid;
begin
  perform public.audit_context__check(p_actor, null, p_user_agent);
  perform public.input__check_required('org_id', p_org_id);
  perform public.input__check_required('endpoint_id', p_endpoint_id);
  select * into v_row from public.webhook_endpoints e where e.id = p_endpoint_id and e.org_id = p_org_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('webhook endpoint %s not found', p_endpoint_id);
  end if;
  if v_row.disabled_at is null then
    v_vault := v_row.vault_secret_id;
    update public.webhook_endpoints e set disabled_at = pg_catalog.now(), vault_secret_id = null
    where e.id = p_endpoint_id returning * into v_row;
    delete from vault.secrets vs where vs.id = v_vault;
    update public.webhook_deliveries w set state = 'cancelled', finished_at = pg_catalog.now()
    where w.endpoint_id = p_endpoint_id and w.state in ('pending', 'queued');
    perform public.secret_access_log__append('delete', 'success', p_org_id, null, null, null,
      pg_catalog.format('webhook signing secret of endpoint %s (endpoint removed)', p_endpoint_id),
      p_actor, null, p_request_ip, p_user_agent);
  end if;
  return public.webhook_endpoints__json(v_row);
end
$$;

-- Reading a signing secret, in two steps like every other secret read
-- (20261125221500_read_intents.sql): an intent in a transaction of its own (kept in
-- secret_read_intents under the name webhook-<endpoint id>, with the org), then the read, which
-- returns the value only against that committed, fresh intent and writes a `read` row in the
-- organisation's chain. A removed or unknown endpoint is a denial, audited, with no value.
create function public.webhook_endpoints__intend_read(p_endpoint_id uuid, p_actor text default null, p_job_id text default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row public.secret_read_intents%rowtype;
begin
  perform public.audit_context__check(p_actor, p_job_id, null);
  perform public.input__check_required('endpoint_id', p_endpoint_id);
  insert into public.secret_read_intents (org_id, platform_name, actor, job_id, xact)
  values ((select e.org_id from public.webhook_endpoints e where e.id = p_endpoint_id), 'webhook-' || p_endpoint_id::text,
    p_actor, p_job_id, pg_catalog.pg_current_xact_id())
  returning * into v_row;
  return pg_catalog.jsonb_build_object('intent_id', v_row.id, 'expires_at', v_row.at + interval '60 seconds');
end
$$;

create function public.webhook_endpoints__read_secret(
  p_endpoint_id uuid,
  p_intent_id uuid,
  p_actor text default null,
  p_job_id text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row public.webhook_endpoints%rowtype;
  v_value text;
begin
  perform public.audit_context__check(p_actor, p_job_id, null);
  perform public.input__check_required('endpoint_id', p_endpoint_id);
  select * into v_row from public.webhook_endpoints e where e.id = p_endpoint_id for share;
  if not found or v_row.disabled_at is not null then
    perform public.secret_access_log__append('read', 'denied', v_row.org_id, null, null, null,
      pg_catalog.format('webhook signing secret of endpoint %s: no such active endpoint', p_endpoint_id),
      p_actor, p_job_id, null, null);
    return pg_catalog.jsonb_build_object('status', 'denied', 'reason', 'no such active webhook endpoint');
  end if;
  if not public.secret_read_intents__valid(p_intent_id, null, null, 'webhook-' || p_endpoint_id::text) then
    perform public.secret_access_log__append('read', 'denied', v_row.org_id, null, null, null,
      pg_catalog.format('webhook signing secret of endpoint %s: no committed read intent', p_endpoint_id),
      p_actor, p_job_id, null, null);
    return pg_catalog.jsonb_build_object('status', 'denied', 'reason',
      'read intent missing, expired, for another read, or not committed: call webhook_endpoints__intend_read in a transaction of its own first');
  end if;
  begin
    select ds.decrypted_secret into v_value from vault.decrypted_secrets ds
    where ds.id = v_row.vault_secret_id and ds.name = public.webhook_endpoints__vault_name(v_row.org_id, v_row.id);
  exception when others then
    v_value := null;
  end;
  if v_value is null then
    perform public.secret_access_log__append('read', 'error', v_row.org_id, null, null, null,
      pg_catalog.format('webhook signing secret of endpoint %s: vault secret missing or unreadable', p_endpoint_id),
      p_actor, p_job_id, null, null);
    return pg_catalog.jsonb_build_object('status', 'error', 'reason', 'vault secret missing or unreadable');
  end if;
  perform public.secret_access_log__append('read', 'success', v_row.org_id, null, null, null,
    pg_catalog.format('webhook signing secret of endpoint %s; intent %s', p_endpoint_id, p_intent_id),
    p_actor, p_job_id, null, null);
  return pg_catalog.jsonb_build_object('status', 'ok', 'secret', v_value);
end
$$;

-- ---- webhook deliveries (the contract) --------------------------------------------------------------

-- The dispatcher's claim: up to p_limit pending deliveries (and queued ones older than
-- p_requeue_after_seconds, whose job Redis may have lost: the job id is deterministic, so a job
-- that still exists is not added twice) move to queued; their ids are returned, oldest first.
-- SKIP LOCKED: many dispatchers may claim at once.
create function public.webhook_deliveries__claim(p_limit integer default 100, p_requeue_after_seconds integer default 900)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ids bigint[];
begin
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception using errcode = '22023', message = 'limit: must be between 1 and 1000';
  end if;
  if p_requeue_after_seconds is null or p_requeue_after_seconds < 1 or p_requeue_after_seconds > 86400 then
    raise exception using errcode = '22023', message = 'requeue_after_seconds: must be between 1 and 86400';
  end if;
  with c as (
    select w.id from public.webhook_deliveries w
    where w.state = 'pending'
       or (w.state = 'queued' and w.queued_at < pg_catalog.now() - pg_catalog.make_interval(secs => p_requeue_after_seconds))
    order by w.id limit p_limit
    for update skip locked
  ), u as (
    update public.webhook_deliveries w set state = 'queued', queued_at = pg_catalog.now()
    from c where w.id = c.id returning w.id
  )
  select pg_catalog.array_agg(u.id order by u.id) into v_ids from u;
  return coalesce(pg_catalog.to_jsonb(v_ids), '[]'::jsonb);
end
$$;

-- A delivery job starts: what to send (the endpoint's URL and the event), or skip when it is
-- already final or its endpoint was removed (then cancelled).
create function public.webhook_deliveries__begin(p_delivery_id bigint)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_d public.webhook_deliveries%rowtype;
  v_e public.webhook_endpoints%rowtype;
  v_ev public.deployment_events%rowtype;
begin
  perform public.input__check_required('delivery_id', p_delivery_id);
  select * into v_d from public.webhook_deliveries w where w.id = p_delivery_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('webhook delivery %s not found', p_delivery_id);
  end if;
  if v_d.state not in ('pending', 'queued') then
    return pg_catalog.jsonb_build_object('action', 'skip', 'state', v_d.state);
  end if;
  select * into strict v_e from public.webhook_endpoints e where e.id = v_d.endpoint_id;
  if v_e.disabled_at is not null then
    update public.webhook_deliveries w set state = 'cancelled', finished_at = pg_catalog.now() where w.id = v_d.id;
    return pg_catalog.jsonb_build_object('action', 'skip', 'state', 'cancelled');
  end if;
  select * into strict v_ev from public.deployment_events x where x.id = v_d.event_id;
  return pg_catalog.jsonb_build_object('action', 'deliver', 'delivery_id', v_d.id, 'endpoint_id', v_e.id,
    'org_id', v_e.org_id, 'url', v_e.url, 'attempt', v_d.attempts + 1, 'event', public.deployment_events__json(v_ev));
end
$$;

-- An attempt's outcome: delivered (2xx), retry (another attempt follows) or failed (the last
-- attempt, or a permanent refusal). Metadata only: the HTTP status and our own error code.
create function public.webhook_deliveries__record(
  p_delivery_id bigint,
  p_outcome text,
  p_http_status integer default null,
  p_error text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_d public.webhook_deliveries%rowtype;
begin
  perform public.input__check_required('delivery_id', p_delivery_id);
  if p_outcome is null or p_outcome not in ('delivered', 'retry', 'failed') then
    raise exception using errcode = '22023', message = 'outcome: must be delivered, retry or failed';
  end if;
  if p_http_status is not null and (p_http_status < 100 or p_http_status > 599) then
    raise exception using errcode = '22023', message = 'http_status: must be an HTTP status code';
  end if;
  if p_error is not null and p_error !~ '^[a-z][a-z0-9_]{0,62}$' then
    raise exception using errcode = '22023', message = 'error: must be an error code like timeout or http_status';
  end if;
  update public.webhook_deliveries w
     set attempts = w.attempts + 1, last_status = p_http_status, last_error = p_error,
         state = case p_outcome when 'delivered' then 'delivered' when 'failed' then 'failed' else w.state end,
         finished_at = case when p_outcome = 'retry' then null else pg_catalog.now() end
   where w.id = p_delivery_id and w.state in ('pending', 'queued')
  returning * into v_d;
  if not found then
    select * into v_d from public.webhook_deliveries w where w.id = p_delivery_id;
    if not found then
      raise exception using errcode = 'P0002', message = pg_catalog.format('webhook delivery %s not found', p_delivery_id);
    end if;
  end if;
  return pg_catalog.jsonb_build_object('id', v_d.id, 'state', v_d.state, 'attempts', v_d.attempts,
    'last_status', v_d.last_status, 'last_error', v_d.last_error);
end
$$;

-- An organisation's recent deliveries (metadata), newest first: what `GET /v1/webhooks/…` shows.
create function public.webhook_deliveries__list(p_org_id uuid, p_endpoint_id uuid default null, p_limit integer default 100)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_required('org_id', p_org_id);
  if p_limit is null or p_limit < 1 or p_limit > 1000 then
    raise exception using errcode = '22023', message = 'limit: must be between 1 and 1000';
  end if;
  return coalesce((
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('id', w.id, 'endpoint_id', w.endpoint_id,
      'event_id', w.event_id, 'state', w.state, 'attempts', w.attempts, 'last_status', w.last_status,
      'last_error', w.last_error, 'created_at', w.created_at, 'finished_at', w.finished_at) order by w.id desc)
    from (select * from public.webhook_deliveries x
          where x.org_id = p_org_id and (p_endpoint_id is null or x.endpoint_id = p_endpoint_id)
          order by x.id desc limit p_limit) w
  ), '[]'::jsonb);
end
$$;

-- ---- grants -------------------------------------------------------------------------------------

do $$
declare
  f text;
begin
  foreach f in array array[
    'public.deployment_events__list(uuid, bigint, integer)',
    'public.deployment_events__poll(uuid[], bigint[], integer)',
    'public.webhook_endpoints__create(uuid, text, boolean, text, inet, text)',
    'public.webhook_endpoints__list(uuid, boolean)',
    'public.webhook_endpoints__disable(uuid, uuid, text, inet, text)',
    'public.webhook_endpoints__intend_read(uuid, text, text)',
    'public.webhook_endpoints__read_secret(uuid, uuid, text, text)',
    'public.webhook_deliveries__claim(integer, integer)',
    'public.webhook_deliveries__begin(bigint)',
    'public.webhook_deliveries__record(bigint, text, integer, text)',
    'public.webhook_deliveries__list(uuid, uuid, integer)'
  ] loop
    execute pg_catalog.format('revoke all on function %s from public, anon, authenticated, service_role', f);
    execute pg_catalog.format('grant execute on function %s to cortex_orchestrator', f);
  end loop;
end
$$;

-- ---- privileges and row-level security: members read their organisations' rows; nobody writes ------

alter table public.deployment_events enable row level security;
alter table public.webhook_endpoints enable row level security;
alter table public.webhook_deliveries enable row level security;

create policy deployment_events_select_member on public.deployment_events
  for select to authenticated
  using (org_id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));
create policy webhook_endpoints_select_member on public.webhook_endpoints
  for select to authenticated
  using (org_id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));
create policy webhook_deliveries_select_member on public.webhook_deliveries
  for select to authenticated
  using (org_id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));

revoke all on table public.deployment_events, public.webhook_endpoints, public.webhook_deliveries
  from public, anon, authenticated, service_role, cortex_orchestrator;
grant select on table public.deployment_events, public.webhook_endpoints, public.webhook_deliveries
  to authenticated, service_role;
-- the identity sequences: Supabase's default privileges would hand them to the API roles
revoke all on sequence public.deployment_events_id_seq, public.webhook_deliveries_id_seq
  from public, anon, authenticated, service_role, cortex_orchestrator;
