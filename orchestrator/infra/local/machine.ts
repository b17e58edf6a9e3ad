import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { access, chmod, mkdir, open, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { OrchestratorError } from '../../errors';
import type { Secret } from '../../secret';
import { run } from './exec';
import { procStartTime } from './proc';

/** The pieces of one local host on this machine: its overlay, its NoCloud seed, its systemd-nspawn. */

export const mountedPaths = async (): Promise<string[]> =>
  (await readFile('/proc/mounts', 'utf8'))
    .split('\n')
    .map((l) => l.split(' ')[1])
    .filter((m): m is string => !!m)
    .map((m) => m.replace(/\\040/g, ' ').replace(/\\011/g, '\t').replace(/\\134/g, '\\'));

export const isMounted = async (dir: string): Promise<boolean> => (await mountedPaths()).includes(dir);

/** The host's root: the image read-only below, the host's own changes in `upper` (0.02 s to mount). */
export const mountOverlay = async (image: string, hostDir: string): Promise<string> => {
  const merged = join(hostDir, 'merged');
  if (await isMounted(merged)) return merged;
  // upper's mode becomes the mode of the host's "/": 0755, or unprivileged users inside cannot
  // reach anything. hostDir itself stays 0700 (the seed below holds the host's private key).
  await mkdir(join(hostDir, 'upper'), { recursive: true, mode: 0o755 });
  await mkdir(join(hostDir, 'work'), { recursive: true, mode: 0o700 });
  await mkdir(merged, { recursive: true, mode: 0o755 });
  await chmod(join(hostDir, 'upper'), 0o755);
  await run('mount', [
    '-t',
    'overlay',
    'overlay',
    '-o',
    `lowerdir=${image},upperdir=${join(hostDir, 'upper')},workdir=${join(hostDir, 'work')}`,
    merged,
  ]);
  return merged;
};

export interface SeedSpec {
  readonly userData: Secret;
  readonly instanceId: string;
  readonly hostname: string;
  readonly ipv4: string;
  readonly prefixLength: number;
}

export const SEED_DIR = 'var/lib/cloud/seed/nocloud';

/**
 * cloud-init's NoCloud seed: the user data exactly as given (the same cloud-config a Hetzner server
 * gets), meta-data naming the instance, and a network-config (v2) giving host0 its address. Root-only:
 * the user data carries the host's private SSH key.
 */
export const writeSeed = async (merged: string, seed: SeedSpec): Promise<void> => {
  const dir = join(merged, SEED_DIR);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const files: [string, string][] = [
    ['meta-data', stringify({ 'instance-id': seed.instanceId, 'local-hostname': seed.hostname })],
    [
      'network-config',
      stringify({ version: 2, ethernets: { host0: { addresses: [`${seed.ipv4}/${seed.prefixLength}`] } } }),
    ],
    // Written last: its presence marks a complete seed (see seedComplete).
    ['user-data', seed.userData.reveal()],
  ];
  for (const [name, text] of files) await writeFile(join(dir, name), text, { mode: 0o600 });
};

export const seedComplete = async (merged: string): Promise<boolean> => {
  try {
    await access(join(merged, SEED_DIR, 'user-data'));
    return true;
  } catch {
    return false;
  }
};

/** A stable machine id per deployment (systemd reads it from nspawn's --uuid): logs survive restarts. */
export const machineUuid = (deploymentId: string): string => {
  const h = createHash('sha256').update(`cortex-machine-id:${deploymentId}`).digest('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-4${h.slice(13, 16)}-a${h.slice(17, 20)}-${h.slice(20, 32)}`;
};

/**
 * The launcher moves itself into the host's cgroups, then execs systemd-nspawn (same pid), so nspawn
 * and everything it starts are accounted to this host alone. Arguments: cgroup dirs, `--`, argv.
 */
const LAUNCH_SCRIPT = `
while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 97; shift; done
shift
exec "$@"`;

export const nspawnArgs = (o: { merged: string; machine: string; uuid: string }): string[] => [
  'systemd-nspawn',
  `--directory=${o.merged}`,
  '--boot',
  '--network-veth',
  `--machine=${o.machine}`,
  // No host systemd/machined here: registering or creating a scope fails ("Failed to open system bus").
  '--register=no',
  '--keep-unit',
  `--uuid=${o.uuid}`,
  '--link-journal=no',
  '--console=read-only',
  // As on a cloud VM, the host's systemd can enforce IPAddressDeny= (the agent unit denies the
  // metadata address with it): nspawn's default seccomp filter refuses bpf(), so systemd inside
  // would find "BPF firewalling not supported" and ignore the option silently.
  '--system-call-filter=bpf',
];

export const launchNspawn = async (o: {
  merged: string;
  machine: string;
  uuid: string;
  cgroupDirs: readonly string[];
  consoleLog: string;
}): Promise<{ pid: number; startTime: string }> => {
  const log = await open(o.consoleLog, 'a', 0o600);
  try {
    // detached: setsid(2) in the child, so the host outlives this process and its terminal;
    // stdin is /dev/null, output goes to the console log.
    const child = spawn(
      'sh',
      ['-c', LAUNCH_SCRIPT, 'cortex-launch', ...o.cgroupDirs, '--', ...nspawnArgs(o)],
      {
        detached: true,
        stdio: ['ignore', log.fd, log.fd],
      },
    );
    const pid = child.pid;
    if (pid === undefined)
      throw new OrchestratorError('internal', `could not start systemd-nspawn for ${o.machine}`);
    child.unref();
    const startTime = await procStartTime(pid);
    if (startTime === undefined)
      throw new OrchestratorError(
        'provider_unavailable',
        `systemd-nspawn for ${o.machine} exited at once: see ${o.consoleLog}`,
      );
    return { pid, startTime };
  } finally {
    await log.close();
  }
};

export const consoleTail = async (file: string, chars = 1500): Promise<string> => {
  try {
    // Console output carries terminal colour codes: strip them for a readable error.
    return (await readFile(file, 'utf8')).slice(-chars).replace(/\x1b\[[0-9;]*m/g, '');
  } catch {
    return '(no console output)';
  }
};
