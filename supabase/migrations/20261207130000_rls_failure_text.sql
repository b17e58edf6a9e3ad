-- Review R22 finding 1 (of 82d145d, R15 finding 7): the API now shows an organisation's token a
-- failure as a reason code and a fixed sentence, never the recorded text (Hetzner/Pulumi summaries,
-- SSH errors naming hosts, addresses and ports). But `authenticated` (a signed-in organisation
-- member, through Supabase row-level security: DESIGN invariant 7) held SELECT on every column of
-- public.deployments and public.deployment_steps, so the same text was one PostgREST query away:
-- deployments.failure_reason and deployment_steps.error; and deployments.operation_token, the
-- orchestrator's internal fencing token.
--
-- Now `authenticated` may select every column but those three (column grants: a column added later
-- is closed to it until granted by name). The row policies are unchanged; their subqueries read
-- only deployments.id and org_id. The code of a failure stays readable: deployments.failed_step and
-- status here, the `reason_code` of the deployment's events (deployment_events, its own policy),
-- and the API's failureCode/errorCode. service_role (the operator's dashboard key) keeps reading
-- every column; cortex_orchestrator holds no table privilege, as before.

set local lock_timeout = '5s';
set local statement_timeout = '60s';

revoke select on table public.deployments, public.deployment_steps from authenticated;

grant select (id, org_id, name, subdomain, provider, region, server_type, status, server_id, ipv4, ipv6,
              host_public_key, created_at, updated_at, status_changed_at, runtime, dns_name,
              host_public_key_pending, host_rekeyed_at, current_operation, current_run, failed_step,
              progress_at)
  on table public.deployments to authenticated;

grant select (deployment_id, run, step, status, started_at, finished_at, operation, attempt, duration_ms)
  on table public.deployment_steps to authenticated;
