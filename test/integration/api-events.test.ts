import { randomBytes } from 'node:crypto';
import type { ApiClient } from '../../orchestrator/api/client';
import type { Rpc } from '../../orchestrator/db/rpc';
import { startTestApi, type TestApi } from '../support/api';
import { openSse, type SseFrame } from '../support/sse';

/**
 * GET /v1/deployments/:id/events through a real listening server and real Postgres: the stream
 * shows every status and step change in order with `id:` = the event id, ends at the final state,
 * resumes after Last-Event-ID without a repeat (204 once there is nothing left), is a 404 for
 * another organisation, and a client that goes away is unsubscribed at once. Status changes are
 * driven through the SQL step functions exactly as the runner calls them (the end-to-end run with
 * a real worker and host is in webhooks.test.ts). Streams are read with a raw SSE reader (as an
 * EventSource would); every request that must not open one (a refusal, the 204 after the end) goes
 * through the onboarding app's typed client, so a drift of the route's schema fails to compile.
 */
jest.setTimeout(120_000);

let t: TestApi;
beforeAll(async () => {
  t = await startTestApi();
});
afterAll(async () => {
  await t?.close();
});

const PROVISION = ['host', 'dns', 'ssh', 'configure', 'secrets', 'start', 'health', 'ready'] as const;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A deployment of a fresh org, and a driver that records its steps as the runner does. */
const fixture = async (scopes: Parameters<TestApi['token']>[1] = ['deployments:read']) => {
  const rpc: Rpc = t.pipeline.db.rpc;
  const orgId = await t.org();
  const tag = randomBytes(4).toString('hex');
  const dep = await rpc<{ id: string }>('deployments__create', {
    p_org_id: orgId,
    p_name: `Events ${tag}`,
    p_subdomain: `ev-${tag}`,
  });
  const token = await t.token(orgId, scopes);
  const fence = `events-${tag}`;
  let run = 0;
  const drive = {
    async begin() {
      run = (
        await rpc<{ run: number }>('deployments__begin', {
          p_deployment_id: dep.id,
          p_operation: 'provision',
          p_token: fence,
        })
      ).run;
    },
    async step(step: string, status: 'succeeded' | 'failed' = 'succeeded', reason?: string) {
      await rpc('deployment_steps__start', {
        p_deployment_id: dep.id,
        p_run: run,
        p_step: step,
        p_token: fence,
      });
      if (step === 'ready')
        await rpc('deployments__set_status', { p_deployment_id: dep.id, p_status: 'ready' });
      await rpc('deployment_steps__finish', {
        p_deployment_id: dep.id,
        p_run: run,
        p_step: step,
        p_status: status,
        p_reason: reason,
        p_final: status === 'failed',
        p_token: fence,
      });
    },
  };
  return { orgId, deploymentId: dep.id, tag, token: token.token, tokenId: token.id, drive };
};

const url = (id: string, q = '') => `${t.api.url}/v1/deployments/${id}/events${q}`;
/**
 * The events route through the typed client where no stream is expected (a refusal or a 204): the
 * body is taken as a stream and a 200's is cancelled, so a stream opened by mistake fails the status
 * assertion instead of hanging on a JSON parse.
 */
const noStream = async (api: ApiClient, id: string, lastEventId?: string) => {
  const r = await api.GET('/v1/deployments/{id}/events', {
    params: {
      path: { id },
      ...(lastEventId === undefined ? {} : { header: { 'last-event-id': lastEventId } }),
    },
    parseAs: 'stream',
  });
  await r.data?.cancel();
  return r;
};
const auth = (token: string, extra: Record<string, string> = {}) => ({
  authorization: `Bearer ${token}`,
  ...extra,
});
/** `status:requested`, `step:host:running`, … */
const label = (f: SseFrame): string => {
  const d = JSON.parse(f.data) as { step?: string; state?: string; status?: string };
  return f.event === 'step' ? `step:${d.step}:${d.state}` : `${f.event}:${d.status}`;
};
const fullRun = [
  'status:requested',
  'status:provisioning',
  ...PROVISION.flatMap((s) =>
    s === 'ready'
      ? ['step:ready:running', 'status:ready', 'step:ready:succeeded']
      : [`step:${s}:running`, `step:${s}:succeeded`],
  ),
];

