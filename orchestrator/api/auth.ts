import { isIP } from 'node:net';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AuditContext } from '../secrets/secret-input';
import type { ApiPrincipal, Scope, TokenStore } from './api-tokens';
import { ApiProblem, problems } from './problems';

/**
 * Authentication and authorisation of every request. A route says who may call it in its
 * `config`: `{ public: true }` (health, the OpenAPI document, the docs page) or `{ scopes: [...] }`
 * (any one of them suffices). A route that says neither — a plugin's routes, say Bull Board's —
 * gets `admin`: closed by default. Unknown routes need a valid token too, then answer 404.
 */
declare module 'fastify' {
  interface FastifyContextConfig {
    /** Any one of these scopes lets a token call the route. */
    scopes?: readonly Scope[];
    /** No token needed. */
    public?: boolean;
  }
  interface FastifyRequest {
    /** Set by the auth hook on every non-public route. */
    principal: ApiPrincipal | null;
  }
}

/** Routes that serve the API's own description: public, whoever registers them. */
const PUBLIC_PATHS = [/^\/openapi\.json$/, /^\/docs(\/|$)/];

const BEARER = /^Bearer ([\x21-\x7e]{1,200})$/i;

/** Failed authentications per client address (rate-limit.ts: makeAuthFailureLimiter, in Redis). */
export interface AuthFailureLimiter {
  readonly max: number;
  readonly windowMs: number;
  /** Seconds until the address may try again, or undefined when it is not over the limit. */
  blocked(ip: string): Promise<number | undefined>;
  failed(ip: string): Promise<void>;
  /**
   * Throws the limiter's 503 when its Redis connection is known to be down (no round trip). A token
   * vouched for skips `blocked`; without this, during an outage each of its requests would still
   * cost a Postgres lookup before the rate limiter refused it (review R1).
   */
  assertReachable?(): void;
}

export const registerAuth = (
  app: FastifyInstance,
  tokens: Pick<TokenStore, 'authenticate'> & { vouched?(token: string): boolean },
  failures?: AuthFailureLimiter,
): void => {
  app.decorateRequest('principal', null);
  app.addHook('onRoute', (route) => {
    const config = route.config ?? {};
    if (PUBLIC_PATHS.some((p) => p.test(route.url))) route.config = { ...config, public: true };
    else if (!config.public && !(config.scopes && config.scopes.length > 0))
      route.config = { ...config, scopes: ['admin'] };
  });
  app.addHook('onRequest', async (request, reply) => {
    const config = request.routeOptions.config;
    if (config.public) return;
    const m = BEARER.exec(request.headers.authorization ?? '');
    const presented = m?.[1];
    // An address that failed too often is refused before any token lookup (Postgres stays out of
    // it) — unless the token was valid in this process within the hour (token-cache.ts `vouched`):
    // a flood of made-up tokens never matches one, and a real client behind the same address (NAT,
    // a shared proxy) keeps working. Its lookup still decides; a revoked token is refused as ever.
    const vouched = presented !== undefined && tokens.vouched?.(presented) === true;
    if (vouched) {
      try {
        failures?.assertReachable?.();
      } catch (err) {
        void reply.header('retry-after', '5');
        throw err;
      }
    }
    const wait =
      failures && !vouched
        ? await failures.blocked(request.ip).catch((err: unknown) => {
            // Redis unreachable (a 503 problem): ask to come back soon
            void reply.header('retry-after', '5');
            throw err;
          })
        : undefined;
    if (failures && wait !== undefined) {
      void reply.header('retry-after', String(wait));
      throw new ApiProblem(
        429,
        'too-many-requests',
        `at most ${failures.max} failed authentications per ${failures.windowMs / 1000} s from one address; retry after ${wait} s`,
      );
    }
    const principal = presented ? await tokens.authenticate(presented) : undefined;
    if (!principal) {
      await failures?.failed(request.ip);
      throw problems.unauthorized();
    }
    request.principal = principal;
    // Every authenticated answer depends on the token (its organisation, its scopes: an admin's
    // GET /v1/deployments/:id holds the recorded failure text): no shared cache may store it, nor
    // serve it to another token (review R22 finding 2). A route may still set its own.
    void reply.header('cache-control', 'no-store').header('vary', 'authorization');
  });
  // The scope check comes after the per-token rate limit (an onRequest hook registered after this
  // one), so requests refused 403 count against the token's limit too: probing routes outside its
  // scopes costs a stolen token its budget like any other request.
  app.addHook('preParsing', async (request) => {
    const need = request.routeOptions.config.scopes;
    if (request.routeOptions.config.public || !need) return;
    const principal = principalOf(request);
    if (!need.some((s) => principal.scopes.includes(s))) throw problems.forbidden(need);
  });
};

/** The authenticated principal (the auth hook guarantees one on every non-public route). */
export const principalOf = (request: FastifyRequest): ApiPrincipal => {
  if (!request.principal) throw problems.unauthorized();
  return request.principal;
};

/**
 * May this principal see a resource of `orgId`? An ops token sees every organisation; an org
 * token only its own. Callers answer 404 when not, never 403: a 403 would confirm the id exists.
 */
export const canSee = (p: ApiPrincipal, orgId: string): boolean => p.orgId === null || p.orgId === orgId;

/** The org a request acts on: the token's; an ops token must name one; another org's is a 404. */
export const targetOrg = (p: ApiPrincipal, requested: string | undefined, field = 'orgId'): string => {
  if (p.orgId === null) {
    if (!requested) throw problems.invalid(field, 'is required with an ops token');
    return requested;
  }
  if (requested !== undefined && requested !== p.orgId) throw problems.notFound('organization');
  return p.orgId;
};

// C0/C1 controls: the audit log's text checks refuse them, and a header is the caller's to choose.
const CONTROLS = /[\u0000-\u001f\u007f-\u009f]+/g;

/**
 * The audit context of a request: actor = the token (`token:<id>`), the peer address (the socket's;
 * no X-Forwarded-For is trusted), and the user agent cleaned of control characters and cut to 500.
 */
export const auditContext = (request: FastifyRequest): AuditContext => {
  const p = principalOf(request);
  const raw = request.ip.startsWith('::ffff:') ? request.ip.slice(7) : request.ip;
  const ua = (request.headers['user-agent'] ?? '').replace(CONTROLS, ' ').trim().slice(0, 500).trim();
  return {
    actor: `token:${p.tokenId}`,
    ...(isIP(raw) ? { requestIp: raw } : {}),
    ...(ua ? { userAgent: ua } : {}),
  };
};
