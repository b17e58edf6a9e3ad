import { createHmac, randomBytes } from 'node:crypto';
import { renderEnvFile } from '../../../orchestrator/remote/env-file';
import { swapCommands } from '../../../orchestrator/remote/swap-commands';
import { Secret } from '../../../orchestrator/secret';
import { SwapCleanupError } from '../../../orchestrator/steps/agent-swap';
import { slotEnvFilePath } from '../../../templates/agent-slots';
import { makeSwapHost, swapOn, type SwapHost } from '../../support/fake-swap-host';

/**
 * A swap that finds its environment already running (a re-run after a cut) checks the running
 * process by digests and rewrites the serving slot's env file (review R16 finding 1); reviews R17
 * findings 2-4 attacked the edges of that: a restart between the look and the rewrite, a rewrite
 * that fails, and a stale instance in the idle slot that does not stop.
 */
const keyFile = (v: string): Buffer =>
  Buffer.from(renderEnvFile([{ name: 'ANTHROPIC_API_KEY', value: new Secret(v) }]).reveal(), 'utf8');
/** A slot's env file holding `v`, root 0600, as a cut write or a stale instance left it. */
const putKeyFile = (h: SwapHost, slot: 'blue' | 'green', v: string): void =>
  void h.fake.files.set(slotEnvFilePath(slot), { content: keyFile(v), mode: 0o600, uid: 0, gid: 0 });
/** The key the unit's running process holds, by the helper's digests (as the swap reads them). */
const runningKey = async (h: SwapHost, unit: string, candidates: string[]): Promise<string | undefined> => {
  const nonce = randomBytes(32);
  const r = await h.fake.shell.exec(swapCommands.unitDigests(unit), {
    stdin: `${nonce.toString('hex')}\n`,
  });
  const line = r.stdout
    .toString()
    .split('\n')
    .find((l) => l.startsWith('ANTHROPIC_API_KEY '));
  const digest = line?.split(' ')[1];
  return candidates.find((c) => createHmac('sha256', nonce).update(c).digest('hex') === digest);
};

