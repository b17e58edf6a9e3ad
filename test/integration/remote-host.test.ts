import { createHash, randomUUID } from 'node:crypto';
import { request } from 'node:https';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { loadConfig } from '../../orchestrator/config';
import { isOrchestratorError } from '../../orchestrator/errors';
import type { HostDescription, HostProvider } from '../../orchestrator/infra/host-provider';
import { ensureLocalImage, makeLocalHostProvider } from '../../orchestrator/infra/local';
import {
  agentCommands,
  CADDY_STOCK_ADMIN_PORT,
  parseListeners,
  parseMainPid,
} from '../../orchestrator/remote/agent-commands';
import { ENV_FILE_PATH, renderEnvFile, type EnvEntry } from '../../orchestrator/remote/env-file';
import { generateHostKeyPair } from '../../orchestrator/remote/host-keys';
import { rekeyHost } from '../../orchestrator/remote/rekey';
import {
  connectSsh,
  run,
  waitUntilReady,
  type RemoteShell,
  type SshTarget,
} from '../../orchestrator/remote/ssh-shell';
import { Secret } from '../../orchestrator/secret';
import {
  CADDY_ADMIN_SOCKET,
  CADDYFILE_PATH,
  caddyLocalRootCaPath,
  renderCaddyfile,
} from '../../templates/caddyfile';
import { buildUserData, renderUserData } from '../../templates/cloud-init';
import { echoRuntime, openclawRuntime } from '../../templates/runtime-profiles';
import { AGENT_UNIT_NAME, METADATA_BLOCK_UNIT, renderAgentUnit } from '../../templates/systemd-unit';
import { agentProbes, parseEnviron } from '../support/agent-probes';
import { canary } from '../support/canary';
import { HOSTILE_VALUES } from '../support/hostile-values';

/**
 * The remote shell and the templates against a real local host (systemd-nspawn, booted by the
 * `local` provider with the user data from templates/cloud-init.ts): pinned login, atomic 0600 env
 * file, a connection cut mid-write, the agent's environment byte for byte through systemd's
 * EnvironmentFile=, Caddy over verified HTTPS (holding requests while the agent restarts), the
 * metadata block (its effect, and the agent unit's dependency on it), and re-keying.
 */
jest.setTimeout(180_000);

const { CORTEX_STATE_DIR: stateDir } = loadConfig(process.env);

const sha256 = (v: string): string => createHash('sha256').update(Buffer.from(v, 'utf8')).digest('hex');
const text = async (shell: RemoteShell, argv: readonly string[]): Promise<string> =>
  (await run(shell, argv)).stdout.toString('utf8');

