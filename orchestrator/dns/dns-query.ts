import { Resolver } from 'node:dns/promises';
import { OrchestratorError } from '../errors';

/** The addresses a DNS server answers for a name; empty lists when it has none (NXDOMAIN, NODATA). */
export type DnsQuery = (name: string) => Promise<{ ipv4: string[]; ipv6: string[] }>;

/** Codes c-ares gives for "the server answered: no such name / no such type". */
const NO_ANSWER = new Set(['ENOTFOUND', 'ENODATA']);

/**
 * Ask exactly these servers (`127.0.0.1:53530`, `[2001:db8::53]:53`), never the system resolver
 * or a cache: what the step checks is what the zone serves now.
 */
export const makeDnsQuery = (servers: readonly string[], opts: { timeoutMs?: number } = {}): DnsQuery => {
  const resolver = new Resolver({ timeout: opts.timeoutMs ?? 2_000, tries: 2 });
  resolver.setServers([...servers]);
  const ask = async (fn: () => Promise<string[]>): Promise<string[]> => {
    try {
      return await fn();
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (typeof code === 'string' && NO_ANSWER.has(code)) return [];
      throw new OrchestratorError('provider_unavailable', `DNS query failed (${String(code)})`, {
        cause: err,
      });
    }
  };
  return async (name) => {
    const [ipv4, ipv6] = await Promise.all([
      ask(() => resolver.resolve4(name)),
      ask(() => resolver.resolve6(name)),
    ]);
    return { ipv4, ipv6 };
  };
};
