import { makeLogger } from '../../../orchestrator/log';
import type { WebhookStore } from '../../../orchestrator/webhooks/webhook-store';
import { makeWebhookWorkers } from '../../../orchestrator/webhooks/webhook-workers';

/**
 * The dispatcher when Redis refuses the job (review R21 F2): rows the claim moved to `queued` but
 * that got no job go back to pending (release), or they would hold their endpoint's and their
 * organisation's slots until the 15-minute requeue. Redis here is a closed port with no offline
 * queue, so every Redis command fails at once; the store is a fake of the SQL contract's three calls.
 */
describe('webhook dispatch without Redis', () => {
  it('releases the claimed ids it could not queue, then reports the failure', async () => {
    const released: string[][] = [];
    let claims = 0;
    const store = {
      claim: async () => (claims++ === 0 ? ['11', '12', '13'] : []),
      release: async (ids: readonly string[]) => {
        released.push([...ids]);
        return [...ids];
      },
    } as unknown as WebhookStore;
    const w = makeWebhookWorkers(
      { store, log: makeLogger({ level: 'silent' }) },
      {
        connection: {
          host: '127.0.0.1',
          port: 1,
          enableOfflineQueue: false,
          maxRetriesPerRequest: 0,
          retryStrategy: () => null,
          lazyConnect: true,
        },
        prefix: 'unit-dispatch',
        attempts: 3,
        backoffMs: 100,
        timeoutMs: 1_000,
        allowLoopback: true,
        dispatchEveryMs: 60_000,
        concurrency: 1,
        caps: { perEndpoint: 2, perOrg: 5 },
        maxAgeSeconds: 86_400,
        breaker: { failures: 5, cooldownMs: 1_000, maxCooldownMs: 2_000 },
      },
    );
    w.queue.on('error', () => undefined); // the closed port, said once per try
    try {
      await expect(w.dispatch()).rejects.toThrow();
      // '11' too, whose add failed: left queued it would hold its slots 15 minutes (review R25)
      expect(released).toEqual([['11', '12', '13']]);
    } finally {
      await w.queue.close().catch(() => undefined);
    }
  });
});
