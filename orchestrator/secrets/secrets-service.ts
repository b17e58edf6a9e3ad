import { z } from 'zod';
import type { Rpc } from '../db/rpc';
import { OrchestratorError } from '../errors';
import { metrics } from '../metrics/metrics';
import { Secret } from '../secret';
import type { FingerprintKey } from './fingerprint';
import {
  auditArgs,
  checkPlatformSecretValue,
  checkSecretValue,
  envVarName,
  parseInput,
  platformSecretName,
  secretName,
  secretProvider,
  uuid,
  type AuditContext,
} from './secret-input';

export interface SecretMetadata {
  readonly secretId: string;
  readonly version: number;
  readonly displayPrefix: string;
  readonly fingerprint: string;
}

export interface BoundSecret {
  readonly envVar: string;
  readonly secretId: string;
  readonly version: number;
  readonly value: Secret;
}

/** `denied`: entitlement refused; `error`: a vault row missing or undecryptable. Both audited, neither holds a value. */
export type ReadResult =
  | { readonly status: 'ok'; readonly secrets: BoundSecret[] }
  | { readonly status: 'denied' | 'error'; readonly reason: string };

export interface AuditVerification {
  readonly ok: boolean;
  readonly rowsChecked: number;
  readonly firstBadId: number | null;
  readonly problem: 'changed' | 'removed' | 'reordered' | null;
}

/** A platform-scoped secret (no org), such as the orchestrator's SSH private key. */
export interface PlatformSecretMetadata extends SecretMetadata {
  readonly name: string;
}

/**
 * The audit chain of platform-secret events (they have no org): pass it to `verifyAuditLog`.
 * The same id as in the platform_secrets migration.
 */
export const PLATFORM_AUDIT_CHAIN = 'ffffffff-ffff-ffff-ffff-ffffffffffff';

type MetaRow = { secret_id: string; version: number; display_prefix: string; fingerprint: string };
const toMeta = (r: MetaRow): SecretMetadata => ({
  secretId: r.secret_id,
  version: r.version,
  displayPrefix: r.display_prefix,
  fingerprint: r.fingerprint,
});

const createInput = z.object({
  orgId: uuid,
  name: secretName,
  provider: secretProvider,
  deploymentId: uuid.optional(),
});

/**
 * The secrets service: everything the orchestrator does with customer keys, on top of the rpc
 * port. Values come in and go out only as `Secret`; reading goes through the one audited SQL
 * function, and a denial is a value (the audit row of a denial must commit). The fingerprint shown
 * beside a secret is computed here, under `fingerprintKey` (kept outside the database), and handed
 * to SQL, which checks its shape.
 */
