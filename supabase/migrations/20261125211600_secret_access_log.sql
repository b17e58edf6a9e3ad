-- The secret access log: append-only and hash-chained, one chain per organization, plus two
-- chains that belong to no organization: events with no org (a denied read of an unknown
-- deployment) form the chain of the nil uuid, and platform events (platform_secrets, in
-- 20261125221400_platform_secrets.sql) the platform chain ffffffff-ffff-ffff-ffff-ffffffffffff.
--
-- Each row carries its chain's sequence number, the id and hash of the row before it, and
-- hash = sha256 of its canonical content (including seq, prev_id and prev_hash). A per-chain head
-- row, locked for update by each insert, serializes writers of one chain only. The head also
-- records the last row, so a removed tail is detected, and the anchor left by retention.
--
-- Rows leave only through secret_access_log__apply_retention, which runs as a role of its own
-- (cortex_audit_retention, recognised by the triggers as current_user; no API role is a member)
-- and only the database owner may call. The chain heads only move forward. A superuser can still
-- disable triggers; the chain is what makes that visible to secret_access_log__verify, and the
-- signed checkpoints (at the end of this file) what makes a rewritten chain visible.
--
-- Lock order. Every function that writes audit rows takes its locks in one order, so that no two
-- of them can deadlock:
--
--   deployment -> secrets (in id order) -> bindings (in (deployment_id, env_var) order)
--     -> versions and vault rows (only ever under their secret's lock) -> audit chain head, last
--
-- A function may skip a level but never goes back up one. The chain head is locked by the chain
-- trigger of the first audit row, so every audit row is appended after the last row lock (the
-- secrets and platform secrets functions append their audit rows last for this reason). Every
-- audit row is written in the transaction of the change or read it records; a denial is audited
-- and returned; a failure rolls back the change and its audit rows together.

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

create table public.secret_access_log (
  id bigint generated always as identity primary key,
  at timestamptz not null default clock_timestamp(),
  org_id uuid,
  deployment_id uuid,
  secret_id uuid,
  version integer,
  operation text not null check (operation in ('create', 'read', 'rotate', 'revoke', 'delete', 'bind', 'unbind', 'retention')),
  outcome text not null check (outcome in ('success', 'denied', 'error')),
  actor text,
  job_id text,
  request_ip inet,
  user_agent text,
  reason text,
  -- set by the chain trigger: coalesce(org_id, nil uuid), or the platform chain (all ones) for an
  -- org-less platform event that asks for it
  chain_id uuid not null,
  seq bigint not null,
  prev_id bigint,
  prev_hash text not null,
  hash text not null,
  unique (chain_id, seq)
);
-- No foreign keys: an audit row must outlive what it names and record ids that never existed.
create index secret_access_log_org_id_at_idx on public.secret_access_log (org_id, at);
create index secret_access_log_secret_id_idx on public.secret_access_log (secret_id) where secret_id is not null;
create index secret_access_log_deployment_id_idx on public.secret_access_log (deployment_id) where deployment_id is not null;

create table public.secret_access_log_chains (
  chain_id uuid primary key,
  head_seq bigint not null default 0,
  head_id bigint,
  head_hash text not null default pg_catalog.repeat('0', 64),
  anchor_seq bigint not null default 0,
  anchor_id bigint,
  anchor_hash text not null default pg_catalog.repeat('0', 64),
  updated_at timestamptz not null default now()
);

-- Canonical content: a JSON array in fixed order, the time in UTC with microseconds, so the hash
-- depends on neither TimeZone nor DateStyle. `id` is left out: it is the row's position, which

-- Canonical content: a JSON array in fixed order, the time in UTC with microseconds, so the hash
-- depends on neither TimeZone nor DateStyle. `id` is left out: it is the row's position, which
-- verify checks against seq and prev_id instead. The array gains the chain id only where it is not
-- coalesce(org_id, nil uuid), i.e. for platform rows, so moving a row to another chain changes its
-- hash. PL/pgSQL rather than SQL: a SQL function with a SET clause cannot be inlined, and its body
-- would be parsed and planned again in every transaction.
create function public.secret_access_log__hash(p_row public.secret_access_log)
returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_content jsonb := pg_catalog.jsonb_build_array(
    'cortex.secret_access_log.v1',
    p_row.seq,
    p_row.prev_id,
    p_row.prev_hash,
    pg_catalog.to_char(p_row.at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    p_row.org_id,
    p_row.deployment_id,
    p_row.secret_id,
    p_row.version,
    p_row.operation,
    p_row.outcome,
    p_row.actor,
    p_row.job_id,
    p_row.request_ip::text,
    p_row.user_agent,
    p_row.reason);
begin
  if p_row.chain_id is distinct from coalesce(p_row.org_id, '00000000-0000-0000-0000-000000000000'::uuid) then
    v_content := v_content || pg_catalog.jsonb_build_array(p_row.chain_id);
  end if;
  return pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(v_content::text, 'UTF8')), 'hex');
