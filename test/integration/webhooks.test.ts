import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Webhook, WebhookVerificationError } from 'standardwebhooks';
import type { Rpc } from '../../orchestrator/db/rpc';
import { runCli } from '../../orchestrator/cli/cortexctl';
import { makeWebhookWorkersFromConfig } from '../../orchestrator/webhooks/webhooks-from-config';
import { testDatabaseUrl } from '../support/db';
import type { WebhookWorkers } from '../../orchestrator/webhooks/webhook-workers';
import { startTestApi, type TestApi } from '../support/api';
import { adminPool } from '../support/db';
import { openSse, type SseFrame } from '../support/sse';

/**
 * Webhooks through a real listening API, real Postgres and Redis and a real webhook worker (the
 * dispatcher and the BullMQ delivery worker of the worker process): test receivers on 127.0.0.1
 * (local mode) verify every POST with the `standardwebhooks` library. Also the per-token rate
 * limit (429 problem document with Retry-After), and ONE end-to-end run: a deployment requested
 * over HTTP reaches ready on a real local host while its SSE stream and a receiver follow it.
 */
jest.setTimeout(300_000);

let t: TestApi;
let webhooks: WebhookWorkers;
const admin = adminPool();
const endpoints: { orgId: string; id: string; token: string }[] = [];

