import type { Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import type { Workers } from '../../orchestrator/queues/workers';
import { run } from '../../orchestrator/remote/ssh-shell';
import {
  makeRotationFromPipeline,
  type RotationWiring,
} from '../../orchestrator/rotation/rotation-from-config';
import type { Rotation } from '../../orchestrator/rotation/rotation-store';
import { Secret } from '../../orchestrator/secret';
import { canary } from '../support/canary';
import { agentEnv, envFilesHolding, withShell } from '../support/host-oracle';
import { startTestPipeline, uniqueSubdomain } from '../support/pipeline';

/**
 * A joint swap on a real local host (review R11 finding 2). A deployment bound to two keys, A and
 * B; both old keys are "revoked at the provider" and the agent refuses to start on a dead key (a
 * unit drop-in the test puts on the host, as root: any slot whose A or B holds the marker exits in
 * ExecStartPre, the way an agent that checks its keys at start exits on a revoked one). The
 * customer rotates both keys at once. Before, each rotation's swap carried the other's old (dead)
 * key, failed, and both rolled back, leaving the agent on two dead keys. Now the first rotation to
 * take the deployment carries the other's new version too, one swap, and both record it switched.
 * The oracle is the serving agent's process environment and the files under /etc/cortex (SSH).
 */
jest.setTimeout(900_000);

const A = 'ANTHROPIC_API_KEY';
const B = 'OPENAI_API_KEY';
const DEAD = '-dead-';
const DROP_IN = '/etc/systemd/system/cortex-agent@.service.d/zz-test-dead-keys.conf';
// `$$` is systemd's escape for the shell's `$`: no value is on a command line
const deadKeysUnit = [
  '[Service]',
  `ExecStartPre=/bin/sh -c 'case "$$${A} $$${B}" in *${DEAD}*) exit 1;; esac'`,
  '',
].join('\n');
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let p: Pipeline;
let rot: RotationWiring;
let workers: Workers;

beforeAll(async () => {
  p = await startTestPipeline({ ROTATION_GRACE_SECONDS: '3600', ROTATION_SOAK_SECONDS: '1' });
  rot = makeRotationFromPipeline(p);
  workers = p.makeWorkerSet(rot.maintenanceTasks, rot.processors);
  // no `rotate` worker yet: both rotations are recorded before either reaches the deployment
  workers.start(['provision', 'deprovision']);
});
afterAll(async () => {
  await p?.close(5_000);
});

const untilCompleted = async (id: string, timeoutMs = 300_000): Promise<Rotation> => {
  const t0 = Date.now();
  for (;;) {
    const s = await rot.service.status(id);
    if (s.state === 'completed') return s;
    if (Date.now() - t0 > timeoutMs)
      throw new Error(`rotation ${id} still ${s.state}: ${JSON.stringify(s.deployments)}`);
    await sleep(500);
  }
};

it('two keys rotated at once, both old ones dead: one swap carries both new keys, both rotations record it switched', async () => {
  const org = await p.db.rpc<{ id: string }>('organizations__create', { p_name: 'joint swap' });
  const aOld = `${canary('anthropic')}${DEAD}x`;
  const bOld = `${canary('openai')}${DEAD}x`;
  const a = await p.secrets.create({
    orgId: org.id,
    name: 'a',
    provider: 'anthropic',
    value: new Secret(aOld),
  });
  const b = await p.secrets.create({ orgId: org.id, name: 'b', provider: 'openai', value: new Secret(bOld) });
  const { deploymentId: id } = await p.service.request({
    orgId: org.id,
    name: 'joint swap',
    subdomain: uniqueSubdomain('js'),
    bindings: [
      { envVar: A, secretId: a.secretId },
      { envVar: B, secretId: b.secretId },
    ],
  });
  try {
    const d = await p.service.watch(id, () => undefined, { timeoutMs: 600_000 });
    expect([d.status, d.failureReason]).toEqual(['ready', null]);
    const before = await agentEnv(p, id);
    expect([before.get(A), before.get(B)]).toEqual([aOld, bOld]);

    // the keys die at the provider: from now on the agent refuses to start on either old one
    await withShell(p, id, async (shell) => {
      await shell.writeFileAtomic(DROP_IN, Buffer.from(deadKeysUnit), { mode: 0o644, dirMode: 0o755 });
      await run(shell, ['systemctl', 'daemon-reload']);
    });

    // the customer rotates both; nothing reaches the deployment yet
    const aNew = canary('anthropic');
    const bNew = canary('openai');
    const ra = await rot.service.rotate({ secretId: a.secretId, value: new Secret(aNew) });
    const rb = await rot.service.rotate({ secretId: b.secretId, value: new Secret(bNew) });
    for (const r of [ra, rb])
      expect((await rot.service.status(r.id)).deployments).toMatchObject([
        { deploymentId: id, state: 'pending' },
      ]);

    workers.start(['rotate']);
    const [sa, sb] = [await untilCompleted(ra.id), await untilCompleted(rb.id)];
    // one of them carried the other (reason joint_swap on the carried one's record); which one
    // took the deployment first is the queue's choice
    const rows = [...sa.deployments, ...sb.deployments].map((x) => `${x.state} ${x.reason}`).sort();
    expect(rows).toEqual(['switched joint_swap', 'switched null']);

    // the oracle: the serving agent runs both new keys; neither old one is in any file
    const after = await agentEnv(p, id);
    expect([after.get(A), after.get(B)]).toEqual([aNew, bNew]);
    expect(await envFilesHolding(p, id, aOld)).toBe(0);
    expect(await envFilesHolding(p, id, bOld)).toBe(0);
    expect((await p.store.get(id)).status).toBe('ready');

    // the carried key's new version was read by the carrying rotation's job: audited with its id
    const carrier = sa.deployments[0]?.reason === 'joint_swap' ? rb : ra;
    const carried = carrier === ra ? b : a;
    const reads = await rot.service.readsOf(carried.secretId, 2);
    expect(
      reads.some(
        (r) => r.deploymentId === id && r.outcome === 'success' && (r.jobId ?? '').includes(carrier.id),
      ),
    ).toBe(true);

    // control: the fault is live — a rotation of B to a dead value is refused by the agent and
    // rolled back, and the agent keeps serving both new keys
    const bDead = `${canary('openai')}${DEAD}y`;
    const rc = await rot.service.rotate({ secretId: b.secretId, value: new Secret(bDead) });
    const sc = await untilCompleted(rc.id);
    expect(sc.deployments).toMatchObject([{ deploymentId: id, state: 'rolled_back' }]);
    const last = await agentEnv(p, id);
    expect([last.get(A), last.get(B)]).toEqual([aNew, bNew]);
  } finally {
    await p.service.destroy(id).catch(() => undefined);
    await p.service
      .watch(id, () => undefined, { timeoutMs: 180_000, until: (x) => x.status === 'deleted' })
      .catch(() => undefined);
  }
});
