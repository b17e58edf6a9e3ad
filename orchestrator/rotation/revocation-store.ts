import type { Rpc } from '../db/rpc';
import { auditArgs, parseInput, uuid, type AuditContext } from '../secrets/secret-input';

/**
 * Revocation's view of the contract (supabase/migrations/20261204100000_revocations.sql and the
 * health events): typed wrappers over the rpc port, one per SQL function. Part of `RotationStore`
 * (rotation-store.ts), which the revoke job and the rotation service take.
 */

/** A requested revoke (public.secret_revocations): open until its job has finished it. */
export interface Revocation {
  readonly id: string;
  readonly orgId: string;
  readonly secretId: string;
  /** null: the whole secret (every deployment, then the vault). */
  readonly deploymentId: string | null;
  readonly state: 'open' | 'done';
  readonly jobId: string;
  readonly attempts: number;
  /** The last run's outcome (deployment ids, value-free reasons, vault_deleted); null before one ended. */
  readonly result: Record<string, unknown> | null;
  readonly createdAt: string;
  /** When a run last ended (or the revocation was opened). */
  readonly updatedAt: string;
  readonly finishedAt: string | null;
}

type Row = Record<string, unknown>;
const s = (v: unknown): string | null => (typeof v === 'string' ? v : null);

const toRevocation = (r: Row): Revocation => ({
  id: String(r.id),
  orgId: String(r.org_id),
  secretId: String(r.secret_id),
  deploymentId: s(r.deployment_id),
  state: r.state === 'done' ? 'done' : 'open',
  jobId: String(r.job_id),
  attempts: Number(r.attempts),
  result: r.result && typeof r.result === 'object' ? (r.result as Record<string, unknown>) : null,
  createdAt: String(r.created_at),
  updatedAt: String(r.updated_at),
  finishedAt: s(r.finished_at),
});

export const makeRevocationStore = (deps: { rpc: Rpc }) => {
  const { rpc } = deps;
  const id = (v: string, field: string): string => parseInput(uuid, v, field);

  /**
   * A revoke accepted (20261204100000_revocations.sql): a revocation opened (or the open one for
   * the same secret and deployment-or-whole returned) and one audited `request` row in the org's
   * chain naming the caller (actor, address, user agent) and the revocation's job. The revoke
   * functions refuse anything but an open revocation's id; the job carries that id alone.
   */
  const requestRevoke = async (
    input: { secretId: string; deploymentId?: string; orgId?: string },
    ctx: AuditContext,
  ): Promise<{ revocationId: string; jobId: string; existing: boolean }> => {
    const r = await rpc<{ revocation_id: string; job_id: string; existing: boolean }>(
      'secrets__request_revoke',
      {
        p_secret_id: id(input.secretId, 'secret_id'),
        p_deployment_id:
          input.deploymentId === undefined ? undefined : id(input.deploymentId, 'deployment_id'),
        p_org_id: input.orgId === undefined ? undefined : id(input.orgId, 'org_id'),
        ...auditArgs(ctx),
      },
    );
    return { revocationId: r.revocation_id, jobId: r.job_id, existing: r.existing };
  };

  /** A revocation as the job reads it (not_found for an id nobody opened). */
  const revocation = async (revocationId: string): Promise<Revocation> =>
    toRevocation(
      await rpc<Row>('secret_revocations__get', { p_revocation_id: id(revocationId, 'revocation_id') }),
    );

  /**
   * A revocation as the API and the CLI show it (secret_revocations__show): with `orgId` (an
   * org-scoped caller) another organisation's is not_found, like an id nobody opened.
   */
  const showRevocation = async (revocationId: string, orgId?: string): Promise<Revocation> =>
    toRevocation(
      await rpc<Row>('secret_revocations__show', {
        p_revocation_id: id(revocationId, 'revocation_id'),
        p_org_id: orgId === undefined ? undefined : id(orgId, 'org_id'),
      }),
    );

  /** The end of one job run: done, or left open (with its result) for the rotation sweep. */
  const finishRevocation = async (
    revocationId: string,
    done: boolean,
    result: Record<string, unknown>,
  ): Promise<Revocation> =>
    toRevocation(
      await rpc<Row>('secret_revocations__finish', {
        p_revocation_id: id(revocationId, 'revocation_id'),
        p_done: done,
        p_result: result,
      }),
    );

  /** Open revocations no run has ended for `idleSeconds` (the sweep queues their job again). */
  const listOpenRevocations = async (idleSeconds: number): Promise<string[]> =>
    rpc<string[]>('secret_revocations__list_open', { p_idle_seconds: idleSeconds });

  const revokeBindings = async (
    secretId: string,
    deploymentId: string | undefined,
    revocationId: string,
    ctx?: AuditContext,
  ) =>
    rpc<{ bindings_removed: number }>('deployment_secrets__revoke', {
      p_secret_id: id(secretId, 'secret_id'),
      p_revocation_id: id(revocationId, 'revocation_id'),
      p_deployment_id: deploymentId === undefined ? undefined : id(deploymentId, 'deployment_id'),
      ...auditArgs(ctx),
    });

  /**
   * A deployment whose agent the revoke job restarted without the revoked key and kept running
   * although unhealthy (20261205100000_health_events.sql): one `health` event in its stream and one
   * webhook delivery per active endpoint of its org. Only under an open revocation of a secret still
   * bound to it (so before the binding is removed); once per (revocation, deployment): a repeat
   * returns the first event with `existing`.
   */
  const recordHealth = async (
    deploymentId: string,
    revocationId: string,
    reasonCode: 'kept_unhealthy',
  ): Promise<{ eventId: string; existing: boolean }> => {
    const r = await rpc<{ id: number | string; existing: boolean }>('deployment_events__record_health', {
      p_deployment_id: id(deploymentId, 'deployment_id'),
      p_revocation_id: id(revocationId, 'revocation_id'),
      p_reason_code: reasonCode,
    });
    return { eventId: String(r.id), existing: r.existing };
  };

  return {
    revokeBindings,
    recordHealth,
    requestRevoke,
    revocation,
    showRevocation,
    finishRevocation,
    listOpenRevocations,
  };
};
export type RevocationStore = ReturnType<typeof makeRevocationStore>;
