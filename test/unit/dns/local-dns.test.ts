import { makeLocalDns, parseZoneRead } from '../../../orchestrator/dns/local-dns';
import { makeFakeKnotc } from '../../support/fake-knotc';
import { rejection } from '../../support/rejection';

const ZONE = 'agents.localhost.test';
const ID = '7f0c2a8e-1b2c-4d3e-8f90-0123456789ab';
const NAME = `a1.${ZONE}`;

const setup = (staleTransactionMs = 15_000) => {
  const knot = makeFakeKnotc(ZONE);
  return { knot, dns: makeLocalDns({ zone: ZONE, knotc: knot.run, staleTransactionMs }) };
};

describe('local DNS adapter (knotc)', () => {
  it('writes A, AAAA and the owner in one committed transaction, as argv arrays', async () => {
    const { knot, dns } = setup();
    await dns.ensureRecord({ name: NAME, ipv4: '10.0.0.7', ipv6: '2001:DB8::7', deploymentId: ID });
    expect(knot.calls).toEqual([
      ['zone-read', ZONE, `${NAME}.`],
      ['zone-begin', ZONE],
      ['<stdin>'],
      ['zone-unset', ZONE, `${NAME}.`],
      ['zone-set', ZONE, `${NAME}.`, '30', 'A', '10.0.0.7'],
      ['zone-set', ZONE, `${NAME}.`, '30', 'AAAA', '2001:db8::7'],
      ['zone-set', ZONE, `${NAME}.`, '30', 'TXT', `"deployment=${ID}"`],
      ['zone-commit', ZONE],
    ]);
    expect(await dns.lookup(NAME)).toEqual({ ipv4: '10.0.0.7', ipv6: '2001:db8::7' });
    expect(await dns.list()).toEqual([
      { name: NAME, ipv4: '10.0.0.7', ipv6: '2001:db8::7', deploymentId: ID },
    ]);
  });

  it('is idempotent: the same record again opens no transaction and keeps the serial', async () => {
    const { knot, dns } = setup();
    await dns.ensureRecord({ name: NAME, ipv4: '10.0.0.7', deploymentId: ID });
    const serial = knot.serial();
    knot.calls.length = 0;
    await dns.ensureRecord({ name: NAME.toUpperCase(), ipv4: '10.0.0.7', deploymentId: ID });
    expect(knot.serial()).toBe(serial);
    expect(knot.calls.map((c) => c[0])).toEqual(['zone-read']);
  });

  it('replaces a record with other addresses (and drops an AAAA no longer wanted)', async () => {
    const { dns } = setup();
    await dns.ensureRecord({ name: NAME, ipv4: '10.0.0.7', ipv6: '2001:db8::7', deploymentId: ID });
    await dns.ensureRecord({ name: NAME, ipv4: '10.0.0.8', deploymentId: ID });
    expect(await dns.lookup(NAME)).toEqual({ ipv4: '10.0.0.8' });
    expect(await dns.list()).toHaveLength(1);
  });

  it('rewrites a node holding a stray record', async () => {
    const { knot, dns } = setup();
    await dns.ensureRecord({ name: NAME, ipv4: '10.0.0.7', deploymentId: ID });
    knot.plant(`${NAME}. 30 CNAME evil.example.`);
    await dns.ensureRecord({ name: NAME, ipv4: '10.0.0.7', deploymentId: ID });
    expect(parseZoneRead((await knot.run(['zone-read', ZONE, `${NAME}.`])).output).get(NAME)?.extra).toBe(0);
  });

  it('removes a record, and removing a missing one is done', async () => {
    const { knot, dns } = setup();
    await dns.ensureRecord({ name: NAME, ipv4: '10.0.0.7', deploymentId: ID });
    await dns.removeRecord(NAME);
    expect(await dns.lookup(NAME)).toBeUndefined();
    await expect(dns.removeRecord(NAME)).resolves.toBeUndefined();
    expect(knot.inTransaction()).toBe(false);
  });

  it('refuses bad input before talking to the server', async () => {
    const { knot, dns } = setup();
    const err = await rejection(
      dns.ensureRecord({ name: 'a1.example.com', ipv4: '10.0.0.7', deploymentId: ID }),
    );
    expect([err.code, err.field]).toEqual(['invalid_input', 'name']);
    expect((await rejection(dns.removeRecord(`x y.${ZONE}`))).field).toBe('name');
    expect((await rejection(dns.lookup(ZONE))).field).toBe('name');
    expect(knot.calls).toEqual([]);
  });

  it('queues its own calls: concurrent ensures all land, one transaction at a time', async () => {
    const { dns } = setup();
    await Promise.all(
      [1, 2, 3, 4, 5].map((i) =>
        dns.ensureRecord({ name: `n${i}.${ZONE}`, ipv4: `10.0.0.${i}`, deploymentId: ID }),
      ),
    );
    expect((await dns.list()).map((r) => r.name).sort()).toEqual([1, 2, 3, 4, 5].map((i) => `n${i}.${ZONE}`));
  });

  it('groups what queued while a transaction was open into the next one (a few knotc runs, not five per record)', async () => {
    const { knot, dns } = setup();
    await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        dns.ensureRecord({ name: `g${i}.${ZONE}`, ipv4: `10.0.1.${i + 1}`, deploymentId: ID }),
      ),
    );
    const begins = knot.calls.filter((c) => c[0] === 'zone-begin').length;
    expect(begins).toBe(2); // the first alone (nothing was queued yet), the other nineteen together
    // knotc processes: per group one read, one begin, one stdin batch, one commit.
    const runs = knot.calls.filter((c) =>
      ['zone-read', 'zone-begin', 'zone-commit', '<stdin>'].includes(c[0] ?? ''),
    );
    expect(runs).toHaveLength(8);
    expect((await dns.list()).length).toBe(20);
    // Ensures and a removal queued together land in one group.
    knot.calls.length = 0;
    const results = await Promise.allSettled([
      dns.ensureRecord({ name: `h1.${ZONE}`, ipv4: '10.0.2.1', deploymentId: ID }),
      dns.ensureRecord({ name: `h2.${ZONE}`, ipv4: '10.0.2.2', deploymentId: ID }),
      dns.removeRecord(`g0.${ZONE}`),
    ]);
    expect(results.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled']);
    expect(await dns.lookup(`g0.${ZONE}`)).toBeUndefined();
    expect(await dns.lookup(`h2.${ZONE}`)).toEqual({ ipv4: '10.0.2.2' });
  });

  it("waits for another process's transaction, then aborts it as a crash leftover", async () => {
    const { knot, dns } = setup(200);
    knot.openForeignTransaction();
    const started = Date.now();
    await dns.ensureRecord({ name: NAME, ipv4: '10.0.0.7', deploymentId: ID });
    expect(Date.now() - started).toBeGreaterThanOrEqual(200);
    expect(await dns.lookup(NAME)).toEqual({ ipv4: '10.0.0.7' });
  });

  it.each([
    [
      'a set refused by the parser',
      'error: (no such node in zone found) [z] x\nOK\nerror: (parser failed) [z] x\n',
    ],
    ['an answer missing (knotc stopped early)', 'error: (no such node in zone found) [z] x\nOK\n'],
    [
      'a second "no such node"',
      'error: (no such node in zone found) [z] x\nerror: (no such node in zone found) [z] y\nOK\n',
    ],
  ])('aborts its transaction on %s and commits nothing', async (_, answer) => {
    const { knot, dns } = setup();
    const broken = makeLocalDns({
      zone: ZONE,
      knotc: (args, input) =>
        input === undefined ? knot.run(args) : Promise.resolve({ code: 0, output: answer }),
    });
    const err = await rejection(broken.ensureRecord({ name: NAME, ipv4: '10.0.0.7', deploymentId: ID }));
    expect(err.code).toBe('provider_rejected');
    expect(knot.calls.map((c) => c[0])).toEqual(['zone-read', 'zone-begin', 'zone-abort']);
    expect(knot.inTransaction()).toBe(false);
    expect(await dns.lookup(NAME)).toBeUndefined();
  });

  it('maps an unreachable control socket to a retryable error naming services:up', async () => {
    const { knot, dns } = setup();
    knot.setUnreachable(true);
    const err = await rejection(dns.ensureRecord({ name: NAME, ipv4: '10.0.0.7', deploymentId: ID }));
    expect(err.code).toBe('provider_unavailable');
    expect(err.message).toContain('services:up');
  });

  it('parses knotc zone-read output, ignoring the apex in list()', () => {
    const out = [
      `[${ZONE}.] ${ZONE}. 30 SOA localhost. hostmaster.localhost. 4 3600 600 86400 30`,
      `[${ZONE}.] ${ZONE}. 30 NS localhost.`,
      `[${ZONE}.] a1.${ZONE}. 30 A 10.1.2.3`,
      `[${ZONE}.] a1.${ZONE}. 30 AAAA ::ffff:1.2.3.4`,
      `[${ZONE}.] a1.${ZONE}. 30 TXT "deployment=${ID}"`,
      `[${ZONE}.] a2.${ZONE}. 30 A 0.0.0.0`,
    ].join('\n');
    const nodes = parseZoneRead(out);
    expect(nodes.get(`a1.${ZONE}`)).toEqual({
      name: `a1.${ZONE}`,
      ipv4: '10.1.2.3',
      ipv6: '::ffff:102:304',
      deploymentId: ID,
      extra: 0,
    });
    expect(nodes.get(`a2.${ZONE}`)).toEqual({ name: `a2.${ZONE}`, extra: 1 });
    expect(nodes.get(ZONE)?.extra).toBe(2);
  });
});
