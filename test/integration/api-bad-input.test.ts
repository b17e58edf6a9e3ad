import { connect } from 'node:net';
import { randomUUID } from 'node:crypto';
import fc from 'fast-check';
import type { Pool } from 'pg';
import { adminPool } from '../support/db';
import { canary } from '../support/canary';
import { dumpRedis } from '../support/pipeline';
import { startTestApi, type TestApi } from '../support/api';
import { makeApiClient } from '../../orchestrator/api/client';
import { QUEUE_NAMES } from '../../orchestrator/queues/job-payloads';

/**
 * Bad input, property-based (fast-check): malformed JSON, wrong types, unknown fields, oversized
 * bodies, hostile env names and values, hostile path parameters and query strings, hostile headers
 * (Idempotency-Key, Last-Event-ID, Authorization, Content-Type), at every endpoint the API serves
 * (read from its own OpenAPI document, plus the ops routes). Requests are written byte for byte on
 * a raw socket, so a header can hold what fetch would refuse to send. For each answer: never a 5xx;
 * every 4xx a problem document (application/problem+json, its status), a 400 naming the field;
 * nothing a mutating request asked for is accepted. After all runs: the organisation's rows in
 * every table that has an org_id, and every queue's job counts, are as before.
 *
 * And a canary key stored through the API (and bound to a requested deployment, so that a job
 * exists) appears in no response, no log line, no Redis key or value, and no job.
 */
jest.setTimeout(180_000);

const NUM_RUNS = Number(process.env.BAD_INPUT_RUNS ?? 500);

let t: TestApi;
let pool: Pool;
let orgId: string;
let token: string;
let secretId: string;
let deploymentId: string;
let canaryValue: string;
const responses: string[] = [];

interface Endpoint {
  readonly method: string;
  /** `/v1/deployments/{id}` */
  readonly path: string;
  readonly mutating: boolean;
  /** Needs no token (health): a bad Authorization header is ignored there. */
  readonly public?: boolean;
}
let endpoints: Endpoint[] = [];

interface RawResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** One HTTP/1.1 request written as is; an event stream is cut after its head. */
const rawRequest = (port: number, head: string, body: Buffer | string = ''): Promise<RawResponse> =>
  new Promise((resolve, reject) => {
    const sock = connect({ host: '127.0.0.1', port });
    const chunks: Buffer[] = [];
    let settled = false;
    const finish = (): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      const all = Buffer.concat(chunks).toString('latin1');
      const sep = all.indexOf('\r\n\r\n');
      if (sep < 0) return reject(new Error(`no response head (${all.length} bytes)`));
      const [statusLine = '', ...lines] = all.slice(0, sep).split('\r\n');
      const headers: Record<string, string> = {};
      for (const l of lines) {
        const i = l.indexOf(':');
        if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
      }
      let rest = Buffer.from(all.slice(sep + 4), 'latin1');
      if (headers['transfer-encoding'] === 'chunked') {
        const out: Buffer[] = [];
        let s = rest.toString('latin1');
        for (;;) {
          const nl = s.indexOf('\r\n');
          const size = parseInt(s.slice(0, nl), 16);
          if (!(size > 0)) break;
          out.push(Buffer.from(s.slice(nl + 2, nl + 2 + size), 'latin1'));
          s = s.slice(nl + 2 + size + 2);
        }
        rest = Buffer.concat(out);
      }
      resolve({ status: Number(statusLine.split(' ')[1]), headers, body: rest.toString('utf8') });
    };
    const timer = setTimeout(finish, 10_000);
    sock.on('data', (d: Buffer) => {
      chunks.push(d);
      const text = Buffer.concat(chunks).toString('latin1');
      // a stream (SSE) does not end: its head is the answer
      if (
        /\r\ncontent-type: text\/event-stream/i.test(text.slice(0, text.indexOf('\r\n\r\n') + 1)) &&
        text.includes('\r\n\r\n')
      )
        finish();
    });
    sock.on('end', finish);
    sock.on('close', finish);
    sock.on('error', (e) => (chunks.length ? finish() : reject(e)));
    sock.write(head);
    if (body.length) sock.write(body);
  });

// ---- arbitraries -------------------------------------------------------------------------------

