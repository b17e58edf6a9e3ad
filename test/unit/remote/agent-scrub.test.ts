import { OrchestratorError } from '../../../orchestrator/errors';
import { scrubAgentEnvironment } from '../../../orchestrator/steps/agent-swap';
import { ACTIVE_SLOT_PATH, slotEnvFilePath } from '../../../templates/agent-slots';
import { makeSwapHost } from '../../support/fake-swap-host';

/**
 * scrubAgentEnvironment (issue 11): a failed deployment's host loses every agent environment
 * before its retry writes the current one: both slots stopped, every slot env file, kept previous
 * file and temp file of a cut write removed, checked by listing; the record stays.
 */
const file = (content: string) => ({ content: Buffer.from(content), mode: 0o600, uid: 0, gid: 0 });

describe('scrubAgentEnvironment', () => {
  it('stops both slots and removes every env file, previous file and temp file; the record stays', async () => {
    const h = makeSwapHost();
    h.fake.files.set(`${slotEnvFilePath('blue')}.previous`, file('K=older\n'));
    h.fake.files.set(slotEnvFilePath('green'), file('K=green\n'));
    h.fake.files.set('/etc/cortex/.agent-green.env.tmp-0123456789abcdef', file('K=cut\n'));
    expect(h.active.has('cortex-agent@blue.service')).toBe(true);
    await scrubAgentEnvironment(h.shell);
    expect(h.active.has('cortex-agent@blue.service')).toBe(false);
    expect(h.active.has('cortex-agent@green.service')).toBe(false);
    expect([...h.fake.files.keys()].filter((k) => k.startsWith('/etc/cortex/'))).toEqual([ACTIVE_SLOT_PATH]);
  });

  it('a slot that does not stop: refused before any file is removed', async () => {
    const h = makeSwapHost();
    h.fake.on('systemctl', (argv) => ({
      code: argv.includes('stop') ? 1 : 0,
      stdout: Buffer.alloc(0),
      stderr: Buffer.alloc(0),
    }));
    const err = await scrubAgentEnvironment(h.shell).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OrchestratorError);
    expect((err as Error).message).toMatch(/did not stop/);
    expect(h.fake.files.has(slotEnvFilePath('blue'))).toBe(true);
  });

  it('a file that stays (rm refused): reported, not taken as done', async () => {
    const h = makeSwapHost();
    h.fake.on('rm', () => ({ code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) }));
    await expect(scrubAgentEnvironment(h.shell)).rejects.toThrow(/agent env file\(s\) left in \/etc\/cortex/);
  });
});
