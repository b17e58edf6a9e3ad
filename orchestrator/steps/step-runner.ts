import { randomUUID } from 'node:crypto';
import { OrchestratorError, classify, isOrchestratorError } from '../errors';
import type { Logger } from '../log';
import { metrics, secondsSince } from '../metrics/metrics';
import type { Deployment, DeploymentStore, Operation } from '../deployments/deployment-store';

/**
 * One runner for every operation: each step is check → apply → record. Finished steps are
 * recorded in Postgres (deployment_steps) and skipped by a retry, which therefore resumes at the
 * first unfinished step — on this worker or on another after a crash. Each step has a deadline.
 * Between steps the runner re-reads the deployment: a provision whose deployment was meanwhile
 * sent to deprovisioning stops there (the deprovision wins), and a worker shutting down hands the
 * job back at a step boundary rather than in the middle of one.
 */
export interface StepContext {
  readonly deployment: Deployment;
  readonly run: number;
  readonly jobId: string;
  readonly signal: AbortSignal;
  readonly log: Logger;
  /** What steps of one run may share (an SSH connection); released when the run ends. */
  readonly scope?: RunScope;
  /** This run's fencing token: pass it to every write of the deployment's record. */
  readonly token?: string;
}

/** Values shared by the steps of one run, each with its release, run when the run ends however it ends. */
export interface RunScope {
  get<T>(key: string): T | undefined;
  set<T>(key: string, value: T, release: (value: T) => Promise<void>): void;
  drop(key: string): Promise<void>;
}

const makeRunScope = (): RunScope & { releaseAll(): Promise<void> } => {
  const items = new Map<string, { value: unknown; release: (v: unknown) => Promise<void> }>();
  const drop = async (key: string): Promise<void> => {
    const it = items.get(key);
    items.delete(key);
    if (it) await it.release(it.value).catch(() => undefined);
  };
  return {
    get: <T>(key: string) => items.get(key)?.value as T | undefined,
    set: <T>(key: string, value: T, release: (value: T) => Promise<void>) => {
      void drop(key);
      items.set(key, { value, release: release as (v: unknown) => Promise<void> });
    },
    drop,
    releaseAll: async () => {
      for (const k of [...items.keys()]) await drop(k);
    },
  };
};

export interface StepDef {
  readonly name: string;
  readonly deadlineMs: number;
  /** True when the step's effect is already in place: the step is recorded `skipped`. */
  readonly check?: (ctx: StepContext) => Promise<boolean>;
  readonly apply: (ctx: StepContext) => Promise<void>;
}

export type RunOutcome = 'completed' | 'done' | 'stopped' | 'superseded';

/** Thrown at a step boundary while the worker shuts down: the job goes back to the queue. */
export class ShutdownRequested extends Error {
  override readonly name = 'ShutdownRequested';
}

export interface RunnerHooks {
  /** Called once a step is recorded as started, before its check. */
  readonly onStepStarted?: (step: string, deploymentId: string) => Promise<void>;
  /** Called once a step's effect is in place, before it is recorded as finished. */
  readonly onStepApplied?: (step: string, deploymentId: string) => Promise<void>;
}

/** A failure reason fit for the record: our errors' messages never quote a value; others are not trusted. */
export const reasonOf = (err: unknown): string => {
  const raw = isOrchestratorError(err)
    ? `${err.code}: ${err.message}`
    : `unexpected error (${err instanceof Error ? err.name : typeof err})`;
  // C0 and C1 controls (U+009B is a CSI): a reason is printed on operators' terminals.
  return raw.replace(/[\u0000-\u001f\u007f-\u009f]+/g, ' ').slice(0, 500);
};

const withDeadline = async <T>(
  step: string,
  ms: number,
  outer: AbortSignal | undefined,
  fn: (signal: AbortSignal) => Promise<T>,
): Promise<T> => {
  const ctl = new AbortController();
  const onOuter = () => ctl.abort();
  outer?.addEventListener('abort', onOuter, { once: true });
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      ctl.abort();
      reject(
        new OrchestratorError('timeout', `step ${step} did not finish within ${Math.round(ms / 1000)} s`),
      );
    }, ms);
  });
  const work = fn(ctl.signal);
  try {
    return await Promise.race([work, deadline]);
  } catch (err) {
    if (ctl.signal.aborted) {
      // The step was told to stop; give it a bounded moment to do so before the failure is
      // recorded and the lease released, so that it does not run on beside the retry.
      const grace = Math.max(1_000, Math.min(ms / 4, 30_000));
      let graceTimer: NodeJS.Timeout | undefined;
      await Promise.race([
        work.then(
          () => undefined,
          () => undefined,
        ),
        new Promise<void>((r) => (graceTimer = setTimeout(r, grace))),
      ]);
      clearTimeout(graceTimer);
    }
    throw err;
  } finally {
    clearTimeout(timer);
    outer?.removeEventListener('abort', onOuter);
  }
};

