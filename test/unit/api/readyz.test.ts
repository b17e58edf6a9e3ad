import Fastify, { type FastifyInstance } from 'fastify';
import { serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { makeErrorHandler } from '../../../orchestrator/api/problems';
import { healthRoutes, READY_MEMO_MS } from '../../../orchestrator/api/routes/health';
import type { ApiDeps } from '../../../orchestrator/api/server';
import { makeLogger } from '../../../orchestrator/log';

/**
 * Review R15 F3: anonymous /readyz SCANs the Redis keyspace for a worker heartbeat, page by page
 * (COUNT 100) until it finds one, so with no worker it walks the whole keyspace. Its 2 s timeout
 * stopped the waiting but not the loop, and each request ran a scan of its own. Now concurrent
 * requests share one check, its answer is kept READY_MEMO_MS, and the scan stops once the check
 * has been given up. A fake Redis whose scan never matches and never ends (a keyspace too large to
 * walk in 2 s), counting every call.
 */
const log = makeLogger({ level: 'silent', name: 'readyz-test' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const start = async (opts: { heartbeatOnPage?: number } = {}) => {
  const calls = { ready: 0, ping: 0, scans: 0, pages: 0 };
  const redis = {
    ping: async () => {
      calls.ping += 1;
      return 'PONG';
    },
    scan: async (cursor: string, ...args: unknown[]) => {
      expect(args).toEqual(['MATCH', 't-readyz:workers:heartbeat:*', 'COUNT', 100]);
      if (cursor === '0') calls.scans += 1;
      calls.pages += 1;
      await sleep(1);
      const page = Number(cursor) + 1;
      const found = opts.heartbeatOnPage === page;
      // never cursor 0 again: the keyspace does not end within the test
      return [String(page), found ? ['t-readyz:workers:heartbeat:host-1'] : []] as [string, string[]];
    },
  };
  const rpc = async (fn: string) => {
    expect(fn).toBe('api__ready');
    calls.ready += 1;
    return true;
  };
  const app: FastifyInstance = Fastify();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.setErrorHandler(makeErrorHandler(log));
  const deps = {
    log,
    tokens: {},
    pipeline: { config: { QUEUE_PREFIX: 't-readyz' }, db: { rpc }, redis },
  } as unknown as ApiDeps;
  await app.register(healthRoutes, deps);
  await app.ready();
  return { app, calls, readyz: () => app.inject({ method: 'GET', url: '/readyz' }) };
};

describe('/readyz (review R15 F3)', () => {
  it('50 concurrent requests: one check; after the answer the scan stops; a new check after READY_MEMO_MS', async () => {
    const t = await start();
    const t0 = Date.now();
    const answers = await Promise.all(Array.from({ length: 50 }, () => t.readyz()));
    // the worker check gave up after its 2 s timeout
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1_900);
    expect(answers.map((r) => r.statusCode)).toEqual(Array(50).fill(503));
    expect(JSON.parse(answers[0]?.body ?? '{}')).toMatchObject({
      detail: 'not ready: workers',
      checks: { postgres: 'ok', redis: 'ok', workers: 'failed' },
    });
    expect(t.calls).toMatchObject({ ready: 1, ping: 1, scans: 1 });
    expect(t.calls.pages).toBeGreaterThan(10);
    const pagesAtAnswer = t.calls.pages;
    // within READY_MEMO_MS of the answer: the same answer, no new check
    expect((await t.readyz()).statusCode).toBe(503);
    expect(t.calls).toMatchObject({ ready: 1, ping: 1, scans: 1 });
    // the answer was sent: the scan does not go on (at most the page in flight finishes)
    await sleep(300);
    expect(t.calls.pages).toBeLessThanOrEqual(pagesAtAnswer + 1);
    const settled = t.calls.pages;
    await sleep(300);
    expect(t.calls.pages).toBe(settled);
    await sleep(READY_MEMO_MS - 600 + 100);
    // past it: a new check (given up again after 2 s)
    expect((await t.readyz()).statusCode).toBe(503);
    expect(t.calls).toMatchObject({ ready: 2, ping: 2, scans: 2 });
    await t.app.close();
  }, 15_000);

  it('a heartbeat on the third page: ready, and the scan stops there', async () => {
    const t = await start({ heartbeatOnPage: 3 });
    const answers = await Promise.all(Array.from({ length: 5 }, () => t.readyz()));
    expect(answers.map((r) => [r.statusCode, JSON.parse(r.body)])).toEqual(
      Array(5).fill([200, { status: 'ready', checks: { postgres: 'ok', redis: 'ok', workers: 'ok' } }]),
    );
    expect(t.calls).toEqual({ ready: 1, ping: 1, scans: 1, pages: 3 });
    await t.app.close();
  });
});
