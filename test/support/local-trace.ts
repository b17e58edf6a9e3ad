import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { cgroupPids, hostCgroupDirs } from '../../orchestrator/infra/local/cgroup';
import { run } from '../../orchestrator/infra/local/exec';
import { slotOwners, vethName } from '../../orchestrator/infra/local/net';
import { findNspawnProcesses } from '../../orchestrator/infra/local/proc';
import { hostDir, type localPaths } from '../../orchestrator/infra/local/state';

/** Nothing of the host is left on this machine: the checks `destroy` and cleanup must pass. */
export const expectNoTrace = async (paths: ReturnType<typeof localPaths>, machine: string): Promise<void> => {
  const dir = hostDir(paths, machine);
  expect(await findNspawnProcesses(`${dir}/`)).toEqual([]);
  const cgroups = await hostCgroupDirs(paths.stateId, machine);
  expect(cgroups.length).toBeGreaterThan(0);
  for (const cg of cgroups) {
    expect(await cgroupPids(cg)).toEqual([]);
    expect(existsSync(cg)).toBe(false);
  }
  expect(await readFile('/proc/mounts', 'utf8')).not.toContain(dir);
  const { stdout: links } = await run('ip', ['-o', 'link', 'show']);
  expect(links).not.toContain(vethName(machine));
  expect(existsSync(dir)).toBe(false);
  expect([...(await slotOwners(paths.net)).values()]).not.toContain(machine);
  expect(existsSync(`/run/systemd/nspawn/propagate/${machine}`)).toBe(false);
};
