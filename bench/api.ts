import { spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import path from 'node:path';
import { makeApiClient } from '../orchestrator/api/client';
import { makeTokenStore } from '../orchestrator/api/api-tokens';
import { loadConfig } from '../orchestrator/config';
import { makeRpcFromConfig } from '../orchestrator/db/rpc-from-config';

/**
 * `npm run bench -- api [seconds]`: the API as its own process (`cortexctl api`, as ops run it),
 * loaded over loopback by autocannon with 32 concurrent connections: requests per second and p99
 * latency for `GET /v1/deployments/:id` and for `POST /v1/secrets` (each request a new key, stored
 * through the audited SQL function), and the API process's RSS after each. Targets: ≥ 2,000 req/s
 * for reads, p99 < 50 ms. Between the two, the same read spread over 500 deployments (each request
 * one at random), a figure beside the issue's: there, concurrent requests rarely share a read.
 * Needs `npm run services:up`; writes bench rows (an organisation, its 501 deployments and keys,
 * audit rows) to the local database. The per-token rate limit is raised for
 * the run (it would otherwise be what is measured); request logging is at LOG_LEVEL (default warn).
 */
const CONNECTIONS = 32;
/** deployments the second read run spreads its requests over */
const SPREAD_DEPLOYMENTS = 500;

interface AutocannonResult {
  requests: { average: number; total: number };
  latency: { p50: number; p99: number; average: number; max: number };
  non2xx: number;
  errors: number;
  timeouts: number;
  '2xx': number;
}
type Autocannon = (opts: Record<string, unknown>) => Promise<AutocannonResult>;
// autocannon ships no types; this is the part of its programmatic API used here
// eslint-disable-next-line @typescript-eslint/no-require-imports
const autocannon = require('autocannon') as Autocannon;

const freePort = (): Promise<number> =>
  new Promise((resolve, reject) => {
    const s = createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const a = s.address();
      const port = typeof a === 'object' && a ? a.port : 0;
      s.close(() => resolve(port));
    });
  });

const rssMiB = async (pid: number): Promise<{ rss: number; peak: number }> => {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? 0);
  return { rss: kb('VmRSS') / 1024, peak: kb('VmHWM') / 1024 };
};

/** CPU seconds (user + system) the process has used: per request, a figure the machine's load does not inflate. */
const cpuSeconds = async (pid: number): Promise<number> => {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / 100; // utime, stime in clock ticks (USER_HZ = 100)
};

const loadAverage = async (): Promise<string> =>
  (await readFile('/proc/loadavg', 'utf8')).split(' ')[0] ?? '?';

/** The pid of the node process serving the API (npx/tsx may sit in between). */
const serverPid = async (child: ChildProcess, port: number): Promise<number> => {
  // tsx runs the script in a child node process: take the descendant that holds the port's socket
  const { execFile } = await import('node:child_process');
  const out = await new Promise<string>((resolve) =>
    execFile('ss', ['-Hltnp', `sport = :${port}`], (_e, stdout) => resolve(stdout)),
  );
  const pid = Number(/pid=(\d+)/.exec(out)?.[1]);
  return pid || (child.pid ?? 0);
};

const startApiProcess = async (
  env: NodeJS.ProcessEnv,
  port: number,
): Promise<{ child: ChildProcess; url: string }> => {
  const root = path.resolve(__dirname, '..');
  // BENCH_API_NODE_ARGS (e.g. `--cpu-prof --cpu-prof-dir=/tmp/prof`): node flags for the API
  // process, which then runs in one node process (`node <flags> --import tsx …`) instead of under
  // tsx's CLI (a parent that spawns it), so that the flags reach the process that serves.
  const nodeArgs = (env.BENCH_API_NODE_ARGS ?? '').split(' ').filter(Boolean);
  const child = spawn(
    process.execPath,
    nodeArgs.length > 0
      ? [...nodeArgs, '--import', 'tsx', 'orchestrator/cli/cortexctl.ts', 'api']
      : [path.join(root, 'node_modules/tsx/dist/cli.mjs'), 'orchestrator/cli/cortexctl.ts', 'api'],
    {
      cwd: root,
      env: { ...env, API_PORT: String(port), API_HOST: '127.0.0.1' },
      stdio: ['ignore', 'ignore', 'inherit'],
    },
  );
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60_000;
  for (;;) {
    if (child.exitCode !== null) throw new Error(`the API process exited (${child.exitCode})`);
    const ok = await fetch(`${url}/healthz`).then(
      (r) => r.ok,
      () => false,
    );
    if (ok) return { child, url };
    if (Date.now() > deadline) throw new Error('the API did not answer /healthz within 60 s');
    await new Promise((r) => setTimeout(r, 250));
  }
};

const line = (label: string, r: AutocannonResult): string =>
  `${label.padEnd(28)} ${r.requests.average.toFixed(0).padStart(6)} req/s   p50 ${String(r.latency.p50).padStart(3)} ms   p99 ${String(r.latency.p99).padStart(3)} ms   max ${String(r.latency.max).padStart(4)} ms   ${r['2xx']} ok, ${r.non2xx} non-2xx, ${r.errors} errors, ${r.timeouts} timeouts`;