end
$$;

-- Sets chain, id, time, seq and hashes under the chain head's lock (taken with one statement; the
-- insert of a missing head runs only for a chain's first row). An org-less row joins the platform
-- chain only when it asks for it (platform_secrets__audit); every other row's chain is its org's.
create function public.secret_access_log__chain()
returns trigger
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_chain uuid := case
    when new.org_id is null and new.chain_id = 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid then new.chain_id
    else coalesce(new.org_id, '00000000-0000-0000-0000-000000000000'::uuid)
  end;
  v_head record;
begin
  select c.head_seq, c.head_id, c.head_hash into v_head
  from public.secret_access_log_chains c where c.chain_id = v_chain for update;
  if not found then
    insert into public.secret_access_log_chains (chain_id) values (v_chain) on conflict (chain_id) do nothing;
    select c.head_seq, c.head_id, c.head_hash into strict v_head
    from public.secret_access_log_chains c where c.chain_id = v_chain for update;
  end if;
  new.chain_id := v_chain;
  -- id and time are taken under the chain lock, so within a chain they grow with seq
  new.id := pg_catalog.nextval('public.secret_access_log_id_seq'::regclass);
  new.at := pg_catalog.clock_timestamp();
  new.seq := v_head.head_seq + 1;
  new.prev_id := v_head.head_id;
  new.prev_hash := v_head.head_hash;
  new.hash := public.secret_access_log__hash(new);
  update public.secret_access_log_chains c
  set head_seq = new.seq, head_id = new.id, head_hash = new.hash, updated_at = new.at
  where c.chain_id = v_chain;
  return new;
end
$$;

create trigger secret_access_log_chain
  before insert on public.secret_access_log
  for each row execute function public.secret_access_log__chain();

-- Refuses UPDATE, DELETE and TRUNCATE for everyone, superuser included. The one exception is a
-- DELETE by the role cortex_audit_retention, which owns secret_access_log__apply_retention (a
-- security definer function only the database owner may call) and nothing else: the retention
-- path is recognised by who runs it, not by a setting any session could set. Retention records an
-- anchor, so the chain still verifies, and leaves its own event in the chain.
create function public.secret_access_log__refuse_change()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'DELETE' and current_user = 'cortex_audit_retention' then
    return old;
  end if;
  raise exception using errcode = '42501', message = pg_catalog.format(
    'secret_access_log is append-only: %s refused (rows leave only through secret_access_log__apply_retention)',
    pg_catalog.lower(tg_op));
end
$$;

create trigger secret_access_log_append_only
  before update or delete on public.secret_access_log
  for each row execute function public.secret_access_log__refuse_change();
create trigger secret_access_log_no_truncate
  before truncate on public.secret_access_log
  for each statement execute function public.secret_access_log__refuse_change();

