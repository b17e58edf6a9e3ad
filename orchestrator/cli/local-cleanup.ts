/**
 * `npm run local:cleanup`: remove every local host and every leftover of crashed runs under
 * `$CORTEX_STATE_DIR` — nspawn processes started from our host directories, processes in our
 * cgroups, veths, overlay mounts, cgroup directories, address slots, lock files and host state,
 * and half-built images of crashed `image:build` runs (after unmounting their /proc, /sys, /dev).
 * Run it when no orchestrator process uses local hosts; it destroys the hosts of live deployments too.
 */
import { loadConfig } from '../config';
import { assertLocalSupported, cleanupImageBuilds, cleanupLocalHosts, localPaths } from '../infra/local';
import { makeLogger } from '../log';

const main = async (): Promise<void> => {
  const args = process.argv.slice(2);
  const graceArg = args.find((a) => a.startsWith('--grace-ms='));
  if (args.some((a) => a !== graceArg)) {
    console.error('usage: local-cleanup [--grace-ms=N]   (N: ms each host gets to power off; default 0)');
    process.exit(2);
  }
  const config = loadConfig(process.env);
  const log = makeLogger({ level: config.LOG_LEVEL, name: 'local-cleanup' });
  await assertLocalSupported();
  const started = Date.now();
  const report = await cleanupLocalHosts(localPaths(config.CORTEX_STATE_DIR), {
    graceMs: graceArg ? Number(graceArg.split('=')[1]) : 0,
    log,
  });
  const builds = await cleanupImageBuilds(config.CORTEX_STATE_DIR);
  console.log(
    `removed ${builds.length} crashed image build(s), ${report.machines.length} host(s)${report.machines.length ? ` (${report.machines.join(', ')})` : ''}, ` +
      `${report.removedSlots} stale address slot(s), ${report.removedLocks} stale lock(s) ` +
      `in ${((Date.now() - started) / 1000).toFixed(1)} s`,
  );
};

main().catch((err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
});
