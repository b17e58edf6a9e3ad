-- Fair webhook dispatch (review R15 finding 6): one organisation's slow or silent endpoints must not
-- hold every delivery slot while every other organisation's webhooks wait behind them.
--
-- 1. Caps, enforced where a delivery enters the queue (webhook_deliveries__claim), from the
--    database's own state, so they hold across any number of worker processes: a pending delivery
--    is queued only while its endpoint has fewer than p_per_endpoint deliveries `queued` (a BullMQ
--    job exists: waiting, running, or waiting for its next attempt) and its organisation fewer than
--    p_per_org. What the caps hold back stays `pending`, nothing is lost or duplicated, and it is
--    queued, oldest first, as soon as a slot of its endpoint and organisation is free.
-- 2. A circuit breaker per endpoint (webhook_deliveries__record): after p_breaker_failures failures
--    in a row that cost a slot (a timeout, a connection, TLS or DNS failure, a 5xx, 408 or 429),
--    the endpoint is held for a cool-down that doubles with each opening in a row (from
--    p_breaker_cooldown_ms, at most p_breaker_max_cooldown_ms). While it is open, nothing new of the
--    endpoint is queued and a queued delivery's job is told to wait (webhook_deliveries__begin
--    answers `hold` with the time it closes); a held delivery makes no POST and spends no attempt.
--    After the cool-down the endpoint's queued deliveries try again (at most p_per_endpoint of
--    them): a failure opens the breaker again at once, for longer; a 2xx closes it and resets it.
--    A 4xx other than 408/429, or a refusal that sent nothing, neither counts nor resets.
--    The state is on the endpoint row, shown by webhook_endpoints__list (GET /v1/webhooks).
--
-- Same rules as 20261201110000_deployment_events_and_webhooks.sql: security definer,
-- `search_path = pg_catalog, pg_temp`, fully qualified names, EXECUTE for cortex_orchestrator only.
-- The two functions whose arguments change are dropped and created again (an old worker's call
-- with the old named arguments still resolves: the new arguments have defaults); their grants are
-- stated again below.

-- no long lock on a live database (see .squawk.toml)
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- constant defaults: no table rewrite (Postgres 11+)
alter table public.webhook_endpoints
  -- failures in a row that count for the breaker (reset by a 2xx)
  add column consecutive_failures integer not null default 0,
  -- openings of the breaker in a row (the cool-down doubles with each; reset by a 2xx)
  add column breaker_opens integer not null default 0,
  -- while in the future: the endpoint's deliveries are held
  add column breaker_open_until timestamptz;

-- ---- the endpoint as the API shows it: now with its breaker -----------------------------------------

create or replace function public.webhook_endpoints__json(p_row public.webhook_endpoints)
returns jsonb
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select pg_catalog.jsonb_build_object('id', p_row.id, 'org_id', p_row.org_id, 'url', p_row.url,
    'created_at', p_row.created_at, 'disabled_at', p_row.disabled_at,
    'consecutive_failures', p_row.consecutive_failures, 'breaker_open_until', p_row.breaker_open_until)
$$;

-- ---- the claim, capped ------------------------------------------------------------------------------

drop function public.webhook_deliveries__claim(integer, integer);

