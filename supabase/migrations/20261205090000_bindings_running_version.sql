-- Review R8 finding 8 (issue 11): deployment_secrets__list gave each binding the version it
-- FOLLOWS (its pin, or the secret's current version). A revoke of secret B, and a rotation of
-- secret C, rebuild a deployment's whole environment from that list. While a rotation of secret A
-- runs, A's current version is already the new one, but a deployment still `pending` in it runs
-- the old one: the revoke (or C's rotation) wrote A's new version onto that host outside A's
-- record. If the new version was bad, the agent came up unhealthy on it; A's rotation, reaching the
-- host later, rolled it "back" to what the host then ran (A's new version) and pinned the binding
-- to the old one: the record said old, the host ran new.
--
-- Now each binding's `version` is the version the deployment RUNS. While a rotation of that secret
-- runs and the deployment's row in it has not moved (review R11 of the first version of this file
-- found the cases):
-- - `pending`: the row's from_version, unless the deployment read the rotation's new version while
--   it was provisioning (a successful audited `read` of to_version made while one of its provision
--   steps ran: its `secrets` step): a deployment provisioned after the rotation started runs the
--   new version, and is listed so. A read of it by anyone else (the demo's verify read of a ready
--   deployment: review R12 finding 3) does not count: the host still runs the old one;
-- - `switching` (a swap under way, or cut short: the host may run either): from_version, or
--   to_version when the rotation is a leak response, so that a rebuild never puts a leaked key back
--   on a host that may have left it; the rotation's retry swaps it to the new version again either
--   way (and explicitly back to the old one if that is unhealthy);
-- otherwise its pin or the current version, as before. `follows` is the version the binding
-- follows (the former `version`), for whoever needs it. Every listed version is one
-- secret_versions__allowed lets the deployment read, and one secret_versions__users counts as in
-- use (not retired under it).

-- Same signature, same rules (20261201120000_rotation.sql): security definer, `search_path =
-- pg_catalog, pg_temp`, fully qualified names, no value returned, EXECUTE for cortex_orchestrator
-- only (re-stated below: `create or replace` keeps the grants, this makes the file say so).

set local lock_timeout = '5s';
set local statement_timeout = '60s';

-- A deployment's bindings with the version each one runs (no values): what its full environment is.
create or replace function public.deployment_secrets__list(p_deployment_id uuid)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  perform public.input__check_required('deployment_id', p_deployment_id);
  return coalesce((
    select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
      'env_var', b.env_var, 'secret_id', b.secret_id,
      'version', coalesce(mid.runs, b.version, s.current_version),
      'follows', coalesce(b.version, s.current_version),
      'pinned', b.version is not null, 'status', s.status) order by b.env_var)
    from public.deployment_secrets b
    join public.secrets s on s.id = b.secret_id
    -- at most one running rotation per secret (secret_rotations_one_running), one row per deployment
    left join lateral (
      select case
        when rd.state = 'pending' and exists (
          select 1 from public.secret_access_log l
          join public.deployment_steps st on st.deployment_id = l.deployment_id
          where l.deployment_id = rd.deployment_id and l.secret_id = r.secret_id
            and l.operation = 'read' and l.outcome = 'success' and l.version = r.to_version
            -- made during one of its provision steps (its `secrets` step), not by a later reader
            and st.operation = 'provision' and st.started_at <= l.at
            and l.at <= coalesce(st.finished_at, 'infinity'::timestamptz))
          then r.to_version
        when rd.state = 'switching' and r.leaked then r.to_version
        else rd.from_version
      end as runs
      from public.secret_rotation_deployments rd
      join public.secret_rotations r on r.id = rd.rotation_id
      where rd.deployment_id = b.deployment_id and r.secret_id = b.secret_id and r.state = 'running'
        and rd.state in ('pending', 'switching')
    ) mid on true
    where b.deployment_id = p_deployment_id), '[]'::jsonb);
end
$$;
revoke all on function public.deployment_secrets__list(uuid) from public, anon, authenticated, service_role;
grant execute on function public.deployment_secrets__list(uuid) to cortex_orchestrator;
