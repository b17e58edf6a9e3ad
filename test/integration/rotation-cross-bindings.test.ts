import type { Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import type { Workers } from '../../orchestrator/queues/workers';
import {
  makeRotationFromPipeline,
  type RotationWiring,
} from '../../orchestrator/rotation/rotation-from-config';
import { Secret } from '../../orchestrator/secret';
import { agentEnv, envFilesHolding } from '../support/host-oracle';
import { canary } from '../support/canary';
import { orgWithKey, startTestPipeline, uniqueSubdomain } from '../support/pipeline';

/**
 * Review R8 finding 8, on a real local host provisioned by the pipeline: a deployment bound to two
 * secrets, A and B. A rotation of A starts (A's current version is the new one) but has not reached
 * the deployment yet (no `rotate` worker runs); a revoke of B on that deployment rebuilds its
 * environment meanwhile. It must give the agent A's version the host runs (the old one, as A's
 * rotation record says: `pending`), not A's new version outside that record. Then A's rotation
 * runs and moves the host to the new version. The oracle is the serving agent's process
 * environment and the files under /etc/cortex, read over SSH as root.
 */
jest.setTimeout(900_000);

const A = 'ANTHROPIC_API_KEY';
const B = 'OPENAI_API_KEY';
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let p: Pipeline;
let rot: RotationWiring;
let workers: Workers;

beforeAll(async () => {
  p = await startTestPipeline({ ROTATION_GRACE_SECONDS: '3600', ROTATION_SOAK_SECONDS: '1' });
  rot = makeRotationFromPipeline(p);
  workers = p.makeWorkerSet(rot.maintenanceTasks, rot.processors);
  // no `rotate` worker yet: a rotation started stays `pending` on every deployment
  workers.start(['provision', 'deprovision', 'revoke']);
});
afterAll(async () => {
  await p?.close(5_000);
});

it('a revoke of B during a rotation of A that has not reached the deployment keeps A at the version the host runs; the rotation then moves it', async () => {
  const org = await orgWithKey(p, 'anthropic');
  const bValue = canary('openai');
  const b = await p.secrets.create({
    orgId: org.orgId,
    name: 'openai key',
    provider: 'openai',
    value: new Secret(bValue),
  });
  const { deploymentId: id } = await p.service.request({
    orgId: org.orgId,
    name: 'cross bindings',
    subdomain: uniqueSubdomain('xb'),
    bindings: [
      { envVar: A, secretId: org.secretId },
      { envVar: B, secretId: b.secretId },
    ],
  });
  try {
    const d = await p.service.watch(id, () => undefined, { timeoutMs: 600_000 });
    expect([d.status, d.failureReason]).toEqual(['ready', null]);
    const before = await agentEnv(p, id);
    expect([before.get(A), before.get(B)]).toEqual([org.value, bValue]);

    // A's rotation starts; nothing moves it yet (no rotate worker)
    const aNew = canary('anthropic');
    const started = await rot.service.rotate({ secretId: org.secretId, value: new Secret(aNew) });
    expect((await rot.service.status(started.id)).deployments).toMatchObject([
      { deploymentId: id, state: 'pending' },
    ]);

    // the revoke of B runs on the deployment meanwhile
    const { revocationId } = await rot.service.revoke({ secretId: b.secretId, deploymentId: id });
    const t0 = Date.now();
    let rev = await rot.rotations.revocation(revocationId);
    while (rev.state !== 'done') {
      if (Date.now() - t0 > 300_000) throw new Error(`revocation ${revocationId} did not finish`);
      await sleep(500);
      rev = await rot.rotations.revocation(revocationId);
    }
    expect(rev.result).toMatchObject({ revoked: [id], unhealthy_count: 0, failed_count: 0 });
    const mid = await agentEnv(p, id);
    // B is gone; A is the version A's record says the host runs (pending: the old one)
    expect(mid.has(B)).toBe(false);
    expect(mid.get(A)).toBe(org.value);
    expect(await envFilesHolding(p, id, aNew)).toBe(0);
    expect(await envFilesHolding(p, id, bValue)).toBe(0);
    expect((await rot.service.status(started.id)).deployments).toMatchObject([
      { deploymentId: id, state: 'pending' },
    ]);

    // now A's rotation runs: the host moves to A's new version, B stays out
    workers.start(['rotate']);
    const t1 = Date.now();
    let s = await rot.service.status(started.id);
    while (s.state !== 'completed') {
      if (Date.now() - t1 > 300_000) throw new Error(`rotation ${started.id} still ${s.state}`);
      await sleep(500);
      s = await rot.service.status(started.id);
    }
    expect(s.deployments).toMatchObject([{ deploymentId: id, state: 'switched' }]);
    const after = await agentEnv(p, id);
    expect([after.get(A), after.has(B)]).toEqual([aNew, false]);
  } finally {
    await p.service.destroy(id).catch(() => undefined);
    await p.service
      .watch(id, () => undefined, { timeoutMs: 180_000, until: (x) => x.status === 'deleted' })
      .catch(() => undefined);
  }
});