/** A TCP relay that can be cut once `cutAfter` bytes have gone upstream. */
const relay = async (to: { host: string; port: number }, cutAfter: number) => {
  const sockets = new Set<Socket>();
  let upstreamBytes = 0;
  let cut = false;
  const server: Server = createServer((client) => {
    const up = connect(to);
    sockets.add(client).add(up);
    client.on('data', (d: Buffer) => {
      upstreamBytes += d.length;
      if (upstreamBytes > cutAfter && !cut) {
        cut = true;
        for (const s of sockets) s.destroy();
        return;
      }
      up.write(d);
    });
    up.on('data', (d: Buffer) => client.write(d));
    for (const s of [client, up])
      s.on('error', () => undefined).on('close', () => (client.destroy(), up.destroy()));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    port: (server.address() as AddressInfo).port,
    wasCut: () => cut,
    close: () => {
      for (const s of sockets) s.destroy();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
};

const httpsGet = (o: {
  ip: string;
  servername: string;
  path: string;
  ca?: string;
  timeoutMs?: number;
}): Promise<{ status: number; body: string }> =>
  new Promise((resolve, reject) => {
    const req = request(
      {
        host: o.ip,
        port: 443,
        path: o.path,
        servername: o.servername,
        agent: false,
        headers: { host: o.servername },
        ...(o.ca ? { ca: o.ca } : {}),
        timeout: o.timeoutMs ?? 5_000,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });

describe('remote shell and templates on a real local host', () => {
  const orchestratorKey = generateHostKeyPair();
  const hostKey = generateHostKeyPair();
  const deploymentId = randomUUID();
  const subdomain = `r-${deploymentId.slice(0, 8)}`;
  const siteName = `${subdomain}.agents.localhost.test`;
  const runtime = echoRuntime();
  const sshOpts = {
    privateKey: orchestratorKey.privateKey,
    connectTimeoutMs: 5_000,
    commandTimeoutMs: 60_000,
  };
  const customerKey = canary('anthropic');
  const envEntries: EnvEntry[] = [
    { name: 'ANTHROPIC_API_KEY', value: new Secret(customerKey) },
    ...Object.entries(HOSTILE_VALUES).map(([name, v]) => ({ name, value: new Secret(v) })),
  ];
  const expected = new Map<string, string>([
    ['ANTHROPIC_API_KEY', customerKey],
    ...Object.entries(HOSTILE_VALUES),
  ]);

  let provider: HostProvider;
  let host: HostDescription;
  let target: SshTarget;
  let shell: RemoteShell;

  beforeAll(async () => {
    const image = await ensureLocalImage({ stateDir });
    provider = makeLocalHostProvider({ stateDir, image: image.rootfs });
    const userData = renderUserData(
      buildUserData({
        hostname: subdomain,
        siteName,
        hostKey,
        orchestratorPublicKey: orchestratorKey.publicKey,
        tls: { mode: 'internal' },
        runtime,
        // Production's mode: the image has nftables and the container its own network namespace
        // (CAP_NET_ADMIN inside), so the block is really applied; the test below checks its effect.
        metadataBlock: 'required',
        installPackages: false,
      }),
    );
    expect(userData.reveal()).not.toContain(customerKey);
    host = await provider.ensure({
      deploymentId,
      orgId: randomUUID(),
      subdomain,
      userData,
      hostPublicKey: hostKey.publicKey,
    });
    target = { host: host.ipv4, hostPublicKey: host.hostPublicKey };
    shell = await waitUntilReady(target, { ...sshOpts, timeoutMs: 60_000 });
    // First boot done: write_files, users, ssh keys and runcmd applied.
    await run(shell, agentCommands.cloudInitWait());
  });

  afterAll(async () => {
    await shell?.close();
    await provider?.destroy(deploymentId);
  });

  // The host's state that later tests build on, made by the test that checks it when the file runs
  // in order, and by these helpers when a test runs alone (`-t`): each test passes on its own.
  const done = { env: false, agent: false, caddy: false };
  const ensureEnvFile = async (): Promise<void> => {
    if (done.env) return;
    await shell.writeFileAtomic(ENV_FILE_PATH, renderEnvFile(envEntries));
    done.env = true;
  };
  const ensureAgentOnEnv = async (): Promise<void> => {
    await ensureEnvFile();
    if (done.agent) return;
    await run(shell, agentCommands.daemonReload());
    await run(shell, agentCommands.restart(AGENT_UNIT_NAME));
    done.agent = true;
  };
  /** Caddy on the agent's Caddyfile (after boot it runs the package's stock config: see below). */
  const ensureAgentCaddy = async (): Promise<void> => {
    await ensureAgentOnEnv();
    if (done.caddy) return;
    await run(shell, agentCommands.restart('caddy.service'));
    done.caddy = true;
  };

  it('logs in as root with the pinned key; the host has only that key and no default user', async () => {
    expect(host.hostPublicKey.trim()).toBe(hostKey.publicKey);
    expect((await text(shell, ['id', '-u'])).trim()).toBe('0');
    const keys = (await text(shell, ['sh', '-c', 'ls /etc/ssh | grep ^ssh_host_'])).trim().split('\n');
    expect(keys.sort()).toEqual(['ssh_host_ed25519_key', 'ssh_host_ed25519_key.pub']);
    expect(
      (await text(shell, ['cat', '/etc/ssh/ssh_host_ed25519_key.pub']))
        .trim()
        .split(' ')
        .slice(0, 2)
        .join(' '),
    ).toBe(hostKey.publicKey);
    expect((await shell.exec(['id', 'debian'])).code).not.toBe(0);
    const sshd = await text(shell, ['sshd', '-T']);
    expect(sshd).toMatch(/^permitrootlogin without-password$/m);
    expect(sshd).toMatch(/^passwordauthentication no$/m);
  });

  it('refuses a wrong pinned key', async () => {
    const err = await connectSsh(
      { ...target, hostPublicKey: generateHostKeyPair().publicKey },
      sshOpts,
    ).catch((e: unknown) => e);
    expect(isOrchestratorError(err) && err.code).toBe('ssh_host_key_mismatch');
  });

  it('writes the env file root:root 0600 in a root:root 0700 directory', async () => {
    await shell.writeFileAtomic(ENV_FILE_PATH, renderEnvFile(envEntries));
    done.env = true;
    expect((await text(shell, agentCommands.stat(ENV_FILE_PATH))).trim()).toBe('0 0 600 regular file');
    expect((await text(shell, agentCommands.stat('/etc/cortex'))).trim()).toBe('0 0 700 directory');
    expect(await text(shell, agentProbes.readFile(ENV_FILE_PATH))).toBe(renderEnvFile(envEntries).reveal());
    // An unprivileged user (as the agent is) cannot read it.
    const asNobody = await shell.exec(['runuser', '-u', 'nobody', '--', 'cat', ENV_FILE_PATH]);
    expect(asNobody.code).not.toBe(0);
    expect(asNobody.stdout.toString()).not.toContain(customerKey);
  });

  it('a connection cut mid-write leaves the old file intact; the next write removes the temp file', async () => {
    await ensureEnvFile();
    const before = (await run(shell, agentProbes.readFile(ENV_FILE_PATH))).stdout;
    const r = await relay({ host: host.ipv4, port: 22 }, 1024 * 1024);
    try {
      const viaRelay = await connectSsh({ ...target, host: '127.0.0.1', port: r.port }, sshOpts);
      const big = Buffer.alloc(8 * 1024 * 1024, 0x41);
      const err = await viaRelay.writeFileAtomic(ENV_FILE_PATH, big).catch((e: unknown) => e);
      expect(r.wasCut()).toBe(true);
      expect(isOrchestratorError(err) && err.code).toBe('ssh_connect_failed');
      await viaRelay.close();
    } finally {
      await r.close();
    }
    expect((await run(shell, agentProbes.readFile(ENV_FILE_PATH))).stdout.equals(before)).toBe(true);
    const listing = (await text(shell, agentCommands.listDir('/etc/cortex'))).trim().split('\n');
    // The cut really happened mid-write: a partial temp file is there, beside the untouched target.
    expect(listing.some((f) => /^\.agent-blue\.env\.tmp-[0-9a-f]{16}$/.test(f))).toBe(true);
    await shell.writeFileAtomic(ENV_FILE_PATH, renderEnvFile(envEntries));
    expect((await text(shell, agentCommands.listDir('/etc/cortex'))).trim().split('\n')).toEqual([
      'agent-blue.env',
    ]);
  });

  it("the agent's environment holds exactly the bytes written (systemd EnvironmentFile= round trip)", async () => {
    await ensureEnvFile();
    await run(shell, agentCommands.daemonReload());
    await run(shell, agentCommands.restart(AGENT_UNIT_NAME));
    done.agent = true;
    // MainPID is set at fork; its environment is the agent's only once it has exec'd the runtime.
    let pid = 0;
    for (let i = 0; i < 100; i++) {
      pid = parseMainPid(await text(shell, agentCommands.mainPid(AGENT_UNIT_NAME)));
      const cmdline = pid > 1 ? (await shell.exec(agentCommands.processCmdline(pid))).stdout.toString() : '';
      if (cmdline.includes('echo-agent.py')) break;
      await new Promise((res) => setTimeout(res, 100));
    }
    expect(pid).toBeGreaterThan(1);
    const environ = parseEnviron((await run(shell, agentProbes.processEnviron(pid))).stdout);
    for (const [name, value] of expected)
      expect({ name, bytes: environ.get(name)?.toString('hex') }).toEqual({
        name,
        bytes: Buffer.from(value, 'utf8').toString('hex'),
      });
    // It runs as an unprivileged dynamic user, in a user namespace of its own (PrivateUsers=yes:
    // only its own uid and root are mapped, not the host's whole range).
    const uid = (await text(shell, ['stat', '--format=%u', `/proc/${pid}`])).trim();
    expect(Number(uid)).toBeGreaterThan(0);
    const uidMap = (await text(shell, ['cat', `/proc/${pid}/uid_map`])).trim().split('\n');
    expect(uidMap.map((l) => l.trim().split(/\s+/))).toEqual(expect.arrayContaining([[uid, uid, '1']]));
    expect(uidMap.some((l) => /^0\s+0\s+4294967295$/.test(l.trim()))).toBe(false);
    const props = await text(shell, [
      'systemctl',
      'show',
      '--property=PrivateUsers,PrivateMounts,IPAddressDeny',
      AGENT_UNIT_NAME,
    ]);
    expect(props).toMatch(/^PrivateUsers=yes$/m);
    expect(props).toMatch(/^PrivateMounts=yes$/m);
    // echo denies everything but loopback (systemd folds the metadata address into 0.0.0.0/0).
    expect(props).toMatch(/^IPAddressDeny=.*(169\.254\.169\.254\/32|0\.0\.0\.0\/0)/m);
  });

  it("Caddy runs its package's stock config after boot; reload cannot move the admin API, restart does", async () => {
    const listeners = async () =>
      parseListeners(await text(shell, agentCommands.tcpListeners(CADDY_STOCK_ADMIN_PORT)));
    const stockAdmin = () =>
      shell.exec(['curl', '--silent', '--show-error', '--max-time', '2', 'http://127.0.0.1:2019/config/']);
    // Positive control, as on a fresh Ubuntu server: the agent's Caddyfile is written (deferred),
    // but Caddy started before it with the stock config, whose admin API anyone on the host reaches.
    expect((await shell.exec(agentCommands.isActive('caddy.service'))).code).toBe(0);
    expect(await text(shell, agentProbes.readFile(CADDYFILE_PATH))).toContain(
      `admin unix/${CADDY_ADMIN_SOCKET}`,
    );
    expect(await listeners()).toEqual(['127.0.0.1:2019']);
    const stock = await stockAdmin();
    expect({ code: stock.code, fileServer: stock.stdout.toString().includes('"file_server"') }).toEqual({
      code: 0,
      fileServer: true,
    });
    expect(await text(shell, agentProbes.unixConnect('root', CADDY_ADMIN_SOCKET))).toBe('ENOENT\n');

    // A reload dials the admin address of the NEW file (the socket, not there yet) and fails: the
    // stock admin API stays up.
    const reload = await shell.exec(agentCommands.reloadOrRestart('caddy.service'));
    expect(reload.code).not.toBe(0);
    expect(await listeners()).toEqual(['127.0.0.1:2019']);
    expect((await stockAdmin()).code).toBe(0);

    // A restart (what the provisioning `start` step does) applies the agent's Caddyfile: nothing on
    // TCP 2019, the admin API only on the socket, which answers root and refuses nobody.
    await run(shell, agentCommands.restart('caddy.service'));
    done.caddy = true;
    expect(await listeners()).toEqual([]);
    const gone = await stockAdmin();
    expect({ code: gone.code, stderr: gone.stderr.toString().trim() }).toEqual({
      code: 7,
      stderr: expect.stringMatching(/^curl: \(7\) Failed to connect to 127\.0\.0\.1 port 2019/) as unknown,
    });
    const viaSocket = await shell.exec(agentCommands.caddyAdminProbe());
    expect(viaSocket.code).toBe(0);
    expect(viaSocket.stdout.toString()).toContain('"reverse_proxy"');
    expect(viaSocket.stdout.toString()).not.toContain('"file_server"');
    expect(await text(shell, agentProbes.unixConnect('root', CADDY_ADMIN_SOCKET))).toBe('connected\n');
    expect(await text(shell, agentProbes.unixConnect('nobody', CADDY_ADMIN_SOCKET))).toBe('EACCES\n');
  });

  it('Caddy serves the agent over HTTPS, verified against the local CA root fetched over SSH', async () => {
    await ensureAgentCaddy();
    const ca = await text(shell, agentProbes.readFile(caddyLocalRootCaPath()));
    expect(ca).toContain('BEGIN CERTIFICATE');
    let res: { status: number; body: string } | undefined;
    let lastErr: unknown;
    for (let i = 0; i < 60 && res?.status !== 200; i++) {
      res = await httpsGet({ ip: host.ipv4, servername: siteName, path: runtime.healthPath, ca }).catch(
        (e: unknown) => {
          lastErr = e;
          return undefined;
        },
      );
      if (res?.status !== 200) await new Promise((r) => setTimeout(r, 250));
    }
    expect({ status: res?.status, lastErr: res ? undefined : String(lastErr) }).toEqual({
      status: 200,
      lastErr: undefined,
    });
    // Names only: the values were checked in /proc/<pid>/environ above; nothing derived from a
    // value (an unsalted hash would confirm a guessed key) is published.
    const body = JSON.parse(res?.body ?? '{}') as { env: { name: string }[] };
    expect(body.env).toEqual([...expected.keys()].sort().map((name) => ({ name })));
    for (const v of expected.values()) {
      if (v.length < 4) continue;
      expect(res?.body).not.toContain(sha256(v));
      expect(res?.body).not.toContain(Buffer.from(v, 'utf8').toString('base64'));
    }
    expect(res?.body).not.toContain(customerKey);
    // Verification is real: without the local CA the same request fails.
    const unverified = await httpsGet({ ip: host.ipv4, servername: siteName, path: '/health' }).catch(
      (e: unknown) => e,
    );
    expect((unverified as { code?: string }).code).toMatch(
      /UNABLE_TO_VERIFY_LEAF_SIGNATURE|SELF_SIGNED|UNABLE_TO_GET_ISSUER_CERT/,
    );
  });

  it('non-root users are refused the metadata service at once; root is not (nft rule in place)', async () => {
    expect((await shell.exec(agentCommands.isActive(METADATA_BLOCK_UNIT))).code).toBe(0);
    const counter = async (): Promise<number> => {
      const table = await text(shell, ['nft', 'list', 'table', 'inet', 'cortex_metadata']);
      expect(table).toMatch(
        /ip daddr 169\.254\.169\.254 meta skuid != 0 counter packets \d+ bytes \d+ reject/,
      );
      return Number(/counter packets (\d+)/.exec(table)?.[1]);
    };
    const probe = async (user: 'root' | 'nobody') => {
      const [outcome, seconds] = (await text(shell, agentProbes.metadataConnect(user))).trim().split(' ');
      return { outcome, seconds: Number(seconds) };
    };
    // A local host has no route to the metadata address (ENETUNREACH before any firewall rule is
    // consulted); give it one on host0, as a cloud server has, for the duration of the test.
    const route = ['ip', 'route', 'add', '169.254.169.254/32', 'dev', 'host0'];
    await run(shell, route);
    try {
      const c0 = await counter();
      const nobody = await probe('nobody');
      expect(nobody.outcome).toBe('ECONNREFUSED');
      expect(nobody.seconds).toBeLessThan(1);
      const c1 = await counter();
      expect(c1).toBeGreaterThan(c0);
      // Root's packet does not match the rule (the counter stays), so it is not refused; with no
      // metadata service behind host0 it times out (or finds no neighbour) instead.
      const root = await probe('root');
      expect(root.outcome).not.toBe('ECONNREFUSED');
      expect(await counter()).toBe(c1);
    } finally {
      await run(shell, ['ip', 'route', 'del', '169.254.169.254/32', 'dev', 'host0']);
    }
  });

  it('with the nft rule flushed, the agent unit itself still refuses the metadata address (IPAddressDeny=)', async () => {
    await ensureAgentOnEnv();
    // A stand-in metadata service on this host (169.254.169.254:80 on lo, root), then the attacker's
    // move: `nft flush ruleset`. A probe runs under the agent unit's own sandbox (the rendered unit,
    // its ExecStart swapped for a one-shot connect) and logs what it got.
    const MD = '169.254.169.254';
    const probeScript = '/usr/local/lib/cortex/md-probe.py';
    const probeUnit = 'cortex-md-probe.service';
    const connectOnce = [
      'import errno, socket, sys',
      's = socket.socket(); s.settimeout(1.5)',
      'try:',
      `    s.connect(("${MD}", 80)); r = "connected"`,
      'except socket.timeout:',
      '    r = "timeout"',
      'except OSError as e:',
      '    r = errno.errorcode.get(e.errno, str(e.errno))',
      'print("md-probe", sys.argv[1], r, flush=True)',
    ].join('\n');
    const probeAs = async (unitFor: (nonce: string) => string): Promise<string> => {
      // Each run prints its own nonce (an ExecStart argument), so its line is told from earlier ones.
      const nonce = randomUUID().replace(/-/g, '');
      await shell.writeFileAtomic(`/etc/systemd/system/${probeUnit}`, Buffer.from(unitFor(nonce)), {
        mode: 0o644,
        dirMode: 0o755,
      });
      await run(shell, agentCommands.daemonReload());
      await run(shell, ['systemctl', 'start', probeUnit]);
      const line = new RegExp(`^md-probe ${nonce} (\\S+)$`, 'm');
      let out = '';
      // journald may take a moment to store the line.
      for (let i = 0; i < 30 && !line.test(out); i++) {
        if (i > 0) await new Promise((r) => setTimeout(r, 100));
        out = await text(shell, ['journalctl', '-u', probeUnit, '-o', 'cat', '--no-pager']);
      }
      return line.exec(out)?.[1] ?? `no output: ${out}`;
    };
    const unitFor =
      (base: typeof runtime, dropDeny = false) =>
      (nonce: string) => {
        const unit = renderAgentUnit({
          ...base,
          execStart: ['/usr/bin/python3', '-I', probeScript, nonce],
          // One shot, no restart: `systemctl start` returns when the probe has run.
          unitOptions: [...base.unitOptions, 'Type=oneshot', 'Restart=no'],
        });
        return dropDeny ? unit.replace(/^IPAddressDeny=169\.254\.169\.254.*\n/m, '') : unit;
      };
    await shell.writeFileAtomic(probeScript, Buffer.from(`${connectOnce}\n`), {
      mode: 0o644,
      dirMode: 0o755,
    });
    await run(shell, ['ip', 'address', 'add', `${MD}/32`, 'dev', 'lo']);
    await run(shell, [
      'systemd-run',
      '--unit=cortex-fake-metadata',
      '/usr/bin/python3',
      '-I',
      '-c',
      `import socket\ns = socket.create_server(("${MD}", 80))\nwhile True:\n    s.accept()[0].close()`,
    ]);
    try {
      await run(shell, ['nft', 'flush', 'ruleset']);
      expect((await text(shell, ['nft', 'list', 'ruleset'])).trim()).toBe('');
      // Control: with the nft rule gone, the same sandbox minus IPAddressDeny= reaches it.
      expect(await probeAs(unitFor(openclawRuntime(), true))).toBe('connected');
      // The agent unit as rendered (openclaw: internet allowed, the metadata address denied; echo:
      // loopback only) is refused by the service manager's cgroup filter.
      expect(await probeAs(unitFor(openclawRuntime()))).toMatch(/^(timeout|EPERM)$/);
      expect(await probeAs(unitFor(runtime))).toMatch(/^(timeout|EPERM)$/);
    } finally {
      await shell.exec(['systemctl', 'stop', 'cortex-fake-metadata.service']);
      await shell.exec(['ip', 'address', 'del', `${MD}/32`, 'dev', 'lo']);
      await shell.exec(agentCommands.removeFile(`/etc/systemd/system/${probeUnit}`));
      await shell.exec(agentCommands.removeFile(probeScript));
      await run(shell, agentCommands.daemonReload());
      // The block back in place (this restarts the agent too: it Requires= the block).
      await run(shell, agentCommands.restart(METADATA_BLOCK_UNIT));
      await run(shell, ['systemctl', 'start', AGENT_UNIT_NAME]);
    }
    expect(await text(shell, ['nft', 'list', 'table', 'inet', 'cortex_metadata'])).toContain(
      '169.254.169.254',
    );
  });

  it('a failing metadata block keeps the agent down (Requires=); best-effort mode lets it start', async () => {
    await ensureAgentOnEnv();
    const dropIn = `/etc/systemd/system/${METADATA_BLOCK_UNIT}.d/zz-test.conf`;
    const setDropIn = async (content: string | undefined) => {
      if (content === undefined) await run(shell, agentCommands.removeFile(dropIn));
      else await shell.writeFileAtomic(dropIn, Buffer.from(content), { mode: 0o644, dirMode: 0o755 });
      await run(shell, agentCommands.daemonReload());
    };
    const active = async (unit: string) => (await shell.exec(agentCommands.isActive(unit))).code === 0;
    expect(await active(AGENT_UNIT_NAME)).toBe(true);
    try {
      // No firewall tool on the script's PATH: with --required (this host's mode) the block fails...
      await setDropIn('[Service]\nEnvironment=PATH=/nonexistent\n');
      expect((await shell.exec(agentCommands.restart(METADATA_BLOCK_UNIT))).code).not.toBe(0);
      // ...which stopped the agent, and a start is refused while the block fails.
      expect(await active(AGENT_UNIT_NAME)).toBe(false);
      const start = await shell.exec(['systemctl', 'start', AGENT_UNIT_NAME]);
      expect(start.code).not.toBe(0);
      expect(start.stderr.toString()).toMatch(/dependency/i);
      expect(await active(AGENT_UNIT_NAME)).toBe(false);
      // The same missing tool in best-effort mode (local hosts): a warning, and the agent starts.
      await setDropIn(
        '[Service]\nEnvironment=PATH=/nonexistent\nExecStart=\nExecStart=/usr/local/sbin/cortex-block-metadata\n',
      );
      expect((await shell.exec(['systemctl', 'start', AGENT_UNIT_NAME])).code).toBe(0);
      expect(await active(METADATA_BLOCK_UNIT)).toBe(true);
      expect(await active(AGENT_UNIT_NAME)).toBe(true);
    } finally {
      await setDropIn(undefined);
    }
    // Back to the real, required block: it loads, and the agent runs.
    await run(shell, agentCommands.restart(METADATA_BLOCK_UNIT));
    await run(shell, ['systemctl', 'start', AGENT_UNIT_NAME]);
    expect(await active(AGENT_UNIT_NAME)).toBe(true);
  });

  it('Caddy holds a request while the agent is down and completes it once the agent is back', async () => {
    await ensureAgentCaddy();
    const ca = await text(shell, agentProbes.readFile(caddyLocalRootCaPath()));
    const get = () =>
      httpsGet({ ip: host.ipv4, servername: siteName, path: runtime.healthPath, ca, timeoutMs: 30_000 });
    const GAP_MS = 1_500;
    await run(shell, ['systemctl', 'stop', AGENT_UNIT_NAME]);
    try {
      const t0 = Date.now();
      const pending = get();
      await new Promise((r) => setTimeout(r, GAP_MS));
      await run(shell, ['systemctl', 'start', AGENT_UNIT_NAME]);
      const res = await pending;
      // 200, and only after the gap: the request was held (lb_try_duration), not answered early.
      expect({ status: res.status, heldMs: Date.now() - t0 >= GAP_MS }).toEqual({
        status: 200,
        heldMs: true,
      });
    } finally {
      await run(shell, ['systemctl', 'start', AGENT_UNIT_NAME]);
    }

    // Negative control: with lb_try_duration (1 s) shorter than the gap, the same request fails.
    const caddyfile = (tryDurationSeconds?: number) =>
      Buffer.from(
        renderCaddyfile({
          siteName,
          agentPort: runtime.port,
          tls: { mode: 'internal' },
          ...(tryDurationSeconds === undefined ? {} : { tryDurationSeconds }),
        }),
      );
    const writeCaddyfile = async (b: Buffer) => {
      await shell.writeFileAtomic(CADDYFILE_PATH, b, { mode: 0o644, dirMode: 0o755 });
      await run(shell, agentCommands.reloadOrRestart('caddy.service'));
    };
    await writeCaddyfile(caddyfile(1));
    await run(shell, ['systemctl', 'stop', AGENT_UNIT_NAME]);
    try {
      const t0 = Date.now();
      const res = await get();
      const elapsed = Date.now() - t0;
      expect(res.status).toBe(502);
      expect(elapsed).toBeGreaterThanOrEqual(900);
      expect(elapsed).toBeLessThan(GAP_MS + 5_000);
    } finally {
      await run(shell, ['systemctl', 'start', AGENT_UNIT_NAME]);
      await writeCaddyfile(caddyfile());
    }
    const back = await get();
    expect(back.status).toBe(200);
  });

  it('after re-keying, the old host key is refused and the new one accepted', async () => {
    const recorded: string[] = [];
    const newKey = await rekeyHost(shell, { onNewKey: async (k) => void recorded.push(k) });
    expect(recorded).toEqual([newKey]);
    expect(newKey).not.toBe(hostKey.publicKey);
    const old = await connectSsh(target, sshOpts).catch((e: unknown) => e);
    expect(isOrchestratorError(old) && old.code).toBe('ssh_host_key_mismatch');
    const fresh = await connectSsh({ ...target, hostPublicKey: newKey }, sshOpts);
    expect((await text(fresh, ['id', '-u'])).trim()).toBe('0');
    await fresh.close();
  });
});