-- The chain heads only move forward: a head starts empty, its seq grows (its id and hash change
-- only with it), its anchor only grows and only by retention, and no head is deleted or truncated.
-- Without this, an owner-less writer could reset a head and rebuild a shorter chain under it.
create function public.secret_access_log_chains__guard()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
  if tg_op = 'INSERT' then
    if new.head_seq <> 0 or new.head_id is not null or new.anchor_seq <> 0 or new.anchor_id is not null
       or new.head_hash <> pg_catalog.repeat('0', 64) or new.anchor_hash <> pg_catalog.repeat('0', 64) then
      raise exception using errcode = '42501', message = 'secret_access_log_chains: a chain head starts empty';
    end if;
    return new;
  end if;
  if tg_op = 'UPDATE' then
    if new.chain_id <> old.chain_id
       or new.head_seq < old.head_seq
       or (new.head_seq = old.head_seq
           and (new.head_id is distinct from old.head_id or new.head_hash <> old.head_hash))
       or new.anchor_seq < old.anchor_seq or new.anchor_seq > new.head_seq
       or ((new.anchor_seq, new.anchor_id, new.anchor_hash) is distinct from (old.anchor_seq, old.anchor_id, old.anchor_hash)
           and current_user <> 'cortex_audit_retention') then
      raise exception using errcode = '42501', message =
        'secret_access_log_chains: a chain head only moves forward (and only retention moves its anchor)';
    end if;
    return new;
  end if;
  raise exception using errcode = '42501', message = pg_catalog.format(
    'secret_access_log_chains: %s refused (a chain head is never removed)', pg_catalog.lower(tg_op));
end
$$;

create trigger secret_access_log_chains_guard
  before insert or update or delete on public.secret_access_log_chains
  for each row execute function public.secret_access_log_chains__guard();
create trigger secret_access_log_chains_no_truncate
  before truncate on public.secret_access_log_chains
  for each statement execute function public.secret_access_log_chains__guard();

-- Internal: every audited function appends through here, inside its own transaction. Rows are
-- inserted with OVERRIDING SYSTEM VALUE: the identity default would draw an id that the trigger
-- replaces with one drawn under the lock.
create function public.secret_access_log__append(
  p_operation text,
  p_outcome text,
  p_org_id uuid,
  p_deployment_id uuid,
  p_secret_id uuid,
  p_version integer,
  p_reason text,
  p_actor text,
  p_job_id text,
  p_request_ip inet,
  p_user_agent text
) returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
  v_id bigint;
begin
  -- id, seq and hashes are placeholders: the chain trigger sets them under the chain lock
  insert into public.secret_access_log
    (id, org_id, deployment_id, secret_id, version, operation, outcome, reason, actor, job_id, request_ip, user_agent,
     seq, prev_hash, hash)
  overriding system value
  values
    (0, p_org_id, p_deployment_id, p_secret_id, p_version, p_operation, p_outcome, p_reason, p_actor, p_job_id,
     p_request_ip, p_user_agent, 0, '', '')
  returning id into v_id;
  return v_id;
end
$$;

-- Internal: the audit context every secret function accepts.
create function public.audit_context__check(p_actor text, p_job_id text, p_user_agent text)
returns void
language plpgsql immutable
set search_path = pg_catalog, pg_temp
as $$
begin
  if p_actor is not null then
    perform public.input__check_text('actor', p_actor, 200);
  end if;
  if p_job_id is not null then
    perform public.input__check_text('job_id', p_job_id, 200);
  end if;
  if p_user_agent is not null then
    perform public.input__check_text('user_agent', p_user_agent, 1000);
  end if;
end
$$;

-- Walks one chain in id order (insertion order) from its anchor and names the first bad row:
--   changed   - a row's content no longer matches its hash, or no longer matches the hash its
--               successor (or the head) recorded for it;
--   removed   - a row that a successor (or the head) names as its predecessor is gone; the id
--               reported is that missing row's;
--   reordered - a row is not where its seq and prev_id place it.
create function public.secret_access_log__verify_chain(
  p_chain_id uuid,
  out rows_checked bigint,
  out first_bad_id bigint,
  out problem text
)
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
declare
  v_head public.secret_access_log_chains%rowtype;
  v_has_head boolean;
  r public.secret_access_log%rowtype;
  v_seq bigint;
  v_id bigint;
  v_hash text;
