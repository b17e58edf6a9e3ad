import { z } from 'zod';
import { OrchestratorError } from '../errors';
import { parsePublicKey } from '../remote/host-keys';
import { PULUMI_PROJECT } from './stack-names';

/**
 * The validators the stack programs share (agent and platform stacks), so a rule is written once.
 * Identity fields are strict on purpose: whatever passes here ends up in a resource name, a label
 * or a DNS name, all readable in the Hetzner console, so a free-text value (or a secret pasted by
 * mistake) must be refused before any resource is declared.
 */

export const LOWERCASE_UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
export const DNS_LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;
export const DNS_ZONE = /^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$/;
/** The hcloud provider's `pollInterval`: a Go duration in milliseconds or seconds. */
export const POLL_INTERVAL = /^\d+(ms|s)$/;

/** A row id (organisations and deployments are uuid keys): names the server and labels it. */
export const uuidId = z.string().regex(LOWERCASE_UUID, 'must be a lowercase uuid');
export const dnsLabel = z.string().regex(DNS_LABEL, 'must be one DNS label');
export const dnsZone = z.string().regex(DNS_ZONE, 'must be a DNS zone name');
export const pollInterval = z.string().regex(POLL_INTERVAL, 'must be a duration like 5s').default('5s');

/**
 * An OpenSSH `ssh-ed25519` public key line, checked by the same parser the SSH client pins with
 * (`parsePublicKey`): the only key type the orchestrator pins or offers.
 */
export const ed25519PublicKey = z.string().superRefine((value, ctx) => {
  try {
    parsePublicKey(value, 'key');
  } catch (err) {
    const message = err instanceof OrchestratorError ? err.message.replace(/^key: /, '') : 'is invalid';
    ctx.addIssue({ code: 'custom', message });
  }
});

/** Validate stack settings; the first problem becomes an `invalid_input` naming the config key (never its value). */
export const parseStackSettings = <S extends z.ZodType>(schema: S, raw: unknown): z.output<S> => {
  const result = schema.safeParse(raw);
  if (result.success) return result.data;
  const issue = result.error.issues[0];
  const field = issue?.path.join('.') || '(root)';
  throw new OrchestratorError(
    'invalid_input',
    `stack config ${PULUMI_PROJECT}:${field}: ${issue?.message ?? 'invalid'}`,
    { field },
  );
};
