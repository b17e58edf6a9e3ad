import { classify, OrchestratorError } from '../errors';
import type { Logger } from '../log';
import type { DeploymentStore } from '../deployments/deployment-store';
import type { Leases } from '../queues/deployment-lease';
import type { SecretsService } from '../secrets/secrets-service';
import type { HostAccess } from '../steps/host-access';
import type { scrubAgentEnvironment, swapAgentEnvironment } from '../steps/agent-swap';
import { reasonOf } from '../steps/step-runner';
import {
  clearFailedHost,
  envFileWritten,
  mapLimit,
  ProvisionInFlight,
  reasonCodeOf,
  rotationReasonCode,
  secretsReached,
} from './rotation-common';
import { healthRetryable } from './health-retry';
import type { RotationStore } from './rotation-store';

/**
 * The `revoke` job: withdraw a secret from one deployment, or from every one. For each running
 * deployment the agent is swapped onto its environment without the secret's variables (every other
 * binding read at the version it runs, audited), and only once that is healthy is the binding
 * removed (audited `revoke`); a deployment that is not running just loses the binding (its next
 * provision writes an env file without it). While its agent is swapped the deployment shows
 * `rotating`, as in a rotation, and is `ready` again afterwards, whether the swap worked or not.
 * Revoking the whole secret then deletes every version from the vault (`secrets__revoke`,
 * audited). Idempotent: a retry finds only what is left.
 *
 * The job carries a revocation id alone (20261204100000_revocations.sql): it acts only on what
 * that open revocation names, and every revoke call names it (the SQL refuses any other), so a job
 * forged in Redis revokes nothing. Any deployment still holding the secret after a run (a
 * provision past its `secrets` step, a busy deployment, a host out of reach on the last attempt)
 * leaves the revocation open, and a whole secret in the vault (the rotation sweep queues it
 * again); otherwise it is done.
 */
export interface RevokeJobDeps {
  readonly rotations: RotationStore;
  readonly secrets: Pick<SecretsService, 'revoke'>;
  readonly store: Pick<DeploymentStore, 'get' | 'setStatus' | 'reopenSteps'>;
  readonly leases: Leases;
  readonly access: HostAccess;
  readonly swap: typeof swapAgentEnvironment;
  /** Takes the agent environments off a failed deployment's host (default: scrubAgentEnvironment). */
  readonly scrub?: typeof scrubAgentEnvironment;
  readonly log: Logger;
  readonly concurrency: number;
  readonly holder: string;
  /** How long to wait for a busy deployment's lease (default 120 s). */
  readonly leaseWaitMs?: number;
  /** How long a switched agent must stay healthy before the swap is final (ROTATION_SOAK_SECONDS). */
  readonly soakSeconds?: number;
}

