-- Fair webhook dispatch, fixes (review R21 of 20261207110000_webhook_fair_dispatch.sql; that file ran
-- on the development database, so it is not edited: what changes is here).
--
-- F3 (and F4, F7): a job of an endpoint whose breaker is open no longer waits holding its row
--    `queued` (which kept its endpoint's and its organisation's slots, so three dead endpoints took
--    all five of an organisation's slots and its healthy endpoints starved; and a worker older than
--    20261207110000 read the unknown answer `hold` as skip and left the row queued with no job).
--    webhook_deliveries__begin puts the row back to `pending` itself and answers `skip`: every
--    worker, old or new, completes the job; the claim, which skips an endpoint whose breaker is open,
--    queues the row again once it closes. Nothing is sent and no attempt is spent meanwhile.
-- F1: (a) a delivery not sent within p_max_age_seconds of its creation (WEBHOOK_MAX_AGE_SECONDS,
--    default 86400) ends `failed` with the error code `expired` instead of being sent: in the claim
--    (pending rows among the oldest open ones, a bounded number per call) and in begin (any open
--    row): a dead endpoint's backlog drains. (b) The claim reads each active endpoint's queued rows
--    (the caps bound them) and its first p_per_endpoint pending rows through the index
--    webhook_deliveries_endpoint_open_idx (20261207135000), instead of ranking every open row.
--    (c) Claims take turns with pg_try_advisory_xact_lock: a claim that finds another under way
--    returns nothing at once (the other is queueing; the next pass comes within 500 ms) instead of
--    waiting behind it.
-- F2: webhook_deliveries__release puts rows the dispatcher could not give a job (queue.add failed),
--    or whose job failed for good without recording the row, back to `pending`.
-- F6: a 429 no longer counts for the breaker (another organisation can make a shared receiver
--    rate-limit the orchestrator's address); like any 4xx other than 408, it neither counts nor resets.
--
-- Same rules as the files before: security definer, `search_path = pg_catalog, pg_temp`, fully
-- qualified names, EXECUTE for cortex_orchestrator only. claim and begin take a new argument (with a
-- default, so an older worker's named call still resolves): dropped and created again, their grants
-- stated again below; record is replaced in place (same arguments, its grants kept).

-- no long lock on a live database (see .squawk.toml)
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- ---- the claim: capped, cheap with a backlog, never waiting for another claim -----------------------

drop function public.webhook_deliveries__claim(integer, integer, integer, integer);

-- Up to p_limit deliveries move to queued; their ids are returned. First, pending deliveries older
-- than p_max_age_seconds among the 1,000 oldest open ones (ids follow creation) end failed/expired:
-- a claim's cost stays bounded, and a backlog drains from its oldest end, 1,000 per claim at most.
-- Then a pending delivery is taken within the caps (its endpoint fewer than p_per_endpoint queued,
-- its organisation fewer than p_per_org), oldest first per endpoint, while its endpoint's breaker is
-- closed; a queued one older than p_requeue_after_seconds (its job Redis may have lost, or its job
-- ended without recording it; the dispatcher re-adds a job that ended) is taken again whatever the
-- caps (it is counted in them already). Only each active endpoint's queued rows and first
-- p_per_endpoint pending rows are read (index webhook_deliveries_endpoint_open_idx): the cost grows
-- with the endpoints, not with their backlog. Claims take turns (the caps count rows, and two
-- claims could each see the same free slot): one that finds the lock taken returns [] at once.
create function public.webhook_deliveries__claim(
  p_limit integer default 100,
  p_requeue_after_seconds integer default 900,
  p_per_endpoint integer default 2,
  p_per_org integer default 5,
  p_max_age_seconds integer default 86400
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
  if p_max_age_seconds is null or p_max_age_seconds < 60 or p_max_age_seconds > 2592000 then
    raise exception using errcode = '22023', message = 'max_age_seconds: must be between 60 and 2592000';
  end if;
  -- the key: 'webhook_deliveries__claim' as a number (any fixed bigint no other code uses)
  if not pg_catalog.pg_try_advisory_xact_lock(7765626801) then
    return '[]'::jsonb;
  end if;
  -- too old to send: the oldest pending ones end failed/expired (a row another transaction holds waits)
  with oldest as (
    select w.id from public.webhook_deliveries w
    where w.state in ('pending', 'queued')
    order by w.id limit 1000
  ), old as (
    select w.id from public.webhook_deliveries w
    where w.id in (select o.id from oldest o) and w.state = 'pending'
      and w.created_at < pg_catalog.now() - pg_catalog.make_interval(secs => p_max_age_seconds)
    for update of w skip locked
  )
  update public.webhook_deliveries w
     set state = 'failed', last_error = 'expired', finished_at = pg_catalog.now()
    from old o where w.id = o.id;
  -- a statement of its own after the lock: its snapshot sees every earlier claim's rows
  with ep as (
    select e.id, e.org_id, (e.breaker_open_until is null or e.breaker_open_until <= pg_catalog.now()) as closed
    from public.webhook_endpoints e
    where e.disabled_at is null
  ), q as (
    -- each endpoint's queued rows: few (the caps bound them)
    select ep.id as endpoint_id, ep.org_id, w.id, w.queued_at
    from ep cross join lateral (
      select x.id, x.queued_at from public.webhook_deliveries x
      where x.endpoint_id = ep.id and x.state = 'queued'
    ) w
  ), busy_endpoint as (
    select q.endpoint_id, pg_catalog.count(*) as n from q group by q.endpoint_id
  ), busy_org as (
    select q.org_id, pg_catalog.count(*) as n from q group by q.org_id
  ), endpoint_ranked as (
    select c.id, ep.org_id, c.rn + coalesce(b.n, 0) as slot
    from ep
    left join busy_endpoint b on b.endpoint_id = ep.id
    cross join lateral (
      select x.id, pg_catalog.row_number() over (order by x.id) as rn
      from (
        -- `between`, not `=`, and the index's order: with `=` the planner drops endpoint_id from the
        -- order (a fixed value) and may walk webhook_deliveries_open_idx in id order, filtering out
        -- a dead endpoint's whole backlog to find another's first rows (measured: 30-50 ms with
        -- 200,000 rows); this way only webhook_deliveries_endpoint_open_idx gives the order
        select y.id from public.webhook_deliveries y
        where y.endpoint_id between ep.id and ep.id and y.state = 'pending'
        order by y.endpoint_id, y.id limit p_per_endpoint
      ) x
    ) c
    where ep.closed
  ), org_ranked as (
    select r.id, pg_catalog.row_number() over (partition by r.org_id order by r.id) + coalesce(b.n, 0) as slot
    from endpoint_ranked r
    left join busy_org b on b.org_id = r.org_id
    where r.slot <= p_per_endpoint
  ), picked as (
    select r.id from org_ranked r where r.slot <= p_per_org
    union all
    select q.id from q
    where q.queued_at < pg_catalog.now() - pg_catalog.make_interval(secs => p_requeue_after_seconds)
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

-- ---- a job starts: deliver or skip (expired, cancelled, or back to pending while the breaker is open) -

drop function public.webhook_deliveries__begin(bigint);

create function public.webhook_deliveries__begin(p_delivery_id bigint, p_max_age_seconds integer default 86400)
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
  if p_max_age_seconds is null or p_max_age_seconds < 60 or p_max_age_seconds > 2592000 then
    raise exception using errcode = '22023', message = 'max_age_seconds: must be between 60 and 2592000';
  end if;
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
  if v_d.created_at < pg_catalog.now() - pg_catalog.make_interval(secs => p_max_age_seconds) then
    update public.webhook_deliveries w
       set state = 'failed', last_error = 'expired', finished_at = pg_catalog.now()
     where w.id = v_d.id;
    return pg_catalog.jsonb_build_object('action', 'skip', 'state', 'failed', 'error', 'expired');
  end if;
  if v_e.breaker_open_until > pg_catalog.now() then
    -- back to pending: the job ends (any worker completes a skip), the row holds no slot, and the
    -- claim queues it again once the breaker closes; no POST, no attempt spent
    update public.webhook_deliveries w set state = 'pending', queued_at = null where w.id = v_d.id;
    return pg_catalog.jsonb_build_object('action', 'skip', 'state', 'pending', 'endpoint_id', v_e.id,
      'held_until', v_e.breaker_open_until);
  end if;
  select * into strict v_ev from public.deployment_events x where x.id = v_d.event_id;
  return pg_catalog.jsonb_build_object('action', 'deliver', 'delivery_id', v_d.id, 'endpoint_id', v_e.id,
    'org_id', v_e.org_id, 'url', v_e.url, 'attempt', v_d.attempts + 1, 'event', public.deployment_events__json(v_ev));
end
$$;

-- ---- rows without a live job go back to pending ---------------------------------------------------------

-- The dispatcher's queue.add failed for them after the claim, or their job failed for good without
-- recording them (an error before or around the POST: the database, the secret's read). Only
-- `queued` rows change (a recorded, final row stays as it is); the ids changed are returned.
create function public.webhook_deliveries__release(p_ids bigint[])
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_ids bigint[];
begin
  if p_ids is null or pg_catalog.cardinality(p_ids) > 1000 then
    raise exception using errcode = '22023', message = 'ids: must be a list of at most 1000 delivery ids';
  end if;
  with locked as (
    select w.id from public.webhook_deliveries w
    where w.id = any (p_ids) and w.state = 'queued'
    order by w.id
    for update of w
  ), u as (
    update public.webhook_deliveries w set state = 'pending', queued_at = null
    from locked l where w.id = l.id and w.state = 'queued' returning w.id
  )
  select pg_catalog.array_agg(u.id order by u.id) into v_ids from u;
  return coalesce(pg_catalog.to_jsonb(v_ids), '[]'::jsonb);
end
$$;

-- ---- an attempt's outcome, and the endpoint's breaker: a 429 no longer counts ---------------------------

create or replace function public.webhook_deliveries__record(
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
  -- what costs a slot and says the receiver is unwell; not a 429 (review R21 F6: anyone can make a
  -- shared receiver rate-limit the orchestrator's address, which would open this endpoint's breaker)
  elsif p_error in ('timeout', 'connection_failed', 'tls_failed', 'dns_failed')
     or (p_error = 'http_status' and (p_http_status >= 500 or p_http_status = 408)) then
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

-- ---- grants (the functions created again or new; record keeps its own) ------------------------------

do $$
declare
  f text;
begin
  foreach f in array array[
    'public.webhook_deliveries__claim(integer, integer, integer, integer, integer)',
    'public.webhook_deliveries__begin(bigint, integer)',
    'public.webhook_deliveries__release(bigint[])'
  ] loop
    execute pg_catalog.format('revoke all on function %s from public, anon, authenticated, service_role', f);
    execute pg_catalog.format('grant execute on function %s to cortex_orchestrator', f);
  end loop;
end
$$;