const HOSTILE = [
  '',
  ' ',
  '../../../etc/passwd',
  '..%2f..%2fetc%2fpasswd',
  '%00',
  '\u0000',
  '\u202e\u2066',
  "'; drop table deployments; --",
  '${jndi:ldap://x.invalid/a}',
  '{{7*7}}',
  '<script>alert(1)</script>',
  'A'.repeat(5000),
  '00000000-0000-0000-0000-00000000000g',
  'null',
  '[]',
  '-1',
  '1e309',
  '\u00ff\u00fe',
  '\ud83d\ude00',
];
const hostileText = fc.oneof(
  fc.constantFrom(...HOSTILE),
  fc.string({ unit: 'binary', maxLength: 300 }),
  fc.string({ maxLength: 80 }),
);
/** Env var names the API must refuse: anything off ^[A-Z_][A-Z0-9_]*$, and what the loader owns. */
const hostileEnvName = fc.oneof(
  fc.constantFrom(
    '',
    '1ABC',
    'A-B',
    'a',
    'A B',
    'A=B',
    'A\nB',
    'A\u0000',
    'É',
    'A'.repeat(300),
    'LD_PRELOAD',
    'PATH',
  ),
  hostileText.filter((s) => !/^[A-Z_][A-Z0-9_]*$/.test(s)),
);
/** Values the API must refuse: control characters, or longer than any key. */
const hostileValue = fc.oneof(
  fc.constantFrom('sk-ant-\u0000x', 'sk\nX-Injected: 1', 'a\u001b[31m', '\u0007', 'v'.repeat(20_000)),
  fc
    .tuple(fc.string({ maxLength: 20 }), fc.integer({ min: 0, max: 31 }), fc.string({ maxLength: 20 }))
    .map(([a, c, b]) => `${a}${String.fromCharCode(c)}${b}`),
);
/** Content types that are not JSON (so that even a valid body is refused). */
const hostileContentType = fc.oneof(
  fc.constantFrom(
    'text/plain',
    'application/x-www-form-urlencoded',
    'multipart/form-data; boundary=x',
    'application/xml',
    '',
    '*/*',
    'application/jso',
    'text/html; charset=utf-8',
  ),
  fc.string({ unit: 'binary-ascii', maxLength: 60 }).filter((s) => !/json/i.test(s)),
);
/** Header values sent raw: CR/LF are removed (they would end the header, not test it). */
const headerSafe = (s: string): string => s.replace(/[\r\n]/g, '');
/** Keys the API must refuse as they arrive: HTTP trims spaces and tabs around a header value. */
const hostileIdempotencyKey = fc
  .oneof(
    fc.constantFrom('', ' ', 'k'.repeat(201), 'key with spaces', 'ключ', 'a\tb', '\u00ff'),
    fc.string({ unit: 'binary', minLength: 1, maxLength: 260 }),
  )
  .map(headerSafe)
  .filter((s) => !/^[\x21-\x7e]{1,200}$/.test(s.replace(/^[ \t]+|[ \t]+$/g, '')));
const hostileAuthorization = fc.oneof(
  fc.constantFrom(
    '',
    'Bearer',
    'Bearer ',
    'Basic YWRtaW46YWRtaW4=',
    'bearer ctx_x',
    `Bearer ctx_${'A'.repeat(43)}`,
  ),
  hostileText.map((s) => `Bearer ${s}`),
  hostileText,
);

type BodyKind = { kind: string; body: string };
const validSecretBody = (): Record<string, unknown> => ({
  name: 'fuzz key',
  provider: 'anthropic',
  value: `sk-ant-fuzz-${randomUUID()}`,
});
const validDeploymentBody = (): Record<string, unknown> => ({
  name: 'fuzz agent',
  subdomain: `fz-${randomUUID().slice(0, 8)}`,
  bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId }],
});

