import { z } from 'zod';
import type { Rpc } from '../db/rpc';
import type { Secret } from '../secret';
import { auditArgs, checkSecretValue, parseInput, uuid, type AuditContext } from '../secrets/secret-input';
import { makeRevocationStore } from './revocation-store';
import { makeSecretBindingStore } from './secret-binding-store';

/**
 * Rotation's view of the contract (supabase/migrations/20261201120000_rotation.sql): typed
 * wrappers over the rpc port, one per SQL function. Values come in and go out only as `Secret`.
 * `RotationStore` also carries the secret-binding side (secret-binding-store.ts) and the
 * revocations (revocation-store.ts): the jobs, the service and their fakes take the one store.
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

type Row = Record<string, unknown>;
const s = (v: unknown): string | null => (typeof v === 'string' ? v : null);

const toRotationDeployment = (d: Row): RotationDeployment => ({
  deploymentId: String(d.deployment_id),
  fromVersion: Number(d.from_version),
  state: d.state as RotationDeploymentState,
  reason: s(d.reason),
  swapMode: s(d.swap_mode),
});

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
  deployments: ((r.deployments as Row[] | undefined) ?? []).map(toRotationDeployment),
  ...(typeof r.existing === 'boolean' ? { existing: r.existing } : {}),
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

  const get = async (rotationId: string, orgId?: string): Promise<Rotation> =>
    toRotation(
      await rpc<Row>('secret_rotations__get', {
        p_rotation_id: id(rotationId, 'rotation_id'),
        p_org_id: orgId === undefined ? undefined : id(orgId, 'org_id'),
      }),
    );

  /**
   * One deployment's row in a rotation (the rotate job's re-read under its lease): one row, not the
   * rotation's document with every deployment's (secret_rotations__get), which made a rotation over
   * N deployments O(N²) (migration 20261208090000). Unknown rotation: not_found.
   */
  const getDeployment = async (
    rotationId: string,
    deploymentId: string,
  ): Promise<RotationDeployment | null> => {
    const row = await rpc<Row | null>('secret_rotation_deployments__get', {
      p_rotation_id: id(rotationId, 'rotation_id'),
      p_deployment_id: id(deploymentId, 'deployment_id'),
    });
    // null: the deployment is not (or no longer: removed, its row cascaded away) in the rotation
    return row === null || row === undefined ? null : toRotationDeployment(row);
  };

  /** Records one deployment's step; returns that deployment's row as recorded (not the rotation's). */
  const setState = async (
    rotationId: string,
    deploymentId: string,
    state: Exclude<RotationDeploymentState, 'pending'>,
    opts: { reason?: string; swapMode?: string } & AuditContext = {},
  ): Promise<RotationDeployment> => {
    const { reason, swapMode, ...ctx } = opts;
    return toRotationDeployment(
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

  /**
   * A deployment the rotation job left not known to serve: one `health` event in its stream and one
   * webhook delivery per active endpoint of its org. `rollback_unverified`: routed back to its old
   * environment, whose old instance did not answer afterwards
   * (20261205120000_rotation_health_events.sql); only once the rotation has recorded it
   * `rolled_back` with reason `unhealthy_rollback_unverified`. `switch_unverified`: found on the new
   * environment, which did not answer, and not healthy on the old one either (review R14 finding 4,
   * 20261206100000_rotation_switch_unverified.sql); only once recorded `switched` with reason
   * `unhealthy_switch_unverified`. Once per (rotation, deployment): a repeat returns the first event
   * with `existing`.
   */
  const recordRotationHealth = async (
    deploymentId: string,
    rotationId: string,
    reasonCode: 'rollback_unverified' | 'switch_unverified',
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

  return {
    start,
    get,
    getDeployment,
    setState,
    finish,
    listAttention,
    retireOld,
    recordRotationHealth,
    ...makeSecretBindingStore({ rpc }),
    ...makeRevocationStore({ rpc }),
  };
};
export type RotationStore = ReturnType<typeof makeRotationStore>;