beforeAll(async () => {
  t = await startTestApi({
    WEBHOOK_ATTEMPTS: '4',
    WEBHOOK_BACKOFF_MS: '200',
    WEBHOOK_TIMEOUT_MS: '3000',
    // the caps' defaults, said here because the fairness tests count on them
    WEBHOOK_PER_ENDPOINT_CONCURRENCY: '2',
    WEBHOOK_PER_ORG_CONCURRENCY: '5',
    WEBHOOK_BREAKER_FAILURES: '3',
    WEBHOOK_BREAKER_COOLDOWN_MS: '2000',
    WEBHOOK_BREAKER_MAX_COOLDOWN_MS: '4000',
  });
  webhooks = makeWebhookWorkersFromConfig(t.pipeline.config, t.pipeline.db.rpc, t.log);
  webhooks.start();
});
afterAll(async () => {
  // removed endpoints cancel what is left undelivered: no later run inherits deliveries to dead ports
  for (const e of endpoints)
    await t.call('DELETE', `/v1/webhooks/${e.id}`, { token: e.token }).catch(() => undefined);
  await webhooks?.close();
  await t?.close();
  await admin.end();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const until = async <T>(
  what: string,
  f: () => Promise<T | undefined> | T | undefined,
  ms = 120_000, // a bound for a loaded machine, not a speed claim: it returns as soon as the condition holds
): Promise<T> => {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
};

interface Received {
  readonly headers: IncomingHttpHeaders;
  readonly body: string;
  readonly answered: number;
}

/** A receiver on 127.0.0.1, port 0; answers `failFirst` requests with 500, then 204 (or always 500). */
const receiver = async (opts: { failFirst?: number; alwaysFail?: boolean } = {}) => {
  const got: Received[] = [];
  const server = createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      const answered = opts.alwaysFail || got.length < (opts.failFirst ?? 0) ? 500 : 204;
      got.push({ headers: req.headers, body, answered });
      res.writeHead(answered).end(answered === 500 ? 'receiver says no: internal detail' : undefined);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/hooks/cortex`,
    got,
    close: () => new Promise((r) => server.close(r)),
  };
};

/**
 * A receiver that takes each POST and never answers (a silent host holding the connection until the
 * sender's timeout): it counts the requests open at once, in all and per path.
 */
const silentReceiver = async () => {
  let open = 0;
  let maxOpen = 0;
  let total = 0;
  const openByPath = new Map<string, number>();
  const maxByPath = new Map<string, number>();
  const server = createServer((req, res) => {
    const p = req.url ?? '';
    total += 1;
    open += 1;
    maxOpen = Math.max(maxOpen, open);
    openByPath.set(p, (openByPath.get(p) ?? 0) + 1);
    maxByPath.set(p, Math.max(maxByPath.get(p) ?? 0, openByPath.get(p) ?? 0));
    req.resume();
    res.on('close', () => {
      open -= 1;
      openByPath.set(p, (openByPath.get(p) ?? 1) - 1);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}`,
    stats: () => ({ open, maxOpen, total, maxByPath: Object.fromEntries(maxByPath) }),
    close: () => {
      server.closeAllConnections();
      return new Promise((r) => server.close(r));
    },
  };
};

const headersOf = (h: IncomingHttpHeaders): Record<string, string> => ({
  'webhook-id': String(h['webhook-id']),
  'webhook-timestamp': String(h['webhook-timestamp']),
  'webhook-signature': String(h['webhook-signature']),
});

/** An org, a writer token, a registered endpoint (secret shown once) and a SQL-driven deployment. */
const setup = async (url: string) => {
  const rpc: Rpc = t.pipeline.db.rpc;
  const orgId = await t.org();
  const { token } = await t.token(orgId, ['deployments:write', 'deployments:read']);
  const created = await t.call('POST', '/v1/webhooks', { token, body: { url } });
  expect(created.status).toBe(201);
  const ep = created.json as { id: string; secret: string; url: string };
  endpoints.push({ orgId, id: ep.id, token });
  const tag = randomBytes(4).toString('hex');
  const newDeployment = async () =>
    (
      await rpc<{ id: string }>('deployments__create', {
        p_org_id: orgId,
        p_name: `Hooks ${tag}`,
        p_subdomain: `wh-${tag}`,
      })
    ).id;
  const toReady = async (deploymentId: string) => {
    const fence = `hooks-${tag}`;
    const { run } = await rpc<{ run: number }>('deployments__begin', {
      p_deployment_id: deploymentId,
      p_operation: 'provision',
      p_token: fence,
    });
    for (const step of ['host', 'dns', 'ssh', 'configure', 'secrets', 'start', 'health', 'ready']) {
      await rpc('deployment_steps__start', {
        p_deployment_id: deploymentId,
        p_run: run,
        p_step: step,
        p_token: fence,
      });
      if (step === 'ready')
        await rpc('deployments__set_status', { p_deployment_id: deploymentId, p_status: 'ready' });
      await rpc('deployment_steps__finish', {
        p_deployment_id: deploymentId,
        p_run: run,
        p_step: step,
        p_status: 'succeeded',
        p_token: fence,
      });
    }
  };
  return { orgId, token, endpoint: ep, tag, newDeployment, toReady };
};

const deliveries = async (token: string, endpointId: string) =>
  (
    (await t.call('GET', `/v1/webhooks/${endpointId}/deliveries`, { token })).json as {
      deliveries: {
        eventId: string;
        state: string;
        attempts: number;
        lastStatus: number | null;
        lastError: string | null;
      }[];
    }
  ).deliveries;

describe('delivery', () => {
  it('POSTs each status change once, signed (Standard Webhooks); the receiver verifies it; a tampered body fails', async () => {
    const r = await receiver();
    const s = await setup(r.url);
    expect(s.endpoint.secret).toMatch(/^whsec_[A-Za-z0-9+/]{43}=$/);
    const list = await t.call('GET', '/v1/webhooks', { token: s.token });
    expect(list.text).toContain(s.endpoint.id);
    expect(list.text).not.toContain('whsec_');
    expect(list.text).not.toContain(s.endpoint.secret.slice(6));

    const dep = await s.newDeployment();
    await s.toReady(dep);
    await until('three deliveries', () => (r.got.length >= 3 ? true : undefined));
    await sleep(1_500); // and no fourth: each status change once
    expect(r.got).toHaveLength(3);

    const wh = new Webhook(s.endpoint.secret);
    const verified = r.got.map(
      (g) => wh.verify(g.body, headersOf(g.headers)) as { type: string; data: Record<string, unknown> },
    );
    expect(verified.every((v) => v.type === 'deployment.status')).toBe(true);
    expect(verified.map((v) => v.data.status).sort()).toEqual(['provisioning', 'ready', 'requested']);
    expect(verified.every((v) => v.data.deploymentId === dep && v.data.orgId === s.orgId)).toBe(true);
    // webhook-id is the event id (the SSE id too): what receivers dedupe on
    const events = await t.pipeline.db.rpc<{ events: { id: number; kind: string }[] }>(
      'deployment_events__list',
      {
        p_deployment_id: dep,
      },
    );
    const statusIds = events.events.filter((e) => e.kind === 'status').map((e) => String(e.id));
    expect(r.got.map((g) => String(g.headers['webhook-id'])).sort()).toEqual(statusIds.sort());
    expect(verified.map((v) => String(v.data.eventId)).sort()).toEqual(statusIds.sort());
    expect(r.got.every((g) => g.headers['content-type'] === 'application/json')).toBe(true);

    // a tampered body, a replayed signature on another id, another endpoint's secret: all refused
    const g = r.got[0] as Received;
    expect(() =>
      wh.verify(g.body.replace(/"status":"\w+"/, '"status":"deleted"'), headersOf(g.headers)),
    ).toThrow(WebhookVerificationError);
    expect(() => wh.verify(g.body, { ...headersOf(g.headers), 'webhook-id': '999999999' })).toThrow(
      WebhookVerificationError,
    );
    const other = `whsec_${randomBytes(32).toString('base64')}`;
    expect(() => new Webhook(other).verify(g.body, headersOf(g.headers))).toThrow(WebhookVerificationError);

    const ds = await deliveries(s.token, s.endpoint.id);
    expect(ds.map((d) => [d.state, d.attempts, d.lastStatus])).toEqual([
      ['delivered', 1, 204],
      ['delivered', 1, 204],
      ['delivered', 1, 204],
    ]);
    // every secret read is audited in the org's chain (one per delivery), and the secret is in no log line
    const reads = await admin.query<{ n: string }>(
      `select count(*) as n from public.secret_access_log where org_id = $1 and operation = 'read' and outcome = 'success'
          and reason like 'webhook signing secret of endpoint ' || $2 || '; intent %'`,
      [s.orgId, s.endpoint.id],
    );
    expect(Number(reads.rows[0]?.n)).toBe(3);
    expect(t.logs.join('\n')).not.toContain(s.endpoint.secret.slice(6));
    await r.close();
  });

  it('a receiver that fails twice gets the event on the third try (same webhook-id, backoff between)', async () => {
    const r = await receiver({ failFirst: 2 });
    const s = await setup(r.url);
    await s.newDeployment(); // one status event: requested
    await until('three attempts', () => (r.got.length >= 3 ? true : undefined));
    await sleep(800);
    expect(r.got.map((g) => g.answered)).toEqual([500, 500, 204]);
    expect(new Set(r.got.map((g) => g.headers['webhook-id'])).size).toBe(1);
    const wh = new Webhook(s.endpoint.secret);
    for (const g of r.got) expect(() => wh.verify(g.body, headersOf(g.headers))).not.toThrow();
    const ds = await deliveries(s.token, s.endpoint.id);
    expect(ds.map((d) => [d.state, d.attempts, d.lastStatus, d.lastError])).toEqual([
      ['delivered', 3, 204, null],
    ]);
    await r.close();
  });

  it('records a permanent failure after the last attempt (metadata only: status and our own code)', async () => {
    const r = await receiver({ alwaysFail: true });
    const s = await setup(r.url);
    await s.newDeployment();
    const failed = await until('a failed delivery', async () => {
      const d = (await deliveries(s.token, s.endpoint.id))[0];
      return d?.state === 'failed' ? d : undefined;
    });
    expect([failed.attempts, failed.lastStatus, failed.lastError]).toEqual([4, 500, 'http_status']);
    expect(r.got).toHaveLength(4);
    const row = await admin.query(`select * from public.webhook_deliveries where endpoint_id = $1`, [
      s.endpoint.id,
    ]);
    expect(JSON.stringify(row.rows)).not.toContain('receiver says no');
    await r.close();
  });

  it('a removed endpoint gets nothing more, and its secret is gone', async () => {
    const r = await receiver();
    const s = await setup(r.url);
    const del = await t.call('DELETE', `/v1/webhooks/${s.endpoint.id}`, { token: s.token });
    expect(del.status).toBe(200);
    await s.newDeployment();
    await sleep(1_500);
    expect(r.got).toHaveLength(0);
    const vault = await admin.query(`select count(*) as n from vault.secrets where name = $1`, [
      `webhook:${s.orgId}:${s.endpoint.id}`,
    ]);
    expect(Number((vault.rows[0] as { n: string }).n)).toBe(0);
    await r.close();
  });
});

describe('fairness (review R15 finding 6)', () => {
  it("one organisation's silent endpoints take at most 2 slots each and 5 in all; another organisation's webhook goes out meanwhile", async () => {
    const silent = await silentReceiver();
    const r = await receiver();
    try {
      const a = await setup(`${silent.url}/a1`);
      for (const path of ['a2', 'a3']) {
        const more = await t.call('POST', '/v1/webhooks', {
          token: a.token,
          body: { url: `${silent.url}/${path}` },
        });
        expect(more.status).toBe(201);
        endpoints.push({ orgId: a.orgId, id: (more.json as { id: string }).id, token: a.token });
      }
      // four deployments: twelve deliveries to org A's three silent endpoints
      for (let i = 0; i < 4; i++)
        await t.pipeline.db.rpc('deployments__create', {
          p_org_id: a.orgId,
          p_name: `Silent ${i}`,
          p_subdomain: `wh-${a.tag}-${i}`,
        });
      await until('org A holding its five slots', () => (silent.stats().maxOpen >= 5 ? true : undefined));

      const b = await setup(r.url);
      await b.newDeployment();
      await until("org B's delivery", () => (r.got.length >= 1 ? true : undefined));
      // B's went out while A's backlog was still held back: not behind it
      const held = await admin.query<{ n: string }>(
        `select count(*) as n from public.webhook_deliveries where org_id = $1 and state = 'pending'`,
        [a.orgId],
      );
      expect(Number(held.rows[0]?.n)).toBeGreaterThan(0);
      expect((await deliveries(b.token, b.endpoint.id)).map((d) => [d.state, d.attempts])).toEqual([
        ['delivered', 1],
      ]);
      // without the caps the worker's ten slots would all have gone to org A's twelve deliveries
      const st = silent.stats();
      expect(st.maxOpen).toBe(5);
      expect(Math.max(...Object.values(st.maxByPath))).toBe(2);
    } finally {
      await silent.close();
      await r.close();
    }
  });

  it('a failing endpoint opens its breaker: its delivery is held for the cool-down (no attempt spent), then delivered', async () => {
    const got: number[] = [];
    const failFirst = 3; // = WEBHOOK_BREAKER_FAILURES
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        got.push(Date.now());
        res.writeHead(got.length <= failFirst ? 503 : 204).end();
      });
    });
    await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
    try {
      const s = await setup(`http://127.0.0.1:${(server.address() as AddressInfo).port}/flaky`);
      await s.newDeployment();
      const done = await until('the delivery delivered', async () => {
        const d = (await deliveries(s.token, s.endpoint.id))[0];
        return d?.state === 'delivered' ? d : undefined;
      });
      // four POSTs (WEBHOOK_ATTEMPTS): the hold in between made none and spent none
      expect([done.attempts, done.lastStatus, got.length]).toEqual([4, 204, 4]);
      // BullMQ's backoff before the fourth try is 800 ms; the breaker held it for 2000 ms from the third's record
      expect((got[3] ?? 0) - (got[2] ?? 0)).toBeGreaterThanOrEqual(2_000);
      const opened = t.logs.filter((l) => l.includes('circuit breaker opened') && l.includes(s.endpoint.id));
      expect(opened).toHaveLength(1);
      // a 2xx closed and reset it
      const list = (await t.call('GET', '/v1/webhooks', { token: s.token })).json as {
        endpoints: { id: string; consecutiveFailures: number; breakerOpenUntil: string | null }[];
      };
      expect(list.endpoints.find((e) => e.id === s.endpoint.id)).toMatchObject({
        consecutiveFailures: 0,
        breakerOpenUntil: null,
      });
    } finally {
      server.closeAllConnections();
      await new Promise((res) => server.close(res));
    }
  });

  it('GET /v1/webhooks shows an open breaker while it holds the deliveries', async () => {
    const r = await receiver({ alwaysFail: true });
    try {
      const s = await setup(r.url);
      await s.newDeployment();
      const open = await until('the breaker open', async () => {
        const list = (await t.call('GET', '/v1/webhooks', { token: s.token })).json as {
          endpoints: { id: string; consecutiveFailures: number; breakerOpenUntil: string | null }[];
        };
        const e = list.endpoints.find((x) => x.id === s.endpoint.id);
        return e?.breakerOpenUntil ? e : undefined;
      });
      expect(open.consecutiveFailures).toBeGreaterThanOrEqual(3);
      expect(Date.parse(open.breakerOpenUntil ?? '')).toBeGreaterThan(0);
    } finally {
      await r.close();
    }
  });
});

