import { isOrchestratorError, TRANSIENT_SYSTEM_CODES } from '../errors';

/**
 * Whether a failed health-event write (deployment_events__record_health and
 * __record_rotation_health) is worth another try: only a database out of reach or timed out, a
 * serialization failure or a deadlock (mapDbError keeps the SQLSTATE in the message), or a
 * connection error. `db_error` alone is also what a missing function (42883) maps to, and
 * `internal` a missing grant: no retry fixes those, and retrying them in the revoke job would swap the
 * agent again and keep the key bound and in the vault for good (review R12 finding 1). Shared by the
 * revoke job (a retryable failure retries the deployment's revoke) and the rotation job (retried in
 * place, a few times).
 */
export const healthRetryable = (err: unknown): boolean => {
  if (isOrchestratorError(err))
    return (
      err.code === 'db_unavailable' ||
      err.code === 'timeout' ||
      (err.code === 'db_error' && /\(SQLSTATE (40001|40P01|57014)\)$/.test(err.message))
    );
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' && TRANSIENT_SYSTEM_CODES.has(code);
};

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/**
 * A health-event write tried again in place after each failure `healthRetryable` accepts, waiting
 * `waitsMs[i]` before retry i + 1 (no retry once `signal` is aborted). Never throws: the last
 * failure is returned for the caller to log.
 */
export const retryHealthWrite = async (
  write: () => Promise<unknown>,
  opts: { waitsMs: readonly number[]; signal: AbortSignal },
): Promise<{ ok: true } | { ok: false; err: unknown; retryable: boolean; attempts: number }> => {
  for (let attempt = 0; ; attempt++) {
    try {
      await write();
      return { ok: true };
    } catch (err) {
      const retryable = healthRetryable(err);
      const wait = opts.waitsMs[attempt];
      if (!retryable || wait === undefined || opts.signal.aborted)
        return { ok: false, err, retryable, attempts: attempt + 1 };
      await sleep(wait);
    }
  }
};