it('streams every status and step change in order, id: = the event id, and ends at ready', async () => {
  const f = await fixture();
  const s = await openSse(url(f.deploymentId), auth(f.token));
  expect(s.status).toBe(200);
  expect(s.headers.get('content-type')).toBe('text/event-stream; charset=utf-8');
  expect(label((await s.next()) as SseFrame)).toBe('status:requested');
  await f.drive.begin();
  for (const step of PROVISION) {
    await f.drive.step(step);
    await sleep(50);
  }
  const rest = await s.rest();
  const end = rest.pop();
  expect(end?.event).toBe('end');
  expect(JSON.parse(end?.data ?? '{}')).toEqual({ status: 'ready' });
  const all = [
    (
      await t.pipeline.db.rpc<{ events: { id: number }[] }>('deployment_events__list', {
        p_deployment_id: f.deploymentId,
        p_after_id: 0,
        p_limit: 1000,
      })
    ).events,
  ];
  expect(['status:requested', ...rest.map(label)]).toEqual(fullRun);
  // ids: strictly increasing, and exactly the log's
  const ids = rest.map((x) => Number(x.id));
  expect(ids).toEqual([...ids].sort((a, b) => a - b));
  expect(new Set(ids).size).toBe(ids.length);
  expect(ids).toEqual(all[0]?.slice(1).map((e) => Number(e.id)));
  // each frame's data is the event: no name, no subdomain, no message
  for (const x of rest) {
    expect(x.data).not.toContain(f.tag);
    expect(JSON.parse(x.data)).toMatchObject({ id: Number(x.id), deploymentId: f.deploymentId });
  }
});

it('resumes after Last-Event-ID without a repeat; after the end a reconnect gets 204', async () => {
  const f = await fixture();
  await f.drive.begin();
  await f.drive.step('host');
  const first = await openSse(url(f.deploymentId), auth(f.token));
  const seen = [await first.next(), await first.next(), await first.next()] as SseFrame[];
  expect(seen.map(label)).toEqual(['status:requested', 'status:provisioning', 'step:host:running']);
  first.abort(); // the client goes away mid-stream

  // ... and its subscription is gone at once: the server logged the close with no stream left
  const closed = async () =>
    t.logs.some(
      (l) => l.includes('"event stream closed"') && l.includes(f.deploymentId) && l.includes('"streams":0'),
    );
  for (let i = 0; i < 50 && !(await closed()); i++) await sleep(100);
  expect(await closed()).toBe(true);

  for (const step of PROVISION.slice(1)) await f.drive.step(step);
  const lastSeen = seen[2]?.id ?? '';
  const again = await openSse(url(f.deploymentId), auth(f.token, { 'last-event-id': lastSeen }));
  const rest = (await again.rest()).filter((x) => x.event !== 'end');
  expect(rest.every((x) => Number(x.id) > Number(lastSeen))).toBe(true);
  expect([...seen, ...rest].map(label)).toEqual(fullRun);

  // the same through ?lastEventId= (for clients that cannot set headers)
  const viaQuery = await openSse(url(f.deploymentId, `?lastEventId=${rest[3]?.id ?? ''}`), auth(f.token));
  expect((await viaQuery.rest()).filter((x) => x.event !== 'end').map(label)).toEqual(
    rest.slice(4).map(label),
  );

  const after = await noStream(t.client(f.token), f.deploymentId, rest.at(-1)?.id ?? '');
  expect(after.response.status).toBe(204);
});

it('ends at failed with the failed step and a reason code, never the reason text', async () => {
  const f = await fixture();
  await f.drive.begin();
  await f.drive.step('host');
  await f.drive.step('dns', 'failed', `provider_rejected: zone ${f.tag}.example refused the record`);
  const s = await openSse(url(f.deploymentId), auth(f.token));
  const frames = await s.rest();
  expect(frames.map((x) => (x.event === 'end' ? 'end' : label(x)))).toEqual([
    'status:requested',
    'status:provisioning',
    'step:host:running',
    'step:host:succeeded',
    'step:dns:running',
    'step:dns:failed',
    'status:failed',
    'end',
  ]);
  expect(JSON.parse(frames[6]?.data ?? '{}')).toMatchObject({
    status: 'failed',
    step: 'dns',
    reasonCode: 'provider_rejected',
  });
  expect(frames.map((x) => x.data).join('\n')).not.toContain(f.tag);
});

