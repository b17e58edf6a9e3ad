import { isOrchestratorError, OrchestratorError } from '../errors';
import type { Deployment, DeploymentStore } from '../deployments/deployment-store';
import type { HostAccess } from '../steps/host-access';
import { scrubAgentEnvironment } from '../steps/agent-swap';
import { PROVISION_STEPS } from '../steps/provision-steps';

/**
 * What the rotate and revoke jobs share (split from rotation-job.ts): reason codes as records keep
 * them, where a deployment's provision stands, taking the environment off a failed deployment's
 * host, and a bounded fan-out.
 */

/**
 * What a rotation record keeps of a failure, and GET /v1/rotations/:id shows: a code only (an
 * OrchestratorError's code, else `unexpected`). The message (host key fingerprints, unit names,
 * ports) goes to the worker's log, never into the record.
 */
export const rotationReasonCode = (err: unknown): string =>
  isOrchestratorError(err) ? err.code : 'unexpected';

const CODE = /^[a-z][a-z0-9_]{0,62}$/;
const PREFIXED = /^([a-z][a-z0-9_]{0,62}): /;

/**
 * A stored reason as a code, as deployment_events__reason_code does for events: a code as it is,
 * `code: detail` (a record written before codes) as its code, anything else `unexpected`.
 */
export const reasonCodeOf = (reason: string | null): string | null => {
  if (reason === null) return null;
  if (CODE.test(reason)) return reason;
  return PREFIXED.exec(reason)?.[1] ?? 'unexpected';
};

/**
 * Did this run of the deployment's provision write its env file (its `secrets` step done)? A
 * resumed provision does not write it again, so that file holds what was bound then.
 */
export const envFileWritten = (dep: Pick<Deployment, 'steps' | 'currentRun'>): boolean =>
  dep.steps.some(
    (s) =>
      s.run === dep.currentRun &&
      s.operation === 'provision' &&
      s.step === 'secrets' &&
      s.status === 'succeeded',
  );

/**
 * Did this run of the deployment's provision reach its `secrets` step (any record: a step that
 * failed after its write, or one reopened, may have left the env file on the host)?
 */
export const secretsReached = (dep: Pick<Deployment, 'steps' | 'currentRun'>): boolean =>
  dep.steps.some((s) => s.run === dep.currentRun && s.operation === 'provision' && s.step === 'secrets');

/** What a failed provision's retry must run again to write its env file anew: `secrets` and every later step. */
export const REWRITE_STEPS: readonly string[] = PROVISION_STEPS.slice(PROVISION_STEPS.indexOf('secrets'));

/**
 * Take the agent environment off the host of a deployment whose provision failed past `secrets`:
 * its steps from `secrets` on are reopened FIRST (deployment_steps__reopen), so that a crash
 * before the host is cleared leaves a provision whose retry writes the file anew (never one that
 * resumes past a removed file and fails for good), then the host is scrubbed
 * (scrubAgentEnvironment). Both are idempotent: a retry does them again. Returns how many steps
 * were reopened.
 */
export const clearFailedHost = async (
  deps: {
    readonly store: Pick<DeploymentStore, 'reopenSteps'>;
    readonly access: HostAccess;
    readonly scrub?: typeof scrubAgentEnvironment;
  },
  dep: Deployment,
  signal: AbortSignal,
): Promise<number> => {
  const reopened = await deps.store.reopenSteps(dep.id, REWRITE_STEPS);
  const { shell } = await deps.access.connect(dep, { signal, waitMs: 30_000 });
  try {
    await (deps.scrub ?? scrubAgentEnvironment)(shell, { signal });
  } finally {
    await shell.close().catch(() => undefined);
  }
  return reopened;
};

/** A deployment whose provision is past its `secrets` step: waited for, never recorded failed for it. */
export class ProvisionInFlight extends OrchestratorError {}

/** Run `fn` over `items`, at most `limit` at once; every item runs, errors are collected. */
export const mapLimit = async <T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<PromiseSettledResult<R>[]> => {
  const results: PromiseSettledResult<R>[] = new Array<PromiseSettledResult<R>>(items.length);
  let next = 0;
  const lane = async (): Promise<void> => {
    for (let i = next++; i < items.length; i = next++) {
      try {
        results[i] = { status: 'fulfilled', value: await fn(items[i] as T) };
      } catch (reason) {
        results[i] = { status: 'rejected', reason };
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, lane));
  return results;
};