begin
  rows_checked := 0;
  select * into v_head from public.secret_access_log_chains c where c.chain_id = p_chain_id;
  v_has_head := found;
  v_seq := coalesce(v_head.anchor_seq, 0);
  v_id := v_head.anchor_id;
  v_hash := coalesce(v_head.anchor_hash, pg_catalog.repeat('0', 64));
  for r in select * from public.secret_access_log l where l.chain_id = p_chain_id order by l.id loop
    rows_checked := rows_checked + 1;
    continue when problem is not null;
    if r.hash is distinct from public.secret_access_log__hash(r) then
      first_bad_id := r.id;
      problem := 'changed';
    elsif r.seq = v_seq + 1 and r.prev_id is not distinct from v_id and r.prev_hash = v_hash then
      null;
    elsif r.seq = v_seq + 1 and r.prev_id is not distinct from v_id then
      -- in its place, but its predecessor is no longer the row it was chained to
      first_bad_id := case when v_id is not distinct from v_head.anchor_id then r.id else v_id end;
      problem := 'changed';
    elsif r.prev_id is not null and exists (
      select 1 from public.secret_access_log l where l.id = r.prev_id and l.chain_id = p_chain_id
    ) then
      first_bad_id := r.id;
      problem := 'reordered';
    else
      first_bad_id := coalesce(r.prev_id, r.id);
      problem := 'removed';
    end if;
    v_seq := r.seq;
    v_id := r.id;
    v_hash := r.hash;
  end loop;
  if problem is not null then
    return;
  end if;
  if not v_has_head then
    if rows_checked > 0 then
      problem := 'removed';  -- the chain's head row itself
    end if;
  elsif v_head.head_seq = v_seq and v_head.head_id is not distinct from v_id and v_head.head_hash = v_hash then
    null;
  elsif v_head.head_id is not null and not exists (
    select 1 from public.secret_access_log l where l.id = v_head.head_id and l.chain_id = p_chain_id
  ) then
    first_bad_id := v_head.head_id;
    problem := 'removed';
  elsif v_head.head_id is not distinct from v_id then
    first_bad_id := v_id;
    problem := 'changed';
  else
    first_bad_id := v_head.head_id;
    problem := 'reordered';
  end if;
end
$$;

create function public.secret_access_log__verify(p_org_id uuid default null)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_chain uuid;
  v_result record;
  v_rows bigint := 0::bigint;
  v_bad_id bigint;
  v_problem text;
begin
  for v_chain in
    select c.chain_id from public.secret_access_log_chains c where p_org_id is null or c.chain_id = p_org_id
    union
    select distinct l.chain_id from public.secret_access_log l where p_org_id is null or l.chain_id = p_org_id
    order by 1
  loop
    select * into v_result from public.secret_access_log__verify_chain(v_chain);
    v_rows := v_rows + v_result.rows_checked;
    -- across chains, report the earliest bad row
    if v_result.problem is not null
       and (v_problem is null or v_result.first_bad_id < v_bad_id or (v_bad_id is null and v_result.first_bad_id is not null)) then
      v_bad_id := v_result.first_bad_id;
      v_problem := v_result.problem;
    end if;
  end loop;
  return pg_catalog.jsonb_build_object(
    'ok', v_problem is null, 'rows_checked', v_rows, 'first_bad_id', v_bad_id, 'problem', v_problem);
end
$$;

