import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { RESERVED_ENV_NAMES, RESERVED_PREFIXES, renderEnvFile } from '../../../orchestrator/remote/env-file';
import {
  echoRuntime,
  OPENCLAW_PINS,
  OPENCLAW_VERSION,
  openclawRuntime,
  renderOpenclawInstall,
  RESERVED_ENV_NAMES_FILE,
  runtimeProfile,
} from '../../../templates/runtime-profiles';
import { canary } from '../../support/canary';
import { freePort } from '../../support/free-port';

const TEMPLATES = join(__dirname, '../../../templates');

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

  it('binds to 127.0.0.1 unless told otherwise', async () => {
    expect(echoRuntime().execStart.join(' ')).not.toContain('--bind');
    // 127.0.0.2 is loopback too: refused there, so it bound 127.0.0.1 alone (not 0.0.0.0).
    const port = await freePort();
    child = await startEcho(port, {});
    const elsewhere = await new Promise<string | undefined>((resolve) => {
      get({ host: '127.0.0.2', port, path: '/health' }, (res) => {
        res.resume();
        resolve('answered');
      }).on('error', (e: NodeJS.ErrnoException) => resolve(e.code));
    });
    expect(elsewhere).toBe('ECONNREFUSED');
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
  it('pins Node and OpenClaw by checksums held in the repository, runs the gateway on loopback', () => {
    const rt = openclawRuntime();
    expect(rt.runsOffline).toBe(false);
    expect(rt.installCommands).toEqual([['/usr/local/lib/cortex/install-openclaw.sh']]);
    expect(rt.execStart).toContain('--bind=loopback');
    const script = rt.files[0]?.content ?? '';
    expect(script).toContain(`NODE_VERSION='${OPENCLAW_PINS.node.version}'`);
    expect(script).toContain(`NODE_SHA256_X64='${OPENCLAW_PINS.node.sha256.x64}'`);
    expect(script).toContain(`NODE_SHA256_ARM64='${OPENCLAW_PINS.node.sha256.arm64}'`);
    expect(script).toContain(`OPENCLAW_SHA512='${OPENCLAW_PINS.openclaw.sha512}'`);
    // Nothing fetched to check against: no SHASUMS file, no "latest" release.
    expect(script).not.toMatch(/SHASUMS|latest/);
    expect(script).toMatch(/npm" install --global --ignore-scripts/);
    // OpenClaw 2026.9.6 requires node >=24.16.0 <25 (its engines field).
    expect(OPENCLAW_PINS.node.version).toMatch(/^24\.(1[6-9]|[2-9]\d)\.\d+$/);
    expect(OPENCLAW_VERSION).toBe('2026.9.6');
  });

  it('refuses malformed or inconsistent pins', () => {
    const p = OPENCLAW_PINS;
    expect(() => renderOpenclawInstall({ ...p, node: { ...p.node, version: 'latest' } })).toThrow(/version/);
    expect(() =>
      renderOpenclawInstall({ ...p, node: { ...p.node, sha256: { ...p.node.sha256, x64: 'abc' } } }),
    ).toThrow(/sha256/);
    const other = createHash('sha512').update('other').digest('hex');
    expect(() => renderOpenclawInstall({ ...p, openclaw: { ...p.openclaw, sha512: other } })).toThrow(
      /disagree/,
    );
  });

  describe('the install script checks every download before using it', () => {
    let dir: string;
    beforeEach(() => {
      dir = mkdtempSync(join(tmpdir(), 'ocl-'));
    });
    afterEach(() => rmSync(dir, { recursive: true, force: true }));

    const NODE_BYTES = 'a node tarball as a mirror might serve it\n';
    const PKG_BYTES = 'an openclaw tarball as a registry might serve it\n';
    /** Stub curl, tar and npm on PATH: they log their calls, and curl serves the bytes above. */
    const stubs = (): string => {
      const bin = join(dir, 'stub-bin');
      mkdirSync(bin);
      const log = join(dir, 'calls.log');
      const write = (name: string, body: string) => {
        writeFileSync(join(bin, name), `#!/bin/sh\n${body}\n`);
        chmodSync(join(bin, name), 0o755);
      };
      write(
        'curl',
        [
          `echo "curl $*" >> ${log}`,
          'while [ $# -gt 1 ]; do [ "$1" = -o ] && out=$2; shift; done',
          'case "$1" in',
          `  *.tar.xz) printf '%s' '${NODE_BYTES.trim()}' > "$out"; echo >> "$out" ;;`,
          `  *.tgz) printf '%s' '${PKG_BYTES.trim()}' > "$out"; echo >> "$out" ;;`,
          'esac',
        ].join('\n'),
      );
      // A "Node tarball" that unpacks to an npm which only logs how it was called.
      write(
        'tar',
        [
          `echo "tar $*" >> ${log}`,
          'while [ $# -gt 0 ]; do [ "$1" = -C ] && dest=$2; shift; done',
          'mkdir -p "$dest/bin"',
          `printf '#!/bin/sh\\necho "npm $*" >> ${log}\\n' > "$dest/bin/npm"`,
          'chmod 755 "$dest/bin/npm"',
        ].join('\n'),
      );
      return bin;
    };
    const runScript = (script: string) => {
      const file = join(dir, 'install-openclaw.sh');
      writeFileSync(file, script);
      const r = spawnSync('/bin/sh', [file], {
        env: { PATH: `${stubs()}:/usr/bin:/bin`, DESTDIR: join(dir, 'root') },
        encoding: 'utf8',
      });
      let calls = '';
      try {
        calls = readFileSync(join(dir, 'calls.log'), 'utf8');
      } catch {
        // nothing was called
      }
      return { code: r.status, stderr: r.stderr, calls };
    };
    const hex = (alg: string, s: string): string => createHash(alg).update(s).digest('hex');

    it('a Node tarball that does not match the pinned SHA-256 is never unpacked', () => {
      const r = runScript(renderOpenclawInstall());
      expect(r.code).toBe(1);
      expect(r.stderr).toMatch(/node-v24\.\d+\.\d+-linux-(x64|arm64)\.tar\.xz: sha256 mismatch/);
      expect(r.stderr).toContain(hex('sha256', NODE_BYTES));
      expect(r.calls).toMatch(/^curl .*https:\/\/nodejs\.org\/dist\/v24\./m);
      expect(r.calls).not.toMatch(/^(tar|npm) /m);
      expect(existsSync(join(dir, 'root/opt/node'))).toBe(false);
    });

    it('an OpenClaw tarball that does not match the pinned SHA-512 is never installed', () => {
      // Node pinned to the stub's bytes (the positive control for the first check), OpenClaw not.
      const nodeSha = hex('sha256', NODE_BYTES);
      const r = runScript(
        renderOpenclawInstall({
          ...OPENCLAW_PINS,
          node: { ...OPENCLAW_PINS.node, sha256: { x64: nodeSha, arm64: nodeSha } },
        }),
      );
      expect(r.code).toBe(1);
      expect(r.calls).toMatch(/^tar -xJf /m);
      expect(r.stderr).toMatch(/openclaw-2026\.9\.6\.tgz: sha512 mismatch/);
      expect(r.calls).not.toMatch(/^npm /m);
    });

    it('with both checksums matching it installs the verified tarball without lifecycle scripts', () => {
      const nodeSha = hex('sha256', NODE_BYTES);
      const pkgSha = hex('sha512', PKG_BYTES);
      const r = runScript(
        renderOpenclawInstall({
          node: { ...OPENCLAW_PINS.node, sha256: { x64: nodeSha, arm64: nodeSha } },
          openclaw: {
            ...OPENCLAW_PINS.openclaw,
            sha512: pkgSha,
            integrity: `sha512-${Buffer.from(pkgSha, 'hex').toString('base64')}`,
          },
        }),
      );
      expect({ code: r.code, stderr: r.stderr }).toEqual({ code: 0, stderr: '' });
      const npm = r.calls.split('\n').find((l) => l.startsWith('npm ')) ?? '';
      expect(npm).toMatch(
        /^npm install --global --ignore-scripts .* \/tmp\/[^ ]+\/openclaw-2026\.9\.6\.tgz$/,
      );
      // Linked where it will be on the server (DESTDIR only prefixes what is written).
      expect(readlinkSync(join(dir, 'root/usr/local/bin/node'))).toBe('/opt/node/bin/node');
    });
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
