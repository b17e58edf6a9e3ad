import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { findLocalImage, makeLocalHostProvider } from '../../orchestrator/infra/local';
import type { Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import { isOrchestratorError } from '../../orchestrator/errors';
import { jobIdFor } from '../../orchestrator/queues/job-payloads';
import { canary } from '../support/canary';
import { adminPool, auditRows } from '../support/db';
import {
  dumpRedis,
  orgWithKey,
  startTestPipeline,
  testPipelineConfig,
  uniqueSubdomain,
} from '../support/pipeline';
import { makeTestHostSpec } from '../support/local-hosts';
import { rejection } from '../support/rejection';

/**
 * The pipeline's guarantees against what goes wrong around it: a payload that holds a value, two
 * requests racing for one deployment, a deprovision during a provision, bindings another
 * organisation owns, a secret revoked mid-provision, and Redis losing everything.
 */
jest.setTimeout(600_000);

const admin = adminPool();
afterAll(async () => {
  await admin.end();
});

const until = async <T>(fn: () => Promise<T | undefined>, timeoutMs: number): Promise<T> => {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 200));
  }
};

describe('queues and leases', () => {
  let p: Pipeline;
  beforeAll(async () => {
    p = await startTestPipeline();
  });
  afterAll(async () => {
    await p.close(2_000);
  });

  it('a payload holding anything but ids is refused as unrecoverable, and the value is gone from Redis', async () => {
    const workers = p.makeWorkerSet();
    workers.start(['provision']);
    try {
      const value = canary();
      const jobId = `provision-hostile-${randomUUID().slice(0, 8)}`;
      // What a compromised producer could put in Redis directly, bypassing enqueue's own check.
      await p.queues.queues.provision.add(
        'provision',
        { deploymentId: randomUUID(), apiKey: value },
        { jobId, attempts: 5 },
      );
      // The state first, then the job read afresh: a job read before its state was checked is a
      // snapshot from while it still ran (data not wiped yet, no reason), seen once in CI.
      const q = p.queues.queues.provision;
      const job = await until(
        async () => ((await q.getJobState(jobId)) === 'failed' ? await q.getJob(jobId) : undefined),
        30_000,
      );
      expect({ attempts: job.attemptsMade, reason: job.failedReason, data: job.data as unknown }).toEqual({
        attempts: 1,
        reason: 'payload refused for queue provision: (root) (ids only)',
        data: {},
      });
      const dump = await dumpRedis(p.redis, `${p.config.QUEUE_PREFIX}:*`);
      expect(dump.size).toBeGreaterThan(0);
      expect([...dump].filter(([k, v]) => k.includes(value) || v.includes(value))).toEqual([]);
    } finally {
      await workers.close(2_000);
    }
  });

  it('enqueue refuses such a payload before Redis sees it', async () => {
    const err = await rejection(
      p.queues.enqueue('provision', { deploymentId: randomUUID(), value: 'x' } as never, 'k1'),
    );
    expect(isOrchestratorError(err) && [err.code, err.field]).toEqual(['invalid_input', 'payload']);
    expect(await p.queues.queues.provision.getJob(jobIdFor('provision', 'k1'))).toBeUndefined();
  });

  it('the per-deployment lease admits one holder, and expires with a dead one', async () => {
    const id = randomUUID();
    const a = await p.leases.acquire(id, 'a');
    expect(a).toBeDefined();
    expect(await p.leases.acquire(id, 'b')).toBeUndefined();
    await a?.release();
    const b = await p.leases.acquire(id, 'b');
    expect(b?.held()).toBe(true);
    await b?.release();
    // A holder that stops renewing (a SIGKILLed worker): its key expires after the TTL.
    const key = p.leases.key(id);
    await p.redis.set(key, 'dead-holder/x', 'PX', 300);
    expect(await p.leases.acquire(id, 'c')).toBeUndefined();
    await new Promise((r) => setTimeout(r, 400));
    const c = await p.leases.acquire(id, 'c');
    expect(c).toBeDefined();
    await c?.release();
  });

  it('two requests racing for one deployment across two worker processes make one host', async () => {
    const org = await orgWithKey(p);
    const other = await startTestPipeline({ QUEUE_PREFIX: p.config.QUEUE_PREFIX });
    const w1 = p.makeWorkerSet();
    const w2 = other.makeWorkerSet();
    try {
      const { deploymentId } = await p.service.request({
        orgId: org.orgId,
        name: 'race',
        subdomain: uniqueSubdomain('r'),
        bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: org.secretId }],
      });
      // A second enqueue for the same deployment (a retry clicked twice, a reconciler pass).
      await Promise.all([p.service.retry(deploymentId), other.service.retry(deploymentId)]);
      w1.start(['provision', 'deprovision']);
      w2.start(['provision', 'deprovision']);
      const ready = await p.service.watch(deploymentId, () => undefined, { timeoutMs: 240_000 });
      expect(ready.status).toBe('ready');
      expect(ready.steps.filter((s) => s.step === 'host').map((s) => s.attempt)).toEqual([1]);
      expect((await p.hosts.list()).filter((id) => id === deploymentId)).toHaveLength(1);
      await p.service.destroy(deploymentId);
      await p.service.watch(deploymentId, () => undefined, {
        until: (d) => d.status === 'deleted',
        timeoutMs: 120_000,
      });
    } finally {
      await w1.close(2_000);
      await w2.close(2_000);
      await other.close(2_000);
    }
  });
});