describe('fairness fixes (review R21)', () => {
  it("an organisation's dead endpoints do not starve its healthy one: a held delivery goes back to pending, holding no slot (F3)", async () => {
    const silent = await silentReceiver();
    const r = await receiver();
    try {
      const a = await setup(`${silent.url}/d1`);
      const deadIds = [a.endpoint.id];
      for (const path of ['d2', 'd3']) {
        const more = await t.call('POST', '/v1/webhooks', {
          token: a.token,
          body: { url: `${silent.url}/${path}` },
        });
        expect(more.status).toBe(201);
        const id = (more.json as { id: string }).id;
        endpoints.push({ orgId: a.orgId, id, token: a.token });
        deadIds.push(id);
      }
      // three deployments: nine deliveries to the three dead endpoints; five of them in flight
      for (let i = 0; i < 3; i++)
        await t.pipeline.db.rpc('deployments__create', {
          p_org_id: a.orgId,
          p_name: `Dead ${i}`,
          p_subdomain: `wh-${a.tag}-d${i}`,
        });
      await until('org A holding its five slots', () => (silent.stats().maxOpen >= 5 ? true : undefined));
      // their breakers open (as after their failures) while those five are in flight
      await admin.query(
        `update public.webhook_endpoints set breaker_open_until = now() + interval '1 hour' where id = any($1::uuid[])`,
        [deadIds],
      );
      const healthy = await t.call('POST', '/v1/webhooks', { token: a.token, body: { url: r.url } });
      expect(healthy.status).toBe(201);
      const healthyId = (healthy.json as { id: string }).id;
      endpoints.push({ orgId: a.orgId, id: healthyId, token: a.token });
      await a.newDeployment();
      // before: the five timed out, their jobs waited in BullMQ's delayed set for the hour with their
      // rows queued, so the organisation's five slots stayed taken and this never came
      const done = await until(
        "the healthy endpoint's delivery",
        async () => {
          const d = (await deliveries(a.token, healthyId))[0];
          return d?.state === 'delivered' ? d : undefined;
        },
        30_000,
      );
      expect([done.attempts, r.got.length]).toEqual([1, 1]);
      // all twelve of theirs end up pending (none queued: no slot held), none lost; the five that were
      // in flight go back one by one as their timed-out attempts end
      const deadStates = async () =>
        Object.fromEntries(
          (
            await admin.query<{ state: string; n: string }>(
              `select state, count(*) as n from public.webhook_deliveries where endpoint_id = any($1::uuid[]) group by 1`,
              [deadIds],
            )
          ).rows.map((x) => [x.state, Number(x.n)]),
        );
      const settled = await until(
        "the dead endpoints' rows pending",
        async () => {
          const st = await deadStates();
          return st.queued ? undefined : st;
        },
        15_000,
      );
      expect(settled).toEqual({ pending: 12 });
    } finally {
      await silent.close();
      await r.close();
    }
  });

  it('a 429 does not open the breaker (F6)', async () => {
    let got = 0;
    const server = createServer((req, res) => {
      req.resume();
      req.on('end', () => {
        got += 1;
        res.writeHead(429).end();
      });
    });
    await new Promise<void>((res) => server.listen(0, '127.0.0.1', res));
    try {
      const s = await setup(`http://127.0.0.1:${(server.address() as AddressInfo).port}/busy`);
      await s.newDeployment();
      const failed = await until('the delivery failed', async () => {
        const d = (await deliveries(s.token, s.endpoint.id))[0];
        return d?.state === 'failed' ? d : undefined;
      });
      // four POSTs (WEBHOOK_ATTEMPTS), more than WEBHOOK_BREAKER_FAILURES (3), and the breaker never opened
      expect([failed.attempts, failed.lastStatus, got]).toEqual([4, 429, 4]);
      const list = (await t.call('GET', '/v1/webhooks', { token: s.token })).json as {
        endpoints: { id: string; consecutiveFailures: number; breakerOpenUntil: string | null }[];
      };
      expect(list.endpoints.find((e) => e.id === s.endpoint.id)).toMatchObject({
        consecutiveFailures: 0,
        breakerOpenUntil: null,
      });
    } finally {
      server.closeAllConnections();
      await new Promise((res) => server.close(res));
    }
  });

  it("a dead endpoint's backlog drains: a delivery older than WEBHOOK_MAX_AGE_SECONDS ends failed, expired, unsent (F1)", async () => {
    const r = await receiver();
    try {
      const s = await setup(r.url);
      // the breaker open (as after failures): the delivery waits pending, then grows old
      await admin.query(
        `update public.webhook_endpoints set breaker_open_until = now() + interval '1 hour' where id = $1`,
        [s.endpoint.id],
      );
      await s.newDeployment();
      await admin.query(
        `update public.webhook_deliveries set created_at = now() - interval '25 hours' where endpoint_id = $1`,
        [s.endpoint.id],
      );
      const expired = await until(
        'the delivery expired',
        async () => {
          const d = (await deliveries(s.token, s.endpoint.id))[0];
          return d?.state === 'failed' ? d : undefined;
        },
        20_000,
      );
      expect([expired.attempts, expired.lastError]).toEqual([0, 'expired']);
      expect(r.got).toHaveLength(0);
    } finally {
      await r.close();
    }
  });

  it('a job that fails for good without recording its delivery frees its slots: the row ends failed (job_failed), with no second job (F2; review R24 finding 1)', async () => {
    const r = await receiver();
    try {
      const s = await setup(r.url);
      // the signing secret gone: each try fails before any POST (secret_denied), nothing recorded
      await admin.query(`delete from vault.secrets where name = $1`, [`webhook:${s.orgId}:${s.endpoint.id}`]);
      await s.newDeployment();
      const intents = async () =>
        Number(
          (
            await admin.query<{ n: string }>(
              `select count(*) as n from public.secret_read_intents where platform_name = $1`,
              [`webhook-${s.endpoint.id}`],
            )
          ).rows[0]?.n,
        );
      // one job tries WEBHOOK_ATTEMPTS (4) times, then its row is recorded failed: before R21 it
      // stayed queued with a failed job BullMQ would not replace (its slots held); after R21's first
      // fix it went back to pending and got a new job with 4 more tries, without end (R24 F1)
      const d = await until(
        'the delivery failed',
        async () => {
          const x = (await deliveries(s.token, s.endpoint.id))[0];
          return x?.state === 'failed' ? x : undefined;
        },
        30_000,
      );
      expect([d.lastError, d.attempts]).toEqual(['job_failed', 1]);
      expect(await intents()).toBe(4);
      expect(r.got).toHaveLength(0);
    } finally {
      await r.close();
    }
  });
});

