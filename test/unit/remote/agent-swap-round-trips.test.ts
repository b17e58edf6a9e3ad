import { slotEnvFilePath } from '../../../templates/agent-slots';
import { GREEN_PORT, makeSwapHost, swapOn, type SwapHost } from '../../support/fake-swap-host';

/**
 * The rotation benchmark's lever (issue 11): a swap's cost on a loaded host was its SSH round
 * trips (each one an sshd session: fork, PAM, a login shell). The swap sends each phase as ONE
 * batch (swapCommands.batch), polls on the host, and writes the env file over SFTP. Counted here on
 * the recording shell, so that a step sent on its own again fails this test. Now 4 for a fresh
 * blue/green swap (the env file rides the start batch's standard input). Before the batches, the
 * same blue/green swap on the same model took 29 round trips: 26 commands and 3 SFTP writes
 * (agent-swap.ts at 44beff9 against this fake host, whose health check answers at the first probe;
 * on a real host every further health probe cost 3 more, every drain probe 1 more).
 */
const swap = (h: SwapHost, v: string, mode?: 'held-restart') => swapOn(h, v, mode ? { mode } : {});
const kinds = (h: SwapHost) => h.sent.map((c) => c[0]);

describe('round trips per swap', () => {
  it('blue/green from scratch: 4 (look; env file + start + health + port owner; route + HTTPS check; settle)', async () => {
    const h = makeSwapHost();
    expect(await swap(h, 'sk-new')).toEqual({ mode: 'blue-green', healthy: true, slot: 'green' });
    expect(kinds(h)).toEqual(['batch', 'batch', 'batch', 'batch']);
    expect(h.sent.length).toBeLessThanOrEqual(4);
    // the env file was written on the host from the batch's standard input, not on a command line
    expect(h.fake.files.get(slotEnvFilePath('green'))?.content.toString()).toContain(
      'ANTHROPIC_API_KEY="sk-new"',
    );
    expect(h.fake.commandLines.join('\n')).not.toContain('sk-new');
    // every phase's commands still ran, on the host, in order
    const inner = h.fake.calls.map((c) =>
      (c[0] === 'python3' ? [...c.slice(0, 3), ...c.slice(4)] : c).join(' '),
    );
    const order = [
      'python3 -I -c write-env green',
      'systemctl start cortex-agent@green.service',
      `ss -H -l -t -n -p ( sport = :${GREEN_PORT} )`,
      'systemctl enable --no-reload cortex-agent@green.service',
      'systemctl restart cortex-upstream.service',
      'systemctl disable --no-reload cortex-agent@blue.service',
      'systemctl stop cortex-agent@blue.service',
      'rm -f -- /etc/cortex/agent-blue.env /etc/cortex/agent-blue.env.previous /etc/cortex/agent-green.env.previous',
    ].map((c) => inner.indexOf(c));
    expect(order.every((i) => i >= 0)).toBe(true);
    expect([...order].sort((a, b) => a - b)).toEqual(order);
  });

  it('a re-run with the environment already serving: 4 (look, its env file rewritten, its process checked again, settle + HTTPS check), nothing restarted', async () => {
    const h = makeSwapHost();
    await swap(h, 'sk-new');
    h.sent.length = 0;
    const calls = h.fake.calls.length;
    expect(await swap(h, 'sk-new')).toEqual({ mode: 'blue-green', healthy: true, slot: 'green' });
    // the rewrite and the check after it (reviews R16 F1, R17 F2, R18 F2): the rare path only
    expect(kinds(h)).toEqual(['batch', 'batch', 'batch', 'batch']);
    expect(h.fake.calls.slice(calls).map((c) => c.join(' '))).not.toContain(
      'systemctl start cortex-agent@green.service',
    );
  });

  it('an unhealthy new slot: 3 (look; env file + start + health wait; discard), traffic stays', async () => {
    const h = makeSwapHost({ deaf: 'cortex-agent@green.service' });
    const r = await swap(h, 'sk-new');
    expect(r).toMatchObject({ mode: 'blue-green', healthy: false, slot: 'blue' });
    expect(r.reason).toMatch(/cortex-agent@green\.service was not healthy on port 18791 within 2 s/);
    expect(kinds(h)).toEqual(['batch', 'batch', 'batch']);
    expect(h.route()).not.toBe(GREEN_PORT);
    expect(h.fake.files.has(slotEnvFilePath('green'))).toBe(false);
  });

  it('held restart: 3 (look; keep the old file + env file + restart + health + HTTPS check; settle)', async () => {
    const h = makeSwapHost();
    expect(await swap(h, 'sk-held', 'held-restart')).toEqual({
      mode: 'held-restart',
      healthy: true,
      slot: 'blue',
    });
    expect(kinds(h)).toEqual(['batch', 'batch', 'batch']);
  });

  it('through the helper session (the SSH adapter): one python3 on the host for the whole swap, the same 4 batches, the same commands in the same order, and the session ended', async () => {
    const plain = makeSwapHost();
    await swap(plain, 'sk-new');
    const h = makeSwapHost({ session: true });
    expect(await swap(h, 'sk-new')).toEqual({ mode: 'blue-green', healthy: true, slot: 'green' });
    expect(kinds(h)).toEqual(['session', 'ask', 'ask', 'ask', 'ask']);
    expect(h.sent.slice(1).map((x) => x.slice(1))).toEqual(plain.sent.map((x) => x.slice(1)));
    expect(h.fake.calls.map((c) => c.join(' '))).toEqual(plain.fake.calls.map((c) => c.join(' ')));
    expect(h.openSessions()).toBe(0);
    // the env file still came from the request's standard input, never a command line
    expect(h.fake.files.get(slotEnvFilePath('green'))?.content.toString()).toContain(
      'ANTHROPIC_API_KEY="sk-new"',
    );
    expect(h.fake.commandLines.join('\n')).not.toContain('sk-new');
  });

  it('through the session, a swap that fails still ends its session (the host lock is released)', async () => {
    const h = makeSwapHost({ session: true, deaf: 'cortex-agent@green.service' });
    expect(await swap(h, 'sk-new')).toMatchObject({ healthy: false, slot: 'blue' });
    expect(kinds(h)).toEqual(['session', 'ask', 'ask', 'ask']);
    expect(h.openSessions()).toBe(0);
  });

  it('a session whose helper is gone (idle limit, killed) before a request: that batch and the rest run as their own commands, and the swap completes', async () => {
    const h = makeSwapHost({ session: true, sessionDiesAfter: 1 });
    expect(await swap(h, 'sk-new')).toEqual({ mode: 'blue-green', healthy: true, slot: 'green' });
    expect(kinds(h)).toEqual(['session', 'ask', 'ask (helper gone)', 'batch', 'batch', 'batch']);
    expect(h.fake.files.get(slotEnvFilePath('green'))?.content.toString()).toContain(
      'ANTHROPIC_API_KEY="sk-new"',
    );
  });
});
