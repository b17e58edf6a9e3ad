import { createHash } from 'node:crypto';
import { mkdir, readFile, readdir, rename, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { errno } from './exec';

/**
 * Where local hosts keep their state, and the one record per host that lets any process describe,
 * restart or destroy it:
 *
 *   <state>/hosts/<machine>/host.json      the record (no secret: user data lives only in the seed)
 *   <state>/hosts/<machine>/{upper,work}   the overlay's writable layer
 *   <state>/hosts/<machine>/merged         the host's root file system (an overlay mount)
 *   <state>/hosts/<machine>/console.log    systemd-nspawn's output
 *   <state>/net/<slot> -> <machine>        address allocations (see net.ts)
 *   <state>/locks/<machine>.lock           per-host locks while an operation runs
 *   <state>/image/<hash>/rootfs            base images (see image.ts)
 */
export interface LocalPaths {
  readonly state: string;
  readonly hosts: string;
  readonly net: string;
  readonly locks: string;
  readonly image: string;
  /** Short id of this state directory: names its cgroups so two checkouts never touch each other's. */
  readonly stateId: string;
}

export const localPaths = (stateDir: string): LocalPaths => {
  const state = resolve(stateDir);
  return {
    state,
    hosts: join(state, 'hosts'),
    net: join(state, 'net'),
    locks: join(state, 'locks'),
    image: join(state, 'image'),
    stateId: createHash('sha256').update(state).digest('hex').slice(0, 8),
  };
};

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

/**
 * The machine name of a deployment's host: `ctx` + 9 base32 characters of SHA-256(deployment id)
 * (45 bits). Twelve characters, so the host side of the veth, `ve-<machine>`, fits Linux's 15-character
 * interface names without the truncation that could make two hosts' links collide. A valid hostname.
 */
export const machineName = (deploymentId: string): string => {
  const digest = createHash('sha256').update(deploymentId).digest();
  let bits = 0n;
  for (const byte of digest.subarray(0, 6)) bits = (bits << 8n) | BigInt(byte);
  let name = '';
  for (let i = 0; i < 9; i++) name += BASE32[Number((bits >> BigInt(43 - 5 * i)) & 31n)];
  return `ctx${name}`;
};

export const MACHINE_NAME_RE = /^ctx[a-z2-7]{9}$/;

export interface LocalHostRecord {
  readonly version: 1;
  readonly deploymentId: string;
  readonly orgId: string;
  readonly subdomain: string;
  readonly machine: string;
  readonly slot: number;
  /** The host's address (container side of the veth). */
  readonly ipv4: string;
  /** This machine's address on the host's veth. */
  readonly gateway: string;
  readonly prefixLength: number;
  readonly hostPublicKey: string;
  /** Base image root file system: the overlay's lower directory. */
  readonly image: string;
  readonly createdAt: string;
  /** The running systemd-nspawn, identified by pid and start time (pids are reused). */
  readonly pid?: number;
  readonly pidStartTime?: string;
}

export const hostDir = (paths: LocalPaths, machine: string): string => join(paths.hosts, machine);
export const mergedDir = (paths: LocalPaths, machine: string): string => join(paths.hosts, machine, 'merged');
const recordFile = (paths: LocalPaths, machine: string): string => join(paths.hosts, machine, 'host.json');

export const readHostRecord = async (
  paths: LocalPaths,
  machine: string,
): Promise<LocalHostRecord | undefined> => {
  try {
    return JSON.parse(await readFile(recordFile(paths, machine), 'utf8')) as LocalHostRecord;
  } catch (err) {
    if (errno(err) === 'ENOENT') return undefined;
    throw err;
  }
};

/** Written to a temp file and renamed: a reader never sees half a record. */
export const writeHostRecord = async (paths: LocalPaths, record: LocalHostRecord): Promise<void> => {
  const dir = hostDir(paths, record.machine);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const tmp = join(dir, `.host.json.${process.pid}.tmp`);
  await writeFile(tmp, `${JSON.stringify(record, null, 2)}\n`, { mode: 0o600 });
  await rename(tmp, recordFile(paths, record.machine));
};

/** Machine names with a directory under hosts/ (with or without a record). */
export const listHostDirs = async (paths: LocalPaths): Promise<string[]> => {
  try {
    return (await readdir(paths.hosts)).filter((n) => MACHINE_NAME_RE.test(n)).sort();
  } catch (err) {
    if (errno(err) === 'ENOENT') return [];
    throw err;
  }
};

export const listHostRecords = async (paths: LocalPaths): Promise<LocalHostRecord[]> => {
  const records = await Promise.all((await listHostDirs(paths)).map((m) => readHostRecord(paths, m)));
  return records.filter((r): r is LocalHostRecord => r !== undefined);
};
