import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { OrchestratorError, invalidInput } from '../../errors';
import { isSecret } from '../../secret';
import type { Logger } from '../../log';
import { parsePublicKey } from '../../remote/host-keys';
import type { HostDescription, HostProvider, HostSpec, HostState } from '../host-provider';
import { cgroupPids, createCgroups, hostCgroupDirs, removeCgroupTree } from './cgroup';
import { teardownHost } from './cleanup';
import { sleep, throwIfAborted } from './exec';
import { findLocalImage } from './image';
import { makeKeyedQueue, withFileLock } from './lock';
import { consoleTail, launchNspawn, machineUuid, mountOverlay, seedComplete, writeSeed } from './machine';
import {
  DEFAULT_SUBNET,
  addressUsers,
  allocateSlot,
  configureVeth,
  deleteLink,
  linkExists,
  namespaceHasAddress,
  parseSubnet,
  slotAddresses,
  vethName,
} from './net';
import {
  childPids,
  findContainerLeader,
  findNspawnProcesses,
  isProcessAlive,
  procStartTime,
  signalPids,
  waitFor,
} from './proc';
import {
  hostDir,
  listHostRecords,
  localPaths,
  machineName,
  readHostRecord,
  writeHostRecord,
  type LocalHostRecord,
} from './state';
import { assertLocalSupported, raiseHostLimits } from './support';

export interface LocalHostProviderOptions {
  /** State directory (`CORTEX_STATE_DIR`): hosts, address allocations, locks, and the base image. */
  readonly stateDir: string;
  /** Root file system to clone. Default: the image of the current recipe under `stateDir` (`npm run image:build`). */
  readonly image?: string;
  /** Private IPv4 range carved into one /30 per host. Default 10.213.0.0/16. */
  readonly subnet?: string;
  /** How long `ensure` waits for a host to boot to a configured network. Default 120 s. */
  readonly bootTimeoutMs?: number;
  /** How long `destroy` lets a host power off before killing it. Default 3 s. */
  readonly stopGraceMs?: number;
  readonly log?: Logger;
}

const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

const validate = (spec: HostSpec): void => {
  if (!/^[^\x00-\x1f\x7f]{1,128}$/.test(spec.deploymentId))
    throw invalidInput('deploymentId', 'must be 1–128 printable characters');
  if (!DNS_LABEL.test(spec.subdomain)) throw invalidInput('subdomain', 'must be a DNS label (a-z, 0-9, -)');
  if (!isSecret(spec.userData))
    throw invalidInput('userData', 'must be a Secret (it carries the host private key)');
  if (spec.userData.reveal().trim() === '') throw invalidInput('userData', 'must not be empty');
  // The same check as the remote shell's pinning: one ssh-ed25519 key, a well-formed blob.
  parsePublicKey(spec.hostPublicKey, 'hostPublicKey');
};

/**
 * HostProvider `local`: each host is a systemd-nspawn container on this machine, booted with systemd
 * as PID 1 from an overlay clone of the base image, in cgroups of its own, on a veth with a /30 of
 * its own, configured by cloud-init from a NoCloud seed holding the deployment's user data.
 * `ensure` returns once the container runs and its address is configured (sshd follows within a
 * second or so: waiting for SSH with the pinned key is the remote shell's job). Everything a host has
 * is found again from `<state>/hosts/<machine>/host.json`, so any process can describe or destroy it.
 * `HostSpec.location` and `serverType` mean nothing here and are ignored.
 */
