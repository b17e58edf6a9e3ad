import { spawn } from 'node:child_process';
import { mkdir, unlink } from 'node:fs/promises';
import { dirname } from 'node:path';
import { OrchestratorError } from '../../errors';
import { abortedError, errno } from './exec';

/*
 * A kernel lock (flock(2)) held by a tiny child process, because Node has no flock of its own.
 * The child locks the file, says "locked", then waits on its stdin: closing stdin releases the lock,
 * and so does the death of this process (the pipe closes), so a crash never leaves a stale lock.
 * The holder unlinks the file before releasing; a waiter that then wins the lock on the unlinked
 * inode sees that the path no longer names its inode and locks the path again. So lock files never
 * pile up, and exclusion holds across unlinks.
 */
const LOCK_SCRIPT = `
while :; do
  exec 9>>"$1" || exit 71
  flock 9 || exit 71
  [ "$(stat -L -c %d:%i /proc/self/fd/9)" = "$(stat -c %d:%i "$1" 2>/dev/null)" ] && break
  exec 9>&-
done
echo locked
exec cat >/dev/null`;

export type Release = () => Promise<void>;

export const acquireFileLock = async (
  file: string,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<Release> => {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  // Own process group, so a timeout or abort can end the shell and the flock(1) it waits in.
  const child = spawn('sh', ['-c', LOCK_SCRIPT, 'cortex-lock', file], {
    stdio: ['pipe', 'pipe', 'pipe'],
    detached: true,
  });
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  let stderr = '';
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const killGroup = (): void => {
    try {
      if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
    } catch (err) {
      if (errno(err) !== 'ESRCH') throw err;
    }
  };
  await new Promise<void>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => {
      finish(new OrchestratorError('timeout', `timed out waiting for lock ${file}`));
    }, opts.timeoutMs ?? 600_000);
    const onAbort = (): void => finish(abortedError(opts.signal));
    const finish = (err?: Error): void => {
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      child.stdout.removeAllListeners('data');
      child.removeAllListeners('exit');
      if (err) {
        killGroup();
        reject(err);
      } else resolve();
    };
    if (opts.signal?.aborted) return finish(abortedError(opts.signal));
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('locked\n')) finish();
    });
    child.once('exit', (code) =>
      finish(
        new OrchestratorError('internal', `lock ${file} failed (exit ${String(code)}): ${stderr.trim()}`),
      ),
    );
    child.once('error', (err) => finish(err));
  });
  let released = false;
  return async () => {
    if (released) return;
    released = true;
    try {
      await unlink(file);
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw err;
    } finally {
      child.stdin.end();
      await exited;
    }
  };
};

export const withFileLock = async <T>(
  file: string,
  fn: () => Promise<T>,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {},
): Promise<T> => {
  const release = await acquireFileLock(file, opts);
  try {
    return await fn();
  } finally {
    await release();
  }
};

/** Serialises async work per key inside this process (the file lock does it across processes). */
export const makeKeyedQueue = () => {
  const tails = new Map<string, Promise<unknown>>();
  return <T>(key: string, fn: () => Promise<T>): Promise<T> => {
    const prev = tails.get(key) ?? Promise.resolve();
    const next = prev.then(fn, fn);
    const tail = next.catch(() => undefined);
    tails.set(key, tail);
    void tail.then(() => {
      if (tails.get(key) === tail) tails.delete(key);
    });
    return next;
  };
};
