import type { Config } from '../config';
import { makePipelineFromConfig, type Pipeline } from '../deployments/pipeline-from-config';
import type { Logger } from '../log';
import type { Redis } from 'ioredis';
import { makeTokenStore } from './api-tokens';
import { makeTokenCache } from './token-cache';
import { makeRevocationFeed } from './token-revocations';
import { buildApi, type ApiPlugin } from './server';
import type { FastifyInstance } from 'fastify';

/**
 * The API process's composition root: config → logger → pipeline (rpc, queues, Redis) → token
 * store behind the token cache, whose revocation feed has a Redis connection of its own
 * (subscriber mode; `revocationSubscriber` lets a test route it through a proxy it can cut) → Fastify, listening on API_HOST:API_PORT (127.0.0.1:18080 by default). `close` stops
 * taking requests, lets those in flight finish, then releases the connections. Used by
 * `cortexctl api`, the demo and the API tests (which pass port 0 and their own pipeline).
 */
export interface RunningApi {
  readonly app: FastifyInstance;
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  close(): Promise<void>;
}

export const startApi = async (
  config: Config,
  log: Logger,
  opts: {
    pipeline?: Pipeline;
    port?: number;
    host?: string;
    routes?: readonly ApiPlugin[];
    revocationSubscriber?: Redis;
  } = {},
): Promise<RunningApi> => {
  const pipeline = opts.pipeline ?? (await makePipelineFromConfig(config, log));
  const subscriber = opts.revocationSubscriber ?? pipeline.redis.duplicate({ autoResubscribe: false });
  // The rate limiters' connection fails fast: no offline queue (refused at once while
  // disconnected), no retries, a command timeout; the limiters then answer 503 (rate-limit.ts).
  const limiterRedis = pipeline.redis.duplicate({
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: config.API_REDIS_TIMEOUT_MS,
  });
  limiterRedis.on('error', (err: Error) => log.warn({ reason: err.message }, 'api limiter redis error'));
  const feed = makeRevocationFeed({
    subscriber,
    log: log.child({ component: 'api' }),
  });
  const store = makeTokenStore({ rpc: pipeline.db.rpc });
  const tokens = makeTokenCache(
    { lookup: store.authenticateHash, feed },
    { ttlMs: config.API_TOKEN_CACHE_MS },
  );
  const release = async (): Promise<void> => {
    tokens.close();
    await feed.close();
    limiterRedis.disconnect();
  };
  try {
    // a moment to connect before the first request (else its first requests are 503)
    await new Promise<void>((resolve) => {
      const t = setTimeout(resolve, 5_000);
      limiterRedis.once('ready', () => {
        clearTimeout(t);
        resolve();
      });
    });
    const app = await buildApi(
      { log, tokens, revocations: feed, limiterRedis, pipeline },
      opts.routes ? { routes: opts.routes } : {},
    );
    const host = opts.host ?? config.API_HOST;
    await app.listen({ host, port: opts.port ?? config.API_PORT });
    const addr = app.server.address();
    const port = typeof addr === 'object' && addr ? addr.port : (opts.port ?? config.API_PORT);
    const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}`;
    log.info({ url }, 'api listening');
    let closing: Promise<void> | undefined;
    return {
      app,
      url,
      close: () =>
        (closing ??= (async () => {
          await app.close();
          await release();
          if (!opts.pipeline) await pipeline.close(1_000);
        })()),
    };
  } catch (err) {
    await release();
    if (!opts.pipeline) await pipeline.close(1_000).catch(() => undefined);
    throw err;
  }
};
