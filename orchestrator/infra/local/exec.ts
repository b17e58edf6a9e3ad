import { runCommand } from '../../command';
import { OrchestratorError } from '../../errors';

/**
 * Run a command of this machine (never a shell line): argv in, stdout out, a readable error on
 * failure. It runs in a process group of its own (see `runCommand`): a stop signal to the worker's
 * group must not kill the command a step is waiting on.
 */
export const run = async (
  cmd: string,
  args: readonly string[],
  opts: { timeoutMs?: number; allowFailure?: boolean } = {},
): Promise<{ stdout: string; stderr: string; code: number }> => {
  const r = await runCommand(cmd, args, { timeoutMs: opts.timeoutMs ?? 60_000 });
  if (r.code === 0 || (opts.allowFailure && r.code !== null))
    return { stdout: r.stdout, stderr: r.stderr, code: r.code };
  const why =
    r.failure === 'timeout' ? 'timed out' : r.code !== null ? `exit ${r.code}` : (r.failure ?? 'killed');
  throw new OrchestratorError(
    'internal',
    `${cmd} ${args.join(' ')} failed (${why}): ${r.stderr.trim() || r.failure || 'no output'}`,
  );
};

export const sleep = (ms: number, signal?: AbortSignal): Promise<void> =>
  new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(abortedError(signal));
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(abortedError(signal));
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });

export const abortedError = (signal?: AbortSignal): OrchestratorError =>
  new OrchestratorError('aborted', 'local host operation aborted', { cause: signal?.reason });

export const throwIfAborted = (signal?: AbortSignal): void => {
  if (signal?.aborted) throw abortedError(signal);
};

/** Errno code of a Node system error, if any. */
export const errno = (err: unknown): string | undefined => {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
};