describe('endpoints over the API', () => {
  it('refuses URLs that are not https to a public host (loopback only in local mode), naming the field', async () => {
    const orgId = await t.org();
    const { token } = await t.token(orgId, ['deployments:write']);
    for (const url of [
      'http://hooks.example.com/x',
      'ftp://hooks.example.com/x',
      'https://user:pw@hooks.example.com/x',
      'https://10.0.0.1/x',
      'https://169.254.169.254/latest/meta-data',
      'http://10.0.0.5/x',
      'https://[::ffff:127.0.0.1]/x',
      'https://localhost/x',
      'not a url',
    ]) {
      const res = await t.call('POST', '/v1/webhooks', { token, body: { url } });
      expect([url, res.status]).toEqual([url, 400]);
      expect(res.json).toMatchObject({ field: 'url' });
    }
    expect((await t.call('GET', '/v1/webhooks', { token })).json).toEqual({ endpoints: [] });
  });

  it('another organisation neither sees nor removes an endpoint (404); deployments:read may not register one', async () => {
    const r = await receiver();
    const a = await setup(r.url);
    const orgB = await t.org();
    const b = await t.token(orgB, ['deployments:write']);
    expect((await t.call('DELETE', `/v1/webhooks/${a.endpoint.id}`, { token: b.token })).status).toBe(404);
    expect((await t.call('GET', '/v1/webhooks', { token: b.token })).text).not.toContain(a.endpoint.id);
    expect((await deliveries(b.token, a.endpoint.id)).length).toBe(0);
    const reader = await t.token(a.orgId, ['deployments:read']);
    expect((await t.call('POST', '/v1/webhooks', { token: reader.token, body: { url: r.url } })).status).toBe(
      403,
    );
    await r.close();
  });
});

