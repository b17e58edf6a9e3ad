import { classify, OrchestratorError } from '../errors';
import type { Logger } from '../log';
import type { DeploymentStore } from '../deployments/deployment-store';
import type { Leases } from '../queues/deployment-lease';
import type { SecretsService } from '../secrets/secrets-service';
import type { HostAccess } from '../steps/host-access';
import type { scrubAgentEnvironment, swapAgentEnvironment } from '../steps/agent-swap';
import { reasonOf } from '../steps/step-runner';
import { clearFailedHost, envFileWritten, mapLimit, ProvisionInFlight, secretsReached } from './rotation-job';
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
  readonly secretId: string;
  readonly revoked: string[];
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

  const revokeOne = async (secretId: string, deploymentId: string, jobId: string, signal: AbortSignal) => {
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
            const r = await deps.swap(
              shell,
              { deploymentId, runtime: dep.runtime, env },
              { signal, ...(deps.soakSeconds === undefined ? {} : { soakSeconds: deps.soakSeconds }) },
            );
            if (!r.healthy)
              throw new OrchestratorError(
                'remote_command_failed',
                `the agent is not healthy without the secret (${r.reason ?? 'no reason'}); it still holds it`,
              );
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
        await rotations.revokeBindings(secretId, deploymentId, ctx);
        return;
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
      await rotations.revokeBindings(secretId, deploymentId, ctx);
    } finally {
      await lease.release().catch(() => undefined);
    }
  };

  const run = async (input: {
    secretId: string;
    deploymentId?: string;
    jobId: string;
    signal: AbortSignal;
    finalAttempt: boolean;
  }): Promise<RevokeOutcome> => {
    const found = await rotations.secretBindings(input.secretId, {
      ...(input.deploymentId ? { deploymentId: input.deploymentId } : {}),
    });
    const targets = found.deployments.map((d) => d.deploymentId);
    const results = await mapLimit(targets, deps.concurrency, (id) =>
      revokeOne(input.secretId, id, input.jobId, input.signal),
    );
    const failed = results.flatMap((r, i) =>
      r.status === 'rejected'
        ? [{ deploymentId: targets[i] as string, reason: reasonOf(r.reason), err: r.reason }]
        : [],
    );
    const transient = failed.some((f) => classify(f.err) !== 'permanent');
    if (transient && !input.finalAttempt)
      throw new OrchestratorError(
        'stack_locked',
        `${failed.length} deployment(s) still hold secret ${input.secretId}: ${failed[0]?.reason ?? ''}`,
      );
    let vaultDeleted = false;
    // A provision past its `secrets` step (or a deployment busy past the wait) still holds the
    // secret and would start (or keep) an agent on it: deleting the secret now would also delete
    // its binding (secrets__revoke), and nothing would find that host again. The secret stays;
    // the job reports it, and a revoke run again once that deployment is ready finishes it.
    const inFlight = failed.filter((f) => f.err instanceof ProvisionInFlight);
    if (!input.deploymentId && found.status === 'active' && inFlight.length === 0) {
      // Withdrawn: every version leaves the vault even if an agent could not be switched (it is
      // named below); the value must not stay readable because one host is down.
      await deps.secrets.revoke(input.secretId, { actor: 'orchestrator', jobId: input.jobId });
      vaultDeleted = true;
    } else if (!input.deploymentId && found.status === 'active')
      log.warn(
        { secretId: input.secretId, provisioning: inFlight.map((f) => f.deploymentId) },
        'not deleted: a provision still holds the secret; run the revoke again once it is ready',
      );
    const outcome: RevokeOutcome = {
      secretId: input.secretId,
      revoked: targets.filter((_, i) => results[i]?.status === 'fulfilled'),
      failed: failed.map(({ deploymentId, reason }) => ({ deploymentId, reason })),
      vaultDeleted,
    };
    log.info(
      {
        secretId: input.secretId,
        revoked: outcome.revoked.length,
        failed: outcome.failed.length,
        vaultDeleted,
      },
      'revoke done',
    );
    return outcome;
  };

  return { run };
};
export type RevokeJob = ReturnType<typeof makeRevokeJob>;
