import { OrchestratorError } from '../../../orchestrator/errors';
import { SwapCleanupError, type AgentSwapOptions } from '../../../orchestrator/steps/agent-swap';
import { slotEnvFilePath } from '../../../templates/agent-slots';
import { makeSwapHost, swapOn, type SwapHost } from '../../support/fake-swap-host';

/**
 * Review R8 #6: a swap's clean-up of the old slot is checked, not assumed. The old instance holds
 * the old environment in memory and its env file holds it on disk; a swap that leaves either must
 * not say it is done (the rotation would retire the old version with the value still on the host).
 */
const swap = (h: SwapHost, v: string, o: AgentSwapOptions = {}) => swapOn(h, v, { soakSeconds: 0, ...o });
const rmCalls = (h: SwapHost): string[][] => h.fake.calls.filter((c) => c[0] === 'rm');

describe("the old slot's clean-up after a swap", () => {
  it('a clean swap removes the old env file and says so (the control)', async () => {
    const h = makeSwapHost();
    expect(await swap(h, 'sk-new')).toEqual({ mode: 'blue-green', healthy: true, slot: 'green' });
    expect(h.fake.files.has(slotEnvFilePath('blue'))).toBe(false);
  });

  it('an rm that answers 0 but leaves the file: removed again, and a swap that cannot throws, naming the file', async () => {
    const h = makeSwapHost();
    h.fake.on('rm', () => ({ code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) }));
    const err = await swap(h, 'sk-new').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrchestratorError);
    expect((err as OrchestratorError).code).toBe('remote_command_failed');
    expect((err as Error).message).toBe("the old slot's env file could not be removed: agent-blue.env");
    expect(h.fake.files.has(slotEnvFilePath('blue'))).toBe(true);
    // tried twice: the discard, then once more by name
    expect(rmCalls(h).filter((c) => c.includes(slotEnvFilePath('blue')))).toHaveLength(2);
  });

  it('an rm that fails once is tried again, and the swap is done when the second one works', async () => {
    const h = makeSwapHost();
    let first = true;
    h.fake.on('rm', (argv) => {
      if (first) {
        first = false;
        return { code: 1, stdout: Buffer.alloc(0), stderr: Buffer.from('rm: Input/output error\n') };
      }
      for (const p of argv.slice(argv.indexOf('--') + 1)) h.fake.files.delete(p);
      return { code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
    });
    expect(await swap(h, 'sk-new')).toEqual({ mode: 'blue-green', healthy: true, slot: 'green' });
    expect(h.fake.files.has(slotEnvFilePath('blue'))).toBe(false);
  });

  it('the temp file of a cut env write that stays is no clean-up either (review R10 F3)', async () => {
    const h = makeSwapHost();
    const temp = `/etc/cortex/.agent-green.env.tmp-${'a'.repeat(16)}`;
    h.fake.files.set(temp, { content: Buffer.from('K=cut\n'), mode: 0o600, uid: 0, gid: 0 });
    h.fake.on('rm', (argv) => {
      for (const p of argv.slice(argv.indexOf('--') + 1)) if (p !== temp) h.fake.files.delete(p);
      return { code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
    });
    const err = await swap(h, 'sk-new').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SwapCleanupError);
    expect((err as SwapCleanupError).mode).toBe('blue-green');
    expect((err as Error).message).toContain('.agent-green.env.tmp-');
  });

  it('held restart: a kept previous file that stays, or the other slot not stopping, is no clean-up (review R10 F4)', async () => {
    const h = makeSwapHost();
    h.fake.on('rm', () => ({ code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) }));
    const err = await swap(h, 'sk-new', { mode: 'held-restart' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SwapCleanupError);
    expect((err as SwapCleanupError).mode).toBe('held-restart');
    expect((err as Error).message).toBe(
      "the old slot's env file could not be removed: agent-blue.env.previous",
    );
    const h2 = makeSwapHost({ stopFails: 'cortex-agent@green.service' });
    await expect(swap(h2, 'sk-new', { mode: 'held-restart' })).rejects.toThrow(/^slot green did not stop/);
  });

  it('an old instance that did not stop: the swap throws (it still holds the old environment)', async () => {
    const h = makeSwapHost({ stopFails: 'cortex-agent@blue.service' });
    const err = await swap(h, 'sk-new').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrchestratorError);
    expect((err as Error).message).toMatch(/^slot blue did not stop \(exit 1\)/);
  });

  it('a re-run after such a failure settles: the file removed, the swap done', async () => {
    const h = makeSwapHost();
    let broken = true;
    h.fake.on('rm', (argv) => {
      if (!broken) for (const p of argv.slice(argv.indexOf('--') + 1)) h.fake.files.delete(p);
      return { code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
    });
    await expect(swap(h, 'sk-new')).rejects.toThrow(/could not be removed/);
    broken = false;
    expect(await swap(h, 'sk-new')).toEqual({ mode: 'blue-green', healthy: true, slot: 'green' });
    expect(h.fake.files.has(slotEnvFilePath('blue'))).toBe(false);
  });
});
