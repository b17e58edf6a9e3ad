import { randomUUID } from 'node:crypto';
import { createServer as createHttpServer } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import Fastify from 'fastify';
import { serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { Webhook } from 'standardwebhooks';
import { generateToken } from '../../../orchestrator/api/api-tokens';
import { registerAuth } from '../../../orchestrator/api/auth';
import { makeErrorHandler } from '../../../orchestrator/api/problems';
import { parseRateLimit } from '../../../orchestrator/api/rate-limit';
import { webhookRoutes } from '../../../orchestrator/api/routes/webhooks';
import { webhookCommands } from '../../../orchestrator/cli/webhook-commands';
import { loadConfig, type Config } from '../../../orchestrator/config';
import { makeLogger } from '../../../orchestrator/log';
import { Secret } from '../../../orchestrator/secret';
import { addressAllowed, webhookLoopbackAllowed } from '../../../orchestrator/webhooks/webhook-address';
import { parseWebhookJob, webhookJobId } from '../../../orchestrator/webhooks/webhook-payloads';
import { sendWebhook, signatureHeaders } from '../../../orchestrator/webhooks/webhook-sender';
import { webhookBody } from '../../../orchestrator/webhooks/webhook-workers';
import { webhookWorkerOptions } from '../../../orchestrator/webhooks/webhooks-from-config';

/** The webhook parts that need no service: addresses, payloads, signatures, the rate-limit setting. */
describe('addresses a webhook may reach (the SQL list, again at delivery time)', () => {
  it.each([
    '10.1.2.3',
    '127.0.0.1',
    '169.254.169.254',
    '172.16.0.1',
    '192.168.1.1',
    '100.64.0.1',
    '0.0.0.0',
    '224.0.0.1',
    '::1',
    '::',
    'fe80::1',
    'fc00::1',
    '::ffff:127.0.0.1',
    '::ffff:10.0.0.1',
    '64:ff9b::a00:1',
    'not-an-ip',
    // review R15 F5: IPv4-compatible ::/96 and IPv4-translated ::ffff:0:0:0/96
    '::a9fe:a9fe',
    '::7f00:1',
    '::a00:1',
    '::169.254.169.254',
    '::ffff:0:a9fe:a9fe',
    '::ffff:0:7f00:1',
    '::ffff:0:5db8:d70e',
    '::ffff:a9fe:a9fe',
  ])('refuses %s', (a) => expect(addressAllowed(a, false)).toBe(false));

  it.each(['93.184.215.14', '1.1.1.1', '2606:4700:4700::1111', '2001:4860:4860::8888', '::1:0:0:1'])(
    'allows the public %s',
    (a) => expect(addressAllowed(a, false)).toBe(true),
  );

  it('local mode adds loopback, and only loopback', () => {
    expect(addressAllowed('127.0.0.1', true)).toBe(true);
    expect(addressAllowed('::1', true)).toBe(true);
    expect(addressAllowed('::7f00:1', true)).toBe(false);
    expect(addressAllowed('10.0.0.1', true)).toBe(false);
    expect(addressAllowed('169.254.169.254', true)).toBe(false);
  });
});

describe('the webhooks queue carries ids only', () => {
  it('accepts a delivery id and nothing else', () => {
    expect(parseWebhookJob({ deliveryId: '42' })).toEqual({ ok: true, payload: { deliveryId: '42' } });
    for (const bad of [
      {},
      { deliveryId: 42 },
      { deliveryId: '0' },
      { deliveryId: '42', secret: 'whsec_x' },
      { deliveryId: '4:2' },
    ])
      expect(parseWebhookJob(bad).ok).toBe(false);
    expect(JSON.stringify(parseWebhookJob({ deliveryId: 'sk-live-value' }))).not.toContain('sk-live-value');
  });
  it('job ids are deterministic and have no ":"', () => {
    expect(webhookJobId('42')).toBe('webhooks-42');
    expect(() => webhookJobId('4:2')).toThrow();
  });
});

describe('signing', () => {
  const secret = `whsec_${Buffer.alloc(32, 7).toString('base64')}`;
  it('signs id.timestamp.body so that the standardwebhooks library verifies it', () => {
    const body = webhookBody(
      {
        id: '7',
        deploymentId: 'd',
        at: '2026-11-30T00:00:00Z',
        kind: 'status',
        payload: { status: 'ready', previous_status: 'provisioning' },
      },
      'o',
    );
    expect(JSON.parse(body)).toEqual({
      type: 'deployment.status',
      timestamp: '2026-11-30T00:00:00.000Z',
      data: { eventId: 7, deploymentId: 'd', orgId: 'o', status: 'ready', previousStatus: 'provisioning' },
    });
    const h = signatureHeaders(new Secret(secret), '7', new Date(), body);
    expect(h['webhook-id']).toBe('7');
    expect(new Webhook(secret).verify(body, h)).toMatchObject({ type: 'deployment.status' });
    expect(() => new Webhook(secret).verify(body.replace('ready', 'failed'), h)).toThrow();
  });

  it('refuses to send to a private address, to plain http outside local mode and to a URL with credentials', async () => {
    const base = {
      msgId: '1',
      timestamp: new Date(),
      body: '{}',
      secret: new Secret(secret),
      timeoutMs: 1000,
    };
    expect(await sendWebhook({ ...base, url: 'https://10.0.0.1/x', allowLoopback: false })).toEqual({
      ok: false,
      error: 'address_refused',
    });
    expect(await sendWebhook({ ...base, url: 'https://[::1]/x', allowLoopback: false })).toEqual({
      ok: false,
      error: 'address_refused',
    });
    expect(await sendWebhook({ ...base, url: 'http://127.0.0.1:9/x', allowLoopback: false })).toEqual({
      ok: false,
      error: 'bad_url',
    });
    expect(await sendWebhook({ ...base, url: 'http://93.184.215.14/x', allowLoopback: true })).toEqual({
      ok: false,
      error: 'bad_url',
    });
    expect(await sendWebhook({ ...base, url: 'https://u:p@93.184.215.14/x', allowLoopback: false })).toEqual({
      ok: false,
      error: 'bad_url',
    });
  });

  it('a status outside 100-599 (Node takes any three digits) is bad_status, with no status: the record would refuse it (review R24 finding 1)', async () => {
    const srv = createNetServer((c) => {
      c.once('data', () => c.end('HTTP/1.1 999 X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n'));
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    try {
      const port = (srv.address() as AddressInfo).port;
      expect(
        await sendWebhook({
          url: `http://127.0.0.1:${port}/x`,
          msgId: '1',
          timestamp: new Date(),
          body: '{}',
          secret: new Secret(secret),
          timeoutMs: 2000,
          allowLoopback: true,
        }),
      ).toEqual({ ok: false, error: 'bad_status' });
    } finally {
      await new Promise((r) => srv.close(r));
    }
  });

  it('sends to HTTPS ports only (443, 8443): any other port is bad_url before any connection, local mode excepted (port scanning through webhooks)', async () => {
    const base = {
      msgId: '1',
      timestamp: new Date(),
      body: '{}',
      secret: new Secret(secret),
      timeoutMs: 1000,
    };
    for (const url of [
      'https://93.184.215.14:22/x',
      'https://hooks.example.com:6379/x',
      'https://[2606:2800:220:1::1]:5432/x',
      'https://hooks.example.com:80/x',
      'https://hooks.example.com:8080/x',
    ])
      expect({ url, r: await sendWebhook({ ...base, url, allowLoopback: false }) }).toEqual({
        url,
        r: { ok: false, error: 'bad_url' },
      });
    // a loopback literal on any port is local mode's receiver: refused outside local mode for its
    // address, not its port; in local mode the port rule does not apply (nothing listens on :9; a
    // name answering 127.0.0.1 on any port: webhook-dns.test.ts)
    expect(await sendWebhook({ ...base, url: 'https://127.0.0.1:9/x', allowLoopback: false })).toEqual({
      ok: false,
      error: 'address_refused',
    });
    const local = await sendWebhook({ ...base, url: 'http://127.0.0.1:9/x', allowLoopback: true });
    expect(local).toMatchObject({ ok: false });
    expect(local).not.toMatchObject({ error: 'bad_url' });
  });
});

describe('loopback webhooks', () => {
  it('only in the embedded local mode: local hosts and the local Postgres adapter, not with a real Supabase nor hcloud (review R23)', () => {
    expect(webhookLoopbackAllowed({ HOST_PROVIDER: 'local', RPC_ADAPTER: 'postgres' })).toBe(true);
    expect(webhookLoopbackAllowed({ HOST_PROVIDER: 'local', RPC_ADAPTER: 'supabase' })).toBe(false);
    expect(webhookLoopbackAllowed({ HOST_PROVIDER: 'hcloud', RPC_ADAPTER: 'postgres' })).toBe(false);
    expect(webhookLoopbackAllowed({ HOST_PROVIDER: 'hcloud', RPC_ADAPTER: 'supabase' })).toBe(false);
  });

  // Its two callers, from a loaded configuration: the registration route (what it asks the SQL
  // contract, whose `p_allow_loopback` alone lets http://127.0.0.1 in: pgTAP 39/43) and the
  // delivery workers' options (what the sender gets).
  const configs: [string, boolean, Config][] = [
    ['local mode (the default)', true, loadConfig({})],
    [
      'HOST_PROVIDER left at its default with a real Supabase',
      false,
      loadConfig({
        RPC_ADAPTER: 'supabase',
        SUPABASE_URL: 'https://example.supabase.co',
        SUPABASE_SERVICE_ROLE_KEY: 'x'.repeat(40),
      }),
    ],
    [
      'hcloud',
      false,
      loadConfig({
        HOST_PROVIDER: 'hcloud',
        HCLOUD_TOKEN: 'h'.repeat(64),
        DNS_ZONE: 'agents.example.com',
        ORCHESTRATOR_SSH_CIDRS: '192.0.2.0/24',
      }),
    ],
  ];

  it.each(configs)('%s: the delivery workers get allowLoopback %s', (_name, allowed, config) => {
    expect(webhookWorkerOptions(config).allowLoopback).toBe(allowed);
  });

  it.each(configs)(
    '%s: POST /v1/webhooks asks the contract with allow_loopback %s',
    async (_name, allowed, config) => {
      const orgId = randomUUID();
      const token = generateToken();
      const calls: { fn: string; args: Record<string, unknown> }[] = [];
      const rpc = async (fn: string, args: Record<string, unknown>) => {
        calls.push({ fn, args });
        return {
          id: randomUUID(),
          org_id: orgId,
          url: args.p_url,
          created_at: new Date().toISOString(),
          disabled_at: null,
          consecutive_failures: 0,
          breaker_open_until: null,
          secret: 'whsec_' + 'a'.repeat(32),
        };
      };
      const app = Fastify();
      app.setValidatorCompiler(validatorCompiler);
      app.setSerializerCompiler(serializerCompiler);
      app.setErrorHandler(makeErrorHandler(makeLogger({ level: 'silent' })));
      registerAuth(app, {
        authenticate: async (t: string) =>
          t === token ? { tokenId: randomUUID(), orgId, scopes: ['deployments:write'] } : undefined,
      });
      await app.register(async (scope) =>
        webhookRoutes(scope, { pipeline: { db: { rpc }, config } } as never),
      );
      await app.ready();
      const r = await app.inject({
        method: 'POST',
        url: '/v1/webhooks',
        headers: { authorization: `Bearer ${token}` },
        payload: { url: 'http://127.0.0.1:9000/hook' },
      });
      await app.close();
      expect(r.statusCode).toBe(201);
      expect(calls.map((c) => [c.fn, c.args.p_allow_loopback])).toEqual([
        ['webhook_endpoints__create', allowed],
      ]);
    },
  );

  // the third caller, `cortexctl webhooks add` (review R26 finding A: it still asked for loopback
  // whenever HOST_PROVIDER was local), through a stand-in for PostgREST's RPC endpoint
  it.each([
    ['local hosts with a real Supabase', false, {}],
    [
      'hcloud with a real Supabase',
      false,
      {
        HOST_PROVIDER: 'hcloud',
        HCLOUD_TOKEN: 'h'.repeat(64),
        DNS_ZONE: 'agents.example.com',
        ORCHESTRATOR_SSH_CIDRS: '192.0.2.0/24',
      },
    ],
  ])('%s: cortexctl webhooks add asks the contract with allow_loopback %s', async (_name, allowed, extra) => {
    const bodies: { url?: string; body: Record<string, unknown> }[] = [];
    const srv = createHttpServer((req, res) => {
      let b = '';
      req.on('data', (c: Buffer) => (b += c.toString()));
      req.on('end', () => {
        bodies.push({ url: req.url, body: JSON.parse(b || '{}') as Record<string, unknown> });
        res.setHeader('content-type', 'application/json');
        res.end(
          JSON.stringify({
            id: randomUUID(),
            org_id: randomUUID(),
            url: 'http://127.0.0.1:9000/hook',
            created_at: new Date().toISOString(),
            disabled_at: null,
            consecutive_failures: 0,
            breaker_open_until: null,
            secret: 'whsec_' + 'a'.repeat(32),
          }),
        );
      });
    });
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const env = {
      RPC_ADAPTER: 'supabase',
      SUPABASE_URL: `http://127.0.0.1:${(srv.address() as AddressInfo).port}`,
      SUPABASE_SERVICE_ROLE_KEY: 'x'.repeat(40),
      ...extra,
    };
    try {
      await webhookCommands.webhooks?.run(
        ['add', '--org', randomUUID(), '--url', 'http://127.0.0.1:9000/hook', '--json'],
        { env, out: () => undefined },
      );
    } finally {
      await new Promise((r) => srv.close(r));
    }
    expect(bodies.map((b) => [b.url?.replace(/[?].*$/, ''), b.body.p_allow_loopback])).toEqual([
      ['/rest/v1/rpc/webhook_endpoints__create', allowed],
    ]);
  });
});

describe('API_RATE_LIMIT', () => {
  it('reads a count per second, minute or hour', () => {
    expect(parseRateLimit('600/min')).toEqual({ max: 600, windowMs: 60_000 });
    expect(parseRateLimit('20/s')).toEqual({ max: 20, windowMs: 1_000 });
    expect(parseRateLimit('10000/h')).toEqual({ max: 10_000, windowMs: 3_600_000 });
    for (const bad of ['0/min', '600', '600/day', '-1/s', '1e3/s'])
      expect(() => parseRateLimit(bad)).toThrow('API_RATE_LIMIT');
  });
});
