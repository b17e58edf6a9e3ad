import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RESERVED_ENV_NAMES, RESERVED_PREFIXES, renderEnvFile } from '../../../orchestrator/remote/env-file';
import {
  echoRuntime,
  openclawRuntime,
  RESERVED_ENV_NAMES_FILE,
  runtimeProfile,
} from '../../../templates/runtime-profiles';
import { canary } from '../../support/canary';

const TEMPLATES = join(__dirname, '../../../templates');

const freePort = async (): Promise<number> => {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const p = (s.address() as AddressInfo).port;
  await new Promise((r) => s.close(r));
  return p;
};

const fetchText = (port: number, path: string): Promise<{ status: number; body: string }> =>
  new Promise((resolve, reject) => {
    get({ host: '127.0.0.1', port, path }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    }).on('error', reject);
  });

/** Start the echo agent from templates/runtimes (as the unit would from /usr/local/lib/cortex). */
const startEcho = async (port: number, env: Record<string, string>): Promise<ChildProcess> => {
  const rt = echoRuntime(port);
  const child = spawn(
    'python3',
    [...rt.execStart.slice(1)].map((a) => a.replace('/usr/local/lib/cortex', join(TEMPLATES, 'runtimes'))),
    { env, stdio: ['ignore', 'ignore', 'pipe'] },
  );
  for (let i = 0; i < 100; i++) {
    if (await fetchText(port, '/health').catch(() => undefined)) return child;
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  throw new Error('echo agent did not answer');
};

/** Every digest or encoding of `value` a careless report could publish. */
const derivedForms = (value: string): string[] => {
  const b = Buffer.from(value, 'utf8');
  return [
    value,
    b.toString('base64'),
    b.toString('hex'),
    ...['md5', 'sha1', 'sha256', 'sha512'].flatMap((alg) => {
      const d = createHash(alg).update(b).digest();
      return [d.toString('hex'), d.toString('base64'), d.toString('hex').slice(0, 16)];
    }),
  ];
};

describe('echo runtime (python3 stdlib agent)', () => {
  let child: ChildProcess | undefined;
  afterEach(() => {
    child?.kill('SIGKILL');
    child = undefined;
  });

  it('reports the names of its variables and nothing derived from a value, on 127.0.0.1', async () => {
    const port = await freePort();
    const key = canary();
    const env: Record<string, string> = {
      ANTHROPIC_API_KEY: key,
      QUOTED: 'a "b" \\ $c #d =e f',
      EMPTY: '',
      // Set by the service manager in production: hidden from the report.
      PATH: '/usr/bin:/bin',
      INVOCATION_ID: 'abc',
      LC_ALL: 'C.UTF-8',
    };
    child = await startEcho(port, env);
    const res = await fetchText(port, '/health');
    expect(res.status).toBe(200);
    expect(JSON.parse(res.body)).toEqual({
      status: 'ok',
      runtime: 'echo',
      env: [{ name: 'ANTHROPIC_API_KEY' }, { name: 'EMPTY' }, { name: 'QUOTED' }],
    });
    for (const form of derivedForms(key)) expect(res.body).not.toContain(form);
    for (const form of derivedForms(env.QUOTED ?? '').slice(1)) expect(res.body).not.toContain(form);
    expect((await fetchText(port, '/other')).status).toBe(404);
  });

  it('/slow answers after the time asked for, within bounds', async () => {
    const port = await freePort();
    child = await startEcho(port, {});
    const t0 = Date.now();
    const res = await fetchText(port, '/slow?ms=400');
    expect({ status: res.status, body: JSON.parse(res.body) as unknown }).toEqual({
      status: 200,
      body: { status: 'ok', sleptMs: 400 },
    });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
    for (const bad of ['10001', '-1', '1e3', 'abc', ''])
      expect((await fetchText(port, `/slow?ms=${bad}`)).status).toBe(400);
  });

  it('on SIGTERM finishes the request in flight, refuses new ones and exits 0', async () => {
    const port = await freePort();
    child = await startEcho(port, {});
    const proc = child;
    const exited = new Promise<number | null>((r) => proc.once('exit', (code) => r(code)));
    const slow = fetchText(port, '/slow?ms=1500');
    await new Promise((r) => setTimeout(r, 300));
    proc.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 300));
    // The listening socket is closed at once: nothing new is accepted while the drain runs.
    const late = await fetchText(port, '/health').catch((e: NodeJS.ErrnoException) => e.code);
    expect(late).toBe('ECONNREFUSED');
    expect((await slow).status).toBe(200);
    expect(await exited).toBe(0);
  });

  it('binds to 127.0.0.1 unless told otherwise', () => {
    const src = readFileSync(join(TEMPLATES, 'runtimes/echo-agent.py'), 'utf8');
    expect(src).toMatch(/add_argument\("--bind", default="127\.0\.0\.1"\)/);
    expect(echoRuntime().execStart.join(' ')).not.toContain('--bind');
  });

  it('hides exactly the reserved names, from the one list env-file.ts refuses them by', async () => {
    // The file shipped beside the agent is the file env-file.ts reads.
    const shipped = echoRuntime().files.find((f) => f.path.endsWith(`/${RESERVED_ENV_NAMES_FILE}`));
    expect(shipped?.content).toBe(readFileSync(join(TEMPLATES, 'runtimes', RESERVED_ENV_NAMES_FILE), 'utf8'));
    const list = JSON.parse(shipped?.content ?? '{}') as { names: string[]; prefixes: string[] };
    expect(new Set(list.names)).toEqual(RESERVED_ENV_NAMES);
    expect(list.prefixes).toEqual(RESERVED_PREFIXES);
    // The names systemd >= 254 sets (Ubuntu 24.04) are on it.
    for (const n of ['MEMORY_PRESSURE_WATCH', 'MEMORY_PRESSURE_WRITE', 'FDSTORE', 'NOTIFY_SOCKET'])
      expect(RESERVED_ENV_NAMES).toContain(n);
    // Behaviour, not text: every reserved name (and a name under each prefix) is refused by the
    // env file and hidden by the running agent; an ordinary name is neither.
    const reservedNames = [...list.names, ...list.prefixes.map((p) => `${p}X`)];
    for (const name of reservedNames) expect(() => renderEnvFile([{ name, value: 'v' }])).toThrow(/reserved/);
    const port = await freePort();
    child = await startEcho(port, {
      ...Object.fromEntries(reservedNames.map((n) => [n, 'v'])),
      PATH: '/usr/bin:/bin',
      ORDINARY_NAME: 'v',
    });
    const body = JSON.parse((await fetchText(port, '/health')).body) as { env: { name: string }[] };
    expect(body.env).toEqual([{ name: 'ORDINARY_NAME' }]);
  });
});