-- Deletes, chain by chain, the longest prefix of rows older than p_before and records the last
-- deleted row as the chain's anchor, so the remaining rows still verify; then appends a
-- `retention` event to that chain saying what went. A chain that does not verify is left alone
-- (and listed): trimming it would destroy the evidence.
--
-- p_before must be at least the database owner's minimum age in the past: the setting
-- cortex.audit_retention_min_age of this database (`alter database … set
-- cortex.audit_retention_min_age = '400 days'`), read from the catalog, so that no session can
-- lower it with SET; 365 days when unset. Without p_before: now minus that minimum age. Runs as
-- cortex_audit_retention (it owns this function);
-- only the database owner may call it (pg_cron on a hosted project; `bash scripts/audit-retention.sh`
-- locally).
create function public.secret_access_log__apply_retention(p_before timestamptz default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_min_age interval;
  v_chain public.secret_access_log_chains%rowtype;
  v_check record;
  v_stop bigint;
  v_cut public.secret_access_log%rowtype;
  v_count bigint;
  v_deleted bigint := 0::bigint;
  v_trimmed integer := 0;
  v_skipped uuid[] := array[]::uuid[];
begin
  select coalesce(pg_catalog.max(pg_catalog.substr(c.setting, 32)), '365 days')::interval into v_min_age
  from pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) as c(setting)
  where s.setdatabase = (select d.oid from pg_catalog.pg_database d where d.datname = pg_catalog.current_database())
    and s.setrole = 0 and c.setting like 'cortex.audit\_retention\_min\_age=%';
  -- no cut-off given: everything older than the minimum age (what the scheduled job does)
  p_before := coalesce(p_before, pg_catalog.clock_timestamp() - v_min_age);
  if p_before > pg_catalog.clock_timestamp() - v_min_age then
    raise exception using errcode = '22023', message = pg_catalog.format(
      'before: must be at least %s ago (the database owner''s cortex.audit_retention_min_age)', v_min_age);
  end if;
  for v_chain in select * from public.secret_access_log_chains c order by c.chain_id for update loop
    select * into v_check from public.secret_access_log__verify_chain(v_chain.chain_id);
    if v_check.problem is not null then
      v_skipped := v_skipped || v_chain.chain_id;
      continue;
    end if;
    select min(l.seq) into v_stop
    from public.secret_access_log l where l.chain_id = v_chain.chain_id and l.at >= p_before;
    select * into v_cut
    from public.secret_access_log l
    where l.chain_id = v_chain.chain_id and l.at < p_before and (v_stop is null or l.seq < v_stop)
    order by l.seq desc
    limit 1;
    continue when not found;
    delete from public.secret_access_log l where l.chain_id = v_chain.chain_id and l.seq <= v_cut.seq;
    get diagnostics v_count = row_count;
    update public.secret_access_log_chains c
    set anchor_seq = v_cut.seq, anchor_id = v_cut.id, anchor_hash = v_cut.hash, updated_at = now()
    where c.chain_id = v_chain.chain_id;
    -- its own event, chained after the head: what went, up to which row, under which minimum age
    insert into public.secret_access_log
      (id, org_id, chain_id, operation, outcome, actor, reason, seq, prev_hash, hash)
    overriding system value
    values (0,
      case when v_chain.chain_id in ('00000000-0000-0000-0000-000000000000'::uuid, 'ffffffff-ffff-ffff-ffff-ffffffffffff'::uuid)
           then null else v_chain.chain_id end,
      v_chain.chain_id, 'retention', 'success', 'audit-retention',
      pg_catalog.format('retention: %s rows before %s removed, through seq %s (row %s); minimum age %s',
        v_count, pg_catalog.to_char(p_before at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        v_cut.seq, v_cut.id, v_min_age),
      0, '', '');
    v_deleted := v_deleted + v_count;
    v_trimmed := v_trimmed + 1;
  end loop;
  -- read intents older than the cut go too (they are traces of reads whose rows went with them)
  delete from public.secret_read_intents i where i.at < p_before;
  return pg_catalog.jsonb_build_object(
    'deleted', v_deleted, 'chains_trimmed', v_trimmed, 'chains_skipped', pg_catalog.to_jsonb(v_skipped));
end
$$;

revoke all on function public.secret_access_log__hash(public.secret_access_log) from public, anon, authenticated, service_role;
revoke all on function public.secret_access_log__chain() from public, anon, authenticated, service_role;
revoke all on function public.secret_access_log__refuse_change() from public, anon, authenticated, service_role;
revoke all on function public.secret_access_log__append(text, text, uuid, uuid, uuid, integer, text, text, text, inet, text)
  from public, anon, authenticated, service_role;
revoke all on function public.audit_context__check(text, text, text) from public, anon, authenticated, service_role;
revoke all on function public.secret_access_log__verify_chain(uuid) from public, anon, authenticated, service_role;
revoke all on function public.secret_access_log__verify(uuid) from public, anon, authenticated, service_role;
revoke all on function public.secret_access_log__apply_retention(timestamptz)
  from public, anon, authenticated, service_role, cortex_orchestrator;
revoke all on function public.secret_access_log_chains__guard() from public, anon, authenticated, service_role;
grant execute on function public.secret_access_log__verify(uuid) to cortex_orchestrator;

alter table public.secret_access_log enable row level security;
alter table public.secret_access_log_chains enable row level security;

create policy secret_access_log_select_member on public.secret_access_log
  for select to authenticated
  using (org_id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));

