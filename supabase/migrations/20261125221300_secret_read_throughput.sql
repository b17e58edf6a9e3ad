-- Throughput of audited reads (deployment_secrets__read). The guarantees stay as they were: the
-- audit rows commit or roll back with the read, a denial is audited and returned (not raised), and
-- every chain verifies. What changes is the work per call and, above all, the work done while the
-- org's chain head is locked: every reader and writer of one org waits for that lock until its
-- holder commits.
--  - secret_access_log__hash is PL/pgSQL: as a SQL function with a SET clause it could not be
--    inlined, and its body was parsed and planned again in every transaction. Same canonical form,
--    so existing rows verify unchanged.
--  - The chain trigger locks the head row with one statement (the insert of a missing head runs
--    only for a chain's first row) and names the id sequence instead of looking it up.
--  - Audit rows are inserted with OVERRIDING SYSTEM VALUE: the identity default used to draw an id
--    that the trigger then replaced with one drawn under the lock, so ids went up by 2 per row.
--  - deployment_secrets__read does every check, then decrypts every value in one statement, and
--    appends its audit rows (successes, denials or the error) only after that, so the chain lock is
--    taken by the last statements of the transaction; denials no longer lock the chain while the
--    remaining secrets are checked. Its statements are plain lookups that keep a cached plan.

create or replace function public.secret_access_log__hash(p_row public.secret_access_log)
returns text
language plpgsql stable
set search_path = pg_catalog, pg_temp
as $$
begin
  return pg_catalog.encode(pg_catalog.sha256(pg_catalog.convert_to(pg_catalog.jsonb_build_array(
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
    p_row.reason
  )::text, 'UTF8')), 'hex');
end
$$;

create or replace function public.secret_access_log__chain()
returns trigger
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v_chain uuid := coalesce(new.org_id, '00000000-0000-0000-0000-000000000000'::uuid);
  v_head record;
begin
  select c.head_seq, c.head_id, c.head_hash into v_head
  from public.secret_access_log_chains c where c.chain_id = v_chain for update;
  if not found then
    insert into public.secret_access_log_chains (chain_id) values (v_chain) on conflict (chain_id) do nothing;
    select c.head_seq, c.head_id, c.head_hash into strict v_head
    from public.secret_access_log_chains c where c.chain_id = v_chain for update;
  end if;
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

create or replace function public.secret_access_log__append(
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

-- THE one place a customer secret value is read; the contract is unchanged (see
-- 20261125211700_secrets.sql). It locks the deployment and then each requested secret FOR SHARE,
-- as before, so that a status change, revoke or rotation either waits for this read to commit or
-- is seen by it; the org's chain head is locked last, by the audit rows.
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
  -- Every requested secret must pass, or nothing is read.
  if p_secret_ids is null then
    select pg_catalog.array_agg(distinct b.secret_id) into v_ids
    from public.deployment_secrets b where b.deployment_id = p_deployment_id;
  else
    select pg_catalog.array_agg(distinct x.id) into v_ids from pg_catalog.unnest(p_secret_ids) as x(id);
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
    end if;
  end loop;
  if pg_catalog.cardinality(v_denied) > 0 then
    -- audit rows last: the chain lock is taken once every check is done
    for i in 1 .. pg_catalog.cardinality(v_denied) loop
      perform public.secret_access_log__append('read', 'denied', v_org_id, p_deployment_id, v_denied[i],
        null, 'secret ' || v_reasons[i], p_actor, p_job_id, p_request_ip, p_user_agent);
    end loop;
    return pg_catalog.jsonb_build_object(
      'status', 'denied', 'reason', pg_catalog.format('secret %s %s', v_denied[1], v_reasons[1]));
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
    left join vault.decrypted_secrets ds on ds.id = v.vault_secret_id
    where b.deployment_id = p_deployment_id and b.secret_id = any (v_ids);
  exception when others then
    v_values := null;
    v_missing := null;
    for v_binding in
      select s.id as secret_id, s.current_version, v.vault_secret_id
      from public.deployment_secrets b
      join public.secrets s on s.id = b.secret_id
      join public.secret_versions v on v.secret_id = s.id and v.version = s.current_version
      where b.deployment_id = p_deployment_id and b.secret_id = any (v_ids)
      order by b.env_var
    loop
      begin
        select ds.decrypted_secret into v_value from vault.decrypted_secrets ds where ds.id = v_binding.vault_secret_id;
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
      (v_entry ->> 'secret_id')::uuid, (v_entry ->> 'version')::integer, 'env_var ' || (v_entry ->> 'env_var'),
      p_actor, p_job_id, p_request_ip, p_user_agent);
  end loop;
  return pg_catalog.jsonb_build_object('status', 'ok', 'secrets', v_values);
end
$$;