it("review R15 finding 7: a failure's recorded text (host, address, port, provider words) is in neither the stream nor the JSON of an organisation's token; an ops admin token reads it", async () => {
  const f = await fixture();
  const host = `canary-${f.tag}.hel1.hetzner.example`;
  const provider = `resource_limit_exceeded_${f.tag}`;
  const reason =
    `ssh_connect_failed: ssh to ${host} (198.51.100.73:2222) failed after ` +
    `hcloud said ${provider}; pulumi stack agent-${f.tag}`;
  const canaries = [host, '198.51.100.73', ':2222', provider, `agent-${f.tag}`];
  await f.drive.begin();
  await f.drive.step('host');
  await f.drive.step('ssh', 'failed', reason);

  const s = await openSse(url(f.deploymentId), auth(f.token));
  const stream = (await s.rest()).map((x) => x.data).join('\n');
  expect(stream).toContain('"reasonCode":"ssh_connect_failed"');
  for (const c of canaries) expect(stream).not.toContain(c);

  const mine = await t.client(f.token).GET('/v1/deployments/{id}', {
    params: { path: { id: f.deploymentId } },
  });
  const text = JSON.stringify(mine.data);
  for (const c of canaries) expect(text).not.toContain(c);
  const message = 'The server could not be reached.';
  expect(mine.data).toMatchObject({
    failedStep: 'ssh',
    failureCode: 'ssh_connect_failed',
    failureReason: message,
  });
  expect(mine.data?.steps.map((x) => [x.step, x.status, x.errorCode, x.error, x.errorDetail])).toEqual([
    ['host', 'succeeded', null, null, undefined],
    ['ssh', 'failed', 'ssh_connect_failed', message, undefined],
  ]);
  expect(mine.data?.failureDetail).toBeUndefined();

  const ops = await t.token(null, ['deployments:read', 'admin']);
  const theirs = await t.client(ops.token).GET('/v1/deployments/{id}', {
    params: { path: { id: f.deploymentId } },
  });
  expect([theirs.data?.failureDetail, theirs.data?.steps.at(-1)?.errorDetail]).toEqual([reason, reason]);
});

it('is a 404 for another organisation, 401 without a token, 403 without deployments:read', async () => {
  const a = await fixture();
  const b = await fixture();
  const asB = t.client(b.token);
  const foreign = await noStream(asB, a.deploymentId);
  expect(foreign.response.status).toBe(404);
  expect(foreign.response.headers.get('content-type')).toMatch(/^application\/problem\+json/);
  const unknown = await noStream(asB, '00000000-0000-4000-8000-000000000000');
  expect([unknown.response.status, unknown.error]).toEqual([404, foreign.error]);
  expect((await noStream(t.client(), a.deploymentId)).response.status).toBe(401);
  const writer = await t.token(a.orgId, ['secrets:write']);
  expect((await noStream(t.client(writer.token), a.deploymentId)).response.status).toBe(403);
  const bad = await noStream(t.client(a.token), a.deploymentId, '1; drop table');
  expect(bad.response.status).toBe(400);
  expect(bad.error).toMatchObject({ field: 'header.last-event-id' });
});

it('sends a heartbeat comment every 15 s on an idle stream', async () => {
  const f = await fixture();
  const s = await openSse(url(f.deploymentId), auth(f.token));
  expect(label((await s.next()) as SseFrame)).toBe('status:requested');
  const next = s.next(17_000).catch(() => null);
  await sleep(16_000);
  expect(s.comments).toContain(': keep-alive');
  s.abort();
  await next;
});

it('per token at most API_STREAMS_PER_TOKEN open streams (429, another token unaffected); a stream ends after API_STREAM_MAX_MS, so a revoked token loses its stream', async () => {
  const u = await startTestApi({ API_STREAMS_PER_TOKEN: '2', API_STREAM_MAX_MS: '2000' });
  const open: { abort(): void }[] = [];
  try {
    const f = await fixture();
    const at = (id: string) => `${u.api.url}/v1/deployments/${id}/events`;
    const s1 = await openSse(at(f.deploymentId), auth(f.token));
    open.push(s1);
    expect(label((await s1.next()) as SseFrame)).toBe('status:requested');
    const s2 = await openSse(at(f.deploymentId), auth(f.token));
    open.push(s2);
    expect(s2.status).toBe(200);
    const over = await noStream(u.client(f.token), f.deploymentId);
    expect(over.response.status).toBe(429);
    expect(over.response.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    expect(over.response.headers.get('retry-after')).toBe('10');
    const other = await t.token(f.orgId, ['deployments:read']);
    const s3 = await openSse(at(f.deploymentId), auth(other.token));
    open.push(s3);
    expect(s3.status).toBe(200);

    // revoked while open: the stream ends at its maximum lifetime, and the reconnect is refused
    await t.tokens.revoke(f.tokenId, 'api-test');
    expect(await s1.next(5_000)).toBeNull();
    const again = await noStream(u.client(f.token), f.deploymentId, '1');
    expect(again.response.status).toBe(401);
  } finally {
    for (const s of open) s.abort();
    await u.close();
  }
});