describe('cortexctl webhooks', () => {
  it('add prints the secret once; list shows the endpoint without it; remove removes it; a private address is refused', async () => {
    const orgId = await t.org();
    const lines: string[] = [];
    const cli = (...argv: string[]) =>
      runCli(['webhooks', ...argv], {
        env: { ...process.env, DATABASE_URL: testDatabaseUrl(), LOG_LEVEL: 'silent' },
        out: (x) => lines.push(x),
      });
    expect(await cli('add', '--org', orgId, '--url', 'http://127.0.0.1:9/cli', '--json')).toBe(0);
    const added = JSON.parse(lines.pop() ?? '{}') as { id: string; secret: string };
    expect(added.secret).toMatch(/^whsec_/);
    expect(await cli('list', '--org', orgId)).toBe(0);
    const listed = lines.pop() ?? '';
    expect(listed).toContain(added.id);
    expect(listed).not.toContain('whsec_');
    expect(await cli('add', '--org', orgId, '--url', 'https://169.254.169.254/x')).toBe(1);
    expect(lines.pop()).toContain('url: host is a private');
    expect(await cli('remove', '--org', orgId, added.id)).toBe(0);
    expect(await cli('list', '--org', orgId, '--json')).toBe(0);
    expect(JSON.parse(lines.pop() ?? 'null')).toEqual([]);
  });
});

