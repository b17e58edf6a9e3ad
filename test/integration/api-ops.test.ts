import { randomUUID } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { chromium, type Browser } from 'playwright-core';
import { makeTokenStore } from '../../orchestrator/api/api-tokens';
import { metricsRoutes } from '../../orchestrator/api/routes/metrics';
import { BOARD_PATH, queueBoardRoutes } from '../../orchestrator/api/routes/queue-board';
import { buildApi } from '../../orchestrator/api/server';
import type { Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import { makeLogger } from '../../orchestrator/log';
import { metrics } from '../../orchestrator/metrics/metrics';
import { metricsKey } from '../../orchestrator/metrics/metrics-publisher';
import { startTestPipeline } from '../support/pipeline';

/**
 * The ops surfaces through a real listening server, real Postgres and Redis: Bull Board in headless
 * Chromium (Debian's `chromium`, driven by playwright-core) with an admin token lists the queues,
 * without one gets 401 (and with an org token 403); `GET /metrics` needs an admin token and serves
 * Postgres's, BullMQ's and the workers' figures in one scrape.
 */
jest.setTimeout(120_000);

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

let p: Pipeline;
let app: FastifyInstance;
let base: string;
let browser: Browser;
let adminToken: string;
let orgToken: string;
const tokenIds: string[] = [];

beforeAll(async () => {
  p = await startTestPipeline({ METRICS_ENABLED: 'true' });
  const tokens = makeTokenStore({ rpc: p.db.rpc });
  const org = await p.db.rpc<{ id: string }>('organizations__create', {
    p_name: `ops-${randomUUID().slice(0, 8)}`,
  });
  const admin = await tokens.create({ orgId: null, name: 'api-ops test admin', scopes: ['admin'] });
  const reader = await tokens.create({
    orgId: org.id,
    name: 'api-ops test reader',
    scopes: ['deployments:read'],
  });
  tokenIds.push(admin.id, reader.id);
  adminToken = admin.token;
  orgToken = reader.token;
  app = await buildApi(
    { log: makeLogger({ level: 'silent', name: 'api-ops-test' }), tokens, pipeline: p },
    { routes: [metricsRoutes, queueBoardRoutes] },
  );
  await app.listen({ host: '127.0.0.1', port: 0 });
  base = `http://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
});

afterAll(async () => {
  await browser?.close();
  await app?.close();
  const tokens = makeTokenStore({ rpc: p.db.rpc });
  for (const id of tokenIds) await tokens.revoke(id).catch(() => undefined);
  await p?.close(1_000);
});

describe('Bull Board in headless Chromium', () => {
  it('with an admin token (bearer header on every request) the page lists the queues', async () => {
    const context = await browser.newContext({ extraHTTPHeaders: { authorization: `Bearer ${adminToken}` } });
    try {
      const page = await context.newPage();
      const statuses: number[] = [];
      page.on('response', (r) => statuses.push(r.status()));
      const res = await page.goto(`${base}${BOARD_PATH}`, { waitUntil: 'networkidle' });
      expect(res?.status()).toBe(200);
      // the queue names come from the board's JSON API, rendered by its scripts in the page
      for (const q of Object.keys(p.queues.queues))
        await page.getByText(q, { exact: true }).first().waitFor({ timeout: 20_000 });
      expect(await page.title()).toContain('Cortex queues');
      expect(statuses.filter((s) => s >= 400)).toEqual([]);
    } finally {
      await context.close();
    }
  });

  it('without a token the page is 401, a problem document, and nothing of the board is served', async () => {
    const context = await browser.newContext();
    try {
      const page = await context.newPage();
      const res = await page.goto(`${base}${BOARD_PATH}`);
      expect(res?.status()).toBe(401);
      expect(res?.headers()['content-type']).toMatch(/^application\/problem\+json/);
      expect(await page.content()).not.toContain('provision');
      // its JSON API and static files are closed too, not only the page
      for (const path of [`${BOARD_PATH}/api/queues`, `${BOARD_PATH}/static/images/logo.svg`]) {
        const r = await context.request.get(`${base}${path}`);
        expect([path, r.status()]).toEqual([path, 401]);
      }
    } finally {
      await context.close();
    }
  });

  it('an organisation token (no admin scope) gets 403; a wrong token 401', async () => {
    const org = await fetch(`${base}${BOARD_PATH}/api/queues`, {
      headers: { authorization: `Bearer ${orgToken}` },
    });
    expect(org.status).toBe(403);
    const wrong = await fetch(`${base}${BOARD_PATH}`, {
      headers: { authorization: `Bearer ctx_${'x'.repeat(43)}` },
    });
    expect(wrong.status).toBe(401);
  });

  it('the board is read-only: a retry through its API is refused', async () => {
    const r = await fetch(`${base}${BOARD_PATH}/api/queues/provision/retry/failed`, {
      method: 'PUT',
      headers: { authorization: `Bearer ${adminToken}` },
    });
    expect(r.status).toBeGreaterThanOrEqual(400);
    expect(r.status).toBeLessThan(500);
  });
});

describe('GET /metrics', () => {
  it('is not served with METRICS_ENABLED=false', async () => {
    const off = await buildApi(
      {
        log: makeLogger({ level: 'silent', name: 'api-ops-test' }),
        tokens: makeTokenStore({ rpc: p.db.rpc }),
        pipeline: { ...p, config: { ...p.config, METRICS_ENABLED: false } },
      },
      { routes: [metricsRoutes] },
    );
    try {
      await off.listen({ host: '127.0.0.1', port: 0 });
      const url = `http://127.0.0.1:${(off.server.address() as AddressInfo).port}/metrics`;
      const r = await fetch(url, { headers: { authorization: `Bearer ${adminToken}` } });
      expect(r.status).toBe(404);
    } finally {
      await off.close();
    }
  });

  it('needs an admin token', async () => {
    expect((await fetch(`${base}/metrics`)).status).toBe(401);
    expect(
      (await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${orgToken}` } })).status,
    ).toBe(403);
  });

  it('serves deployments by status, jobs by queue and state, and a worker’s published counters in one scrape', async () => {
    const before = await p.db.rpc<Record<string, number>>('metrics__deployments_by_status', {});
    const org = await p.db.rpc<{ id: string }>('organizations__create', {
      p_name: `m-${randomUUID().slice(0, 8)}`,
    });
    await p.db.rpc('deployments__create', {
      p_org_id: org.id,
      p_name: 'metrics agent',
      p_subdomain: `m-${randomUUID().slice(0, 8)}`,
    });
    await p.queues.queues.maintenance.add('maintenance', { task: 'reconcile' }, { delay: 60_000 });
    // what a worker process publishes (metrics-publisher.ts), as a worker on another machine would
    await p.redis.set(
      metricsKey(p.config.QUEUE_PREFIX, 'worker-elsewhere-42'),
      JSON.stringify([
        {
          name: 'cortex_jobs_total',
          help: 'BullMQ job attempts by queue and outcome (completed, retried, failed)',
          type: 'counter',
          aggregator: 'sum',
          values: [{ value: 7, labels: { queue: 'provision', outcome: 'completed' } }],
        },
      ]),
      'EX',
      60,
    );
    metrics.secretAccess.inc({ operation: 'read', outcome: 'denied' });
    const r = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${adminToken}` } });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const body = await r.text();
    const requested = Number(/^cortex_deployments\{status="requested"\} (\d+)$/m.exec(body)?.[1]);
    expect(requested).toBeGreaterThanOrEqual((before.requested ?? 0) + 1);
    expect(body).toContain('cortex_queue_jobs{queue="maintenance",state="delayed"} 1');
    expect(body).toContain(
      'cortex_jobs_total{queue="provision",outcome="completed",process="worker-elsewhere-42"} 7',
    );
    expect(body).toMatch(
      /^cortex_secret_access_total\{operation="read",outcome="denied",process="api-[^"]+"\} [1-9]/m,
    );
    expect(body).toMatch(/^cortex_process_resident_memory_bytes\{process="api-[^"]+"\} \d+/m);
  });
});
