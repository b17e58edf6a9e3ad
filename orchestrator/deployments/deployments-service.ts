import { z } from 'zod';
import { OrchestratorError } from '../errors';
import { jobIdFor } from '../queues/job-payloads';
import type { Queues } from '../queues/queues';
import { envVarName, parseInput, uuid, type AuditContext } from '../secrets/secret-input';
import { runtimeProfile } from '../../templates/runtime-profiles';
import type { Deployment, DeploymentStatus, DeploymentStore, DeploymentSummary } from './deployment-store';

/**
 * The deployments service: what the CLI, the demo and the HTTP API call. A request is validated,
 * created with its bindings in one SQL call, and enqueued; it returns at once with the id. The
 * work itself happens in the workers; Postgres records it, so `get` shows the steps as they go.
 */
const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * Names an agent may not take: the platform's own and the usual service names (a customer agent at
 * `www.`/`api.`/`mail.` of the platform's zone would pass for the platform), and punycode (`xn--`),
 * which can render as a look-alike of another name.
 */
export const RESERVED_SUBDOMAINS: ReadonlySet<string> = new Set([
  'www',
  'api',
  'app',
  'admin',
  'mail',
  'smtp',
  'imap',
  'pop',
  'ftp',
  'ns',
  'ns1',
  'ns2',
  'dns',
  'status',
  'docs',
  'help',
  'support',
  'login',
  'auth',
  'sso',
  'account',
  'accounts',
  'billing',
  'dashboard',
  'console',
  'cortex',
  'platform',
  'root',
  'localhost',
  'autodiscover',
  'autoconfig',
]);
// C0/C1 controls and the bidirectional overrides/isolates: they reorder or hide text on a terminal.
const UNSAFE_TEXT = /[\p{Cc}\u202A-\u202E\u2066-\u2069\u200E\u200F]/u;

export const deploymentRequestSchema = z
  .object({
    orgId: uuid,
    name: z
      .string()
      .trim()
      .min(1, 'must not be empty')
      .max(200, 'must be at most 200 characters')
      .refine((n) => !UNSAFE_TEXT.test(n), {
        error: 'must not contain control or bidirectional formatting characters',
      }),
    subdomain: z
      .string()
      .regex(
        DNS_LABEL,
        'must be a DNS label: lowercase letters, digits and inner hyphens, at most 63 characters',
      )
      .refine((l) => !l.startsWith('xn--'), { error: 'must not be punycode (xn--)' })
      .refine((l) => !RESERVED_SUBDOMAINS.has(l), { error: 'is reserved for the platform; choose another' }),
    runtime: z.enum(['echo', 'openclaw'], { error: 'must be echo or openclaw' }).default('echo'),
    bindings: z
      .array(z.object({ envVar: envVarName, secretId: uuid }).strict())
      .max(100, 'at most 100 bindings')
      .default([])
      .refine((b) => new Set(b.map((x) => x.envVar)).size === b.length, {
        error: 'each variable may be bound once',
      }),
  })
  .strict();
export type DeploymentRequest = z.input<typeof deploymentRequestSchema>;

export const FINAL_STATUSES: ReadonlySet<DeploymentStatus> = new Set(['ready', 'failed', 'deleted']);

