import * as pulumi from '@pulumi/pulumi';
import { classify, type ErrorCode } from '../../../../orchestrator/errors';
import { makeLogger } from '../../../../orchestrator/log';
import { makeStackRunner, operationTimeoutMs } from '../../../../orchestrator/infra/hcloud/stack-runner';
import { canary } from '../../../support/canary';
import { diyLockedStderr, makeFakeWorkspace, type FakeWorkspace } from '../../../support/fake-workspace';
import { rejection } from '../../../support/rejection';

const STALE = 10 * 60_000;
const program = async () => ({ answer: 42 });

const capture = () => {
  const chunks: string[] = [];
  const log = makeLogger({ level: 'debug' }, { write: (s: string) => void chunks.push(s) });
  return {
    log,
    text: () => chunks.join(''),
    records: () => chunks.map((c) => JSON.parse(c) as Record<string, unknown>),
  };
};

const setup = (over: { timeoutMs?: number; abortGraceMs?: number } = {}) => {
  const fake = makeFakeWorkspace();
  const out = capture();
  const runner = makeStackRunner({
    workspace: fake.workspace,
    log: out.log,
    staleLockMs: STALE,
    timeoutMs: over.timeoutMs ?? 30_000,
    abortGraceMs: over.abortGraceMs ?? 1_000,
  });
  return { fake, out, runner };
};

const ran = (fake: FakeWorkspace, verb: string, stack: string) =>
  fake.commandLines.filter((c) => c[1] === verb && c.includes(stack)).length;

