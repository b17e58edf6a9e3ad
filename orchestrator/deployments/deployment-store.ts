import { z } from 'zod';
import type { Rpc } from '../db/rpc';
import { OrchestratorError } from '../errors';
import { auditArgs, parseInput, uuid, type AuditContext } from '../secrets/secret-input';

/**
 * The pipeline's view of the deployments contract (supabase/migrations/*_pipeline.sql): typed
 * wrappers over the rpc port, one per SQL function. Postgres is the source of truth: everything a
 * worker needs to resume an operation is read back from here, never from Redis.
 */
export type DeploymentStatus =
  'requested' | 'provisioning' | 'ready' | 'failed' | 'rotating' | 'deprovisioning' | 'deleted';
export type Operation = 'provision' | 'deprovision';

export interface StepRecord {
  readonly run: number;
  readonly operation: Operation;
  readonly step: string;
  readonly status: 'pending' | 'running' | 'succeeded' | 'failed' | 'skipped';
  readonly attempt: number;
  readonly startedAt: string | null;
  readonly finishedAt: string | null;
  readonly durationMs: number | null;
  readonly error: string | null;
}

export interface Deployment {
  readonly id: string;
  readonly orgId: string;
  readonly name: string;
  readonly subdomain: string;
  readonly provider: 'local' | 'hcloud';
  readonly region: string | null;
  readonly serverType: string | null;
  readonly runtime: 'echo' | 'openclaw';
  readonly status: DeploymentStatus;
  readonly serverId: string | null;
  readonly ipv4: string | null;
  readonly ipv6: string | null;
  readonly dnsName: string | null;
  readonly hostPublicKey: string | null;
  readonly hostPublicKeyPending: string | null;
  readonly hostRekeyedAt: string | null;
  readonly currentOperation: Operation | null;
  readonly currentRun: number;
  readonly failedStep: string | null;
  readonly failureReason: string | null;
  readonly createdAt: string;
  readonly updatedAt: string;
  readonly steps: readonly StepRecord[];
}

type Row = Record<string, unknown>;
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

export const toDeployment = (r: Row): Deployment => ({
  id: String(r.id),
  orgId: String(r.org_id),
  name: String(r.name),
  subdomain: String(r.subdomain),
  provider: r.provider as Deployment['provider'],
  region: str(r.region),
  serverType: str(r.server_type),
  runtime: (r.runtime ?? 'echo') as Deployment['runtime'],
  status: r.status as DeploymentStatus,
  serverId: str(r.server_id),
  ipv4: str(r.ipv4),
  ipv6: str(r.ipv6),
  dnsName: str(r.dns_name),
  hostPublicKey: str(r.host_public_key),
  hostPublicKeyPending: str(r.host_public_key_pending),
  hostRekeyedAt: str(r.host_rekeyed_at),
  currentOperation: str(r.current_operation) as Operation | null,
  currentRun: Number(r.current_run ?? 0),
  failedStep: str(r.failed_step),
  failureReason: str(r.failure_reason),
  createdAt: String(r.created_at),
  updatedAt: String(r.updated_at),
  steps: ((r.steps as Row[] | undefined) ?? []).map((s) => ({
    run: Number(s.run),
    operation: s.operation as Operation,
    step: String(s.step),
    status: s.status as StepRecord['status'],
    attempt: Number(s.attempt),
    startedAt: str(s.started_at),
    finishedAt: str(s.finished_at),
    durationMs: s.duration_ms === null || s.duration_ms === undefined ? null : Number(s.duration_ms),
    error: str(s.error),
  })),
});

export interface DeploymentSummary {
  readonly id: string;
  readonly orgId: string;
  readonly name: string;
  readonly subdomain: string;
  readonly provider: string;
  readonly runtime: string;
  readonly status: DeploymentStatus;
  readonly dnsName: string | null;
  readonly ipv4: string | null;
  readonly failedStep: string | null;
  readonly createdAt: string;
}

