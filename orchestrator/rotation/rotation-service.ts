import { createHash, randomUUID } from 'node:crypto';
import { OrchestratorError } from '../errors';
import type { Queues } from '../queues/queues';
import type { Secret } from '../secret';
import { parseInput, uuid, type AuditContext } from '../secrets/secret-input';
import type { KeyValidator } from './key-validator';
import type { Revocation } from './revocation-store';
import type { Rotation, RotationStore } from './rotation-store';
import type { AuditRead, OverdueKey } from './secret-binding-store';

/**
 * What the API and the CLI ask of rotation: start one (key check, new version, rotation record,
 * `rotate` job), revoke, status, the leak report and the max-age policy. The value is in memory
 * here only until the SQL function has stored it; the job carries the rotation id alone.
 */
export interface RotateRequest {
  readonly secretId: string;
  readonly value: Secret;
  /** Leak response: no grace period, the old version retired as soon as every host moved. */
  readonly leaked?: boolean;
  /** Same key (per organisation, whichever token sends it) → same rotation: a retry starts nothing new. */
  readonly idempotencyKey?: string;
  /** An org-scoped caller: another org's secret reads as absent. */
  readonly orgId?: string;
}

/** A v4-shaped uuid derived from the idempotency key's scope: the same request, the same rotation. */
export const rotationIdFor = (scope: string, key: string): string => {
  const h = createHash('sha256').update(`cortex-rotation\0${scope}\0${key}`).digest();
  h[6] = ((h[6] ?? 0) & 0x0f) | 0x40;
  h[8] = ((h[8] ?? 0) & 0x3f) | 0x80;
  const x = h.subarray(0, 16).toString('hex');
  return `${x.slice(0, 8)}-${x.slice(8, 12)}-${x.slice(12, 16)}-${x.slice(16, 20)}-${x.slice(20, 32)}`;
};

/** What a revocation's last run did, read back from its stored result (ids and reasons only). */
export interface RevocationSummary {
  readonly revoked: string[];
  /** Revoked, but its agent is not healthy without the key (a result that has no such list: none). */
  readonly unhealthy: { deploymentId: string; reason: string }[];
  readonly failed: { deploymentId: string; reason: string }[];
  /** Full counts: the stored lists keep the first 20 of each (the row's 16 KiB bound). */
  readonly revokedCount: number;
  readonly unhealthyCount: number;
  readonly failedCount: number;
  readonly vaultDeleted: boolean;
}

const strings = (v: unknown): string[] =>
  Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];

/**
 * The stored result (revoke-job.ts: the `revoked`, `unhealthy` and `failed` lists, the first 20 of
 * each, their full `<list>_count`s and `vault_deleted`) in the shape the API and the CLI show; null
 * before any run ended. Only the known fields are read: anything else the row might hold is not
 * passed on.
 */
export const revocationSummary = (r: Pick<Revocation, 'result'>): RevocationSummary | null => {
  if (!r.result) return null;
  const perDeployment = (v: unknown): { deploymentId: string; reason: string }[] =>
    (Array.isArray(v) ? (v as unknown[]) : []).flatMap((f) => {
      const x = (f ?? {}) as Record<string, unknown>;
      return typeof x.deploymentId === 'string'
        ? [{ deploymentId: x.deploymentId, reason: typeof x.reason === 'string' ? x.reason : 'unexpected' }]
        : [];
    });
  // a count never below the list it counts (a result written before counts were kept has none)
  const count = (v: unknown, listed: number): number =>
    typeof v === 'number' && Number.isInteger(v) && v >= listed ? v : listed;
  const revoked = strings(r.result.revoked);
  const unhealthy = perDeployment(r.result.unhealthy);
  const failed = perDeployment(r.result.failed);
  return {
    revoked,
    unhealthy,
    failed,
    revokedCount: count(r.result.revoked_count, revoked.length),
    unhealthyCount: count(r.result.unhealthy_count, unhealthy.length),
    failedCount: count(r.result.failed_count, failed.length),
    vaultDeleted: r.result.vault_deleted === true,
  };
};

