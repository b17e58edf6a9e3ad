import { execFile } from 'node:child_process';
import { OrchestratorError } from '../../errors';

/** Run a command of this machine (never a shell line): argv in, stdout out, a readable error on failure. */
export const run = (
  cmd: string,
  args: readonly string[],
  opts: { timeoutMs?: number; allowFailure?: boolean } = {},
): Promise<{ stdout: string; stderr: string; code: number }> =>
  new Promise((resolve, reject) => {
    execFile(
      cmd,
      args,
      { timeout: opts.timeoutMs ?? 60_000, maxBuffer: 16 * 1024 * 1024, encoding: 'utf8' },
      (err, stdout, stderr) => {
        if (!err) return resolve({ stdout, stderr, code: 0 });
        const code = typeof err.code === 'number' ? err.code : -1;
        if (opts.allowFailure && code !== -1) return resolve({ stdout, stderr, code });
        reject(
          new OrchestratorError(
            'internal',
            `${cmd} ${args.join(' ')} failed (${err.killed ? 'timed out' : `exit ${code}`}): ${stderr.trim() || err.message}`,
            { cause: err },
          ),
        );
      },
    );
  });

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
