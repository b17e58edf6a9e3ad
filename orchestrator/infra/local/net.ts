import { access, mkdir, readFile, readdir, readlink, symlink, unlink } from 'node:fs/promises';
import { join } from 'node:path';
import { OrchestratorError, invalidInput } from '../../errors';
import { errno, run } from './exec';

/**
 * Addresses of local hosts: each host gets a /30 of a private range (default 10.213.0.0/16, 16384
 * hosts): `.1` on this machine's side of the veth, `.2` inside the host. A slot is taken by creating
 * the symlink `<state>/net/<slot> -> <machine>`: symlink(2) is atomic and fails if the name exists,
 * so any number of concurrent allocations, in any number of processes, never share a slot.
 */
export const DEFAULT_SUBNET = '10.213.0.0/16';
const SLOT_PREFIX = 30;

export interface Subnet {
  readonly base: number;
  readonly prefixLength: number;
  readonly slots: number;
}

const toInt = (ip: string): number | undefined => {
  const parts = ip.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) return undefined;
  return parts.reduce((acc, p) => acc * 256 + Number(p), 0);
};
const toIp = (n: number): string => [24, 16, 8, 0].map((s) => Math.floor(n / 2 ** s) % 256).join('.');

export const parseSubnet = (cidr: string): Subnet => {
  const [ip, len] = cidr.split('/');
  const base = ip === undefined ? undefined : toInt(ip);
  const prefixLength = Number(len);
  if (base === undefined || !Number.isInteger(prefixLength) || prefixLength < 8 || prefixLength > SLOT_PREFIX)
    throw invalidInput(
      'subnet',
      `must be an IPv4 CIDR between /8 and /${SLOT_PREFIX}, like ${DEFAULT_SUBNET}`,
    );
  if (base % 2 ** (32 - prefixLength) !== 0) throw invalidInput('subnet', `${cidr} has host bits set`);
  return { base, prefixLength, slots: 2 ** (SLOT_PREFIX - prefixLength) };
};

export const slotAddresses = (
  subnet: Subnet,
  slot: number,
): { ipv4: string; gateway: string; prefixLength: number } => {
  if (!Number.isInteger(slot) || slot < 0 || slot >= subnet.slots)
    throw new RangeError(`slot ${slot} out of range`);
  const network = subnet.base + slot * 4;
  return { gateway: toIp(network + 1), ipv4: toIp(network + 2), prefixLength: SLOT_PREFIX };
};

/** Slot already held by `machine` (a retried ensure after a crash), or the lowest free one. */
export const allocateSlot = async (netDir: string, machine: string, subnet: Subnet): Promise<number> => {
  await mkdir(netDir, { recursive: true, mode: 0o700 });
  const held = await slotsOf(netDir, machine);
  if (held[0] !== undefined) return held[0];
  const taken = new Set((await readdir(netDir)).map(Number));
  for (let slot = 0; slot < subnet.slots; slot++) {
    if (taken.has(slot)) continue;
    try {
      await symlink(machine, join(netDir, String(slot)));
      return slot;
    } catch (err) {
      if (errno(err) !== 'EEXIST') throw err;
    }
  }
  throw new OrchestratorError(
    'provider_unavailable',
    `no free address left in the local host range (${subnet.slots} hosts)`,
  );
};

export const slotsOf = async (netDir: string, machine: string): Promise<number[]> => {
  const owners = await slotOwners(netDir);
  return [...owners].filter(([, m]) => m === machine).map(([s]) => s);
};

export const slotOwners = async (netDir: string): Promise<Map<number, string>> => {
  let names: string[];
  try {
    names = await readdir(netDir);
  } catch (err) {
    if (errno(err) === 'ENOENT') return new Map();
    throw err;
  }
  const owners = new Map<number, string>();
  await Promise.all(
    names
      .filter((n) => /^\d+$/.test(n))
      .map(async (n) => {
        try {
          owners.set(Number(n), await readlink(join(netDir, n)));
        } catch (err) {
          if (errno(err) !== 'ENOENT') throw err;
        }
      }),
  );
  return owners;
};

export const releaseSlots = async (netDir: string, machine: string): Promise<void> => {
  for (const slot of await slotsOf(netDir, machine)) {
    try {
      await unlink(join(netDir, String(slot)));
    } catch (err) {
      if (errno(err) !== 'ENOENT') throw err;
    }
  }
};

/** systemd-nspawn names the host side `ve-<machine>`, cut to the kernel's 15 characters. */
export const vethName = (machine: string): string => `ve-${machine}`.slice(0, 15);

export const linkExists = async (name: string): Promise<boolean> => {
  try {
    await access(`/sys/class/net/${name}`);
    return true;
  } catch {
    return false;
  }
};

export const listLinks = async (): Promise<string[]> => readdir('/sys/class/net');

/** Idempotent: `replace` keeps a second call from failing on an address that is already there. */
export const configureVeth = async (name: string, gateway: string, prefixLength: number): Promise<void> => {
  await run('ip', ['addr', 'replace', `${gateway}/${prefixLength}`, 'dev', name]);
  await run('ip', ['link', 'set', 'dev', name, 'up']);
};

export const deleteLink = async (name: string): Promise<void> => {
  const r = await run('ip', ['link', 'del', 'dev', name], { allowFailure: true });
  if (r.code !== 0 && (await linkExists(name)))
    throw new OrchestratorError('internal', `ip link del ${name}: ${r.stderr.trim()}`);
};

/**
 * Interfaces of this machine, other than `except`, holding an address in the /30 of `gateway`: a
 * second state directory using the same range, or anything else that would make the route ambiguous.
 */
export const addressUsers = async (
  gateway: string,
  prefixLength: number,
  except: string,
): Promise<string[]> => {
  const g = toInt(gateway);
  if (g === undefined) throw new RangeError(`bad address ${gateway}`);
  const network = `${toIp(g - (g % 2 ** (32 - prefixLength)))}/${prefixLength}`;
  const { stdout } = await run('ip', ['-o', '-4', 'addr', 'show', 'to', network]);
  return [
    ...new Set(
      stdout
        .split('\n')
        .map((l) => l.split(/\s+/)[1]?.replace(/@.*$/, ''))
        .filter((n): n is string => !!n && n !== except),
    ),
  ];
};

/**
 * Whether the network namespace of process `pid` has `ipv4` as a local address: read from its
 * routing table in /proc, so checking a booting host costs no process spawn.
 */
export const namespaceHasAddress = async (pid: number, ipv4: string): Promise<boolean> => {
  try {
    const trie = await readFile(`/proc/${pid}/net/fib_trie`, 'utf8');
    return new RegExp(`\\|-- ${ipv4.replace(/\./g, '\\.')}\\n\\s+/32 host LOCAL`).test(trie);
  } catch {
    return false;
  }
};
