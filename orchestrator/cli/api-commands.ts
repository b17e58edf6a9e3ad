import { parseArgs, type ParseArgsConfig } from 'node:util';
import { Redis } from 'ioredis';
import { startApi } from '../api/api-process';
import { makeTokenStore, parseScopes } from '../api/api-tokens';
import { makeRevocationAnnouncer } from '../api/token-revocations';
import { loadConfig, type Config } from '../config';
import { redisOptionsFromUrl } from '../deployments/pipeline-from-config';
import { makeRpcFromConfig } from '../db/rpc-from-config';
import { OrchestratorError, invalidInput } from '../errors';
import { makeLogger } from '../log';
import type { CliCommand, CliContext } from './cortexctl';

/**
 * `cortexctl tokens create|list|revoke` (API bearer tokens; the plaintext is printed once) and
 * `cortexctl api` (the HTTP API until SIGTERM/SIGINT).
 */
const parse = (args: readonly string[], options: NonNullable<ParseArgsConfig['options']>) => {
  try {
    return parseArgs({ args: [...args], options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new OrchestratorError(
      'invalid_input',
      (err as Error).message.replace(/^TypeError \[[A-Z_]+\]: /, ''),
      { field: 'argv' },
    );
  }
};

const ACTOR = 'cortexctl';

/**
 * A revocation is announced to the API processes over a short-lived Redis connection that fails
 * fast (no retries, no offline queue, 3 s at most): Redis being down never blocks or undoes a
 * revocation, it only leaves the API caches to expire on their own (API_TOKEN_CACHE_MS).
 */
const announceRevocation = async (config: Config, tokenId: string): Promise<number> => {
  const redis = new Redis({
    ...redisOptionsFromUrl(config.REDIS_URL),
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
    connectTimeout: 3_000,
    commandTimeout: 3_000,
  });
  redis.on('error', () => undefined);
  try {
    await redis.connect();
    return await makeRevocationAnnouncer(redis)(tokenId);
  } finally {
    redis.disconnect();
  }
};

const withTokens = async <T>(
  ctx: CliContext,
  fn: (t: ReturnType<typeof makeTokenStore>) => Promise<T>,
): Promise<T> => {
  const config = loadConfig({ LOG_LEVEL: 'warn', ...ctx.env });
  const db = makeRpcFromConfig(config);
  try {
    return await fn(
      makeTokenStore({ rpc: db.rpc, announce: (tokenId) => announceRevocation(config, tokenId) }),
    );
  } finally {
    await db.close();
  }
};

const USAGE =
  'usage: cortexctl tokens create (--org <id> | --ops) --scope a,b [--name <n>] [--json]\n' +
  '       cortexctl tokens list [--org <id>] [--all] [--json]\n' +
  '       cortexctl tokens revoke <token id>';

export const apiCommands: Record<string, CliCommand> = {
  tokens: {
    summary:
      'tokens create (--org <id> | --ops) --scope a,b [--name <n>] | list [--org <id>] [--all] | revoke <id>: API tokens',
    async run(args, ctx) {
      const [sub, ...rest] = args;
      if (sub === 'create') {
        const r = parse(rest, {
          org: { type: 'string' },
          ops: { type: 'boolean' },
          scope: { type: 'string' },
          name: { type: 'string' },
          json: { type: 'boolean' },
        });
        if (r.positionals.length) throw invalidInput('argv', USAGE);
        const org = r.values.org as string | undefined;
        if ((org === undefined) === !r.values.ops)
          throw invalidInput('org', 'give exactly one of --org <id> or --ops');
        const scopes = parseScopes((r.values.scope as string | undefined) ?? '');
        const name = (r.values.name as string | undefined) ?? (org ? `token for ${org}` : 'ops token');
        return withTokens(ctx, async (t) => {
          const made = await t.create({ orgId: org ?? null, name, scopes }, ACTOR);
          if (r.values.json)
            ctx.out(`${JSON.stringify({ id: made.id, token: made.token, prefix: made.prefix, scopes })}\n`);
          else
            ctx.out(
              `token id: ${made.id}\nscopes:   ${scopes.join(',')}\ntoken:    ${made.token}\n` +
                'This is the only time the token is shown; store it now (only its hash is kept).\n',
            );
          return 0;
        });
      }
      if (sub === 'list') {
        const r = parse(rest, {
          org: { type: 'string' },
          all: { type: 'boolean' },
          json: { type: 'boolean' },
        });
        return withTokens(ctx, async (t) => {
          const org = r.values.org as string | undefined;
          const list = await t.list({
            ...(org === undefined ? {} : { orgId: org }),
            includeRevoked: Boolean(r.values.all),
          });
          if (r.values.json) ctx.out(`${JSON.stringify(list)}\n`);
          else
            for (const k of list)
              ctx.out(
                `${k.id}  ctx_${k.prefix}…  ${k.orgId ?? 'ops'}  ${k.scopes.join(',')}  ${k.name}` +
                  `  used ${k.lastUsedAt ?? 'never'}${k.revokedAt ? `  REVOKED ${k.revokedAt}` : ''}\n`,
              );
          return 0;
        });
      }
      if (sub === 'revoke') {
        const r = parse(rest, {});
        const id = r.positionals[0];
        if (!id || r.positionals.length > 1) throw invalidInput('argv', USAGE);
        return withTokens(ctx, async (t) => {
          const done = await t.revoke(id, ACTOR);
          ctx.out(`revoked ${done.id} at ${done.revokedAt}\n`);
          if (done.announced === false)
            ctx.out(
              'warning: Redis was unreachable, so running API processes were not told; they refuse the token once their cache entry expires (API_TOKEN_CACHE_MS)\n',
            );
          return 0;
        });
      }
      throw invalidInput('argv', USAGE);
    },
  },
  api: {
    summary: 'run the HTTP API on API_HOST:API_PORT (127.0.0.1:18080) until SIGTERM/SIGINT',
    async run(_args, ctx) {
      const config = loadConfig(ctx.env);
      const log = makeLogger({ level: config.LOG_LEVEL, name: 'cortex-api' });
      const api = await startApi(config, log);
      ctx.out(
        `cortex api listening on ${api.url} (OpenAPI: ${api.url}/openapi.json, docs: ${api.url}/docs)\n`,
      );
      await new Promise<void>((resolve) => {
        // `on`: a second signal must not fall back to the default action mid-shutdown
        const onSignal = (signal: NodeJS.Signals): void => {
          log.info({ signal }, 'signal received; closing the API');
          void api.close().then(resolve, resolve);
        };
        process.on('SIGTERM', onSignal);
        process.on('SIGINT', onSignal);
      });
      return 0;
    },
  },
};
