import { existsSync } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { loadConfig } from '../../orchestrator/config';
import { isOrchestratorError } from '../../orchestrator/errors';
import type { HostDescription, HostProvider } from '../../orchestrator/infra/host-provider';
import { cgroupPids, hostCgroupDirs, readHostMemory } from '../../orchestrator/infra/local/cgroup';
import { cleanupLocalHosts } from '../../orchestrator/infra/local/cleanup';
import { run } from '../../orchestrator/infra/local/exec';
import { ensureLocalImage, parseAptSources } from '../../orchestrator/infra/local/image';
import { SEED_DIR } from '../../orchestrator/infra/local/machine';
import { slotOwners, vethName } from '../../orchestrator/infra/local/net';
import { findNspawnProcesses } from '../../orchestrator/infra/local/proc';
import { makeLocalHostProvider } from '../../orchestrator/infra/local/provider';
import { hostDir, localPaths, machineName, readHostRecord } from '../../orchestrator/infra/local/state';
import { localSupportProblems, localUnsupportedError } from '../../orchestrator/infra/local/support';
import type { Secret } from '../../orchestrator/secret';
import { expectNoTrace } from '../support/local-trace';
import { makeTestHostSpec, sshRun, waitForSsh, waitForTcp, type TestHost } from '../support/local-hosts';

jest.setTimeout(180_000);

const stateDir = loadConfig(process.env).CORTEX_STATE_DIR;
const paths = localPaths(stateDir);

describe('local hosts: requirements and names', () => {
  it('names what is missing where local hosts cannot run', () => {
    const facts = { missingCommands: [], overlayfs: true, cgroupKinds: ['systemd', 'memory'] };
    expect(localSupportProblems({ ...facts, platform: 'darwin', uid: 501 })).toEqual([
      'this is darwin, not Linux',
    ]);
    const problems = localSupportProblems({
      ...facts,
      platform: 'linux',
      uid: 1000,
      missingCommands: ['systemd-nspawn'],
    });
    const err = localUnsupportedError(problems);
    expect(err.code).toBe('local_unsupported');
    expect(err.message).toMatch(/uid 1000, not root/);
    expect(err.message).toMatch(/apt-get install systemd-container/);
    expect(localSupportProblems({ ...facts, platform: 'linux', uid: 0 })).toEqual([]);
  });

  it('derives short, deterministic, valid machine names whose veth name is not truncated', () => {
    const a = machineName('3f1c0c9e-0a43-4c6e-9a1e-1b2f3a4b5c6d');
    expect(machineName('3f1c0c9e-0a43-4c6e-9a1e-1b2f3a4b5c6d')).toBe(a);
    expect(machineName('3f1c0c9e-0a43-4c6e-9a1e-1b2f3a4b5c6e')).not.toBe(a);
    expect(a).toMatch(/^[a-z][a-z0-9]{11}$/);
    expect(vethName(a)).toBe(`ve-${a}`);
    expect(vethName(a).length).toBeLessThanOrEqual(15);
  });

  it('reads the mirror from apt sources rather than assuming one', () => {
    const deb822 = [
      'Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main',
      'Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main',
    ].join('\n\n');
    expect(parseAptSources([{ name: 'debian.sources', text: deb822 }], 'bookworm')).toEqual({
      main: 'http://mirror.example/debian',
      security: 'http://mirror.example/debian-security',
    });
    const oneLine = '# comment\ndeb [arch=amd64] http://other.example/debian trixie main\n';
    expect(parseAptSources([{ name: 'sources.list', text: oneLine }], 'bookworm')).toEqual({
      main: 'http://other.example/debian',
    });
    expect(parseAptSources([{ name: 'x.sources.disabled', text: deb822 }], 'bookworm')).toBeUndefined();
  });
});

const auth = (t: TestHost, d: HostDescription) => ({
  privateKey: t.clientPrivateKey,
  hostPublicKey: d.hostPublicKey,
});

