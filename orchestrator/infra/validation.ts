import { z } from 'zod';
import { OrchestratorError } from '../errors';
import { parsePublicKey } from '../remote/host-keys';

/**
 * The validators the stack programs share (agent and platform stacks), so a rule is written once.
 * Identity fields are strict on purpose: whatever passes here ends up in a resource name, a label
 * or a DNS name, all readable in the Hetzner console, so a free-text value (or a secret pasted by
 * mistake) must be refused before any resource is declared.
 */

export const LOWERCASE_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
export const DNS_ZONE = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/;
/** The hcloud provider's `pollInterval`: a Go duration in milliseconds or seconds. */
export const POLL_INTERVAL = /^\d+(ms|s)$/;

/**
 * Hetzner Cloud's locations (GET /v1/locations): Falkenstein, Nuremberg, Helsinki, Ashburn VA,
 * Hillsboro OR, Singapore. A name outside the list is refused here, before any stack operation:
 * Hetzner would refuse it anyway, and only after a stack was created for it.
 */
export const HCLOUD_LOCATIONS = ['fsn1', 'nbg1', 'hel1', 'ash', 'hil', 'sin'] as const;
export const hcloudLocation = z.enum(HCLOUD_LOCATIONS, {
  error: `must be a Hetzner location (${HCLOUD_LOCATIONS.join(', ')})`,
});
/** A Hetzner server type name (cx23, cpx11, cax21, ccx13 …). */
export const hcloudServerType = z.string().regex(/^[a-z]+\d+$/, 'must be a Hetzner server type like cx23');

const ipv4Bits = (text: string): bigint | undefined => {
  const parts = text.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^(0|[1-9]\d{0,2})$/.test(p) && Number(p) <= 255))
    return undefined;
  return parts.reduce((acc, p) => (acc << 8n) | BigInt(p), 0n);
};

const ipv6Bits = (text: string): bigint | undefined => {
  if (!/^[0-9a-fA-F:]+$/.test(text)) return undefined;
  const halves = text.split('::');
  if (halves.length > 2) return undefined;
  const groups = (h: string): string[] => (h === '' ? [] : h.split(':'));
  const head = groups(halves[0] ?? '');
  const tail = halves.length === 2 ? groups(halves[1] ?? '') : [];
  const missing = 8 - head.length - tail.length;
  if (halves.length === 2 ? missing < 1 : missing !== 0) return undefined;
  const all = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...tail];
  if (!all.every((g) => /^[0-9a-fA-F]{1,4}$/.test(g))) return undefined;
  return all.reduce((acc, g) => (acc << 16n) | BigInt(`0x${g}`), 0n);
};

/**
 * Why a CIDR is not one Hetzner accepts, or `undefined` when it is: an address and a prefix length,
 * with no bit set past the prefix. `203.0.113.7/24` passes zod's `cidrv4` but Hetzner refuses it
 * (`invalid_input`) — after the stack exists — so it is refused here, with the canonical form named.
 */
export const cidrProblem = (cidr: string): string | undefined => {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(cidr);
  if (!m) return 'must be an address and a prefix length like 192.0.2.0/24';
  const [, address = '', lengthText = ''] = m;
  const v4 = ipv4Bits(address);
  const bits = v4 ?? ipv6Bits(address);
  if (bits === undefined) return 'must be an IPv4 or IPv6 CIDR';
  const width = v4 === undefined ? 128 : 32;
  const length = Number(lengthText);
  if (length > width || (lengthText.length > 1 && lengthText.startsWith('0')))
    return `must have a prefix length of at most ${width}`;
  const hostMask = (1n << BigInt(width - length)) - 1n;
  if ((bits & hostMask) !== 0n) return 'must be canonical (no address bits set past the prefix length)';
  return undefined;
};

/** A canonical IPv4 or IPv6 CIDR (see `cidrProblem`). */
export const canonicalCidr = z.string().superRefine((value, ctx) => {
  const problem = cidrProblem(value);
  if (problem) ctx.addIssue({ code: 'custom', message: problem });
});

/** A row id (organisations and deployments are uuid keys): names the server and labels it. */
export const uuidId = z.string().regex(LOWERCASE_UUID, 'must be a lowercase uuid');
export const dnsLabel = z.string().regex(DNS_LABEL, 'must be one DNS label');
export const dnsZone = z.string().regex(DNS_ZONE, 'must be a DNS zone name');
export const pollInterval = z.string().regex(POLL_INTERVAL, 'must be a duration like 5s').default('5s');

/**
 * An OpenSSH `ssh-ed25519` public key line, checked by the same parser the SSH client pins with
 * (`parsePublicKey`): the only key type the orchestrator pins or offers.
 */
export const ed25519PublicKey = z.string().superRefine((value, ctx) => {
  try {
    parsePublicKey(value, 'key');
  } catch (err) {
    const message = err instanceof OrchestratorError ? err.message.replace(/^key: /, '') : 'is invalid';
    ctx.addIssue({ code: 'custom', message });
  }
});
