import { promises as dnsPromises, type LookupAddress } from 'node:dns';
import { BlockList, isIP } from 'node:net';
import type { Config } from '../config';

/**
 * Where a webhook may be sent: the same list as the SQL check of registered URLs
 * (webhook_endpoints__private_address), applied again to whatever a name resolves to at delivery
 * time, because DNS can change after registration (rebinding). The connection goes to the very
 * address that was checked (the `lookup` below is handed to http.request), so no second
 * resolution can swap it.
 */
// two lists: Node matches IPv4 addresses against IPv4-mapped IPv6 rules (::ffff:0:0/96 would block them all)
const blocked4 = new BlockList();
const blocked6 = new BlockList();
for (const [net, bits] of [
  ['0.0.0.0', 8],
  ['10.0.0.0', 8],
  ['100.64.0.0', 10],
  ['127.0.0.0', 8],
  ['169.254.0.0', 16],
  ['172.16.0.0', 12],
  ['192.0.0.0', 24],
  ['192.0.2.0', 24],
  ['192.88.99.0', 24],
  ['192.168.0.0', 16],
  ['198.18.0.0', 15],
  ['198.51.100.0', 24],
  ['203.0.113.0', 24],
  ['224.0.0.0', 4],
  ['240.0.0.0', 4],
] as const)
  blocked4.addSubnet(net, bits, 'ipv4');
for (const [net, bits] of [
  ['::', 96], // ::, ::1 and the deprecated IPv4-compatible ::a.b.c.d (::7f00:1, ::a9fe:a9fe)
  ['::ffff:0:0', 96], // IPv4-mapped
  ['::ffff:0:0:0', 96], // IPv4-translated (RFC 2765)
  ['64:ff9b::', 96],
  ['64:ff9b:1::', 48],
  ['100::', 64],
  ['2001::', 23],
  ['2001:db8::', 32],
  ['2002::', 16],
  ['fc00::', 7],
  ['fe80::', 10],
  ['fec0::', 10],
  ['ff00::', 8],
] as const)
  blocked6.addSubnet(net, bits, 'ipv6');

const loopback = new BlockList();
loopback.addSubnet('127.0.0.0', 8, 'ipv4');
loopback.addAddress('::1', 'ipv6');

/** May a webhook connect to this address? Loopback only with allowLoopback (local mode). */
export const addressAllowed = (address: string, allowLoopback: boolean): boolean => {
  const family = isIP(address);
  if (family === 0) return false;
  const type = family === 4 ? 'ipv4' : 'ipv6';
  if (allowLoopback && loopback.check(address, type)) return true;
  return type === 'ipv4' ? !blocked4.check(address, 'ipv4') : !blocked6.check(address, 'ipv6');
};

type LookupCallback = (
  err: NodeJS.ErrnoException | null,
  address: string | LookupAddress[],
  family?: number,
) => void;

export interface LookupOptions {
  /** Ends the lookup (its DNS queries cancelled): the delivery's signal. */
  readonly signal: AbortSignal;
  /** The longest a lookup may take in all, whatever the signal does. */
  readonly timeoutMs: number;
  /** Name servers (`ip` or `ip:port`); the system's (/etc/resolv.conf) when absent. */
  readonly dnsServers?: readonly string[];
}

const lookupError = (code: string, message: string): NodeJS.ErrnoException =>
  Object.assign(new Error(message), { code });

/** c-ares codes that mean the name (or this family of it) has no address, not that DNS failed. */
const NO_ADDRESS = new Set(['ENODATA', 'ENOTFOUND']);

/**
 * The name's A and AAAA records through c-ares (dns.promises.Resolver): its queries run on the
 * event loop and are cancelled when the signal aborts or timeoutMs passes, unlike dns.lookup,
 * whose getaddrinfo holds one of libuv's few thread-pool threads until the system resolver gives
 * up, whatever the caller does (review R15 F1: a customer's silent name server stalled every
 * lookup in the process). Unlike getaddrinfo it does not read /etc/hosts and does not append
 * search domains: a webhook host is a public DNS name (the SQL check refuses `localhost` and
 * the like) or an IP literal, which needs no lookup. IPv4 addresses come first.
 */
