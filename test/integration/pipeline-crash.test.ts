import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { redisOptionsFromUrl, type Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import { PROVISION_STEPS } from '../../orchestrator/steps/provision-steps';
import { agentCommands } from '../../orchestrator/remote/agent-commands';
import { run } from '../../orchestrator/remote/ssh-shell';
import { testDatabaseUrl } from '../support/db';
import { orgWithKey, startTestPipeline, uniqueSubdomain } from '../support/pipeline';

/**
 * A worker process SIGKILLed inside each of the eight provisioning steps in turn — after the
 * step's effect is in place and before it is recorded, the worst moment — and another worker
 * finishing the deployment: `ready`, with exactly one host, one DNS record and one env file.
 * The kill is real (the worker is a process of its own, `workers/worker.ts`, held at the step by
 * PIPELINE_PAUSE_AT_STEP=<step>:applied); the takeover is BullMQ's stalled-job recovery plus the
 * per-deployment lease expiring.
 */
jest.setTimeout(1_200_000);

const LOCK_MS = '4000';
const LEASE_MS = '3000';
let p: Pipeline;

beforeAll(async () => {
  p = await startTestPipeline({ JOB_LOCK_MS: LOCK_MS, LEASE_TTL_MS: LEASE_MS });
});
afterAll(async () => {
  await p?.close(2_000);
});

/**
 * A worker process held at `step` once its effect is in place. `heldAt(id)` resolves when the
 * worker says it holds that deployment's job: only that one, since a job another test left in the
 * shared queue would otherwise be taken for this test's.
 */
const startHeldWorker = (
  step: string,
  when = ':applied',
): { child: ChildProcess; heldAt: (deploymentId: string) => Promise<void> } => {
  const child = spawn(join(__dirname, '../../node_modules/.bin/tsx'), ['workers/worker.ts'], {
    cwd: join(__dirname, '../..'),
    env: {
      ...process.env,
      DATABASE_URL: testDatabaseUrl(),
      QUEUE_PREFIX: p.config.QUEUE_PREFIX,
      // The worker processes here must never sweep another test's hosts as orphans, nor
      // reconcile other test files' fixtures (deployments they leave `requested`).
      ORPHAN_GRACE_SECONDS: '604800',
      RECONCILE_IDLE_SECONDS: '86400',
      PIPELINE_PAUSE_AT_STEP: `${step}${when}`,
      LOG_LEVEL: 'warn',
      JOB_LOCK_MS: LOCK_MS,
      LEASE_TTL_MS: LEASE_MS,
    },
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  const holds = (deploymentId: string): boolean =>
    stderr
      .split('\n')
      .some(
        (line) =>
          line.includes('PIPELINE_PAUSE_AT_STEP') && line.includes(`"deploymentId":"${deploymentId}"`),
      );
  const heldAt = (deploymentId: string): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const onData = (): void => {
        if (holds(deploymentId)) resolve();
      };
      child.stderr?.on('data', onData);
      onData();
      child.on('exit', (code, signal) =>
        reject(
          new Error(`worker exited (${code ?? signal}) before reaching ${step}: ${stderr.slice(-2000)}`),
        ),
      );
    });
  child.stderr?.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  return { child, heldAt };
};

const kill = (child: ChildProcess): Promise<void> =>
  new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve();
    child.once('exit', () => resolve());
    // The whole group: tsx runs the worker in a child node process.
    try {
      process.kill(-(child.pid ?? 0), 'SIGKILL');
    } catch {
      resolve();
    }
  });

