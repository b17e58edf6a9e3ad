import {
  ConcurrentUpdateError,
  StackNotFoundError,
  type ConfigMap,
  type OutputMap,
  type PulumiFn,
  type StepEventMetadata,
} from '@pulumi/pulumi/automation';
import { OrchestratorError } from '../../errors';
import type { Logger } from '../../log';
import { makeOutputLog } from './pulumi-output-log';
import type { StackHandle, WorkspaceFactory } from './workspace';
import { makeSerialQueue } from './serial-queue';
import { mapStackError } from './stack-errors';
import { PULUMI_PROJECT } from './stack-names';

/**
 * Drives Pulumi stacks through the Automation API: one operation at a time per process (several
 * inline programs in one process have hung in past Pulumi releases), each with a deadline and an
 * AbortSignal, stale locks of crashed workers cancelled, errors mapped to the project's codes.
 */
export interface StackOpOptions {
  readonly signal?: AbortSignal;
  /** A child logger with context (deployment, step); the runner's own logger otherwise. */
  readonly log?: Logger;
  /** Values to scrub from the streamed output on top of Pulumi's own masking. */
  readonly redact?: readonly string[];
}

/**
 * Judges one step of a preview: a reason to refuse the whole `up`, or `undefined`. With a guard,
 * `up` previews first and applies nothing when any step is refused.
 */
export type PlanGuard = (step: StepEventMetadata) => string | undefined;

export interface StackRunner {
  /** Create or select the stack, write its config, `up`; the stack's outputs. */
  up(
    stackName: string,
    program: PulumiFn,
    config: ConfigMap,
    opts?: StackOpOptions & { readonly guard?: PlanGuard },
  ): Promise<OutputMap>;
  /** Destroy the stack's resources, then remove the stack. A missing stack is already done. */
  destroy(stackName: string, program: PulumiFn, opts?: StackOpOptions): Promise<'destroyed' | 'absent'>;
  /** The outputs of the last successful `up`, or `undefined` if there is no such stack. */
  outputs(stackName: string, program: PulumiFn, opts?: StackOpOptions): Promise<OutputMap | undefined>;
  /** Names of the project's stacks. */
  list(opts?: StackOpOptions): Promise<string[]>;
  /**
   * The stack's stored config, the resources in its state and its pending operations (from
   * `pulumi stack export`, no provider request), or `undefined` if there is no such stack.
   */
  inspect(stackName: string, program: PulumiFn, opts?: StackOpOptions): Promise<StackState | undefined>;
  /**
   * `pulumi refresh`: resources the provider no longer has leave the state; with
   * `clearPendingCreates`, creates an interrupted update left pending are dropped (the caller has
   * dealt with whatever they made). A missing stack is `absent`.
   */
  refresh(
    stackName: string,
    program: PulumiFn,
    opts?: StackOpOptions & { readonly clearPendingCreates?: boolean },
  ): Promise<'refreshed' | 'absent'>;
}

export interface StackResourceRef {
  readonly urn: string;
  readonly type: string;
  readonly id?: string;
}

export interface StackState {
  readonly config: ConfigMap;
  readonly resources: readonly StackResourceRef[];
  /** `pending_operations` of the checkpoint: `creating` ones may exist at the provider, untracked. */
  readonly pending: readonly { readonly type: string; readonly resource: StackResourceRef }[];
}

export interface StackRunnerDeps {
  readonly workspace: WorkspaceFactory;
  readonly log: Logger;
  /** A lock older than this was left by a crashed operation and is cancelled (PULUMI_STALE_LOCK_MS). */
  readonly staleLockMs: number;
  /** Deadline of one operation; shorter than `staleLockMs` (see `operationTimeoutMs`). */
  readonly timeoutMs: number;
  /** How long an aborted operation may take to stop (the CLI gets SIGINT and cancels cleanly). */
  readonly abortGraceMs?: number;
  readonly now?: () => number;
}

/**
 * The deadline of one operation, derived from the stale-lock age: half of it, at most 15 minutes
 * (a server create takes 60–90 s). A live operation then always ends before another worker could
 * take its lock for a crashed one's.
 */
export const operationTimeoutMs = (staleLockMs: number): number =>
  Math.min(15 * 60_000, Math.floor(staleLockMs / 2));

// `pulumi` DIY backends name each lock's creation time: "created by u@h (pid 1) at 2026-01-01T10:00:00Z".
const LOCK_TIME = / at (\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:Z|[+-]\d{2}:\d{2}))/g;

