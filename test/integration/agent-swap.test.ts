import { randomUUID } from 'node:crypto';
import { request } from 'node:https';
import { loadConfig } from '../../orchestrator/config';
import type { HostDescription, HostProvider } from '../../orchestrator/infra/host-provider';
import { ensureLocalImage, makeLocalHostProvider } from '../../orchestrator/infra/local';
import { agentCommands, parseMainPid } from '../../orchestrator/remote/agent-commands';
import { ENV_FILE_PATH, renderEnvFile } from '../../orchestrator/remote/env-file';
import { generateHostKeyPair } from '../../orchestrator/remote/host-keys';
import { run, waitUntilReady, type RemoteShell } from '../../orchestrator/remote/ssh-shell';
import { decodeBatch, parseBatchOutput, swapCommands } from '../../orchestrator/remote/swap-commands';
import { OrchestratorError } from '../../orchestrator/errors';
import { Secret } from '../../orchestrator/secret';
import { swapAgentEnvironment, type AgentSwapResult } from '../../orchestrator/steps/agent-swap';
import { verifyAgentValues } from '../../orchestrator/steps/verify-values';
import { ACTIVE_SLOT_PATH, agentUnitName, slotPort, type AgentSlot } from '../../templates/agent-slots';
import { caddyLocalRootCaPath } from '../../templates/caddyfile';
import { buildUserData, renderUserData } from '../../templates/cloud-init';
import { AGENT_PORT, echoRuntime } from '../../templates/runtime-profiles';
import { METADATA_BLOCK_UNIT } from '../../templates/systemd-unit';
import { agentProbes, parseEnviron } from '../support/agent-probes';
import { canary } from '../support/canary';

/**
 * The agent swap (issue 11) on a real local host, provisioned like the pipeline does (slot blue):
 * blue/green with a client looping through Caddy over verified HTTPS and one long request in
 * flight, an unhealthy new environment that leaves traffic where it was, runs cut at the worst
 * moments and converged by a re-run, and the held-restart fallback.
 */
jest.setTimeout(300_000);

const { CORTEX_STATE_DIR: stateDir } = loadConfig(process.env);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const text = async (shell: RemoteShell, argv: readonly string[]): Promise<string> =>
  (await run(shell, argv)).stdout.toString('utf8');

interface Got {
  status: number;
  body: string;
}

const httpsGet = (o: { ip: string; servername: string; path: string; ca: string; timeoutMs: number }) =>
  new Promise<Got>((resolve, reject) => {
    const req = request(
      {
        host: o.ip,
        port: 443,
        path: o.path,
        servername: o.servername,
        agent: false,
        headers: { host: o.servername },
        ca: o.ca,
        timeout: o.timeoutMs,
      },
      (res) => {
        let body = '';
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
        res.on('error', reject);
      },
    );
    req.on('timeout', () => req.destroy(new Error('timeout')));
    req.on('error', reject);
    req.end();
  });

/** Clients looping on the agent's URL until stopped: every answer that is not a 200 is a failure. */
const loop = (get: () => Promise<Got>, clients = 2) => {
  let stop = false;
  let ok = 0;
  const failures: string[] = [];
  const runners = Array.from({ length: clients }, async () => {
    while (!stop) {
      try {
        const r = await get();
        if (r.status === 200) ok++;
        else failures.push(`HTTP ${r.status}`);
      } catch (err) {
        failures.push((err as { code?: string; message?: string }).code ?? String(err));
      }
    }
  });
  return {
    stop: async () => {
      stop = true;
      await Promise.all(runners);
      return { ok, failures };
    },
  };
};

/**
 * Wraps a shell so that the swap is cut right before the first command matching `when` (a dropped
 * connection). A command sent on its own is not run; in a batch (several steps in one round trip,
 * swapCommands.batch) the steps before it run, as the host helper would have run them before the
 * connection died, and the rest do not.
 */
