-- Issue 10 (API benchmark): deployments__json, the body of every deployment read
-- (deployments__describe, hence GET /v1/deployments/:id; the idempotent request's answer; the
-- status-change events), becomes PL/pgSQL with the very same query.
--
-- Why: a `language sql` function that cannot be inlined (SECURITY DEFINER and a SET clause both
-- prevent it) is parsed and planned again at every call on PostgreSQL 15: its plan lives only as
-- long as the calling statement. A PL/pgSQL function keeps its statement's plan for the session.
-- Measured with pgbench (10 clients, prepared mode, `select public.deployments__describe(...)`),
-- the read goes from about 4,000 to 8,000-9,000 calls/s on the development machine: about half the
-- database's CPU per API read.
--
-- Same signature, same query text, same result (NULL when there is no such deployment), same
-- security: SECURITY DEFINER, `search_path = pg_catalog, pg_temp`, fully qualified names, EXECUTE
-- for nobody but the owner (re-stated below: `create or replace` keeps the grants, this makes the
-- file say so). pgTAP 27_deployments_json_plpgsql checks the result against the query itself.

-- The Supabase CLI runs this file in one transaction: on a live database, give up rather than queue
-- every other query behind a lock this migration waits for (.squawk.toml).
set local lock_timeout = '5s';
set local statement_timeout = '60s';

create or replace function public.deployments__json(p_id uuid)
returns jsonb
language plpgsql stable security definer
set search_path = pg_catalog, pg_temp
as $$
begin
  return (
    select pg_catalog.to_jsonb(d) || pg_catalog.jsonb_build_object(
      'ipv4', pg_catalog.host(d.ipv4), 'ipv6', pg_catalog.host(d.ipv6),
      'steps', coalesce((
        select pg_catalog.jsonb_agg(pg_catalog.jsonb_build_object(
          'run', s.run, 'operation', s.operation, 'step', s.step, 'status', s.status, 'attempt', s.attempt,
          'started_at', s.started_at, 'finished_at', s.finished_at, 'duration_ms', s.duration_ms, 'error', s.error)
          order by s.run, s.started_at nulls last, s.step)
        from public.deployment_steps s where s.deployment_id = d.id), '[]'::jsonb))
    from public.deployments d where d.id = p_id
  );
end
$$;
revoke all on function public.deployments__json(uuid) from public, anon, authenticated, service_role;
