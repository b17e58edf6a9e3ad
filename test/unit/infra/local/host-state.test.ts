import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { isOrchestratorError } from '../../../../orchestrator/errors';
import { acquireFileLock } from '../../../../orchestrator/infra/local/lock';
import { SEED_DIR, writeSeed } from '../../../../orchestrator/infra/local/machine';
import { Secret } from '../../../../orchestrator/secret';

/**
 * Local-host state on this machine's file system, with no host booted: the NoCloud seed is
 * root-only whatever the umask, address slots are never shared between *processes*, and a lock
 * whose holder process dies is free again.
 */
const root = join(__dirname, '../../../..');
let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'local-state-'));
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

/** A Node process running `code` with the project's TypeScript loadable (CommonJS, via tsx). */
const node = (code: string): ChildProcess =>
  spawn(process.execPath, ['--require', 'tsx/cjs', '-e', code], {
    cwd: root,
    stdio: ['pipe', 'pipe', 'pipe'],
  });
const output = (child: ChildProcess): Promise<{ code: number | null; stdout: string; stderr: string }> =>
  new Promise((resolve) => {
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });

describe('NoCloud seed', () => {
  it('is a 0700 directory of 0600 files owned by this process, even under umask 000', async () => {
    const userData = `#cloud-config\n# host private key would be here ${Date.now()}\n`;
    const old = process.umask(0);
    try {
      await writeSeed(dir, {
        userData: new Secret(userData),
        instanceId: 'i-1',
        hostname: 'h1',
        ipv4: '10.213.0.2',
        prefixLength: 30,
      });
    } finally {
      process.umask(old);
    }
    const seed = join(dir, SEED_DIR);
    const uid = process.getuid?.();
    const st = statSync(seed);
    expect([st.mode & 0o7777, st.uid]).toEqual([0o700, uid]);
    expect(readdirSync(seed).sort()).toEqual(['meta-data', 'network-config', 'user-data']);
    for (const f of readdirSync(seed)) {
      const fst = statSync(join(seed, f));
      expect([f, fst.mode & 0o7777, fst.uid]).toEqual([f, 0o600, uid]);
    }
    expect(readFileSync(join(seed, 'user-data'), 'utf8')).toBe(userData);
  });
});

describe('address slots', () => {
  it('are never shared between processes allocating at the same instant', async () => {
    const net = join(dir, 'net');
    const processes = 6;
    const perProcess = 5;
    const startAt = Date.now() + 1_500; // every process is loaded by then, so they race for real
    const children = Array.from({ length: processes }, (_, p) =>
      node(`
        const { allocateSlot, parseSubnet } = require('./orchestrator/infra/local/net.ts');
        const subnet = parseSubnet('10.213.0.0/16');
        const until = ${startAt};
        while (Date.now() < until) {}
        Promise.all(Array.from({ length: ${perProcess} }, (_, i) =>
          allocateSlot(${JSON.stringify(net)}, 'p${p}-m' + i, subnet)))
          .then((s) => console.log(JSON.stringify(s)), (e) => { console.error(e); process.exit(1); });
      `),
    );
    const results = await Promise.all(children.map(output));
    for (const r of results) expect([r.code, r.stderr]).toEqual([0, '']);
    const slots = results.flatMap((r) => JSON.parse(r.stdout) as number[]);
    expect(slots).toHaveLength(processes * perProcess);
    expect(new Set(slots).size).toBe(processes * perProcess);
    // Each slot names the one machine that got it.
    const owners = readdirSync(net).map((s) => readlinkSync(join(net, s)));
    expect(new Set(owners).size).toBe(processes * perProcess);
  }, 30_000);
});

describe('host lock', () => {
  it('is released when the process holding it is killed', async () => {
    const file = join(dir, 'locks', 'host.lock');
    const holder = node(`
      require('./orchestrator/infra/local/lock.ts').acquireFileLock(${JSON.stringify(file)})
        .then(() => console.log('held'), (e) => { console.error(e); process.exit(1); });
      setInterval(() => undefined, 1000);
    `);
    const exited = output(holder);
    await new Promise<void>((resolve, reject) => {
      holder.stdout?.on('data', (d: Buffer) => d.toString().includes('held') && resolve());
      holder.once('close', () => reject(new Error('holder exited early')));
    });
    // The control: while its holder lives, the lock is not ours.
    const held = await acquireFileLock(file, { timeoutMs: 500 }).then(
      async (release) => (await release(), undefined),
      (e: unknown) => e,
    );
    expect(isOrchestratorError(held) && held.code).toBe('timeout');
    holder.kill('SIGKILL'); // a crash: no release runs
    await exited;
    const t0 = Date.now();
    const release = await acquireFileLock(file, { timeoutMs: 5_000 });
    expect(Date.now() - t0).toBeLessThan(5_000);
    await release();
  }, 30_000);
});
