import { spawn } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import type { ApiClient, paths } from '../api/client';
import type { CliContext } from './cortexctl';

/**
 * The demo's API: `cortexctl api` as a detached child (so that the printed curl lines keep working
 * after the demo returns), its log in `.local/demo/api.log`, and the demo token in a 0600 curl
 * header file (`curl -H @<file>`), so that the token is never printed, never in a shell history and
 * never in a process's argv. `npm run demo -- --down` revokes the token and stops the API.
 */
export type ApiDeployment =
  paths['/v1/deployments/{id}']['get']['responses'][200]['content']['application/json'];

/** The demo's own folder: `CORTEX_DEMO_DIR`, else `<CORTEX_STATE_DIR>/demo`. */
export const demoDir = (config: { CORTEX_STATE_DIR: string; CORTEX_DEMO_DIR?: string | undefined }): string =>
  path.resolve(config.CORTEX_DEMO_DIR ?? path.join(config.CORTEX_STATE_DIR, 'demo'));
export const tokenHeaderFile = (dir: string): string => path.join(dir, 'api-token');

/** `Authorization: Bearer …` in a file only this user can read, for `curl -H @file`. */
export const writeTokenHeaderFile = async (dir: string, token: string): Promise<string> => {
  const file = tokenHeaderFile(dir);
  await mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await rm(file, { force: true });
  await writeFile(file, `Authorization: Bearer ${token}\n`, { mode: 0o600, flag: 'wx' });
  return file;
};

const healthy = async (url: string): Promise<boolean> =>
  fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1_000) }).then(
    (r) => r.ok,
    () => false,
  );

const portFree = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });

const anyPort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      s.close(() => resolve(typeof a === 'object' && a ? a.port : 0));
    });
  });

const alive = (pid: number | undefined): boolean => {
  if (!pid) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** The demo's API: the one a previous run left (when it still answers), or a new detached child. */
export const ensureDemoApi = async (opts: {
  /** The demo's folder (demoDir). */
  dir: string;
  env: NodeJS.ProcessEnv;
  preferredPort: number;
  previous?: { pid?: number; url?: string };
}): Promise<{ pid: number; url: string; reused: boolean }> => {
  const prev = opts.previous;
  if (prev?.pid && prev.url && alive(prev.pid) && (await healthy(prev.url)))
    return { pid: prev.pid, url: prev.url, reused: true };
  const port = (await portFree(opts.preferredPort)) ? opts.preferredPort : await anyPort();
  const url = `http://127.0.0.1:${port}`;
  const root = path.resolve(__dirname, '../..');
  await mkdir(opts.dir, { recursive: true, mode: 0o700 });
  const logFd = openSync(path.join(opts.dir, 'api.log'), 'a', 0o600);
  const child = spawn(
    process.execPath,
    [path.join(root, 'node_modules/tsx/dist/cli.mjs'), 'orchestrator/cli/cortexctl.ts', 'api'],
    {
      cwd: root,
      env: { ...opts.env, API_HOST: '127.0.0.1', API_PORT: String(port), LOG_LEVEL: 'info' },
      detached: true,
      stdio: ['ignore', logFd, logFd],
    },
  );
  closeSync(logFd);
  child.unref();
  const deadline = Date.now() + 60_000;
  while (!(await healthy(url))) {
    if (child.exitCode !== null)
      throw new Error(`the API exited (${child.exitCode}); see ${path.join(opts.dir, 'api.log')}`);
    if (Date.now() > deadline) throw new Error('the API did not answer /healthz within 60 s');
    await new Promise((r) => setTimeout(r, 250));
  }
  return { pid: child.pid ?? 0, url, reused: false };
};

/** SIGTERM to the demo's API (its own detached process group), then wait for it to go. */
/**
 * Is `pid` the demo's API (`cortexctl.ts api`, as ensureDemoApi starts it)? A saved pid may belong
 * to another process by now (a reboot, a state file from another machine): never signal that one.
 */
export const isDemoApiProcess = (pid: number | undefined): boolean => {
  if (!pid || !alive(pid)) return false;
  try {
    const argv = readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
    return argv.some((a) => a.endsWith('orchestrator/cli/cortexctl.ts')) && argv.includes('api');
  } catch {
    return false;
  }
};

export const stopDemoApi = async (pid: number | undefined): Promise<boolean> => {
  if (!isDemoApiProcess(pid)) return false;
  try {
    process.kill(-(pid as number), 'SIGTERM');
  } catch {
    process.kill(pid as number, 'SIGTERM');
  }
  for (let i = 0; i < 100 && alive(pid); i++) await new Promise((r) => setTimeout(r, 100));
  return true;
};

const mark = (status: string): string =>
  status === 'succeeded' || status === 'skipped' ? '✓' : status === 'failed' ? '✗' : '…';

/** Poll the deployment through the API (as the onboarding app would), printing each step as it moves. */
export const followViaApi = async (
  api: ApiClient,
  ctx: CliContext,
  id: string,
  until: (d: ApiDeployment) => boolean,
  timeoutMs: number,
): Promise<ApiDeployment> => {
  const printed = new Set<string>();
  const t0 = Date.now();
  for (;;) {
    const { data, response } = await api.GET('/v1/deployments/{id}', { params: { path: { id } } });
    if (!data) throw new Error(`GET /v1/deployments/${id} answered ${response.status}`);
    for (const s of data.steps.filter((x) => x.run === data.currentRun)) {
      const key = `${s.run}/${s.operation}/${s.step}/${s.status}/${s.attempt}`;
      if (printed.has(key)) continue;
      printed.add(key);
      const took = s.durationMs === null ? '' : ` ${(s.durationMs / 1000).toFixed(1)} s`;
      ctx.out(
        `  ${mark(s.status)} ${s.operation === 'deprovision' ? 'teardown ' : ''}${s.step}${took}${s.status === 'skipped' ? ' (already done)' : ''}${s.errorCode ? `: ${s.errorCode} (${s.error ?? ''})` : ''}\n`,
      );
    }
    if (until(data)) {
      ctx.out(`${data.status} after ${((Date.now() - t0) / 1000).toFixed(1)} s\n`);
      return data;
    }
    if (Date.now() - t0 > timeoutMs)
      throw new Error(`deployment ${id} is still ${data.status} after ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 500));
  }
};
