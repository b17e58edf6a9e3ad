import { createHash, randomBytes } from 'node:crypto';
import { z } from 'zod';
import type { Rpc } from '../db/rpc';
import { invalidInput } from '../errors';
import { parseInput, uuid } from '../secrets/secret-input';

/**
 * API bearer tokens: `ctx_` + 43 base62 characters (256 random bits). The plaintext is made here
 * and shown once; Postgres keeps only its SHA-256 (api_tokens, migration 20261201100000). A token
 * of 256 random bits needs no slow hash: nobody can enumerate the input space from a hash, and the
 * hash lookup stays one index probe per request.
 */
export const SCOPES = [
  'secrets:write',
  'deployments:write',
  'deployments:read',
  'audit:read',
  'admin',
] as const;
export type Scope = (typeof SCOPES)[number];
export const scopeSchema = z.enum(SCOPES, { error: `must be one of ${SCOPES.join(', ')}` });

export const TOKEN_PREFIX = 'ctx_';
export const TOKEN_BODY_LENGTH = 43;
export const TOKEN_FORMAT = /^ctx_[0-9A-Za-z]{43}$/;
const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';

/** 43 base62 characters by rejection sampling (no modulo bias): 43 × log2(62) ≈ 256 bits. */
export const generateToken = (): string => {
  let out = '';
  while (out.length < TOKEN_BODY_LENGTH) {
    for (const b of randomBytes(64)) {
      // 248 = 4 × 62: bytes at or above it would favour the first characters
      if (b < 248 && out.length < TOKEN_BODY_LENGTH) out += BASE62[b % 62];
    }
  }
  return TOKEN_PREFIX + out;
};

export const hashToken = (token: string): string => createHash('sha256').update(token, 'utf8').digest('hex');
/** What `tokens list` shows: the first 8 characters after `ctx_`. */
export const displayPrefix = (token: string): string =>
  token.slice(TOKEN_PREFIX.length, TOKEN_PREFIX.length + 8);

/** Who a request acts as: the token, its organisation (null: an ops token, any organisation), its scopes. */
export interface ApiPrincipal {
  readonly tokenId: string;
  readonly orgId: string | null;
  readonly scopes: readonly Scope[];
}

export interface TokenInfo {
  readonly id: string;
  readonly orgId: string | null;
  readonly name: string;
  readonly scopes: readonly Scope[];
  readonly prefix: string;
  readonly createdAt: string;
  readonly lastUsedAt: string | null;
  readonly revokedAt: string | null;
}

const createInput = z
  .object({
    orgId: uuid.nullable(),
    name: z.string().trim().min(1, 'must not be empty').max(200, 'must be at most 200 characters'),
    scopes: z.array(scopeSchema).min(1, 'at least one scope is required').max(5),
  })
  .strict()
  .refine((i) => i.orgId === null || !i.scopes.includes('admin'), {
    error: 'admin is for ops tokens only (no organization)',
    path: ['scopes'],
  });

type Row = Record<string, unknown>;
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);

export const makeTokenStore = (deps: {
  rpc: Rpc;
  /**
   * Tells every API process about a committed revocation (token-revocations.ts), so their token
   * caches and event streams drop the token at once. Without it a revoked token is still refused by
   * Postgres, and API caches honour it within API_TOKEN_CACHE_MS.
   */
  announce?: (tokenId: string) => Promise<unknown>;
}) => {
  const { rpc } = deps;
  /** The principal behind a token's SHA-256 (hex), or undefined (unknown or revoked alike). */
  const authenticateHash = async (hash: string): Promise<ApiPrincipal | undefined> => {
    const r = await rpc<{ status: string; id?: string; org_id?: string | null; scopes?: string[] }>(
      'api_tokens__authenticate',
      { p_hash: hash },
    );
    if (r.status !== 'ok' || typeof r.id !== 'string') return undefined;
    const scopes = (r.scopes ?? []).filter((s): s is Scope => (SCOPES as readonly string[]).includes(s));
    return { tokenId: r.id, orgId: r.org_id ?? null, scopes };
  };
  return {
    /** Returns the plaintext once: it is not stored anywhere and cannot be shown again. */
    async create(
      input: { orgId: string | null; name: string; scopes: readonly string[] },
      actor?: string,
    ): Promise<{ id: string; token: string; prefix: string }> {
      const i = parseInput(createInput, input);
      const token = generateToken();
      const r = await rpc<{ id: string }>('api_tokens__create', {
        p_org_id: i.orgId,
        p_name: i.name,
        p_scopes: i.scopes,
        p_prefix: displayPrefix(token),
        p_hash: hashToken(token),
        p_actor: actor,
      });
      return { id: r.id, token, prefix: displayPrefix(token) };
    },
    /** The principal behind a presented token, or undefined (unknown, malformed or revoked alike). */
    async authenticate(token: string): Promise<ApiPrincipal | undefined> {
      if (!TOKEN_FORMAT.test(token)) return undefined;
      return authenticateHash(hashToken(token));
    },
    authenticateHash,
    /**
     * Revokes in Postgres (committed), then announces it. `announced` is false when the
     * announcement failed (Redis unreachable): the revocation stands, and API processes' caches
     * let go of the token within API_TOKEN_CACHE_MS; undefined when this store has no announcer.
     */
    async revoke(
      id: string,
      actor?: string,
    ): Promise<{ id: string; revokedAt: string; announced?: boolean }> {
      const r = await rpc<{ id: string; revoked_at: string }>('api_tokens__revoke', {
        p_id: parseInput(uuid, id, 'id'),
        p_actor: actor,
      });
      if (!deps.announce) return { id: r.id, revokedAt: r.revoked_at };
      const announced = await deps.announce(r.id).then(
        () => true,
        () => false,
      );
      return { id: r.id, revokedAt: r.revoked_at, announced };
    },
    async list(opts: { orgId?: string; includeRevoked?: boolean } = {}): Promise<TokenInfo[]> {
      const rows = await rpc<Row[]>('api_tokens__list', {
        p_org_id: opts.orgId === undefined ? undefined : parseInput(uuid, opts.orgId, 'org_id'),
        p_include_revoked: opts.includeRevoked,
      });
      return rows.map((r) => ({
        id: String(r.id),
        orgId: str(r.org_id),
        name: String(r.name),
        scopes: (r.scopes as Scope[] | undefined) ?? [],
        prefix: String(r.prefix),
        createdAt: String(r.created_at),
        lastUsedAt: str(r.last_used_at),
        revokedAt: str(r.revoked_at),
      }));
    },
  };
};
export type TokenStore = ReturnType<typeof makeTokenStore>;

/** `a,b` from the CLI → checked scopes (names the bad one's position, not its text). */
export const parseScopes = (csv: string): Scope[] => {
  const parts = csv
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (parts.length === 0) throw invalidInput('scope', 'at least one scope is required');
  return parts.map((s, i) => {
    const r = scopeSchema.safeParse(s);
    if (!r.success) throw invalidInput(`scope[${i}]`, `must be one of ${SCOPES.join(', ')}`);
    return r.data;
  });
};
