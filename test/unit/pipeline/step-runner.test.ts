import { OrchestratorError } from '../../../orchestrator/errors';
import type {
  Deployment,
  DeploymentStore,
  StepRecord,
} from '../../../orchestrator/deployments/deployment-store';
import { makeLogger } from '../../../orchestrator/log';
import {
  ShutdownRequested,
  makeStepRunner,
  reasonOf,
  type StepDef,
} from '../../../orchestrator/steps/step-runner';

/**
 * The runner over an in-memory model of the deployments contract (begin/get/step start and
 * finish as the SQL functions define them; the SQL itself is proven by pgTAP and integration tests).
 */
const fakeStore = (status: Deployment['status'] = 'requested') => {
  let dep = { id: 'd1', status, currentRun: 0, steps: [] as StepRecord[] } as unknown as Deployment & {
    steps: StepRecord[];
  };
  const set = (patch: Partial<Deployment>) => (dep = { ...dep, ...patch } as typeof dep);
  const store = {
    begin: jest.fn(async (_id: string, op: string) => {
      if (op === 'provision' && dep.status === 'ready')
        return { action: 'done', run: dep.currentRun, deployment: dep };
      if (op === 'provision' && dep.status === 'deprovisioning')
        return { action: 'stop', run: dep.currentRun, deployment: dep };
      if (dep.status === 'requested') set({ status: 'provisioning', currentRun: dep.currentRun + 1 });
      if (dep.status === 'failed') set({ status: 'provisioning' });
      return { action: 'run', run: dep.currentRun, deployment: dep };
    }),
    get: jest.fn(async () => dep),
    stepStarted: jest.fn(async (_id: string, run: number, step: string) => {
      const old = dep.steps.find((s) => s.run === run && s.step === step);
      const rest = dep.steps.filter((s) => s !== old);
      set({
        steps: [...rest, { run, step, status: 'running', attempt: (old?.attempt ?? 0) + 1 } as StepRecord],
      } as Partial<Deployment>);
    }),
    stepFinished: jest.fn(
      async (
        _id: string,
        run: number,
        step: string,
        status: StepRecord['status'],
        reason?: string,
        final?: boolean,
      ) => {
        set({
          steps: dep.steps.map((s) =>
            s.run === run && s.step === step ? { ...s, status, error: reason ?? null } : s,
          ),
        } as Partial<Deployment>);
        if (status === 'failed' && final) set({ status: 'failed', failedStep: step });
        return dep;
      },
    ),
  };
  return { store: store as unknown as DeploymentStore, state: () => dep, set };
};

const log = makeLogger({ level: 'silent' });
const step = (
  name: string,
  apply: () => Promise<void> = async () => undefined,
  check?: () => Promise<boolean>,
): StepDef => ({
  name,
  deadlineMs: 1_000,
  apply: jest.fn(apply),
  ...(check ? { check: jest.fn(check) } : {}),
});
const opts = {
  operation: 'provision' as const,
  deploymentId: 'd1',
  jobId: 'provision-d1',
  finalAttempt: false,
};

