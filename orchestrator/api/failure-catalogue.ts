import type { ErrorCode } from '../errors';
import type { ApiPrincipal } from './api-tokens';

/**
 * What a customer is told about a failed step (review R15 finding 7). A stored failure reason is
 * the runner's `code: message` (reasonOf): the message may quote a provider's answer, a Pulumi
 * summary, a host name, an address or a port, and the API's deployment answers go to the
 * onboarding app, i.e. to the customer. So the API shows the code and one fixed sentence per
 * code from this catalogue, and the full text only to an ops token with `admin` (the scope that
 * already sees the same text in the queue dashboard). `cortexctl status <id>` and the worker's
 * log show it too.
 *
 * `Record<ErrorCode, …>`: a new code without a sentence does not compile.
 */
export const FAILURE_MESSAGES: Readonly<Record<ErrorCode | 'unexpected', string>> = {
  invalid_input: 'A setting of this deployment was not accepted.',
  config_invalid: 'The platform is not configured for this operation; contact support.',
  not_found: 'Something this step needed no longer exists, such as a key that was removed.',
  conflict: 'Another change to this deployment was in progress; retry the deployment.',
  secret_denied: 'A key bound to this deployment could not be read for it; check that it is still active.',
  audit_tampered: 'An integrity check failed, so the operation was stopped; contact support.',
  db_error: 'An internal storage error interrupted this step.',
  db_unavailable: 'Internal storage was briefly unavailable.',
  ssh_host_key_mismatch: 'The server did not prove its identity, so nothing was sent to it.',
  ssh_auth_failed: 'The platform could not log in to the server.',
  ssh_connect_failed: 'The server could not be reached.',
  ssh_timeout: 'The server did not answer in time.',
  remote_command_failed: 'A setup command on the server failed.',
  remote_file_unsafe: 'A file on the server had an unexpected owner or mode, so no key was written.',
  stack_locked: "Another operation on the server's infrastructure was in progress.",
  stack_not_found: "The server's infrastructure record was not found.",
  stack_failed: 'The cloud provider could not create or change the server.',
  provider_unavailable: 'The cloud provider was briefly unavailable.',
  provider_rejected:
    'The cloud provider refused the request, for example for a quota or an unavailable server type.',
  provider_rate_limited: 'The cloud provider asked the platform to slow down.',
  local_unsupported: 'This operation is not available for this kind of deployment.',
  timeout: 'This step did not finish in time.',
  aborted: 'This step was stopped before it finished.',
  superseded: 'A newer operation on this deployment took over.',
  internal: 'An internal error occurred.',
  unexpected: 'An unexpected error occurred.',
};

/** The sentence for a code this catalogue does not know (a newer worker's code, say). */
export const GENERIC_FAILURE_MESSAGE = 'The step failed; contact support and quote the deployment id.';

/**
 * A stored reason's code, exactly as deployment_events__reason_code derives it for the event
 * stream and webhooks (so the JSON and the events name the same code): the `code` of
 * `code: message`, anything else `unexpected`.
 */
export const failureCodeOf = (reason: string): string =>
  /^([a-z][a-z0-9_]{0,62}): /.exec(reason)?.[1] ?? 'unexpected';

export interface PublicFailure {
  readonly code: string;
  readonly message: string;
}

/** A stored reason as the customer sees it: its code and the catalogue's sentence, nothing of its text. */
export const publicFailure = (reason: string | null): PublicFailure | null => {
  if (reason === null) return null;
  const code = failureCodeOf(reason);
  const message = Object.hasOwn(FAILURE_MESSAGES, code)
    ? FAILURE_MESSAGES[code as keyof typeof FAILURE_MESSAGES]
    : GENERIC_FAILURE_MESSAGE;
  return { code, message };
};

/**
 * May this principal read a failure's full text? Only an ops token (no organisation) holding
 * `admin`. Not every ops token: one may serve a platform backend acting for organisations
 * (an ops token acting for an organisation), whose answers can reach a customer; `admin` marks
 * the tokens of the ops surfaces, which show this text already (Bull Board's failed jobs).
 */
export const mayReadFailureDetail = (p: ApiPrincipal): boolean =>
  p.orgId === null && p.scopes.includes('admin');