/** A body no endpoint may accept. */
const badBody = (path: string): fc.Arbitrary<BodyKind> =>
  fc.oneof(
    fc
      .string({ maxLength: 200 })
      .map((s) => `{${s}`)
      .filter((s) => {
        try {
          JSON.parse(s);
          return false;
        } catch {
          return true;
        }
      })
      .map((body) => ({ kind: 'malformed JSON', body })),
    fc
      .oneof(
        fc.jsonValue({ maxDepth: 3 }).filter((v) => typeof v !== 'object' || v === null || Array.isArray(v)),
      )
      .map((v) => ({ kind: 'not an object', body: JSON.stringify(v) })),
    fc
      .record({
        name: fc.oneof(fc.integer(), fc.boolean(), fc.constant(null), fc.array(fc.string())),
        provider: fc.oneof(fc.integer(), fc.object()),
        value: fc.oneof(fc.integer(), fc.constant(null), fc.object()),
        subdomain: fc.oneof(fc.integer(), fc.array(fc.integer())),
        bindings: fc.oneof(fc.string(), fc.integer(), fc.array(fc.integer(), { minLength: 1 })),
        url: fc.oneof(fc.integer(), fc.array(fc.string())),
      })
      .map((v) => ({ kind: 'wrong types', body: JSON.stringify(v) })),
    fc
      .tuple(
        fc
          .string({ minLength: 1, maxLength: 40 })
          .filter(
            (k) =>
              ![
                'name',
                'provider',
                'value',
                'orgId',
                'subdomain',
                'runtime',
                'bindings',
                'url',
                'leaked',
              ].includes(k),
          ),
        fc.jsonValue({ maxDepth: 2 }),
      )
      .map(([k, v]) => ({
        kind: 'unknown field',
        body: JSON.stringify({
          ...(path.startsWith('/v1/deployments') ? validDeploymentBody() : validSecretBody()),
          [k]: v,
        }),
      })),
    fc.integer({ min: 64 * 1024 + 1, max: 200 * 1024 }).map((n) => ({
      kind: 'oversized',
      body: JSON.stringify({ ...validSecretBody(), value: 'A'.repeat(n) }),
    })),
    hostileEnvName.map((envVar) => ({
      kind: 'hostile env name',
      body: JSON.stringify({ ...validDeploymentBody(), bindings: [{ envVar, secretId }] }),
    })),
    hostileValue.map((value) => ({
      kind: 'hostile value',
      body: JSON.stringify({ ...validSecretBody(), value }),
    })),
    hostileText.map((s) => ({
      kind: 'hostile names',
      body: JSON.stringify({ ...validDeploymentBody(), name: `${s}\u0000`, subdomain: `${s}.x` }),
    })),
  );

interface Case {
  endpoint: Endpoint;
  pathParam: string;
  query: string;
  headers: [string, string][];
  body?: string;
  /** A request the API must refuse whatever it is (mutating, or a bad token). */
  mustRefuse: boolean;
  why: string;
}

const enc = (s: string): string => {
  try {
    return encodeURIComponent(s);
  } catch {
    return '%ED%A0%80';
  }
};

const caseArb = (): fc.Arbitrary<Case> =>
  fc
    .record({
      endpoint: fc.constantFrom(...endpoints),
      mode: fc.constantFrom(
        'path',
        'query',
        'body',
        'idempotency',
        'last-event-id',
        'authorization',
        'content-type',
      ),
      hostileParam: hostileText.map((s) => enc(s).slice(0, 2000) || '%20'),
      unknownId: fc.uuid(),
      queryKey: fc.string({ minLength: 1, maxLength: 30 }),
      queryValue: hostileText,
      seed: fc.integer(),
    })
    .chain((r) => {
      const e = r.endpoint;
      const needsBody = ['POST', 'PUT', 'PATCH'].includes(e.method);
      const knownId = e.path.includes('/secrets/')
        ? secretId
        : e.path.includes('/orgs/')
          ? orgId
          : deploymentId;
      // a mutating request never names a real resource: it could only be a real change
      const goodParam = e.mutating ? r.unknownId : knownId;
      const base = { endpoint: e, query: '', headers: [] as [string, string][], pathParam: goodParam };
      const json: [string, string][] = [['Content-Type', 'application/json']];
      switch (r.mode) {
        case 'path':
          return fc.constant<Case>({
            ...base,
            pathParam: r.seed % 3 === 0 ? r.unknownId : r.hostileParam,
            ...(needsBody ? { body: '{}', headers: json } : {}),
            mustRefuse: e.mutating,
            why: 'path parameter',
          });
        case 'query':
          return fc.constant<Case>({
            ...base,
            query: `?${enc(r.queryKey)}=${enc(r.queryValue).slice(0, 3000)}`,
            ...(needsBody ? { body: '{"x":1}', headers: json } : {}),
            mustRefuse: e.mutating,
            why: 'query string',
          });
        case 'body':
          return badBody(e.path).map<Case>((b) => ({
            ...base,
            body: b.body,
            headers: json,
            // a GET's body is not read: only what it would change must be refused
            mustRefuse: e.mutating,
            why: `body: ${b.kind}`,
          }));
        case 'idempotency':
          return hostileIdempotencyKey.map<Case>((k) => ({
            ...base,
            headers: [['Idempotency-Key', headerSafe(k)], ...(needsBody ? json : [])],
            ...(needsBody
              ? { body: JSON.stringify(e.path === '/v1/deployments' ? validDeploymentBody() : { x: 1 }) }
              : {}),
            mustRefuse: e.mutating,
            why: 'Idempotency-Key',
          }));
        case 'last-event-id':
          return hostileText.map<Case>((k) => ({
            ...base,
            headers: [['Last-Event-ID', headerSafe(k).slice(0, 4000)], ...(needsBody ? json : [])],
            ...(needsBody ? { body: '[]' } : {}),
            mustRefuse: e.mutating,
            why: 'Last-Event-ID',
          }));
        case 'authorization':
          return hostileAuthorization.map<Case>((a) => ({
            ...base,
            pathParam: knownId,
            headers: [['Authorization', headerSafe(a).slice(0, 8000)], ...(needsBody ? json : [])],
            ...(needsBody
              ? {
                  body: JSON.stringify(
                    e.path.startsWith('/v1/deployments') ? validDeploymentBody() : validSecretBody(),
                  ),
                }
              : {}),
            mustRefuse: !e.public,
            why: 'Authorization',
          }));
        default:
          return hostileContentType.map<Case>((ct) => ({
            ...base,
            headers: [['Content-Type', headerSafe(ct)]],
            body: JSON.stringify(
              e.path.startsWith('/v1/deployments') ? validDeploymentBody() : validSecretBody(),
            ),
            mustRefuse: e.mutating,
            why: 'Content-Type',
          }));
      }
    });

