import { lookup as dnsLookup, type LookupAddress } from 'node:dns';
import { BlockList, isIP } from 'node:net';

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
  ['::', 127],
  ['::ffff:0:0', 96],
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

/**
 * A `lookup` for http.request that resolves the name, refuses it when ANY of its addresses is not
 * allowed (a name that points at a private address is refused, not worked around), and hands
 * back the checked address.
 */
export const guardedLookup =
  (allowLoopback: boolean) =>
  (hostname: string, options: { all?: boolean }, callback: LookupCallback): void => {
    dnsLookup(hostname, { all: true }, (err, addresses) => {
      if (err) return callback(err, '');
      const bad = addresses.find((a) => !addressAllowed(a.address, allowLoopback));
      const first = addresses[0];
      if (bad || !first) {
        const e: NodeJS.ErrnoException = new Error(
          'webhook host resolves to an address webhooks may not reach',
        );
        e.code = 'EWEBHOOKADDRESS';
        return callback(e, '');
      }
      if (options.all) return callback(null, addresses);
      return callback(null, first.address, first.family);
    });
  };
