import createClient, { type Client } from 'openapi-fetch';
import type { components, paths } from './schema';

/**
 * The typed client the onboarding app (and the demo, and the API's tests) use: openapi-fetch over
 * the types generated from the OpenAPI document the API serves (`npm run api:client` →
 * `schema.d.ts`). Every path, parameter, body and response is checked at compile time against
 * what the server declares; a response is `{ data }` on 2xx and `{ error }` (a problem document)
 * otherwise — nothing is thrown for an HTTP status.
 *
 *   const api = makeApiClient({ baseUrl: 'http://127.0.0.1:18080', token });
 *   const { data, error } = await api.GET('/v1/deployments/{id}', { params: { path: { id } } });
 */
export type { components, paths };
export type ApiClient = Client<paths>;

/** The problem document of an error response (RFC 9457). */
export interface ApiProblemDocument {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly detail?: string;
  readonly field?: string;
  readonly errors?: readonly { field: string; message: string }[];
}

export const makeApiClient = (opts: {
  baseUrl: string;
  /** A `ctx_…` bearer token; sent only in the Authorization header. */
  token?: string;
  userAgent?: string;
  fetch?: (input: Request) => Promise<Response>;
}): ApiClient =>
  createClient<paths>({
    baseUrl: opts.baseUrl.replace(/\/+$/, ''),
    headers: {
      ...(opts.token ? { authorization: `Bearer ${opts.token}` } : {}),
      ...(opts.userAgent ? { 'user-agent': opts.userAgent } : {}),
    },
    ...(opts.fetch ? { fetch: opts.fetch } : {}),
  });

/** `error` of a client call as a problem document (a non-problem body yields a bare status). */
export const problemOf = (error: unknown, status: number): ApiProblemDocument => {
  const e = error as Partial<ApiProblemDocument> | undefined;
  return typeof e === 'object' && e !== null && typeof e.type === 'string'
    ? (e as ApiProblemDocument)
    : { type: 'about:blank', title: 'Error', status };
};