export interface RevokeOutcome {
  readonly revocationId: string;
  readonly secretId: string;
  /** The revocation is still open: a provision held the secret; the rotation sweep runs it again. */
  readonly open: boolean;
  readonly revoked: string[];
  /** Revoked, but the agent is not healthy without the secret (restarted without it anyway). */
  readonly unhealthy: { deploymentId: string; reason: string }[];
  readonly failed: { deploymentId: string; reason: string }[];
  readonly vaultDeleted: boolean;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export const makeRevokeJob = (deps: RevokeJobDeps) => {
  const { rotations, log } = deps;

  /**
   * `ready` → `rotating` for the swap, and back once it is over (also on failure). Back only
   * from `rotating`: a deprovision requested meanwhile (`rotating` → `deprovisioning`) is not undone.
   * A `rotating` left by a crashed attempt is ours to clear too: under the lease no other operation
   * runs on this deployment.
   */
  const setReady = async (deploymentId: string): Promise<void> => {
    if ((await deps.store.get(deploymentId)).status === 'rotating')
      await deps.store.setStatus(deploymentId, 'ready');
  };
  const restoreReady = async (deploymentId: string): Promise<void> => {
    try {
      await setReady(deploymentId);
    } catch (err) {
      log.error(
        { deploymentId, reason: reasonOf(err) },
        'could not set the deployment ready again after revoke',
      );
    }
  };

  /**
   * The deployment's event stream and its org's webhooks say the agent runs unhealthy (review R8
   * #5), recorded while the binding still exists (the SQL requires it) and before the status goes
   * back to `ready`, so a client following the swap sees it before its stream ends. A failure that
   * a retry can fix (the database out of reach, a query timed out, a serialization failure or a
   * deadlock) fails this deployment's revoke (retried: the binding stays, so the retry records it;
   * the SQL is idempotent per revocation and deployment). Anything else (a refusal, and also a
   * function or grant that is missing, which no retry fixes: review R12 finding 1) is logged and
   * the revoke goes on: a notification must never keep a withdrawn key bound or in the vault.
   */
  const recordUnhealthy = async (deploymentId: string, revocationId: string): Promise<void> => {
    try {
      await rotations.recordHealth(deploymentId, revocationId, 'kept_unhealthy');
    } catch (err) {
      if (healthRetryable(err)) throw err;
      log.error(
        { deploymentId, revocationId, reason: reasonOf(err) },
        'revoke: the unhealthy agent could not be recorded as a health event; the revoke goes on',
      );
    }
  };

  const revokeOne = async (
    secretId: string,
    revocationId: string,
    deploymentId: string,
    jobId: string,
    signal: AbortSignal,
  ) => {
    const ctx = { actor: 'orchestrator', jobId };
    // A busy deployment (a provision, a rotation) is waited for, as the rotation does: a provision
    // past its `secrets` step must finish (ready: swapped below) before the binding can go.
    const deadline = Date.now() + (deps.leaseWaitMs ?? 120_000);
    let lease = await deps.leases.acquire(deploymentId, deps.holder);
    while (!lease && Date.now() < deadline && !signal.aborted) {
      await sleep(1_000);
      lease = await deps.leases.acquire(deploymentId, deps.holder);
    }
    if (!lease) throw new ProvisionInFlight('stack_locked', `deployment ${deploymentId} is busy`);
    try {
      const dep = await deps.store.get(deploymentId);
      if (dep.status === 'ready' || dep.status === 'rotating') {
        let unhealthy: string | undefined;
        if (dep.status === 'ready') await deps.store.setStatus(deploymentId, 'rotating');
        try {
          const rest = (await rotations.bindings(deploymentId)).filter((b) => b.secretId !== secretId);
          const wanted = [...new Map(rest.map((b) => [b.secretId, b.version])).entries()].map(
            ([id, version]) => ({
              secretId: id,
              version,
            }),
          );
          const values = await rotations.readVersions(deploymentId, wanted, ctx);
          const env = new Map(values.map((v) => [v.envVar, v.value]));
          const { shell } = await deps.access.connect(dep, { signal, waitMs: 30_000 });
          try {
            const input = { deploymentId, runtime: dep.runtime, env };
            const soak = deps.soakSeconds === undefined ? {} : { soakSeconds: deps.soakSeconds };
            // The lease fences each swap on the host (review R28 finding 1): one lost (Redis away
            // past its TTL, the loop blocked) may be another job's now, whose swap would interleave
            // with this one's, batch by batch, and could rebuild the environment with the key.
            const fence = (): void => {
              if (!lease.held())
                throw new OrchestratorError('stack_locked', `deployment ${deploymentId}: its lease was lost`);
            };
            fence();
            const r = await deps.swap(shell, input, { signal, ...soak });
            if (!r.healthy) {
              // Not healthy without the secret (an agent that needs the key, or another fault): the
              // old environment was put back, so the agent still holds the withdrawn value. A revoke
              // must take effect: the serving agent is restarted in place without it and kept so
              // even when unhealthy (its previous env file removed), and that is reported.
              fence();
              const forced = await deps.swap(shell, input, {
                signal,
                ...soak,
                mode: 'held-restart',
                keepUnhealthy: true,
              });
              // Only `kept_unhealthy` says the new environment (without the key) is on the host
              // and running, or `requested_unverified`: it already was when this restart began (a
              // re-run after a cut past the restart), the kept previous file removed; any other
              // unhealthy answer (its first look failed: Caddy's admin API silent, a cut) may have
              // changed nothing, and the binding must stay (review R8 #1).
              const without = forced.code === 'kept_unhealthy' || forced.code === 'requested_unverified';
              if (!forced.healthy && !without)
                throw new OrchestratorError(
                  'remote_command_failed',
                  `the agent is not healthy without the secret (${r.reason ?? 'no reason'}), and restarting it without the secret did not take (${forced.reason ?? 'no reason'}); it still holds it`,
                );
              if (!forced.healthy) {
                log.error(
                  { deploymentId, secretId, first: r.reason, forced: forced.reason },
                  'revoked: the agent is not healthy without the secret; restarted without it anyway',
                );
                // a code only in the record (org members can read it); the detail is in the log
                unhealthy = 'kept_unhealthy';
                await recordUnhealthy(deploymentId, revocationId);
              }
            }
          } finally {
            await shell.close().catch(() => undefined);
          }
        } catch (err) {
          await restoreReady(deploymentId);
          throw err;
        }
        // `ready` again BEFORE the binding goes, and a failure to do so thrown (retried): the job
        // finds its deployments by their binding and the reconciler re-enqueues no `rotating` one,
        // so one whose binding is gone would stay `rotating` for good.
        await setReady(deploymentId);
        await rotations.revokeBindings(secretId, deploymentId, revocationId, ctx);
        return unhealthy;
      }
      // Not running an agent. Its host holds the secret in its env file if this run's provision
      // wrote it, and a resumed provision would start the agent on that file: a failed one has its
      // steps from `secrets` reopened and the value taken off its host (its retry writes the file
      // without the secret); one still provisioning past `secrets` is left bound for the job's
      // retry (which swaps it once it is ready). Only then does the binding go.
      if (dep.status === 'provisioning' && envFileWritten(dep))
        throw new ProvisionInFlight(
          'stack_locked',
          `deployment ${deploymentId} is provisioning past its secrets step; revoked once ready`,
        );
      if (dep.status === 'failed' && secretsReached(dep)) await clearFailedHost(deps, dep, signal);
      await rotations.revokeBindings(secretId, deploymentId, revocationId, ctx);
      return undefined;
    } finally {
      await lease.release().catch(() => undefined);
    }
  };

  const run = async (input: {
    revocationId: string;
    jobId: string;
    signal: AbortSignal;
    finalAttempt: boolean;
  }): Promise<RevokeOutcome> => {
    // an id nobody opened (a forged job) is not_found here: the job fails for good
    const rev = await rotations.revocation(input.revocationId);
    const { secretId } = rev;
    const deploymentId = rev.deploymentId ?? undefined;
    if (rev.state === 'done') {
      log.info({ revocationId: rev.id, secretId }, 'revoke already done');
      return {
        revocationId: rev.id,
        secretId,
        open: false,
        revoked: [],
        unhealthy: [],
        failed: [],
        vaultDeleted: false,
      };
    }
    const found = await rotations.secretBindings(secretId, deploymentId ? { deploymentId } : {});
    const targets = found.deployments.map((d) => d.deploymentId);
    const results = await mapLimit(targets, deps.concurrency, (id) =>
      revokeOne(secretId, rev.id, id, input.jobId, input.signal),
    );
    const failed = results.flatMap((r, i) =>
      r.status === 'rejected'
        ? [
            {
              deploymentId: targets[i] as string,
              reason: reasonOf(r.reason),
              code: rotationReasonCode(r.reason),
              err: r.reason,
            },
          ]
        : [],
    );
    const transient = failed.some((f) => classify(f.err) !== 'permanent');
    if (transient && !input.finalAttempt)
      throw new OrchestratorError(
        'stack_locked',
        `${failed.length} deployment(s) still hold secret ${secretId}: ${failed[0]?.reason ?? ''}`,
      );
    // A provision past its `secrets` step (or a deployment busy past the wait) still holds the
    // secret and would start (or keep) an agent on it: deleting the secret now would also delete
    // its binding (secrets__revoke), and nothing would find that host again. So would a binding
    // this run did not list (none can be made while the revocation is open: bind refuses; checked
    // again here, just before the delete). The secret stays and the revocation stays open: the
    // rotation sweep queues this job again, and it finishes once that deployment is ready.
    const holding = failed.filter((f) => f.err instanceof ProvisionInFlight).map((f) => f.deploymentId);
    // Every deployment that still holds the key after this run is named at error level (the record
    // keeps the first 20 only).
    for (const f of failed)
      log.error(
        { revocationId: rev.id, secretId, deploymentId: f.deploymentId, reason: f.reason },
        'revoke: this deployment still holds the secret',
      );
    // Any deployment that could not be revoked (a host out of reach on the last attempt, a
    // permanent error) keeps the revocation open, and the whole secret in the vault: deleting it
    // would delete that deployment's binding too (secrets__revoke), and nothing would ever come
    // back to the host that still runs the key (review R8 #2). The sweep runs it again until every
    // host is done (or the deployment is removed).
    let vaultDeleted = false;
    if (!deploymentId && found.status === 'active' && failed.length === 0) {
      if (holding.length === 0) {
        const listed = new Set(targets);
        const again = await rotations.secretBindings(secretId);
        for (const d of again.deployments) if (!listed.has(d.deploymentId)) holding.push(d.deploymentId);
      }
      if (holding.length === 0) {
        // Withdrawn from every host: every version leaves the vault.
        await deps.secrets.revoke(secretId, rev.id, { actor: 'orchestrator', jobId: input.jobId });
        vaultDeleted = true;
      } else
        log.warn(
          { revocationId: rev.id, secretId, holding },
          'not deleted yet: a provision still holds the secret; the revocation stays open and runs again',
        );
    }
    const open = holding.length > 0 || failed.length > 0;
    const outcome: RevokeOutcome = {
      revocationId: rev.id,
      secretId,
      open,
      revoked: targets.filter((_, i) => results[i]?.status === 'fulfilled'),
      unhealthy: results.flatMap((r, i) =>
        r.status === 'fulfilled' && r.value ? [{ deploymentId: targets[i] as string, reason: r.value }] : [],
      ),
      failed: [
        ...failed.map(({ deploymentId: d, reason }) => ({ deploymentId: d, reason })),
        ...holding
          .filter((d) => !failed.some((f) => f.deploymentId === d))
          .map((d) => ({
            deploymentId: d,
            reason: 'bound_during_revoke: bound while the revoke ran; revoked on the next run',
          })),
      ],
      vaultDeleted,
    };
    // The record holds at most 16 KiB (secret_revocations__finish): the first 20 of each list, with
    // each list's full count. Reasons as codes only, as rotation records keep them (org members
    // can read the row; host details stay in the worker's log: review R8 #4).
    const codes = new Map(failed.map((f) => [f.deploymentId, f.code]));
    const cut = (l: { deploymentId: string; reason: string }[]) =>
      l.slice(0, 20).map((f) => ({
        deploymentId: f.deploymentId,
        reason: codes.get(f.deploymentId) ?? reasonCodeOf(f.reason) ?? 'unexpected',
      }));
    await rotations.finishRevocation(rev.id, !open, {
      revoked: outcome.revoked.slice(0, 20),
      revoked_count: outcome.revoked.length,
      unhealthy: cut(outcome.unhealthy),
      unhealthy_count: outcome.unhealthy.length,
      failed: cut(outcome.failed),
      failed_count: outcome.failed.length,
      vault_deleted: vaultDeleted,
    });
    log.info(
      {
        revocationId: rev.id,
        secretId,
        revoked: outcome.revoked.length,
        failed: outcome.failed.length,
        unhealthy: outcome.unhealthy.length,
        vaultDeleted,
        open,
      },
      'revoke done',
    );
    return outcome;
  };

  return { run };
};
export type RevokeJob = ReturnType<typeof makeRevokeJob>;