const crashingShell = (shell: RemoteShell, when: (argv: readonly string[]) => boolean): RemoteShell => {
  let crashed = false;
  return {
    exec: async (argv, opts) => {
      if (!crashed) {
        const steps = decodeBatch(argv);
        const at = steps ? steps.findIndex((s) => when(s.argv)) : when(argv) ? 0 : -1;
        if (at >= 0) {
          crashed = true;
          if (steps && at > 0) await shell.exec(swapCommands.batch(steps.slice(0, at)), opts);
          throw new OrchestratorError('ssh_connect_failed', 'simulated crash');
        }
      }
      return shell.exec(argv, opts);
    },
    writeFileAtomic: (p, c, o) => shell.writeFileAtomic(p, c, o),
    close: async () => undefined,
  };
};

describe('agent swap on a real local host', () => {
  const orchestratorKey = generateHostKeyPair();
  const hostKey = generateHostKeyPair();
  const deploymentId = randomUUID();
  const subdomain = `s-${deploymentId.slice(0, 8)}`;
  const siteName = `${subdomain}.agents.localhost.test`;
  const runtime = echoRuntime();
  let provider: HostProvider;
  let host: HostDescription;
  let shell: RemoteShell;
  let ca: string;

  const envOf = (key: string): Map<string, Secret> =>
    new Map([
      ['ANTHROPIC_API_KEY', new Secret(key)],
      ['AGENT_MODE', new Secret('plain setting')],
    ]);
  const get = (path = runtime.healthPath, timeoutMs = 30_000) =>
    httpsGet({ ip: host.ipv4, servername: siteName, path, ca, timeoutMs });

  const unitActive = async (slot: AgentSlot) =>
    (await shell.exec(agentCommands.isActive(agentUnitName(slot)))).code === 0;
  /** The value the slot's running process holds for a variable (test oracle: /proc/<pid>/environ as root). */
  const runningValue = async (slot: AgentSlot, name: string): Promise<string | undefined> => {
    const pid = parseMainPid(await text(shell, agentCommands.mainPid(agentUnitName(slot))));
    if (pid < 2) return undefined;
    return parseEnviron((await run(shell, agentProbes.processEnviron(pid))).stdout)
      .get(name)
      ?.toString('utf8');
  };
  const cortexDir = async () =>
    (await text(shell, agentCommands.listDir('/etc/cortex'))).trim().split('\n').sort();
  /** Files under /etc/cortex holding `value` (grep as root, in the test only). */
  const filesHolding = async (value: string) =>
    (await shell.exec(['grep', '-rlF', '--', value, '/etc/cortex'])).stdout.toString('utf8').trim();
  /** Caddy's upstream (never changed by a swap) and where the nft redirect sends it. */
  const caddyUpstream = async (): Promise<string> => {
    const cfg = await text(shell, agentCommands.caddyAdminProbe());
    return /"dial":"(127\.0\.0\.1:\d+)"/.exec(cfg)?.[1] ?? 'none';
  };
  const liveRoute = async (): Promise<string> => {
    const rules = await text(shell, ['nft', 'list', 'table', 'ip', 'cortex_upstream']);
    return /tcp dport (\d+) redirect to :(\d+)/.exec(rules)?.slice(1, 3).join(' -> ') ?? 'none';
  };
  const serving = async (): Promise<AgentSlot> =>
    (await liveRoute()).endsWith(` ${slotPort(AGENT_PORT, 'green')}`) ? 'green' : 'blue';

  /** The host is settled on `slot` with `key`: one instance, one env file, record and Caddy agree. */
  const expectSettled = async (slot: AgentSlot, key: string) => {
    const other: AgentSlot = slot === 'blue' ? 'green' : 'blue';
    expect(await caddyUpstream()).toBe(`127.0.0.1:${AGENT_PORT}`);
    expect(await liveRoute()).toBe(`${AGENT_PORT} -> ${slotPort(AGENT_PORT, slot)}`);
    expect((await text(shell, agentProbes.readFile(ACTIVE_SLOT_PATH))).trim()).toBe(slot);
    expect(await unitActive(slot)).toBe(true);
    expect(await unitActive(other)).toBe(false);
    expect(await runningValue(slot, 'ANTHROPIC_API_KEY')).toBe(key);
    expect(await cortexDir()).toEqual(['active-slot', `agent-${slot}.env`]);
    expect((await text(shell, agentCommands.stat(`/etc/cortex/agent-${slot}.env`))).trim()).toBe(
      '0 0 600 regular file',
    );
    expect((await text(shell, agentCommands.stat(ACTIVE_SLOT_PATH))).trim()).toBe('0 0 600 regular file');
    expect((await shell.exec(['systemctl', 'is-enabled', '--quiet', agentUnitName(slot)])).code).toBe(0);
    expect((await shell.exec(['systemctl', 'is-enabled', '--quiet', agentUnitName(other)])).code).not.toBe(0);
  };

  const keys: string[] = [];
  const newKey = () => {
    const k = canary('anthropic');
    keys.push(k);
    return k;
  };

  beforeAll(async () => {
    const image = await ensureLocalImage({ stateDir });
    provider = makeLocalHostProvider({ stateDir, image: image.rootfs });
    host = await provider.ensure({
      deploymentId,
      orgId: randomUUID(),
      subdomain,
      userData: renderUserData(
        buildUserData({
          hostname: subdomain,
          siteName,
          hostKey,
          orchestratorPublicKey: orchestratorKey.publicKey,
          tls: { mode: 'internal' },
          runtime,
          metadataBlock: 'best-effort',
          installPackages: false,
        }),
      ),
      hostPublicKey: hostKey.publicKey,
    });
    shell = await waitUntilReady(
      { host: host.ipv4, hostPublicKey: host.hostPublicKey },
      {
        privateKey: orchestratorKey.privateKey,
        connectTimeoutMs: 5_000,
        commandTimeoutMs: 60_000,
        timeoutMs: 90_000,
      },
    );
    await run(shell, agentCommands.cloudInitWait());
    // What the secrets and start steps do on a new server: slot blue.
    await shell.writeFileAtomic(
      ENV_FILE_PATH,
      renderEnvFile([...envOf(newKey())].map(([name, value]) => ({ name, value }))),
    );
    await shell.writeFileAtomic(ACTIVE_SLOT_PATH, Buffer.from('blue\n'));
    await run(
      shell,
      agentCommands.enableUnits('caddy.service', 'cortex-upstream.service', agentUnitName('blue')),
    );
    await run(
      shell,
      agentCommands.restartUnits(
        'caddy.service',
        METADATA_BLOCK_UNIT,
        'cortex-upstream.service',
        agentUnitName('blue'),
      ),
    );
    for (let i = 0; i < 80 && !ca?.includes('BEGIN CERTIFICATE'); i++) {
      if (i > 0) await sleep(250);
      ca = (await shell.exec(agentCommands.caddyRootCertificate(caddyLocalRootCaPath()))).stdout.toString(
        'utf8',
      );
    }
    for (let i = 0; i < 80; i++) {
      if ((await get().catch(() => ({ status: 0 }))).status === 200) break;
      await sleep(250);
    }
    await expectSettled('blue', keys[0] as string);
  });

  afterAll(async () => {
    await shell?.close();
    await provider?.destroy(deploymentId);
  });

  it('blue/green: zero failed requests, a long request in flight completes, the new value runs, the old slot and value are gone', async () => {
    const before = await serving();
    const key = newKey();
    const clients = loop(() => get());
    await sleep(500);
    // A long request started before the switch, through Caddy to the old instance.
    const slow = get('/slow?ms=6000', 60_000);
    await sleep(300);
    const t0 = Date.now();
    const result = await swapAgentEnvironment(shell, { deploymentId, runtime: 'echo', env: envOf(key) });
    const swapMs = Date.now() - t0;
    const slowAnswer = await slow;
    await sleep(500);
    const seen = await clients.stop();
    const after: AgentSlot = before === 'blue' ? 'green' : 'blue';
    expect(result).toEqual({ mode: 'blue-green', healthy: true, slot: after });
    expect(seen.failures).toEqual([]);
    expect(seen.ok).toBeGreaterThan(10);
    expect(slowAnswer.status).toBe(200);
    expect(JSON.parse(slowAnswer.body)).toMatchObject({ sleptMs: 6000 });
    await expectSettled(after, key);
    // No earlier value is left anywhere under /etc/cortex.
    for (const old of keys.slice(0, -1)) expect(await filesHolding(old)).toBe('');
    // The orchestrator's own check (nonce HMACs) sees the serving slot's new value.
    const checks = await verifyAgentValues(shell, [
      { envVar: 'ANTHROPIC_API_KEY', secretId: randomUUID(), version: 1, value: new Secret(key) },
    ]);
    expect(checks.get('ANTHROPIC_API_KEY')).toBe('match');
    // The switch waited for the long request (drain), and took this long end to end:
    console.log(
      `blue/green swap: ${swapMs} ms (including a drain of a 6 s request), ${seen.ok} requests, 0 failed`,
    );
  });

  it('a second run with the same environment changes nothing (idempotent)', async () => {
    const slot = await serving();
    const key = keys[keys.length - 1] as string;
    const pid = await text(shell, agentCommands.mainPid(agentUnitName(slot)));
    const t0 = Date.now();
    const result = await swapAgentEnvironment(shell, { deploymentId, runtime: 'echo', env: envOf(key) });
    expect(result).toEqual({ mode: 'blue-green', healthy: true, slot });
    expect(await text(shell, agentCommands.mainPid(agentUnitName(slot)))).toBe(pid);
    const ms = Date.now() - t0;
    expect(ms).toBeLessThan(15_000);
    console.log(`idempotent re-run: ${ms} ms`);
    await expectSettled(slot, key);
  });

  it('an unhealthy new environment leaves traffic on the old slot: zero failures, healthy: false, nothing of it left', async () => {
    const slot = await serving();
    const idle: AgentSlot = slot === 'blue' ? 'green' : 'blue';
    const current = keys[keys.length - 1] as string;
    // Something else holds the idle slot's port and never answers HTTP: the new instance cannot bind.
    await run(shell, [
      'systemd-run',
      '--unit=cortex-port-squatter',
      '/usr/bin/python3',
      '-I',
      '-c',
      `import socket\ns = socket.create_server(("127.0.0.1", ${slotPort(AGENT_PORT, idle)}))\nwhile True:\n    s.accept()[0].close()`,
    ]);
    try {
      const clients = loop(() => get());
      await sleep(300);
      const rejected = newKey();
      const t0 = Date.now();
      const result: AgentSwapResult = await swapAgentEnvironment(shell, {
        deploymentId,
        runtime: 'echo',
        env: envOf(rejected),
      });
      const ms = Date.now() - t0;
      const seen = await clients.stop();
      console.log(`unhealthy new environment refused in ${ms} ms, ${seen.ok} requests, 0 failed`);
      expect(result).toMatchObject({ mode: 'blue-green', healthy: false, slot });
      expect(result.reason).toMatch(
        new RegExp(`${agentUnitName(idle).replace(/[.@]/g, '\\$&')} is not healthy`),
      );
      expect(result.reason).not.toContain(rejected);
      expect(seen.failures).toEqual([]);
      expect(seen.ok).toBeGreaterThan(3);
      // As before: the old slot serves the old value; the rejected value is nowhere on disk.
      await expectSettled(slot, current);
      expect(await filesHolding(rejected)).toBe('');
    } finally {
      await shell.exec(['systemctl', 'stop', 'cortex-port-squatter.service']);
      await shell.exec(['systemctl', 'reset-failed', 'cortex-port-squatter.service']);
    }
  });

  it.each([
    [
      'before traffic moves (the route)',
      (a: readonly string[]) => a.join(' ') === 'systemctl restart cortex-upstream.service',
    ],
    // the soak (watching the new slot while the old one drains) is a helper step of the settle batch
    [
      'after traffic moved (the soak and drain)',
      (a: readonly string[]) => a[0] === 'python3' && a[4] === 'soak',
    ],
    [
      'right after the soak (disabling the old slot)',
      (a: readonly string[]) => /^systemctl disable --no-reload cortex-agent@/.test(a.join(' ')),
    ],
    [
      'while removing the old env file',
      (a: readonly string[]) => a[0] === 'rm' && a.some((f) => /agent-(blue|green)\.env$/.test(f)),
    ],
  ])('a run cut %s leaves one healthy slot serving, and a re-run converges', async (_, when) => {
    const key = newKey();
    const clients = loop(() => get());
    await sleep(300);
    const cut = await swapAgentEnvironment(crashingShell(shell, when), {
      deploymentId,
      runtime: 'echo',
      env: envOf(key),
    }).then(
      () => 'finished',
      (e: unknown) => (e as { code?: string }).code,
    );
    expect(cut).toBe('ssh_connect_failed');
    // Whatever the cut left, traffic is served.
    expect((await get()).status).toBe(200);
    const t0 = Date.now();
    const result = await swapAgentEnvironment(shell, { deploymentId, runtime: 'echo', env: envOf(key) });
    const ms = Date.now() - t0;
    const seen = await clients.stop();
    console.log(`re-run after a cut ${_}: ${ms} ms, ${seen.ok} requests, 0 failed`);
    expect(result).toMatchObject({ mode: 'blue-green', healthy: true });
    expect(seen.failures).toEqual([]);
    await expectSettled(result.slot as AgentSlot, key);
    for (const old of keys.slice(0, -1)) expect(await filesHolding(old)).toBe('');
  });

  it('a new instance that crashes and is restarted by systemd between its health check and its soak (during the switch): the soak sees the restart, traffic goes back, the old slot answers through Caddy', async () => {
    const slot = await serving();
    const current = keys[keys.length - 1] as string;
    const key = newKey();
    // Right before the batch holding the soak is sent (the route has moved), the new instance's
    // main process is killed and the test waits until systemd (Restart=always, RestartSec=1) has
    // it answering again on its own port: every probe of the soak then answers, and only the
    // baseline taken at the health check tells this instance from the one judged healthy.
    let restarted = false;
    /** For each batch sent after the soak's: does it probe the agent's site through Caddy? */
    const afterSoak: boolean[] = [];
    const restarting: RemoteShell = {
      exec: async (argv, opts) => {
        const steps = decodeBatch(argv);
        const soak = steps?.find((st) => st.argv[0] === 'python3' && st.argv[4] === 'soak');
        if (soak && !restarted) {
          restarted = true;
          const unit = soak.argv[5] as string;
          const port = Number(soak.argv[6]);
          const pid = parseMainPid(await text(shell, agentCommands.mainPid(unit)));
          expect(pid).toBeGreaterThan(1);
          await run(shell, ['kill', '-9', String(pid)]);
          let back = false;
          for (let i = 0; i < 120 && !back; i++) {
            await sleep(250);
            const now = parseMainPid(await text(shell, agentCommands.mainPid(unit)));
            back =
              now > 1 &&
              now !== pid &&
              (await shell.exec(swapCommands.httpProbeLoopback(port, runtime.healthPath))).stdout
                .toString('utf8')
                .trim() === '200';
          }
          expect(back).toBe(true);
        } else if (restarted && steps)
          afterSoak.push(
            steps.some(
              (st) =>
                st.argv[0] === 'curl' && st.argv.at(-1) === `https://${siteName}:443${runtime.healthPath}`,
            ),
          );
        return shell.exec(argv, opts);
      },
      writeFileAtomic: (p, c, o) => shell.writeFileAtomic(p, c, o),
      close: async () => undefined,
    };
    const result = await swapAgentEnvironment(restarting, { deploymentId, runtime: 'echo', env: envOf(key) });
    expect(restarted).toBe(true);
    const idle: AgentSlot = slot === 'blue' ? 'green' : 'blue';
    // not healthy, and a clean rollback: the old slot answered through Caddy after the route back
    expect(result).toEqual({
      mode: 'blue-green',
      healthy: false,
      reason: `${agentUnitName(idle)} restarted after the switch (active/running)`,
      slot,
    });
    // one batch after the soak's (the route back), closed by the probe through Caddy
    expect(afterSoak).toEqual([true]);
    await expectSettled(slot, current);
    expect(await filesHolding(key)).toBe('');
  });

  it('held restart (the fallback): Caddy holds requests while the one instance restarts; zero failures, new value, no previous file left', async () => {
    const slot = await serving();
    const key = newKey();
    const clients = loop(() => get());
    await sleep(300);
    const t0 = Date.now();
    const result = await swapAgentEnvironment(
      shell,
      { deploymentId, runtime: 'echo', env: envOf(key) },
      { mode: 'held-restart' },
    );
    const swapMs = Date.now() - t0;
    await sleep(300);
    const seen = await clients.stop();
    expect(result).toEqual({ mode: 'held-restart', healthy: true, slot });
    expect(seen.failures).toEqual([]);
    await expectSettled(slot, key);
    for (const old of keys.slice(0, -1)) expect(await filesHolding(old)).toBe('');
    console.log(`held restart: ${swapMs} ms, ${seen.ok} requests, 0 failed`);
  });

  it("the helper's systemctl over D-Bus answers as systemctl does, runs no systemctl process, and waits for the job", async () => {
    // Test units: one slow to start (a start must wait for it to be active), one whose start fails.
    const units = {
      'cortex-test-slow.service':
        '[Service]\nType=oneshot\nRemainAfterExit=yes\nExecStartPre=/bin/sleep 2\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n',
      'cortex-test-fails.service': '[Service]\nType=oneshot\nExecStart=/bin/false\n',
    };
    for (const [name, body] of Object.entries(units))
      await shell.writeFileAtomic(`/etc/systemd/system/${name}`, Buffer.from(body), {
        mode: 0o644,
        dirMode: 0o755,
      });
    // A systemctl earlier on PATH that logs each start of a process, then runs the real one.
    await shell.writeFileAtomic(
      '/usr/local/sbin/systemctl',
      Buffer.from('#!/bin/sh\necho "$*" >> /run/cortex-test-systemctl.log\nexec /usr/bin/systemctl "$@"\n'),
      { mode: 0o755, dirMode: 0o755 },
    );
    const cleanUp = async () => {
      await shell.exec([
        'rm',
        '-f',
        '/usr/local/sbin/systemctl',
        '/run/cortex-test-systemctl.log',
        ...Object.keys(units).map((n) => `/etc/systemd/system/${n}`),
      ]);
      await run(shell, ['systemctl', 'daemon-reload']);
    };
    const slot = await serving();
    const idle: AgentSlot = slot === 'blue' ? 'green' : 'blue';
    try {
      await run(shell, ['systemctl', 'daemon-reload']);
      await shell.exec(['rm', '-f', '/run/cortex-test-systemctl.log']);
      const calls = async () =>
        (await shell.exec(['cat', '/run/cortex-test-systemctl.log'])).stdout.toString('utf8').trim();
      const viaHelper = async (argv: string[]) => {
        const r = await shell.exec(swapCommands.batch([{ argv }]));
        const [answer] = parseBatchOutput(r.stdout.toString('utf8'));
        if (!answer) throw new Error(`no answer to ${argv.join(' ')}`);
        return { code: answer.code, out: answer.stdout.toString('utf8') };
      };
      const directCalls: string[] = [];
      const direct = async (argv: string[]) => {
        if (argv[0] === 'systemctl') directCalls.push(argv.slice(1).join(' '));
        const r = await shell.exec(argv);
        return { code: r.code, out: r.stdout.toString('utf8') };
      };
      // Reads: the same code and the same bytes, in systemctl's order (not the order asked).
      const reads = [
        [
          'show',
          '--property=NRestarts,ActiveState,SubState,ExecMainStartTimestampMonotonic',
          agentUnitName(slot),
        ],
        ['show', '--property=ActiveState,SubState,Result,ExecMainStatus', '--value', agentUnitName(slot)],
        ['show', '--property=ActiveState,MainPID', agentUnitName(idle)],
        ['show', '--property=Id,LoadState,ActiveState', '--value', 'cortex-no-such.service'],
        [
          'show',
          '--property=NRestarts,ActiveState,SubState,Result,ExecMainStatus',
          'cortex-upstream.service',
        ],
      ];
      for (const a of reads)
        expect(await viaHelper(['systemctl', ...a])).toEqual(await direct(['systemctl', ...a]));
      // Changes, each made by both, with the same answer and the same state after.
      // Changes, each made by both from the same state (`before` run first each time), with the same
      // answer and the same state after.
      const fail = ['start', 'cortex-test-fails.service'];
      const pairs: { argv: string[]; unit: string; before?: string[] }[] = [
        { argv: ['stop', 'cortex-no-such.service'], unit: '' },
        { argv: ['start', 'cortex-no-such.service'], unit: '' },
        { argv: ['reset-failed', 'cortex-no-such.service'], unit: '' },
        { argv: fail, unit: 'cortex-test-fails.service' },
        {
          argv: ['reset-failed', 'cortex-test-fails.service'],
          unit: 'cortex-test-fails.service',
          before: fail,
        },
        { argv: ['enable', '--no-reload', 'cortex-test-slow.service'], unit: 'cortex-test-slow.service' },
        { argv: ['disable', '--no-reload', 'cortex-test-slow.service'], unit: 'cortex-test-slow.service' },
        { argv: ['stop', agentUnitName(idle)], unit: agentUnitName(idle) },
      ];
      const stateOf = async (u: string) =>
        u === ''
          ? ''
          : (await direct(['systemctl', 'show', '--property=ActiveState,Result', u])).out +
            (await direct(['systemctl', 'is-enabled', u])).out;
      for (const { argv, unit, before } of pairs) {
        if (before) await direct(['systemctl', ...before]);
        const h = await viaHelper(['systemctl', ...argv]);
        const hs = await stateOf(unit);
        if (before) await direct(['systemctl', ...before]);
        const d = await direct(['systemctl', ...argv]);
        expect({ argv, code: h.code, state: hs }).toEqual({ argv, code: d.code, state: await stateOf(unit) });
      }
      // A start returns once the job is done (the unit active after its 2 s ExecStartPre), as
      // systemctl start does; a restart of several units waits for each.
      const t0 = Date.now();
      expect(await viaHelper(['systemctl', 'start', 'cortex-test-slow.service'])).toEqual({
        code: 0,
        out: '',
      });
      expect(Date.now() - t0).toBeGreaterThanOrEqual(1_900);
      expect((await direct(['systemctl', 'is-active', 'cortex-test-slow.service'])).out.trim()).toBe(
        'active',
      );
      expect(
        await viaHelper(['systemctl', 'restart', 'cortex-test-slow.service', 'cortex-upstream.service']),
      ).toEqual({ code: 0, out: '' });
      expect(await viaHelper(['systemctl', 'stop', 'cortex-test-slow.service'])).toEqual({
        code: 0,
        out: '',
      });
      expect((await direct(['systemctl', 'is-active', 'cortex-test-slow.service'])).out.trim()).toBe(
        'inactive',
      );
      // Every systemctl process the log shows is one `direct` started: none for any of the helper's
      // answers (the wrapper logs each start; the direct calls are the positive control).
      const logged = (await calls()).split('\n');
      expect(logged.length).toBeGreaterThan(10);
      expect([...logged].sort()).toEqual([...directCalls].sort());
      // A form the helper does not answer itself still runs systemctl (and is logged).
      expect((await viaHelper(['systemctl', 'is-enabled', 'cortex-test-slow.service'])).out.trim()).toBe(
        'disabled',
      );
      expect((await calls()).split('\n').slice(-1)).toEqual(['is-enabled cortex-test-slow.service']);
    } finally {
      await cleanUp();
    }
    await expectSettled(slot, keys[keys.length - 1] as string);
  });
});
