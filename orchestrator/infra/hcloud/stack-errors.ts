import {
  CommandError,
  ConcurrentUpdateError,
  StackAlreadyExistsError,
  StackNotFoundError,
} from '@pulumi/pulumi/automation';
import { OrchestratorError, type ErrorCode } from '../../errors';
import { makeScrubber } from './pulumi-output-log';

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
  // A server type or location that is not offered (sold out, deprecated, disabled): no retry brings
  // it back within a job's life; the deployment must be requested with another one.
  'resource_unavailable',
  // The zone is a secondary zone (or otherwise not in the mode the request needs): a configuration
  // problem of the DNS zone, never fixed by waiting.
  'incorrect_zone_mode',
  'deprecated_api_endpoint',
]);
const HCLOUD_TRANSIENT = new Set([
  'server_error',
  'service_error',
  'unavailable',
  'maintenance',
  'timeout',
  'locked',
  'conflict',
  'placement_error',
]);
const UNKNOWN_NAME =
  /\b(server type|image|location|datacenter) ["']?[\w.-]+["']? (was )?(not found|is unavailable|is not available|is deprecated)/i;
const HCLOUD_CODE = /\(([a-z_]+)(?:, [0-9a-f-]+)?\)/g;

/** The Hetzner error codes mentioned in a command's output, in order. */
export const hcloudCodes = (text: string): string[] => [...text.matchAll(HCLOUD_CODE)].map((m) => m[1] ?? '');

/**
 * The lines of the CLI's output that say what went wrong, short enough for an error message.
 * Pulumi prints secret values as `[secret]`, but the CLI may echo other text (a failing command's
 * arguments, a provider's response): callers pass text already scrubbed (`mapStackError`).
 */
export const errorSummary = (text: string, max = 400): string => {
  const lines = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /error|\*|failed|refused|denied/i.test(l) && !/^(code|stdout|stderr|err\?):\s*$/.test(l));
  const summary = lines.slice(-4).join(' | ');
  return summary.length > max ? `${summary.slice(0, max)}…` : summary;
};

const scrubbedCopy = (error: Error, scrub: (text: string) => string): Error => {
  const copy = new Error(scrub(error.message));
  copy.name = error.name;
  copy.stack = error.stack === undefined ? undefined : scrub(error.stack);
  return copy;
};

/** Where an operation failed, and the values its output must not reveal. */
export interface StackErrorContext {
  readonly stack: string;
  readonly op: string;
  /** The same values the streamed output scrubs (`StackOpOptions.redact`). */
  readonly redact?: readonly string[];
}

/**
 * The SDK's error never becomes the `cause`: its message is the CLI's whole stdout and stderr, and
 * pino's err serializer prints a cause's message. The mapped error carries only scrubbed lines.
 */
export const mapStackError = (error: unknown, ctx: StackErrorContext): OrchestratorError => {
  if (error instanceof OrchestratorError) return error;
  const scrub = makeScrubber(ctx.redact);
  const err = (code: ErrorCode, message: string): OrchestratorError => new OrchestratorError(code, message);
  const where = `pulumi ${ctx.op} of stack ${ctx.stack}`;
  if (error instanceof ConcurrentUpdateError)
    return err('stack_locked', `${where}: the stack is locked by another operation; retry later`);
  if (error instanceof StackNotFoundError) return err('stack_not_found', `${where}: no such stack`);
  if (error instanceof StackAlreadyExistsError)
    return err('conflict', `${where}: the stack was created concurrently; retry`);
  if (!(error instanceof CommandError)) {
    // Not the CLI's output, but scrubbed all the same; a copy keeps the stack for debugging and
    // drops any cause chain the original carried.
    const copy = error instanceof Error ? scrubbedCopy(error, scrub) : undefined;
    return new OrchestratorError('internal', `${where}: ${copy?.message ?? scrub(String(error))}`, {
      cause: copy,
    });
  }

  // Classified on the raw output; only the scrubbed output is quoted (scrubbed before it is cut
  // short, so no part of a secret survives at the cut).
  const text = error.message;
  const detail = errorSummary(scrub(text));
  if (/spawn pulumi ENOENT|pulumi: (command )?not found/.test(text))
    return err(
      'config_invalid',
      `${where}: the Pulumi CLI is not on PATH; run \`npm run cortexctl -- doctor\``,
    );
  if (/passphrase must be set|incorrect passphrase|PULUMI_CONFIG_PASSPHRASE/i.test(text))
    return err(
      'config_invalid',
      `${where}: the stack's secrets cannot be decrypted; check PULUMI_CONFIG_PASSPHRASE`,
    );

  // The provider looks names up before it calls the API and fails without a Hetzner code when one
  // is not offered (any more): the same permanent refusal as `resource_unavailable`.
  if (UNKNOWN_NAME.test(text))
    return err('provider_rejected', `${where}: Hetzner does not offer what the stack asks for; ${detail}`);

  const codes = hcloudCodes(text);
  const rateLimited = codes.find((c) => HCLOUD_RATE_LIMITED.has(c));
  if (rateLimited)
    return err('provider_rate_limited', `${where}: Hetzner rate limit reached (${rateLimited}); ${detail}`);
  const permanent = codes.find((c) => HCLOUD_PERMANENT.has(c));
  if (permanent) {
    const hint = permanent === 'unauthorized' || permanent === 'token_readonly' ? '; check HCLOUD_TOKEN' : '';
    return err(
      'provider_rejected',
      `${where}: Hetzner rejected the request (${permanent})${hint}; ${detail}`,
    );
  }
  const transient = codes.find((c) => HCLOUD_TRANSIENT.has(c));
  if (transient)
    return err('provider_unavailable', `${where}: Hetzner is unavailable (${transient}); ${detail}`);
  if (/ECONNRESET|ECONNREFUSED|ETIMEDOUT|EAI_AGAIN|connection reset|i\/o timeout|\b50[234]\b/.test(text))
    return err('provider_unavailable', `${where}: network or backend unavailable; ${detail}`);
  return err('stack_failed', `${where} failed; ${detail || 'see the operation log'}`);
};
