import { slotEnvFilePath } from '../../../templates/agent-slots';
import { makeSwapHost, swapOn, type SwapHost } from '../../support/fake-swap-host';

/**
 * `keepUnhealthy` (a revoke that must take effect): a held restart whose agent is not healthy on
 * the new environment keeps that environment — no previous env file put back, the kept one removed
 * (it holds the withdrawn value) — and says so (`kept_unhealthy`). Without it the same swap puts
 * the old environment back, as every other swap does.
 */
const swap = swapOn;
const BLUE = slotEnvFilePath('blue');
const inner = (h: SwapHost): string[] =>
  h.fake.calls.map((c) => (c[0] === 'python3' ? ['python3', ...c.slice(4)] : c).join(' '));

describe('held restart with keepUnhealthy', () => {
  it('an agent that never answers on the new environment: kept (kept_unhealthy), the previous env file removed, not put back', async () => {
    const h = makeSwapHost({ deaf: 'cortex-agent@blue.service' });
    const r = await swap(h, 'sk-without', { mode: 'held-restart', keepUnhealthy: true });
    expect(r).toMatchObject({ mode: 'held-restart', healthy: false, code: 'kept_unhealthy', slot: 'blue' });
    expect(r.reason).toMatch(/cortex-agent@blue\.service was not healthy on port \d+ within 2 s/);
    expect(h.fake.files.get(BLUE)?.content.toString()).toContain('ANTHROPIC_API_KEY="sk-without"');
    expect(h.fake.files.has(`${BLUE}.previous`)).toBe(false);
    expect(inner(h)).not.toContain(`mv -f -- ${BLUE}.previous ${BLUE}`);
    expect(inner(h)).toContain(`rm -f -- ${BLUE}.previous`);
  });

  it('one that falls over during its soak: kept too, the previous env file removed', async () => {
    const h = makeSwapHost({ fallsOver: 'cortex-agent@blue.service' });
    const r = await swap(h, 'sk-without', { mode: 'held-restart', keepUnhealthy: true });
    expect(r).toMatchObject({ healthy: false, code: 'kept_unhealthy' });
    expect(h.fake.files.get(BLUE)?.content.toString()).toContain('sk-without');
    expect(h.fake.files.has(`${BLUE}.previous`)).toBe(false);
  });

  it('a healthy agent: the same clean result as without the option', async () => {
    const h = makeSwapHost();
    expect(await swap(h, 'sk-without', { mode: 'held-restart', keepUnhealthy: true })).toEqual({
      mode: 'held-restart',
      healthy: true,
      slot: 'blue',
    });
    expect(h.fake.files.has(`${BLUE}.previous`)).toBe(false);
  });

  it('without it (control): the same unhealthy agent gets the old environment back', async () => {
    const h = makeSwapHost({ deaf: 'cortex-agent@blue.service' });
    const r = await swap(h, 'sk-new', { mode: 'held-restart' });
    expect(r).toMatchObject({ healthy: false });
    expect(r.code).not.toBe('kept_unhealthy');
    expect(h.fake.files.get(BLUE)?.content.toString()).toBe('K=old\n');
  });

  it('refused with blue/green (it never keeps an unhealthy instance), naming the field, before anything is sent', async () => {
    const h = makeSwapHost();
    await expect(swap(h, 'sk-x', { keepUnhealthy: true })).rejects.toMatchObject({
      code: 'invalid_input',
      field: 'keepUnhealthy',
    });
    expect(h.sent).toEqual([]);
  });
});
