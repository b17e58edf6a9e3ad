import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RESERVED_ENV_NAMES } from '../../../orchestrator/remote/env-file';
import { echoRuntime, openclawRuntime, runtimeProfile } from '../../../templates/runtime-profiles';
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

describe('echo runtime (python3 stdlib agent)', () => {
  let child: ChildProcess | undefined;
  afterEach(() => {
    child?.kill('SIGKILL');
    child = undefined;
  });

  it('reports names and SHA-256 of its variables, never a value, on 127.0.0.1', async () => {
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
    const rt = echoRuntime(port);
    child = spawn(
      'python3',
      [...rt.execStart.slice(1)].map((a) => a.replace('/usr/local/lib/cortex', join(TEMPLATES, 'runtimes'))),
      {
        env,
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let res: { status: number; body: string } | undefined;
    for (let i = 0; i < 100 && !res; i++) {
      res = await fetchText(port, '/health').catch(() => undefined);
      if (!res) await new Promise((r) => setTimeout(r, 50));
    }
    expect(res?.status).toBe(200);
    const body = JSON.parse(res?.body ?? '{}') as { status: string; env: { name: string; sha256: string }[] };
    expect(body.status).toBe('ok');
    const sha = (v: string): string => createHash('sha256').update(Buffer.from(v, 'utf8')).digest('hex');
    expect(body.env).toEqual([
      { name: 'ANTHROPIC_API_KEY', sha256: sha(key) },
      { name: 'EMPTY', sha256: sha('') },
      { name: 'QUOTED', sha256: sha(env.QUOTED ?? '') },
    ]);
    expect(res?.body).not.toContain(key);
    expect((await fetchText(port, '/other')).status).toBe(404);
  });

  it('binds to 127.0.0.1 unless told otherwise', () => {
    const src = readFileSync(join(TEMPLATES, 'runtimes/echo-agent.py'), 'utf8');
    expect(src).toMatch(/add_argument\("--bind", default="127\.0\.0\.1"\)/);
    expect(echoRuntime().execStart.join(' ')).not.toContain('--bind');
  });

  it('hides exactly the names the env file may not use (kept equal to RESERVED_ENV_NAMES)', () => {
    const src = readFileSync(join(TEMPLATES, 'runtimes/echo-agent.py'), 'utf8');
    const block = /HIDDEN_NAMES = frozenset\(\[([\s\S]*?)\]\)/.exec(src)?.[1] ?? '';
    const hidden = new Set([...block.matchAll(/"([A-Z_]+)"/g)].map((m) => m[1]));
    for (const n of RESERVED_ENV_NAMES) expect(hidden).toContain(n);
    expect(src).toContain('HIDDEN_PREFIXES = ("LD_", "LC_", "SYSTEMD_")');
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
