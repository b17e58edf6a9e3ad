import type { ServerResponse } from 'node:http';
import { z } from 'zod';
import { camelKeys, streamEventsOf, type DeploymentEvent } from '../../webhooks/webhook-store';
import { canSee, principalOf } from '../auth';
import { FINAL_STATUSES, makeEventHub, type EventBatch } from '../event-hub';
import { ApiProblem, problems, problemResponses } from '../problems';
import type { ApiPlugin } from '../server';

/**
 * GET /v1/deployments/:id/events — a deployment's progress as server-sent events: every status
 * change and step change, and health events (an agent that may not be serving), oldest first,
 * `id:` = the event id. Resumable: with `Last-Event-ID` the
 * stream starts after that event (no repeat). It ends once the deployment is in a final state
 * (ready, failed, deleted), its operation has stopped writing (deployment_events__settled: the
 * `ready` step's own end comes just after the status) and every event up to it has been sent; a
 * reconnect after that gets 204,
 * which tells an EventSource to stop reconnecting. A comment line every 15 s keeps proxies from
 * closing an idle stream. One poller per API process serves all open streams (event-hub.ts); a
 * closed connection unsubscribes at once.
 *
 * Fairness and revocation: at most `API_STREAMS_PER_TOKEN` open streams per token in this process
 * (the next gets 429 + Retry-After, so one organisation cannot take the process's 5,000 from
 * everyone else). A revocation announced through Redis (token-revocations.ts) ends the token's
 * open streams at once; the reconnect is then refused (401). A stream also ends after
 * `API_STREAM_MAX_MS` (EventSource reconnects with Last-Event-ID, which authenticates the token
 * again), which bounds a revoked token's stream when the announcement was missed (Redis down).
 */
export const HEARTBEAT_MS = 15_000;
export const EVENTS_POLL_MS = 400;
const PAGE = 100;
/** Open streams per API process; past it, 503 (each costs a socket and a little memory, not a DB connection). */
const MAX_STREAMS = 5_000;

const lastEventId = z
  .string()
  .regex(/^(0|[1-9][0-9]{0,17})$/, 'must be the id of an event this stream sent')
  .optional();

const eventsHeaders = z.looseObject({ 'last-event-id': lastEventId });
const eventsQuery = z.object({ lastEventId }).strict();

/** One event as an SSE frame: `event:` is its kind (status, step, health). */
export const eventFrame = (e: DeploymentEvent): string =>
  `id: ${e.id}\nevent: ${e.kind}\ndata: ${JSON.stringify({
    id: Number(e.id),
    deploymentId: e.deploymentId,
    at: e.at,
    kind: e.kind,
    ...camelKeys(e.payload),
  })}\n\n`;

