import { agentCommands } from '../../orchestrator/remote/agent-commands';
import { run, type RemoteShell } from '../../orchestrator/remote/ssh-shell';
import type { Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import type { Workers } from '../../orchestrator/queues/workers';
import {
  makeRotationFromPipeline,
  type RotationWiring,
} from '../../orchestrator/rotation/rotation-from-config';
import type { Rotation } from '../../orchestrator/rotation/rotation-store';
import { Secret } from '../../orchestrator/secret';
import {
  servingAgentUnit,
  swapAgentEnvironment,
  type AgentSwapResult,
} from '../../orchestrator/steps/agent-swap';
import { httpsGet } from '../../orchestrator/steps/https-health';
import { caddyLocalRootCaPath } from '../../templates/caddyfile';
import { agentValue as oracleValue, envFilesHolding, withShell as hostShell } from '../support/host-oracle';
import { canary } from '../support/canary';
import { orgWithKey, startTestPipeline, uniqueSubdomain } from '../support/pipeline';

/**
 * Gaps of issue 11 closed, on a real local host provisioned by the pipeline:
 * - the held restart (the openclaw runtime's swap mode, forced here on the echo runtime, which is
 *   the only one that runs offline) with a new environment the agent refuses to start with: the
 *   swap says not healthy, the rotation rolls the deployment back (pinned to the old version), and
 *   the host serves the old environment again, with nothing of the new value on disk;
 * - revoke shows the deployment `rotating` while it swaps the agent, and `ready` afterwards.
 * The oracle is the serving agent's process environment, read over SSH as root.
 */
jest.setTimeout(900_000);

const ENV = 'ANTHROPIC_API_KEY';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Deployments swapped by held restart (openclaw's mode) instead of their runtime's blue/green. */
const held = new Set<string>();
/** Each deployment's last swap result (its reason says which check failed). */
const lastSwap = new Map<string, AgentSwapResult>();
const swap: typeof swapAgentEnvironment = async (shell, input, opts) => {
  const r = await swapAgentEnvironment(
    shell,
    input,
    held.has(input.deploymentId) ? { ...opts, mode: 'held-restart' } : opts,
  );
  lastSwap.set(input.deploymentId, r);
  return r;
};

/**
 * A fault the test puts on the host (as root, like agent-swap.test.ts's port squatter): every agent
 * slot refuses to start when its key contains this marker, the way an agent that checks its key at
 * start exits on a bad one. `$$` is systemd's escape for the shell's `$`: the value is never on a
 * command line, only in the environment the unit already gets from its env file.
 */
const REFUSED = '-refused-';
/** Likewise, a key with this marker starts, and the agent dies at once: a crash loop (Restart=always). */
const CRASHES = '-crashes-';
/**
 * And with this one the agent starts, answers its health checks, and is killed 4 s later (every
 * start): it passes the checks before the switch and falls over after it, within the soak
 * (ROTATION_SOAK_SECONDS 15 here).
 */
const FALLS_OVER = '-falls-over-';
const FAULT_DROP_IN = '/etc/systemd/system/cortex-agent@.service.d/zz-test-refuse-key.conf';
const faultUnit = [
  '[Service]',
  `ExecStartPre=/bin/sh -c 'case "$$${ENV}" in *${REFUSED}*) exit 1;; esac'`,
  `ExecStartPost=/bin/sh -c 'case "$$${ENV}" in *${CRASHES}*) kill -9 "$$MAINPID";; esac'`,
  `ExecStartPost=/bin/sh -c 'case "$$${ENV}" in *${FALLS_OVER}*) (sleep 4; kill -9 "$$MAINPID") </dev/null >/dev/null 2>&1 & ;; esac'`,
  '',
].join('\n');

let p: Pipeline;
let rot: RotationWiring;
let workers: Workers;

beforeAll(async () => {
  p = await startTestPipeline({ ROTATION_GRACE_SECONDS: '3600', ROTATION_SOAK_SECONDS: '15' });
  rot = makeRotationFromPipeline(p, { swap });
  workers = p.makeWorkerSet(rot.maintenanceTasks, rot.processors);
  workers.start();
});
afterAll(async () => {
  await p?.close(5_000);
});

const provisionOne = async (orgId: string, secretId: string): Promise<string> => {
  const { deploymentId } = await p.service.request({
    orgId,
    name: 'rotation gaps',
    subdomain: uniqueSubdomain('gap'),
    bindings: [{ envVar: ENV, secretId }],
  });
  const d = await p.service.watch(deploymentId, () => undefined, { timeoutMs: 600_000 });
  expect([d.status, d.failureReason]).toEqual(['ready', null]);
  return deploymentId;
};

const destroy = async (id: string): Promise<void> => {
  await p.service.destroy(id).catch(() => undefined);
  await p.service
    .watch(id, () => undefined, { timeoutMs: 180_000, until: (d) => d.status === 'deleted' })
    .catch(() => undefined);
};

const withShell = <T>(id: string, fn: (s: RemoteShell) => Promise<T>): Promise<T> => hostShell(p, id, fn);

/** The variable as the serving agent process has it (the oracle), or undefined. */
const agentValue = (id: string): Promise<string | undefined> => oracleValue(p, id, ENV);

/** How many files under /etc/cortex hold `value`. */
const filesHolding = (id: string, value: string): Promise<number> => envFilesHolding(p, id, value);

/** A client looping on the agent's health URL through Caddy (verified HTTPS) until stopped. */
const loopClient = async (id: string) => {
  const d = await p.store.get(id);
  const ca = await withShell(id, async (shell) =>
    (await run(shell, agentCommands.caddyRootCertificate(caddyLocalRootCaPath()))).stdout.toString(),
  );
  // A client that waits as long as Caddy holds a request (lb_try_duration, 15 s) and a little more:
  // a held request is slow, not failed. The slowest answer is reported.
  const target = { ip: d.ipv4 ?? '', servername: d.dnsName ?? '', ca, path: '/health', timeoutMs: 20_000 };
  let stop = false;
  let ok = 0;
  let slowestMs = 0;
  const failures: string[] = [];
  const runner = (async () => {
    while (!stop) {
      const t0 = Date.now();
      const r = await httpsGet(target).catch((e: unknown) => ({
        status: 0,
        body: (e as { code?: string; message?: string }).code ?? (e as Error).message,
      }));
      slowestMs = Math.max(slowestMs, Date.now() - t0);
      if (r.status === 200) ok++;
      else failures.push(r.status ? `HTTP ${r.status}` : r.body);
      await sleep(50);
    }
  })();
  return {
    stop: async () => {
      stop = true;
      await runner;
      return { ok, failures, slowestMs };
    },
  };
};

const untilCompleted = async (id: string, timeoutMs = 600_000): Promise<Rotation> => {
  const t0 = Date.now();
  for (;;) {
    const s = await rot.service.status(id);
    if (s.state === 'completed') return s;
    if (Date.now() - t0 > timeoutMs)
      throw new Error(`rotation ${id} still ${s.state}: ${JSON.stringify(s.deployments)}`);
    await sleep(500);
  }
};

describe('rotation gaps on a real local host', () => {
  let org: Awaited<ReturnType<typeof orgWithKey>>;
  let id: string;

  beforeAll(async () => {
    org = await orgWithKey(p);
    id = await provisionOne(org.orgId, org.secretId);
    held.add(id);
  });
  afterAll(async () => {
    if (id) await destroy(id);
  });

  /**
   * Rotate to a value the fault refuses (`marker`), by held restart, while a client loops through
   * Caddy; then check the record, the binding, the host and the client. The deployment runs
   * `expected` before and after.
   */
  const refusedBy = async (
    what: string,
    marker: string,
    expected: () => string,
    mode: 'held-restart' | 'blue-green' = 'held-restart',
  ) => {
    if (mode === 'blue-green') held.delete(id);
    await withShell(id, async (shell) => {
      await shell.writeFileAtomic(FAULT_DROP_IN, Buffer.from(faultUnit), { mode: 0o644, dirMode: 0o755 });
      await run(shell, ['systemctl', 'daemon-reload']);
    });
    try {
      expect(await agentValue(id)).toBe(expected());
      const refused = `${canary('anthropic')}${marker}x`;
      const clients = await loopClient(id);
      await sleep(500);
      const t0 = Date.now();
      const started = await rot.service.rotate({ secretId: org.secretId, value: new Secret(refused) });
      const done = await untilCompleted(started.id);
      const ms = Date.now() - t0;
      await sleep(500);
      const seen = await clients.stop();
      console.log(
        `${mode}, ${what}: rotation ${ms} ms, ${seen.ok} requests ok, ${seen.failures.length} failed (${[...new Set(seen.failures)].join(', ')}), slowest ${seen.slowestMs} ms`,
      );

      // The record: rolled back, the binding pinned to the old version.
      expect(done.deployments.map((d) => [d.deploymentId, d.state, d.swapMode, d.reason])).toEqual([
        [id, 'rolled_back', mode, 'unhealthy'],
      ]);
      expect(await rot.rotations.bindings(id)).toEqual([
        { envVar: ENV, secretId: org.secretId, version: 1, pinned: true },
      ]);
      expect((await p.store.get(id)).status).toBe('ready');

      // The host: the old environment runs and answers through Caddy; the refused value is on no disk.
      expect(await agentValue(id)).toBe(expected());
      expect(await filesHolding(id, refused)).toBe(0);
      expect(await filesHolding(id, expected())).toBe(1);
      const unitState = await withShell(id, async (shell) =>
        (await shell.exec(['systemctl', 'is-active', await servingAgentUnit(shell)])).stdout
          .toString()
          .trim(),
      );
      expect(unitState).toBe('active');
      // Clients looping through Caddy during the failed restart saw no failure: Caddy held their
      // requests while the swap found the new environment refused and restarted the old one.
      expect(seen.failures).toEqual([]);
      expect(seen.ok).toBeGreaterThan(5);
      return lastSwap.get(id);
    } finally {
      held.add(id);
      await withShell(id, async (shell) => {
        await shell.exec(['rm', '-f', FAULT_DROP_IN]);
        await shell.exec(['systemctl', 'daemon-reload']);
      });
    }
  };

  it('held restart, the new environment refused by the agent at start: rolled back, pinned, the old environment serves again, nothing new on disk, no failed request', async () => {
    await refusedBy('refused at start', REFUSED, () => org.value);
  });

  it("held restart, the agent crash-loops on the new environment: found within Caddy's hold, rolled back, no failed request", async () => {
    await refusedBy('crash loop', CRASHES, () => org.value);
  });

  it('blue/green, the new agent passes its checks and falls over after the switch: the soak sees it, traffic goes back to the old instance (still running), rolled back, no failed request', async () => {
    const r = await refusedBy('falls over after the switch', FALLS_OVER, () => org.value, 'blue-green');
    expect(r).toMatchObject({ mode: 'blue-green', healthy: false });
    expect(r?.reason).toMatch(
      /^cortex-agent@(blue|green)\.service (stopped answering|restarted) .*after the switch/,
    );
  });

  it('held restart, the agent falls over after its restart: the soak sees it, the previous env file is put back, rolled back, no failed request', async () => {
    const r = await refusedBy('falls over after the restart', FALLS_OVER, () => org.value);
    expect(r).toMatchObject({ mode: 'held-restart', healthy: false });
    expect(r?.reason).toMatch(
      /^cortex-agent@(blue|green)\.service (stopped answering|restarted) .*after the switch/,
    );
  });

  it('revoke shows the deployment `rotating` while it swaps the agent, `ready` afterwards; the variable is gone', async () => {
    const statuses = new Set<string>();
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        statuses.add((await p.store.get(id)).status);
        await sleep(100);
      }
    })();
    try {
      const { jobId } = await rot.service.revoke({ secretId: org.secretId, deploymentId: id });
      const t0 = Date.now();
      while ((await rot.rotations.bindings(id)).length > 0) {
        if (Date.now() - t0 > 300_000) throw new Error(`revoke ${jobId} did not finish`);
        await sleep(250);
      }
      // the status is restored right after the bindings are removed
      for (let i = 0; i < 40 && (await p.store.get(id)).status !== 'ready'; i++) await sleep(250);
    } finally {
      watching = false;
      await watcher;
    }
    expect(statuses.has('rotating')).toBe(true);
    expect((await p.store.get(id)).status).toBe('ready');
    expect(await agentValue(id)).toBeUndefined();
    expect(await filesHolding(id, org.value)).toBe(0);
  });
});

