import {
  CommandError,
  ConcurrentUpdateError,
  StackAlreadyExistsError,
  StackNotFoundError,
} from '@pulumi/pulumi/automation';
import { OrchestratorError, type ErrorCode } from '../errors';

/**
 * Turns what the Automation API throws into the project's error codes, and so into retry
 * semantics (`classify`): a locked stack, a rate limit or a Hetzner outage is retried; a refused
 * token, an invalid request or a missing CLI is not.
 */

/** Hetzner API error codes (hcloud-go prints them as `message (code)` or `message (code, correlation id)`). */
const HCLOUD_RATE_LIMITED = new Set(['rate_limit_exceeded']);
const HCLOUD_PERMANENT = new Set([
  'unauthorized',
  'forbidden',
  'token_readonly',
  'invalid_input',
  'json_error',
  'uniqueness_error',
  'resource_limit_exceeded',
  'protected',
  'unsupported_error',
  'not_found',
]);
const HCLOUD_TRANSIENT = new Set([
  'server_error',
  'service_error',
  'unavailable',
  'maintenance',
  'timeout',
  'locked',
  'conflict',
  'resource_unavailable',
  'placement_error',
]);
const HCLOUD_CODE = /\(([a-z_]+)(?:, [0-9a-f-]+)?\)/g;

/** The Hetzner error codes mentioned in a command's output, in order. */
export const hcloudCodes = (text: string): string[] => [...text.matchAll(HCLOUD_CODE)].map((m) => m[1] ?? '');

/**
 * The lines of the CLI's output that say what went wrong, short enough for an error message.
 * Pulumi prints secret values as `[secret]`; these lines never carry the program's inputs.
 */
export const errorSummary = (text: string, max = 400): string => {
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /error|\*|failed|refused|denied/i.test(l) && !/^(code|stdout|stderr|err\?):\s*$/.test(l));
  const summary = lines.slice(-4).join(' | ');
  return summary.length > max ? `${summary.slice(0, max)}…` : summary;
};

const err = (code: ErrorCode, message: string, cause: unknown): OrchestratorError =>
  new OrchestratorError(code, message, { cause });

export const mapStackError = (error: unknown, ctx: { stack: string; op: string }): OrchestratorError => {
  if (error instanceof OrchestratorError) return error;
  const where = `pulumi ${ctx.op} of stack ${ctx.stack}`;
  if (error instanceof ConcurrentUpdateError)
    return err('stack_locked', `${where}: the stack is locked by another operation; retry later`, error);
  if (error instanceof StackNotFoundError) return err('stack_not_found', `${where}: no such stack`, error);
  if (error instanceof StackAlreadyExistsError)
    return err('conflict', `${where}: the stack was created concurrently; retry`, error);
  if (!(error instanceof CommandError))
    return err('internal', `${where}: ${error instanceof Error ? error.message : String(error)}`, error);

  const text = error.message;
  const detail = errorSummary(text);
  if (/spawn pulumi ENOENT|pulumi: (command )?not found/.test(text))
    return err(
      'config_invalid',
      `${where}: the Pulumi CLI is not on PATH; run \`npm run cortexctl -- doctor\``,
      error,
    );
  if (/passphrase must be set|incorrect passphrase|PULUMI_CONFIG_PASSPHRASE/i.test(text))
    return err(
      'config_invalid',
      `${where}: the stack's secrets cannot be decrypted; check PULUMI_CONFIG_PASSPHRASE`,
      error,
    );

  const codes = hcloudCodes(text);
  const rateLimited = codes.find((c) => HCLOUD_RATE_LIMITED.has(c));
  if (rateLimited)
    return err(
      'provider_rate_limited',
      `${where}: Hetzner rate limit reached (${rateLimited}); ${detail}`,
      error,
    );
  const permanent = codes.find((c) => HCLOUD_PERMANENT.has(c));
  if (permanent) {
    const hint = permanent === 'unauthorized' || permanent === 'token_readonly' ? '; check HCLOUD_TOKEN' : '';
    return err(
      'provider_rejected',
      `${where}: Hetzner rejected the request (${permanent})${hint}; ${detail}`,
      error,
    );
  }
  const transient = codes.find((c) => HCLOUD_TRANSIENT.has(c));
  if (transient)
    return err('provider_unavailable', `${where}: Hetzner is unavailable (${transient}); ${detail}`, error);
  if (/ECONNRESET|ECONNREFUSED|ETIMEDOUT|EAI_AGAIN|connection reset|i\/o timeout|\b50[234]\b/.test(text))
    return err('provider_unavailable', `${where}: network or backend unavailable; ${detail}`, error);
  return err('stack_failed', `${where} failed; ${detail || 'see the operation log'}`, error);
};
