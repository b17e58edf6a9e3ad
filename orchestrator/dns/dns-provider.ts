import { isIPv4, isIPv6 } from 'node:net';
import { invalidInput } from '../errors';
import { DNS_LABEL, LOWERCASE_UUID } from '../infra/validation';

/** One agent's address records: `<label>.<zone>` → A (and AAAA). */
export interface DnsRecordInput {
  /** Fully qualified name, one label under the configured zone (`a1b2.agents.example.com`). */
  readonly name: string;
  readonly ipv4: string;
  readonly ipv6?: string;
  /** The deployment that owns the name (kept beside the record where the backend can). */
  readonly deploymentId: string;
}

export interface DnsRecord {
  readonly name: string;
  readonly ipv4?: string;
  readonly ipv6?: string;
  /** The owning deployment, where the backend records it (local: a TXT record). */
  readonly deploymentId?: string;
}

/**
 * The `dns` step's port: the subdomain records of agents, in the configured zone only.
 * Every method refuses a name outside the zone (or more than one label under it) and an address
 * that is not a unicast IPv4/IPv6 address, with `invalid_input` naming the field, before it
 * touches the backend.
 */
export interface DnsProvider {
  /** `local` (Knot DNS through its control socket) or `hcloud` (the stack's ZoneRrsets, verified). */
  readonly name: 'local' | 'hcloud';
  /**
   * Make `name` resolve to exactly `ipv4` (and `ipv6`, or no AAAA when absent). Idempotent: the same
   * data again changes nothing (not even the zone's serial); a different address replaces the record.
   */
  ensureRecord(record: DnsRecordInput): Promise<void>;
  /** Remove every address record of `name`. A record that is not there counts as removed. */
  removeRecord(name: string): Promise<void>;
  /** The addresses `name` has now, from the authoritative data; `undefined` when it has none. */
  lookup(name: string): Promise<{ ipv4?: string; ipv6?: string } | undefined>;
  /** Every agent record of the zone (for orphan sweeps); the zone's own apex records are left out. */
  list(): Promise<DnsRecord[]>;
}

/** A name the zone may hold: one DNS label under `zone`, lower-cased, without a trailing dot. */
export const parseRecordName = (zone: string, raw: unknown, field = 'name'): string => {
  if (typeof raw !== 'string' || raw.length === 0) throw invalidInput(field, 'must be a domain name');
  if (raw.length > 253) throw invalidInput(field, 'is too long for a domain name');
  const name = raw.toLowerCase().replace(/\.$/, '');
  const suffix = `.${zone.toLowerCase()}`;
  if (!name.endsWith(suffix))
    throw invalidInput(field, 'must be a name under the configured zone (DNS_ZONE)');
  const label = name.slice(0, -suffix.length);
  if (!DNS_LABEL.test(label))
    throw invalidInput(field, "must be one DNS label (a-z, 0-9, inner '-') directly under the zone");
  return name;
};

/** A unicast IPv4 address in dotted-quad form (no leading zeros, not 0.0.0.0, multicast or broadcast). */
export const parseIpv4 = (raw: unknown, field = 'ipv4'): string => {
  if (typeof raw !== 'string' || !isIPv4(raw)) throw invalidInput(field, 'must be an IPv4 address');
  const octets = raw.split('.').map(Number);
  const first = octets[0] ?? 0;
  if (raw.split('.').some((o) => o.length > 1 && o.startsWith('0')))
    throw invalidInput(field, 'must be an IPv4 address without leading zeros');
  if (first === 0 || first >= 224) throw invalidInput(field, 'must be a unicast IPv4 address');
  return raw;
};

/** A unicast IPv6 address, returned in its canonical compressed form (`2001:db8::1`). */
export const parseIpv6 = (raw: unknown, field = 'ipv6'): string => {
  // isIPv6 accepts a zone id (`fe80::1%eth0`), which no DNS record can carry.
  if (typeof raw !== 'string' || !isIPv6(raw) || raw.includes('%'))
    throw invalidInput(field, 'must be an IPv6 address');
  const canonical = new URL(`http://[${raw}]/`).hostname.slice(1, -1);
  if (canonical === '::' || canonical.startsWith('ff'))
    throw invalidInput(field, 'must be a unicast IPv6 address');
  return canonical;
};

/** Validate a whole record: every field checked, the first problem named. */
export const parseRecordInput = (zone: string, raw: DnsRecordInput): DnsRecordInput => {
  if (typeof raw !== 'object' || raw === null) throw invalidInput('record', 'must be an object');
  const name = parseRecordName(zone, raw.name);
  const ipv4 = parseIpv4(raw.ipv4);
  const ipv6 = raw.ipv6 === undefined ? undefined : parseIpv6(raw.ipv6);
  if (typeof raw.deploymentId !== 'string' || !LOWERCASE_UUID.test(raw.deploymentId))
    throw invalidInput('deploymentId', 'must be a lowercase uuid');
  return { name, ipv4, ...(ipv6 === undefined ? {} : { ipv6 }), deploymentId: raw.deploymentId };
};