/**
 * A revoke must take effect even from an agent that cannot run without the key: before, the swap
 * without it was unhealthy, the old environment was put back, and the agent kept serving the
 * withdrawn value ("it still holds it"). Now the agent is restarted in place without it and kept
 * so, unhealthy, and the revocation says so.
 */
describe('revoke of a key the agent cannot start without', () => {
  let org: Awaited<ReturnType<typeof orgWithKey>>;
  let id: string;
  const NEEDS_KEY_DROP_IN = '/etc/systemd/system/cortex-agent@.service.d/zz-test-needs-key.conf';

  beforeAll(async () => {
    org = await orgWithKey(p);
    id = await provisionOne(org.orgId, org.secretId);
    await withShell(id, async (shell) => {
      await shell.writeFileAtomic(
        NEEDS_KEY_DROP_IN,
        Buffer.from(`[Service]\nExecStartPre=/bin/sh -c 'test -n "$$${ENV}"'\n`),
        { mode: 0o644, dirMode: 0o755 },
      );
      await run(shell, ['systemctl', 'daemon-reload']);
    });
  });
  afterAll(async () => {
    if (id) await destroy(id);
  });

  /**
   * Every file under the usual trees and every process environment holding `value`, found on the
   * host as root; the value goes in on standard input into a shell variable (never an argv).
   */
  const holdersOf = (host: string, value: string): Promise<string[]> =>
    withShell(host, async (shell) => {
      const r = await shell.exec(
        [
          'sh',
          '-c',
          'IFS= read -r v; ' +
            'printf "%s\\n" "$v" | grep -rlsF -f - /etc /var /run /tmp /root /home /srv /opt /usr/local; ' +
            'for e in /proc/[0-9]*/environ; do printf "%s\\n" "$v" | grep -qsF -f - "$e" && echo "$e"; done; true',
        ],
        { stdin: `${value}\n` },
      );
      return r.stdout.toString().split('\n').filter(Boolean);
    });

  it('the blue/green swap without it fails, then the agent is restarted without it anyway: the value on no disk and in no process, the binding gone, reported unhealthy', async () => {
    expect(await agentValue(id)).toBe(org.value);
    // the oracle finds it where it is before (positive control): the slot's env file, the agent
    const before = await holdersOf(id, org.value);
    expect(before.some((f) => /^\/etc\/cortex\/agent-(blue|green)\.env$/.test(f))).toBe(true);
    expect(before.some((f) => /^\/proc\/\d+\/environ$/.test(f))).toBe(true);
    const { revocationId } = await rot.service.revoke({ secretId: org.secretId, deploymentId: id });
    const t0 = Date.now();
    let rev = await rot.rotations.revocation(revocationId);
    while (rev.state !== 'done') {
      if (Date.now() - t0 > 300_000) throw new Error(`revocation ${revocationId} did not finish`);
      await sleep(500);
      rev = await rot.rotations.revocation(revocationId);
    }
    // both swaps ran: the runtime's blue/green (the old instance kept serving), then the forced one
    expect(lastSwap.get(id)).toMatchObject({ mode: 'held-restart', healthy: false, code: 'kept_unhealthy' });
    expect(rev.result).toMatchObject({
      revoked: [id],
      unhealthy_count: 1,
      failed_count: 0,
    });
    expect(rev.result).toMatchObject({ unhealthy: [{ deploymentId: id, reason: 'kept_unhealthy' }] });
    expect(JSON.stringify(rev.result)).not.toContain(org.value);
    expect(await rot.rotations.bindings(id)).toEqual([]);
    expect((await p.store.get(id)).status).toBe('ready');
    // review R8 #5: the deployment's event stream says so too (and so its org's webhooks), once,
    // before the status goes back to `ready`
    const { events } = await p.db.rpc<{ events: { kind: string; payload: Record<string, unknown> }[] }>(
      'deployment_events__list',
      { p_deployment_id: id, p_after_id: 0, p_limit: 1000 },
    );
    const at = events.findIndex((e) => e.kind === 'health');
    expect(events.filter((e) => e.kind === 'health').map((e) => e.payload)).toEqual([
      { state: 'unhealthy', operation: 'revoke', reason_code: 'kept_unhealthy', revocation_id: revocationId },
    ]);
    expect(events.slice(at).find((e) => e.kind === 'status')?.payload).toMatchObject({
      status: 'ready',
      previous_status: 'rotating',
    });
    // The oracle, as root on the host: no file anywhere holds the value, no process has it in its
    // environment (the agent units are down or crash-looping without it).
    expect(await holdersOf(id, org.value)).toEqual([]);
  });
});
