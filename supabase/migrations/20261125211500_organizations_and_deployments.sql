-- Organizations, their members, deployments (one agent server each) and deployment steps.
-- Every read or write the orchestrator makes goes through a function below; each returns jsonb so
-- that direct Postgres and PostgREST `.rpc()` see one shape.
--
-- Error contract of every function: bad input raises sqlstate 22023 with
-- '<parameter name without p_>: <what is wrong and what to do>' and never quotes a secret value;
-- a missing row raises P0002 with '<thing> <id> not found'.

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- ---- the orchestrator's own role ------------------------------------------------------------------
-- The orchestrator acts as cortex_orchestrator, never as service_role (which Supabase lets read
-- vault.decrypted_secrets directly and write every table PostgREST exposes). It holds EXECUTE on
-- the contract functions and nothing else: no table privilege, no vault access, no TEMP. NOLOGIN:
-- the direct adapter logs in as a member and switches (`-c role=cortex_orchestrator`); PostgREST's
-- `authenticator` switches to it for a JWT whose `role` claim names it. Roles are cluster-wide, so
-- this is written to run again for every database of the cluster.
do $$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'cortex_orchestrator') then
    create role cortex_orchestrator nologin noinherit;
  end if;
end
$$;
grant cortex_orchestrator to authenticator;
grant usage on schema public to cortex_orchestrator;

-- No TEMP for the orchestrator. A temporary object is how a caller puts its own code where a
-- security definer function runs it as the owner: a domain `pg_temp.uuid` with a CHECK calling a
-- temporary function is found before `pg_catalog.uuid` by a function whose search_path leaves
-- pg_temp implicit. Every function here pins `search_path = pg_catalog, pg_temp` (pg_temp last),
-- and the role cannot create temporary objects at all. TEMP is PUBLIC's by default: PUBLIC loses it
-- on this database (the owner and superusers keep it; no API role gets it back). Where the
-- migration user is not the database owner (possible on a hosted project), REVOKE revokes nothing:
-- the migration then warns, loudly, instead of failing, and the pinned search_path alone stops
-- the attack until the owner revokes it (the pgTAP test requires it revoked).
do $$
begin
  execute pg_catalog.format('revoke temporary on database %I from public', pg_catalog.current_database());
  if pg_catalog.has_database_privilege('cortex_orchestrator', pg_catalog.current_database(), 'TEMPORARY') then
    raise warning using message = pg_catalog.format(
      'cortex_orchestrator still holds TEMPORARY on database %s: as the database owner, run: revoke temporary on database %I from public',
      pg_catalog.current_database(), pg_catalog.current_database());
  end if;
end
$$;

-- ---- input checks (internal) --------------------------------------------------------------------

create function public.input__check_text(p_field text, p_value text, p_max integer)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_value is null or p_value = '' then
    raise exception using errcode = '22023', message = p_field || ': must not be empty';
  end if;
  if pg_catalog.char_length(p_value) > p_max then
    raise exception using errcode = '22023',
      message = pg_catalog.format('%s: must be at most %s characters', p_field, p_max);
  end if;
  -- U+0000 cannot reach a text value at all; the rest would break env files and log lines
  if p_value ~ '[\x01-\x1f\x7f]' then
    raise exception using errcode = '22023',
      message = p_field || ': must not contain control characters (U+0000-U+001F, U+007F)';
  end if;
  if pg_catalog.btrim(p_value) = '' then
    raise exception using errcode = '22023', message = p_field || ': must not be blank';
  end if;
end
$$;

create function public.input__check_required(p_field text, p_value anyelement)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_value is null then
    raise exception using errcode = '22023', message = p_field || ': is required';
  end if;
end
$$;

revoke all on function public.input__check_text(text, text, integer) from public, anon, authenticated, service_role;
revoke all on function public.input__check_required(text, anyelement) from public, anon, authenticated, service_role;

-- ---- tables -------------------------------------------------------------------------------------

create table public.organizations (
  -- the audit log's org-less chain (nil uuid) and platform chain (all ones) are no organization's
  id uuid primary key default gen_random_uuid()
    check (id not in ('00000000-0000-0000-0000-000000000000', 'ffffffff-ffff-ffff-ffff-ffffffffffff')),
  name text not null check (pg_catalog.char_length(name) between 1 and 200),
  created_at timestamptz not null default now()
);

create table public.organization_members (
  org_id uuid not null references public.organizations (id) on delete cascade,
  user_id uuid not null,
  role text not null default 'member' check (role in ('owner', 'admin', 'member')),
  created_at timestamptz not null default now(),
  primary key (org_id, user_id)
);
create index organization_members_user_id_idx on public.organization_members (user_id);

