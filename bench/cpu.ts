import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { CGROUP_PARENT, cgroupHierarchies } from '../orchestrator/infra/local';

/**
 * Where the machine's CPU went during a timed window, for the benchmarks' printed figures:
 * all of it (/proc/stat: user, nice, system, irq, softirq, steal), the local hosts' share (the
 * cgroup2 tree `cortex/`, every local host of every state directory: their systemd, sshd, Caddy,
 * agents and whatever the swap runs on them), and this process (the workers and the bench's own
 * clients). The rest is Postgres, Redis and anything else on the machine.
 */
export interface CpuSample {
  readonly totalSeconds: number;
  readonly hostsSeconds: number | undefined;
  readonly selfSeconds: number;
}

const TICKS_PER_SECOND = 100; // USER_HZ on Linux

const readTotal = async (): Promise<number> => {
  const line = (await readFile('/proc/stat', 'utf8')).split('\n')[0] ?? '';
  const [, user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = line
    .trim()
    .split(/\s+/)
    .map(Number);
  return (user + nice + system + irq + softirq + steal) / TICKS_PER_SECOND;
};

/** The hosts' cgroup2 tree (`<cgroup2 mount>/cortex`, hybrid or pure cgroup2), as the local provider makes it. */
const hostsRoot = async (): Promise<string | undefined> => {
  const unified = (await cgroupHierarchies()).find((h) => h.kind === 'unified');
  return unified ? join(unified.mount, CGROUP_PARENT) : undefined;
};

const readHosts = async (): Promise<number | undefined> => {
  const root = await hostsRoot();
  if (root) {
    try {
      const m = /^usage_usec (\d+)$/m.exec(await readFile(`${root}/cpu.stat`, 'utf8'));
      if (m?.[1]) return Number(m[1]) / 1e6;
    } catch {
      // no host has run yet
    }
  }
  return undefined;
};

export const sampleCpu = async (): Promise<CpuSample> => {
  const u = process.cpuUsage();
  return {
    totalSeconds: await readTotal(),
    hostsSeconds: await readHosts(),
    selfSeconds: (u.user + u.system) / 1e6,
  };
};

/** `CPU 12.3 core-s (hosts 8.1, this process 2.0, rest 2.2)` between two samples. */
export const describeCpu = (a: CpuSample, b: CpuSample, per?: { n: number; what: string }): string => {
  const total = b.totalSeconds - a.totalSeconds;
  const hosts =
    a.hostsSeconds !== undefined && b.hostsSeconds !== undefined ? b.hostsSeconds - a.hostsSeconds : NaN;
  const self = b.selfSeconds - a.selfSeconds;
  const rest = total - (Number.isNaN(hosts) ? 0 : hosts) - self;
  const f = (x: number): string => (Number.isNaN(x) ? '?' : x.toFixed(1));
  const each = per && per.n > 0 ? `, ${(total / per.n).toFixed(2)} core-s per ${per.what}` : '';
  return `CPU ${f(total)} core-s (hosts ${f(hosts)}, this process ${f(self)}, rest ${f(rest)}${each})`;
};

/**
 * CPU of the local hosts per unit (`ssh.service`, `caddy.service`, `cortex-agent@green.service`,
 * `init.scope`, …), summed over every host, in seconds: which part of the hosts' share a window's
 * work went to. Read from each host's cgroup2 tree (`cortex/<state>/<machine>/payload/…`).
 */
export const sampleHostUnits = async (): Promise<Map<string, number>> => {
  const out = new Map<string, number>();
  const root = await hostsRoot();
  if (!root) return out;
  const walk = async (dir: string, depth: number): Promise<void> => {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return; // gone, or another layout
    }
    for (const e of entries) {
      if (!e.isDirectory()) continue;
      const sub = `${dir}/${e.name}`;
      // depth 0: state dirs, 1: machines, 2: payload, 3: init.scope / system.slice, 4: units in slices, 5: template units
      if (depth >= 3 && !e.name.endsWith('.slice')) {
        try {
          const m = /^usage_usec (\d+)$/m.exec(await readFile(`${sub}/cpu.stat`, 'utf8'));
          if (m?.[1]) out.set(e.name, (out.get(e.name) ?? 0) + Number(m[1]) / 1e6);
        } catch {
          // gone
        }
      } else await walk(sub, depth + 1);
    }
  };
  await walk(root, 0);
  return out;
};

/** `ssh.service 12.3, cortex-agent@green.service 8.1, …`: the `top` units between two samples. */
export const describeHostUnits = (a: Map<string, number>, b: Map<string, number>, top = 6): string =>
  [...b]
    .map(([k, v]) => [k.replace(/\\x2d/g, '-'), v - (a.get(k) ?? 0)] as const)
    .filter(([, v]) => v > 0.05)
    .sort((x, y) => y[1] - x[1])
    .slice(0, top)
    .map(([k, v]) => `${k} ${v.toFixed(1)}`)
    .join(', ');
