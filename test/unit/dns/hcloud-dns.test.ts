import type { DnsQuery } from '../../../orchestrator/dns/dns-query';
import { makeHcloudDns } from '../../../orchestrator/dns/hcloud-dns';
import { rejection } from '../../support/rejection';

const ZONE = 'agents.example.com';
const NAME = `a1.${ZONE}`;
const ID = '7f0c2a8e-1b2c-4d3e-8f90-0123456789ab';
const serving = (ipv4: string[], ipv6: string[] = []): DnsQuery & { asked: string[] } => {
  const asked: string[] = [];
  const q = (name: string) => {
    asked.push(name);
    return Promise.resolve(name === NAME ? { ipv4, ipv6 } : { ipv4: [], ipv6: [] });
  };
  return Object.assign(q, { asked });
};

describe('hcloud DNS adapter (verifies the stack-made ZoneRrsets)', () => {
  it('accepts exactly the expected addresses, IPv6 compared canonically', async () => {
    const dns = makeHcloudDns({ zone: ZONE, query: serving(['203.0.113.5'], ['2001:0db8::0005']) });
    await expect(
      dns.ensureRecord({ name: NAME, ipv4: '203.0.113.5', ipv6: '2001:db8::5', deploymentId: ID }),
    ).resolves.toBeUndefined();
    expect(await dns.lookup(NAME)).toEqual({ ipv4: '203.0.113.5', ipv6: '2001:db8::5' });
  });

  it('fails retryably while the record is not served, and on other addresses', async () => {
    const missing = await rejection(
      makeHcloudDns({ zone: ZONE, query: serving([]) }).ensureRecord({
        name: NAME,
        ipv4: '203.0.113.5',
        deploymentId: ID,
      }),
    );
    expect(missing.code).toBe('provider_unavailable');
    const other = await rejection(
      makeHcloudDns({ zone: ZONE, query: serving(['203.0.113.6']) }).ensureRecord({
        name: NAME,
        ipv4: '203.0.113.5',
        deploymentId: ID,
      }),
    );
    expect(other.code).toBe('conflict');
    const extra = await rejection(
      makeHcloudDns({ zone: ZONE, query: serving(['203.0.113.5', '203.0.113.6']) }).ensureRecord({
        name: NAME,
        ipv4: '203.0.113.5',
        deploymentId: ID,
      }),
    );
    expect(extra.code).toBe('conflict');
    const v6 = await rejection(
      makeHcloudDns({ zone: ZONE, query: serving(['203.0.113.5'], ['2001:db8::9']) }).ensureRecord({
        name: NAME,
        ipv4: '203.0.113.5',
        deploymentId: ID,
      }),
    );
    expect(v6.code).toBe('conflict');
  });

  it('validates before asking, removes nothing (the stack owns the record) and lists nothing', async () => {
    const q = serving(['203.0.113.5']);
    const dns = makeHcloudDns({ zone: ZONE, query: q });
    expect(
      (await rejection(dns.ensureRecord({ name: 'a1.other.com', ipv4: '203.0.113.5', deploymentId: ID })))
        .field,
    ).toBe('name');
    expect((await rejection(dns.removeRecord('x;y.agents.example.com'))).field).toBe('name');
    await expect(dns.removeRecord(NAME)).resolves.toBeUndefined();
    expect(await dns.list()).toEqual([]);
    expect(q.asked).toEqual([]);
  });
});