describe('openclaw runtime', () => {
  it('pins the gateway version, runs it on loopback, installs Node 24 from checked tarballs', () => {
    const rt = openclawRuntime();
    expect(rt.runsOffline).toBe(false);
    expect(rt.installCommands).toEqual([['/usr/local/lib/cortex/install-openclaw.sh', '2026.9.6']]);
    expect(rt.execStart).toContain('--bind=loopback');
    const script = rt.files[0]?.content ?? '';
    expect(script).toContain('NODE_MAJOR=24');
    expect(script).toContain('sha256sum -c');
    expect(() => openclawRuntime(18789, 'latest')).toThrow(/version/);
  });

  it('shell scripts parse', () => {
    for (const f of ['runtimes/install-openclaw.sh', 'cortex-block-metadata.sh'])
      expect(spawnSync('sh', ['-n', join(TEMPLATES, f)]).status).toBe(0);
  });

  it('profiles by name', () => {
    expect(runtimeProfile('echo').name).toBe('echo');
    expect(runtimeProfile('openclaw').name).toBe('openclaw');
  });
});

describe('metadata block script', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'mdb-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));
  const script = join(TEMPLATES, 'cortex-block-metadata.sh');
  const runWithPath = (path: string, args: string[] = []) =>
    spawnSync('/bin/sh', [script, ...args], { env: { PATH: path }, encoding: 'utf8' });

  it('loads an nft ruleset rejecting non-root traffic to 169.254.169.254', () => {
    writeFileSync(join(dir, 'nft'), `#!/bin/sh\necho "$@" > ${dir}/args\ncat > ${dir}/rules\n`);
    chmodSync(join(dir, 'nft'), 0o755);
    const r = runWithPath(`${dir}:/usr/bin:/bin`, ['--required']);
    expect(r.status).toBe(0);
    expect(readFileSync(join(dir, 'args'), 'utf8').trim()).toBe('-f -');
    const rules = readFileSync(join(dir, 'rules'), 'utf8');
    expect(rules).toMatch(/ip daddr 169\.254\.169\.254 meta skuid != 0 counter reject/);
    expect(rules).toMatch(/delete table inet cortex_metadata/);
  });

  it('best-effort without a firewall tool warns and succeeds; --required fails', () => {
    const empty = join(dir, 'empty');
    const soft = runWithPath(empty);
    expect(soft.status).toBe(0);
    expect(soft.stderr).toMatch(/NOT blocked/);
    expect(runWithPath(empty, ['--required']).status).toBe(1);
  });
});
