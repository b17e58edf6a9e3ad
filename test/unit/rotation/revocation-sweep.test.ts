import { randomUUID } from 'node:crypto';
import { makeLogger } from '../../../orchestrator/log';
import { makeRotationMaintenance } from '../../../orchestrator/rotation/rotation-workers';
import type { RotationStore } from '../../../orchestrator/rotation/rotation-store';

/**
 * Review R7 finding 5: a revocation the job could not finish (a provision past its `secrets` step
 * held the secret) stays open, and the rotation sweep queues its job again, ids only, under the
 * revocation's own job id (a job still queued or running under it is kept by `enqueue`).
 */
describe('rotation sweep: open revocations', () => {
  it('queues the job of every open revocation idle for the stalled period, with its id alone', async () => {
    const open = [randomUUID(), randomUUID()];
    const asked: number[] = [];
    const enqueued: unknown[] = [];
    const maintenance = makeRotationMaintenance({
      rotations: {
        listAttention: () => Promise.resolve({ stalled: [], due: [] }),
        listOpenRevocations: (idle: number) => {
          asked.push(idle);
          return Promise.resolve(open);
        },
      } as unknown as RotationStore,
      queues: {
        enqueue: (q: string, data: unknown, key: string) => {
          enqueued.push([q, data, key]);
          return Promise.resolve(`${q}-${key}`);
        },
      },
      log: makeLogger({ level: 'silent' }),
      stalledSeconds: 300,
    });
    const out = await maintenance.sweep();
    expect(asked).toEqual([300]);
    expect(out.revokes).toEqual(open);
    expect(enqueued).toEqual(open.map((id) => ['revoke', { revocationId: id }, id]));
  });
});
