import path from 'node:path';
import type { Config } from '../config';
import type { DnsProvider } from './dns-provider';
import { makeDnsQuery, type DnsQuery } from './dns-query';
import { makeHcloudDns } from './hcloud-dns';
import { makeKnotcRunner, makeLocalDns } from './local-dns';

/** The local Knot DNS server's address when DNS_SERVER is unset (services:up, CORTEX_DNS_PORT). */
export const LOCAL_DNS_SERVER = '127.0.0.1:53530';

/** Where the configured DNS answers come from: DNS_SERVER, else the local server in local mode. */
export const dnsServerFromConfig = (config: Config): string | undefined =>
  config.DNS_SERVER ?? (config.HOST_PROVIDER === 'local' ? LOCAL_DNS_SERVER : undefined);

/** A query against DNS_SERVER (or the local server in local mode); undefined on hcloud without DNS_SERVER. */
export const makeDnsQueryFromConfig = (config: Config): DnsQuery | undefined => {
  const server = dnsServerFromConfig(config);
  return server === undefined ? undefined : makeDnsQuery([server]);
};

/** The DNS provider for HOST_PROVIDER, for a composition root (worker, CLI, demo). */
export const makeDnsFromConfig = (config: Config): DnsProvider => {
  if (config.HOST_PROVIDER === 'local') {
    const socket = path.resolve(config.CORTEX_STATE_DIR, 'dns', 'knot.sock');
    return makeLocalDns({ zone: config.DNS_ZONE, knotc: makeKnotcRunner({ socket }) });
  }
  const query = makeDnsQueryFromConfig(config);
  return makeHcloudDns({ zone: config.DNS_ZONE, ...(query ? { query } : {}) });
};
