import { z } from 'zod';
import type { Rpc } from '../db/rpc';
import { OrchestratorError } from '../errors';
import { Secret } from '../secret';
import { auditArgs, parseInput, uuid, type AuditContext } from '../secrets/secret-input';

/**
 * The secret side rotation and revoke work on: which deployments a secret is bound to and at which
 * version, the audited read of given versions, the key-age policy and the reads of a version.
 * Typed wrappers over the rpc port, one per SQL function; values come out only as `Secret`. Part of
 * `RotationStore` (rotation-store.ts).
 */

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

type Row = Record<string, unknown>;
const s = (v: unknown): string | null => (typeof v === 'string' ? v : null);

export const makeSecretBindingStore = (deps: { rpc: Rpc }) => {
  const { rpc } = deps;
  const id = (v: string, field: string): string => parseInput(uuid, v, field);

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

  return { bindings, secretBindings, readVersions, setVersion, setMaxAge, overdue, readsOfVersion };
};
export type SecretBindingStore = ReturnType<typeof makeSecretBindingStore>;