const send = async (c: Case): Promise<RawResponse> => {
  const path = c.endpoint.path.replace(/\{[^}]+\}/g, c.pathParam) + c.query;
  const body = c.body === undefined ? undefined : Buffer.from(c.body, 'utf8');
  const names = new Set(c.headers.map(([k]) => k.toLowerCase()));
  const lines = [
    `${c.endpoint.method} ${path} HTTP/1.1`,
    `Host: 127.0.0.1`,
    'Connection: close',
    ...(names.has('authorization') ? [] : [`Authorization: Bearer ${token}`]),
    ...c.headers.map(([k, v]) => `${k}: ${v}`),
    ...(body ? [`Content-Length: ${body.length}`] : []),
  ];
  return rawRequest(Number(new URL(t.api.url).port), `${lines.join('\r\n')}\r\n\r\n`, body);
};

// ---- state oracles -------------------------------------------------------------------------------

/** Rows of the organisation in every public table with an org_id column. */
const orgRowCounts = async (): Promise<Record<string, number>> => {
  const tables = await pool.query<{ table_name: string }>(
    `select table_name from information_schema.columns
      where table_schema = 'public' and column_name = 'org_id'
        and table_name in (select table_name from information_schema.tables where table_schema = 'public' and table_type = 'BASE TABLE')
      order by 1`,
  );
  const out: Record<string, number> = {};
  for (const { table_name } of tables.rows) {
    const r = await pool.query<{ n: string }>(
      `select count(*)::text as n from public."${table_name}" where org_id = $1`,
      [orgId],
    );
    out[table_name] = Number(r.rows[0]?.n);
  }
  return out;
};

const queueCounts = async (): Promise<Record<string, Record<string, number>>> => {
  const out: Record<string, Record<string, number>> = {};
  for (const [name, q] of Object.entries(t.pipeline.queues.queues))
    out[name] = await q.getJobCounts(
      'waiting',
      'active',
      'delayed',
      'prioritized',
      'waiting-children',
      'completed',
      'failed',
    );
  return out;
};

beforeAll(async () => {
  // hostile Authorization cases are 401s: without this, the per-address limit would turn every later case into 429
  t = await startTestApi({ API_RATE_LIMIT: '1000000/min', API_AUTH_FAILURE_LIMIT: '1000000/min' });
  pool = adminPool();
  orgId = await t.org();
  token = (await t.token(orgId, ['secrets:write', 'deployments:write', 'deployments:read', 'audit:read']))
    .token;
  // The canary goes in the way the onboarding app would send it: through the typed client.
  const api = makeApiClient({ baseUrl: t.api.url, token });
  canaryValue = canary('anthropic');
  const stored = await api.POST('/v1/secrets', {
    body: { name: 'canary key', provider: 'anthropic', value: canaryValue },
  });
  expect(stored.response.status).toBe(201);
  responses.push(JSON.stringify(stored.data));
  secretId = stored.data?.id ?? '';
  const requested = await api.POST('/v1/deployments', {
    body: {
      name: 'canary agent',
      subdomain: `cn-${randomUUID().slice(0, 8)}`,
      bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId }],
    },
  });
  expect(requested.response.status).toBeLessThan(300);
  responses.push(JSON.stringify(requested.data));
  deploymentId = requested.data?.deploymentId ?? '';
  for (const r of [
    await api.GET('/v1/secrets'),
    await api.GET('/v1/deployments/{id}', { params: { path: { id: deploymentId } } }),
  ])
    responses.push(JSON.stringify(r.data));

  const doc = t.api.app.swagger() as { paths: Record<string, Record<string, { security?: unknown[] }>> };
  endpoints = Object.entries(doc.paths).flatMap(([path, ops]) =>
    Object.entries(ops)
      .filter(([m]) => ['get', 'post', 'put', 'patch', 'delete'].includes(m))
      .map(([m, op]) => ({
        method: m.toUpperCase(),
        path,
        mutating: m !== 'get',
        public: Array.isArray(op.security) && op.security.length === 0,
      })),
  );
  // the ops surfaces, outside the document
  endpoints.push(
    { method: 'GET', path: '/metrics', mutating: false },
    { method: 'GET', path: '/admin/queues', mutating: false },
    { method: 'GET', path: '/admin/queues/api/queues', mutating: false },
    { method: 'PUT', path: '/admin/queues/api/queues/provision/retry/failed', mutating: true },
  );
});