create policy secret_access_log_chains_select_member on public.secret_access_log_chains
  for select to authenticated
  using (chain_id in (select m.org_id from public.organization_members m where m.user_id = (select auth.uid())));

-- Read-only for every API role, service_role included: rows are written by the functions only.
revoke all on table public.secret_access_log, public.secret_access_log_chains
  from public, anon, authenticated, service_role, cortex_orchestrator;
grant select on table public.secret_access_log, public.secret_access_log_chains to authenticated, service_role;
revoke all on sequence public.secret_access_log_id_seq from public, anon, authenticated, service_role, cortex_orchestrator;

-- ---- retention's role ---------------------------------------------------------------------------
-- NOLOGIN, member of nothing, and no API role (authenticator included) is a member of it: only the
-- database owner (and superusers) can reach it, by calling the function it owns. It holds exactly
-- what retention needs.
do $$
begin
  if not exists (select 1 from pg_catalog.pg_roles where rolname = 'cortex_audit_retention') then
    create role cortex_audit_retention nologin noinherit;
  end if;
end
$$;
-- the owner must be a member to hand the function over (a hosted project's postgres is no superuser)
grant cortex_audit_retention to current_user;
-- (a non-superuser may give an object to a role only if that role may CREATE in its schema: lent
-- for the statement, taken back at once)
grant create on schema public to cortex_audit_retention;
alter function public.secret_access_log__apply_retention(timestamptz) owner to cortex_audit_retention;
revoke create on schema public from cortex_audit_retention;
grant execute on function public.secret_access_log__apply_retention(timestamptz) to current_user;
grant usage on schema public to cortex_audit_retention;
grant select, insert, delete on table public.secret_access_log to cortex_audit_retention;
grant select, update on table public.secret_access_log_chains to cortex_audit_retention;
grant execute on function public.secret_access_log__verify_chain(uuid), public.secret_access_log__hash(public.secret_access_log)
  to cortex_audit_retention;
create policy secret_access_log_retention on public.secret_access_log
  for all to cortex_audit_retention using (true) with check (true);
create policy secret_access_log_chains_retention on public.secret_access_log_chains
  for all to cortex_audit_retention using (true) with check (true);

-- ---- signed checkpoints -----------------------------------------------------------------------
-- What the orchestrator reads to sign every chain's head, and to check a signed head later.
-- Signing and storing happen outside the database (orchestrator/audit/), with a key the database
-- never sees, so the database owner (who can disable the append-only trigger and recompute every
-- hash) cannot trim, rewrite or drop a chain without the next verify seeing it. A chain's head row
-- in secret_access_log_chains holds its last sequence number and hash; retention moves its anchor
-- (the last row it deleted) forward.
--
-- Both functions only read. They are security definer so that the orchestrator's role needs no
-- table privilege; EXECUTE is cortex_orchestrator's alone.

-- Every chain's head: {at, chains: [{chain, seq, hash, at}]}, in chain id order. `at` (top level)
-- is the database's clock when read; a chain's `at` is the time of its head row. A chain that has
-- rows but lost its head row is listed with null seq and hash, so that a caller walking every
-- chain verifies it too (secret_access_log__verify names it as removed).
create function public.secret_access_log__heads()
returns jsonb
language sql stable security definer
set search_path = pg_catalog, pg_temp
as $$
  with chains as (
    select c.chain_id from public.secret_access_log_chains c
    union
    select distinct l.chain_id from public.secret_access_log l
  )
  select pg_catalog.jsonb_build_object(
    'at', pg_catalog.to_char(pg_catalog.clock_timestamp() at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
    'chains', coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'chain', x.chain_id,
      'seq', h.head_seq,
      'hash', h.head_hash,
      'at', pg_catalog.to_char(coalesce(r.at, h.updated_at) at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    ) order by x.chain_id), '[]'::jsonb))
  from chains x
  left join public.secret_access_log_chains h on h.chain_id = x.chain_id
  left join public.secret_access_log r on r.id = h.head_id and r.chain_id = h.chain_id