describe('SIGKILL inside each step, then another worker', () => {
  it.each(PROVISION_STEPS.map((s) => [s]))(
    'killed after %s applied: ready with one host, one DNS record, one env file',
    async (step) => {
      const org = await orgWithKey(p);
      const { child, heldAt } = startHeldWorker(step);
      const subdomain = uniqueSubdomain('k');
      const { deploymentId } = await p.service.request({
        orgId: org.orgId,
        name: `crash at ${step}`,
        subdomain,
        bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: org.secretId }],
      });
      let timer: NodeJS.Timeout | undefined;
      try {
        await Promise.race([
          heldAt(deploymentId),
          new Promise((_, reject) => {
            timer = setTimeout(() => reject(new Error(`worker did not reach ${step} in 240 s`)), 240_000);
          }),
        ]);
      } finally {
        clearTimeout(timer);
        await kill(child);
      }
      const atKill = await p.service.get(deploymentId);
      const killedStep = atKill.steps.find((s) => s.step === step && s.run === atKill.currentRun);
      expect(killedStep?.status).toBe('running');

      const workers = p.makeWorkerSet();
      workers.start(['provision', 'deprovision']);
      try {
        // Ready, and the takeover done: no step of the run still recorded as running.
        const ready = await p.service.watch(deploymentId, () => undefined, {
          timeoutMs: 300_000,
          until: (d) =>
            d.status === 'failed' ||
            (d.status === 'ready' && d.steps.every((s) => s.run !== d.currentRun || s.status !== 'running')),
        });
        expect({ status: ready.status, failed: ready.failedStep, reason: ready.failureReason }).toEqual({
          status: 'ready',
          failed: null,
          reason: null,
        });
        // The killed step ran again (its record says so). `ready` had already taken effect: the
        // next worker finds the deployment ready and only completes the record.
        // (A step whose check finds its effect in place is recorded `skipped`.)
        const attempts = Object.fromEntries(
          ready.steps.map((s) => [s.step, [s.attempt, s.status === 'skipped' ? 'succeeded' : s.status]]),
        );
        expect(attempts[step]).toEqual([step === 'ready' ? 1 : 2, 'succeeded']);

        expect((await p.hosts.list()).filter((id) => id === deploymentId)).toHaveLength(1);
        expect((await p.hosts.describe(deploymentId))?.ipv4).toBe(ready.ipv4);
        const name = `${subdomain}.${p.config.DNS_ZONE}`;
        const records = (await p.dns.list()).filter((r) => r.name === name);
        expect(records.map((r) => r.ipv4)).toEqual([ready.ipv4]);
        const { shell } = await p.access.connect(ready);
        try {
          // The serving slot's env file and the active-slot record; no temp file of a cut write.
          expect((await run(shell, agentCommands.listDir('/etc/cortex'))).stdout.toString().trim()).toBe(
            'active-slot\nagent-blue.env',
          );
        } finally {
          await shell.close();
        }
        await p.service.destroy(deploymentId);
        const gone = await p.service.watch(deploymentId, () => undefined, {
          timeoutMs: 120_000,
          until: (d) => d.status === 'deleted',
        });
        expect(gone.status).toBe('deleted');
      } finally {
        await workers.close(2_000);
      }
    },
  );
});