afterAll(async () => {
  await pool?.end();
  await t?.close();
});

describe('bad input at every endpoint (fast-check)', () => {
  it('never a 5xx; every 4xx a problem document, a 400 naming the field; nothing changed in Postgres or the queues', async () => {
    expect(endpoints.length).toBeGreaterThanOrEqual(15);
    const rowsBefore = await orgRowCounts();
    const queuesBefore = await queueCounts();
    expect(rowsBefore.deployments).toBe(1);
    expect(queuesBefore.provision?.waiting).toBe(1);
    const seen = new Map<string, number>();

    await fc.assert(
      fc.asyncProperty(caseArb(), async (c) => {
        const r = await send(c);
        responses.push(r.body);
        const label = `${c.endpoint.method} ${c.endpoint.path} (${c.why}) → ${r.status}`;
        seen.set(c.why.replace(/:.*/, ''), (seen.get(c.why.replace(/:.*/, '')) ?? 0) + 1);
        // /readyz answers 503 by design here (no worker runs in this test): a readiness answer, not a failure
        const notReady = c.endpoint.path === '/readyz' && r.status === 503;
        expect([label, r.status < 500 || notReady]).toEqual([label, true]);
        if (c.mustRefuse) expect([label, r.status >= 400]).toEqual([label, true]);
        if (r.status >= 400) {
          expect([label, r.headers['content-type'] ?? '']).toEqual([
            label,
            expect.stringMatching(/^application\/problem\+json/),
          ]);
          const p = JSON.parse(r.body) as { status: number; title: string; field?: string };
          expect([label, p.status, typeof p.title]).toEqual([label, r.status, 'string']);
          if (r.status === 400)
            expect([label, typeof p.field, (p.field ?? '').length > 0]).toEqual([label, 'string', true]);
        }
      }),
      { numRuns: NUM_RUNS, endOnFailure: true },
    );

    expect(await orgRowCounts()).toEqual(rowsBefore);
    expect(await queueCounts()).toEqual(queuesBefore);
    // every kind of bad input was tried
    expect([...seen.keys()].sort()).toEqual(
      [
        'Authorization',
        'Content-Type',
        'Idempotency-Key',
        'Last-Event-ID',
        'body',
        'path parameter',
        'query string',
      ].sort(),
    );
  });

  it('the canary key is in no response, log line, Redis key or value, or job', async () => {
    expect(secretId).toMatch(/^[0-9a-f-]{36}$/);
    const needle = canaryValue;
    expect(responses.filter((r) => r.includes(needle))).toEqual([]);
    expect(t.logs.length).toBeGreaterThan(0);
    expect(t.logs.filter((l) => l.includes(needle))).toEqual([]);
    // every key of the whole Redis, not only this test's prefix: names, and values by type
    const all = await dumpRedis(t.pipeline.redis, '*');
    expect(all.size).toBeGreaterThan(0);
    const hits = [...all].filter(([k, v]) => k.includes(needle) || v.includes(needle)).map(([k]) => k);
    expect(hits).toEqual([]);
    // and DUMP of this test's keys (the serialized form; short values are stored uncompressed)
    for (const k of [...all.keys()].filter((k) => k.startsWith(`${t.pipeline.config.QUEUE_PREFIX}:`))) {
      const d = await t.pipeline.redis.dumpBuffer(k);
      expect([k, d?.includes(Buffer.from(needle)) ?? false]).toEqual([k, false]);
    }
    // the provision job the request made exists, and holds ids only
    const jobs = await Promise.all(QUEUE_NAMES.map((q) => t.pipeline.queues.queues[q].getJobs()));
    const flat = jobs.flat();
    expect(flat.some((j) => JSON.stringify(j.data) === JSON.stringify({ deploymentId }))).toBe(true);
    expect(flat.filter((j) => JSON.stringify(j).includes(needle))).toEqual([]);
  });
});