export const makeRotationService = (deps: {
  rotations: RotationStore;
  queues: Pick<Queues, 'enqueue'>;
  validator: KeyValidator;
  graceSeconds: number;
}) => {
  const { rotations } = deps;

  const rotate = async (
    req: RotateRequest,
    ctx: AuditContext = {},
  ): Promise<Rotation & { jobId: string }> => {
    const secretId = parseInput(uuid, req.secretId, 'secret_id');
    const meta = await rotations.secretBindings(secretId, req.orgId ? { orgId: req.orgId } : {});
    // One rule for every Idempotency-Key (docs/api.md): scoped to the organisation the request acts
    // for, here the secret's own (an ops token acting for it shares the org's keys), not to the
    // token and not to the secret: the same key on another secret is another request (422).
    const rotationId = req.idempotencyKey ? rotationIdFor(meta.orgId, req.idempotencyKey) : randomUUID();
    const jobId = `rotate-${rotationId}`;
    // a typo never reaches the agents: refused before the vault or any host sees it
    const check = await deps.validator.validate(meta.provider, req.value);
    if (check.status === 'invalid')
      throw new OrchestratorError('invalid_input', `value: ${check.reason}`, { field: 'value' });
    const rot = await rotations.start(
      {
        rotationId,
        secretId,
        value: req.value,
        graceSeconds: deps.graceSeconds,
        leaked: req.leaked ?? false,
        ...(req.orgId ? { orgId: req.orgId } : {}),
      },
      { ...ctx, jobId },
    );
    // Enqueued after the record commits (a lost enqueue is found by the rotation sweep); a
    // completed rotation is not enqueued again.
    if (rot.state === 'running') await deps.queues.enqueue('rotate', { rotationId: rot.id }, rot.id);
    return { ...rot, jobId };
  };

  /**
   * Queue a revoke: the revocation opened in Postgres first (secrets__request_revoke, audited
   * `request` naming the caller — the API's token, the CLI's operator, or `orchestrator` for an
   * internal caller — and the job), then its job, which carries the revocation id alone. A
   * repeated request while one is open is the same revocation and the same job.
   */
  const revoke = async (
    req: {
      secretId: string;
      deploymentId?: string;
      orgId?: string;
    },
    ctx: AuditContext = {},
  ): Promise<{ jobId: string; revocationId: string; deployments: number }> => {
    const secretId = parseInput(uuid, req.secretId, 'secret_id');
    const deploymentId =
      req.deploymentId === undefined ? undefined : parseInput(uuid, req.deploymentId, 'deployment_id');
    const found = await rotations.secretBindings(secretId, {
      ...(deploymentId ? { deploymentId } : {}),
      ...(req.orgId ? { orgId: req.orgId } : {}),
    });
    if (deploymentId && found.deployments.length === 0)
      throw new OrchestratorError(
        'not_found',
        `secret ${secretId} is not bound to deployment ${deploymentId}`,
      );
    const { revocationId } = await rotations.requestRevoke(
      {
        secretId,
        ...(deploymentId ? { deploymentId } : {}),
        ...(req.orgId ? { orgId: req.orgId } : {}),
      },
      { ...ctx, actor: ctx.actor ?? 'orchestrator' },
    );
    // Enqueued after the revocation commits (a lost enqueue is found by the rotation sweep).
    const jobId = await deps.queues.enqueue('revoke', { revocationId }, revocationId);
    return { jobId, revocationId, deployments: found.deployments.length };
  };

  const status = (rotationId: string, orgId?: string): Promise<Rotation> => rotations.get(rotationId, orgId);

  /** A revocation and its last run's result (an org-scoped caller: another org's is not_found). */
  const revocation = (revocationId: string, orgId?: string): Promise<Revocation> =>
    rotations.showRevocation(revocationId, orgId);

  /** Every audited read of a version (the leaked one): which deployments, when, which job. */
  const readsOf = (secretId: string, version: number, orgId?: string): Promise<AuditRead[]> =>
    rotations.readsOfVersion(secretId, version, orgId);

  const overdue = (orgId?: string): Promise<OverdueKey[]> => rotations.overdue(orgId);

  return { rotate, revoke, status, revocation, readsOf, overdue, setMaxAge: rotations.setMaxAge };
};
export type RotationService = ReturnType<typeof makeRotationService>;
