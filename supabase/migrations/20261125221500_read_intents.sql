-- Read intents: a committed trace of every read, even one whose transaction never commits.
--
-- A read's audit rows are written in the read's transaction, so `begin; select
-- deployment_secrets__read(…); rollback;` returned the values and left nothing. No write made
-- inside that transaction can survive its rollback (short of an autonomous connection, which would
-- need a password stored in the database on a hosted project). So the trace is written first, in
-- a transaction of its own: the caller records an intent (deployment_secrets__intend_read or
-- platform_secrets__intend_read), that transaction commits, and the read then returns values only
-- when it is handed an intent that
--   - names the same deployment (and covers the secrets asked for) or the same platform secret,
--   - is at most 60 seconds old, and
--   - was committed by another transaction: pg_xact_status of the transaction that wrote it is
--     'committed' (an intent written in the read's own transaction, or one of its savepoints, is
--     still 'in progress' and is refused).
-- A read that commits names its intent in its audit rows ("…; intent <id>"). An intent with no
-- such read is a read that was attempted and rolled back, or never made: the log cannot tell which,
-- nor how many rolled-back reads one intent covered within its 60 seconds; it shows who, what, and
-- when. Denials need no intent (they return no value) and are audited as before.
--
-- The intents table is append-only like the log (only retention removes rows) and has no foreign
-- key: an intent outlives what it names. Intents are not hash-chained: writing one takes no chain
-- lock, so it never waits for a read of the same organisation.

create table public.secret_read_intents (
  id uuid primary key default gen_random_uuid(),
  at timestamptz not null default clock_timestamp(),
  org_id uuid,
  deployment_id uuid,
  platform_name text,
  secret_ids uuid[] check (secret_ids is null or pg_catalog.cardinality(secret_ids) between 1 and 100),
  actor text,
  job_id text,
  request_ip inet,
  user_agent text,
  -- the transaction that wrote the intent: the read requires it committed
  xact xid8 not null,
  check ((deployment_id is null) <> (platform_name is null))
);
create index secret_read_intents_deployment_id_idx on public.secret_read_intents (deployment_id) where deployment_id is not null;
create index secret_read_intents_at_idx on public.secret_read_intents (at);

create function public.secret_read_intents__refuse_change()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  -- only retention removes intents (see secret_access_log__refuse_change)
  if tg_op = 'DELETE' and current_user = 'cortex_audit_retention' then
    return old;
  end if;
  raise exception using errcode = '42501', message = pg_catalog.format(
    'secret_read_intents is append-only: %s refused', pg_catalog.lower(tg_op));
end
$$;

create trigger secret_read_intents_append_only
  before update or delete on public.secret_read_intents
  for each row execute function public.secret_read_intents__refuse_change();
create trigger secret_read_intents_no_truncate
  before truncate on public.secret_read_intents
  for each statement execute function public.secret_read_intents__refuse_change();

-- Internal: is p_intent_id a committed, fresh intent for this read? Exactly one of p_deployment_id
-- and p_platform_name is given.
create function public.secret_read_intents__valid(
  p_intent_id uuid,
  p_deployment_id uuid,
  p_secret_ids uuid[],
  p_platform_name text
) returns boolean
language sql stable
set search_path = pg_catalog, pg_temp
as $$
  select p_intent_id is not null and exists (
    select 1 from public.secret_read_intents i
    where i.id = p_intent_id
      and i.deployment_id is not distinct from p_deployment_id
      and i.platform_name is not distinct from p_platform_name
      and (i.secret_ids is null or (p_secret_ids is not null and p_secret_ids <@ i.secret_ids))
      and i.at > pg_catalog.clock_timestamp() - interval '60 seconds'
      and pg_catalog.pg_xact_status(i.xact) = 'committed')
$$;

revoke all on function public.secret_read_intents__refuse_change() from public, anon, authenticated, service_role;
revoke all on function public.secret_read_intents__valid(uuid, uuid, uuid[], text) from public, anon, authenticated, service_role;

-- ---- functions (the contract) -------------------------------------------------------------------

-- Records the intent to read the secrets bound to a deployment (all of them, or the given ids).
-- Call it in a transaction of its own, and pass the returned intent_id to deployment_secrets__read
-- within 60 seconds. It checks no entitlement (the read does) and returns no value.
create function public.deployment_secrets__intend_read(
  p_deployment_id uuid,
  p_secret_ids uuid[] default null,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row public.secret_read_intents%rowtype;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  if p_secret_ids is not null and pg_catalog.array_position(p_secret_ids, null) is not null then
    raise exception using errcode = '22023', message = 'secret_ids: must not contain null';
  end if;
  if p_secret_ids is not null and pg_catalog.cardinality(p_secret_ids) not between 1 and 100 then
    raise exception using errcode = '22023', message = 'secret_ids: must hold 1 to 100 ids (or be omitted: every bound secret)';
  end if;
  insert into public.secret_read_intents
    (org_id, deployment_id, secret_ids, actor, job_id, request_ip, user_agent, xact)
  values
    ((select d.org_id from public.deployments d where d.id = p_deployment_id), p_deployment_id,
     (select pg_catalog.array_agg(distinct x.id order by x.id) from pg_catalog.unnest(p_secret_ids) as x(id)),
     p_actor, p_job_id, p_request_ip, p_user_agent, pg_catalog.pg_current_xact_id())
  returning * into v_row;
  return pg_catalog.jsonb_build_object(
    'intent_id', v_row.id, 'expires_at', v_row.at + interval '60 seconds');
end
$$;

-- The same for a platform secret, by name.
create function public.platform_secrets__intend_read(
  p_name text,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row public.secret_read_intents%rowtype;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  if p_name is null or p_name !~ '^[a-z0-9][a-z0-9._-]{0,62}$' then
    raise exception using errcode = '22023', message =
      'name: must be a platform secret name: lowercase letters, digits, ".", "_" and "-", starting with a letter or digit, at most 63 characters';
  end if;
  insert into public.secret_read_intents (platform_name, actor, job_id, request_ip, user_agent, xact)
  values (p_name, p_actor, p_job_id, p_request_ip, p_user_agent, pg_catalog.pg_current_xact_id())
  returning * into v_row;
  return pg_catalog.jsonb_build_object(
    'intent_id', v_row.id, 'expires_at', v_row.at + interval '60 seconds');
end
$$;

revoke all on function public.deployment_secrets__intend_read(uuid, uuid[], text, text, inet, text)
  from public, anon, authenticated, service_role;
revoke all on function public.platform_secrets__intend_read(text, text, text, inet, text)
  from public, anon, authenticated, service_role;
grant execute on function public.deployment_secrets__intend_read(uuid, uuid[], text, text, inet, text) to cortex_orchestrator;
grant execute on function public.platform_secrets__intend_read(text, text, text, inet, text) to cortex_orchestrator;

-- ---- privileges and row-level security ----------------------------------------------------------

alter table public.secret_read_intents enable row level security;
create policy secret_read_intents_select_member on public.secret_read_intents
  for select to authenticated
  using (org_id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));
revoke all on table public.secret_read_intents from public, anon, authenticated, service_role, cortex_orchestrator;
grant select on table public.secret_read_intents to authenticated, service_role;
grant select, delete on table public.secret_read_intents to cortex_audit_retention;
create policy secret_read_intents_retention on public.secret_read_intents
  for all to cortex_audit_retention using (true) with check (true);
