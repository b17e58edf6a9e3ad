import { createHash } from 'node:crypto';
import type { Config } from '../config';
import type { Rpc } from '../db/rpc';
import { toDeployment, type Deployment } from '../deployments/deployment-store';
import type { DeploymentRequest } from '../deployments/deployments-service';
import { deploymentRequestSchema } from '../deployments/deployments-service';
import { OrchestratorError } from '../errors';
import type { Queues } from '../queues/queues';
import { auditArgs, parseInput, type AuditContext } from '../secrets/secret-input';
import { runtimeProfile } from '../../templates/runtime-profiles';

/**
 * A deployment request under an optional Idempotency-Key (POST /v1/deployments). The same checks as
 * the deployments service's `request`, then one SQL call (api_deployments__request) that claims the
 * key and creates the deployment in one transaction: two concurrent requests with one key make one
 * deployment; a repeat with the same body replays it; another body is a `mismatch`.
 */
export type IdempotentResult =
  | { readonly status: 'created' | 'replayed'; readonly deployment: Deployment }
  | { readonly status: 'mismatch' };

/** SHA-256 over the request as parsed (defaults applied, keys in a fixed order): whitespace and key order do not matter. */
export const requestHash = (i: ReturnType<typeof deploymentRequestSchema.parse>): string =>
  createHash('sha256')
    .update(
      JSON.stringify([
        i.orgId,
        i.name,
        i.subdomain,
        i.runtime,
        i.bindings.map((b) => [b.envVar, b.secretId]),
      ]),
    )
    .digest('hex');

export const makeDeploymentRequests = (deps: {
  rpc: Rpc;
  queues: Pick<Queues, 'enqueue'>;
  config: Pick<Config, 'HOST_PROVIDER' | 'HCLOUD_LOCATION' | 'HCLOUD_SERVER_TYPE'>;
}) => {
  const { rpc, queues, config } = deps;
  const provider = config.HOST_PROVIDER;

  const request = async (
    input: DeploymentRequest,
    opts: { idempotencyKey?: string; tokenId?: string } & AuditContext = {},
  ): Promise<IdempotentResult> => {
    const { idempotencyKey, tokenId, ...ctx } = opts;
    const i = parseInput(deploymentRequestSchema, input);
    if (!runtimeProfile(i.runtime).runsOffline && provider === 'local')
      throw new OrchestratorError(
        'invalid_input',
        'runtime: needs the internet at first boot; use echo in local mode',
        { field: 'runtime' },
      );
    const r = await rpc<{
      status: string;
      deployment?: Record<string, unknown>;
      field?: string;
      reason?: string;
      replayed?: boolean;
    }>('api_deployments__request', {
      // no defaults in SQL for these two (they lead the signature): null when there is no key
      p_idempotency_key: idempotencyKey ?? null,
      p_body_hash: idempotencyKey === undefined ? null : requestHash(i),
      p_token_id: tokenId,
      p_org_id: i.orgId,
      p_name: i.name,
      p_subdomain: i.subdomain,
      p_provider: provider,
      p_region: provider === 'hcloud' ? config.HCLOUD_LOCATION : undefined,
      p_server_type: provider === 'hcloud' ? config.HCLOUD_SERVER_TYPE : undefined,
      p_runtime: i.runtime,
      p_bindings: JSON.stringify(i.bindings.map((b) => ({ env_var: b.envVar, secret_id: b.secretId }))),
      ...auditArgs(ctx),
    });
    if (r.status === 'mismatch') return { status: 'mismatch' };
    if (r.status === 'denied')
      throw new OrchestratorError('secret_denied', `${r.field ?? 'bindings'}: ${r.reason ?? 'denied'}`, {
        field: r.field ?? 'bindings',
      });
    if (r.status !== 'ok' || !r.deployment)
      throw new OrchestratorError('internal', 'api_deployments__request: unexpected result shape');
    const deployment = toDeployment(r.deployment);
    // A replay enqueues again only while nothing has picked the request up (the first answer may
    // have been lost between commit and enqueue); the job id is the deployment's, so never twice.
    if (!r.replayed || deployment.status === 'requested')
      await queues.enqueue('provision', { deploymentId: deployment.id }, deployment.id);
    return { status: r.replayed ? 'replayed' : 'created', deployment };
  };

  return { request };
};
export type DeploymentRequests = ReturnType<typeof makeDeploymentRequests>;
