import { randomUUID } from 'node:crypto';
import type { DestinationStream } from 'pino';
import { startApi, type RunningApi } from '../../orchestrator/api/api-process';
import { makeTokenStore, type Scope, type TokenStore } from '../../orchestrator/api/api-tokens';
import { makeApiClient, type ApiClient } from '../../orchestrator/api/client';
import { makeRevocationAnnouncer } from '../../orchestrator/api/token-revocations';
import type { Pipeline } from '../../orchestrator/deployments/pipeline-from-config';
import { makeLogger, type Logger } from '../../orchestrator/log';
import { startTestPipeline } from './pipeline';

/**
 * The API on a real listening socket (port 0) over a test pipeline (real Postgres, Redis under a
 * queue prefix of its own), with every log line of the API and the pipeline captured in `logs`.
 */
export interface TestApi {
  readonly api: RunningApi;
  readonly pipeline: Pipeline;
  readonly tokens: TokenStore;
  readonly log: Logger;
  /** Every line logged so far (JSON text, as pino wrote it). */
  readonly logs: string[];
  /** A fresh organisation; returns its id. */
  org(): Promise<string>;
  /** A token (plaintext) for an org (or null: ops) with these scopes. */
  token(orgId: string | null, scopes: readonly Scope[]): Promise<{ id: string; token: string }>;
  /** fetch against the API with a bearer token (or none). */
  call(
    method: string,
    path: string,
    opts?: { token?: string; body?: unknown; rawBody?: string; headers?: Record<string, string> },
  ): Promise<{ status: number; headers: Headers; text: string; json: unknown }>;
  /** The typed client (as the onboarding app uses it) with this token. */
  client(token?: string): ApiClient;
  close(): Promise<void>;
}

export const startTestApi = async (env: Record<string, string> = {}): Promise<TestApi> => {
  const logs: string[] = [];
  const sink: DestinationStream = { write: (line: string) => void logs.push(line) };
  const log = makeLogger({ level: 'debug', name: 'test-api' }, sink);
  const pipeline = await startTestPipeline(env, { log });
  const api = await startApi(pipeline.config, log, { pipeline, port: 0, host: '127.0.0.1' });
  // revocations announced as the CLI does, so the API's token cache drops them at once
  const tokens = makeTokenStore({
    rpc: pipeline.db.rpc,
    announce: makeRevocationAnnouncer(pipeline.redis),
  });
  return {
    api,
    pipeline,
    tokens,
    log,
    logs,
    async org() {
      const o = await pipeline.db.rpc<{ id: string }>('organizations__create', {
        p_name: `api-test-${randomUUID().slice(0, 8)}`,
      });
      return o.id;
    },
    async token(orgId, scopes) {
      const t = await tokens.create({ orgId, name: 'api test', scopes }, 'api-test');
      return { id: t.id, token: t.token };
    },
    async call(method, path, opts = {}) {
      const headers: Record<string, string> = { ...(opts.headers ?? {}) };
      if (opts.token) headers.authorization = `Bearer ${opts.token}`;
      let body: string | undefined = opts.rawBody;
      if (opts.body !== undefined) {
        body = JSON.stringify(opts.body);
        headers['content-type'] ??= 'application/json';
      }
      const res = await fetch(`${api.url}${path}`, {
        method,
        headers,
        ...(body === undefined ? {} : { body }),
      });
      const text = await res.text();
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        json = undefined;
      }
      // a 5xx is a defect: show its (value-free) reason from the log
      if (res.status >= 500 && res.status !== 503)
        console.warn(
          logs
            .filter((l) => l.includes('request failed'))
            .slice(-3)
            .join('\n'),
        );
      return { status: res.status, headers: res.headers, text, json };
    },
    client(token) {
      return makeApiClient({ baseUrl: api.url, ...(token ? { token } : {}), userAgent: 'api-test' });
    },
    async close() {
      await api.close();
      await pipeline.close(5_000);
    },
  };
};
