import { mkdir, readFile, readdir, rmdir } from 'node:fs/promises';
import { join } from 'node:path';
import { errno, sleep } from './exec';

/**
 * Each local host runs in cgroups of its own: `<hierarchy>/cortex/<state id>/<machine>` in the
 * name=systemd hierarchy, the unified (cgroup2) one and the memory controller. Without a host
 * systemd, `systemd-nspawn --keep-unit` puts every container into `<its own cgroup>/payload`: two
 * containers launched from one process would share it and their systemds would manage each other's
 * processes. The memory cgroup also gives per-host memory figures.
 */
export type CgroupKind = 'systemd' | 'unified' | 'memory';

export interface CgroupHierarchy {
  readonly kind: CgroupKind;
  readonly mount: string;
}

/** Parse /proc/mounts for the hierarchies we use (hybrid v1, or pure v2 where `unified` is the root). */
export const parseCgroupMounts = (mounts: string): CgroupHierarchy[] => {
  const found: CgroupHierarchy[] = [];
  for (const line of mounts.split('\n')) {
    const [, mount, type, options = ''] = line.split(' ');
    if (!mount) continue;
    const opts = options.split(',');
    if (type === 'cgroup2') found.push({ kind: 'unified', mount });
    else if (type === 'cgroup' && opts.includes('name=systemd')) found.push({ kind: 'systemd', mount });
    else if (type === 'cgroup' && opts.includes('memory')) found.push({ kind: 'memory', mount });
  }
  return found;
};

let hierarchiesCache: Promise<CgroupHierarchy[]> | undefined;
export const cgroupHierarchies = (): Promise<CgroupHierarchy[]> =>
  (hierarchiesCache ??= readFile('/proc/mounts', 'utf8').then(parseCgroupMounts));

export const CGROUP_PARENT = 'cortex';

/**
 * A cgroup can vanish between listing and reading it (nspawn removes its `payload` and
 * `supervisor` children as it exits): reading a removed cgroup's files fails with ENODEV, not ENOENT.
 */
const gone = (err: unknown): boolean => errno(err) === 'ENOENT' || errno(err) === 'ENODEV';

/** The directories of one state directory's hosts (`…/cortex/<state id>`), one per hierarchy. */
export const stateCgroupDirs = async (stateId: string): Promise<string[]> =>
  (await cgroupHierarchies()).map((h) => join(h.mount, CGROUP_PARENT, stateId));

export const hostCgroupDirs = async (stateId: string, machine: string): Promise<string[]> =>
  (await stateCgroupDirs(stateId)).map((d) => join(d, machine));

export const memoryCgroupDir = async (stateId: string, machine: string): Promise<string | undefined> => {
  const memory = (await cgroupHierarchies()).find((h) => h.kind === 'memory');
  // Pure cgroup2: the unified hierarchy carries memory accounting itself.
  const h = memory ?? (await cgroupHierarchies()).find((x) => x.kind === 'unified');
  return h && join(h.mount, CGROUP_PARENT, stateId, machine);
};

export const createCgroups = async (dirs: readonly string[]): Promise<void> => {
  await Promise.all(dirs.map((d) => mkdir(d, { recursive: true })));
};

/** Every pid in the cgroup and its descendants. */
export const cgroupPids = async (dir: string): Promise<number[]> => {
  const pids: number[] = [];
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
      const procs = await readFile(join(d, 'cgroup.procs'), 'utf8');
      for (const line of procs.split('\n')) if (line.trim()) pids.push(Number(line));
    } catch (err) {
      if (gone(err)) return;
      throw err;
    }
    await Promise.all(entries.filter((e) => e.isDirectory()).map((e) => walk(join(d, e.name))));
  };
  await walk(dir);
  return [...new Set(pids)];
};

/** Directories of a cgroup tree, deepest first: the order rmdir(2) needs. */
const treeDeepestFirst = async (dir: string): Promise<string[]> => {
  const out: string[] = [];
  const walk = async (d: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch (err) {
      if (gone(err)) return;
      throw err;
    }
    for (const e of entries) if (e.isDirectory()) await walk(join(d, e.name));
    out.push(d);
  };
  await walk(dir);
  return out;
};

/**
 * Remove a cgroup tree whose processes are gone. A cgroup can stay busy for a moment after its last
 * process died (the kernel finishes the exit asynchronously), so EBUSY is retried briefly.
 */
export const removeCgroupTree = async (dir: string, timeoutMs = 5_000): Promise<void> => {
  const deadline = Date.now() + timeoutMs;
  for (const d of await treeDeepestFirst(dir)) {
    for (;;) {
      try {
        await rmdir(d);
        break;
      } catch (err) {
        const code = errno(err);
        if (code === 'ENOENT' || code === 'ENODEV') break;
        if (code !== 'EBUSY' || Date.now() > deadline) throw err;
        await sleep(50);
      }
    }
  }
};

export interface HostMemory {
  /** Everything charged to the host, page cache included (memory.usage_in_bytes / memory.current). */
  readonly usageBytes: number;
  /** Anonymous memory of its processes (total_rss / anon): what it would cost without cache. */
  readonly rssBytes: number;
}

export const readHostMemory = async (stateId: string, machine: string): Promise<HostMemory | undefined> => {
  const dir = await memoryCgroupDir(stateId, machine);
  if (!dir) return undefined;
  try {
    const stat = await readFile(join(dir, 'memory.stat'), 'utf8');
    const field = (name: string): number =>
      Number(new RegExp(`^${name} (\\d+)$`, 'm').exec(stat)?.[1] ?? NaN);
    const v1 = !Number.isNaN(field('total_rss'));
    const usage = await readFile(join(dir, v1 ? 'memory.usage_in_bytes' : 'memory.current'), 'utf8');
    return { usageBytes: Number(usage.trim()), rssBytes: v1 ? field('total_rss') : field('anon') };
  } catch (err) {
    if (gone(err)) return undefined;
    throw err;
  }
};
