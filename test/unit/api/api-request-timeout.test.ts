import { randomUUID } from 'node:crypto';
import { get } from 'node:http';
import { connect } from 'node:net';
import type { FastifyInstance } from 'fastify';
import { generateToken, type ApiPrincipal } from '../../../orchestrator/api/api-tokens';
import { secretRoutes } from '../../../orchestrator/api/routes/secrets';
import { buildApi, type ApiDeps, type ApiPlugin } from '../../../orchestrator/api/server';
import { loadConfig } from '../../../orchestrator/config';
import { makeLogger } from '../../../orchestrator/log';

/**
 * Review R15 F4: a request whose body never arrives. Fastify's default requestTimeout is 0, so
 * `POST /v1/secrets` with Content-Length 60000 and a few bytes of body kept its socket open for as
 * long as the client liked. With API_REQUEST_TIMEOUT_MS (1 s here) the server answers 408 and
 * closes within about the timeout plus one connections check (a quarter of it). And the bound is
 * on the request's ARRIVAL only: a response that streams for longer (as an SSE stream does) is
 * not cut.
 */
const log = makeLogger({ level: 'silent', name: 'api-request-timeout-test' });
const TIMEOUT_MS = 1_000;

/** The rate limiter's Redis: always under the limit. */
const limiterRedis = {
  status: 'ready',
  defineCommand: () => undefined,
  cortexRateLimitHit: async () => [1, 60_000],
  cortexRateLimitLease: async (_k: string, _w: number, _max: number, want: number) => [want, want, 60_000],
  get: async () => null,
  pttl: async () => -2,
  incr: async () => 1,
  pexpire: async () => 1,
};

/** A public route whose response streams for 2.4 s: 8 chunks, 300 ms apart. */
const streamRoute: ApiPlugin = async (app) => {
  app.get('/t/stream', { config: { public: true } }, (_request, reply) => {
    reply.hijack();
    reply.raw.writeHead(200, { 'content-type': 'text/event-stream' });
    let n = 0;
    const timer = setInterval(() => {
      n += 1;
      reply.raw.write(`data: ${n}\n\n`);
      if (n === 8) {
        clearInterval(timer);
        reply.raw.end();
      }
    }, 300);
  });
};

let app: FastifyInstance;
let port = 0;
const token = generateToken();

beforeAll(async () => {
  const principal: ApiPrincipal = { tokenId: randomUUID(), orgId: randomUUID(), scopes: ['secrets:write'] };
  const deps = {
    log,
    tokens: { authenticate: async (t: string) => (t === token ? principal : undefined) },
    limiterRedis,
    pipeline: { config: loadConfig({ LOG_LEVEL: 'silent', API_REQUEST_TIMEOUT_MS: String(TIMEOUT_MS) }) },
  } as unknown as ApiDeps;
  app = await buildApi(deps, { routes: [secretRoutes, streamRoute] });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const addr = app.server.address();
  port = typeof addr === 'object' && addr ? addr.port : 0;
});
afterAll(() => app.close());

it('a POST /v1/secrets whose body never arrives is answered 408 and closed within the bound', async () => {
  const t0 = Date.now();
  const { text, closedAfterMs } = await new Promise<{ text: string; closedAfterMs: number }>(
    (resolve, reject) => {
      const socket = connect(port, '127.0.0.1');
      let text = '';
      // without the bound the socket stays open: give up (and fail) well after it
      const giveUp = setTimeout(() => {
        socket.destroy();
        reject(new Error(`still open after 4 s; received: ${JSON.stringify(text)}`));
      }, 4_000);
      socket.setEncoding('utf8');
      socket.on('data', (d: string) => (text += d));
      socket.on('error', () => undefined);
      socket.on('close', () => {
        clearTimeout(giveUp);
        resolve({ text, closedAfterMs: Date.now() - t0 });
      });
      socket.write(
        `POST /v1/secrets HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${token}\r\n` +
          'Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n{"name":"slow',
      );
    },
  );
  expect(text).toMatch(/^HTTP\/1\.1 408 /);
  expect(text).toContain('application/problem+json');
  // the timeout, plus at most one connections check (250 ms at this timeout), plus slack
  expect(closedAfterMs).toBeGreaterThanOrEqual(TIMEOUT_MS - 50);
  expect(closedAfterMs).toBeLessThan(TIMEOUT_MS + 1_000);
}, 10_000);

it('a response streaming longer than the bound is not cut: the bound is on the request arriving', async () => {
  const t0 = Date.now();
  const { status, body, aborted } = await new Promise<{ status: number; body: string; aborted: boolean }>(
    (resolve, reject) => {
      get(`http://127.0.0.1:${port}/t/stream`, (res) => {
        let body = '';
        let aborted = false;
        res.setEncoding('utf8');
        res.on('data', (d: string) => (body += d));
        res.on('aborted', () => (aborted = true));
        res.on('error', () => (aborted = true));
        res.on('close', () => resolve({ status: res.statusCode ?? 0, body, aborted }));
      }).on('error', reject);
    },
  );
  expect(Date.now() - t0).toBeGreaterThan(2 * TIMEOUT_MS);
  expect([status, aborted]).toEqual([200, false]);
  expect(body.match(/^data: \d+$/gm)).toEqual(Array.from({ length: 8 }, (_, i) => `data: ${i + 1}`));
}, 10_000);
