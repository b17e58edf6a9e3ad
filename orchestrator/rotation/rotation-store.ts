import { z } from 'zod';
import type { Rpc } from '../db/rpc';
import { OrchestratorError } from '../errors';
import { Secret } from '../secret';
import { auditArgs, checkSecretValue, parseInput, uuid, type AuditContext } from '../secrets/secret-input';

/**
 * Rotation's view of the contract (supabase/migrations/20261201120000_rotation.sql): typed
 * wrappers over the rpc port, one per SQL function. Values come in and go out only as `Secret`.
 */
export type RotationDeploymentState =
  'pending' | 'switching' | 'switched' | 'rolled_back' | 'failed' | 'skipped';

export interface RotationDeployment {
  readonly deploymentId: string;
  readonly fromVersion: number;
  readonly state: RotationDeploymentState;
  readonly reason: string | null;
  readonly swapMode: string | null;
}

export interface Rotation {
  readonly id: string;
  readonly orgId: string;
  readonly secretId: string;
  readonly fromVersion: number;
  readonly toVersion: number;
  readonly state: 'running' | 'completed';
  readonly leaked: boolean;
  readonly graceSeconds: number;
  readonly jobId: string | null;
  readonly createdAt: string;
  readonly finishedAt: string | null;
  readonly retireAfter: string | null;
  readonly oldRetiredAt: string | null;
  readonly deployments: readonly RotationDeployment[];
  /** start() only: the rotation existed already (a retried request). */
  readonly existing?: boolean;
}

export interface Binding {
  readonly envVar: string;
  readonly secretId: string;
  /**
   * The version the deployment RUNS: its pin or the current version, except while a rotation of
   * the secret runs and has not moved this deployment yet (`pending`, `switching`): that rotation's
   * old version (20261205090000_bindings_running_version.sql, review R8 finding 8). A revoke or a
   * rotation of another secret rebuilds the environment from it.
   */
  readonly version: number;
  readonly pinned: boolean;
}

export interface SecretBindings {
  readonly secretId: string;
  readonly orgId: string;
  readonly provider: string;
  readonly status: string;
  readonly currentVersion: number;
  readonly maxAgeSeconds: number | null;
  readonly deployments: readonly { deploymentId: string; status: string; envVars: string[] }[];
}

export interface VersionedValue {
  readonly envVar: string;
  readonly secretId: string;
  readonly version: number;
  readonly value: Secret;
}

export interface AuditRead {
  readonly id: number;
  readonly at: string;
  readonly deploymentId: string | null;
  readonly outcome: string;
  readonly actor: string | null;
  readonly jobId: string | null;
  readonly reason: string | null;
}

export interface OverdueKey {
  readonly secretId: string;
  readonly orgId: string;
  readonly name: string;
  readonly provider: string;
  readonly currentVersion: number;
  readonly ageSeconds: number;
  readonly maxAgeSeconds: number;
}

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

export const toRotation = (r: Row): Rotation => ({
  id: String(r.id),
  orgId: String(r.org_id),
  secretId: String(r.secret_id),
  fromVersion: Number(r.from_version),
  toVersion: Number(r.to_version),
  state: r.state as Rotation['state'],
  leaked: r.leaked === true,
  graceSeconds: Number(r.grace_seconds),
  jobId: s(r.job_id),
  createdAt: String(r.created_at),
  finishedAt: s(r.finished_at),
  retireAfter: s(r.retire_after),
  oldRetiredAt: s(r.old_retired_at),
  deployments: ((r.deployments as Row[] | undefined) ?? []).map((d) => ({
    deploymentId: String(d.deployment_id),
    fromVersion: Number(d.from_version),
    state: d.state as RotationDeploymentState,
    reason: s(d.reason),
    swapMode: s(d.swap_mode),
  })),
  ...(typeof r.existing === 'boolean' ? { existing: r.existing } : {}),
});

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

const graceSeconds = z.number().int().min(0).max(2_592_000);

