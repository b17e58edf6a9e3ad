-- A revocation as the API and the CLI show it (issue 11): GET /v1/revocations/:id and
-- `cortexctl secrets revocation <id>`. secret_revocations__get (20261204100000_revocations.sql) is
-- the job's read and takes no organisation; an org-scoped caller (an API token) must see another
-- organisation's revocation as absent, exactly as secret_rotations__get does for rotations. A
-- function of its own rather than an overload of __get: one name, one signature, and the job's read
-- (and the grants and tests on it) stay as they are.
-- Same rules as the rest of the contract: security definer, `search_path = pg_catalog, pg_temp`,
-- executable by cortex_orchestrator only, a missing row (or another org's) P0002, a missing id
-- 22023 naming the field. The answer holds ids, state, counts and value-free reasons only.

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

create function public.secret_revocations__show(p_revocation_id uuid, p_org_id uuid default null)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
declare
  v jsonb;
begin
  perform public.input__check_required('revocation_id', p_revocation_id);
  v := public.secret_revocations__json(p_revocation_id);
  -- another organisation's revocation is answered exactly like one that does not exist
  if v is null or (p_org_id is not null and (v ->> 'org_id')::uuid <> p_org_id) then
    raise exception using errcode = 'P0002', message = pg_catalog.format('revocation %s not found', p_revocation_id);
  end if;
  return v;
end
$$;

revoke all on function public.secret_revocations__show(uuid, uuid) from public, anon, authenticated, service_role;
grant execute on function public.secret_revocations__show(uuid, uuid) to cortex_orchestrator;
