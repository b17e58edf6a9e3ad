import type { Config } from '../config';
import { makePipelineFromConfig, type Pipeline } from '../deployments/pipeline-from-config';
import type { Logger } from '../log';
import { makeTokenStore } from './api-tokens';
import { buildApi, type ApiPlugin } from './server';
import type { FastifyInstance } from 'fastify';

/**
 * The API process's composition root: config → logger → pipeline (rpc, queues, Redis) → token
 * store → Fastify, listening on API_HOST:API_PORT (127.0.0.1:18080 by default). `close` stops
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
  opts: { pipeline?: Pipeline; port?: number; host?: string; routes?: readonly ApiPlugin[] } = {},
): Promise<RunningApi> => {
  const pipeline = opts.pipeline ?? (await makePipelineFromConfig(config, log));
  try {
    const tokens = makeTokenStore({ rpc: pipeline.db.rpc });
    const app = await buildApi({ log, tokens, pipeline }, opts.routes ? { routes: opts.routes } : {});
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
          if (!opts.pipeline) await pipeline.close(1_000);
        })()),
    };
  } catch (err) {
    if (!opts.pipeline) await pipeline.close(1_000).catch(() => undefined);
    throw err;
  }
};
