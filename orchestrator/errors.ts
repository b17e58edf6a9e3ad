/**
 * One error base for the whole orchestrator, a code union, a guard, and `classify`, which decides
 * retry semantics (BullMQ retries transient errors; permanent ones become UnrecoverableError).
 */
export type ErrorCode =
  | 'invalid_input'
  | 'config_invalid'
  | 'not_found'
  | 'conflict'
  | 'secret_denied'
  | 'audit_tampered'
  | 'db_error'
  | 'db_unavailable'
  | 'ssh_host_key_mismatch'
  | 'ssh_auth_failed'
  | 'ssh_connect_failed'
  | 'ssh_timeout'
  | 'remote_command_failed'
  | 'remote_file_unsafe'
  | 'stack_locked'
  | 'stack_not_found'
  | 'stack_failed'
  | 'provider_unavailable'
  | 'provider_rejected'
  | 'provider_rate_limited'
  | 'local_unsupported'
  | 'timeout'
  | 'aborted'
  | 'superseded'
  | 'internal';

export class OrchestratorError extends Error {
  override readonly name = 'OrchestratorError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    options?: { cause?: unknown; field?: string },
  ) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.field = options?.field;
  }
  /** For `invalid_input`: the name of the offending field, so an API can say which one. */
  readonly field: string | undefined;
}

export const isOrchestratorError = (err: unknown): err is OrchestratorError =>
  err instanceof OrchestratorError;

export const invalidInput = (field: string, message: string): OrchestratorError =>
  new OrchestratorError('invalid_input', `${field}: ${message}`, { field });

/** Codes that no retry can fix: bad input, a refused credential, a host that is not who it claims. */
export const PERMANENT_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'invalid_input',
  'config_invalid',
  'not_found',
  'secret_denied',
  // a log that fails verification stays failed until someone looks: an alarm, not a retry
  'audit_tampered',
  'ssh_host_key_mismatch',
  'ssh_auth_failed',
  'remote_file_unsafe',
  'provider_rejected',
  'local_unsupported',
  'aborted',
  // another worker took the operation over (its fencing token is newer): never retried here
  'superseded',
]);

/** Node/system error codes that mean "the network blinked": worth another try. */
export const TRANSIENT_SYSTEM_CODES: ReadonlySet<string> = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ETIMEDOUT',
  'EPIPE',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'EAI_AGAIN',
]);

export type Retry = 'retry' | 'permanent';

export const classify = (err: unknown): Retry => {
  if (isOrchestratorError(err)) return PERMANENT_CODES.has(err.code) ? 'permanent' : 'retry';
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === 'string' && TRANSIENT_SYSTEM_CODES.has(code)) return 'retry';
  // Unknown errors are retried: backoff bounds the cost, and a real bug surfaces as exhausted attempts.
  return 'retry';
};