describe('SIGTERM', () => {
  it('a worker asked to stop finishes its running step, hands the job back at the boundary, and exits 0; another worker resumes', async () => {
    const org = await orgWithKey(p);
    const child = spawn(join(__dirname, '../../node_modules/.bin/tsx'), ['workers/worker.ts'], {
      cwd: join(__dirname, '../..'),
      env: {
        ...process.env,
        DATABASE_URL: testDatabaseUrl(),
        QUEUE_PREFIX: p.config.QUEUE_PREFIX,
        // The worker processes here must never sweep another test's hosts as orphans.
        ORPHAN_GRACE_SECONDS: '604800',
        RECONCILE_IDLE_SECONDS: '86400',
        LOG_LEVEL: 'warn',
      },
      detached: true,
      stdio: 'ignore',
    });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const { deploymentId } = await p.service.request({
      orgId: org.orgId,
      name: 'sigterm',
      subdomain: uniqueSubdomain('s'),
      bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: org.secretId }],
    });
    // The host step takes seconds (a boot): stop the worker while it runs.
    const deadline = Date.now() + 120_000;
    while (
      !(await p.service.get(deploymentId)).steps.some((s) => s.step === 'host' && s.status === 'running')
    ) {
      if (Date.now() > deadline) throw new Error('the host step never started');
      await new Promise((r) => setTimeout(r, 100));
    }
    // The worker process itself (tsx's child), as `kill <pid>` or systemd with KillMode=mixed asks
    // it to stop. Not tsx: tsx relays a signal only it received and SIGKILLs its child when the
    // child does not acknowledge within 30 ms (a loaded machine). Not the whole group: the commands
    // a step runs have process groups of their own (runCommand; test/unit/infra/local/exec.test.ts),
    // yet one CI dry run still saw `ip … failed (SIGTERM)` after a group signal (not explained; a
    // command caught between fork and setsid is the likely case). Its step then fails transiently
    // and the job's retry resumes it; a group signal is not what this test is about.
    const workerPid = Number(
      readFileSync(`/proc/${child.pid ?? 0}/task/${child.pid ?? 0}/children`, 'utf8')
        .trim()
        .split(' ')[0],
    );
    expect(workerPid).toBeGreaterThan(1);
    expect(readFileSync(`/proc/${workerPid}/cmdline`, 'utf8')).toContain('workers/worker.ts');
    process.kill(workerPid, 'SIGTERM');
    const code = await exited;
    const stopped = await p.service.get(deploymentId);

    const workers = p.makeWorkerSet();
    let started = false;
    try {
      expect(code).toBe(0);
      // The running step finished and was recorded; nothing after it started; still provisioning.
      expect(stopped.status).toBe('provisioning');
      expect(stopped.steps.map((s) => [s.step, s.status, s.error])).toEqual([['host', 'succeeded', null]]);
      workers.start(['provision', 'deprovision']);
      started = true;
      const ready = await p.service.watch(deploymentId, () => undefined, { timeoutMs: 240_000 });
      expect(ready.status).toBe('ready');
      expect(ready.steps.find((s) => s.step === 'host')?.attempt).toBe(1);
    } finally {
      // Also when an expectation failed: no job of this test may stay in the shared queue for the
      // next test's held worker to take, nor a host behind.
      if (!started) workers.start(['provision', 'deprovision']);
      await p.service.destroy(deploymentId).catch(() => undefined);
      await p.service
        .watch(deploymentId, () => undefined, { until: (d) => d.status === 'deleted', timeoutMs: 120_000 })
        .finally(() => workers.close(2_000));
    }
  });
});

describe('Redis loses everything mid-flight', () => {
  it('FLUSHALL while a provision runs, its worker gone: the reconciler re-enqueues from Postgres and the deployment finishes', async () => {
    const org = await orgWithKey(p);
    const { child, heldAt } = startHeldWorker('configure', '');
    const { deploymentId } = await p.service.request({
      orgId: org.orgId,
      name: 'flushed',
      subdomain: uniqueSubdomain('f'),
      bindings: [{ envVar: 'ANTHROPIC_API_KEY', secretId: org.secretId }],
    });
    try {
      await heldAt(deploymentId);
      const raw = new Redis(redisOptionsFromUrl(p.config.REDIS_URL));
      await raw.flushall();
      raw.disconnect();
    } finally {
      await kill(child);
    }
    expect(await p.queues.queues.provision.getJob(`provision-${deploymentId}`)).toBeUndefined();

    const fresh = await startTestPipeline({
      QUEUE_PREFIX: p.config.QUEUE_PREFIX,
      ORPHAN_GRACE_SECONDS: '604800',
      RECONCILE_IDLE_SECONDS: '1',
    });
    const workers = fresh.makeWorkerSet();
    workers.start(['provision', 'deprovision']);
    try {
      await new Promise((r) => setTimeout(r, 1_500));
      // Scoped to this test's organisation: the shared test database holds other files' fixtures
      // (deployments left `requested`), which a global pass would set provisioning too.
      const { enqueued } = await workers.reconcile({ orgId: org.orgId });
      expect(enqueued).toContain(deploymentId);
      const ready = await fresh.service.watch(deploymentId, () => undefined, { timeoutMs: 240_000 });
      expect(ready.status).toBe('ready');
      expect(ready.steps.find((s) => s.step === 'host')?.attempt).toBe(1);
      expect(ready.steps.find((s) => s.step === 'configure')?.attempt).toBe(2);
      await fresh.service.destroy(deploymentId);
      await fresh.service.watch(deploymentId, () => undefined, {
        until: (d) => d.status === 'deleted',
        timeoutMs: 120_000,
      });
    } finally {
      await workers.close(2_000);
      await fresh.close(2_000);
    }
  });
});
