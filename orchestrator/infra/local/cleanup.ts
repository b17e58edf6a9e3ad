import { readdir, rm, rmdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { OrchestratorError } from '../../errors';
import type { Logger } from '../../log';
import { cgroupPids, hostCgroupDirs, removeCgroupTree, stateCgroupDirs } from './cgroup';
import { errno, run } from './exec';
import { acquireFileLock } from './lock';
import { mountedPaths } from './machine';
import { deleteLink, linkExists, releaseSlots, slotOwners, vethName } from './net';
import { findNspawnProcesses, isProcessAlive, mapLimit, signalPids, waitFor } from './proc';
import {
  MACHINE_NAME_RE,
  hostDir,
  listHostDirs,
  readHostRecord,
  type LocalHostRecord,
  type LocalPaths,
} from './state';

/**
 * Taking a host apart, for `destroy` and for the sweep after crashed runs. Order matters: processes
 * first (a live container pins its mounts, veth and cgroups), then the veth (gone with the
 * container's network namespace, deleted if not), the overlay, the cgroups deepest first, the
 * address and the state directory. Every step tolerates "already gone", so a teardown that was
 * interrupted can simply run again.
 */
export const teardownHost = async (
  paths: LocalPaths,
  machine: string,
  opts: { graceMs: number; log?: Logger; nspawnPids?: readonly number[] },
): Promise<void> => {
  const dir = hostDir(paths, machine);
  const record = await readHostRecord(paths, machine);
  const cgroups = await hostCgroupDirs(paths.stateId, machine);
  // One scan of /proc (or the caller's, for many hosts at once); then only these pids are watched.
  // No new nspawn can appear for this host meanwhile: callers hold its lock.
  const nspawns = [
    ...new Set([...(opts.nspawnPids ?? (await nspawnPids(dir))), ...(await recordedPid(record))]),
  ];
  const liveNspawns = async (): Promise<number[]> =>
    (await Promise.all(nspawns.map(async (p) => ((await isProcessAlive(p, undefined)) ? [p] : [])))).flat();

  if (opts.graceMs > 0 && nspawns.length > 0) {
    // SIGTERM makes nspawn ask the container's systemd to power off (well under a second when idle).
    signalPids(nspawns, 'SIGTERM');
    await waitFor(async () => (await liveNspawns()).length === 0, opts.graceMs);
  }
  // Whatever is left, container processes included (they survive a SIGKILLed nspawn), is killed.
  const allGone = await waitFor(
    async () => {
      const pids = [...(await liveNspawns()), ...(await Promise.all(cgroups.map(cgroupPids))).flat()];
      signalPids(pids, 'SIGKILL');
      return pids.length === 0;
    },
    10_000,
    100,
  );
  if (!allGone) throw new OrchestratorError('internal', `processes of local host ${machine} survive SIGKILL`);

  const veth = vethName(machine);
  // The kernel removes the veth pair with the last reference to the container's netns, asynchronously.
  if (!(await waitFor(async () => !(await linkExists(veth)), 2_000))) await deleteLink(veth);

  await removeNspawnRuntimeFiles(join(dir, 'merged'), machine);
  for (const m of (await mountedPaths()).filter((p) => p === dir || p.startsWith(`${dir}/`)).reverse()) {
    const r = await run('umount', [m], { allowFailure: true });
    if (r.code !== 0 && (await mountedPaths()).includes(m))
      throw new OrchestratorError('internal', `cannot unmount ${m}: ${r.stderr.trim()}`);
  }
  for (const cg of cgroups) await removeCgroupTree(cg);
  await releaseSlots(paths.net, machine);
  // Never recurse into a mount: refuse rather than delete through a still-mounted overlay.
  if ((await mountedPaths()).some((p) => p.startsWith(`${dir}/`)))
    throw new OrchestratorError('internal', `${dir} still has mounts; not removing it`);
  await rm(dir, { recursive: true, force: true });
  opts.log?.debug({ machine }, 'local host torn down');
};

/**
 * What systemd-nspawn keeps under /run for a container and removes on a clean exit, but not when it
 * is killed (or when /run is not a tmpfs, as on this kind of machine): its image lock, named after
 * the root directory's device and inode, and its mount-propagation directory.
 */
const NSPAWN_RUN = '/run/systemd/nspawn';
const removeNspawnRuntimeFiles = async (merged: string, machine: string): Promise<void> => {
  try {
    const st = await stat(merged);
    await rm(join(NSPAWN_RUN, 'locks', `inode-${st.dev}:${st.ino}`), { force: true });
  } catch (err) {
    if (errno(err) !== 'ENOENT') throw err;
  }
  const propagate = join(NSPAWN_RUN, 'propagate', machine);
  if (!(await mountedPaths()).some((p) => p === propagate || p.startsWith(`${propagate}/`)))
    await rm(propagate, { recursive: true, force: true });
};

/** nspawn processes started on this host's directory (found by path: the record may be gone). */
const nspawnPids = async (dir: string): Promise<number[]> =>
  (await findNspawnProcesses(`${dir}/`)).map((p) => p.pid);

const recordedPid = async (record: LocalHostRecord | undefined): Promise<number[]> =>
  record?.pid !== undefined && (await isProcessAlive(record.pid, record.pidStartTime)) ? [record.pid] : [];

export interface CleanupReport {
  /** Machines whose hosts were torn down (with or without a record). */
  readonly machines: string[];
  readonly removedSlots: number;
  readonly removedLocks: number;
}

/**
 * Remove every leftover of local hosts under one state directory: hosts with records, half-created
 * host directories, nspawn processes running from our hosts' directories, processes and cgroups
 * under this state directory's cgroup parent, veths of those machines, mounts, stale address
 * slots and lock files. `keep` spares hosts that should live on (an orphan sweep keeps the hosts of
 * live deployments); without it everything goes.
 */
export const cleanupLocalHosts = async (
  paths: LocalPaths,
  opts: { keep?: (deploymentId: string) => boolean; graceMs?: number; log?: Logger } = {},
): Promise<CleanupReport> => {
  const keep = opts.keep ?? (() => false);
  const kept = new Set<string>();
  const machines = new Set<string>(await listHostDirs(paths));
  const nspawnsOf = new Map<string, number[]>();
  for (const p of await findNspawnProcesses(`${paths.hosts}/`)) {
    const m = p.directory.slice(paths.hosts.length + 1).split('/')[0];
    if (!m || !MACHINE_NAME_RE.test(m)) continue;
    machines.add(m);
    nspawnsOf.set(m, [...(nspawnsOf.get(m) ?? []), p.pid]);
  }
  for (const d of await stateCgroupDirs(paths.stateId)) for (const m of await subdirs(d)) machines.add(m);
  for (const m of (await slotOwners(paths.net)).values()) machines.add(m);
  // Names come from directory entries and symlinks: only well-formed machine names are acted on.
  for (const m of machines) if (!MACHINE_NAME_RE.test(m)) machines.delete(m);

  const doomed: string[] = [];
  for (const m of machines) {
    const record = await readHostRecord(paths, m);
    if (record && keep(record.deploymentId)) kept.add(m);
    else doomed.push(m);
  }
  // Teardowns in parallel (each waits mostly on its own container), bounded to spare file descriptors.
  await mapLimit(doomed, 16, async (m) => {
    const release = await acquireFileLock(join(paths.locks, `${m}.lock`), { timeoutMs: 60_000 });
    try {
      await teardownHost(paths, m, {
        graceMs: opts.graceMs ?? 0,
        log: opts.log,
        nspawnPids: nspawnsOf.get(m) ?? [],
      });
    } finally {
      await release();
    }
  });

  // Leftover slots whose machine has no host directory any more.
  let removedSlots = 0;
  const live = new Set(await listHostDirs(paths));
  for (const [, m] of await slotOwners(paths.net)) {
    if (!live.has(m)) {
      await releaseSlots(paths.net, m);
      removedSlots++;
    }
  }
  // This state dir's cgroup parents, once no host is left under them.
  for (const d of await stateCgroupDirs(paths.stateId)) {
    if ((await subdirs(d)).length > 0) continue;
    await removeCgroupTree(d);
    // The shared `cortex` parent goes too once no state dir uses it (rmdir refuses while it has children).
    await rmdir(dirname(d)).catch((err: unknown) => {
      if (!['ENOENT', 'EBUSY', 'ENOTEMPTY'].includes(errno(err) ?? '')) throw err;
    });
  }
  // Lock files of crashed processes (live holders unlink their own on release). Taking the lock
  // proves no one holds it; releasing unlinks it.
  let removedLocks = 0;
  for (const n of await subdirs(paths.locks, true)) {
    const m = n.replace(/\.lock$/, '');
    if (kept.has(m) || !n.endsWith('.lock')) continue;
    const release = await acquireFileLock(join(paths.locks, n), { timeoutMs: 5_000 }).catch(() => undefined);
    if (release) {
      await release();
      removedLocks++;
    }
  }
  for (const n of await subdirs(paths.hosts, true)) {
    // Crashed writers' temp files live inside host dirs (removed with them); anything else is not ours.
    if (!MACHINE_NAME_RE.test(n))
      opts.log?.warn({ path: join(paths.hosts, n) }, 'unknown entry in hosts dir left alone');
  }
  return { machines: doomed.sort(), removedSlots, removedLocks };
};

const subdirs = async (dir: string, files = false): Promise<string[]> => {
  try {
    return (await readdir(dir, { withFileTypes: true }))
      .filter((e) => files || e.isDirectory())
      .map((e) => e.name);
  } catch (err) {
    if (errno(err) === 'ENOENT') return [];
    throw err;
  }
};