export interface RequestInput {
  readonly orgId: string;
  readonly name: string;
  readonly subdomain: string;
  readonly provider: 'local' | 'hcloud';
  readonly region?: string;
  readonly serverType?: string;
  readonly runtime: 'echo' | 'openclaw';
  readonly bindings: readonly { envVar: string; secretId: string }[];
}

export type RequestResult =
  | { readonly status: 'ok'; readonly deployment: Deployment }
  | { readonly status: 'denied'; readonly field: string; readonly reason: string };

export interface AuditEntry {
  readonly id: number;
  readonly at: string;
  readonly secretId: string | null;
  readonly version: number | null;
  readonly operation: string;
  readonly outcome: string;
  readonly actor: string | null;
  readonly jobId: string | null;
  readonly reason: string | null;
}

export type BeginResult = { action: 'run' | 'done' | 'stop'; run: number; deployment: Deployment };

export const makeDeploymentStore = (deps: { rpc: Rpc }) => {
  const { rpc } = deps;
  const id = (v: string): string => parseInput(uuid, v, 'deployment_id');

  return {
    async request(input: RequestInput, ctx?: AuditContext): Promise<RequestResult> {
      const r = await rpc<{ status: string; deployment?: Row; field?: string; reason?: string }>(
        'deployments__request',
        {
          p_org_id: input.orgId,
          p_name: input.name,
          p_subdomain: input.subdomain,
          p_provider: input.provider,
          p_region: input.region,
          p_server_type: input.serverType,
          p_runtime: input.runtime,
          p_bindings: JSON.stringify(
            input.bindings.map((b) => ({ env_var: b.envVar, secret_id: b.secretId })),
          ),
          ...auditArgs(ctx),
        },
      );
      if (r.status === 'ok' && r.deployment) return { status: 'ok', deployment: toDeployment(r.deployment) };
      if (r.status === 'denied')
        return {
          status: 'denied',
          field: String(r.field ?? 'bindings'),
          reason: String(r.reason ?? 'denied'),
        };
      throw new OrchestratorError('internal', 'deployments__request: unexpected result shape');
    },
    async get(deploymentId: string): Promise<Deployment> {
      return toDeployment(await rpc<Row>('deployments__describe', { p_deployment_id: id(deploymentId) }));
    },
    async list(
      opts: { orgId?: string; includeDeleted?: boolean; limit?: number } = {},
    ): Promise<DeploymentSummary[]> {
      const rows = await rpc<Row[]>('deployments__list', {
        p_org_id: opts.orgId === undefined ? undefined : parseInput(uuid, opts.orgId, 'org_id'),
        p_include_deleted: opts.includeDeleted,
        p_limit:
          opts.limit === undefined
            ? undefined
            : parseInput(z.number().int().min(1).max(1000), opts.limit, 'limit'),
      });
      return rows.map((r) => ({
        id: String(r.id),
        orgId: String(r.org_id),
        name: String(r.name),
        subdomain: String(r.subdomain),
        provider: String(r.provider),
        runtime: String(r.runtime),
        status: r.status as DeploymentStatus,
        dnsName: str(r.dns_name),
        ipv4: str(r.ipv4),
        failedStep: str(r.failed_step),
        createdAt: String(r.created_at),
      }));
    },
    async listStalled(
      idleSeconds: number,
      orgId?: string,
    ): Promise<{ id: string; status: DeploymentStatus }[]> {
      return rpc('deployments__list_stalled', {
        p_idle_seconds: idleSeconds,
        p_org_id: orgId === undefined ? undefined : parseInput(uuid, orgId, 'org_id'),
      });
    },
    /** Of these ids (hosts a provider reports), the ones no live deployment owns. */
    async unowned(ids: readonly string[]): Promise<string[]> {
      return rpc('deployments__unowned', { p_ids: ids });
    },
    /** Start or resume an operation; `token` fences every later write of this run (see the SQL). */
    async begin(deploymentId: string, operation: Operation, token?: string): Promise<BeginResult> {
      const r = await rpc<{ action: BeginResult['action']; run: number; deployment: Row }>(
        'deployments__begin',
        {
          p_deployment_id: id(deploymentId),
          p_operation: operation,
          p_token: token,
        },
      );
      return { action: r.action, run: r.run, deployment: toDeployment(r.deployment) };
    },
    async requestDeprovision(deploymentId: string, ctx?: AuditContext): Promise<Deployment> {
      // with a caller to name: the same change, and its audited `request` row in one transaction
      if (ctx?.actor)
        return toDeployment(
          await rpc<Row>('deployments__request_deprovision_audited', {
            p_deployment_id: id(deploymentId),
            ...auditArgs(ctx),
          }),
        );
      return toDeployment(
        await rpc<Row>('deployments__request_deprovision', { p_deployment_id: id(deploymentId) }),
      );
    },
    async stepStarted(deploymentId: string, run: number, step: string, token?: string): Promise<void> {
      await rpc('deployment_steps__start', {
        p_deployment_id: deploymentId,
        p_run: run,
        p_step: step,
        p_token: token,
      });
    },
    async stepFinished(
      deploymentId: string,
      run: number,
      step: string,
      status: 'succeeded' | 'skipped' | 'failed',
      reason?: string,
      final?: boolean,
      token?: string,
    ): Promise<Deployment> {
      return toDeployment(
        await rpc<Row>('deployment_steps__finish', {
          p_deployment_id: deploymentId,
          p_run: run,
          p_step: step,
          p_status: status,
          p_reason: reason,
          p_final: final,
          p_token: token,
        }),
      );
    },
    async recordHost(
      deploymentId: string,
      host: { serverId: string; ipv4: string; ipv6?: string; hostPublicKey?: string },
      token?: string,
    ): Promise<Deployment> {
      return toDeployment(
        await rpc<Row>('deployments__record_host', {
          p_deployment_id: deploymentId,
          p_server_id: host.serverId,
          p_ipv4: host.ipv4,
          p_ipv6: host.ipv6,
          p_host_public_key: host.hostPublicKey,
          p_token: token,
        }),
      );
    },
    async recordDns(deploymentId: string, dnsName: string | null, token?: string): Promise<Deployment> {
      return toDeployment(
        await rpc<Row>('deployments__record_dns', {
          p_deployment_id: deploymentId,
          p_dns_name: dnsName,
          p_token: token,
        }),
      );
    },
    async hostKey(
      deploymentId: string,
      action: 'pending' | 'promote' | 'clear',
      key?: string,
      token?: string,
    ): Promise<Deployment> {
      return toDeployment(
        await rpc<Row>('deployments__host_key', {
          p_deployment_id: deploymentId,
          p_action: action,
          p_key: key,
          p_token: token,
        }),
      );
    },
    /** The deployment's audit rows, oldest first (no values: who, when, what, outcome). */
    async audit(deploymentId: string, limit?: number): Promise<AuditEntry[]> {
      const rows = await rpc<Row[]>('deployments__audit', {
        p_deployment_id: id(deploymentId),
        p_limit: limit,
      });
      return rows.map((r) => ({
        id: Number(r.id),
        at: String(r.at),
        secretId: str(r.secret_id),
        version: r.version === null || r.version === undefined ? null : Number(r.version),
        operation: String(r.operation),
        outcome: String(r.outcome),
        actor: str(r.actor),
        jobId: str(r.job_id),
        reason: str(r.reason),
      }));
    },
    /**
     * A failed provision's `steps` of its current run set back to pending, so that its retry runs
     * them again (deployment_steps__reopen); how many were reopened.
     */
    async reopenSteps(deploymentId: string, steps: readonly string[]): Promise<number> {
      return Number(
        await rpc<number>('deployment_steps__reopen', { p_deployment_id: id(deploymentId), p_steps: steps }),
      );
    },
    async setStatus(deploymentId: string, status: DeploymentStatus): Promise<void> {
      await rpc('deployments__set_status', { p_deployment_id: deploymentId, p_status: status });
    },
  };
};
export type DeploymentStore = ReturnType<typeof makeDeploymentStore>;
