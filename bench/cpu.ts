import { readFile } from 'node:fs/promises';

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

const readHosts = async (): Promise<number | undefined> => {
  for (const root of ['/sys/fs/cgroup/unified/cortex', '/sys/fs/cgroup/cortex']) {
    try {
      const m = /^usage_usec (\d+)$/m.exec(await readFile(`${root}/cpu.stat`, 'utf8'));
      if (m?.[1]) return Number(m[1]) / 1e6;
    } catch {
      // not this layout
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