export const eventRoutes: ApiPlugin = async (app, deps) => {
  const { rpc } = deps.pipeline.db;
  const hub = makeEventHub({ rpc, log: deps.log }, { pollMs: EVENTS_POLL_MS, pageSize: PAGE });
  const open = new Set<() => void>();
  /** Open streams (their `end`) per token id (an entry is removed when its last stream ends). */
  const perToken = new Map<string, Set<() => void>>();
  const { API_STREAMS_PER_TOKEN: perTokenMax, API_STREAM_MAX_MS: maxMs } = deps.pipeline.config;
  // streams end before the server waits for its connections to close
  app.addHook('preClose', async () => {
    for (const end of [...open]) end();
  });
  // Token ids this process heard revoked (a revocation is final; bounded, oldest dropped): a
  // stream request authenticated before the announcement but still awaiting its first read (or the
  // rate limiter) when it arrived finds its token here and is refused, instead of opening a stream
  // that would outlive the revocation by API_STREAM_MAX_MS.
  const revoked = new Set<string>();
  // a revoked token's streams end now ({ all } is a feed outage: nothing to end, the cache empties)
  const stopListening = deps.revocations?.onRevoked((e) => {
    if (!('tokenId' in e)) return;
    revoked.add(e.tokenId);
    if (revoked.size > 10_000) revoked.delete(revoked.values().next().value as string);
    for (const end of [...(perToken.get(e.tokenId) ?? [])]) end();
  });
  app.addHook('onClose', async () => stopListening?.());

  app.get(
    '/v1/deployments/:id/events',
    {
      config: { scopes: ['deployments:read'] },
      schema: {
        tags: ['deployments'],
        summary: "Follow a deployment's progress (server-sent events)",
        description:
          'text/event-stream. Each event: `id:` (resume with the Last-Event-ID header or ?lastEventId=), `event: status|step|health`, `data:` JSON (status, previousStatus, step, state, attempt, reasonCode, revocationId, …; never a value). `health`: the agent may not be serving (state unhealthy; operation revoke, reasonCode kept_unhealthy, revocationId: restarted without a revoked key; or operation rotate, rotationId, reasonCode rollback_unverified: rolled back, but the old environment did not answer, or switch_unverified: left on the new version, which did not answer, the old one not healthy either; or state unknown, operation rotate, rotationId, reasonCode rotation_failed: the rotation failed after its swap began, so which version the host runs and whether it serves is not known). Ends at ready, failed or deleted; 204 when resuming after the end.',
        params: z.object({ id: z.uuid({ error: 'must be a UUID' }) }).strict(),
        headers: eventsHeaders,
        querystring: eventsQuery,
        response: {
          200: z.string().describe('text/event-stream: `id:`, `event:` and `data:` lines per event'),
          204: z.null().describe('nothing after Last-Event-ID and the deployment is in a final state'),
          ...problemResponses(400, 401, 403, 404, 429, 503),
        },
      },
    },
    async (request, reply) => {
      const p = principalOf(request);
      const after = request.headers['last-event-id'] ?? request.query.lastEventId ?? '0';
      const first = await rpc<Record<string, unknown>>('deployment_events__list', {
        p_deployment_id: request.params.id,
        p_after_id: after,
        p_limit: PAGE,
      }).catch((err: unknown) => {
        if ((err as { code?: string }).code === 'not_found') throw problems.notFound('deployment');
        throw err;
      });
      if (!canSee(p, String(first.org_id))) throw problems.notFound('deployment');
      // revoked while this request was in flight (nothing awaits between here and the registration)
      if (revoked.has(p.tokenId)) throw problems.unauthorized();
      const page = streamEventsOf(first.events as Record<string, unknown>[]);
      const batch: EventBatch = {
        status: String(first.status),
        settled: first.settled === true,
        events: page.events,
        more: (first.events as unknown[]).length >= PAGE,
        ...(page.lastId === undefined ? {} : { lastId: page.lastId }),
      };
      if (batch.events.length === 0 && batch.settled && FINAL_STATUSES.has(batch.status) && after !== '0')
        return reply.code(204).send(null);
      if (open.size >= MAX_STREAMS) {
        void reply.header('retry-after', '5');
        throw new ApiProblem(503, 'unavailable', 'too many open event streams; retry shortly');
      }
      const mine = perToken.get(p.tokenId) ?? new Set<() => void>();
      if (mine.size >= perTokenMax) {
        void reply.header('retry-after', '10');
        throw new ApiProblem(
          429,
          'too-many-requests',
          `at most ${perTokenMax} open event streams per token; close one or retry later`,
        );
      }

      reply.hijack();
      const res: ServerResponse = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-store',
        connection: 'keep-alive',
        'x-accel-buffering': 'no',
      });
      res.write('retry: 2000\n\n');

      let cursor = after;
      let ended = false;
      let unsubscribe: () => void = () => undefined;
      const heartbeat = setInterval(() => res.write(': keep-alive\n\n'), HEARTBEAT_MS);
      // no `end` event: the client reconnects with Last-Event-ID and its token is checked again
      const lifetime = setTimeout(() => end(), maxMs);
      const end = (): void => {
        if (ended) return;
        ended = true;
        clearInterval(heartbeat);
        clearTimeout(lifetime);
        unsubscribe();
        open.delete(end);
        mine.delete(end);
        if (mine.size === 0 && perToken.get(p.tokenId) === mine) perToken.delete(p.tokenId);
        res.end();
      };
      open.add(end);
      mine.add(end);
      perToken.set(p.tokenId, mine);
      res.on('close', end);
      const slog = request.log.child({ deploymentId: request.params.id });
      slog.debug({ open: open.size, streams: hub.size }, 'event stream opened');
      res.on('close', () => slog.debug({ open: open.size, streams: hub.size }, 'event stream closed'));

      /** Write a batch; end after the final state's last event. */
      const take = (b: EventBatch): void => {
        if (ended) return;
        for (const e of b.events) {
          res.write(eventFrame(e));
          cursor = e.id;
        }
        // past any event of a kind this code does not know, too (left out of b.events)
        cursor = b.lastId ?? cursor;
        sub.after = cursor;
        if (!b.more && b.settled && FINAL_STATUSES.has(b.status)) {
          res.write(`event: end\ndata: ${JSON.stringify({ status: b.status })}\n\n`);
          end();
        }
      };
      const sub = {
        deploymentId: request.params.id,
        after: cursor,
        onBatch: take,
        onError: () => end(),
      };
      take(batch);
      if (!ended) unsubscribe = hub.subscribe(sub);
    },
  );
};
