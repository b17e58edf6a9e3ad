import { Resolver } from 'node:dns/promises';
import { OrchestratorError } from '../errors';
import { parseRecordInput, parseRecordName, type DnsProvider, type DnsRecordInput } from './dns-provider';
import { makeDnsQuery, type DnsQuery } from './dns-query';

/**
 * The `hcloud` DNS adapter is a verifier, not a writer: on Hetzner the agent's A/AAAA records are
 * `ZoneRrset` resources of its Pulumi stack, created by the `host` step with the server (so one
 * `pulumi destroy` removes both) and never written here. `ensureRecord` asks the zone's
 * authoritative servers (its NS, or `DNS_SERVER` when set) and succeeds only when they answer
 * exactly the expected addresses; otherwise it fails with a retryable error (a fresh record can
 * take a moment to be served). `removeRecord` is a documented no-op (the stack's destroy removes
 * the record); `list` returns nothing (on hcloud the stacks are the inventory an orphan sweep walks).
 */
export const makeHcloudDns = (deps: { zone: string; query?: DnsQuery }): DnsProvider => {
  const zone = deps.zone.toLowerCase();
  let query = deps.query;
  const authoritative = async (): Promise<DnsQuery> => {
    if (query) return query;
    const system = new Resolver({ timeout: 3_000, tries: 2 });
    const ns = await system.resolveNs(zone);
    const addresses = (await Promise.all(ns.map((n) => system.resolve4(n).catch(() => [])))).flat();
    if (addresses.length === 0)
      throw new OrchestratorError('provider_unavailable', `no name server address found for ${zone}`);
    query = makeDnsQuery(addresses);
    return query;
  };

  return {
    name: 'hcloud',
    ensureRecord: async (input: DnsRecordInput) => {
      const r = parseRecordInput(zone, input);
      const got = await (await authoritative())(r.name);
      const want = { ipv4: [r.ipv4], ipv6: r.ipv6 ? [r.ipv6] : [] };
      if (got.ipv4.length === 0)
        throw new OrchestratorError(
          'provider_unavailable',
          `${r.name} is not served yet by the zone's name servers`,
        );
      const same = (a: string[], b: string[]): boolean =>
        a.length === b.length && a.every((x) => b.includes(x));
      if (!same(got.ipv4, want.ipv4) || !same(got.ipv6.map(canonical6), want.ipv6))
        throw new OrchestratorError('conflict', `${r.name} is served with other addresses than the host's`);
    },
    // Validated (a caller's bug shows here as on local), then nothing: the stack owns the record.
    removeRecord: (name: string) =>
      new Promise<void>((resolve) => {
        parseRecordName(zone, name);
        resolve();
      }),
    lookup: async (raw: string) => {
      const name = parseRecordName(zone, raw);
      const got = await (await authoritative())(name);
      const ipv4 = got.ipv4[0];
      const ipv6 = got.ipv6[0];
      if (ipv4 === undefined && ipv6 === undefined) return undefined;
      return { ...(ipv4 ? { ipv4 } : {}), ...(ipv6 ? { ipv6: canonical6(ipv6) } : {}) };
    },
    list: () => Promise.resolve([]),
  };
};

const canonical6 = (a: string): string => new URL(`http://[${a}]/`).hostname.slice(1, -1);
