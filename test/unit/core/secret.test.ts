import { inspect } from 'node:util';
import { isSecret, Secret } from '../../../orchestrator/secret';
import { canary } from '../../support/canary';

/** The wrapper's whole contract, each way a value could leak tried (mutation testing's target). */
describe('Secret', () => {
  it('reveals exactly its value, the empty string included', () => {
    const v = canary();
    expect(new Secret(v).reveal()).toBe(v);
    expect(new Secret('').reveal()).toBe('');
    // two secrets never share a value
    expect(new Secret('a').reveal()).not.toBe(new Secret('b').reveal());
  });

  it('prints [REDACTED] through every path: String, template, JSON, inspect, console formatting', () => {
    const v = canary();
    const s = new Secret(v);
    expect(String(s)).toBe('[REDACTED]');
    expect(`${s}`).toBe('[REDACTED]');
    expect(s.toString()).toBe('[REDACTED]');
    expect(s.toJSON()).toBe('[REDACTED]');
    expect(JSON.stringify({ s })).toBe('{"s":"[REDACTED]"}');
    expect(inspect(s)).toBe('[REDACTED]');
    expect(inspect({ deep: { s } }, { depth: 5 })).toBe('{ deep: { s: [REDACTED] } }');
    expect(Object.keys(s)).toEqual([]);
    expect(JSON.stringify({ ...s })).toBe('{}');
    expect(structuredClone({ s }).s).not.toHaveProperty('reveal', expect.anything());
  });

  it('an object that only claims to be a Secret has no value', () => {
    const fake = Object.create(Secret.prototype) as Secret;
    expect(() => fake.reveal()).toThrow(new Error('Secret has no value'));
  });

  it('isSecret is true for a Secret only', () => {
    expect(isSecret(new Secret('x'))).toBe(true);
    for (const v of ['x', { reveal: () => 'x' }, null, undefined, 1]) expect(isSecret(v)).toBe(false);
  });
});