describe('stack runner', () => {
  it('creates the stack, writes its config, runs up and returns the outputs', async () => {
    const { fake, runner } = setup();
    const outputs = await runner.up('agent-a', program, {
      'cortex:zone': { value: 'z.example.com', secret: false },
    });
    expect(outputs).toEqual({ answer: { value: 42, secret: false } });
    expect(fake.stacks.get('agent-a')?.config).toEqual({
      'cortex:zone': { value: 'z.example.com', secret: false },
    });
    expect(await runner.outputs('agent-a', program)).toEqual(outputs);
    expect(await runner.list()).toEqual(['agent-a']);
  });

  it('refuses secret config, which the SDK would put on the command line', async () => {
    const { fake, runner } = setup();
    const err = await rejection(
      runner.up('agent-a', program, { 'cortex:userData': { value: 'x', secret: true } }),
    );
    expect(err.code).toBe('internal');
    expect(fake.commandLines).toEqual([]);
  });

  it('streams the CLI output to the log line by line, scrubbing values it was asked to redact', async () => {
    const { fake, out, runner } = setup();
    const secret = canary('other');
    fake.printNext(`Updating (agent-a)\n + server created\n diag: ${secret}\nResources: 5 created\n`);
    await runner.up('agent-a', program, {}, { redact: [`line one\n${secret}`] });
    const lines = out
      .records()
      .filter((r) => r.msg === 'pulumi output')
      .map((r) => r.line);
    expect(lines).toEqual(
      ['Updating (agent-a)', '+ server created', 'diag: [REDACTED]', 'Resources: 5 created'].map((l) =>
        expect.stringContaining(l),
      ),
    );
    expect(out.text()).not.toContain(secret);
  });

  it('scrubs the values it was asked to redact from a failed operation’s error and log', async () => {
    const { fake, out, runner } = setup();
    await runner.up('agent-a', program, {});
    const secret = canary('other');
    fake.failNext('up', `error: update failed\n  * bad user data: ${secret} (invalid_input)`);
    const err = await rejection(runner.up('agent-a', program, {}, { redact: [`#cloud-config\n${secret}`] }));
    expect(err.code).toBe('provider_rejected');
    expect(err.message).toContain('bad user data: [REDACTED]');
    expect((err as unknown as Error).cause).toBeUndefined();
    out.log.error({ err }, 'provisioning failed');
    expect(out.text()).toContain('provisioning failed');
    expect(out.text()).not.toContain(secret);
  });

  describe('an update that fails part-way', () => {
    class Res extends pulumi.CustomResource {
      constructor(name: string) {
        super('hcloud:index/firewall:Firewall', name, {});
      }
    }
    const three = async () => {
      for (const n of ['a', 'b', 'c']) new Res(n);
      return { answer: 43 };
    };

    it('keeps what was created, records the pending create and no new outputs; the next up warns and re-creates it', async () => {
      const { fake, out, runner } = setup();
      await runner.up('agent-a', program, {});
      fake.failPartwayNext({ completed: 1, pending: 1 });
      const err = await rejection(runner.up('agent-a', three, {}));
      expect([err.code, classify(err)]).toEqual(['stack_failed', 'retry']);
      const record = fake.stacks.get('agent-a')!;
      expect(record.resources.map((r) => r.name)).toEqual(['a']);
      expect(record.pendingOperations).toEqual([
        {
          type: 'creating',
          resource: {
            urn: 'urn:pulumi:agent-a::cortex::hcloud:index/firewall:Firewall::b',
            type: 'hcloud:index/firewall:Firewall',
            name: 'b',
          },
        },
      ]);
      expect(record.outputs).toEqual({ answer: { value: 42, secret: false } });
      expect(record.history[0]?.result).toBe('failed');
      const idOfA = record.resources[0]?.assignedId;

      expect(await runner.up('agent-a', three, {})).toEqual({ answer: { value: 43, secret: false } });
      expect(out.text()).toContain('1 pending operations from previous deployment');
      expect(record.pendingOperations).toEqual([]);
      expect(record.resources.map((r) => r.name)).toEqual(['a', 'b', 'c']);
      expect(record.resources[0]?.assignedId).toBe(idOfA);
    });
  });

  it('destroys, then removes the stack; a missing stack is already done', async () => {
    const { fake, runner } = setup();
    await runner.up('agent-a', program, {});
    expect(await runner.destroy('agent-a', program)).toBe('destroyed');
    expect(fake.stacks.has('agent-a')).toBe(false);
    expect(await runner.destroy('agent-a', program)).toBe('absent');
    expect(await runner.outputs('agent-a', program)).toBeUndefined();
  });

  it('retries a destroy whose stack removal failed as a cheap destroy of nothing', async () => {
    const { fake, runner } = setup();
    await runner.up('agent-a', program, {});
    fake.failNext('remove', 'error: could not remove stack: read: connection reset by peer');
    const err = await rejection(runner.destroy('agent-a', program));
    expect(err.code).toBe('provider_unavailable');
    expect(classify(err)).toBe('retry');
    expect(fake.stacks.get('agent-a')?.resources).toEqual([]);
    expect(await runner.destroy('agent-a', program)).toBe('destroyed');
    expect(fake.stacks.has('agent-a')).toBe(false);
  });

  describe('locks', () => {
    it('reports a fresh lock as stack_locked (retried later) without cancelling it', async () => {
      const { fake, runner } = setup();
      await runner.up('agent-a', program, {});
      fake.lock('agent-a', new Date(Date.now() - 60_000));
      const err = await rejection(runner.up('agent-a', program, {}));
      expect(err.code).toBe('stack_locked');
      expect(classify(err)).toBe('retry');
      expect(err.message).toMatch(/held for 6\d s/);
      expect(ran(fake, 'cancel', 'agent-a')).toBe(0);
    });

    it('cancels a DIY lock older than the stale age, then runs the operation', async () => {
      const { fake, out, runner } = setup();
      await runner.up('agent-a', program, {});
      fake.lock('agent-a', new Date(Date.now() - STALE - 1_000));
      expect(await runner.destroy('agent-a', program)).toBe('destroyed');
      expect(ran(fake, 'cancel', 'agent-a')).toBe(1);
      expect(out.text()).toContain('cancelling a stale lock');
    });

    it('uses the history of a Pulumi Cloud stack, whose conflict names no time', async () => {
      const { fake, runner } = setup();
      await runner.up('agent-a', program, {});
      fake.lock('agent-a', new Date(Date.now() - 5_000), 'cloud');
      expect((await rejection(runner.up('agent-a', program, {}))).code).toBe('stack_locked');
      fake.lock('agent-a', new Date(Date.now() - STALE - 5_000), 'cloud');
      await expect(runner.up('agent-a', program, {})).resolves.toEqual({
        answer: { value: 42, secret: false },
      });
      expect(ran(fake, 'cancel', 'agent-a')).toBe(1);
    });

    it('gives up when the lock is still there after cancelling', async () => {
      const { fake, runner } = setup();
      await runner.up('agent-a', program, {});
      fake.lock('agent-a', new Date(Date.now() - STALE - 1_000));
      // The first attempt meets the stale lock; after the cancel, another worker's fresh one.
      fake.failNext('up', diyLockedStderr('agent-a', new Date()));
      const err = await rejection(runner.up('agent-a', program, {}));
      expect(err.code).toBe('stack_locked');
      expect(ran(fake, 'cancel', 'agent-a')).toBe(1);
      expect(ran(fake, 'up', 'agent-a')).toBe(3);
    });
  });

  describe('deadlines and aborts', () => {
    it('times out a hanging operation, and the next one runs', async () => {
      const { fake, runner } = setup({ timeoutMs: 50 });
      await runner.up('agent-a', program, {});
      void fake.hangNext();
      const err = await rejection(runner.up('agent-a', program, {}));
      expect(err.code).toBe('timeout');
      expect(classify(err)).toBe('retry');
      // The next operation runs: the stack answers with the outputs of the last successful up.
      await expect(runner.outputs('agent-a', program)).resolves.toEqual({
        answer: { value: 42, secret: false },
      });
    });

    it('aborts on the caller signal with a permanent code', async () => {
      const { fake, runner } = setup();
      await runner.up('agent-a', program, {});
      const hanging = fake.hangNext();
      const ctl = new AbortController();
      const pending = runner.up('agent-a', program, {}, { signal: ctl.signal });
      await hanging;
      ctl.abort();
      const err = await rejection(pending);
      expect(err.code).toBe('aborted');
      expect(classify(err)).toBe('permanent');
    });

    it('stops waiting for an operation that ignores its signal after the grace period', async () => {
      const { fake, out, runner } = setup({ timeoutMs: 30, abortGraceMs: 50 });
      await runner.up('agent-a', program, {});
      void fake.hangNext({ ignoreSignal: true });
      const started = Date.now();
      expect((await rejection(runner.up('agent-a', program, {}))).code).toBe('timeout');
      expect(Date.now() - started).toBeGreaterThanOrEqual(70);
      expect(out.text()).toContain('restart this worker');
    });

    it('a lock left by an aborted operation is reported as locked until it is stale', async () => {
      const { fake, runner } = setup({ timeoutMs: 30 });
      await runner.up('agent-a', program, {});
      void fake.hangNext({ leaveLock: true });
      expect((await rejection(runner.up('agent-a', program, {}))).code).toBe('timeout');
      expect((await rejection(runner.up('agent-a', program, {}))).code).toBe('stack_locked');
    });
  });

  it('does not start the CLI for an operation aborted before it began', async () => {
    const { fake, runner } = setup();
    const ctl = new AbortController();
    ctl.abort();
    expect((await rejection(runner.up('agent-a', program, {}, { signal: ctl.signal }))).code).toBe('aborted');
    expect(fake.commandLines).toEqual([]);
  });

  describe('one operation at a time', () => {
    it('serialises concurrent operations on different stacks', async () => {
      const { fake, runner } = setup();
      const results = await Promise.all(
        ['agent-a', 'agent-b', 'agent-c'].map((s) => runner.up(s, program, {})),
      );
      expect(results).toHaveLength(3);
      expect(fake.maxConcurrent()).toBe(1);
      expect((await runner.list()).sort()).toEqual(['agent-a', 'agent-b', 'agent-c']);
    });

    it('a caller that gives up while queued never runs, and does not let the next overtake', async () => {
      const { fake, runner } = setup();
      await runner.up('agent-a', program, {});
      const hanging = fake.hangNext();
      const first = new AbortController();
      const running = runner.up('agent-a', program, {}, { signal: first.signal });
      await hanging;
      const second = new AbortController();
      const queued = runner.up('agent-b', program, {}, { signal: second.signal });
      const third = runner.up('agent-c', program, {});
      second.abort();
      expect((await rejection(queued)).code).toBe('aborted');
      expect(fake.stacks.has('agent-c')).toBe(false);
      first.abort();
      expect((await rejection(running)).code).toBe('aborted');
      await third;
      expect(fake.stacks.has('agent-b')).toBe(false);
      expect(fake.stacks.has('agent-c')).toBe(true);
      expect(fake.maxConcurrent()).toBe(1);
    });
  });

  it('maps CLI failures to codes with retry semantics', async () => {
    const cases: [string, ErrorCode, 'retry' | 'permanent'][] = [
      [
        'error: creating server: rate limit exceeded (rate_limit_exceeded, 7f3a2c1d)',
        'provider_rate_limited',
        'retry',
      ],
      ['error: creating server: unable to authenticate (unauthorized)', 'provider_rejected', 'permanent'],
      ['error: server type cx23 unavailable here (resource_unavailable)', 'provider_rejected', 'permanent'],
      ['error: spawn pulumi ENOENT', 'config_invalid', 'permanent'],
      ['error: constructing secrets manager: incorrect passphrase', 'config_invalid', 'permanent'],
      ['error: program failed: something odd', 'stack_failed', 'retry'],
    ];
    for (const [stderr, code, retry] of cases) {
      const { fake, runner } = setup();
      fake.failNext('up', stderr);
      const err = await rejection(runner.up('agent-a', program, {}));
      expect([stderr, err.code, classify(err)]).toEqual([stderr, code, retry]);
    }
  });

  it('refuses a deadline as long as the stale-lock age', () => {
    const fake = makeFakeWorkspace();
    const log = capture().log;
    expect(() =>
      makeStackRunner({ workspace: fake.workspace, log, staleLockMs: 60_000, timeoutMs: 60_000 }),
    ).toThrow(/shorter than PULUMI_STALE_LOCK_MS/);
    expect(operationTimeoutMs(60_000)).toBe(30_000);
    expect(operationTimeoutMs(30 * 60_000)).toBe(15 * 60_000);
  });
});
