import { spawn, type ChildProcess } from 'node:child_process';
import { isDemoApiProcess, stopDemoApi } from '../../../orchestrator/cli/demo-api';

/**
 * `npm run demo -- --down` stops the demo's API by the pid its state file saved (review R8 #9): a
 * pid that now belongs to another process (a reboot, a reused pid) is never signalled.
 */
const children: ChildProcess[] = [];
const start = (args: string[]): ChildProcess => {
  const c = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', ...args], {
    stdio: 'ignore',
    detached: true,
  });
  children.push(c);
  return c;
};
const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};
afterAll(() => {
  for (const c of children) if (c.pid && alive(c.pid)) process.kill(c.pid, 'SIGKILL');
});

describe('the demo API by its saved pid', () => {
  it('another process at that pid is not the demo API and is left running', async () => {
    const other = start(['something', 'else']);
    await new Promise((r) => setTimeout(r, 200));
    expect(isDemoApiProcess(other.pid)).toBe(false);
    expect(await stopDemoApi(other.pid)).toBe(false);
    expect(alive(other.pid as number)).toBe(true);
    expect(isDemoApiProcess(process.pid)).toBe(false);
    expect(isDemoApiProcess(undefined)).toBe(false);
  });

  it('the demo API (cortexctl.ts api) is recognised and stopped', async () => {
    const api = start(['/x/orchestrator/cli/cortexctl.ts', 'api']);
    await new Promise((r) => setTimeout(r, 200));
    expect(isDemoApiProcess(api.pid)).toBe(true);
    expect(await stopDemoApi(api.pid)).toBe(true);
    expect(alive(api.pid as number)).toBe(false);
  });
});
