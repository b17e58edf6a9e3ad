import { OrchestratorError } from '../errors';
import type { Secret } from '../secret';

/**
 * Before a new key fans out to every agent, ask its provider whether it is a key at all, on the
 * cheapest authenticated endpoint it has (listing models), so a typo never reaches 50 agents.
 * Only the status code is used: the response body is discarded unread (it may echo the key or
 * account details) and never logged.
 */
export type KeyCheck =
  | { readonly status: 'valid' }
  | { readonly status: 'invalid'; readonly reason: string }
  /** Not checked: no endpoint for the provider, or validation off. */
  | { readonly status: 'unchecked'; readonly reason: string };

export interface KeyValidator {
  validate(provider: string, value: Secret, opts?: { signal?: AbortSignal }): Promise<KeyCheck>;
}

/** Validation off (local mode's default): every key is `unchecked`. */
export const noKeyValidation: KeyValidator = {
  validate: () => Promise.resolve({ status: 'unchecked', reason: 'key validation is off' }),
};

interface Endpoint {
  readonly path: string;
  readonly headers: (key: string) => Record<string, string>;
}

/** The providers' cheapest authenticated requests; the base URL is configuration. */
export const PROVIDER_ENDPOINTS: Readonly<Record<string, Endpoint & { readonly baseUrl: string }>> = {
  anthropic: {
    baseUrl: 'https://api.anthropic.com',
    path: '/v1/models?limit=1',
    headers: (key) => ({ 'x-api-key': key, 'anthropic-version': '2023-06-01' }),
  },
  openai: {
    baseUrl: 'https://api.openai.com',
    path: '/v1/models',
    headers: (key) => ({ authorization: `Bearer ${key}` }),
  },
};

/**
 * The HTTP validator. `baseUrls` overrides a provider's base URL (the local stub provider of the
 * tests and of local mode, `KEY_VALIDATION_BASE_URL`). 401/403 → invalid; 2xx → valid; anything
 * else (rate limited, 5xx, unreachable) → an error the caller may retry: a provider outage must not
 * pass a key unchecked, nor fail it as a typo.
 */
export const makeHttpKeyValidator = (
  opts: {
    baseUrls?: Readonly<Record<string, string>>;
    timeoutMs?: number;
    fetch?: typeof fetch;
  } = {},
): KeyValidator => {
  const doFetch = opts.fetch ?? fetch;
  return {
    async validate(provider, value, o = {}) {
      const ep = PROVIDER_ENDPOINTS[provider];
      if (!ep) return { status: 'unchecked', reason: `no key check is known for provider ${provider}` };
      const base = opts.baseUrls?.[provider] ?? opts.baseUrls?.['*'] ?? ep.baseUrl;
      const timeout = AbortSignal.timeout(opts.timeoutMs ?? 10_000);
      const signal = o.signal ? AbortSignal.any([o.signal, timeout]) : timeout;
      let status: number;
      try {
        const res = await doFetch(new URL(ep.path, base), {
          method: 'GET',
          headers: ep.headers(value.reveal()),
          signal,
          redirect: 'manual',
        });
        status = res.status;
        // discarded unread: the body may echo the key or the account
        await res.body?.cancel().catch(() => undefined);
      } catch {
        throw new OrchestratorError(
          'provider_unavailable',
          `${provider} key check: the provider did not answer`,
        );
      }
      if (status >= 200 && status < 300) return { status: 'valid' };
      if (status === 401 || status === 403)
        return { status: 'invalid', reason: `${provider} refused the key (HTTP ${status})` };
      throw new OrchestratorError('provider_unavailable', `${provider} key check: HTTP ${status}`);
    },
  };
};
