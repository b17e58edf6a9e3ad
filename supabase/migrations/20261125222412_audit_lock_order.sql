-- One lock order for every function that writes audit rows, so that no two of them can deadlock:
--
--   deployment -> secrets (in id order) -> bindings (in (deployment_id, env_var) order)
--     -> versions and vault rows (only ever under their secret's lock) -> audit chain head, last
--
-- A function may skip a level but never goes back up one. The chain head is locked by the chain
-- trigger of the first audit row, so every audit row is appended after the last row lock.
--
-- secrets__delete_for_deployment broke this: it appended its unbind rows (locking the org's chain
-- head) and only then locked the deployment's secrets FOR UPDATE. A read from another deployment
-- of the org that names those secrets (it locks them FOR SHARE before it is denied) or a revoke of
-- one of them held the secret and waited for the chain head, while the delete held the chain head
-- and waited for the secret: a deadlock, one of the two killed with 40P01 after deadlock_timeout.
-- The delete also deleted the bindings before locking the secrets, while secrets__revoke locks the
-- secret and then deletes its bindings, a second cycle without the chain head.
--
-- Redefined here (signatures, results and audit rows unchanged, and so is their order but for one
-- thing: the unbind rows of secrets__delete_for_deployment now come in env_var order, not in the
-- order the rows happened to be deleted in; CREATE OR REPLACE keeps the grants):
--  - secrets__delete_for_deployment: deployment, then its secrets in id order, then its bindings;
--    every audit row after the last change.
--  - secrets__revoke: locks the secret's bindings in key order before deleting them, as the delete
--    now does, so a revoke and a delete never take two binding rows in opposite orders.
--  - deployment_secrets__read: locks the secrets in id order by an explicit ORDER BY (it did so
--    only because array_agg(distinct) happens to sort).
--  - platform_secrets__rotate: retires the old versions and deletes their vault secrets before its
--    audit rows. Only rotations, serialized by the platform secret's row lock, touch those rows, so
--    this was no deadlock; it keeps "chain head last" true of every function.
-- Already in order, unchanged: secrets__create, secrets__add_version, secret_versions__retire,
-- deployment_secrets__bind and __unbind, platform_secrets__create and __read.
--
-- Guarantees kept: every audit row is written in the transaction of the change or read it records;
-- a denial is audited and returned; a failure rolls back the change and its audit rows together;
-- each chain verifies (rows are still appended one at a time under the chain head's lock).

create or replace function public.secrets__delete_for_deployment(
  p_deployment_id uuid,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_deployment public.deployments%rowtype;
  v_env_vars text[];
  v_unbound uuid[];
  v_deleted uuid[];
  v_versions integer[];
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  -- FOR UPDATE: no secret can be scoped to it, and no binding added, until this commits
  select * into v_deployment from public.deployments d where d.id = p_deployment_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('deployment %s not found', p_deployment_id);
  end if;

  -- lock order: its secrets in id order, then its bindings in key order, then (audit rows) the chain
  perform 1 from public.secrets s
  where s.deployment_id = p_deployment_id and s.status <> 'deleted'
  order by s.id
  for update;
  perform 1 from public.deployment_secrets b where b.deployment_id = p_deployment_id order by b.env_var for update;

  with gone as (
    delete from public.deployment_secrets b where b.deployment_id = p_deployment_id
    returning b.env_var, b.secret_id
  )
  select pg_catalog.array_agg(g.env_var order by g.env_var), pg_catalog.array_agg(g.secret_id order by g.env_var)
  into v_env_vars, v_unbound
  from gone g;

  delete from vault.secrets vs
  where vs.id in (
    select v.vault_secret_id from public.secret_versions v
    join public.secrets s on s.id = v.secret_id
    where s.deployment_id = p_deployment_id and s.status <> 'deleted');
  update public.secret_versions v set retired_at = now()
  from public.secrets s
  where s.id = v.secret_id and s.deployment_id = p_deployment_id and s.status <> 'deleted' and v.retired_at is null;
  with marked as (
    update public.secrets s set status = 'deleted', deleted_at = now(), updated_at = now()
    where s.deployment_id = p_deployment_id and s.status <> 'deleted'
    returning s.id, s.current_version, s.created_at
  )
  select pg_catalog.array_agg(m.id order by m.created_at, m.id),
         pg_catalog.array_agg(m.current_version order by m.created_at, m.id)
  into v_deleted, v_versions
  from marked m;

  -- audit rows last: the unbinds (by env_var), then each deleted secret (by creation), as before
  for i in 1 .. coalesce(pg_catalog.cardinality(v_env_vars), 0) loop
    perform public.secret_access_log__append('unbind', 'success', v_deployment.org_id, p_deployment_id,
      v_unbound[i], null, 'env_var ' || v_env_vars[i], p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  for i in 1 .. coalesce(pg_catalog.cardinality(v_deleted), 0) loop
    perform public.secret_access_log__append('delete', 'success', v_deployment.org_id, p_deployment_id, v_deleted[i],
      v_versions[i], 'deployment secrets deleted', p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return pg_catalog.jsonb_build_object('deleted', coalesce(pg_catalog.cardinality(v_deleted), 0));
end
$$;

create or replace function public.secrets__revoke(
  p_secret_id uuid,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_secret public.secrets%rowtype;
  v_vault_deleted bigint;
  v_unbound bigint;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('secret_id', p_secret_id);
  select * into v_secret from public.secrets s where s.id = p_secret_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('secret %s not found', p_secret_id);
  end if;
  if v_secret.status <> 'active' then
    return pg_catalog.jsonb_build_object(
      'secret_id', p_secret_id, 'status', v_secret.status, 'vault_secrets_deleted', 0, 'bindings_removed', 0);
  end if;

  -- its bindings, in key order (as secrets__delete_for_deployment locks them), before any is deleted
  perform 1 from public.deployment_secrets b where b.secret_id = p_secret_id
  order by b.deployment_id, b.env_var
  for update;
  delete from vault.secrets vs
  where vs.id in (select v.vault_secret_id from public.secret_versions v where v.secret_id = p_secret_id);
  get diagnostics v_vault_deleted = row_count;
  update public.secret_versions v set retired_at = now() where v.secret_id = p_secret_id and v.retired_at is null;
  delete from public.deployment_secrets b where b.secret_id = p_secret_id;
  get diagnostics v_unbound = row_count;
  update public.secrets s set status = 'revoked', revoked_at = now(), updated_at = now() where s.id = p_secret_id;

  -- audit row last: the chain head is the last lock taken
  perform public.secret_access_log__append('revoke', 'success', v_secret.org_id, v_secret.deployment_id, p_secret_id,
    v_secret.current_version,
    pg_catalog.format('%s vault secrets deleted, %s bindings removed', v_vault_deleted, v_unbound),
    p_actor, p_job_id, p_request_ip, p_user_agent);
  return pg_catalog.jsonb_build_object(
    'secret_id', p_secret_id, 'status', 'revoked', 'vault_secrets_deleted', v_vault_deleted,
    'bindings_removed', v_unbound);
end
$$;

-- THE one place a customer secret value is read; the contract is unchanged (see
-- 20261125211700_secrets.sql). It locks the deployment and then each requested secret FOR SHARE,
-- in id order, so that a status change, revoke or rotation either waits for this read to commit or
-- is seen by it; the org's chain head is locked last, by the audit rows. Only the two array_agg
-- calls (and a comment) differ from 20261125221300_secret_read_throughput.sql.
create or replace function public.deployment_secrets__read(
  p_deployment_id uuid,
  p_secret_ids uuid[] default null,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null,
  p_intent_id uuid default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_org_id uuid;
  v_status text;
  v_reason text;
  v_ids uuid[];
  v_id uuid;
  v_secret record;
  v_denied uuid[] := array[]::uuid[];
  v_reasons text[] := array[]::text[];
  v_owners uuid[] := array[]::uuid[];
  v_denial record;
  v_values jsonb;
  v_missing jsonb;
  v_binding record;
  v_value text;
  v_entry jsonb;
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.input__check_required('deployment_id', p_deployment_id);
  if p_secret_ids is not null and pg_catalog.array_position(p_secret_ids, null) is not null then
    raise exception using errcode = '22023', message = 'secret_ids: must not contain null';
  end if;
  -- a read writes at most one audit row per secret asked for (two for another org's): bounded here
  if pg_catalog.cardinality(p_secret_ids) > 100 then
    raise exception using errcode = '22023', message = 'secret_ids: at most 100 per read';
  end if;

  select d.org_id, d.status into v_org_id, v_status from public.deployments d where d.id = p_deployment_id for share;
  if not found or v_status in ('deprovisioning', 'deleted') then
    v_reason := case when v_status is null then 'not found' else 'is ' || v_status end;
    -- one row per secret asked for (one row with no secret when all were asked for)
    foreach v_id in array coalesce(p_secret_ids, array[null]::uuid[]) loop
      perform public.secret_access_log__append('read', 'denied', v_org_id, p_deployment_id, v_id,
        null, 'deployment ' || v_reason, p_actor, p_job_id, p_request_ip, p_user_agent);
    end loop;
    return pg_catalog.jsonb_build_object(
      'status', 'denied', 'reason', pg_catalog.format('deployment %s %s', p_deployment_id, v_reason));
  end if;

  -- Entitlement of every secret asked for (every bound one when none is named), each locked FOR
  -- SHARE so that a revoke or rotation waits for this read to commit, or this read sees it.
  -- Every requested secret must pass, or nothing is read. Locked in id order (see above): a read
  -- may name, and so lock, secrets that another function locks too.
  if p_secret_ids is null then
    select pg_catalog.array_agg(distinct b.secret_id order by b.secret_id) into v_ids
    from public.deployment_secrets b where b.deployment_id = p_deployment_id;
  else
    select pg_catalog.array_agg(distinct x.id order by x.id) into v_ids
    from pg_catalog.unnest(p_secret_ids) as x(id);
  end if;
  foreach v_id in array coalesce(v_ids, array[]::uuid[]) loop
    select s.org_id, s.status, s.deployment_id into v_secret from public.secrets s where s.id = v_id for share;
    v_reason := case
      when not found then 'not found'
      when v_secret.org_id <> v_org_id then 'belongs to another organization'
      when v_secret.status <> 'active' then 'is ' || v_secret.status
      when v_secret.deployment_id is not null and v_secret.deployment_id <> p_deployment_id
        then 'is scoped to another deployment'
      -- the ids of a read of everything bound came from the bindings
      when p_secret_ids is not null and not exists (
        select 1 from public.deployment_secrets b where b.deployment_id = p_deployment_id and b.secret_id = v_id
      ) then 'is not bound to this deployment'
    end;
    if v_reason is not null then
      v_denied := v_denied || v_id;
      v_reasons := v_reasons || v_reason;
      v_owners := v_owners || case when v_reason = 'belongs to another organization' then v_secret.org_id end;
    end if;
  end loop;
  if pg_catalog.cardinality(v_denied) > 0 then
    -- Audit rows last: the chain lock is taken once every check is done. A secret of another
    -- organization is refused in both chains: the requester's row does not name the owner's
    -- secret, and the owner's row names neither the requesting deployment nor anything else of
    -- the requester's. Two chains are locked in chain id order, so two organizations asking for
    -- each other's secrets at once cannot deadlock.
    for v_denial in
      select x.org, x.dep, x.sid, x.reason from (
        select v_org_id as org, p_deployment_id as dep,
               case when d.owner is null then d.id end as sid, 'secret ' || d.reason as reason, d.ord, 0 as k
        from rows from (pg_catalog.unnest(v_denied), pg_catalog.unnest(v_reasons), pg_catalog.unnest(v_owners))
          with ordinality as d(id, reason, owner, ord)
        union all
        select d.owner, null::uuid, d.id, 'read refused: asked for by a deployment of another organization', d.ord, 1
        from rows from (pg_catalog.unnest(v_denied), pg_catalog.unnest(v_reasons), pg_catalog.unnest(v_owners))
          with ordinality as d(id, reason, owner, ord)
        where d.owner is not null
      ) x
      order by x.org, x.ord, x.k
    loop
      perform public.secret_access_log__append('read', 'denied', v_denial.org, v_denial.dep, v_denial.sid,
        null, v_denial.reason, p_actor, p_job_id, p_request_ip, p_user_agent);
    end loop;
    return pg_catalog.jsonb_build_object(
      'status', 'denied', 'reason', pg_catalog.format('secret %s %s', v_denied[1], v_reasons[1]));
  end if;

  -- Values only against a committed intent (20261125221500_read_intents.sql): a read whose
  -- transaction rolls back leaves that intent behind. Denied, and audited, without one.
  if pg_catalog.cardinality(v_ids) > 0
     and not public.secret_read_intents__valid(p_intent_id, p_deployment_id, p_secret_ids, null) then
    foreach v_id in array v_ids loop
      perform public.secret_access_log__append('read', 'denied', v_org_id, p_deployment_id, v_id, null,
        'no committed read intent', p_actor, p_job_id, p_request_ip, p_user_agent);
    end loop;
    return pg_catalog.jsonb_build_object('status', 'denied', 'reason',
      'read intent missing, expired, for another read, or not committed: call deployment_secrets__intend_read in a transaction of its own first');
  end if;

  -- Every value in one statement. A vault row that fails to decrypt raises; the slow path below
  -- then finds which one. Either way its error is reported, never echoed.
  begin
    select
      pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
        'env_var', b.env_var, 'secret_id', s.id, 'version', s.current_version, 'value', ds.decrypted_secret)
        order by b.env_var) filter (where ds.decrypted_secret is not null),
      pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('secret_id', s.id, 'version', s.current_version)
        order by b.env_var) filter (where ds.decrypted_secret is null)
    into v_values, v_missing
    from public.deployment_secrets b
    join public.secrets s on s.id = b.secret_id
    join public.secret_versions v on v.secret_id = s.id and v.version = s.current_version
    -- the vault row must carry the name the scheme gives this version: a reference that points
    -- anywhere else (another org's key, a platform key) reads as missing
    left join vault.decrypted_secrets ds on ds.id = v.vault_secret_id
      and ds.name = public.secrets__vault_name(s.org_id, s.deployment_id, s.id, s.current_version)
    where b.deployment_id = p_deployment_id and b.secret_id = any (v_ids);
  exception when others then
    v_values := null;
    v_missing := null;
    for v_binding in
      select s.id as secret_id, s.current_version, v.vault_secret_id,
        public.secrets__vault_name(s.org_id, s.deployment_id, s.id, s.current_version) as vault_name
      from public.deployment_secrets b
      join public.secrets s on s.id = b.secret_id
      join public.secret_versions v on v.secret_id = s.id and v.version = s.current_version
      where b.deployment_id = p_deployment_id and b.secret_id = any (v_ids)
      order by b.env_var
    loop
      begin
        select ds.decrypted_secret into v_value from vault.decrypted_secrets ds
        where ds.id = v_binding.vault_secret_id and ds.name = v_binding.vault_name;
      exception when others then
        v_value := null;
      end;
      if v_value is null then
        v_missing := pg_catalog.jsonb_build_array(pg_catalog.jsonb_build_object(
          'secret_id', v_binding.secret_id, 'version', v_binding.current_version));
        exit;
      end if;
    end loop;
  end;
  if v_missing is not null then
    perform public.secret_access_log__append('read', 'error', v_org_id, p_deployment_id,
      (v_missing -> 0 ->> 'secret_id')::uuid, (v_missing -> 0 ->> 'version')::integer,
      'vault secret missing or unreadable', p_actor, p_job_id, p_request_ip, p_user_agent);
    return pg_catalog.jsonb_build_object('status', 'error', 'reason', pg_catalog.format(
      'secret %s version %s: vault secret missing or unreadable', v_missing -> 0 ->> 'secret_id',
      v_missing -> 0 ->> 'version'));
  end if;

  -- audit rows last, one per value returned: either every value is returned and logged, or none
  v_values := coalesce(v_values, '[]'::jsonb);
  for i in 0 .. pg_catalog.jsonb_array_length(v_values) - 1 loop
    v_entry := v_values -> i;
    perform public.secret_access_log__append('read', 'success', v_org_id, p_deployment_id,
      (v_entry ->> 'secret_id')::uuid, (v_entry ->> 'version')::integer,
      'env_var ' || (v_entry ->> 'env_var') || '; intent ' || p_intent_id::text,
      p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return pg_catalog.jsonb_build_object('status', 'ok', 'secrets', v_values);
end
$$;

-- As before, a new value becomes the next version and the older versions are retired (their vault
-- secrets deleted) in the same transaction; now the retirement comes before the audit rows, which
-- are written in the same order as before: the rotation, then each retired version.
create or replace function public.platform_secrets__rotate(
  p_name text,
  p_value text,
  p_actor text default null,
  p_job_id text default null,
  p_request_ip inet default null,
  p_user_agent text default null
) returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_secret public.platform_secrets%rowtype;
  v_version integer;
  v_described record;
  v_vault_name text;
  v_retired integer[];
  v_retired_vault_ids uuid[];
begin
  perform public.audit_context__check(p_actor, p_job_id, p_user_agent);
  perform public.platform_secrets__check_name(p_name);
  perform public.platform_secrets__check_value(p_value);
  select * into v_secret from public.platform_secrets s where s.name = p_name for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('platform secret %s not found', p_name);
  end if;

  select coalesce(max(v.version), 0) + 1 into v_version from public.platform_secret_versions v where v.secret_id = v_secret.id;
  select * into v_described from public.platform_secrets__describe_value(p_value);
  v_vault_name := 'platform:' || p_name || ':v' || v_version::text;
  insert into public.platform_secret_versions (secret_id, version, vault_secret_id, display_prefix, fingerprint)
  values (v_secret.id, v_version,
    public.vault__store(p_value, v_vault_name, pg_catalog.format('cortex platform secret %s version %s', p_name, v_version)),
    v_described.display_prefix, v_described.fingerprint);
  update public.platform_secrets s
  set current_version = v_version, display_prefix = v_described.display_prefix,
      fingerprint = v_described.fingerprint, updated_at = now()
  where s.id = v_secret.id;
  with retired as (
    update public.platform_secret_versions v set retired_at = now()
    where v.secret_id = v_secret.id and v.version < v_version and v.retired_at is null
    returning v.version, v.vault_secret_id
  )
  select pg_catalog.array_agg(r.version order by r.version), pg_catalog.array_agg(r.vault_secret_id order by r.version)
  into v_retired, v_retired_vault_ids
  from retired r;
  delete from vault.secrets vs where vs.id = any (v_retired_vault_ids);

  -- audit rows last: the chain head is the last lock taken
  perform public.platform_secrets__audit('rotate', 'success', v_secret.id, v_version,
    pg_catalog.format('platform secret %s: version %s replaces version %s', p_name, v_version, v_secret.current_version),
    p_actor, p_job_id, p_request_ip, p_user_agent);
  for i in 1 .. coalesce(pg_catalog.cardinality(v_retired), 0) loop
    perform public.platform_secrets__audit('delete', 'success', v_secret.id, v_retired[i],
      pg_catalog.format('platform secret %s: version %s retired by rotation', p_name, v_retired[i]),
      p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return pg_catalog.jsonb_build_object(
    'secret_id', v_secret.id,
    'name', p_name,
    'version', v_version,
    'display_prefix', v_described.display_prefix,
    'fingerprint', v_described.fingerprint,
    'vault_name', v_vault_name);
end
$$;
