import { classify, OrchestratorError } from '../errors';
import type { Logger } from '../log';
import type { DeploymentStore } from '../deployments/deployment-store';
import type { Leases } from '../queues/deployment-lease';
import type { Secret } from '../secret';
import type { HostAccess } from '../steps/host-access';
import { SwapCleanupError, scrubAgentEnvironment, type swapAgentEnvironment } from '../steps/agent-swap';
import { reasonOf } from '../steps/step-runner';
import { retryHealthWrite } from './health-retry';
import {
  clearFailedHost,
  envFileWritten,
  mapLimit,
  ProvisionInFlight,
  rotationReasonCode,
  secretsReached,
} from './rotation-common';
import type { Rotation, RotationDeployment, RotationStore } from './rotation-store';

/**
 * The `rotate` job: fan a rotation out over every deployment bound to the secret, at most
 * `concurrency` at a time. For each: take the deployment's lease (one operation per deployment),
 * record `switching` (the deployment shows `rotating`), read its full environment through the
 * audited version read (the rotated secret at the new version, every other binding at the version
 * it runs), and swap the agent onto it (H7's blue/green or held restart, health-checked before
 * traffic moves). Healthy → `switched`; not healthy → `rolled_back` (the host stayed on, or was put
 * back on, the old environment; the binding is pinned to the old version, audited). Every step is
 * recorded in Postgres first, so a retry after a crash resumes from the record: `pending` and
 * `switching` deployments are done again, finished ones skipped; a deployment is left on its old
 * version or the new one, never a third.
 */
export interface RotationJobDeps {
  readonly rotations: RotationStore;
  readonly store: Pick<DeploymentStore, 'get' | 'reopenSteps'>;
  readonly leases: Leases;
  readonly access: HostAccess;
  readonly swap: typeof swapAgentEnvironment;
  /** Takes the agent environments off a failed deployment's host (default: scrubAgentEnvironment). */
  readonly scrub?: typeof scrubAgentEnvironment;
  readonly log: Logger;
  readonly concurrency: number;
  /** Who takes leases (worker id). */
  readonly holder: string;
  /** How long to wait for a busy deployment's lease before leaving it to the job's retry. */
  readonly leaseWaitMs?: number;
  readonly drainSeconds?: number;
  /** How long a switched agent must stay healthy before the swap is final (ROTATION_SOAK_SECONDS). */
  readonly soakSeconds?: number;
  /** The waits before each retry of a health-event write that failed transiently (default 250, 1000 ms). */
  readonly healthRetryMs?: readonly number[];
}