export const makeStepRunner = (deps: { store: DeploymentStore; log: Logger; hooks?: RunnerHooks }) => {
  const { store, hooks } = deps;

  const run = async (opts: {
    operation: Operation;
    deploymentId: string;
    steps: readonly StepDef[];
    jobId: string;
    /** This is the job's last attempt: a transient failure now fails the deployment. */
    finalAttempt: boolean;
    /** True once the worker is shutting down. */
    stopping?: () => boolean;
    signal?: AbortSignal;
  }): Promise<RunOutcome> => {
    const log = deps.log.child({
      deploymentId: opts.deploymentId,
      operation: opts.operation,
      jobId: opts.jobId,
    });
    // Fresh per run: a run that another one took over (its Redis lease lost in a flush or a
    // failover) finds every later write refused with `superseded`, and stops.
    const token = randomUUID();
    const supersededBy = (step: string): RunOutcome => {
      log.warn({ step }, 'another worker took this operation over; stopping without writing');
      return 'superseded';
    };
    const begun = await store.begin(opts.deploymentId, opts.operation, token);
    if (begun.action !== 'run') {
      log.info({ action: begun.action, status: begun.deployment.status }, 'nothing to run');
      return begun.action === 'done' ? 'done' : 'stopped';
    }
    const { run: runNo } = begun;
    const scope = makeRunScope();
    try {
      return await runSteps(runNo, scope);
    } finally {
      await scope.releaseAll();
    }

    async function runSteps(runNo: number, scope: RunScope): Promise<RunOutcome> {
      for (const step of opts.steps) {
        const deployment = await store.get(opts.deploymentId);
        const expected = opts.operation === 'provision' ? 'provisioning' : 'deprovisioning';
        if (deployment.status !== expected || deployment.currentRun !== runNo) {
          log.info(
            { status: deployment.status, step: step.name },
            'operation superseded; stopping at a step boundary',
          );
          return 'superseded';
        }
        const done = deployment.steps.some(
          (s) =>
            s.run === runNo && s.step === step.name && (s.status === 'succeeded' || s.status === 'skipped'),
        );
        if (done) continue;
        if (opts.stopping?.()) throw new ShutdownRequested(`shutting down before step ${step.name}`);

        const slog = log.child({ step: step.name });
        try {
          await store.stepStarted(opts.deploymentId, runNo, step.name, token);
        } catch (err) {
          if (isOrchestratorError(err) && err.code === 'superseded') return supersededBy(step.name);
          throw err;
        }
        const t0 = Date.now();
        try {
          await hooks?.onStepStarted?.(step.name, opts.deploymentId);
          const skipped = await withDeadline(step.name, step.deadlineMs, opts.signal, async (signal) => {
            const ctx: StepContext = {
              deployment,
              run: runNo,
              jobId: opts.jobId,
              signal,
              log: slog,
              scope,
              token,
            };
            if (step.check && (await step.check(ctx))) return true;
            await step.apply(ctx);
            return false;
          });
          await hooks?.onStepApplied?.(step.name, opts.deploymentId);
          await store.stepFinished(
            opts.deploymentId,
            runNo,
            step.name,
            skipped ? 'skipped' : 'succeeded',
            undefined,
            undefined,
            token,
          );
          slog.info({ ms: Date.now() - t0, skipped }, 'step finished');
          metrics.stepDuration.observe(
            { operation: opts.operation, step: step.name, outcome: skipped ? 'skipped' : 'succeeded' },
            secondsSince(t0),
          );
        } catch (err) {
          // Taken over: the other run owns the record now; this one writes nothing more.
          if (isOrchestratorError(err) && err.code === 'superseded') return supersededBy(step.name);
          const permanent = classify(err) === 'permanent';
          const final = permanent || opts.finalAttempt;
          const reason = reasonOf(err);
          slog.warn({ ms: Date.now() - t0, permanent, final, reason }, 'step failed');
          metrics.stepDuration.observe(
            { operation: opts.operation, step: step.name, outcome: 'failed' },
            secondsSince(t0),
          );
          await store
            .stepFinished(opts.deploymentId, runNo, step.name, 'failed', reason, final, token)
            .catch((e: unknown) => slog.error({ reason: reasonOf(e) }, 'could not record the failure'));
          throw err;
        }
      }
      return 'completed';
    }
  };

  return { run };
};
export type StepRunner = ReturnType<typeof makeStepRunner>;