export const makeLocalHostProvider = (opts: LocalHostProviderOptions): HostProvider => {
  const paths = localPaths(opts.stateDir);
  const subnet = parseSubnet(opts.subnet ?? DEFAULT_SUBNET);
  const bootTimeoutMs = opts.bootTimeoutMs ?? 120_000;
  const stopGraceMs = opts.stopGraceMs ?? 3_000;
  const log = opts.log?.child({ provider: 'local' });
  const serial = makeKeyedQueue();
  const lockFile = (machine: string): string => join(paths.locks, `${machine}.lock`);

  let limits: Promise<void> | undefined;
  let imageCache: Promise<string> | undefined;
  const resolveImage = (): Promise<string> =>
    (imageCache ??= (async () => {
      if (opts.image) return opts.image;
      const img = await findLocalImage(paths.state);
      if (!img)
        throw new OrchestratorError(
          'local_unsupported',
          `no base image for the current recipe under ${paths.image}: run \`npm run image:build\``,
        );
      return img.rootfs;
    })()).catch((err: unknown) => {
      imageCache = undefined;
      throw err;
    });

  /** The running nspawn of a host: the recorded one, or one found by its directory (adopted after a crash). */
  const runningNspawn = async (
    rec: LocalHostRecord,
  ): Promise<{ pid: number; startTime?: string } | undefined> => {
    if (await isProcessAlive(rec.pid, rec.pidStartTime))
      return rec.pid === undefined ? undefined : { pid: rec.pid, startTime: rec.pidStartTime };
    const merged = join(hostDir(paths, rec.machine), 'merged');
    const found = (await findNspawnProcesses(merged)).find((p) => p.directory === merged);
    return found && { pid: found.pid, startTime: await procStartTime(found.pid) };
  };

  const leaderHasAddress = async (nspawnPid: number, ipv4: string): Promise<boolean> => {
    const leader = await findContainerLeader(await childPids(nspawnPid));
    return leader !== undefined && (await namespaceHasAddress(leader, ipv4));
  };

  const stateOf = async (rec: LocalHostRecord): Promise<HostState> => {
    const nspawn = await runningNspawn(rec);
    if (!nspawn) return 'stopped';
    return (await linkExists(vethName(rec.machine))) && (await leaderHasAddress(nspawn.pid, rec.ipv4))
      ? 'running'
      : 'starting';
  };

  const describeRecord = (rec: LocalHostRecord, state: HostState): HostDescription => ({
    deploymentId: rec.deploymentId,
    serverId: rec.machine,
    ipv4: rec.ipv4,
    hostPublicKey: rec.hostPublicKey,
    state,
  });

  /** Wait until the veth exists (then give it its address) and the container has configured host0. */
  const waitReady = async (
    rec: LocalHostRecord,
    pid: number,
    deadline: number,
    signal?: AbortSignal,
  ): Promise<void> => {
    const veth = vethName(rec.machine);
    const started = Date.now();
    let configured = false;
    for (;;) {
      throwIfAborted(signal);
      if (!(await isProcessAlive(pid, undefined))) {
        const tail = await consoleTail(join(hostDir(paths, rec.machine), 'console.log'));
        throw new OrchestratorError(
          'provider_unavailable',
          `local host ${rec.machine} stopped while booting:\n${tail}`,
        );
      }
      if (!configured && (await linkExists(veth))) {
        await configureVeth(veth, rec.gateway, rec.prefixLength);
        configured = true;
      }
      if (configured && (await leaderHasAddress(pid, rec.ipv4))) return;
      if (Date.now() > deadline)
        throw new OrchestratorError(
          'timeout',
          `local host ${rec.machine} did not configure its network within ${bootTimeoutMs} ms; console: ` +
            join(hostDir(paths, rec.machine), 'console.log'),
        );
      // 25 ms at first, backing off to 250 ms: a quick host is seen at once, and fifty booting
      // hosts do not spend the CPU they need on being watched.
      await sleep(Math.min(250, 25 + (Date.now() - started) / 10), signal);
    }
  };

  /** Leftovers of a run that ended (crash, poweroff inside, reboot of this machine): processes, cgroups, veth. */
  const clearRuntime = async (machine: string): Promise<void> => {
    const cgroups = await hostCgroupDirs(paths.stateId, machine);
    await waitFor(async () => {
      const pids = (await Promise.all(cgroups.map(cgroupPids))).flat();
      signalPids(pids, 'SIGKILL');
      return pids.length === 0;
    }, 10_000);
    for (const cg of cgroups) await removeCgroupTree(cg);
    if (await linkExists(vethName(machine))) await deleteLink(vethName(machine));
  };

  const start = async (
    rec: LocalHostRecord,
    spec: HostSpec,
    signal?: AbortSignal,
  ): Promise<LocalHostRecord> => {
    const deadline = Date.now() + bootTimeoutMs;
    const running = await runningNspawn(rec);
    if (running) {
      if (running.pid !== rec.pid) {
        rec = { ...rec, pid: running.pid, pidStartTime: running.startTime };
        await writeHostRecord(paths, rec);
      }
      await waitReady(rec, running.pid, deadline, signal);
      return rec;
    }
    await clearRuntime(rec.machine);
    const users = await addressUsers(rec.gateway, rec.prefixLength, vethName(rec.machine));
    if (users.length > 0)
      throw new OrchestratorError(
        'conflict',
        `address ${rec.gateway}/${rec.prefixLength} of local host ${rec.machine} is already on ${users.join(', ')}: ` +
          'is another state directory using the same range? Give each one its own subnet.',
      );
    const dir = hostDir(paths, rec.machine);
    const merged = await mountOverlay(rec.image, dir);
    // Written once: a restarted host keeps its first seed, as a rebooted cloud server keeps its user data.
    if (!(await seedComplete(merged))) {
      await writeSeed(merged, {
        userData: spec.userData,
        instanceId: spec.deploymentId,
        hostname: spec.subdomain,
        ipv4: rec.ipv4,
        prefixLength: rec.prefixLength,
      });
      // The seed (written now, e.g. after a crash between the record and the seed) carries this
      // spec's host key: the record must name that key, or describe() hands out one the host never serves.
      rec = { ...rec, hostPublicKey: spec.hostPublicKey.trim() };
      await writeHostRecord(paths, rec);
    }
    throwIfAborted(signal);
    const cgroupDirs = await hostCgroupDirs(paths.stateId, rec.machine);
    await createCgroups(cgroupDirs);
    const { pid, startTime } = await launchNspawn({
      merged,
      machine: rec.machine,
      uuid: machineUuid(rec.deploymentId),
      cgroupDirs,
      consoleLog: join(dir, 'console.log'),
    });
    rec = { ...rec, pid, pidStartTime: startTime };
    await writeHostRecord(paths, rec);
    await waitReady(rec, pid, deadline, signal);
    return rec;
  };

  const ensure = async (spec: HostSpec, o: { signal?: AbortSignal } = {}): Promise<HostDescription> => {
    validate(spec);
    await assertLocalSupported();
    await (limits ??= raiseHostLimits().then(
      (changes) => {
        for (const change of changes) log?.warn({ change }, 'raised a kernel limit for local hosts');
      },
      // Not fatal (a few hosts still boot), but the reason the 26th would fail should be on record.
      (err: unknown) =>
        log?.warn({ err }, 'could not raise inotify limits: many local hosts may fail to boot'),
    ));
    const machine = machineName(spec.deploymentId);
    return serial(machine, () =>
      withFileLock(
        lockFile(machine),
        async () => {
          const t0 = Date.now();
          let rec = await readHostRecord(paths, machine);
          if (rec && rec.deploymentId !== spec.deploymentId)
            throw new OrchestratorError(
              'conflict',
              `local machine name ${machine} is taken by deployment ${rec.deploymentId}`,
            );
          if (!rec) {
            const image = await resolveImage();
            // The directory first: a slot whose machine has no directory is a leftover to cleanup.
            await mkdir(hostDir(paths, machine), { recursive: true, mode: 0o700 });
            const slot = await allocateSlot(paths.net, machine, subnet);
            rec = {
              version: 1,
              deploymentId: spec.deploymentId,
              orgId: spec.orgId,
              subdomain: spec.subdomain,
              machine,
              slot,
              ...slotAddresses(subnet, slot),
              hostPublicKey: spec.hostPublicKey.trim(),
              image,
              createdAt: new Date().toISOString(),
            };
            await writeHostRecord(paths, rec);
          }
          rec = await start(rec, spec, o.signal);
          log?.info(
            { deploymentId: rec.deploymentId, machine, ipv4: rec.ipv4, seconds: (Date.now() - t0) / 1000 },
            'local host up',
          );
          return describeRecord(rec, 'running');
        },
        { signal: o.signal, timeoutMs: bootTimeoutMs + 60_000 },
      ),
    );
  };

  const describe = async (deploymentId: string): Promise<HostDescription | undefined> => {
    const rec = await readHostRecord(paths, machineName(deploymentId));
    if (!rec || rec.deploymentId !== deploymentId) return undefined;
    return describeRecord(rec, await stateOf(rec));
  };

  const destroy = async (deploymentId: string, o: { signal?: AbortSignal } = {}): Promise<void> => {
    await assertLocalSupported();
    const machine = machineName(deploymentId);
    await serial(machine, () =>
      withFileLock(
        lockFile(machine),
        async () => {
          const rec = await readHostRecord(paths, machine);
          if (rec && rec.deploymentId !== deploymentId)
            throw new OrchestratorError(
              'conflict',
              `local machine ${machine} belongs to deployment ${rec.deploymentId}`,
            );
          throwIfAborted(o.signal);
          await teardownHost(paths, machine, { graceMs: stopGraceMs, log });
          if (rec) log?.info({ deploymentId, machine }, 'local host destroyed');
        },
        { signal: o.signal, timeoutMs: 120_000 },
      ),
    );
  };

  const list = async (): Promise<string[]> => (await listHostRecords(paths)).map((r) => r.deploymentId);

  return { name: 'local', ensure, describe, destroy, list };
};
