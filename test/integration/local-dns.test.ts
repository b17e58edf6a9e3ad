import { execFileSync } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { Resolver } from 'node:dns/promises';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { loadConfig } from '../../orchestrator/config';
import {
  dnsServerFromConfig,
  makeDnsFromConfig,
  makeDnsQueryFromConfig,
} from '../../orchestrator/dns/dns-wiring';
import { makeKnotcRunner, makeLocalDns } from '../../orchestrator/dns/local-dns';
import { curlHealthCommand } from '../../orchestrator/dns/curl-command';

/**
 * The local Knot DNS server that services:up starts (scripts/dns-up.sh): records written through
 * the adapter are what the server answers over the wire, to a plain resolver pointed at it.
 */
const config = loadConfig(process.env);
const server = dnsServerFromConfig(config) ?? '';
// The adapter as makeDnsFromConfig builds it, with its knotc runs recorded: the zone is shared with
// everyone's tests, so "wrote nothing" is asserted on this adapter's own commands, never on the
// zone's serial (which another test's write moves at any time).
const knotcCalls: string[][] = [];
const realKnotc = makeKnotcRunner({ socket: path.resolve(config.CORTEX_STATE_DIR, 'dns', 'knot.sock') });
const dns = makeLocalDns({
  zone: config.DNS_ZONE,
  knotc: (args, input) => {
    knotcCalls.push([...args]);
    return realKnotc(args, input);
  },
});
/** The knotc actions this adapter ran since `from` (an index into knotcCalls). */
const actionsSince = (from: number): string[] => knotcCalls.slice(from).map((a) => a[0] ?? '<batch>');
const zone = config.DNS_ZONE;
const resolver = new Resolver({ timeout: 2_000, tries: 2 });
resolver.setServers([server]);
const label = (): string => `it-${randomBytes(5).toString('hex')}`;
const made: string[] = [];

/** A resolution through the server: addresses, or the c-ares code (ENOTFOUND is NXDOMAIN). */
const resolve4 = (name: string): Promise<string[] | string> =>
  resolver.resolve4(name).catch((err: { code?: string }) => err.code ?? 'error');
const resolve6 = (name: string): Promise<string[] | string> =>
  resolver.resolve6(name).catch((err: { code?: string }) => err.code ?? 'error');
const serial = async (): Promise<number> => (await resolver.resolveSoa(zone)).serial;

afterAll(async () => {
  for (const name of made) await dns.removeRecord(name);
});

describe('local DNS (Knot DNS on 127.0.0.1)', () => {
  it('is the zone authority at DNS_SERVER', async () => {
    expect(server).toBe(`127.0.0.1:${process.env.CORTEX_DNS_PORT ?? '53530'}`);
    const soa = await resolver.resolveSoa(zone);
    expect(soa.nsname).toBe('localhost');
  });

  it('creates, resolves, replaces and removes a record, idempotently', async () => {
    const name = `${label()}.${zone}`;
    made.push(name);
    const id = randomUUID();
    expect(await resolve4(name)).toBe('ENOTFOUND');

    await dns.ensureRecord({ name, ipv4: '10.77.0.5', ipv6: '2001:db8:77::5', deploymentId: id });
    expect(await resolve4(name)).toEqual(['10.77.0.5']);
    expect(await resolve6(name)).toEqual(['2001:db8:77::5']);
    expect(await dns.lookup(name)).toEqual({ ipv4: '10.77.0.5', ipv6: '2001:db8:77::5' });
    expect((await dns.list()).filter((r) => r.name === name)).toEqual([
      { name, ipv4: '10.77.0.5', ipv6: '2001:db8:77::5', deploymentId: id },
    ]);

    // The same data again changes nothing: a read, and no transaction opened.
    const before = await serial();
    const mark = knotcCalls.length;
    await dns.ensureRecord({ name, ipv4: '10.77.0.5', ipv6: '2001:db8:77::5', deploymentId: id });
    expect(actionsSince(mark)).toEqual(['zone-read']);

    // Another address replaces the record; an AAAA no longer given goes.
    await dns.ensureRecord({ name, ipv4: '10.77.0.6', deploymentId: id });
    expect(await resolve4(name)).toEqual(['10.77.0.6']);
    expect(await resolve6(name)).toBe('ENODATA');
    expect(await serial()).toBeGreaterThan(before);

    await dns.removeRecord(name);
    expect(await resolve4(name)).toBe('ENOTFOUND'); // NXDOMAIN
    expect(await dns.lookup(name)).toBeUndefined();
    await expect(dns.removeRecord(name)).resolves.toBeUndefined();
  });

  it('two processes writing at once both land (Knot allows one transaction per zone)', async () => {
    const names = [0, 1, 2, 3].map(() => `${label()}.${zone}`);
    made.push(...names);
    const other = makeDnsFromConfig(config); // its own queue, like another worker process
    await Promise.all(
      names.map((name, i) =>
        (i % 2 ? other : dns).ensureRecord({ name, ipv4: `10.77.1.${i + 1}`, deploymentId: randomUUID() }),
      ),
    );
    expect(await Promise.all(names.map(resolve4))).toEqual(names.map((_, i) => [`10.77.1.${i + 1}`]));
  });

  it('refuses a name outside the zone without touching the server', async () => {
    const mark = knotcCalls.length;
    await expect(
      dns.ensureRecord({ name: 'x.example.com', ipv4: '10.77.0.9', deploymentId: randomUUID() }),
    ).rejects.toMatchObject({ code: 'invalid_input', field: 'name' });
    expect(actionsSince(mark)).toEqual([]);
    // the control: a name inside the zone does reach the server
    const name = `${label()}.${zone}`;
    made.push(name);
    await dns.ensureRecord({ name, ipv4: '10.77.0.9', deploymentId: randomUUID() });
    expect(actionsSince(mark)).toEqual(expect.arrayContaining(['zone-begin', 'zone-commit']));
  });

  it('the demo curl command carries the address the server answers now', async () => {
    const name = `${label()}.${zone}`;
    made.push(name);
    await dns.ensureRecord({ name, ipv4: '10.77.2.1', deploymentId: randomUUID() });
    const query = makeDnsQueryFromConfig(config);
    if (!query) throw new Error('local mode has a DNS query');
    const cmd = await curlHealthCommand({ zone, name, caFile: '/tmp/ca.pem', query });
    expect(cmd.argv).toContain(`${name}:443:10.77.2.1`);
  });

  it('listens on 127.0.0.1 only (ss), TCP and UDP', () => {
    const pid = readFileSync(path.resolve(config.CORTEX_STATE_DIR, 'dns', 'knot.pid'), 'utf8').trim();
    const sockets = execFileSync('ss', ['-Hlntup'], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l.includes(`pid=${pid},`))
      .map((l) => {
        const [proto, , , , local] = l.trim().split(/\s+/);
        return `${proto} ${local}`;
      });
    const port = server.split(':')[1];
    expect(sockets.sort()).toEqual([`tcp 127.0.0.1:${port}`, `udp 127.0.0.1:${port}`]);
  });
});
