-- A joint swap of concurrent rotations on one deployment (issue 11; review R11 finding 2).
--
-- Two rotations of different secrets bound to one deployment (A and C) each rebuilt the
-- deployment's environment with the other's version it runs: the old one while that rotation has
-- not reached the deployment (`pending`). In an incident where both old keys are already revoked at
-- the provider and the agent refuses a dead key at start, each swap failed on the other's dead key
-- and both rolled back, leaving the agent on two dead keys.
--
-- The rotate job now first tries one swap that carries every such rotation's new version, and
-- records those rotations' rows for the deployment `switched` when it is healthy (falling back to
-- its own swap alone when it is not). This function lists what it may carry: the running rotations
-- in which the deployment's row is still `pending` (a `switching` row is another attempt's swap,
-- cut or under way, which that rotation resumes itself). The versions it names are ones
-- deployment_secrets__read_versions already allows for that deployment (secret_versions__allowed:
-- the new version of a running rotation it is part of), and every read stays audited by that
-- function. cortex_orchestrator only; ids and version numbers, no value.

set local lock_timeout = '5s';
set local statement_timeout = '60s';

create function public.secret_rotations__pending_for_deployment(p_deployment_id uuid)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  return coalesce((
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'rotation_id', r.id, 'secret_id', r.secret_id, 'from_version', rd.from_version,
      'to_version', r.to_version, 'leaked', r.leaked) order by r.created_at, r.id)
    from public.secret_rotation_deployments rd
    join public.secret_rotations r on r.id = rd.rotation_id
    where rd.deployment_id = p_deployment_id and rd.state = 'pending' and r.state = 'running'), '[]'::jsonb);
end
$$;
revoke all on function public.secret_rotations__pending_for_deployment(uuid) from public, anon, authenticated, service_role;
grant execute on function public.secret_rotations__pending_for_deployment(uuid) to cortex_orchestrator;