export const makeSecretsService = (deps: { rpc: Rpc; fingerprintKey: FingerprintKey }) => {
  const { rpc, fingerprintKey } = deps;

  const create = async (
    input: { orgId: string; name: string; provider: string; value: Secret; deploymentId?: string },
    ctx?: AuditContext,
  ): Promise<SecretMetadata> => {
    const { value, ...rest } = input;
    const i = parseInput(createInput, rest);
    const plain = checkSecretValue('value', value);
    const r = await rpc<MetaRow>('secrets__create', {
      p_org_id: i.orgId,
      p_name: i.name,
      p_provider: i.provider,
      p_value: plain,
      p_fingerprint: await fingerprintKey.fingerprint(plain),
      p_deployment_id: i.deploymentId,
      ...auditArgs(ctx),
    });
    metrics.secretAccess.inc({ operation: 'create', outcome: 'success' });
    return toMeta(r);
  };

  /** Rotation's first half: a new value becomes a new version; the old one stays until retired. */
  const addVersion = async (secretId: string, value: Secret, ctx?: AuditContext): Promise<SecretMetadata> => {
    const id = parseInput(uuid, secretId, 'secret_id');
    const plain = checkSecretValue('value', value);
    return toMeta(
      await rpc<MetaRow>('secrets__add_version', {
        p_secret_id: id,
        p_value: plain,
        p_fingerprint: await fingerprintKey.fingerprint(plain),
        ...auditArgs(ctx),
      }),
    );
  };

  const retireVersion = async (secretId: string, version: number, ctx?: AuditContext): Promise<void> => {
    const id = parseInput(uuid, secretId, 'secret_id');
    const v = parseInput(z.number().int().min(1), version, 'version');
    await rpc('secret_versions__retire', { p_secret_id: id, p_version: v, ...auditArgs(ctx) });
  };

  /** Every version out of the vault, every binding gone: only under an open whole-secret revocation. */
  const revoke = async (secretId: string, revocationId: string, ctx?: AuditContext): Promise<void> => {
    await rpc('secrets__revoke', {
      p_secret_id: parseInput(uuid, secretId, 'secret_id'),
      p_revocation_id: parseInput(uuid, revocationId, 'revocation_id'),
      ...auditArgs(ctx),
    });
  };

  /**
   * Clean-up (bench, demo): request a whole-secret revocation (audited `request`) and carry it out
   * at once, swapping no agent: for a secret no running deployment holds (theirs deleted first).
   * Anything with a running agent goes through the `revoke` job (RotationService.revoke).
   */
  const revokeNow = async (secretId: string, ctx: AuditContext = {}): Promise<void> => {
    const id = parseInput(uuid, secretId, 'secret_id');
    const audit = { ...ctx, actor: ctx.actor ?? 'orchestrator' };
    const r = await rpc<{ revocation_id: string; job_id: string }>('secrets__request_revoke', {
      p_secret_id: id,
      ...auditArgs(audit),
    });
    await revoke(id, r.revocation_id, { ...audit, jobId: r.job_id });
    await rpc('secret_revocations__finish', {
      p_revocation_id: r.revocation_id,
      p_done: true,
      p_result: { vault_deleted: true, immediate: true },
    });
  };

  const bind = async (
    deploymentId: string,
    envVar: string,
    secretId: string,
    ctx?: AuditContext,
  ): Promise<void> => {
    await rpc('deployment_secrets__bind', {
      p_deployment_id: parseInput(uuid, deploymentId, 'deployment_id'),
      p_env_var: parseInput(envVarName, envVar, 'env_var'),
      p_secret_id: parseInput(uuid, secretId, 'secret_id'),
      ...auditArgs(ctx),
    });
  };

  const unbind = async (deploymentId: string, envVar: string, ctx?: AuditContext): Promise<void> => {
    await rpc('deployment_secrets__unbind', {
      p_deployment_id: parseInput(uuid, deploymentId, 'deployment_id'),
      p_env_var: parseInput(envVarName, envVar, 'env_var'),
      ...auditArgs(ctx),
    });
  };

  /**
   * Read the secrets bound to a deployment (all of them, or the given ids). Two calls, each its own
   * transaction: the intent commits first, so that even a read whose transaction never commits
   * leaves a trace; then the read, which audits every value and every denial in its transaction.
   */
  const readForDeployment = async (
    deploymentId: string,
    opts: { secretIds?: string[] } & AuditContext = {},
  ): Promise<ReadResult> => {
    const { secretIds, ...ctx } = opts;
    const args = {
      p_deployment_id: parseInput(uuid, deploymentId, 'deployment_id'),
      p_secret_ids: secretIds === undefined ? undefined : parseInput(z.array(uuid), secretIds, 'secret_ids'),
      ...auditArgs(ctx),
    };
    const intent = await rpc<{ intent_id: string }>('deployment_secrets__intend_read', args);
    const r = await rpc<
      | { status: 'ok'; secrets: { env_var: string; secret_id: string; version: number; value: string }[] }
      | { status: 'denied' | 'error'; reason: string }
    >('deployment_secrets__read', { ...args, p_intent_id: intent.intent_id });
    metrics.secretAccess.inc(
      { operation: 'read', outcome: r.status === 'ok' ? 'success' : r.status },
      r.status === 'ok' ? r.secrets.length : 1,
    );
    if (r.status === 'denied' || r.status === 'error') return { status: r.status, reason: r.reason };
    if (r.status !== 'ok')
      throw new OrchestratorError('internal', 'deployment_secrets__read: unexpected result shape');
    return {
      status: 'ok',
      secrets: r.secrets.map((s) => ({
        envVar: s.env_var,
        secretId: s.secret_id,
        version: s.version,
        value: new Secret(s.value),
      })),
    };
  };

  /** Like readForDeployment, but a denial is an error (`secret_denied`, never retried). */
  const readForDeploymentOrThrow = async (
    deploymentId: string,
    opts: { secretIds?: string[] } & AuditContext = {},
  ): Promise<BoundSecret[]> => {
    const r = await readForDeployment(deploymentId, opts);
    if (r.status === 'ok') return r.secrets;
    throw new OrchestratorError(
      r.status === 'denied' ? 'secret_denied' : 'db_error',
      `deployment ${deploymentId}: ${r.reason}`,
    );
  };

  const deleteForDeployment = async (deploymentId: string, ctx?: AuditContext): Promise<number> => {
    const r = await rpc<{ deleted: number }>('secrets__delete_for_deployment', {
      p_deployment_id: parseInput(uuid, deploymentId, 'deployment_id'),
      ...auditArgs(ctx),
    });
    return r.deleted;
  };

  // Create and rotate take the same input and return the same metadata; only the function differs.
  const writePlatformSecret =
    (fn: 'platform_secrets__create' | 'platform_secrets__rotate') =>
    async (name: string, value: Secret, ctx?: AuditContext): Promise<PlatformSecretMetadata> => {
      const n = parseInput(platformSecretName, name, 'name');
      const plain = checkPlatformSecretValue('value', value);
      const r = await rpc<MetaRow>(fn, {
        p_name: n,
        p_value: plain,
        p_fingerprint: await fingerprintKey.fingerprint(plain),
        ...auditArgs(ctx),
      });
      return { ...toMeta(r), name: n };
    };
  const createPlatformSecret = writePlatformSecret('platform_secrets__create');
  /** The new value becomes the current version; the previous version's vault secret is deleted. */
  const rotatePlatformSecret = writePlatformSecret('platform_secrets__rotate');

  /**
   * Read a platform secret's current value through its audited SQL function. An unknown name is a
   * denial, audited by the function, and thrown here as `secret_denied` (never retried).
   */
  const readPlatformSecret = async (name: string, ctx?: AuditContext): Promise<Secret> => {
    const n = parseInput(platformSecretName, name, 'name');
    const args = { p_name: n, ...auditArgs(ctx) };
    // the intent commits first (see readForDeployment)
    const intent = await rpc<{ intent_id: string }>('platform_secrets__intend_read', args);
    const r = await rpc<
      { status: 'ok'; value: string; version: number } | { status: 'denied' | 'error'; reason: string }
    >('platform_secrets__read', { ...args, p_intent_id: intent.intent_id });
    metrics.secretAccess.inc({
      operation: 'platform_read',
      outcome: r.status === 'ok' ? 'success' : r.status,
    });
    if (r.status === 'ok' && typeof r.value === 'string') return new Secret(r.value);
    if (r.status === 'denied') throw new OrchestratorError('secret_denied', r.reason);
    if (r.status === 'error') throw new OrchestratorError('db_error', r.reason);
    throw new OrchestratorError('internal', 'platform_secrets__read: unexpected result shape');
  };

  /** Verify one org's audit chain (or PLATFORM_AUDIT_CHAIN), or every chain when none is given. */
  const verifyAuditLog = async (orgId?: string): Promise<AuditVerification> => {
    const r = await rpc<{
      ok: boolean;
      rows_checked: number;
      first_bad_id: number | null;
      problem: AuditVerification['problem'];
    }>('secret_access_log__verify', {
      p_org_id: orgId === undefined ? undefined : parseInput(uuid, orgId, 'org_id'),
    });
    return {
      ok: r.ok,
      rowsChecked: r.rows_checked,
      firstBadId: r.first_bad_id === null ? null : Number(r.first_bad_id),
      problem: r.problem,
    };
  };

  /** The keyed fingerprint of a value, as secrets__create stores it (for callers that pass one to SQL themselves). */
  const fingerprint = (value: Secret): Promise<string> => fingerprintKey.fingerprint(value.reveal());

  return {
    fingerprint,
    create,
    addVersion,
    retireVersion,
    revoke,
    revokeNow,
    bind,
    unbind,
    readForDeployment,
    readForDeploymentOrThrow,
    deleteForDeployment,
    createPlatformSecret,
    rotatePlatformSecret,
    readPlatformSecret,
    verifyAuditLog,
  };
};

export type SecretsService = ReturnType<typeof makeSecretsService>;
