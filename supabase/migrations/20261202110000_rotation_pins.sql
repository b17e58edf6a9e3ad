-- Issue 11, open point: the provisioning read (deployment_secrets__read, the `secrets` step of a
-- provision) read each bound secret's CURRENT version and ignored a binding's pin
-- (deployment_secrets.version, 20261201120000_rotation.sql). A deployment a rotation rolled back
-- (pinned to its old version because the new one failed its health check) that was then
-- re-provisioned got the new version anyway: the one its agent had just proved unhealthy on, and
-- one the rotation record says it does not run. Here the read takes each binding's effective
-- version, coalesce(version, current_version), as every rotation function already does
-- (deployment_secrets__list, secret_versions__users, secret_versions__allowed), and reports and
-- audits that version.
--
-- Same signature, same rules, same body otherwise (20261125211700_secrets.sql): security definer,
-- `search_path = pg_catalog, pg_temp`, fully qualified names, entitlement and read intent checked
-- first, the vault row must carry the name the scheme gives the version read (a repointed
-- reference reads as missing), one audited `read` row per value, denials audited, EXECUTE for
-- cortex_orchestrator only (re-stated below: `create or replace` keeps the grants, this makes the
-- file say so). A pin naming a version row that is missing or retired reads as missing (an error,
-- audited), never silently as another version.

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- THE one place a secret value is read (a rotation's version read aside). Each binding is read at
-- its effective version: its pin, or the secret's current version. Entitlement: the deployment exists and is neither
-- deprovisioning nor deleted; each secret is bound to it, of its org, org-wide or scoped to it, and
-- active. A refusal returns {"status":"denied"} instead of raising, so that its audit rows commit
-- with the caller's transaction; it returns no value at all. Values are returned only against a
-- committed read intent (above). A success writes one `read` row per value returned, in the same
-- transaction as the read.
--
-- Locks: the deployment, then each requested secret FOR SHARE in id order, so that a status
-- change, revoke or rotation either waits for this read to commit or is seen by it. Every check
-- comes first, then every value is decrypted in one statement, and the audit rows (successes,
-- denials or the error) are appended only after that: the org's chain head, which every reader and
-- writer of the org waits for, is locked by the last statements of the transaction. Its statements
-- are plain lookups that keep a cached plan.
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

  -- Values only against a committed intent (read intents, in 20261125211700_secrets.sql): a read whose
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
        'env_var', b.env_var, 'secret_id', s.id, 'version', coalesce(b.version, s.current_version),
        'value', ds.decrypted_secret)
        order by b.env_var) filter (where ds.decrypted_secret is not null),
      pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object('secret_id', s.id, 'version', coalesce(b.version, s.current_version))
        order by b.env_var) filter (where ds.decrypted_secret is null)
    into v_values, v_missing
    from public.deployment_secrets b
    join public.secrets s on s.id = b.secret_id
    -- the binding's effective version: its pin (a rolled-back deployment), else the current one.
    -- A left join: a pin naming no version row reads as missing, never silently as another version
    left join public.secret_versions v on v.secret_id = s.id and v.version = coalesce(b.version, s.current_version)
      and v.retired_at is null
    -- the vault row must carry the name the scheme gives this version: a reference that points
    -- anywhere else (another org's key, a platform key) reads as missing
    left join vault.decrypted_secrets ds on ds.id = v.vault_secret_id
      and ds.name = public.secrets__vault_name(s.org_id, s.deployment_id, s.id, coalesce(b.version, s.current_version))
    where b.deployment_id = p_deployment_id and b.secret_id = any (v_ids);
  exception when others then
    v_values := null;
    v_missing := null;
    for v_binding in
      select s.id as secret_id, coalesce(b.version, s.current_version) as version, v.vault_secret_id,
        public.secrets__vault_name(s.org_id, s.deployment_id, s.id, coalesce(b.version, s.current_version)) as vault_name
      from public.deployment_secrets b
      join public.secrets s on s.id = b.secret_id
      left join public.secret_versions v on v.secret_id = s.id and v.version = coalesce(b.version, s.current_version)
        and v.retired_at is null
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
          'secret_id', v_binding.secret_id, 'version', v_binding.version));
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

revoke all on function public.deployment_secrets__read(uuid, uuid[], text, text, inet, text, uuid)
  from public, anon, authenticated, service_role;
grant execute on function public.deployment_secrets__read(uuid, uuid[], text, text, inet, text, uuid) to cortex_orchestrator;
