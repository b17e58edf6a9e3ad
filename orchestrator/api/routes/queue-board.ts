import { createBullBoard } from '@bull-board/api';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { FastifyAdapter } from '@bull-board/fastify';
import type { FastifyInstance } from 'fastify';
import type { ApiPlugin } from '../server';

/**
 * Bull Board, the queue dashboard, under `/admin/queues`, `admin` scope on every one of its routes
 * (its page, its static files, its JSON API): the auth hook gives `admin` to any route that names
 * no scope, and this plugin's routes name none.
 *
 * Read-only: a job is retried, promoted or removed through the deployments service (`cortexctl
 * retry`, the API), which keeps Postgres — the source of truth — and the queue in step; a raw
 * BullMQ retry from a dashboard would not. Read-only also leaves the board without a state-changing
 * route that a cross-site request could aim at.
 *
 * How a browser authenticates: with the bearer header on every request — there is no cookie, so
 * nothing for another site to ride on (no CSRF) and no credential left in a browser profile. The
 * test (and an operator's automation) sets it with Playwright's `extraHTTPHeaders`; an operator's
 * own browser reaches it through a header-setting proxy or extension (docs/api.md).
 */
export const BOARD_PATH = '/admin/queues';

export const queueBoardRoutes: ApiPlugin = async (app, deps) => {
  const serverAdapter = new FastifyAdapter();
  serverAdapter.setBasePath(BOARD_PATH);
  createBullBoard({
    queues: Object.values(deps.pipeline.queues.queues).map(
      (q) => new BullMQAdapter(q, { readOnlyMode: true }),
    ),
    // @bull-board/fastify 9.10.1 carries its own @bull-board/api 9.10.1 for types: the same interface
    serverAdapter: serverAdapter as unknown as Parameters<typeof createBullBoard>[0]['serverAdapter'],
    options: { uiConfig: { boardTitle: 'Cortex queues' } },
  });
  const plugin = serverAdapter.registerPlugin();
  await app.register(
    async (scope: FastifyInstance) => {
      // Bull Board sets an error handler of its own, which would answer our 401/403 as a 500 quoting
      // the error's message; errors here stay the API's problem documents instead.
      scope.setErrorHandler = (() => scope) as unknown as FastifyInstance['setErrorHandler'];
      await new Promise<void>((resolve, reject) =>
        plugin(scope, {}, (err?: Error) => (err ? reject(err) : resolve())),
      );
    },
    { prefix: BOARD_PATH },
  );
};
