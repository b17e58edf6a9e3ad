-- Review R8 finding 3 (issue 11): secret_revocations__finish believed its caller. A holder of the
-- orchestrator's role could close any open revocation as `done` with `vault_deleted: true` without
-- revoking anything: the customer's GET /v1/revocations/:id then said done while the key stayed in
-- the vault and on the hosts, and binding and rotation of it worked again.
-- Now `done` is checked against the data it claims: a whole-secret revocation closes only once the
-- secret is revoked (every version deleted by secrets__revoke); a one-deployment revocation only
-- once that deployment has no binding of the secret left. The stored `vault_deleted` is what the
-- secret's status says, not what the caller says. Same signature: the grants stay.

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function public.secret_revocations__finish(p_revocation_id uuid, p_done boolean, p_result jsonb default null)
returns jsonb
language plpgsql security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v public.secret_revocations%rowtype;
  v_status text;
  v_result jsonb := p_result;
begin
  perform public.input__check_required('revocation_id', p_revocation_id);
  perform public.input__check_required('done', p_done);
  if p_result is not null and (pg_catalog.jsonb_typeof(p_result) <> 'object'
                               or pg_catalog.octet_length(p_result::text) > 16384) then
    raise exception using errcode = '22023', message = 'result: must be a JSON object of at most 16384 bytes';
  end if;
  select * into v from public.secret_revocations r where r.id = p_revocation_id for update;
  if not found then
    raise exception using errcode = 'P0002', message = pg_catalog.format('revocation %s not found', p_revocation_id);
  end if;
  if v.state <> 'open' then
    return public.secret_revocations__json(p_revocation_id);
  end if;
  select s.status into v_status from public.secrets s where s.id = v.secret_id;
  if p_done then
    if v.deployment_id is null and v_status = 'active' then
      raise exception using errcode = '22023', message = pg_catalog.format(
        'done: secret %s is not revoked yet (its versions are in the vault); the revocation stays open', v.secret_id);
    end if;
    if v.deployment_id is not null and exists (
      select 1 from public.deployment_secrets b where b.secret_id = v.secret_id and b.deployment_id = v.deployment_id) then
      raise exception using errcode = '22023', message = pg_catalog.format(
        'done: deployment %s is still bound to secret %s; the revocation stays open', v.deployment_id, v.secret_id);
    end if;
  end if;
  if v_result is not null then
    v_result := v_result || pg_catalog.jsonb_build_object('vault_deleted', v_status <> 'active');
  end if;
  update public.secret_revocations r set
    state = case when p_done then 'done' else 'open' end,
    attempts = r.attempts + 1,
    result = coalesce(v_result, r.result),
    updated_at = pg_catalog.now(),
    finished_at = case when p_done then pg_catalog.now() end
  where r.id = p_revocation_id;
  return public.secret_revocations__json(p_revocation_id);
end
$$;