describe('rate limit', () => {
  it('per token, in Redis: 429 problem document with Retry-After after N requests; another token is unaffected', async () => {
    const limited = await startTestApi({ API_RATE_LIMIT: '5/min' });
    try {
      const orgId = await limited.org();
      const one = await limited.token(orgId, ['deployments:read']);
      const two = await limited.token(orgId, ['deployments:read']);
      for (let i = 0; i < 5; i++)
        expect((await limited.call('GET', '/v1/deployments', { token: one.token })).status).toBe(200);
      const over = await limited.call('GET', '/v1/deployments', { token: one.token });
      expect(over.status).toBe(429);
      expect(over.headers.get('content-type')).toMatch(/^application\/problem\+json/);
      expect(over.json).toMatchObject({ status: 429, title: 'Too Many Requests' });
      expect(Number(over.headers.get('retry-after'))).toBeGreaterThan(0);
      expect((await limited.call('GET', '/v1/deployments', { token: two.token })).status).toBe(200);
      // the budget is Redis's (keyed by the token's id, never the token)
      const keys = await limited.pipeline.redis.keys(`${limited.pipeline.config.QUEUE_PREFIX}:ratelimit:*`);
      expect(keys).toEqual(
        expect.arrayContaining([`${limited.pipeline.config.QUEUE_PREFIX}:ratelimit:token-${one.id}`]),
      );
      expect(keys.join(' ')).not.toContain(one.token.slice(4));
      // public routes: by address
      for (let i = 0; i < 5; i++) await limited.call('GET', '/healthz');
      expect((await limited.call('GET', '/healthz')).status).toBe(429);
    } finally {
      await limited.close();
    }
  });
});