export const makeStackRunner = (deps: StackRunnerDeps): StackRunner => {
  if (deps.timeoutMs >= deps.staleLockMs)
    throw new OrchestratorError(
      'config_invalid',
      'a stack operation deadline must be shorter than PULUMI_STALE_LOCK_MS, or a live operation could lose its lock',
    );
  const now = deps.now ?? Date.now;
  const graceMs = deps.abortGraceMs ?? 60_000;
  const serial = makeSerialQueue();
  const args = (stackName: string, program: PulumiFn) => ({
    stackName,
    projectName: PULUMI_PROJECT,
    program,
  });

  /** Runs `fn` in the queue with a deadline; maps whatever it throws. */
  const operation = <T>(
    op: string,
    stack: string,
    opts: StackOpOptions | undefined,
    fn: (signal: AbortSignal, log: Logger) => Promise<T>,
  ): Promise<T> => {
    const log = (opts?.log ?? deps.log).child({ stack, op });
    return serial(async () => {
      const ctl = new AbortController();
      const outer = opts?.signal;
      const onOuter = (): void =>
        ctl.abort(
          new OrchestratorError('aborted', `pulumi ${op} of stack ${stack} was aborted`, {
            cause: outer?.reason,
          }),
        );
      const timer = setTimeout(
        () =>
          ctl.abort(
            new OrchestratorError(
              'timeout',
              `pulumi ${op} of stack ${stack} timed out after ${deps.timeoutMs} ms`,
            ),
          ),
        deps.timeoutMs,
      );
      if (outer?.aborted) onOuter();
      else outer?.addEventListener('abort', onOuter, { once: true });
      const started = now();
      try {
        const result = await settleOrGiveUp(fn(ctl.signal, log), ctl.signal, graceMs, log);
        log.info({ ms: now() - started }, 'stack operation done');
        return result;
      } catch (err) {
        const mapped =
          ctl.signal.aborted && ctl.signal.reason instanceof OrchestratorError
            ? ctl.signal.reason
            : mapStackError(err, { stack, op, redact: opts?.redact });
        log.warn(
          { code: mapped.code, ms: now() - started, reason: mapped.message },
          'stack operation failed',
        );
        throw mapped;
      } finally {
        clearTimeout(timer);
        outer?.removeEventListener('abort', onOuter);
      }
    }, opts?.signal);
  };

  /** Retries `run` once after cancelling the stack's lock, when the lock is older than `staleLockMs`. */
  const unlockingStale = async <T>(stack: StackHandle, log: Logger, run: () => Promise<T>): Promise<T> => {
    try {
      return await run();
    } catch (err) {
      if (!(err instanceof ConcurrentUpdateError)) throw err;
      const age = await lockAgeMs(stack, err);
      if (age === undefined || age < deps.staleLockMs) {
        const held = age === undefined ? '' : ` (held for ${Math.round(age / 1000)} s)`;
        // No `cause`: the SDK's error holds the CLI's whole output (see mapStackError).
        throw new OrchestratorError(
          'stack_locked',
          `stack ${stack.name} is locked by another operation${held}; retry later`,
        );
      }
      log.warn(
        { lockAgeMs: age, staleLockMs: deps.staleLockMs },
        'cancelling a stale lock left by a crashed operation',
      );
      await stack.cancel();
      return await run();
    }
  };

  const lockAgeMs = async (stack: StackHandle, err: ConcurrentUpdateError): Promise<number | undefined> => {
    const times = [...err.message.matchAll(LOCK_TIME)]
      .map((m) => Date.parse(m[1] ?? ''))
      .filter(Number.isFinite);
    // The youngest lock decides: one live operation is enough to wait.
    if (times.length > 0) return now() - Math.max(...times);
    // Pulumi Cloud says only "[409] Conflict"; its history shows the update in progress.
    const last = await stack.info(false).catch(() => undefined);
    return last?.result === 'in-progress' ? now() - new Date(last.startTime).getTime() : undefined;
  };

  return {
    up: (stackName, program, config, opts) =>
      operation('up', stackName, opts, async (signal, log) => {
        const secretKeys = Object.entries(config).filter(([, v]) => v.secret === true);
        if (secretKeys.length > 0)
          // setAllConfig puts values on the CLI's command line; a secret must reach the program another way.
          throw new OrchestratorError(
            'internal',
            `secret config ${secretKeys.map(([k]) => k).join(', ')} would be exposed`,
          );
        // The SDK listens for `abort` only once the CLI runs: an earlier abort must stop us here.
        signal.throwIfAborted();
        const stack = await deps.workspace.createOrSelectStack(args(stackName, program));
        signal.throwIfAborted();
        await stack.setAllConfig(config);
        signal.throwIfAborted();
        const guard = opts?.guard;
        if (guard) {
          const refusals: string[] = [];
          const preview = makeOutputLog(log, opts?.redact);
          try {
            await unlockingStale(stack, log, () =>
              stack.preview({
                onOutput: preview.stdout,
                onError: preview.stderr,
                onEvent: (event) => {
                  const step = event.resourcePreEvent?.metadata;
                  const reason = step && guard(step);
                  if (reason) refusals.push(reason);
                },
                signal,
                color: 'never',
                suppressProgress: true,
              }),
            );
          } finally {
            preview.flush();
          }
          if (refusals.length > 0)
            throw new OrchestratorError(
              'provider_rejected',
              `pulumi up of stack ${stackName} refused after preview, nothing changed: ${refusals.join('; ')}`,
            );
          signal.throwIfAborted();
        }
        const output = makeOutputLog(log, opts?.redact);
        try {
          const result = await unlockingStale(stack, log, () =>
            stack.up({
              onOutput: output.stdout,
              onError: output.stderr,
              signal,
              color: 'never',
              suppressProgress: true,
            }),
          );
          // Never log `result.summary`: the SDK fetches it with --show-secrets.
          log.info({ changes: result.summary?.resourceChanges }, 'stack is up');
          return result.outputs;
        } finally {
          output.flush();
        }
      }),

    destroy: (stackName, program, opts) =>
      operation('destroy', stackName, opts, async (signal, log) => {
        signal.throwIfAborted();
        const stack = await selectOrUndefined(() => deps.workspace.selectStack(args(stackName, program)));
        if (!stack) return 'absent' as const;
        signal.throwIfAborted();
        const output = makeOutputLog(log, opts?.redact);
        try {
          await unlockingStale(stack, log, () =>
            stack.destroy({
              onOutput: output.stdout,
              onError: output.stderr,
              signal,
              color: 'never',
              suppressProgress: true,
            }),
          );
        } finally {
          output.flush();
        }
        // Removed separately (not `destroy({ remove: true })`): a failed removal then retries as a
        // cheap destroy of nothing, and a stack removed by someone else in between is done.
        await selectOrUndefined(async () => deps.workspace.removeStack(stackName));
        return 'destroyed' as const;
      }),

    outputs: (stackName, program, opts) =>
      operation('outputs', stackName, opts, async () => {
        const stack = await selectOrUndefined(() => deps.workspace.selectStack(args(stackName, program)));
        return stack ? stack.outputs() : undefined;
      }),

    inspect: (stackName, program, opts) =>
      operation('inspect', stackName, opts, async () => {
        const stack = await selectOrUndefined(() => deps.workspace.selectStack(args(stackName, program)));
        if (!stack) return undefined;
        const config = await stack.getAllConfig();
        const exported = (await stack.exportStack()) as {
          deployment?: { resources?: unknown[]; pending_operations?: unknown[] };
        };
        const ref = (r: unknown): StackResourceRef | undefined => {
          const o = r as { urn?: unknown; type?: unknown; id?: unknown } | undefined;
          return typeof o?.urn === 'string' && typeof o.type === 'string'
            ? { urn: o.urn, type: o.type, ...(typeof o.id === 'string' ? { id: o.id } : {}) }
            : undefined;
        };
        const resources = (exported.deployment?.resources ?? [])
          .map(ref)
          .filter((r): r is StackResourceRef => r !== undefined);
        const pending = (exported.deployment?.pending_operations ?? []).flatMap((p) => {
          const o = p as { type?: unknown; resource?: unknown };
          const resource = ref(o.resource);
          return typeof o.type === 'string' && resource ? [{ type: o.type, resource }] : [];
        });
        return { config, resources, pending };
      }),

    refresh: (stackName, program, opts) =>
      operation('refresh', stackName, opts, async (signal, log) => {
        signal.throwIfAborted();
        const stack = await selectOrUndefined(() => deps.workspace.selectStack(args(stackName, program)));
        if (!stack) return 'absent' as const;
        const output = makeOutputLog(log, opts?.redact);
        try {
          await unlockingStale(stack, log, () =>
            stack.refresh({
              onOutput: output.stdout,
              onError: output.stderr,
              signal,
              color: 'never',
              suppressProgress: true,
              ...(opts?.clearPendingCreates ? { clearPendingCreates: true } : {}),
            }),
          );
        } finally {
          output.flush();
        }
        return 'refreshed' as const;
      }),

    list: (opts) =>
      operation('list', '*', opts, async () => (await deps.workspace.listStacks()).map((s) => s.name)),
  };
};