$$;

-- For each (chain, seq) asked for, what is stored now: [{chain, seq, exists, head_seq, max_seq,
-- anchor_seq, hash}], in the order asked. `exists`: the chain has a head row or any row; `hash`:
-- the hash of the row at that seq, or the anchor's hash when retention deleted exactly that row,
-- else null. The caller compares with what it signed; this function judges nothing.
create function public.secret_access_log__hashes_at(p_chain_ids uuid[], p_seqs bigint[])
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_result jsonb;
begin
  if p_chain_ids is null or p_seqs is null then
    raise exception using errcode = '22023', message = 'chain_ids: chain_ids and seqs are required';
  end if;
  if pg_catalog.cardinality(p_chain_ids) <> pg_catalog.cardinality(p_seqs) then
    raise exception using errcode = '22023', message = 'seqs: must have one sequence number per chain id';
  end if;
  if pg_catalog.cardinality(p_chain_ids) > 100000 then
    raise exception using errcode = '22023', message = 'chain_ids: at most 100000 per call';
  end if;
  if pg_catalog.array_position(p_chain_ids, null) is not null or pg_catalog.array_position(p_seqs, null) is not null then
    raise exception using errcode = '22023', message = 'chain_ids: must not contain null (nor seqs)';
  end if;

  select coalesce(pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'chain', q.chain_id,
      'seq', q.seq,
      'exists', h.chain_id is not null or m.max_seq is not null,
      'head_seq', h.head_seq,
      'max_seq', m.max_seq,
      'anchor_seq', h.anchor_seq,
      'hash', coalesce(r.hash, case when r.id is null and h.anchor_seq = q.seq then h.anchor_hash end)
    ) order by q.ord), '[]'::jsonb)
  into v_result
  from rows from (pg_catalog.unnest(p_chain_ids), pg_catalog.unnest(p_seqs)) with ordinality as q(chain_id, seq, ord)
  left join public.secret_access_log_chains h on h.chain_id = q.chain_id
  left join lateral (
    select pg_catalog.max(l.seq) as max_seq from public.secret_access_log l where l.chain_id = q.chain_id
  ) m on true
  left join public.secret_access_log r on r.chain_id = q.chain_id and r.seq = q.seq;
  return v_result;
end
$$;

revoke all on function public.secret_access_log__heads() from public, anon, authenticated, service_role;
revoke all on function public.secret_access_log__hashes_at(uuid[], bigint[])
  from public, anon, authenticated, service_role;
grant execute on function public.secret_access_log__heads() to cortex_orchestrator;
grant execute on function public.secret_access_log__hashes_at(uuid[], bigint[]) to cortex_orchestrator;