describe('end to end', () => {
  it('a deployment requested over HTTP reaches ready on a real host; its SSE stream shows every step in order; the receiver gets each status once', async () => {
    const workers = t.pipeline.makeWorkerSet();
    workers.start(['provision', 'deprovision']);
    const r = await receiver();
    try {
      const orgId = await t.org();
      const { token } = await t.token(orgId, ['deployments:write', 'deployments:read']);
      const hook = await t.call('POST', '/v1/webhooks', { token, body: { url: r.url } });
      const ep = hook.json as { id: string; secret: string };
      endpoints.push({ orgId, id: ep.id, token });
      const subdomain = `wh-e2e-${randomBytes(3).toString('hex')}`;
      const req = await t.call('POST', '/v1/deployments', {
        token,
        body: { name: 'webhook e2e', subdomain }, // no key: this test is about progress, pipeline.test.ts about keys
      });
      if (req.status !== 201) throw new Error(`deployment request: ${req.status} ${req.text}`);
      const dep = (req.json as { deploymentId: string }).deploymentId;

      const stream = await openSse(`${t.api.url}/v1/deployments/${dep}/events`, {
        authorization: `Bearer ${token}`,
      });
      const frames = await stream.rest(240_000);
      expect(frames.at(-1)).toMatchObject({ event: 'end', data: JSON.stringify({ status: 'ready' }) });
      const labels = frames
        .slice(0, -1)
        .map((f: SseFrame) => {
          const d = JSON.parse(f.data) as { step?: string; state?: string; status?: string };
          return f.event === 'step' ? `${d.step}:${d.state}` : `status:${d.status}`;
        })
        .filter((l) => !l.endsWith(':running'));
      expect(labels).toEqual([
        'status:requested',
        'status:provisioning',
        'host:succeeded',
        'dns:succeeded',
        'ssh:succeeded',
        expect.stringMatching(/^configure:(succeeded|skipped)$/),
        'secrets:succeeded',
        'start:succeeded',
        'health:succeeded',
        'status:ready',
        'ready:succeeded',
      ]);

      await until('three webhooks', () => (r.got.length >= 3 ? true : undefined));
      const wh = new Webhook(ep.secret);
      const statuses = r.got.map(
        (g) => (wh.verify(g.body, headersOf(g.headers)) as { data: { status: string } }).data.status,
      );
      expect(statuses.sort()).toEqual(['provisioning', 'ready', 'requested']);
    } finally {
      // tear the host down again (deprovision through the API), then stop this test's workers
      const d = await admin.query<{ id: string }>(
        `select id from public.deployments where name = 'webhook e2e' and status <> 'deleted'`,
      );
      for (const row of d.rows) await t.pipeline.service.destroy(row.id).catch(() => undefined);
      for (const row of d.rows)
        await until(
          'deleted',
          async () => ((await t.pipeline.store.get(row.id)).status === 'deleted' ? true : undefined),
          240_000,
        ).catch(() => undefined);
      await workers.close(5_000);
      await r.close();
    }
  });
});