export const makeDeploymentsService = (deps: {
  store: DeploymentStore;
  queues: Pick<Queues, 'enqueue'>;
  provider: 'local' | 'hcloud';
  /** Stored per deployment at request time, never re-derived from later config. */
  defaults?: { region?: string; serverType?: string };
}) => {
  const { store, queues } = deps;
  const id = (v: string): string => parseInput(uuid, v, 'deployment_id');

  const request = async (
    input: DeploymentRequest,
    ctx?: AuditContext,
  ): Promise<{ deploymentId: string; status: DeploymentStatus; jobId: string }> => {
    const i = parseInput(deploymentRequestSchema, input);
    if (!runtimeProfile(i.runtime).runsOffline && deps.provider === 'local')
      throw new OrchestratorError(
        'invalid_input',
        'runtime: needs the internet at first boot; use echo in local mode',
        {
          field: 'runtime',
        },
      );
    const r = await store.request(
      {
        orgId: i.orgId,
        name: i.name,
        subdomain: i.subdomain,
        provider: deps.provider,
        runtime: i.runtime,
        bindings: i.bindings,
        ...(deps.provider === 'hcloud' && deps.defaults?.region ? { region: deps.defaults.region } : {}),
        ...(deps.provider === 'hcloud' && deps.defaults?.serverType
          ? { serverType: deps.defaults.serverType }
          : {}),
      },
      ctx,
    );
    if (r.status === 'denied')
      throw new OrchestratorError('secret_denied', `${r.field}: ${r.reason}`, { field: r.field });
    const jobId = await queues.enqueue('provision', { deploymentId: r.deployment.id }, r.deployment.id);
    return { deploymentId: r.deployment.id, status: r.deployment.status, jobId };
  };

  const get = (deploymentId: string): Promise<Deployment> => store.get(id(deploymentId));
  const list = (opts?: {
    orgId?: string;
    includeDeleted?: boolean;
    limit?: number;
  }): Promise<DeploymentSummary[]> => store.list(opts);

  /**
   * Deprovision: wins over a provision in progress, which stops at its next step boundary. With an
   * audit context naming an actor, the request is audited (`request`, with the job id) in the
   * transaction that marks the deployment.
   */
  const destroy = async (
    deploymentId: string,
    ctx?: AuditContext,
  ): Promise<{ status: DeploymentStatus; jobId?: string }> => {
    const depId = id(deploymentId);
    const dep = await store.requestDeprovision(
      depId,
      ctx?.actor ? { ...ctx, jobId: jobIdFor('deprovision', depId) } : undefined,
    );
    if (dep.status === 'deleted') return { status: dep.status };
    const jobId = await queues.enqueue('deprovision', { deploymentId: dep.id }, dep.id);
    return { status: dep.status, jobId };
  };

  /** Resume a failed deployment at the step that failed (or nudge one whose job was lost). */
  const retry = async (deploymentId: string): Promise<{ status: DeploymentStatus; jobId: string }> => {
    const dep = await store.get(id(deploymentId));
    if (dep.status === 'deprovisioning')
      return {
        status: dep.status,
        jobId: await queues.enqueue('deprovision', { deploymentId: dep.id }, dep.id),
      };
    if (dep.status === 'failed' || dep.status === 'requested' || dep.status === 'provisioning')
      return {
        status: dep.status,
        jobId: await queues.enqueue('provision', { deploymentId: dep.id }, dep.id),
      };
    throw new OrchestratorError(
      'conflict',
      `deployment ${dep.id} is ${dep.status}: only a failed deployment can be retried`,
    );
  };

  /**
   * Follow a deployment until `until` says stop (default: a final status), calling `onChange` with
   * each new state. Polls Postgres, the source of truth (so it works from any process).
   */
  const SETTLE_MS = 10_000;
  const watch = async (
    deploymentId: string,
    onChange: (d: Deployment) => void,
    opts: {
      intervalMs?: number;
      timeoutMs?: number;
      until?: (d: Deployment) => boolean;
      signal?: AbortSignal;
    } = {},
  ): Promise<Deployment> => {
    // A final status is written inside its step (the `ready` step sets `ready`), and the step's own
    // end is recorded just after: by default, wait for the run's steps to settle too, so a caller
    // never sees `ready` with its last step still running, for at most SETTLE_MS (a worker that
    // died between the two: the next begin() records the step).
    let finalSince: number | undefined;
    const settled = (d: Deployment): boolean => {
      if (!FINAL_STATUSES.has(d.status)) {
        finalSince = undefined;
        return false;
      }
      finalSince ??= Date.now();
      const running = d.steps.some((s) => s.run === d.currentRun && s.status === 'running');
      return !running || Date.now() - finalSince >= SETTLE_MS;
    };
    const until = opts.until ?? settled;
    const deadline = Date.now() + (opts.timeoutMs ?? 30 * 60_000);
    let last = '';
    for (;;) {
      const d = await get(deploymentId);
      const sig = JSON.stringify([d.status, d.steps]);
      if (sig !== last) {
        last = sig;
        onChange(d);
      }
      if (until(d)) return d;
      if (Date.now() > deadline || opts.signal?.aborted)
        throw new OrchestratorError('timeout', `deployment ${d.id} is still ${d.status}`);
      await new Promise((r) => setTimeout(r, opts.intervalMs ?? 250));
    }
  };

  return { request, get, list, destroy, retry, watch };
};
export type DeploymentsService = ReturnType<typeof makeDeploymentsService>;