describe('step runner', () => {
  it('runs the steps in order and records each', async () => {
    const f = fakeStore();
    const order: string[] = [];
    const steps = ['a', 'b', 'c'].map((n) => step(n, async () => void order.push(n)));
    await expect(makeStepRunner({ store: f.store, log }).run({ ...opts, steps })).resolves.toBe('completed');
    expect(order).toEqual(['a', 'b', 'c']);
    expect(f.state().steps.map((s) => [s.step, s.status])).toEqual([
      ['a', 'succeeded'],
      ['b', 'succeeded'],
      ['c', 'succeeded'],
    ]);
  });

  it('a step whose check says it is done is recorded skipped and not applied', async () => {
    const f = fakeStore();
    const s = step(
      'a',
      async () => undefined,
      async () => true,
    );
    await makeStepRunner({ store: f.store, log }).run({ ...opts, steps: [s] });
    expect(s.apply).not.toHaveBeenCalled();
    expect(f.state().steps[0]?.status).toBe('skipped');
  });

  it('a transient failure is recorded, rethrown for a retry, and the retry resumes at that step', async () => {
    const f = fakeStore();
    let fail = true;
    const a = step('a');
    const b = step('b', async () => {
      if (fail) throw new OrchestratorError('ssh_connect_failed', 'connection reset');
    });
    const runner = makeStepRunner({ store: f.store, log });
    await expect(runner.run({ ...opts, steps: [a, b] })).rejects.toMatchObject({
      code: 'ssh_connect_failed',
    });
    expect(f.state().status).toBe('provisioning');
    expect(f.state().steps.find((s) => s.step === 'b')).toMatchObject({
      status: 'failed',
      error: 'ssh_connect_failed: connection reset',
    });
    fail = false;
    await expect(runner.run({ ...opts, steps: [a, b] })).resolves.toBe('completed');
    expect(a.apply).toHaveBeenCalledTimes(1);
    expect(f.state().steps.find((s) => s.step === 'b')).toMatchObject({ status: 'succeeded', attempt: 2 });
  });

  it('a permanent failure, or any failure on the last attempt, fails the deployment naming the step', async () => {
    const f = fakeStore();
    const bad = step('secrets', async () => {
      throw new OrchestratorError('secret_denied', 'denied');
    });
    await expect(
      makeStepRunner({ store: f.store, log }).run({ ...opts, steps: [bad] }),
    ).rejects.toMatchObject({
      code: 'secret_denied',
    });
    expect(f.state()).toMatchObject({ status: 'failed', failedStep: 'secrets' });

    const g = fakeStore();
    const flaky = step('host', async () => {
      throw new OrchestratorError('provider_unavailable', 'try later');
    });
    await expect(
      makeStepRunner({ store: g.store, log }).run({ ...opts, steps: [flaky], finalAttempt: true }),
    ).rejects.toThrow();
    expect(g.state()).toMatchObject({ status: 'failed', failedStep: 'host' });
  });

  it('a step past its deadline fails with timeout and its signal is aborted', async () => {
    const f = fakeStore();
    let aborted = false;
    const slow: StepDef = {
      name: 'health',
      deadlineMs: 50,
      apply: (ctx) =>
        new Promise((resolve) => {
          ctx.signal.addEventListener('abort', () => {
            aborted = true;
            setTimeout(resolve, 200);
          });
        }),
    };
    await expect(
      makeStepRunner({ store: f.store, log }).run({ ...opts, steps: [slow] }),
    ).rejects.toMatchObject({
      code: 'timeout',
      message: 'step health did not finish within 0 s',
    });
    expect(aborted).toBe(true);
  });

  it('stops at a step boundary when the deployment was sent to deprovisioning (the deprovision wins)', async () => {
    const f = fakeStore();
    const a = step('a', async () => void f.set({ status: 'deprovisioning' }));
    const b = step('b');
    await expect(makeStepRunner({ store: f.store, log }).run({ ...opts, steps: [a, b] })).resolves.toBe(
      'superseded',
    );
    expect(b.apply).not.toHaveBeenCalled();
  });

  it('hands the job back at a step boundary when the worker is stopping, never inside a step', async () => {
    const f = fakeStore();
    let stopping = false;
    const a = step('a', async () => void (stopping = true));
    const b = step('b');
    await expect(
      makeStepRunner({ store: f.store, log }).run({ ...opts, steps: [a, b], stopping: () => stopping }),
    ).rejects.toBeInstanceOf(ShutdownRequested);
    expect(f.state().steps.map((s) => [s.step, s.status])).toEqual([['a', 'succeeded']]);
    expect(b.apply).not.toHaveBeenCalled();
  });

  it('what the steps of a run share is released when the run ends, completed or failed', async () => {
    for (const fails of [false, true]) {
      const f = fakeStore();
      const released: string[] = [];
      const open: StepDef = {
        name: 'a',
        deadlineMs: 1_000,
        apply: async (ctx) => ctx.scope?.set('conn', 'c1', async (v) => void released.push(v)),
      };
      const use: StepDef = {
        name: 'b',
        deadlineMs: 1_000,
        apply: async (ctx) => {
          expect(ctx.scope?.get('conn')).toBe('c1');
          if (fails) throw new OrchestratorError('secret_denied', 'no');
        },
      };
      const r = makeStepRunner({ store: f.store, log }).run({ ...opts, steps: [open, use] });
      if (fails) await expect(r).rejects.toMatchObject({ code: 'secret_denied' });
      else await expect(r).resolves.toBe('completed');
      expect(released).toEqual(['c1']);
    }
  });

  it('a ready deployment runs nothing', async () => {
    const f = fakeStore('ready');
    const a = step('a');
    await expect(makeStepRunner({ store: f.store, log }).run({ ...opts, steps: [a] })).resolves.toBe('done');
    expect(a.apply).not.toHaveBeenCalled();
  });
});

describe('reasonOf', () => {
  it('keeps our errors (code: message), trusts no other message, strips control characters, bounds length', () => {
    expect(reasonOf(new OrchestratorError('timeout', 'late\nline'))).toBe('timeout: late line');
    expect(reasonOf(new Error('duplicate key value (sk-ant-canary)'))).toBe('unexpected error (Error)');
    expect(reasonOf(new OrchestratorError('internal', 'x'.repeat(600)))).toHaveLength(500);
  });
});
