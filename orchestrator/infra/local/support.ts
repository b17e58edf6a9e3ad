import { access, readFile, writeFile } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join } from 'node:path';
import { OrchestratorError } from '../../errors';
import { parseCgroupMounts } from './cgroup';

/** What this machine offers, gathered once; the decision is a pure function of it (testable anywhere). */
export interface LocalFacts {
  readonly platform: string;
  readonly uid: number | undefined;
  readonly missingCommands: readonly string[];
  readonly overlayfs: boolean;
  readonly cgroupKinds: readonly string[];
}

export const REQUIRED_COMMANDS = [
  'systemd-nspawn',
  'ip',
  'mount',
  'umount',
  'flock',
  'stat',
  'sh',
  'rm',
] as const;

const PACKAGE_OF: Record<string, string> = {
  'systemd-nspawn': 'systemd-container',
  ip: 'iproute2',
  mount: 'mount',
  umount: 'mount',
  flock: 'util-linux',
};

export const localSupportProblems = (f: LocalFacts): string[] => {
  if (f.platform !== 'linux') return [`this is ${f.platform}, not Linux`];
  const problems: string[] = [];
  if (f.uid !== 0) problems.push(`running as uid ${String(f.uid)}, not root`);
  if (f.missingCommands.length > 0) {
    const pkgs = [...new Set(f.missingCommands.map((c) => PACKAGE_OF[c] ?? c))];
    problems.push(`missing ${f.missingCommands.join(', ')} (apt-get install ${pkgs.join(' ')})`);
  }
  if (!f.overlayfs) problems.push('the kernel has no overlay file system');
  if (!f.cgroupKinds.includes('systemd') && !f.cgroupKinds.includes('unified'))
    problems.push('no cgroup file system is mounted (name=systemd or cgroup2 under /sys/fs/cgroup)');
  return problems;
};

export const localUnsupportedError = (problems: readonly string[]): OrchestratorError =>
  new OrchestratorError(
    'local_unsupported',
    `local hosts cannot run here: ${problems.join('; ')}. They need Linux, root, systemd-nspawn ` +
      '(systemd-container), iproute2, overlayfs and cgroups; use HOST_PROVIDER=hcloud elsewhere.',
  );

// The system directories, not $PATH: these are system tools, and only composition roots read the environment.
const SYSTEM_BIN_DIRS = ['/usr/sbin', '/usr/bin', '/sbin', '/bin'];
const onPath = async (cmd: string): Promise<boolean> => {
  for (const dir of SYSTEM_BIN_DIRS) {
    try {
      await access(join(dir, cmd), constants.X_OK);
      return true;
    } catch {
      // next
    }
  }
  return false;
};

export const gatherLocalFacts = async (): Promise<LocalFacts> => {
  if (process.platform !== 'linux')
    return {
      platform: process.platform,
      uid: process.getuid?.(),
      missingCommands: [],
      overlayfs: false,
      cgroupKinds: [],
    };
  const missing: string[] = [];
  for (const c of REQUIRED_COMMANDS) if (!(await onPath(c))) missing.push(c);
  const filesystems = await readFile('/proc/filesystems', 'utf8').catch(() => '');
  const mounts = await readFile('/proc/mounts', 'utf8').catch(() => '');
  return {
    platform: process.platform,
    uid: process.getuid?.(),
    missingCommands: missing,
    overlayfs: /\toverlay$/m.test(filesystems),
    cgroupKinds: parseCgroupMounts(mounts).map((h) => h.kind),
  };
};

let checked: Promise<void> | undefined;
/** Throws `local_unsupported` naming every missing requirement; memoised (the machine does not change). */
export const assertLocalSupported = (): Promise<void> =>
  (checked ??= gatherLocalFacts().then((facts) => {
    const problems = localSupportProblems(facts);
    if (problems.length > 0) throw localUnsupportedError(problems);
  }));

/**
 * Kernel limits that many booted systemds exhaust. Each container's systemd, journald, networkd,
 * logind and dbus take inotify instances (about five per host), all charged to root: with the
 * default of 128, hosts beyond roughly the 25th fail at boot ("Failed to allocate manager object:
 * Too many open files"). Raised (never lowered) to what container hosts such as LXD recommend.
 */
export const HOST_SYSCTLS: readonly { readonly key: string; readonly min: number }[] = [
  { key: 'fs/inotify/max_user_instances', min: 8192 },
  { key: 'fs/inotify/max_user_watches', min: 524288 },
];

let raised: Promise<string[]> | undefined;
/** Raise the limits above if lower; returns what was changed, e.g. `fs.inotify.max_user_instances 128 → 8192`. */
export const raiseHostLimits = (): Promise<string[]> =>
  (raised ??= (async () => {
    const changed: string[] = [];
    for (const { key, min } of HOST_SYSCTLS) {
      const file = `/proc/sys/${key}`;
      const current = Number((await readFile(file, 'utf8')).trim());
      if (current >= min) continue;
      await writeFile(file, `${min}\n`);
      changed.push(`${key.replace(/\//g, '.')} ${current} → ${min}`);
    }
    return changed;
  })());
