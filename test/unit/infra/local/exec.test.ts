import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { isOrchestratorError } from '../../../../orchestrator/errors';
import { run } from '../../../../orchestrator/infra/local/exec';

/**
 * `run` starts each command in a process group of its own. A stop signal sent to the worker's
 * group (a terminal's ^C, `kill -- -pgid`, systemd stopping the worker's control group) asks the
 * worker to finish its running step; it must not also kill the `ip`/`nft`/`systemctl` that step is
 * waiting on — the CI run where it did recorded the host step `failed` instead of finished.
 */

const ROOT = join(__dirname, '../../../..');

/** Field 5 of /proc/<pid>/stat: the process group; `sh`'s name has no space or parenthesis. */
const PGID_OF_SHELL = 'set -- $(cat /proc/$$/stat); echo "$1 $5"';

describe('run', () => {
  it('starts the command as the leader of a new process group, not in the caller’s', async () => {
    const { stdout } = await run('sh', ['-c', PGID_OF_SHELL]);
    const [pid, pgid] = stdout.trim().split(' ').map(Number);
    expect(pid).toBeGreaterThan(1);
    expect(pgid).toBe(pid);
    // Positive control: this process's own group differs, so the check above can fail.
    const { stdout: ours } = await run('sh', ['-c', `set -- $(cat /proc/${process.pid}/stat); echo "$5"`]);
    expect(Number(ours.trim())).not.toBe(pgid);
  });

  it('a SIGTERM to the caller’s whole process group does not reach the command', async () => {
    // A process of its own group, as a worker is: it ignores SIGTERM (a worker finishes its step),
    // runs a command that takes a second, and says what became of it.
    const script =
      "import { run } from './orchestrator/infra/local/exec';" +
      "process.on('SIGTERM', () => undefined);" +
      "run('sh', ['-c', 'sleep 1; echo done']).then(" +
      "(r) => { console.log('result ' + r.stdout.trim()); process.exit(0); }," +
      "(e) => { console.log('error ' + e.message); process.exit(1); });" +
      "console.log('running');";
    const child = spawn(join(ROOT, 'node_modules/.bin/tsx'), ['--eval', script], {
      cwd: ROOT,
      detached: true,
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    let out = '';
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    await new Promise<void>((resolve) =>
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('running')) resolve();
      }),
    );
    process.kill(-(child.pid ?? 0), 'SIGTERM');
    expect(await exited).toBe(0);
    expect(out).toContain('result done');
  });

  it('a failing command is a readable error naming the command and its exit code', async () => {
    const err = await run('sh', ['-c', 'echo nope >&2; exit 3']).catch((e: unknown) => e);
    expect(isOrchestratorError(err) && err.message).toBe('sh -c echo nope >&2; exit 3 failed (exit 3): nope');
  });
});