describe('local host provider (real systemd-nspawn hosts)', () => {
  let provider: HostProvider;
  const created: string[] = [];
  const hostA = makeTestHostSpec({
    writeFiles: [{ path: '/etc/cortex/marker', content: 'written by cloud-init\n', permissions: '0600' }],
  });
  const hostB = makeTestHostSpec();
  let a: HostDescription;
  let b: HostDescription;

  const ensure = (t: TestHost): Promise<HostDescription> => {
    created.push(t.spec.deploymentId);
    return provider.ensure(t.spec);
  };

  beforeAll(async () => {
    // The same function `npm run image:build` runs; a no-op when the current recipe's image exists.
    const image = await ensureLocalImage({ stateDir });
    provider = makeLocalHostProvider({ stateDir, image: image.rootfs, stopGraceMs: 3_000 });
    [a, b] = await Promise.all([ensure(hostA), ensure(hostB)]);
  }, 20 * 60_000);

  afterAll(async () => {
    await Promise.all(created.map((id) => provider?.destroy(id)));
  });

  it('boots a host reachable on its address, configured by cloud-init from the seed, with the pinned key', async () => {
    expect(a.state).toBe('running');
    expect(a.ipv4).toMatch(/^10\.213\.\d+\.\d+$/);
    expect(a.hostPublicKey).toBe(hostA.spec.hostPublicKey);
    await waitForTcp(a.ipv4, 22, 20_000);
    await waitForSsh(a.ipv4, auth(hostA, a), 20_000);
    const r = await sshRun(
      a.ipv4,
      auth(hostA, a),
      'cloud-init status --wait >/dev/null; cat /etc/cortex/marker; stat -c %a /etc/cortex/marker; timeout 60 systemctl is-system-running --wait',
    );
    expect(r.stdout).toBe('written by cloud-init\n600\nrunning\n');
    // The seed holds the revealed user data byte for byte, root-only (it carries the host key).
    const seed = join(hostDir(paths, a.serverId), 'merged', SEED_DIR, 'user-data');
    expect(await readFile(seed, 'utf8')).toBe(hostA.spec.userData.reveal());
    const st = await stat(seed);
    expect({ uid: st.uid, mode: st.mode & 0o777 }).toEqual({ uid: 0, mode: 0o600 });
    // The pin is real: the same host under another key is refused.
    const stranger = makeTestHostSpec().spec.hostPublicKey;
    await expect(
      sshRun(a.ipv4, { privateKey: hostA.clientPrivateKey, hostPublicKey: stranger }, 'true'),
    ).rejects.toThrow(/verification failed|Host denied/i);
  });

  it('returns the same host for a second ensure, from this or another provider instance', async () => {
    const before = await readHostRecord(paths, machineName(hostA.spec.deploymentId));
    expect(await provider.ensure(hostA.spec)).toEqual(a);
    const other = makeLocalHostProvider({ stateDir });
    expect(await other.ensure(hostA.spec)).toEqual(a);
    expect(await other.describe(hostA.spec.deploymentId)).toEqual(a);
    const after = await readHostRecord(paths, machineName(hostA.spec.deploymentId));
    expect(after?.pid).toBe(before?.pid);
    const merged = join(hostDir(paths, a.serverId), 'merged');
    expect((await findNspawnProcesses(merged)).length).toBe(1);
    expect(await provider.list()).toEqual(
      expect.arrayContaining([hostA.spec.deploymentId, hostB.spec.deploymentId]),
    );
  });

  it('gives two hosts different addresses, links and cgroups', async () => {
    expect(b.state).toBe('running');
    expect(b.ipv4).not.toBe(a.ipv4);
    expect(b.serverId).not.toBe(a.serverId);
    const { stdout } = await run('ip', ['-o', '-4', 'addr', 'show']);
    expect(stdout).toMatch(new RegExp(`${vethName(a.serverId)}\\s+inet `));
    expect(stdout).toMatch(new RegExp(`${vethName(b.serverId)}\\s+inet `));
    // Each in cgroups of its own (name=systemd, unified, memory), with its own memory account.
    for (const d of [a, b]) {
      const pid = (await readHostRecord(paths, d.serverId))?.pid;
      const cgroups = await readFile(`/proc/${String(pid)}/cgroup`, 'utf8');
      const own = `/cortex/${paths.stateId}/${d.serverId}`;
      expect(cgroups).toMatch(new RegExp(`:name=systemd:${own}/`));
      expect(cgroups).toMatch(new RegExp(`:memory:${own}\\n`));
      expect((await readHostMemory(paths.stateId, d.serverId))?.rssBytes).toBeGreaterThan(1_000_000);
    }
  });

  it('keeps a file written in one host invisible in another (and out of the image)', async () => {
    await waitForSsh(a.ipv4, auth(hostA, a), 20_000);
    await waitForSsh(b.ipv4, auth(hostB, b), 20_000);
    const w = await sshRun(a.ipv4, auth(hostA, a), 'umask 077; echo only-a > /etc/cortex/only-a && echo ok');
    expect(w.stdout).toBe('ok\n');
    expect((await sshRun(a.ipv4, auth(hostA, a), 'cat /etc/cortex/only-a')).stdout).toBe('only-a\n');
    const r = await sshRun(
      b.ipv4,
      auth(hostB, b),
      'test -e /etc/cortex/only-a; echo $?; test -e /etc/cortex/marker; echo $?',
    );
    expect(r.stdout).toBe('1\n1\n');
    const image = (await readHostRecord(paths, a.serverId))?.image ?? '';
    expect(existsSync(join(image, 'etc/cortex/only-a'))).toBe(false);
    expect(existsSync(join(hostDir(paths, a.serverId), 'upper/etc/cortex/only-a'))).toBe(true);
  });

  it('allocates without collisions when many hosts (and duplicate requests) are ensured at once', async () => {
    const many = Array.from({ length: 6 }, () => makeTestHostSpec());
    // Each spec twice, concurrently: still one host per deployment.
    const results = await Promise.all([...many, ...many].map((t) => ensure(t)));
    const firsts = results.slice(0, many.length);
    expect(results.slice(many.length)).toEqual(firsts);
    const taken = [a.ipv4, b.ipv4, ...firsts.map((d) => d.ipv4)];
    expect(new Set(taken).size).toBe(taken.length);
    for (const d of firsts) expect(d.state).toBe('running');
    const owners = await slotOwners(paths.net);
    for (const d of firsts) expect([...owners.values()].filter((m) => m === d.serverId)).toHaveLength(1);
    await Promise.all(firsts.map((d) => waitForTcp(d.ipv4, 22, 30_000)));
    await Promise.all(many.map((t) => provider.destroy(t.spec.deploymentId)));
    for (const d of firsts) await expectNoTrace(paths, d.serverId);
  });

  it('restarts a host that powered off, with its disk and address', async () => {
    await waitForSsh(b.ipv4, auth(hostB, b), 20_000);
    await sshRun(
      b.ipv4,
      auth(hostB, b),
      'echo kept > /root/kept; sync; (sleep 0.2; systemctl poweroff) >/dev/null 2>&1 &',
    );
    const deadline = Date.now() + 30_000;
    while ((await provider.describe(hostB.spec.deploymentId))?.state !== 'stopped' && Date.now() < deadline)
      await new Promise((r) => setTimeout(r, 100));
    expect((await provider.describe(hostB.spec.deploymentId))?.state).toBe('stopped');
    const again = await provider.ensure(hostB.spec);
    expect(again).toEqual(b);
    await waitForSsh(b.ipv4, auth(hostB, b), 20_000);
    expect((await sshRun(b.ipv4, auth(hostB, b), 'cat /root/kept')).stdout).toBe('kept\n');
  });

  it('destroy leaves nothing and is idempotent', async () => {
    const t = makeTestHostSpec();
    const d = await ensure(t);
    expect(existsSync(hostDir(paths, d.serverId))).toBe(true);
    await provider.destroy(t.spec.deploymentId);
    await expectNoTrace(paths, d.serverId);
    expect(await provider.describe(t.spec.deploymentId)).toBeUndefined();
    expect(await provider.list()).not.toContain(t.spec.deploymentId);
    await expect(provider.destroy(t.spec.deploymentId)).resolves.toBeUndefined();
    await expect(provider.destroy('never-created')).resolves.toBeUndefined();
  });

  it('cleanup removes what a crash left (nspawn killed, container still running) and spares kept hosts', async () => {
    const t = makeTestHostSpec();
    const d = await ensure(t);
    const rec = await readHostRecord(paths, d.serverId);
    if (rec?.pid === undefined) throw new Error('host has no recorded nspawn pid');
    process.kill(rec.pid, 'SIGKILL');
    // The container outlives its nspawn: its processes, veth and cgroups are the leftovers to find.
    await new Promise((r) => setTimeout(r, 300));
    const cgroups = await hostCgroupDirs(paths.stateId, d.serverId);
    expect((await Promise.all(cgroups.map(cgroupPids))).flat().length).toBeGreaterThan(0);
    expect((await provider.describe(t.spec.deploymentId))?.state).toBe('stopped');
    const report = await cleanupLocalHosts(paths, { keep: (id) => id !== t.spec.deploymentId });
    expect(report.machines).toEqual([d.serverId]);
    await expectNoTrace(paths, d.serverId);
    expect((await provider.describe(hostA.spec.deploymentId))?.state).toBe('running');
  });

  it('refuses a spec it cannot honour, naming the field', async () => {
    const t = makeTestHostSpec();
    const bad = { ...t.spec, subdomain: 'Not A Label' };
    const err: unknown = await provider.ensure(bad).catch((e: unknown) => e);
    expect(isOrchestratorError(err) && err.code === 'invalid_input' && err.field === 'subdomain').toBe(true);
    expect(await readdir(paths.hosts)).not.toContain(machineName(t.spec.deploymentId));
    // User data carries the host private key: it must arrive as a Secret, never as a plain string.
    const plain = { ...t.spec, userData: t.spec.userData.reveal() as unknown as Secret };
    const err2: unknown = await provider.ensure(plain).catch((e: unknown) => e);
    expect({
      code: isOrchestratorError(err2) && err2.code,
      field: isOrchestratorError(err2) && err2.field,
    }).toEqual({
      code: 'invalid_input',
      field: 'userData',
    });
    expect(String((err2 as Error).message)).not.toContain('PRIVATE KEY');
    expect(await readdir(paths.hosts)).not.toContain(machineName(t.spec.deploymentId));
  });
});
