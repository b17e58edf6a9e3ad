import { promises as dns, type LookupAddress } from 'node:dns';
import { createServer, type AddressInfo, type Server } from 'node:net';
import { Secret } from '../../../orchestrator/secret';
import { guardedLookup } from '../../../orchestrator/webhooks/webhook-address';
import { sendWebhook, type SendInput } from '../../../orchestrator/webhooks/webhook-sender';
import { startFakeDns, type FakeDns } from '../../support/fake-dns';

/**
 * How a webhook's host name is resolved at delivery time (review R15 F1): through c-ares with the
 * delivery's timeout, queries cancelled when it ends, nothing held on libuv's thread pool; every
 * answer checked against the refused ranges; the connection made to the checked address.
 */
const base = {
  msgId: '1',
  timestamp: new Date(),
  body: '{}',
  secret: new Secret(`whsec_${Buffer.alloc(32, 7).toString('base64')}`),
  allowLoopback: false,
} satisfies Partial<SendInput>;

let fake: FakeDns | undefined;
afterEach(async () => {
  await fake?.close();
  fake = undefined;
});

/** A TCP listener on 127.0.0.1 that counts connections and hangs up at once. */
const hangUp = async (): Promise<{ port: number; connections: () => number; server: Server }> => {
  let n = 0;
  const server = createServer((s) => {
    n += 1;
    s.destroy();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { port: (server.address() as AddressInfo).port, connections: () => n, server };
};

describe('a name server that never answers', () => {
  it('every send ends within its timeout, and other lookups in the process are not held up', async () => {
    fake = await startFakeDns({ silent: true });
    const timeoutMs = 500;
    const started = Date.now();
    const sends = Array.from({ length: 10 }, (_, i) =>
      sendWebhook({
        ...base,
        url: `https://hook${i}.silent-zone.example.com/x`,
        timeoutMs,
        dnsServers: [fake!.server],
      }).then((r) => ({ r, ms: Date.now() - started })),
    );
    // an unrelated lookup (from /etc/hosts, through getaddrinfo) while the sends wait on DNS; given
    // up on (Infinity) after 3 s, so that a stalled one fails here and not by the test's timeout
    const t = Date.now();
    const innocentMs = await Promise.race([
      dns.lookup('localhost').then(() => Date.now() - t),
      new Promise<number>((r) => setTimeout(() => r(Infinity), 3000).unref()),
    ]);
    const results = await Promise.all(sends);
    for (const { r, ms } of results) {
      expect(r).toEqual({ ok: false, error: 'timeout' });
      expect(ms).toBeLessThan(timeoutMs + 1500);
    }
    // With dns.lookup (the old code) each send held a getaddrinfo call on libuv's thread pool until
    // the system resolver gave up (seconds after the send's timeout), and this lookup queued
    // behind them.
    expect(innocentMs).toBeLessThan(1000);
    expect(fake.queries()).toBeGreaterThanOrEqual(10); // the queries went to the injected server
    // and afterwards too
    const t2 = Date.now();
    await dns.lookup('localhost');
    expect(Date.now() - t2).toBeLessThan(1000);
  });
});

describe('what a name resolves to is checked, every address of it', () => {
  const lookup = (hostname: string, all: boolean) =>
    new Promise<{ err: NodeJS.ErrnoException | null; address: string | LookupAddress[] }>((resolve) =>
      guardedLookup(false, {
        signal: AbortSignal.timeout(2000),
        timeoutMs: 2000,
        dnsServers: [fake!.server],
      })(hostname, { all }, (err, address) => resolve({ err, address })),
    );

  it('a name answering a private address is refused, as before', async () => {
    fake = await startFakeDns({ records: { 'hook.example.com': ['127.0.0.1'] } });
    expect(
      await sendWebhook({
        ...base,
        url: 'https://hook.example.com/x',
        timeoutMs: 2000,
        dnsServers: [fake.server],
      }),
    ).toEqual({ ok: false, error: 'address_refused' });
    expect(fake.queries()).toBeGreaterThan(0);
  });

  it.each([
    [['93.184.215.14', '169.254.169.254']],
    [['93.184.215.14', 'fd00::1']],
    [['2606:4700:4700::1111', '::a9fe:a9fe']],
    [['::ffff:0:a9fe:a9fe']],
  ])('refuses a name when any of its addresses is refused: %j', async (addresses) => {
    fake = await startFakeDns({ records: { 'hook.example.com': addresses } });
    const { err } = await lookup('hook.example.com', true);
    expect(err?.code).toBe('EWEBHOOKADDRESS');
  });

  it('hands back the checked public addresses, IPv4 first', async () => {
    fake = await startFakeDns({ records: { 'hook.example.com': ['2606:4700:4700::1111', '93.184.215.14'] } });
    expect(await lookup('hook.example.com', true)).toEqual({
      err: null,
      address: [
        { address: '93.184.215.14', family: 4 },
        { address: '2606:4700:4700::1111', family: 6 },
      ],
    });
    expect(await lookup('hook.example.com', false)).toEqual({ err: null, address: '93.184.215.14' });
  });

  it('a name without an address is a DNS failure', async () => {
    fake = await startFakeDns({ records: { 'empty.example.com': [] } });
    expect(
      await sendWebhook({
        ...base,
        url: 'https://nx.example.com/x',
        timeoutMs: 2000,
        dnsServers: [fake.server],
      }),
    ).toEqual({ ok: false, error: 'dns_failed' });
    expect(
      await sendWebhook({
        ...base,
        url: 'https://empty.example.com/x',
        timeoutMs: 2000,
        dnsServers: [fake.server],
      }),
    ).toEqual({ ok: false, error: 'dns_failed' });
  });

  it('connects to the address it checked (local mode: a name answering 127.0.0.1)', async () => {
    fake = await startFakeDns({ records: { 'hook.example.com': ['127.0.0.1'] } });
    const l = await hangUp();
    try {
      const r = await sendWebhook({
        ...base,
        allowLoopback: true,
        url: `https://hook.example.com:${l.port}/x`,
        timeoutMs: 2000,
        dnsServers: [fake.server],
      });
      expect(r).toEqual({ ok: false, error: 'connection_failed' });
      expect(l.connections()).toBe(1);
    } finally {
      await new Promise((r) => l.server.close(r));
    }
  });

  it('an IP literal needs no lookup: it is connected to as is', async () => {
    fake = await startFakeDns({ silent: true });
    const l = await hangUp();
    try {
      const r = await sendWebhook({
        ...base,
        allowLoopback: true,
        url: `https://127.0.0.1:${l.port}/x`,
        timeoutMs: 2000,
        dnsServers: [fake.server],
      });
      expect(r).toEqual({ ok: false, error: 'connection_failed' });
      expect(l.connections()).toBe(1);
      expect(fake.queries()).toBe(0);
    } finally {
      await new Promise((r) => l.server.close(r));
    }
  });
});