const selectOrUndefined = async <T>(select: () => Promise<T>): Promise<T | undefined> => {
  try {
    return await select();
  } catch (err) {
    if (err instanceof StackNotFoundError) return undefined;
    throw err;
  }
};

/**
 * Waits for `work`; once `signal` aborts, waits at most `graceMs` more. An operation that ignores
 * its signal (a hung inline program) then stops holding up the worker; the CLI may still be
 * running, which the log says so that ops can restart the process.
 */
const settleOrGiveUp = <T>(
  work: Promise<T>,
  signal: AbortSignal,
  graceMs: number,
  log: Logger,
): Promise<T> => {
  let grace: NodeJS.Timeout | undefined;
  const onAbort = (): void => {
    grace = setTimeout(() => {
      log.error(
        { graceMs },
        'aborted stack operation did not stop; the Pulumi CLI may still be running — restart this worker',
      );
      giveUp(signal.reason);
    }, graceMs);
  };
  let giveUp: (reason: unknown) => void = () => undefined;
  const gaveUp = new Promise<never>((_, reject) => (giveUp = reject));
  if (signal.aborted) onAbort();
  else signal.addEventListener('abort', onAbort, { once: true });
  return Promise.race([work, gaveUp]).finally(() => {
    clearTimeout(grace);
    signal.removeEventListener('abort', onAbort);
  });
};