export const run = async (args: string[]): Promise<void> => {
  const seconds = Number(args[0] ?? 10);
  const env = {
    ...process.env,
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'warn',
    API_RATE_LIMIT: '9999999/min',
  };
  const config = loadConfig(env);
  const db = makeRpcFromConfig(config);
  const tag = randomUUID().slice(0, 8);
  let api: { child: ChildProcess; url: string } | undefined;
  let tokenId: string | undefined;
  const tokens = makeTokenStore({ rpc: db.rpc });
  try {
    const org = await db.rpc<{ id: string }>('organizations__create', { p_name: `bench-api-${tag}` });
    const tok = await tokens.create(
      { orgId: org.id, name: 'bench api', scopes: ['secrets:write', 'deployments:read'] },
      'bench',
    );
    tokenId = tok.id;
    const dep = await db.rpc<{ id: string }>('deployments__create', {
      p_org_id: org.id,
      p_name: `bench-api-${tag}`,
      p_subdomain: `bench-api-${tag}`,
    });
    // For the second read run: many deployments, each request one at random (concurrent
    // requests then rarely ask for the same one, so they rarely share a Postgres read).
    const many: string[] = [];
    for (let i = 0; i < SPREAD_DEPLOYMENTS; i += 1)
      many.push(
        (
          await db.rpc<{ id: string }>('deployments__create', {
            p_org_id: org.id,
            p_name: `bench-api-${tag}-${i}`,
            p_subdomain: `bench-api-${tag}-${i}`,
          })
        ).id,
      );
    const port = await freePort();
    api = await startApiProcess(env, port);
    const pid = await serverPid(api.child, port);
    const headers = { authorization: `Bearer ${tok.token}`, 'content-type': 'application/json' };
    // one call through the typed client first: the path and answer are the documented ones
    const check = await makeApiClient({ baseUrl: api.url, token: tok.token }).GET('/v1/deployments/{id}', {
      params: { path: { id: dep.id } },
    });
    if (check.response.status !== 200)
      throw new Error(`GET /v1/deployments/:id answered ${check.response.status}`);

    console.log(
      `API process pid ${pid} on ${api.url}; ${CONNECTIONS} connections, ${seconds} s each; RSS at start ${(await rssMiB(pid)).rss.toFixed(0)} MiB`,
    );
    let cpu0 = await cpuSeconds(pid);
    const read = await autocannon({
      url: `${api.url}/v1/deployments/${dep.id}`,
      connections: CONNECTIONS,
      duration: seconds,
      headers,
    });
    console.log(line('GET /v1/deployments/:id', read));
    let cpu = (await cpuSeconds(pid)) - cpu0;
    console.log(
      `  API CPU ${((cpu * 1000) / Math.max(1, read['2xx'])).toFixed(2)} ms per request (≈ ${(read['2xx'] / Math.max(cpu, 0.01)).toFixed(0)} req/s per busy core); load average ${await loadAverage()}`,
    );
    const afterRead = await rssMiB(pid);
    console.log(`  API RSS ${afterRead.rss.toFixed(0)} MiB (peak ${afterRead.peak.toFixed(0)} MiB)`);
    // The same endpoint, each request for one of SPREAD_DEPLOYMENTS deployments at random: what
    // concurrent reads of ONE deployment share (orchestrator/api/read-coalescer.ts) is mostly out
    // of play here. Reported beside the figure above, not instead of it.
    cpu0 = await cpuSeconds(pid);
    const spread = await autocannon({
      url: `${api.url}/v1/deployments/${dep.id}`,
      connections: CONNECTIONS,
      duration: seconds,
      headers,
      requests: [
        {
          setupRequest: (req: Record<string, unknown>) => ({
            ...req,
            path: `/v1/deployments/${many[Math.floor(Math.random() * many.length)] ?? dep.id}`,
          }),
        },
      ],
    });
    console.log(line(`  same, ${SPREAD_DEPLOYMENTS} deployments`, spread));
    cpu = (await cpuSeconds(pid)) - cpu0;
    console.log(
      `  API CPU ${((cpu * 1000) / Math.max(1, spread['2xx'])).toFixed(2)} ms per request (≈ ${(spread['2xx'] / Math.max(cpu, 0.01)).toFixed(0)} req/s per busy core); load average ${await loadAverage()}`,
    );
    cpu0 = await cpuSeconds(pid);
    const write = await autocannon({
      url: `${api.url}/v1/secrets`,
      method: 'POST',
      connections: CONNECTIONS,
      duration: seconds,
      headers,
      // a new key each request: [<id>] is replaced by a fresh id per request
      idReplacement: true,
      body: JSON.stringify({ name: 'bench [<id>]', provider: 'other', value: `bench-value-[<id>]-${tag}` }),
    });
    console.log(line('POST /v1/secrets', write));
    cpu = (await cpuSeconds(pid)) - cpu0;
    console.log(
      `  API CPU ${((cpu * 1000) / Math.max(1, write['2xx'])).toFixed(2)} ms per request (≈ ${(write['2xx'] / Math.max(cpu, 0.01)).toFixed(0)} req/s per busy core); load average ${await loadAverage()}`,
    );
    const afterWrite = await rssMiB(pid);
    console.log(`  API RSS ${afterWrite.rss.toFixed(0)} MiB (peak ${afterWrite.peak.toFixed(0)} MiB)`);
    const ok = read.requests.average >= 2000 && read.latency.p99 < 50;
    console.log(
      `targets (reads ≥ 2,000 req/s, p99 < 50 ms): ${ok ? 'met' : 'NOT met'}; keys stored: ${write['2xx']}`,
    );
  } finally {
    if (api && api.child.exitCode === null) {
      api.child.kill('SIGTERM');
      await new Promise((r) => api?.child.once('exit', r));
    }
    if (tokenId) await tokens.revoke(tokenId, 'bench').catch(() => undefined);
    await db.close();
  }
};
