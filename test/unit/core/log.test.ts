import { Writable } from 'node:stream';
import { inspect } from 'node:util';
import { makeLogger } from '../../../orchestrator/log';
import { Secret } from '../../../orchestrator/secret';
import { canary } from '../../support/canary';

const capture = () => {
  const chunks: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      chunks.push(chunk.toString());
      cb();
    },
  });
  return { stream, text: () => chunks.join('') };
};

describe('logging never prints a secret', () => {
  it('redacts a Secret nested in an object, in an array and as a message argument', () => {
    const key = canary('anthropic');
    const out = capture();
    const log = makeLogger({ level: 'info' }, out.stream);
    log.child({ deploymentId: 'd1' }).info(
      {
        job: {
          secrets: [{ envVar: 'ANTHROPIC_API_KEY', value: new Secret(key) }],
          extra: { nested: new Secret(key) },
        },
      },
      'read %s',
      new Secret(key),
    );
    const text = out.text();
    expect(text).toContain('ANTHROPIC_API_KEY');
    expect(text).toContain('[REDACTED]');
    expect(text).not.toContain(key);
  });

  it('censors plain strings at known secret paths (second layer)', () => {
    const key = canary('openai');
    const out = capture();
    const log = makeLogger({ level: 'info' }, out.stream);
    log.info(
      { secret: key, args: { p_value: key }, req: { headers: { authorization: `Bearer ${key}` } } },
      'x',
    );
    expect(out.text()).not.toContain(key);
    expect(out.text()).toContain('[REDACTED]');
  });

  it('the Secret wrapper hides its value from every printer but reveal()', () => {
    const key = canary('other');
    const s = new Secret(key);
    expect(String(s)).toBe('[REDACTED]');
    expect(`${s}`).toBe('[REDACTED]');
    expect(JSON.stringify({ s })).toBe('{"s":"[REDACTED]"}');
    expect(inspect({ deep: { s } }, { depth: 10, showHidden: true })).not.toContain(key);
    expect(Object.keys(s)).toEqual([]);
    expect(s.reveal()).toBe(key);
  });
});
