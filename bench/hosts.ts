/**
 * `npm run bench -- hosts [N …] [--idle-s=S]`: for each N (default 1 and 20), start N local hosts
 * together and print seconds from the request to SSH-ready with the pinned key (median, max), the
 * part of it spent in `ensure`, memory per idle host from its memory cgroup (S seconds after every
 * host finished booting; default 5), and the time to destroy them all. Usage counts page cache,
 * and the image's shared pages are charged to whichever host read them first: rss is the fairer
 * per-host figure. Target (issue 3): median under 3 s for one host; 20 hosts all ready within 20 s.
 */
import { loadConfig } from '../orchestrator/config';
import {
  ensureLocalImage,
  localPaths,
  makeLocalHostProvider,
  readHostMemory,
} from '../orchestrator/infra/local';
import { makeTestHostSpec, sshRun, waitForSsh } from '../test/support/local-hosts';

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] ?? NaN) : ((s[mid - 1] ?? NaN) + (s[mid] ?? NaN)) / 2;
};
const max = (xs: readonly number[]): number => Math.max(...xs);
const mb = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(1)} MB`;
const s = (x: number): string => `${x.toFixed(2)} s`;

export const run = async (args: string[]): Promise<void> => {
  const idleArg = args.find((a) => a.startsWith('--idle-s='));
  const idleSeconds = idleArg ? Number(idleArg.split('=')[1]) : 5;
  const sizes = args.filter((a) => a !== idleArg).map(Number);
  if (sizes.some((n) => !Number.isInteger(n) || n < 1 || n > 500)) {
    throw new Error('usage: npm run bench -- hosts [N …] [--idle-s=S]   (N: hosts started together, 1–500)');
  }
  const config = loadConfig(process.env);
  const stateDir = config.CORTEX_STATE_DIR;
  const image = await ensureLocalImage({ stateDir });
  const provider = makeLocalHostProvider({ stateDir, image: image.rootfs, bootTimeoutMs: 300_000 });
  const paths = localPaths(stateDir);

  for (const n of sizes.length > 0 ? sizes : [1, 20]) {
    const hosts = Array.from({ length: n }, () => makeTestHostSpec());
    try {
      const t0 = performance.now();
      const timings = await Promise.all(
        hosts.map(async (t) => {
          const d = await provider.ensure(t.spec);
          const ensured = (performance.now() - t0) / 1000;
          const auth = { privateKey: t.clientPrivateKey, hostPublicKey: d.hostPublicKey };
          await waitForSsh(d.ipv4, auth, 300_000);
          return { ensured, ready: (performance.now() - t0) / 1000, machine: d.serverId, ipv4: d.ipv4, auth };
        }),
      );
      const ready = timings.map((x) => x.ready);
      const ensured = timings.map((x) => x.ensured);
      console.log(`${n} host(s) started together`);
      console.log(`  request → SSH ready (pinned key): median ${s(median(ready))}, max ${s(max(ready))}`);
      console.log(
        `  request → ensure() resolved:       median ${s(median(ensured))}, max ${s(max(ensured))}`,
      );

      // Idle: boot and cloud-init have finished; what a host costs while it waits for work.
      const booted = await Promise.all(
        timings.map(async (x) => {
          const r = await sshRun(
            x.ipv4,
            x.auth,
            'cloud-init status --wait >/dev/null; systemctl is-system-running --wait',
            300_000,
          );
          return r.stdout.trim();
        }),
      );
      const states = [...new Set(booted)].join(', ');
      console.log(`  all booted after ${s((performance.now() - t0) / 1000)} (systemd: ${states})`);
      await new Promise((r) => setTimeout(r, idleSeconds * 1000));
      const mem = (await Promise.all(timings.map((x) => readHostMemory(paths.stateId, x.machine)))).filter(
        (m): m is NonNullable<typeof m> => m !== undefined,
      );
      if (mem.length > 0) {
        const usage = mem.map((m) => m.usageBytes);
        const rss = mem.map((m) => m.rssBytes);
        console.log(
          `  memory per idle host, ${idleSeconds} s after boot (memory cgroup): usage median ${mb(median(usage))}, ` +
            `max ${mb(max(usage))}; rss median ${mb(median(rss))}, max ${mb(max(rss))}`,
        );
      } else console.log('  memory per idle host: no memory cgroup on this machine');
    } finally {
      // Every host is destroyed even if one teardown fails, and a teardown failure never hides
      // the error that ended the run.
      const t1 = performance.now();
      const results = await Promise.allSettled(hosts.map((t) => provider.destroy(t.spec.deploymentId)));
      const failed = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
      console.log(
        `  destroy all ${n}: ${s((performance.now() - t1) / 1000)}${failed.length ? `, ${failed.length} failed` : ''}`,
      );
      for (const f of failed)
        console.error(`  destroy failed: ${f.reason instanceof Error ? f.reason.message : String(f.reason)}`);
    }
  }
};