export interface RotationOutcome {
  readonly rotationId: string;
  readonly state: Rotation['state'];
  readonly toVersion: number;
  readonly switched: string[];
  readonly rolledBack: string[];
  readonly failed: string[];
  readonly skipped: string[];
  readonly retired: number[];
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export const outcomeOf = (r: Rotation, retired: number[] = []): RotationOutcome => {
  const by = (s: RotationDeployment['state']): string[] =>
    r.deployments.filter((d) => d.state === s).map((d) => d.deploymentId);
  return {
    rotationId: r.id,
    state: r.state,
    toVersion: r.toVersion,
    switched: by('switched'),
    rolledBack: by('rolled_back'),
    failed: by('failed'),
    skipped: by('skipped'),
    retired,
  };
};

export const makeRotationJob = (deps: RotationJobDeps) => {
  const { rotations, log } = deps;

  /** The deployment's full environment with the rotated secret at `version`. */
  const environment = async (
    rot: Rotation,
    deploymentId: string,
    version: number,
    jobId: string,
  ): Promise<Map<string, Secret>> => {
    const bound = await rotations.bindings(deploymentId);
    const wanted = [...new Map(bound.map((b) => [b.secretId, b.version])).entries()].map(([secretId, v]) => ({
      secretId,
      version: secretId === rot.secretId ? version : v,
    }));
    const values = await rotations.readVersions(deploymentId, wanted, { actor: 'orchestrator', jobId });
    return new Map(values.map((v) => [v.envVar, v.value]));
  };

  const switchOne = async (
    rot: Rotation,
    given: RotationDeployment,
    jobId: string,
    signal: AbortSignal,
    finalAttempt: boolean,
  ): Promise<void> => {
    let d = given;
    const dlog = log.child({ rotationId: rot.id, deploymentId: d.deploymentId });
    const ctx = { actor: 'orchestrator', jobId };
    /**
     * After a record that says the deployment may not be serving (`rolled_back` with reason
     * `unhealthy_rollback_unverified`, or `switched` with reason `unhealthy_switch_unverified`): the
     * event stream and the org's webhooks say so. The record wrote the event already, in its own
     * transaction and before the deployment's `ready` (20261205130000, 20261206100000); this call
     * finds it (`existing`) and is what says so to a database whose set_state predates that
     * (idempotent per rotation and deployment). Never thrown: a notification must not change what
     * the rotation records or does (the catch below would record `failed`). Nor can it be left to
     * the job's retry, as the revoke job does: the row is final, and a retry resumes only `pending`
     * and `switching` ones. So a failure a retry can fix is retried here, briefly; any other, or
     * the last, is logged.
     */
    const recordHealth = async (reasonCode: 'rollback_unverified' | 'switch_unverified'): Promise<void> => {
      const h = await retryHealthWrite(
        () => rotations.recordRotationHealth(d.deploymentId, rot.id, reasonCode),
        { waitsMs: deps.healthRetryMs ?? [250, 1_000], signal },
      );
      if (!h.ok)
        dlog.error(
          { reason: reasonOf(h.err), retryable: h.retryable, attempts: h.attempts, reasonCode },
          `the ${reasonCode === 'rollback_unverified' ? 'rollback' : 'switch'} not verified could not be recorded as a health event: no webhook says this deployment may not be serving`,
        );
    };
    /** The row is `switching` (a cut attempt's, or this one's right before its swap): a swap may have moved the host. */
    let switching = d.state === 'switching';
    const deadline = Date.now() + (deps.leaseWaitMs ?? 120_000);
    let lease = await deps.leases.acquire(d.deploymentId, deps.holder);
    while (!lease && Date.now() < deadline && !signal.aborted) {
      await sleep(1_000);
      lease = await deps.leases.acquire(d.deploymentId, deps.holder);
    }
    // busy (a provision, a deprovision): left pending, the job's retry comes back for it
    if (!lease) throw new OrchestratorError('stack_locked', `deployment ${d.deploymentId} is busy`);
    try {
      // The row as it is now, under the lease: `run` read the rotation before the fan-out, and the
      // row may have ended since (a stalled job run twice by BullMQ, or another attempt that held
      // the lease while this one waited). An ended row is left as it is, before any secret is read
      // or the host connected (review R23 finding 1: since `switching` is recorded right before the
      // swap, it no longer refuses such an attempt first).
      // (one row: secret_rotation_deployments__get, not the rotation with every deployment's row)
      const now = await rotations.getDeployment(rot.id, d.deploymentId);
      if (!now || (now.state !== 'pending' && now.state !== 'switching')) {
        dlog.info({ state: now?.state }, 'deployment already done in this rotation: nothing to do');
        return;
      }
      d = now;
      switching = d.state === 'switching';
      const dep = await deps.store.get(d.deploymentId);
      if (dep.status !== 'ready' && dep.status !== 'rotating') {
        // Not running an agent now. Its host holds the old version only if this run's `secrets`
        // step is done: a resumed provision does not do it again.
        const wroteOld = envFileWritten(dep);
        if (d.state === 'pending' && dep.status === 'provisioning' && wroteOld)
          // Left pending, even by the last attempt: once the provision is done (ready) a retry of
          // this job, or the rotation sweep after ROTATION_STALLED_SECONDS, switches it like any
          // other; if the provision fails instead, the case below applies.
          throw new ProvisionInFlight(
            'stack_locked',
            `deployment ${d.deploymentId} is provisioning past its secrets step; it is switched once ready`,
          );
        // Failed at or past its `secrets` step: its host may hold the old version, and its retry
        // would not write the env file again. Its steps from `secrets` on are reopened and the old
        // value taken off the host (clearFailedHost), so that its retry reads the current version,
        // writes it and starts the agent on it: it follows the current version (`skipped`), and
        // the old one can be retired. A host that cannot be reached: a transient error leaves it
        // pending for the job's retry; on the last attempt (or a permanent error) the catch below
        // records it `failed`, pinned to the old version its host holds (not retired under it;
        // its retry, reopened, writes that pinned version; the next rotation tries again).
        if (d.state === 'pending' && dep.status === 'failed' && secretsReached(dep)) {
          const reopened = await clearFailedHost(deps, dep, signal);
          await rotations.setState(rot.id, d.deploymentId, 'skipped', {
            reason: 'deployment_failed_reopened',
            ...ctx,
          });
          dlog.warn(
            { reopened },
            'failed deployment: old environment taken off its host; its retry writes the current version',
          );
          return;
        }
        // `failed` pins the binding to the old version (a record `switching` before: a swap may
        // have run); `skipped` follows the current version, which its next `secrets` step reads.
        await rotations.setState(
          rot.id,
          d.deploymentId,
          d.state === 'pending' && !wroteOld ? 'skipped' : 'failed',
          { reason: `deployment_${dep.status}`, ...ctx },
        );
        return;
      }
      const resumed = d.state === 'switching';
      let env: Map<string, Secret>;
      try {
        env = await environment(rot, d.deploymentId, rot.toVersion, jobId);
      } catch (err) {
        // nothing touched the host in this attempt (a resumed one's cut attempt may have: its
        // `failed` gets the health event below; a fresh one's, from `pending`, none)
        if (classify(err) !== 'permanent' && !finalAttempt) throw err;
        dlog.error({ reason: reasonOf(err) }, 'could not read the environment; rotation failed here');
        await rotations.setState(rot.id, d.deploymentId, 'failed', {
          reason: rotationReasonCode(err),
          ...ctx,
        });
        return;
      }
      const { shell } = await deps.access.connect(dep, { signal, waitMs: 30_000 });
      try {
        // `switching` (and the deployment `rotating`) only now, right before the swap: from here a
        // swap may move the host, so a `failed` from `switching` is "not known" and set_state gives
        // it a health event (20261207090000, review R16 finding 4). A failure to read the
        // environment or to connect leaves a fresh row `pending` (`failed` from `pending` on the
        // last attempt): its host is untouched, and no event says otherwise (review R20 finding 1).
        // the lease fences the swap: one lost meanwhile (Redis away, the loop blocked past its TTL)
        // may be another attempt's now (review R25 finding 4)
        if (!lease.held())
          throw new OrchestratorError('stack_locked', `deployment ${d.deploymentId}: its lease was lost`);
        await rotations.setState(rot.id, d.deploymentId, 'switching', ctx);
        switching = true;
        const opts = {
          signal,
          ...(deps.drainSeconds === undefined ? {} : { drainSeconds: deps.drainSeconds }),
          ...(deps.soakSeconds === undefined ? {} : { soakSeconds: deps.soakSeconds }),
        };
        const r = await deps.swap(shell, { deploymentId: dep.id, runtime: dep.runtime, env }, opts);
        if (r.healthy) {
          await rotations.setState(rot.id, d.deploymentId, 'switched', { swapMode: r.mode, ...ctx });
          dlog.info({ mode: r.mode }, 'deployment switched to the new version');
          return;
        }
        // The host already ran the new environment when this swap began (a cut attempt had switched
        // it, or the deployment was provisioned on the new version) and still does, unverified
        // through Caddy: "left as found" is the NEW version here (review R14 finding 4).
        const foundOnNew = r.code === 'requested_unverified';
        // Put back on the old version explicitly only what was on it when this rotation began: a
        // resumed deployment (a cut attempt may have moved it), unless it is found on the new one in
        // a leak response (the leaked key is never started again on a host that left it) or was
        // provisioned on the new version (the old value was never there: review R16 finding 2; it
        // got the old, maybe leaked, key and was pinned to it). One not resumed and found on the
        // new version was provisioned on it; one resumed is so when its bindings list says it
        // runs the new version (its provisioning read it: 20261206120000, review R17 finding 1:
        // an attempt that failed before its swap made it look resumed).
        const provisionedOnNew =
          foundOnNew &&
          resumed &&
          !rot.leaked &&
          (await rotations.bindings(d.deploymentId)).some(
            (b) => b.secretId === rot.secretId && b.version === rot.toVersion,
          );
        const swapBack = resumed && !(foundOnNew && (rot.leaked || provisionedOnNew));
        let backUnhealthy = false;
        if (swapBack) {
          // An attempt before the crash may have moved the host to the new version already, and
          // this swap left it as it found it: put it back on the old one explicitly.
          // A second swap on the host: the lease fences it too (review R27 finding 5; one lost
          // during the first swap may be another attempt's now), before its values are read
          if (!lease.held())
            throw new OrchestratorError('stack_locked', `deployment ${d.deploymentId}: its lease was lost`);
          const old = await environment(rot, d.deploymentId, d.fromVersion, jobId);
          // (Its clean-up failing is no switch to the new version: a plain failure, pinned old.)
          const back = await deps
            .swap(shell, { deploymentId: dep.id, runtime: dep.runtime, env: old }, opts)
            .catch((e: unknown) => {
              throw e instanceof SwapCleanupError
                ? new OrchestratorError('remote_command_failed', e.message)
                : e;
            });
          backUnhealthy = !back.healthy;
          if (!back.healthy) dlog.error({ reason: back.reason }, 'the old environment is not healthy either');
        }
        if (foundOnNew && (backUnhealthy || !swapBack)) {
          // The host is on the NEW version (no swap back, or one that left it as it found it).
          // Recorded as what the host runs, `switched` (the binding follows the new version:
          // `rolled_back` would pin the old one, which a later rebuild of this environment would put
          // back), with a reason that says it is not known to serve. (Before: `rolled_back`, pinned
          // old, while the host ran the new.)
          await rotations.setState(rot.id, d.deploymentId, 'switched', {
            reason: 'unhealthy_switch_unverified',
            swapMode: r.mode,
            ...ctx,
          });
          dlog.error(
            { mode: r.mode, reason: r.reason },
            swapBack
              ? 'deployment left on the new version: it did not answer through Caddy, and the old environment is not healthy either'
              : 'deployment left on the new version it already ran: it did not answer through Caddy',
          );
          // it may not be serving: a health event, as for a rollback not verified below
          await recordHealth('switch_unverified');
          return;
        }
        // the swap's reason (unit names, ports) is logged below, not recorded. A route back whose
        // old instance did not answer through Caddy, or a resumed one put back on an old
        // environment that is not healthy either, is rolled back (the old environment is what the
        // host has) but not known to serve: recorded as such, logged as an error (review R8 #7). A
        // resumed one is judged by its swap back alone: that swap put the old environment back and
        // checked it through Caddy, so the first swap's `rollback_unverified` no longer holds (review
        // R13 finding 2: it sent a "may not be serving" webhook for a verified rollback).
        const unverified = swapBack ? backUnhealthy : r.code === 'rollback_unverified';
        await rotations.setState(rot.id, d.deploymentId, 'rolled_back', {
          reason: unverified ? 'unhealthy_rollback_unverified' : 'unhealthy',
          swapMode: r.mode,
          ...ctx,
        });
        if (unverified) {
          dlog.error(
            { mode: r.mode, reason: r.reason },
            'deployment not healthy on the new version: routed back, but the old environment did not answer through Caddy',
          );
          // the event stream and the org's webhooks say it may not be serving (recordHealth above)
          await recordHealth('rollback_unverified');
        } else
          dlog.warn(
            { mode: r.mode, reason: r.reason },
            'deployment not healthy on the new version: rolled back',
          );
      } finally {
        await shell.close().catch(() => undefined);
      }
    } catch (err) {
      if (err instanceof ProvisionInFlight) throw err;
      // The new environment serves (proven) and only the old slot's clean-up is not verified: the
      // last attempt records what serves, `switched` (following the new version; `failed` would pin
      // the old one, which a later rebuild of this environment would put back into service), and
      // says loudly that the old value may still be on the host (review R10 F2).
      if (err instanceof SwapCleanupError && finalAttempt) {
        // A serving file that may be stale (its rewrite failed: review R18 finding 3) was never
        // probed nor soaked, and its next restart may run the old value: not a clean switch.
        const stale = err.servingFileStale;
        const recorded = await rotations
          .setState(rot.id, d.deploymentId, 'switched', {
            ...(stale ? { reason: 'unhealthy_switch_unverified' } : {}),
            ...(err.mode ? { swapMode: err.mode } : {}),
            ...ctx,
          })
          .then(() => true)
          .catch((e: unknown) => {
            dlog.error({ reason: reasonOf(e) }, 'could not record the switch');
            return false;
          });
        dlog.error(
          { reason: err.message },
          stale
            ? 'deployment runs the new version, but its own env file could not be rewritten: a restart may run the old value, and the old slot or a kept previous file may still hold it'
            : "deployment switched to the new version, but the old slot's clean-up is not verified: the old value may remain on the host",
        );
        if (stale && recorded) await recordHealth('switch_unverified');
        return;
      }
      // The swap contract leaves the host on the old environment or the new one. A transient
      // failure (SSH dropped, the database away) stays as it is for the retry; the last attempt
      // records `failed` (pinned to the old version). From `switching`, a swap (this attempt's,
      // its swap back, or a cut attempt's) may have moved the host: which environment it runs, and
      // whether it serves, is not known, and set_state writes a health event that says so
      // (`rotation_failed`, state unknown; review R16 finding 4).
      if (classify(err) === 'permanent' || finalAttempt) {
        await rotations
          .setState(rot.id, d.deploymentId, 'failed', { reason: rotationReasonCode(err), ...ctx })
          .catch((e: unknown) => dlog.error({ reason: reasonOf(e) }, 'could not record the failure'));
        dlog.error(
          { reason: reasonOf(err) },
          switching
            ? 'rotation failed on this deployment after its swap began: which version its host runs, and whether it serves, is not known'
            : 'rotation failed on this deployment',
        );
        return;
      }
      throw err;
    } finally {
      await lease.release().catch(() => undefined);
    }
  };

  const run = async (input: {
    rotationId: string;
    jobId: string;
    signal: AbortSignal;
    finalAttempt: boolean;
  }): Promise<RotationOutcome> => {
    let rot = await rotations.get(input.rotationId);
    if (rot.state === 'running') {
      const open = rot.deployments.filter((d) => d.state === 'pending' || d.state === 'switching');
      log.info(
        { rotationId: rot.id, deployments: open.length, total: rot.deployments.length },
        'rotation fan-out',
      );
      const results = await mapLimit(open, deps.concurrency, (d) =>
        switchOne(rot, d, input.jobId, input.signal, input.finalAttempt),
      );
      const errors = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (errors.length > 0)
        // transient: the job is retried and resumes the deployments still open
        throw new OrchestratorError(
          'stack_locked',
          `${errors.length} deployment(s) of rotation ${rot.id} not done yet: ${reasonOf(errors[0]?.reason)}`,
        );
      rot = await rotations.finish(rot.id, { actor: 'orchestrator', jobId: input.jobId });
    }
    let retired: number[] = [];
    if (rot.leaked && !rot.oldRetiredAt) {
      // leak response: no grace period; a version a rolled-back deployment still runs is kept
      retired = (await rotations.retireOld(rot.id, { actor: 'orchestrator', jobId: input.jobId })).retired;
    }
    const outcome = outcomeOf(rot, retired);
    log.info(
      {
        rotationId: rot.id,
        switched: outcome.switched.length,
        rolledBack: outcome.rolledBack,
        failed: outcome.failed,
      },
      'rotation completed',
    );
    return outcome;
  };

  return { run };
};
export type RotationJob = ReturnType<typeof makeRotationJob>;