export const makeRotationStore = (deps: {
  rpc: Rpc;
  /** The value's keyed fingerprint (HMAC-SHA256 under the orchestrator's fingerprint key). */
  fingerprint: (value: Secret) => string | Promise<string>;
}) => {
  const { rpc } = deps;
  const id = (v: string, field: string): string => parseInput(uuid, v, field);

  const start = async (
    input: {
      rotationId: string;
      secretId: string;
      value: Secret;
      graceSeconds: number;
      leaked: boolean;
      orgId?: string;
    },
    ctx?: AuditContext,
  ): Promise<Rotation> =>
    toRotation(
      await rpc<Row>('secret_rotations__start', {
        p_rotation_id: id(input.rotationId, 'rotation_id'),
        p_secret_id: id(input.secretId, 'secret_id'),
        p_value: checkSecretValue('value', input.value),
        p_fingerprint: await deps.fingerprint(input.value),
        p_grace_seconds: parseInput(graceSeconds, input.graceSeconds, 'grace_seconds'),
        p_leaked: input.leaked,
        p_org_id: input.orgId === undefined ? undefined : id(input.orgId, 'org_id'),
        ...auditArgs(ctx),
      }),
    );

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

  const get = async (rotationId: string, orgId?: string): Promise<Rotation> =>
    toRotation(
      await rpc<Row>('secret_rotations__get', {
        p_rotation_id: id(rotationId, 'rotation_id'),
        p_org_id: orgId === undefined ? undefined : id(orgId, 'org_id'),
      }),
    );

  const setState = async (
    rotationId: string,
    deploymentId: string,
    state: Exclude<RotationDeploymentState, 'pending'>,
    opts: { reason?: string; swapMode?: string } & AuditContext = {},
  ): Promise<Rotation> => {
    const { reason, swapMode, ...ctx } = opts;
    return toRotation(
      await rpc<Row>('secret_rotation_deployments__set_state', {
        p_rotation_id: id(rotationId, 'rotation_id'),
        p_deployment_id: id(deploymentId, 'deployment_id'),
        p_state: state,
        p_reason: reason?.slice(0, 200),
        p_swap_mode: swapMode,
        ...auditArgs(ctx),
      }),
    );
  };

  const finish = async (rotationId: string, ctx?: AuditContext): Promise<Rotation> =>
    toRotation(
      await rpc<Row>('secret_rotations__finish', {
        p_rotation_id: id(rotationId, 'rotation_id'),
        ...auditArgs(ctx),
      }),
    );

  const listAttention = async (idleSeconds: number): Promise<{ stalled: string[]; due: string[] }> =>
    rpc<{ stalled: string[]; due: string[] }>('secret_rotations__list_attention', {
      p_idle_seconds: idleSeconds,
    });

  const retireOld = async (
    rotationId: string,
    ctx?: AuditContext,
  ): Promise<{ retired: number[]; kept: { version: number; deployments: number }[] }> =>
    rpc('secret_rotations__retire_old', { p_rotation_id: id(rotationId, 'rotation_id'), ...auditArgs(ctx) });

  const bindings = async (deploymentId: string): Promise<Binding[]> =>
    (
      await rpc<{ env_var: string; secret_id: string; version: number; pinned: boolean }[]>(
        'deployment_secrets__list',
        { p_deployment_id: id(deploymentId, 'deployment_id') },
      )
    ).map((b) => ({ envVar: b.env_var, secretId: b.secret_id, version: b.version, pinned: b.pinned }));

  /** A secret's metadata (no value) and the deployments it is bound to (or one of them). */
  const secretBindings = async (
    secretId: string,
    opts: { deploymentId?: string; orgId?: string } = {},
  ): Promise<SecretBindings> => {
    const r = await rpc<{
      secret_id: string;
      org_id: string;
      provider: string;
      status: string;
      current_version: number;
      max_age_seconds: number | null;
      deployments: { deployment_id: string; status: string; env_vars: string[] }[];
    }>('deployment_secrets__list_for_secret', {
      p_secret_id: id(secretId, 'secret_id'),
      p_deployment_id: opts.deploymentId === undefined ? undefined : id(opts.deploymentId, 'deployment_id'),
      p_org_id: opts.orgId === undefined ? undefined : id(opts.orgId, 'org_id'),
    });
    return {
      secretId: r.secret_id,
      orgId: r.org_id,
      provider: r.provider,
      status: r.status,
      currentVersion: r.current_version,
      maxAgeSeconds: r.max_age_seconds,
      deployments: r.deployments.map((b) => ({
        deploymentId: b.deployment_id,
        status: b.status,
        envVars: b.env_vars,
      })),
    };
  };

  /**
   * Read given versions of secrets bound to a deployment: the intent commits first (a read whose
   * transaction never commits still leaves a trace), then the audited read. A denial or a missing
   * vault row is an error here (`secret_denied` is never retried).
   */
  const readVersions = async (
    deploymentId: string,
    wanted: readonly { secretId: string; version: number }[],
    ctx: AuditContext,
  ): Promise<VersionedValue[]> => {
    if (wanted.length === 0) return [];
    const dep = id(deploymentId, 'deployment_id');
    const ids = wanted.map((w) => id(w.secretId, 'secret_ids'));
    const intent = await rpc<{ intent_id: string }>('deployment_secrets__intend_read', {
      p_deployment_id: dep,
      p_secret_ids: ids,
      ...auditArgs(ctx),
    });
    const r = await rpc<
      | { status: 'ok'; secrets: { env_var: string; secret_id: string; version: number; value: string }[] }
      | { status: 'denied' | 'error'; reason: string }
    >('deployment_secrets__read_versions', {
      p_deployment_id: dep,
      p_secret_ids: ids,
      p_versions: wanted.map((w) => w.version),
      ...auditArgs(ctx),
      p_intent_id: intent.intent_id,
    });
    if (r.status === 'ok')
      return r.secrets.map((x) => ({
        envVar: x.env_var,
        secretId: x.secret_id,
        version: x.version,
        value: new Secret(x.value),
      }));
    throw new OrchestratorError(
      r.status === 'denied' ? 'secret_denied' : 'db_error',
      `deployment ${dep}: ${r.reason}`,
    );
  };

  const setVersion = async (
    deploymentId: string,
    secretId: string,
    version: number | null,
    ctx?: AuditContext,
  ): Promise<{ status: 'ok' | 'denied'; reason?: string }> =>
    rpc('deployment_secrets__set_version', {
      p_deployment_id: id(deploymentId, 'deployment_id'),
      p_secret_id: id(secretId, 'secret_id'),
      p_version: version ?? undefined,
      ...auditArgs(ctx),
    });

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

  /**
   * A deployment the rotation job routed back to its old environment whose old instance did not
   * answer afterwards (20261205120000_rotation_health_events.sql): one `health` event in its stream
   * and one webhook delivery per active endpoint of its org. Only once the rotation has recorded it
   * `rolled_back` with reason `unhealthy_rollback_unverified`; once per (rotation, deployment): a
   * repeat returns the first event with `existing`.
   */
  const recordRotationHealth = async (
    deploymentId: string,
    rotationId: string,
    reasonCode: 'rollback_unverified',
  ): Promise<{ eventId: string; existing: boolean }> => {
    const r = await rpc<{ id: number | string; existing: boolean }>(
      'deployment_events__record_rotation_health',
      {
        p_deployment_id: id(deploymentId, 'deployment_id'),
        p_rotation_id: id(rotationId, 'rotation_id'),
        p_reason_code: reasonCode,
      },
    );
    return { eventId: String(r.id), existing: r.existing };
  };

  const setMaxAge = async (
    secretId: string,
    maxAgeSeconds: number | null,
    ctx?: AuditContext,
  ): Promise<void> => {
    await rpc('secrets__set_max_age', {
      p_secret_id: id(secretId, 'secret_id'),
      p_max_age_seconds:
        maxAgeSeconds === null
          ? undefined
          : parseInput(z.number().int().min(3600).max(315_360_000), maxAgeSeconds, 'max_age_seconds'),
      ...auditArgs(ctx),
    });
  };

  const overdue = async (orgId?: string): Promise<OverdueKey[]> =>
    (
      await rpc<Row[]>('secrets__list_overdue', {
        p_org_id: orgId === undefined ? undefined : id(orgId, 'org_id'),
      })
    ).map((r) => ({
      secretId: String(r.secret_id),
      orgId: String(r.org_id),
      name: String(r.name),
      provider: String(r.provider),
      currentVersion: Number(r.current_version),
      ageSeconds: Number(r.age_seconds),
      maxAgeSeconds: Number(r.max_age_seconds),
    }));

  const readsOfVersion = async (secretId: string, version: number, orgId?: string): Promise<AuditRead[]> =>
    (
      await rpc<Row[]>('secret_access_log__reads_of_version', {
        p_secret_id: id(secretId, 'secret_id'),
        p_version: version,
        p_org_id: orgId === undefined ? undefined : id(orgId, 'org_id'),
      })
    ).map((r) => ({
      id: Number(r.id),
      at: String(r.at),
      deploymentId: s(r.deployment_id),
      outcome: String(r.outcome),
      actor: s(r.actor),
      jobId: s(r.job_id),
      reason: s(r.reason),
    }));

  return {
    start,
    get,
    setState,
    finish,
    listAttention,
    retireOld,
    bindings,
    secretBindings,
    readVersions,
    setVersion,
    revokeBindings,
    recordHealth,
    recordRotationHealth,
    requestRevoke,
    revocation,
    showRevocation,
    finishRevocation,
    listOpenRevocations,
    setMaxAge,
    overdue,
    readsOfVersion,
  };
};
export type RotationStore = ReturnType<typeof makeRotationStore>;