export const resolveAddresses = async (hostname: string, o: LookupOptions): Promise<LookupAddress[]> => {
  const family = isIP(hostname);
  if (family !== 0) return [{ address: hostname, family }];
  const resolver = new dnsPromises.Resolver({ timeout: o.timeoutMs, tries: 1 });
  if (o.dnsServers) resolver.setServers([...o.dnsServers]);
  let timer: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const stop = new Promise<never>((_, reject) => {
    const end = (): void => {
      resolver.cancel();
      reject(lookupError('ETIMEDOUT', `webhook host lookup did not finish in time`));
    };
    if (o.signal.aborted) return end();
    onAbort = end;
    o.signal.addEventListener('abort', onAbort, { once: true });
    timer = setTimeout(end, o.timeoutMs);
  });
  stop.catch(() => undefined); // rejected after the answers came: nobody listens any more
  try {
    const [v4, v6] = await Promise.race([
      Promise.allSettled([resolver.resolve4(hostname), resolver.resolve6(hostname)]),
      stop,
    ]);
    const addresses = [
      ...(v4.status === 'fulfilled' ? v4.value.map((address) => ({ address, family: 4 })) : []),
      ...(v6.status === 'fulfilled' ? v6.value.map((address) => ({ address, family: 6 })) : []),
    ];
    const failed = [v4, v6].flatMap((r) =>
      r.status === 'rejected' ? [(r.reason as NodeJS.ErrnoException).code ?? 'EUNKNOWN'] : [],
    );
    // One family failing while the other answered is no risk: only the addresses returned (and
    // checked) are ever connected to. Both failing is a DNS failure, "no such name" or a timeout.
    if (addresses.length > 0) return addresses;
    const broken = failed.find((code) => !NO_ADDRESS.has(code));
    if (broken === 'ETIMEOUT' || broken === 'ECANCELLED')
      throw lookupError('ETIMEDOUT', 'webhook host lookup timed out');
    if (broken) throw lookupError('EAI_AGAIN', `webhook host lookup failed (${broken})`);
    throw lookupError('ENOTFOUND', 'webhook host has no address');
  } finally {
    clearTimeout(timer);
    if (onAbort) o.signal.removeEventListener('abort', onAbort);
  }
};

/**
 * A `lookup` for http.request that resolves the name (resolveAddresses), refuses it when ANY of
 * its addresses is not allowed (a name that points at a private address is refused, not worked
 * around), and hands back the checked addresses: the connection goes to one of them, with no
 * second resolution.
 */
export const guardedLookup =
  (allowLoopback: boolean, o: LookupOptions) =>
  (hostname: string, options: { all?: boolean }, callback: LookupCallback): void => {
    resolveAddresses(hostname, o).then(
      (addresses) => {
        const first = addresses[0];
        if (!first || addresses.some((a) => !addressAllowed(a.address, allowLoopback)))
          return callback(
            lookupError('EWEBHOOKADDRESS', 'webhook host resolves to an address webhooks may not reach'),
            '',
          );
        if (options.all) return callback(null, addresses);
        return callback(null, first.address, first.family);
      },
      (err: NodeJS.ErrnoException) => callback(err, ''),
    );
  };

/**
 * May webhooks go to loopback (http and https to 127.0.0.0/8 and [::1], any port)? Only in the
 * embedded local mode: local hosts AND the local Postgres adapter, the tests' and the demo's set-up.
 * HOST_PROVIDER defaults to `local`, so an API started against a real Supabase project without it
 * would otherwise let any organisation point a webhook at the orchestrator machine's own services
 * (review R23, info).
 */
export const webhookLoopbackAllowed = (config: Pick<Config, 'HOST_PROVIDER' | 'RPC_ADAPTER'>): boolean =>
  config.HOST_PROVIDER === 'local' && config.RPC_ADAPTER === 'postgres';
