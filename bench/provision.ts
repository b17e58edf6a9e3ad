/**
 * `npm run bench -- provision [N …]`: local mode, real parts. For each N (default 1 and 20), N
 * deployments requested at once through the deployments service, with the workers in this process
 * (concurrency 10, as the issue sets it); prints seconds from request to a verified HTTPS health
 * response (median, max), the orchestrator's overhead (total minus the host's boot: the `host` step
 * and the `ssh` step's wait for sshd and cloud-init, as that step logs it; and minus the `health` wait), and the worker process's RSS. Deployments are removed afterwards.
 * Targets (issue 9): one under 5 s; 20 at once all ready within 30 s; overhead under 0.5 s per
 * deployment; RSS under 200 MB.
 */
import { randomBytes } from 'node:crypto';
import { Writable } from 'node:stream';
import { loadConfig } from '../orchestrator/config';
import { makePipelineFromConfig } from '../orchestrator/deployments/pipeline-from-config';
import { makeLogger } from '../orchestrator/log';
import { Secret } from '../orchestrator/secret';

const median = (xs: readonly number[]): number => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? (s[mid] ?? NaN) : ((s[mid - 1] ?? NaN) + (s[mid] ?? NaN)) / 2;
};
const sec = (ms: number): string => `${(ms / 1000).toFixed(2)} s`;

export const run = async (args: string[]): Promise<void> => {
  const sizes = args.map(Number);
  if (sizes.some((n) => !Number.isInteger(n) || n < 1 || n > 100))
    throw new Error('usage: npm run bench -- provision [N …]   (N: deployments requested together, 1–100)');
  const config = loadConfig({ WORKER_CONCURRENCY: '10', ...process.env, LOG_LEVEL: 'info' });
  // The ssh step logs how long it waited for the boot (sshd, cloud-init): that wait is the host's,
  // not the orchestrator's.
  const bootWaitMs = new Map<string, number>();
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (!line.includes('ssh step phases')) continue;
        const j = JSON.parse(line) as { deploymentId?: string; bootedMs?: number };
        if (j.deploymentId && j.bootedMs !== undefined) bootWaitMs.set(j.deploymentId, j.bootedMs);
      }
      cb();
    },
  });
  const p = await makePipelineFromConfig(config, makeLogger({ level: 'info', name: 'bench' }, sink));
  const workers = p.makeWorkerSet();
  workers.start(['provision', 'deprovision']);
  let peakRss = process.memoryUsage().rss;
  const rssTimer = setInterval(() => (peakRss = Math.max(peakRss, process.memoryUsage().rss)), 200);
  try {
    const org = await p.db.rpc<{ id: string }>('organizations__create', { p_name: 'bench organisation' });
    const key = await p.secrets.create({
      orgId: org.id,
      name: 'bench key',
      provider: 'anthropic',
      value: new Secret(`sk-ant-bench-${randomBytes(24).toString('base64url')}`),
    });
    for (const n of sizes.length ? sizes : [1, 20]) {
      const t0 = Date.now();
      const ids = await Promise.all(
        Array.from({ length: n }, async () => {
          const r = await p.service.request({
            orgId: org.id,
            name: 'bench agent',
            subdomain: `b-${randomBytes(4).toString('hex')}`,
            bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: key.secretId }],
          });
          return { id: r.deploymentId, t: Date.now() };
        }),
      );
      const results = await Promise.all(
        ids.map(async ({ id, t }) => {
          const d = await p.service.watch(id, () => undefined, { timeoutMs: 600_000, intervalMs: 100 });
          const ms = (step: string) => d.steps.find((s) => s.step === step)?.durationMs ?? 0;
          const total = Date.parse(d.steps.find((s) => s.step === 'health')?.finishedAt ?? d.updatedAt) - t;
          const boot = ms('host') + (bootWaitMs.get(id) ?? 0);
          return { id, status: d.status, total, overhead: total - boot - ms('health'), steps: d.steps };
        }),
      );
      const ok = results.filter((r) => r.status === 'ready');
      console.log(`${n} deployment(s): ${ok.length} ready, ${n - ok.length} not`);
      console.log(
        `${n} at once, request to verified HTTPS health: median ${sec(median(ok.map((r) => r.total)))}`,
      );
      console.log(
        `${n} at once, request to verified HTTPS health: max ${sec(Math.max(...ok.map((r) => r.total)))}`,
      );
      console.log(
        `${n} at once, orchestrator overhead (total minus the host's boot — the host step and the ssh step's wait for sshd and cloud-init — and the health wait): median ${sec(median(ok.map((r) => r.overhead)))}`,
      );
      const per = ['host', 'dns', 'ssh', 'configure', 'secrets', 'start', 'health', 'ready'].map(
        (s) => `${s} ${sec(median(ok.map((r) => r.steps.find((x) => x.step === s)?.durationMs ?? 0)))}`,
      );
      console.log(`${n} at once, median per step: ${per.join(', ')}`);
      console.log(`${n} at once, wall clock until all ready: ${sec(Date.now() - t0)}`);
      await Promise.all(results.map((r) => p.service.destroy(r.id)));
      await Promise.all(
        results.map((r) =>
          p.service.watch(r.id, () => undefined, {
            until: (d) => d.status === 'deleted',
            timeoutMs: 300_000,
          }),
        ),
      );
    }
    console.log(
      `worker process RSS (peak, concurrency ${config.WORKER_CONCURRENCY}): ${(peakRss / 2 ** 20).toFixed(0)} MB`,
    );
    await p.secrets.revokeNow(key.secretId, { actor: 'bench' });
  } finally {
    clearInterval(rssTimer);
    await p.close(2_000);
  }
};
