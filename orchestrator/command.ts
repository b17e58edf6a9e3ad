import { spawn } from 'node:child_process';

/**
 * Run a program of this machine (argv, never a shell line) in a process group of its own, and
 * collect what it printed.
 *
 * Why a group of its own: a SIGTERM or ^C sent to the worker's process group (a terminal,
 * `kill -- -pgid`, systemd stopping the worker's control group) asks the worker to finish its
 * running step; it must not also kill the `ip`, `nft`, `systemctl` or `knotc` that step waits on,
 * which would fail the very step the worker was allowed to finish. (`execFile` cannot do this: it
 * does not pass `detached` on to `spawn`.) The command's life stays bounded by `timeoutMs`, after
 * which its whole group is killed.
 */
export interface CommandResult {
  readonly stdout: string;
  readonly stderr: string;
  /** The exit code; null when the program could not start, was killed, or overflowed its output. */
  readonly code: number | null;
  /** Why there is no exit code: `timeout`, `output_too_large`, a signal name, or the spawn error. */
  readonly failure?: string;
}

export const runCommand = (
  cmd: string,
  args: readonly string[],
  opts: { timeoutMs: number; maxBytes?: number; input?: string },
): Promise<CommandResult> =>
  new Promise((resolve) => {
    const maxBytes = opts.maxBytes ?? 16 * 1024 * 1024;
    const child = spawn(cmd, args, {
      detached: true,
      stdio: [opts.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let bytes = 0;
    let failure: string | undefined;
    let settled = false;
    const killGroup = (why: string): void => {
      failure ??= why;
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    };
    const timer = setTimeout(() => killGroup('timeout'), opts.timeoutMs);
    const collect =
      (into: Buffer[]) =>
      (d: Buffer): void => {
        bytes += d.length;
        if (bytes > maxBytes) return killGroup('output_too_large');
        into.push(d);
      };
    child.stdout?.on('data', collect(out));
    child.stderr?.on('data', collect(err));
    const finish = (code: number | null, why?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const f = failure ?? why;
      resolve({
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        code: f === undefined ? code : null,
        ...(f === undefined ? {} : { failure: f }),
      });
    };
    child.once('error', (e) => finish(null, e.message));
    child.once('close', (code, signal) => finish(code, code === null ? (signal ?? 'killed') : undefined));
    if (opts.input !== undefined) {
      // The program may exit before reading its input: its exit code says so; a broken pipe on
      // stdin must not become an unhandled error.
      child.stdin?.on('error', () => undefined);
      child.stdin?.end(opts.input);
    }
  });