create table public.deployments (
  id uuid primary key default gen_random_uuid(),
  org_id uuid not null references public.organizations (id),
  name text not null check (pg_catalog.char_length(name) between 1 and 200),
  subdomain text not null check (subdomain ~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'),
  provider text not null default 'local' check (provider in ('local', 'hcloud')),
  region text,
  server_type text,
  status text not null default 'requested' check (
    status in ('requested', 'provisioning', 'ready', 'failed', 'rotating', 'deprovisioning', 'deleted')
  ),
  server_id text,
  ipv4 inet check (pg_catalog.family(ipv4) = 4),
  ipv6 inet check (pg_catalog.family(ipv6) = 6),
  host_public_key text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  status_changed_at timestamptz not null default now(),
  -- target of secrets' (deployment_id, org_id) key: a scoped secret shares its deployment's org
  unique (id, org_id)
);
-- A deleted deployment gives its name back: DNS is removed before a deployment reaches `deleted`.
create unique index deployments_subdomain_key on public.deployments (subdomain) where status <> 'deleted';
create index deployments_org_id_idx on public.deployments (org_id);

create table public.deployment_steps (
  deployment_id uuid not null references public.deployments (id) on delete cascade,
  run integer not null check (run >= 1),
  step text not null check (step ~ '^[a-z][a-z0-9_-]{0,62}$'),
  status text not null default 'running' check (status in ('pending', 'running', 'succeeded', 'failed', 'skipped')),
  started_at timestamptz,
  finished_at timestamptz,
  error text check (pg_catalog.char_length(error) <= 4000),
  primary key (deployment_id, run, step)
);

-- ---- deployment status machine ----------------------------------------------------------------
-- Enforced by a trigger so that no writer, function or direct, can skip a state.

create function public.deployments__next_statuses(p_status text)
returns text[]
language sql immutable
set search_path = pg_catalog, pg_temp
as $$
  select case p_status
    when 'requested' then array['provisioning', 'deprovisioning']
    when 'provisioning' then array['ready', 'failed', 'deprovisioning']
    when 'ready' then array['rotating', 'deprovisioning']
    when 'rotating' then array['ready', 'deprovisioning']
    when 'failed' then array['provisioning', 'deprovisioning']
    when 'deprovisioning' then array['deleted']
    else array[]::text[]
  end
$$;

create function public.deployments__guard_status()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_allowed text[];
begin
  if tg_op = 'INSERT' then
    if new.status <> 'requested' then
      raise exception using errcode = '22023', message = 'status: a new deployment starts as requested';
    end if;
    return new;
  end if;
  new.updated_at := now();
  if new.status is distinct from old.status then
    v_allowed := public.deployments__next_statuses(old.status);
    if not new.status = any (v_allowed) then
      raise exception using errcode = '22023', message = pg_catalog.format(
        'status: cannot change from %s to %s; allowed from %s: %s',
        old.status, new.status, old.status,
        coalesce(nullif(pg_catalog.array_to_string(v_allowed, ', '), ''), 'nothing (final state)'));
    end if;
    new.status_changed_at := now();
  end if;
  return new;
end
$$;

create trigger deployments_guard_status
  before insert or update on public.deployments
  for each row execute function public.deployments__guard_status();

revoke all on function public.deployments__next_statuses(text) from public, anon, authenticated, service_role;
revoke all on function public.deployments__guard_status() from public, anon, authenticated, service_role;

-- ---- functions (the contract) -----------------------------------------------------------------

create function public.organizations__create(p_name text)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id uuid;
begin
  perform public.input__check_text('name', p_name, 200);
  insert into public.organizations (name) values (p_name) returning id into v_id;
  return pg_catalog.jsonb_build_object('id', v_id);
end
$$;

create function public.organization_members__add(p_org_id uuid, p_user_id uuid, p_role text default 'member')
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_required('org_id', p_org_id);
  perform public.input__check_required('user_id', p_user_id);
  if p_role is null or p_role not in ('owner', 'admin', 'member') then
    raise exception using errcode = '22023', message = 'role: must be one of owner, admin, member';
  end if;
  if not exists (select 1 from public.organizations o where o.id = p_org_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('organization %s not found', p_org_id);
  end if;
  insert into public.organization_members (org_id, user_id, role)
  values (p_org_id, p_user_id, p_role)
  on conflict (org_id, user_id) do update set role = excluded.role;
  return pg_catalog.jsonb_build_object('org_id', p_org_id, 'user_id', p_user_id, 'role', p_role);
end
$$;

create function public.deployments__create(
  p_org_id uuid,
  p_name text,
  p_subdomain text,
  p_provider text default 'local',
  p_region text default null,
  p_server_type text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row public.deployments%rowtype;
begin
  perform public.input__check_required('org_id', p_org_id);
  perform public.input__check_text('name', p_name, 200);
  if p_subdomain is null or p_subdomain !~ '^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$' then
    raise exception using errcode = '22023',
      message = 'subdomain: must be a DNS label: lowercase letters, digits and inner hyphens, at most 63 characters (^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$)';
  end if;
  if p_provider is null or p_provider not in ('local', 'hcloud') then
    raise exception using errcode = '22023', message = 'provider: must be local or hcloud';
  end if;
  if p_region is not null and p_region !~ '^[a-z0-9][a-z0-9._-]{0,62}$' then
    raise exception using errcode = '22023',
      message = 'region: must be a location name such as fsn1 (lowercase letters, digits, ".", "_", "-"; at most 63 characters)';
  end if;
  if p_server_type is not null and p_server_type !~ '^[a-z0-9][a-z0-9._-]{0,62}$' then
    raise exception using errcode = '22023',
      message = 'server_type: must be a server type name such as cx23 (lowercase letters, digits, ".", "_", "-"; at most 63 characters)';
  end if;
  if not exists (select 1 from public.organizations o where o.id = p_org_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('organization %s not found', p_org_id);
  end if;
  if exists (select 1 from public.deployments d where d.subdomain = p_subdomain and d.status <> 'deleted') then
    raise exception using errcode = '23505',
      message = pg_catalog.format('subdomain: %s is already in use; choose another', p_subdomain);
  end if;
  insert into public.deployments (org_id, name, subdomain, provider, region, server_type)
  values (p_org_id, p_name, p_subdomain, p_provider, p_region, p_server_type)
  returning * into v_row;
  return pg_catalog.to_jsonb(v_row);
end
$$;

create function public.deployments__get(p_deployment_id uuid)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row public.deployments%rowtype;
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  select * into v_row from public.deployments d where d.id = p_deployment_id;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;
  return pg_catalog.to_jsonb(v_row);
end
$$;

create function public.deployments__set_status(p_deployment_id uuid, p_status text)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_row public.deployments%rowtype;
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  if p_status is null or p_status not in
     ('requested', 'provisioning', 'ready', 'failed', 'rotating', 'deprovisioning', 'deleted') then
    raise exception using errcode = '22023',
      message = 'status: must be one of requested, provisioning, ready, failed, rotating, deprovisioning, deleted';
  end if;
  -- the guard trigger refuses an illegal transition with a message naming the allowed ones
  update public.deployments d set status = p_status where d.id = p_deployment_id returning * into v_row;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;
  return pg_catalog.to_jsonb(v_row);
end
$$;

revoke all on function public.organizations__create(text) from public, anon, authenticated, service_role;
revoke all on function public.organization_members__add(uuid, uuid, text) from public, anon, authenticated, service_role;
revoke all on function public.deployments__create(uuid, text, text, text, text, text) from public, anon, authenticated, service_role;
revoke all on function public.deployments__get(uuid) from public, anon, authenticated, service_role;
revoke all on function public.deployments__set_status(uuid, text) from public, anon, authenticated, service_role;
grant execute on function public.organizations__create(text) to cortex_orchestrator;
grant execute on function public.organization_members__add(uuid, uuid, text) to cortex_orchestrator;
grant execute on function public.deployments__create(uuid, text, text, text, text, text) to cortex_orchestrator;
grant execute on function public.deployments__get(uuid) to cortex_orchestrator;
grant execute on function public.deployments__set_status(uuid, text) to cortex_orchestrator;

-- ---- row-level security: members read their organizations' rows; nobody writes through RLS ------

alter table public.organizations enable row level security;
alter table public.organization_members enable row level security;
alter table public.deployments enable row level security;
alter table public.deployment_steps enable row level security;

create policy organization_members_select_own on public.organization_members
  for select to authenticated
  using (user_id = (select auth.uid()));

-- The subqueries below read organization_members under its own policy (own rows only).
create policy organizations_select_member on public.organizations
  for select to authenticated
  using (id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));

create policy deployments_select_member on public.deployments
  for select to authenticated
  using (org_id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));

create policy deployment_steps_select_member on public.deployment_steps
  for select to authenticated
  using (deployment_id in (
    select d.id from public.deployments d
    join public.organization_members m on m.org_id = d.org_id
    where m.user_id = (select auth.uid())));

revoke all on table public.organizations, public.organization_members, public.deployments, public.deployment_steps
  from public, anon, authenticated, service_role, cortex_orchestrator;
grant select on table public.organizations, public.organization_members, public.deployments, public.deployment_steps
  to authenticated;
-- No API role writes a table: the functions above are the only way in. service_role (the
-- dashboard's key) may read; the orchestrator's role holds no table privilege at all.
grant select on table public.organizations, public.organization_members, public.deployments, public.deployment_steps
  to service_role;