describe('deprovision wins; denials', () => {
  let p: Pipeline;
  let release: (() => void) | undefined;
  let holdAt: string | undefined;
  beforeAll(async () => {
    p = await startTestPipeline(
      {},
      {
        hooks: {
          onStepStarted: async (step) => {
            if (step === holdAt) await new Promise<void>((r) => (release = r));
          },
        },
      },
    );
  });
  afterAll(async () => {
    release?.();
    await p.close(2_000);
  });

  it('a deprovision requested during a provision wins: the provision stops at its next step boundary; deleted, no host', async () => {
    const org = await orgWithKey(p);
    const workers = p.makeWorkerSet();
    workers.start(['provision', 'deprovision']);
    try {
      holdAt = 'configure';
      const { deploymentId } = await p.service.request({
        orgId: org.orgId,
        name: 'destroyed mid-flight',
        subdomain: uniqueSubdomain('d'),
        bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: org.secretId }],
      });
      await until(async () => (release ? true : undefined), 120_000);
      expect(await p.hosts.describe(deploymentId)).toBeDefined();
      await p.service.destroy(deploymentId);
      holdAt = undefined;
      release?.();
      const gone = await p.service.watch(deploymentId, () => undefined, {
        until: (d) => d.status === 'deleted',
        timeoutMs: 120_000,
      });
      expect(gone.status).toBe('deleted');
      // The provision did not go on past the boundary: no secrets step, no read of the key.
      expect(gone.steps.filter((s) => s.operation === 'provision').map((s) => s.step)).toEqual([
        'host',
        'dns',
        'ssh',
        'configure',
      ]);
      expect((await auditRows(admin, { deploymentId })).filter((r) => r.operation === 'read')).toEqual([]);
      expect(await p.hosts.describe(deploymentId)).toBeUndefined();
      expect(await p.dns.lookup(`${gone.subdomain}.${p.config.DNS_ZONE}`)).toBeUndefined();
    } finally {
      release = undefined;
      await workers.close(2_000);
    }
  });

  it("a binding to another organisation's key is refused at request time, audited, and nothing is created", async () => {
    const a = await orgWithKey(p);
    const b = await orgWithKey(p);
    const before = await admin.query<{ n: string }>(
      'select count(*) as n from public.deployments where org_id = $1',
      [a.orgId],
    );
    const err = await rejection(
      p.service.request({
        orgId: a.orgId,
        name: 'thief',
        subdomain: uniqueSubdomain('x'),
        bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: b.secretId }],
      }),
    );
    expect(isOrchestratorError(err) && [err.code, err.field]).toEqual([
      'secret_denied',
      'bindings[0].secret_id',
    ]);
    const after = await admin.query<{ n: string }>(
      'select count(*) as n from public.deployments where org_id = $1',
      [a.orgId],
    );
    expect(after.rows[0]?.n).toBe(before.rows[0]?.n);
    const denial = await admin.query<{ operation: string; outcome: string; secret_id: string | null }>(
      `select operation, outcome, secret_id from public.secret_access_log where org_id = $1 order by id desc limit 1`,
      [a.orgId],
    );
    expect(denial.rows).toEqual([{ operation: 'bind', outcome: 'denied', secret_id: null }]);
  });
});

describe('maintenance', () => {
  it('the orphan sweep reports a host no live deployment owns, and removes it only after the grace period', async () => {
    // A provider of its own (state directory and address range): the sweep sees only this test's
    // hosts, never those of another test or of a developer's demo on the same machine.
    const { CORTEX_STATE_DIR } = testPipelineConfig();
    const image = await findLocalImage(CORTEX_STATE_DIR);
    if (!image) throw new Error('no local host image: npm run image:build');
    const state = await mkdtemp(path.join(tmpdir(), 'cortex-orphans-'));
    const hosts = makeLocalHostProvider({ stateDir: state, image: image.rootfs, subnet: '10.214.0.0/24' });
    const p = await startTestPipeline({ ORPHAN_GRACE_SECONDS: '1' }, { hosts });
    try {
      const workers = p.makeWorkerSet();
      // A host whose deployment does not exist (a crashed run, a record deleted by hand).
      const stray = makeTestHostSpec();
      await p.hosts.ensure(stray.spec);
      // And a host a live deployment owns, which must survive every sweep.
      const org = await orgWithKey(p);
      const owned = await p.service.request({
        orgId: org.orgId,
        name: 'owned',
        subdomain: uniqueSubdomain('o'),
        bindings: [],
      });
      const ownedSpec = makeTestHostSpec();
      await p.hosts.ensure({ ...ownedSpec.spec, deploymentId: owned.deploymentId });
      try {
        const first = await workers.orphanSweep();
        expect(first.waiting).toContain(stray.spec.deploymentId);
        expect(first.waiting).not.toContain(owned.deploymentId);
        expect(first.removed).toEqual([]);
        expect(await p.hosts.describe(stray.spec.deploymentId)).toBeDefined();
        await new Promise((r) => setTimeout(r, 1_200));
        const second = await workers.orphanSweep();
        expect(second.removed).toEqual([stray.spec.deploymentId]);
        expect(await p.hosts.describe(stray.spec.deploymentId)).toBeUndefined();
        expect(await p.hosts.describe(owned.deploymentId)).toBeDefined();
      } finally {
        await p.hosts.destroy(stray.spec.deploymentId);
        await p.hosts.destroy(owned.deploymentId);
        await p.service.destroy(owned.deploymentId);
      }
    } finally {
      await p.close(2_000);
      await rm(state, { recursive: true, force: true });
    }
  });
});
