import { randomBytes } from 'node:crypto';

/**
 * A canary key generated at run time: shaped like a provider key so redaction and greps treat it
 * as one, unique per call so a hit can only come from this run.
 */
export const canary = (provider: 'anthropic' | 'openai' | 'other' = 'anthropic'): string => {
  const body = randomBytes(24).toString('base64url');
  const prefix =
    provider === 'anthropic' ? 'sk-ant-canary-' : provider === 'openai' ? 'sk-canary-' : 'canary-';
  return `${prefix}${body}`;
};