-- Up to p_limit deliveries move to queued, oldest first; their ids are returned. A pending one is
-- taken only within the caps above and while its endpoint's breaker is closed; a queued one older
-- than p_requeue_after_seconds (its job Redis may have lost; the job id is deterministic, so a job
-- that still exists is not added twice) is taken again whatever the caps (it is counted in them
-- already). The caps count rows, so claims take turns: a transaction-level advisory lock (a few
-- milliseconds per claim); without it two claims could each see the same free slot.
-- The cost grows with the open deliveries (all of them are ranked, or a backlog at the front would
-- starve the rest): the partial index webhook_deliveries_open_idx holds only open rows.
create function public.webhook_deliveries__claim(
  p_limit integer default 100,
  p_requeue_after_seconds integer default 900,
  p_per_endpoint integer default 2,
  p_per_org integer default 5
) returns jsonb
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
  if p_per_endpoint is null or p_per_endpoint < 1 or p_per_endpoint > 1000 then
    raise exception using errcode = '22023', message = 'per_endpoint: must be between 1 and 1000';
  end if;
  if p_per_org is null or p_per_org < 1 or p_per_org > 1000 then
    raise exception using errcode = '22023', message = 'per_org: must be between 1 and 1000';
  end if;
  -- the key: 'webhook_deliveries__claim' as a number (any fixed bigint no other code uses)
  perform pg_catalog.pg_advisory_xact_lock(7765626801);
  -- a statement of its own after the lock: its snapshot sees every earlier claim's rows
  with open_rows as (
    select w.id, w.endpoint_id, w.org_id, w.state, w.queued_at
    from public.webhook_deliveries w
    where w.state in ('pending', 'queued')
  ), busy_endpoint as (
    select o.endpoint_id, pg_catalog.count(*) as n from open_rows o where o.state = 'queued' group by o.endpoint_id
  ), busy_org as (
    select o.org_id, pg_catalog.count(*) as n from open_rows o where o.state = 'queued' group by o.org_id
  ), endpoint_ranked as (
    select o.id, o.org_id,
      pg_catalog.row_number() over (partition by o.endpoint_id order by o.id) + coalesce(b.n, 0) as slot
    from open_rows o
    join public.webhook_endpoints e on e.id = o.endpoint_id
    left join busy_endpoint b on b.endpoint_id = o.endpoint_id
    where o.state = 'pending'
      and (e.breaker_open_until is null or e.breaker_open_until <= pg_catalog.now())
  ), org_ranked as (
    select r.id, pg_catalog.row_number() over (partition by r.org_id order by r.id) + coalesce(b.n, 0) as slot
    from endpoint_ranked r
    left join busy_org b on b.org_id = r.org_id
    where r.slot <= p_per_endpoint
  ), picked as (
    select r.id from org_ranked r where r.slot <= p_per_org
    union all
    select o.id from open_rows o
    where o.state = 'queued' and o.queued_at < pg_catalog.now() - pg_catalog.make_interval(secs => p_requeue_after_seconds)
    order by 1 limit p_limit
  ), locked as (
    -- a row another transaction holds (a job's begin, an endpoint's removal) is left for the next claim
    select w.id from public.webhook_deliveries w
    where w.id in (select p.id from picked p) and w.state in ('pending', 'queued')
    for update of w skip locked
  ), u as (
    update public.webhook_deliveries w set state = 'queued', queued_at = pg_catalog.now()
    from locked l where w.id = l.id returning w.id
  )
  select pg_catalog.array_agg(u.id order by u.id) into v_ids from u;
  return coalesce(pg_catalog.to_jsonb(v_ids), '[]'::jsonb);
end
$$;

-- ---- a job starts: deliver, skip, or hold while the breaker is open ----------------------------------

