import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import type { Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import type { Workers } from '../../orchestrator/queues/workers';
import {
  makeRotationFromPipeline,
  type RotationWiring,
} from '../../orchestrator/rotation/rotation-from-config';
import type { Rotation } from '../../orchestrator/rotation/rotation-store';
import { Secret } from '../../orchestrator/secret';
import { swapAgentEnvironment } from '../../orchestrator/steps/agent-swap';
import { agentValue as oracleValue, envFilesHolding, withShell } from '../support/host-oracle';
import { canary } from '../support/canary';
import { adminPool, auditRows, testDatabaseUrl } from '../support/db';
import { orgWithKey, startTestPipeline, uniqueSubdomain } from '../support/pipeline';

/**
 * Key rotation on real local hosts (issue 11): the rotate job fans out, swaps each agent onto its
 * new environment (orchestrator/steps/agent-swap.ts), rolls back the one whose health check fails,
 * retires the old version after the grace period, revokes, and survives a worker SIGKILLed in the
 * middle. The oracle is the agent's own process environment, read over SSH as root.
 */
jest.setTimeout(900_000);

const ENV = 'ANTHROPIC_API_KEY';
const admin = adminPool();
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Deployments whose swap gets no time to become healthy: a real failed health check. */
const starved = new Set<string>();
const swap: typeof swapAgentEnvironment = (shell, input, opts) =>
  swapAgentEnvironment(
    shell,
    input,
    starved.has(input.deploymentId) ? { ...opts, healthTimeoutMs: 1 } : opts,
  );

let p: Pipeline;
let rot: RotationWiring;
let workers: Workers;

beforeAll(async () => {
  p = await startTestPipeline({ ROTATION_GRACE_SECONDS: '2', ROTATE_CONCURRENCY: '8' });
  rot = makeRotationFromPipeline(p, { swap });
  workers = p.makeWorkerSet(rot.maintenanceTasks, rot.processors);
  workers.start();
});
afterAll(async () => {
  await p?.close(5_000);
  await admin.end();
});

const provision = async (pl: Pipeline, orgId: string, secretId: string, n: number): Promise<string[]> => {
  const ids: string[] = [];
  for (let i = 0; i < n; i++)
    ids.push(
      (
        await pl.service.request({
          orgId,
          name: `rotation ${i}`,
          subdomain: uniqueSubdomain('rot'),
          bindings: [{ envVar: ENV, secretId }],
        })
      ).deploymentId,
    );
  const done = await Promise.all(
    ids.map((id) => pl.service.watch(id, () => undefined, { timeoutMs: 600_000 })),
  );
  expect(done.map((d) => [d.status, d.failureReason])).toEqual(ids.map(() => ['ready', null]));
  return ids;
};

const destroyAll = async (pl: Pipeline, ids: readonly string[]): Promise<void> => {
  await Promise.all(
    ids.map(async (id) => {
      await pl.service.destroy(id).catch(() => undefined);
      await pl.service
        .watch(id, () => undefined, { timeoutMs: 180_000, until: (d) => d.status === 'deleted' })
        .catch(() => undefined);
    }),
  );
};

const untilCompleted = async (r: RotationWiring, id: string, timeoutMs = 300_000): Promise<Rotation> => {
  const t0 = Date.now();
  for (;;) {
    const s = await r.service.status(id);
    if (s.state === 'completed') return s;
    if (Date.now() - t0 > timeoutMs)
      throw new Error(`rotation ${id} still ${s.state}: ${JSON.stringify(s.deployments)}`);
    await sleep(500);
  }
};

/** The variable as the serving agent process has it (the oracle), or undefined. */
const agentValue = (pl: Pipeline, id: string): Promise<string | undefined> => oracleValue(pl, id, ENV);

/**
 * Every file on the host, outside /proc, /sys, /dev and the system's own /usr, that holds `value`
 * (grep with the value on standard input, never on a command line): env files, kept and temp
 * files, logs (/var/log, the journal), state (/var/lib), runtime files (/run), /tmp, /root.
 */
const hostFilesHolding = (pl: Pipeline, id: string, value: string): Promise<string[]> =>
  withShell(pl, id, async (shell) =>
    (
      await shell.exec(
        [
          'grep',
          '-rlsF',
          '-f',
          '-',
          '--',
          '/etc',
          '/var',
          '/run',
          '/tmp',
          '/root',
          '/home',
          '/srv',
          '/opt',
          '/usr/local',
        ],
        { stdin: new Secret(`${value}\n`) },
      )
    ).stdout
      .toString()
      .split('\n')
      .filter(Boolean),
  );

const vaultRowsOf = async (secretId: string, version: number): Promise<number> =>
  Number(
    (
      await admin.query<{ n: string }>(
        `select count(*) as n from vault.secrets v join public.secret_versions sv on sv.vault_secret_id = v.id
          where sv.secret_id = $1 and sv.version = $2`,
        [secretId, version],
      )
    ).rows[0]?.n,
  );

describe('rotation on real local hosts', () => {
  it('five deployments: four move to the new key, the one whose health check fails is rolled back and reported', async () => {
    const org = await orgWithKey(p);
    const ids = await provision(p, org.orgId, org.secretId, 5);
    const bad = ids[4] as string;
    starved.add(bad);
    try {
      const next = canary('anthropic');
      const started = await rot.service.rotate(
        { secretId: org.secretId, value: new Secret(next) },
        { actor: 'test' },
      );
      expect(started.deployments.map((d) => d.deploymentId).sort()).toEqual([...ids].sort());
      const seenRotating = new Set<string>();
      const t0 = Date.now();
      let done: Rotation | undefined;
      while (!done && Date.now() - t0 < 300_000) {
        for (const id of ids) if ((await p.store.get(id)).status === 'rotating') seenRotating.add(id);
        const s = await rot.service.status(started.id);
        if (s.state === 'completed') done = s;
        else await sleep(200);
      }
      expect(done?.state).toBe('completed');
      const byState = Object.fromEntries((done?.deployments ?? []).map((d) => [d.deploymentId, d.state]));
      expect(byState).toEqual(
        Object.fromEntries(ids.map((id) => [id, id === bad ? 'rolled_back' : 'switched'])),
      );
      expect(seenRotating.size).toBeGreaterThan(0);
      for (const id of ids) expect((await p.store.get(id)).status).toBe('ready');

      // the oracle: each agent's environment holds the version the record says
      for (const id of ids) expect(await agentValue(p, id)).toBe(id === bad ? org.value : next);

      // audit: every switched deployment's read of v2 under the rotation's job; the rollback too
      const rows = await auditRows(admin, { secretId: org.secretId });
      const job = `rotate-${started.id}`;
      const reads = rows.filter((r) => r.operation === 'read' && r.outcome === 'success' && r.job_id === job);
      expect(new Set(reads.filter((r) => r.version === 2).map((r) => r.deployment_id))).toEqual(new Set(ids));
      expect(
        rows.filter(
          (r) => r.operation === 'bind' && r.deployment_id === bad && r.version === 1 && r.job_id === job,
        ),
      ).toHaveLength(1);
      expect(
        rows.every((r) => !JSON.stringify(r).includes(next) && !JSON.stringify(r).includes(org.value)),
      ).toBe(true);

      // the old version stays while the rolled-back deployment runs it, even past the grace period
      await sleep(2_500);
      await rot.maintenance.sweep();
      expect(await vaultRowsOf(org.secretId, 1)).toBe(1);
      expect((await p.secrets.verifyAuditLog(org.orgId)).ok).toBe(true);
    } finally {
      starved.delete(bad);
      await destroyAll(p, ids);
    }
  });

  it('after the grace period the old version is gone from the vault and from every file on the host', async () => {
    const org = await orgWithKey(p);
    const ids = await provision(p, org.orgId, org.secretId, 1);
    const id = ids[0] as string;
    try {
      const next = canary('anthropic');
      const started = await rot.service.rotate({ secretId: org.secretId, value: new Secret(next) });
      const done = await untilCompleted(rot, started.id);
      expect(done.deployments.map((d) => d.state)).toEqual(['switched']);
      expect(await vaultRowsOf(org.secretId, 1)).toBe(1); // kept for the grace period
      await sleep(2_500);
      const swept = await rot.maintenance.sweep();
      // (the sweep is global: other tests' rotations may be retired in the same pass)
      expect(swept.retired).toContainEqual({ rotationId: started.id, versions: [1] });
      expect(await vaultRowsOf(org.secretId, 1)).toBe(0);
      const deletes = (await auditRows(admin, { secretId: org.secretId })).filter(
        (r) => r.operation === 'delete' && r.version === 1,
      );
      expect(deletes.map((r) => [r.outcome, r.actor])).toEqual([['success', 'maintenance']]);
      expect(await agentValue(p, id)).toBe(next);
      expect(await envFilesHolding(p, id, org.value)).toBe(0);
      expect(await envFilesHolding(p, id, next)).toBeGreaterThan(0);
      // nor anywhere else on the host: logs, state, runtime files
      expect(await hostFilesHolding(p, id, org.value)).toEqual([]);
    } finally {
      await destroyAll(p, ids);
    }
  });

  it('a leaked key: rotated, the old version deleted at once, its reads listed; revoke then removes the variable', async () => {
    const org = await orgWithKey(p);
    const ids = await provision(p, org.orgId, org.secretId, 1);
    const id = ids[0] as string;
    try {
      const started = await rot.service.rotate({
        secretId: org.secretId,
        value: new Secret(canary()),
        leaked: true,
      });
      await untilCompleted(rot, started.id);
      for (let i = 0; i < 50 && (await vaultRowsOf(org.secretId, 1)) > 0; i++) await sleep(200);
      expect(await vaultRowsOf(org.secretId, 1)).toBe(0);
      const reads = await rot.service.readsOf(org.secretId, 1);
      expect(reads.map((r) => [r.deploymentId, r.outcome, r.jobId])).toEqual([
        [id, 'success', `provision-${id}`],
      ]);

      const { jobId } = await rot.service.revoke({ secretId: org.secretId, deploymentId: id });
      for (let i = 0; i < 300; i++) {
        if ((await rot.rotations.bindings(id)).length === 0) break;
        await sleep(500);
      }
      expect(await rot.rotations.bindings(id)).toEqual([]);
      expect(await agentValue(p, id)).toBeUndefined();
      const revokes = (await auditRows(admin, { deploymentId: id })).filter((r) => r.operation === 'revoke');
      expect(revokes.map((r) => [r.outcome, r.job_id])).toEqual([['success', jobId]]);
    } finally {
      await destroyAll(p, ids);
    }
  });
});

describe('a deployment whose provision failed past its secrets step', () => {
  /**
   * A provision that failed at `health` after `secrets` wrote the env file and `start` started the
   * agent: made so here by the superuser (session_replication_role = replica: the status machine's
   * trigger would refuse ready → failed), on a real host that holds the old value.
   */
  const failAtHealth = async (id: string): Promise<void> => {
    const c = await admin.connect();
    try {
      await c.query('begin');
      await c.query('set local session_replication_role = replica');
      await c.query(
        `update public.deployments set status = 'failed', failed_step = 'health', failure_reason = 'health_timeout' where id = $1`,
        [id],
      );
      await c.query(
        `update public.deployment_steps s set status = 'failed', error = 'health_timeout'
           from public.deployments d
          where d.id = $1 and s.deployment_id = d.id and s.run = d.current_run and s.step = 'health'`,
        [id],
      );
      await c.query(
        `delete from public.deployment_steps s using public.deployments d
          where d.id = $1 and s.deployment_id = d.id and s.run = d.current_run and s.step = 'ready'`,
        [id],
      );
      await c.query('commit');
    } catch (e) {
      await c.query('rollback');
      throw e;
    } finally {
      c.release();
    }
  };

  it('a leaked key: the old value is taken off its host and deleted from the vault; its retry runs the new key', async () => {
    const org = await orgWithKey(p);
    const ids = await provision(p, org.orgId, org.secretId, 1);
    const id = ids[0] as string;
    try {
      await failAtHealth(id);
      expect(await envFilesHolding(p, id, org.value)).toBe(1);
      const next = canary('anthropic');
      const started = await rot.service.rotate({
        secretId: org.secretId,
        value: new Secret(next),
        leaked: true,
      });
      const done = await untilCompleted(rot, started.id);
      expect(done.deployments.map((d) => [d.deploymentId, d.state, d.reason])).toEqual([
        [id, 'skipped', 'deployment_failed_reopened'],
      ]);
      // no longer pinned: it follows the current version
      expect(await rot.rotations.bindings(id)).toEqual([
        { envVar: ENV, secretId: org.secretId, version: 2, pinned: false },
      ]);
      // the old value is in no file of the host, and no agent runs it
      expect(await hostFilesHolding(p, id, org.value)).toEqual([]);
      const states = await withShell(p, id, async (shell) =>
        (
          await shell.exec([
            'systemctl',
            'is-active',
            'cortex-agent@blue.service',
            'cortex-agent@green.service',
          ])
        ).stdout
          .toString()
          .trim()
          .split('\n'),
      );
      expect(states).toEqual(['inactive', 'inactive']);
      // leaked: the old version is deleted from the vault at once (nothing runs it any more)
      for (let i = 0; i < 50 && (await vaultRowsOf(org.secretId, 1)) > 0; i++) await sleep(200);
      expect(await vaultRowsOf(org.secretId, 1)).toBe(0);
      expect((await p.store.get(id)).status).toBe('failed');

      // the retry resumes at `secrets`: the new version written, the agent started on it
      await p.service.retry(id);
      // (watch returns at a final status: wait for the retry to take the deployment up first)
      for (let i = 0; i < 120 && (await p.store.get(id)).status === 'failed'; i++) await sleep(250);
      const d = await p.service.watch(id, () => undefined, { timeoutMs: 600_000 });
      expect([d.status, d.failureReason]).toEqual(['ready', null]);
      expect(await agentValue(p, id)).toBe(next);
      expect(await hostFilesHolding(p, id, next)).toEqual(['/etc/cortex/agent-blue.env']);
      expect(await hostFilesHolding(p, id, org.value)).toEqual([]);
      const reads = (await auditRows(admin, { deploymentId: id })).filter(
        (r) => r.operation === 'read' && r.outcome === 'success' && r.version === 2,
      );
      expect(reads.map((r) => r.job_id)).toContain(`provision-${id}`);
      expect((await p.secrets.verifyAuditLog(org.orgId)).ok).toBe(true);
    } finally {
      await destroyAll(p, ids);
    }
  });
});

describe('a worker killed in the middle of a rotation', () => {
  const LOCK_MS = '4000';
  const LEASE_MS = '3000';
  let p2: Pipeline;

  beforeAll(async () => {
    p2 = await startTestPipeline({ JOB_LOCK_MS: LOCK_MS, LEASE_TTL_MS: LEASE_MS, ROTATE_CONCURRENCY: '1' });
  });
  afterAll(async () => {
    await p2?.close(2_000);
  });

  const kill = (child: ChildProcess): Promise<void> =>
    new Promise((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve();
      child.once('exit', () => resolve());
      try {
        process.kill(-(child.pid ?? 0), 'SIGKILL');
      } catch {
        resolve();
      }
    });

  it('leaves every deployment on the old or the new key, and the retry finishes the rotation', async () => {
    // provisioned by the first pipeline (ordinary locks: a 4 s lock on a loaded machine stalls provisions)
    const org = await orgWithKey(p);
    const ids = await provision(p, org.orgId, org.secretId, 2);
    const r2 = makeRotationFromPipeline(p2);
    let child: ChildProcess | undefined;
    let after: Workers | undefined;
    try {
      child = spawn(join(__dirname, '../../node_modules/.bin/tsx'), ['workers/worker.ts'], {
        cwd: join(__dirname, '../..'),
        env: {
          ...process.env,
          DATABASE_URL: testDatabaseUrl(),
          QUEUE_PREFIX: p2.config.QUEUE_PREFIX,
          ORPHAN_GRACE_SECONDS: '604800',
          RECONCILE_IDLE_SECONDS: '86400',
          LOG_LEVEL: 'warn',
          JOB_LOCK_MS: LOCK_MS,
          LEASE_TTL_MS: LEASE_MS,
          ROTATE_CONCURRENCY: '1',
        },
        detached: true,
        stdio: ['ignore', 'ignore', 'ignore'],
      });
      const next = canary('anthropic');
      const started = await r2.service.rotate({ secretId: org.secretId, value: new Secret(next) });
      // SIGKILL while a deployment is being switched
      const t0 = Date.now();
      for (;;) {
        const s = await r2.service.status(started.id);
        if (s.deployments.some((d) => d.state === 'switching')) break;
        if (Date.now() - t0 > 180_000) throw new Error('the worker process never started switching');
        await sleep(50);
      }
      await kill(child);
      const atKill = await r2.service.status(started.id);
      expect(atKill.state).toBe('running');
      for (const id of ids) expect([org.value, next]).toContain(await agentValue(p2, id));

      // another worker: BullMQ hands it the stalled job, which resumes from the rotation record
      after = p2.makeWorkerSet(r2.maintenanceTasks, r2.processors);
      after.start(['rotate']);
      const done = await untilCompleted(r2, started.id);
      expect(done.deployments.map((d) => d.state)).toEqual(['switched', 'switched']);
      for (const id of ids) {
        expect(await agentValue(p2, id)).toBe(next);
        expect((await p2.store.get(id)).status).toBe('ready');
      }
    } finally {
      if (child) await kill(child);
      await after?.close(2_000);
      await destroyAll(p, ids);
    }
  });
});