describe('a swap that finds its environment already running (reviews R16 F1, R17 F2-F4)', () => {
  it('a restart between its look and the rewrite (the unit re-read the old file): not known, thrown, never healthy on the old key (R17 F2)', async () => {
    const h = makeSwapHost();
    await swapOn(h, 'OLDKEY-xxxxxxxxxxxxxxxx', { mode: 'held-restart' });
    await swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx', { mode: 'held-restart' });
    // a cut restore put the old file back under the process running the new key
    putKeyFile(h, 'blue', 'OLDKEY-xxxxxxxxxxxxxxxx');
    // systemd restarts the unit right after the re-run's look (before its rewrite)
    const exec = h.shell.exec.bind(h.shell);
    let n = 0;
    h.shell.exec = async (argv, o) => {
      if (n++ === 1) await h.fake.shell.exec(['systemctl', 'restart', 'cortex-agent@blue.service']);
      return exec(argv, o);
    };
    await expect(swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx', { mode: 'held-restart' })).rejects.toThrow(
      /no longer runs the environment it was found running/,
    );
    expect(
      await runningKey(h, 'cortex-agent@blue.service', [
        'OLDKEY-xxxxxxxxxxxxxxxx',
        'NEWKEY-xxxxxxxxxxxxxxxx',
      ]),
    ).toBe('OLDKEY-xxxxxxxxxxxxxxxx');
    // the retry looks again: the process runs the old key, so it swaps for real and ends on the new one
    h.shell.exec = exec;
    expect(await swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx', { mode: 'held-restart' })).toMatchObject({
      healthy: true,
    });
    expect(
      await runningKey(h, 'cortex-agent@blue.service', [
        'OLDKEY-xxxxxxxxxxxxxxxx',
        'NEWKEY-xxxxxxxxxxxxxxxx',
      ]),
    ).toBe('NEWKEY-xxxxxxxxxxxxxxxx');
  });

  it('a crash-looping agent restarted right after the rewrite runs the new file: healthy, not refused (R18 F2: a check by pid refused it)', async () => {
    const h = makeSwapHost();
    await swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx', { mode: 'held-restart' });
    const exec = h.fake.shell.exec.bind(h.fake.shell);
    h.fake.shell.exec = async (argv, o) => {
      const r = await exec(argv, o);
      if (argv.includes('write-env')) await exec(['systemctl', 'restart', 'cortex-agent@blue.service']);
      return r;
    };
    expect(await swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx', { mode: 'held-restart' })).toMatchObject({
      healthy: true,
    });
    expect(
      await runningKey(h, 'cortex-agent@blue.service', [
        'OLDKEY-xxxxxxxxxxxxxxxx',
        'NEWKEY-xxxxxxxxxxxxxxxx',
      ]),
    ).toBe('NEWKEY-xxxxxxxxxxxxxxxx');
  });

  it('after the rewrite, a digests read that says "no process" while systemd does not answer either is not taken as no process: not known, thrown (R19 F1)', async () => {
    const h = makeSwapHost();
    await swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx', { mode: 'held-restart' });
    putKeyFile(h, 'blue', 'OLDKEY-xxxxxxxxxxxxxxxx');
    const exec = h.fake.shell.exec.bind(h.fake.shell);
    let written = false;
    h.fake.shell.exec = async (argv, o) => {
      const none = { code: 3, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) };
      if (argv.includes('write-env')) {
        // the unit restarted on the old file just before the rewrite
        await exec(['systemctl', 'restart', 'cortex-agent@blue.service']);
        written = true;
      } else if (written && argv[0] === 'python3' && argv[4] === 'digests') return none;
      else if (written && argv[0] === 'systemctl' && argv.includes('--property=MainPID'))
        return { code: 1, stdout: Buffer.alloc(0), stderr: Buffer.from('Failed to connect to bus\n') };
      return exec(argv, o);
    };
    await expect(swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx', { mode: 'held-restart' })).rejects.toThrow(
      /is not known \(digests exit 3\)/,
    );
  });

  it('no restart: the rewrite replaces the old file and the swap is healthy (R16 F1)', async () => {
    const h = makeSwapHost();
    await swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx', { mode: 'held-restart' });
    putKeyFile(h, 'blue', 'OLDKEY-xxxxxxxxxxxxxxxx');
    expect(await swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx', { mode: 'held-restart' })).toMatchObject({
      healthy: true,
    });
    expect(h.fake.files.get(slotEnvFilePath('blue'))?.content.toString()).not.toContain('OLDKEY');
  });

  it('a rewrite that fails is a clean-up not verified (SwapCleanupError), not a plain failure: the process runs the requested environment (R17 F3)', async () => {
    const h = makeSwapHost();
    await swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx');
    const exec = h.fake.shell.exec.bind(h.fake.shell);
    h.fake.shell.exec = (argv, o) =>
      argv.includes('write-env')
        ? Promise.resolve({ code: 1, stdout: Buffer.alloc(0), stderr: Buffer.from('OSError\n') })
        : exec(argv, o);
    const err = await swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(SwapCleanupError);
    // the serving slot's own file may be stale: not a clean switch for the caller (R18 F3)
    expect((err as SwapCleanupError).servingFileStale).toBe(true);
    expect((err as SwapCleanupError).mode).toBe('blue-green');
  });

  it('a stale instance in the idle slot that does not stop: thrown before anything is written or started, never healthy on it (R17 F4)', async () => {
    const h = makeSwapHost({ stopFails: 'cortex-agent@green.service' });
    // green runs a stale environment (a discard that failed), its env file gone
    putKeyFile(h, 'green', 'STALEKEY-xxxxxxxxxxxxxxx');
    await h.fake.shell.exec(['systemctl', 'start', 'cortex-agent@green.service']);
    h.fake.files.delete(slotEnvFilePath('green'));
    // systemd's `start` of an active unit does nothing (the fake's would re-read the file)
    const exec = h.fake.shell.exec.bind(h.fake.shell);
    h.fake.shell.exec = (argv, o) =>
      argv[0] === 'systemctl' && argv[1] === 'start' && h.active.has(argv[argv.length - 1] ?? '')
        ? Promise.resolve({ code: 0, stdout: Buffer.alloc(0), stderr: Buffer.alloc(0) })
        : exec(argv, o);
    await expect(swapOn(h, 'NEWKEY-xxxxxxxxxxxxxxxx')).rejects.toThrow(
      /slot green did not stop before its start/,
    );
    expect(h.route()).not.toBe(undefined);
    expect(h.fake.files.has(slotEnvFilePath('green'))).toBe(false);
    expect(
      await runningKey(h, 'cortex-agent@green.service', [
        'STALEKEY-xxxxxxxxxxxxxxx',
        'NEWKEY-xxxxxxxxxxxxxxxx',
      ]),
    ).toBe('STALEKEY-xxxxxxxxxxxxxxx');
  });
});