create or replace function public.webhook_deliveries__begin(p_delivery_id bigint)
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
  if v_e.breaker_open_until > pg_catalog.now() then
    -- the row stays queued (its job waits, holding its endpoint's slot): no POST, no attempt spent
    return pg_catalog.jsonb_build_object('action', 'hold', 'endpoint_id', v_e.id, 'until', v_e.breaker_open_until);
  end if;
  select * into strict v_ev from public.deployment_events x where x.id = v_d.event_id;
  return pg_catalog.jsonb_build_object('action', 'deliver', 'delivery_id', v_d.id, 'endpoint_id', v_e.id,
    'org_id', v_e.org_id, 'url', v_e.url, 'attempt', v_d.attempts + 1, 'event', public.deployment_events__json(v_ev));
end
$$;

-- ---- an attempt's outcome, and the endpoint's breaker -----------------------------------------------

drop function public.webhook_deliveries__record(bigint, text, integer, text);

-- delivered (2xx), retry (another attempt follows) or failed (the last attempt, or a permanent
-- refusal). Metadata only: the HTTP status and our own error code. The endpoint row is locked
-- first (the order webhook_endpoints__disable takes them in: endpoint, then its deliveries), then
-- the delivery; an outcome recorded for a delivery that is no longer open changes nothing.
create function public.webhook_deliveries__record(
  p_delivery_id bigint,
  p_outcome text,
  p_http_status integer default null,
  p_error text default null,
  p_breaker_failures integer default 5,
  p_breaker_cooldown_ms integer default 30000,
  p_breaker_max_cooldown_ms integer default 900000
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_d public.webhook_deliveries%rowtype;
  v_e public.webhook_endpoints%rowtype;
  v_opened boolean := false;
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
  if p_breaker_failures is null or p_breaker_failures < 1 or p_breaker_failures > 1000 then
    raise exception using errcode = '22023', message = 'breaker_failures: must be between 1 and 1000';
  end if;
  if p_breaker_cooldown_ms is null or p_breaker_cooldown_ms < 100 or p_breaker_cooldown_ms > 86400000 then
    raise exception using errcode = '22023', message = 'breaker_cooldown_ms: must be between 100 and 86400000';
  end if;
  if p_breaker_max_cooldown_ms is null or p_breaker_max_cooldown_ms < p_breaker_cooldown_ms or p_breaker_max_cooldown_ms > 86400000 then
    raise exception using errcode = '22023', message = 'breaker_max_cooldown_ms: must be between breaker_cooldown_ms and 86400000';
  end if;
  select * into v_e from public.webhook_endpoints e
  where e.id = (select w.endpoint_id from public.webhook_deliveries w where w.id = p_delivery_id)
  for no key update;
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
  elsif p_outcome = 'delivered' then
    if v_e.consecutive_failures <> 0 or v_e.breaker_opens <> 0 or v_e.breaker_open_until is not null then
      update public.webhook_endpoints e set consecutive_failures = 0, breaker_opens = 0, breaker_open_until = null
      where e.id = v_e.id returning * into v_e;
    end if;
  elsif p_error in ('timeout', 'connection_failed', 'tls_failed', 'dns_failed')
     or (p_error = 'http_status' and (p_http_status >= 500 or p_http_status in (408, 429))) then
    update public.webhook_endpoints e set consecutive_failures = e.consecutive_failures + 1
    where e.id = v_e.id returning * into v_e;
    -- an open breaker is not extended by the failures of attempts that were already under way
    if v_e.consecutive_failures >= p_breaker_failures
       and (v_e.breaker_open_until is null or v_e.breaker_open_until <= pg_catalog.now()) then
      update public.webhook_endpoints e
         set breaker_opens = e.breaker_opens + 1,
             breaker_open_until = pg_catalog.now() + pg_catalog.make_interval(secs => least(
               p_breaker_cooldown_ms::double precision * pg_catalog.power(2, least(e.breaker_opens, 30)),
               p_breaker_max_cooldown_ms::double precision) / 1000)
       where e.id = v_e.id returning * into v_e;
      v_opened := true;
    end if;
  end if;
  return pg_catalog.jsonb_build_object('id', v_d.id, 'state', v_d.state, 'attempts', v_d.attempts,
    'last_status', v_d.last_status, 'last_error', v_d.last_error,
    'consecutive_failures', v_e.consecutive_failures, 'breaker_open_until', v_e.breaker_open_until,
    'breaker_opened', v_opened);
end
$$;

-- ---- grants (the two functions created again; the replaced ones keep theirs) -------------------------

do $$
declare
  f text;
begin
  foreach f in array array[
    'public.webhook_deliveries__claim(integer, integer, integer, integer)',
    'public.webhook_deliveries__record(bigint, text, integer, text, integer, integer, integer)'
  ] loop
    execute pg_catalog.format('revoke all on function %s from public, anon, authenticated, service_role', f);
    execute pg_catalog.format('grant execute on function %s to cortex_orchestrator', f);
  end loop;
end
$$;
