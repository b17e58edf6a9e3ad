import { inspect } from 'node:util';

const REDACTED = '[REDACTED]';
const values = new WeakMap<Secret, string>();

/**
 * A secret value in transit. Printing, JSON-serialising or inspecting it yields `[REDACTED]`;
 * only code that must hand the value to its destination (the env-file writer, the SSH client)
 * calls `reveal()`.
 */
export class Secret {
  constructor(value: string) {
    // Kept outside the object so that no enumeration, spread or structured clone can reach it.
    values.set(this, value);
  }
  reveal(): string {
    const v = values.get(this);
    if (v === undefined) throw new Error('Secret has no value');
    return v;
  }
  toString(): string {
    return REDACTED;
  }
  toJSON(): string {
    return REDACTED;
  }
  [inspect.custom](): string {
    return REDACTED;
  }
}

export const isSecret = (v: unknown): v is Secret => v instanceof Secret;
